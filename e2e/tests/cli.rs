//! The `braid` command line against the local cluster. `braid check`: every check passes on a
//! fresh installation with a meshed workload (as text and as JSON, exit status 0), and when the
//! webhook is scaled to zero the check names it, says how to look into it, and exits 1.
//! `braid stat`: while a load client sends 20 requests a second to a meshed Deployment, its row
//! shows that rate, 100 % success and its latency, read from the proxies alone.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`), the images (`make images`) and the `braid` binary (`cargo build
//! --workspace --bins`). A test binary of its own: it installs the chart, which owns the
//! cluster's single Mesh.

use std::process::Command;
use std::time::Duration;

use braid_e2e::mesh::{Sidecar, apply, check_prerequisites, echo, install, load_pod_ip, start_load_pod};
use braid_e2e::{Cluster, Component, eventually, setup};
use serde_json::Value;

/// Runs `braid ARGS` against the cluster, prints what it wrote, and returns its exit code and
/// stdout.
fn braid(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let output = Command::new(Component::binary("braid"))
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap_or_else(|err| panic!("cannot run braid {args:?}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("braid {args:?} (exit {:?}):\n{stdout}{stderr}", output.status.code());
    (output.status.code().unwrap_or(-1), stdout)
}

/// Runs `braid check ARGS`: exit code and stdout.
fn braid_check(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    braid(cluster, &[&["check"], args].concat())
}

fn outcome_of<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["name"] == name))
        .map_or(&Value::Null, |check| &check["outcome"])
}

/// Runs `braid stat ARGS`, which must succeed: its stdout.
fn braid_stat(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout) = braid(cluster, &[&["stat"], args].concat());
    assert_eq!(code, 0, "braid stat {args:?} failed (its stderr is above)");
    stdout
}

#[tokio::test]
async fn braid_check_and_stat_read_the_mesh_and_its_workloads() {
    let (cluster, client, apps) = setup("e2e-cli").await;
    check_prerequisites(cluster);
    let _release = install(cluster, &[]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    let account =
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: echo, namespace: {ns} }}\n");
    apply(cluster, &[account, echo(ns, "v1", 1, "")].join("\n---\n"));
    cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/echo-v1", "--timeout=300s"]);

    // The operator counts connected proxies every few seconds: wait for a clean bill.
    let report: Value = eventually(Duration::from_secs(60), "braid check to pass every check", || async {
        let (code, stdout) = braid_check(cluster, &["-o", "json"]);
        let report: Value = serde_json::from_str(&stdout).ok()?;
        let all_pass = report["checks"].as_array()?.iter().all(|check| check["outcome"] == "pass");
        (code == 0 && all_pass).then_some(report)
    })
    .await;
    assert_eq!(report["healthy"], true);
    for name in [
        "CRDs installed",
        "operator leader",
        "webhook registered",
        "Mesh CAReady",
        "trust anchor",
        "proxies connected",
    ] {
        assert_eq!(outcome_of(&report, name), "pass", "{name}: {report}");
    }
    let (code, text) = braid_check(cluster, &[]);
    assert_eq!(code, 0);
    assert!(text.contains("√ operator leader:") && text.contains(" 0 failed"), "{text}");
    assert!(!text.contains('\x1b'), "no colour without a terminal: {text}");

    // braid stat while 20 requests a second reach echo-v1 through its sidecar.
    let target = format!("http://echo-v1.{ns}.svc.cluster.local:8080/");
    start_load_pod(
        cluster,
        ns,
        "load",
        "echo",
        Sidecar::Meshed,
        &["--url", &target, "--rate", "20", "--duration", "40s"],
    );
    load_pod_ip(&client, ns, "load").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rows: Value =
        serde_json::from_str(&braid_stat(cluster, &["deploy", "-n", ns, "--window", "10s", "-o", "json"]))
            .expect("braid stat -o json prints JSON");
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == "echo-v1"))
        .unwrap_or_else(|| panic!("no echo-v1 row: {rows}"));
    assert_eq!((row["meshed"].as_u64(), row["pods"].as_u64()), (Some(1), Some(1)), "{row}");
    assert_eq!(row["success_rate"].as_f64(), Some(1.0), "{row}");
    let rps = row["requests_per_second"].as_f64().unwrap_or_default();
    // 20/s from the load client, and the readiness probe's 1/s through the same sidecar.
    assert!((17.0..=25.0).contains(&rps), "echo-v1 answered {rps} requests/s, the load sends 20: {row}");
    assert!(row["latency_p99_ms"].as_f64().is_some_and(|p99| p99 > 0.0 && p99 < 100.0), "{row}");
    let table = braid_stat(cluster, &["deploy", "-n", ns, "--window", "2s"]);
    assert!(table.starts_with("NAMESPACE") && table.contains("echo-v1") && table.contains("1/1"), "{table}");
    let _ = cluster.kubectl(&["delete", "pod", "-n", ns, "load", "--wait=false"]);

    // A pod of the injected namespace started without a proxy is a warning, not a failure.
    apply(
        cluster,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: bare, namespace: {ns}, annotations: {{ braid.dev/inject: disabled }} }}\n\
             spec: {{ containers: [{{ name: sleep, image: braid.dev/braid-testapps:dev, imagePullPolicy: Always }}] }}\n"
        ),
    );

    cluster.kubectl_ok(&["scale", "-n", "braid-system", "deployment/braid-webhook", "--replicas=0"]);
    let text = eventually(Duration::from_secs(60), "braid check to notice the stopped webhook", || async {
        let (code, text) = braid_check(cluster, &[]);
        (code == 1 && text.contains("× webhook running: scaled to 0 replicas")).then_some(text)
    })
    .await;
    assert!(
        text.contains("fix: kubectl -n braid-system scale deployment/braid-webhook --replicas=2"),
        "{text}"
    );
    assert!(text.contains("√ pods injected:"), "an opted-out pod is not a missing proxy: {text}");
}
