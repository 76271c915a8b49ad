//! The `braid` command line against the local cluster. `braid check`: every check passes on a
//! fresh installation with a meshed workload (as text and as JSON, exit status 0), and when the
//! webhook is scaled to zero the check names it, says how to look into it, and exits 1.
//! `braid stat`: while a load client sends 20 requests a second to a meshed Deployment, its row
//! shows that rate, 100 % success and its latency, read from the proxies alone, and `braid stat
//! route --to echo-v1` shows what the load pod sent to that Service, at the same rate.
//!
//! `braid routes`, `braid identity`, `braid diagnose`: a meshed client's proxy shows the
//! MeshRoute's 80/20 split with the backends' endpoints and discovery's acks; an echo pod's
//! certificate names its SPIFFE id and chains to the namespace's trust bundle; diagnose says
//! nothing about the clean namespace, then finds one planted mistake of each kind, each with
//! why and the fix; a missing pod and a pod without a proxy are clear errors.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`), the images (`make images`) and the `braid` binary (`cargo build
//! --workspace --bins`). A test binary of its own: it installs the chart, which owns the
//! cluster's single Mesh; its tests take turns (`CHART`).

use std::process::Command;
use std::time::Duration;

use braid_e2e::mesh::{
    Sidecar, apply, check_prerequisites, echo, install, load_pod_ip, programmed, split, start_load_pod, url,
    workloads,
};
use braid_e2e::{Cluster, Component, TestNamespace, eventually, setup};
use serde_json::Value;

/// Both tests install the chart, which owns the cluster's single Mesh: one at a time.
static CHART: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `braid ARGS` against the cluster, prints what it wrote, and returns its exit code and
/// stdout.
fn braid(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let (code, stdout, _) = braid_with_stderr(cluster, args);
    (code, stdout)
}

/// Runs `braid ARGS`: exit code, stdout and stderr.
fn braid_with_stderr(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(Component::binary("braid"))
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap_or_else(|err| panic!("cannot run braid {args:?}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("braid {args:?} (exit {:?}):\n{stdout}{stderr}", output.status.code());
    (output.status.code().unwrap_or(-1), stdout, stderr)
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
    let _chart = CHART.lock().await;
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
    // The caller's side: what the load pod's proxy sent to echo-v1, by route.
    let routes: Value = serde_json::from_str(&braid_stat(
        cluster,
        &["route", "-n", ns, "--to", "echo-v1", "--window", "10s", "-o", "json"],
    ))
    .expect("braid stat route -o json prints JSON");
    let service = format!("echo-v1.{ns}.svc.cluster.local:8080");
    let rows = routes.as_array().unwrap_or_else(|| panic!("not a list: {routes}"));
    let load_metrics = || {
        let path = format!("/api/v1/namespaces/{ns}/pods/load:4191/proxy/metrics");
        let output = cluster.kubectl(&["get", "--raw", &path]);
        let metrics = String::from_utf8_lossy(&output.stdout);
        let outbound: Vec<&str> =
            metrics.lines().filter(|line| line.contains("direction=\"outbound\"")).take(20).collect();
        format!("the load pod's outbound series:\n{}", outbound.join("\n"))
    };
    assert!(
        !rows.is_empty() && rows.iter().all(|row| row["service"] == service.as_str()),
        "{routes}\n{}",
        load_metrics()
    );
    let sent: f64 = rows.iter().filter_map(|row| row["requests_per_second"].as_f64()).sum();
    assert!(
        (17.0..=23.0).contains(&sent),
        "the load pod sent {sent} requests/s to echo-v1, it sends 20: {routes}"
    );
    assert!(rows.iter().all(|row| row["success_rate"].as_f64().is_none_or(|rate| rate == 1.0)), "{routes}");
    let table = braid_stat(cluster, &["route", "-n", ns, "--window", "2s"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header[..3], ["NAMESPACE", "SERVICE", "ROUTE"], "{table}");
    assert!(table.contains(&service), "{table}");
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

/// The names of the pods of `selector` in `ns`.
fn pods_of(cluster: &Cluster, ns: &str, selector: &str) -> Vec<String> {
    cluster
        .kubectl_ok(&["get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The kinds of `braid diagnose -o json`'s findings in `ns`, and the whole report.
fn diagnose_kinds(cluster: &Cluster, args: &[&str], ns: &str) -> (i32, Vec<String>, Value) {
    let (code, stdout) = braid(cluster, &[&["diagnose", "-o", "json"], args].concat());
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let kinds = report["findings"]
        .as_array()
        .map(|findings| {
            findings
                .iter()
                .filter(|f| f["namespace"] == ns)
                .filter_map(|f| f["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (code, kinds, report)
}

#[tokio::test]
async fn braid_routes_identity_and_diagnose_inspect_a_meshed_namespace() {
    let (cluster, client, apps) = setup("e2e-inspect").await;
    check_prerequisites(cluster);
    let _chart = CHART.lock().await;
    let _release = install(cluster, &[]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &[workloads(ns, 1), split(ns, 80, 20, "")].join("\n---\n"));
    for deployment in ["deployment/echo-v1", "deployment/echo-v2"] {
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, deployment, "--timeout=300s"]);
    }
    programmed(cluster, ns).await;
    // A meshed client calling Service echo: its proxy subscribes to it on the first request.
    start_load_pod(
        cluster,
        ns,
        "load",
        "client",
        Sidecar::Meshed,
        &["--url", &url(ns, "/"), "--rate", "5", "--duration", "300s"],
    );
    load_pod_ip(&client, ns, "load").await;

    // diagnose: nothing to say about this namespace.
    let (code, text) = braid(cluster, &["diagnose", "-n", ns]);
    assert_eq!(
        (code, text.as_str()),
        (0, format!("√ no configuration problems found in namespace {ns}\n").as_str())
    );

    // routes: the client's proxy holds the MeshRoute's split, each backend's endpoint with its
    // identity, and discovery's ack.
    let service_name = format!("echo.{ns}.svc.cluster.local:8080");
    let config: Value =
        eventually(Duration::from_secs(60), "the load pod's proxy to hold Service echo", || async {
            let (code, stdout) = braid(cluster, &["routes", "load", "-n", ns, "-o", "json"]);
            let config: Value = serde_json::from_str(&stdout).ok()?;
            let held =
                config["config"]["services"].as_array()?.iter().any(|s| s["name"] == service_name.as_str());
            (code == 0 && held).then_some(config)
        })
        .await;
    let service = config["config"]["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == service_name.as_str()))
        .cloned()
        .unwrap_or_default();
    let weights: Vec<(String, u64)> = service["routes"][0]["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| {
                    (b["name"].as_str().unwrap_or_default().to_owned(), b["weight"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(weights.len(), 2, "{service}");
    assert!(weights[0].0.contains("echo-v1") && weights[0].1 == 80, "{weights:?}");
    assert!(weights[1].0.contains("echo-v2") && weights[1].1 == 20, "{weights:?}");

    let (code, text) = braid(cluster, &["routes", "load", "-n", ns]);
    assert_eq!(code, 0);
    let echo_id = format!("spiffe://cluster.local/ns/{ns}/sa/echo");
    for expected in [
        format!("pod {ns}/load\n"),
        "discovery: ".to_owned(),
        format!("SERVICE {service_name} ("),
        format!("{} 80%, {} 20%", weights[0].0, weights[1].0),
        format!("mTLS {echo_id}"),
        "inbound policy: version ".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    let header = text.lines().find(|l| l.starts_with(&format!("SERVICE {service_name}"))).unwrap_or_default();
    assert!(header.ends_with(", acked"), "discovery acked the service's snapshot: {header}");
    assert!(!text.contains('\x1b'), "no colour without a terminal: {text}");

    // identity: an echo pod's certificate names its service account and chains to the bundle.
    let echo_pod = pods_of(cluster, ns, "app=echo,version=v1").into_iter().next().expect("an echo-v1 pod");
    let (code, text) = braid(cluster, &["identity", &echo_pod, "-n", ns]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("identity      {echo_id}\n")), "{text}");
    assert!(
        text.contains("trust         √ chains to ")
            && text.contains(&format!("in ConfigMap {ns}/braid-trust-anchors")),
        "{text}"
    );
    let (code, json) = braid(cluster, &["identity", &echo_pod, "-n", ns, "-o", "json"]);
    let report: Value = serde_json::from_str(&json).expect("braid identity -o json prints JSON");
    assert_eq!(
        (code, &report["identity"], &report["chainsToTrustBundle"]),
        (0, &Value::from(echo_id.as_str()), &Value::Bool(true)),
        "{report}"
    );
    assert!(
        report["chainLength"].as_u64().is_some_and(|n| n >= 2),
        "the workload certificate and its issuer: {report}"
    );

    // Bad input: clear errors, exit 1.
    let (code, _, stderr) = braid_with_stderr(cluster, &["routes", "no-such-pod", "-n", ns]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("no pod no-such-pod in namespace {ns}: `kubectl get pods -n {ns}`")),
        "{stderr}"
    );
    apply(
        cluster,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: bare, namespace: {ns}, annotations: {{ braid.dev/inject: disabled }} }}\n\
             spec: {{ containers: [{{ name: sleep, image: braid.dev/braid-testapps:dev, imagePullPolicy: Always }}] }}\n"
        ),
    );
    let (code, _, stderr) = braid_with_stderr(cluster, &["identity", "bare", "-n", ns]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("pod {ns}/bare has no braid-proxy container, so it is not in the mesh")),
        "{stderr}"
    );

    // Plant one mistake of each kind. In this namespace: a route to a missing Service; a route
    // to a Service without endpoints whose backends are missing or without endpoints; a route
    // the operator does not accept (so not Programmed); a policy that selects nothing.
    let plants = format!(
        r#"
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: ghost, namespace: {ns} }}
spec: {{ service: ghost, rules: [{{ backends: [{{ service: ghost }}] }}] }}
---
apiVersion: v1
kind: Service
metadata: {{ name: lonely, namespace: {ns} }}
spec: {{ selector: {{ app: nothing }}, ports: [{{ name: http, port: 8080 }}] }}
---
apiVersion: v1
kind: Service
metadata: {{ name: idle-backend, namespace: {ns} }}
spec: {{ selector: {{ app: nothing }}, ports: [{{ name: http, port: 8080 }}] }}
---
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: lonely, namespace: {ns} }}
spec:
  service: lonely
  rules: [{{ backends: [{{ service: missing-backend, weight: 50 }}, {{ service: idle-backend, weight: 50 }}] }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: spare, namespace: {ns} }}
spec: {{ selector: {{ app: echo }}, ports: [{{ name: http, port: 8080, targetPort: http }}] }}
---
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: invalid, namespace: {ns} }}
spec:
  service: spare
  rules: [{{ backends: [{{ service: spare }}], timeout: 1s, retries: {{ attempts: 3, perTryTimeout: 2s }} }}]
---
apiVersion: braid.dev/v1alpha1
kind: MeshPolicy
metadata: {{ name: nobody, namespace: {ns} }}
spec: {{ podSelector: {{ app: nothing }}, mtls: STRICT }}
"#
    );
    apply(cluster, &plants);
    // And a namespace whose Deployment ran before the namespace was labelled for injection.
    let late = TestNamespace::create(cluster, &client, "e2e-inspect-late").await;
    let late_ns = late.name.as_str();
    let account =
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: echo, namespace: {late_ns} }}\n");
    apply(cluster, &[account, echo(late_ns, "v1", 1, "")].join("\n---\n"));
    cluster.kubectl_ok(&["rollout", "status", "-n", late_ns, "deployment/echo-v1", "--timeout=300s"]);
    cluster.kubectl_ok(&["label", "namespace", late_ns, "braid.dev/inject=enabled", "--overwrite"]);

    let expected = [
        "route-service-missing",
        "route-service-no-endpoints",
        "route-backend-missing",
        "route-backend-no-endpoints",
        "route-not-programmed",
        "policy-selects-no-pod",
    ];
    let report =
        eventually(Duration::from_secs(60), "braid diagnose to find each planted mistake", || async {
            let (code, kinds, report) = diagnose_kinds(cluster, &["-n", ns], ns);
            (code == 1 && expected.iter().all(|kind| kinds.iter().any(|k| k == kind))).then_some(report)
        })
        .await;
    for finding in report["findings"].as_array().into_iter().flatten() {
        for field in ["problem", "why", "fix"] {
            assert!(finding[field].as_str().is_some_and(|v| !v.is_empty()), "{field} of {finding}");
        }
    }
    let (code, text) = braid(cluster, &["diagnose", "-n", ns]);
    assert_eq!(code, 1);
    for expected in [
        format!(
            "× MeshRoute {ns}/ghost: spec.service names Service ghost, which does not exist in namespace {ns}"
        ),
        format!("× MeshRoute {ns}/lonely: its Service lonely has no ready endpoints"),
        format!(
            "× MeshRoute {ns}/lonely: spec.rules[0].backends[0] names Service missing-backend, which does not exist"
        ),
        format!(
            "× MeshRoute {ns}/lonely: spec.rules[0].backends[1]: Service idle-backend has no ready endpoints"
        ),
        format!("× MeshRoute {ns}/invalid: Programmed is False (NotAccepted): \""),
        "; Accepted is False (Invalid): \"spec.rules[0].retries.perTryTimeout: 2s is longer".to_owned(),
        format!("× MeshPolicy {ns}/nobody: spec.podSelector (app=nothing) selects no pod in namespace {ns}"),
        format!("fix spec.podSelector: kubectl -n {ns} edit meshpolicy nobody"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains(&format!("MeshRoute {ns}/echo:")), "the working route is no finding: {text}");

    let (code, text) = braid(cluster, &["diagnose", "-n", late_ns]);
    assert_eq!(code, 1);
    assert!(
        text.contains(&format!(
            "× deployment/echo-v1: namespace {late_ns} is labelled braid.dev/inject=enabled, but deployment/echo-v1 runs 1 pod(s) without a braid-proxy container"
        )) && text.contains(&format!("    fix: kubectl -n {late_ns} rollout restart deployment/echo-v1")),
        "{text}"
    );
    // -A covers both namespaces.
    let (code, all_kinds, _) = diagnose_kinds(cluster, &["-A"], late_ns);
    assert_eq!((code, all_kinds), (1, vec!["pods-without-proxy".to_owned()]));
    // Restarting as told clears it.
    cluster.kubectl_ok(&["rollout", "restart", "-n", late_ns, "deployment/echo-v1"]);
    cluster.kubectl_ok(&["rollout", "status", "-n", late_ns, "deployment/echo-v1", "--timeout=300s"]);
    eventually(Duration::from_secs(60), "the restarted pods to have a proxy", || async {
        let (code, text) = braid(cluster, &["diagnose", "-n", late_ns]);
        (code == 0 && text.starts_with("√ no configuration problems")).then_some(())
    })
    .await;
    let _ = cluster.kubectl(&["delete", "pod", "-n", ns, "load", "--wait=false"]);
}
