//! The Gateway API for the mesh (GAMMA), end to end with real pods: Braid from its Helm chart,
//! the echo apps in v1 and v2 with injected sidecars, and an HTTPRoute whose parent is the echo
//! Service splitting it 80/20 between the versions, measured through the sidecars. The route's
//! status.parents entry (controller braid.dev/mesh) says Accepted and ResolvedRefs, refusals
//! say why, and a MeshRoute on the same Service takes over, which the HTTPRoute's status says.
//! A GRPCRoute then routes a real gRPC client (grpc-echo) by method: unary Echo to v2, the
//! stream to v1.
//! Needs the node, the images and the Gateway API CRDs (`make cluster-up` installs them,
//! `make images`); a test binary of its own, since it installs the chart.

use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, Sidecar, apply, by_version, check_prerequisites, count, deploy_meshed_echo,
    inbound_from_client, install, load, split, url, workloads,
};
use braid_e2e::{Cluster, TestNamespace, eventually, setup};
use kube::Client;
use serde_json::Value;

const CONTROLLER: &str = "braid.dev/mesh";

fn http_route(ns: &str, name: &str, parent: &str, rules: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: {parent}, port: 8080 }}]
  rules:
{rules}
"#
    )
}

type Conditions = Vec<(String, String, String, String)>;

/// The conditions of Braid's `status.parents` entry of HTTPRoute `name`, once they are written
/// for its current generation: (type, status, reason, message).
async fn braid_conditions(cluster: &Cluster, ns: &str, name: &str) -> Conditions {
    route_conditions(cluster, ns, "httproute", name).await
}

async fn route_conditions(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Conditions {
    eventually(Duration::from_secs(60), &format!("{kind} {name}'s status from {CONTROLLER}"), || async {
        let out = cluster.kubectl(&["get", kind, name, "-n", ns, "-o", "json"]);
        let route: Value = serde_json::from_slice(&out.stdout).ok()?;
        let generation = route["metadata"]["generation"].as_i64()?;
        let parent =
            route["status"]["parents"].as_array()?.iter().find(|p| p["controllerName"] == CONTROLLER)?;
        let conditions = parent["conditions"].as_array()?;
        if conditions.is_empty() || !conditions.iter().all(|c| c["observedGeneration"] == generation) {
            return None;
        }
        Some(
            conditions
                .iter()
                .map(|c| {
                    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    (text("type"), text("status"), text("reason"), text("message"))
                })
                .collect(),
        )
    })
    .await
}

/// gRPC echo servers `grpc-v1` and `grpc-v2` (two pods each), Services `grpc` (both),
/// `grpc-v1` and `grpc-v2` on port 9090 (h2c), and a GRPCRoute sending the unary Echo method to
/// v2 and everything else to v1.
fn grpc_apps(ns: &str) -> String {
    let mut yaml = String::new();
    for version in ["v1", "v2"] {
        yaml.push_str(&format!(
            r#"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: grpc-{version}, namespace: {ns} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: grpc, version: {version} }} }}
  template:
    metadata: {{ labels: {{ app: grpc, version: {version} }} }}
    spec:
      serviceAccountName: echo
      containers:
        - name: grpc
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [grpc-echo, --listen, "0.0.0.0:9090", --name, grpc, --app-version, {version}]
          ports: [{{ name: grpc, containerPort: 9090 }}]
          readinessProbe: {{ tcpSocket: {{ port: 9090 }}, periodSeconds: 1 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: grpc-{version}, namespace: {ns} }}
spec:
  selector: {{ app: grpc, version: {version} }}
  ports: [{{ name: grpc, port: 9090, appProtocol: kubernetes.io/h2c }}]
"#
        ));
    }
    yaml.push_str(&format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{ name: grpc, namespace: {ns} }}
spec:
  selector: {{ app: grpc }}
  ports: [{{ name: grpc, port: 9090, appProtocol: kubernetes.io/h2c }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{ name: grpc-by-method, namespace: {ns} }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: grpc, port: 9090 }}]
  rules:
    - matches: [{{ method: {{ service: braid.echo.v1.Echo, method: Echo }} }}]
      backendRefs: [{{ name: grpc-v2, port: 9090 }}]
    - backendRefs: [{{ name: grpc-v1, port: 9090 }}]
"#
    ));
    yaml
}

/// Runs `grpc-echo call ARGS` in a meshed pod named `name` as `client`; the versions that
/// answered, one per reply.
async fn grpc_call(cluster: &Cluster, ns: &str, name: &str, args: &[&str]) -> Vec<String> {
    let target = format!("grpc.{ns}.svc.cluster.local:9090");
    let mut command = vec!["grpc-echo".to_owned(), "call".to_owned(), target];
    command.extend(args.iter().map(|a| (*a).to_owned()));
    let command: Vec<String> = command.iter().map(|c| format!("\"{c}\"")).collect();
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  serviceAccountName: client
  restartPolicy: Never
  containers:
    - name: call
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Always
      command: [{}]
"#,
            command.join(", ")
        ),
    );
    let phase = eventually(Duration::from_secs(120), &format!("gRPC call {name} to finish"), || async {
        let phase = cluster.kubectl_ok(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}"]);
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let logs = cluster.kubectl_ok(&["logs", "-n", ns, name, "-c", "call"]);
    assert_eq!(phase, "Succeeded", "gRPC call {name}: {logs}");
    let _ = cluster.kubectl(&["delete", "pod", "-n", ns, name, "--wait=false"]);
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|reply| reply["version"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// (status, reason) of condition `type_`.
fn condition<'a>(conditions: &'a [(String, String, String, String)], type_: &str) -> (&'a str, &'a str) {
    conditions
        .iter()
        .find(|c| c.0 == type_)
        .map(|c| (c.1.as_str(), c.2.as_str()))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_with_a_service_parent_splits_80_20_through_the_sidecars() {
    let started = Instant::now();
    let (cluster, client, unused): (&Cluster, Client, TestNamespace) = setup("e2e-gamma-unused").await;
    check_prerequisites(cluster);
    let crd = cluster.kubectl(&["get", "crd", "httproutes.gateway.networking.k8s.io"]);
    assert!(
        crd.status.success(),
        "the Gateway API CRDs are not installed: bash e2e/cluster/cluster.sh up installs them"
    );
    let release = install(cluster, &[]);
    let apps = TestNamespace::create(cluster, &client, "e2e-gamma").await;
    let ns = apps.name.as_str();
    deploy_meshed_echo(cluster, ns, &workloads(ns, 2), "180s");
    eprintln!("installed in {:?}", started.elapsed());

    // The split, and its status.
    apply(
        cluster,
        &http_route(
            ns,
            "echo-split",
            "echo",
            "    - backendRefs: [{ name: echo-v1, port: 8080, weight: 80 }, { name: echo-v2, port: 8080, weight: 20 }]",
        ),
    );
    let conditions = braid_conditions(cluster, ns, "echo-split").await;
    assert_eq!(condition(&conditions, "Accepted"), ("True", "Accepted"), "{conditions:?}");
    assert_eq!(condition(&conditions, "ResolvedRefs"), ("True", "ResolvedRefs"), "{conditions:?}");
    eprintln!("$ kubectl get httproute echo-split -n {ns}: {conditions:?}");

    // 2,000 requests through the client's and the echo pods' sidecars: the standard deviation
    // of the v2 share is 0.009, so ±0.03 is over 3 of them.
    let meshed_before = inbound_from_client(&client, ns).await;
    let target = url(ns, "/");
    let report = load(
        cluster,
        &client,
        ns,
        "gamma-80-20",
        "client",
        &["--url", &target, "--rate", "100", "--duration", "20s"],
    )
    .await;
    let meshed = inbound_from_client(&client, ns).await - meshed_before;
    assert_eq!(meshed, count(&report, "total"), "every request crossed both sidecars over mTLS: {report}");
    assert_eq!(count(&report, "failed"), 0, "{report}");
    assert!(count(&report, "total") >= 2000, "{report}");
    let v2 = *by_version(&report).get("v2").unwrap_or(&0) as f64 / count(&report, "total") as f64;
    eprintln!("HTTPRoute 80/20: measured v2 share {v2:.3} of {} requests", count(&report, "total"));
    assert!((0.17..=0.23).contains(&v2), "80/20 split measured v2 = {v2:.3}: {report}");

    // While a client calls the Service, its proxy is counted as running the route, as a
    // MeshRoute's PROXIES column counts it.
    let spec = LoadSpec {
        name: "gamma-programmed",
        account: "client",
        sidecar: Sidecar::Meshed,
        url: &target,
        rate: 5,
        extra: &[],
        probe: false,
    };
    let caller = LoadRun::start(cluster, &client, ns, spec).await;
    caller.answered().await;
    let programmed = eventually(Duration::from_secs(60), "echo-split braid.dev/Programmed 1/1", || async {
        let conditions = braid_conditions(cluster, ns, "echo-split").await;
        let found = conditions.iter().find(|c| c.0 == "braid.dev/Programmed")?.clone();
        (found.1 == "True" && found.2 == "Programmed" && found.3.starts_with("1/1 proxies")).then_some(found)
    })
    .await;
    eprintln!("$ kubectl get httproute echo-split -n {ns}: braid.dev/Programmed {programmed:?}");
    caller.stop();

    // Refusals say which field and why.
    apply(
        cluster,
        &http_route(
            ns,
            "cors",
            "echo-v1",
            "    - filters: [{ type: CORS, cors: { allowOrigins: [\"https://example.com\"] } }]\n      backendRefs: [{ name: echo-v1, port: 8080 }]",
        ),
    );
    let cors = braid_conditions(cluster, ns, "cors").await;
    assert_eq!(condition(&cors, "Accepted"), ("False", "UnsupportedValue"), "{cors:?}");
    assert!(cors.iter().any(|c| c.3.contains("spec.rules[0].filters[0].type")), "names the field: {cors:?}");
    apply(cluster, &http_route(ns, "ghost", "echo-v2", "    - backendRefs: [{ name: ghost, port: 8080 }]"));
    let ghost = braid_conditions(cluster, ns, "ghost").await;
    assert_eq!(condition(&ghost, "ResolvedRefs"), ("False", "BackendNotFound"), "{ghost:?}");

    // A MeshRoute on the same Service wins, and the HTTPRoute's status says so.
    apply(cluster, &split(ns, 100, 0, ""));
    let overridden = eventually(Duration::from_secs(60), "the HTTPRoute to report the MeshRoute", || async {
        let conditions = braid_conditions(cluster, ns, "echo-split").await;
        (condition(&conditions, "Accepted") == ("False", "OverriddenByMeshRoute")).then_some(conditions)
    })
    .await;
    eprintln!("with MeshRoute echo: {overridden:?}");
    let report = load(
        cluster,
        &client,
        ns,
        "gamma-meshroute",
        "client",
        &["--url", &target, "--rate", "50", "--duration", "5s"],
    )
    .await;
    assert_eq!(by_version(&report).get("v2"), None, "the MeshRoute's 100/0 applies: {report}");

    // A GRPCRoute routes a real gRPC client by method: unary Echo to v2, EchoStream to v1.
    apply(cluster, &grpc_apps(ns));
    for deployment in ["grpc-v1", "grpc-v2"] {
        cluster.kubectl_ok(&[
            "rollout",
            "status",
            "-n",
            ns,
            &format!("deployment/{deployment}"),
            "--timeout=180s",
        ]);
    }
    let grpc = route_conditions(cluster, ns, "grpcroute", "grpc-by-method").await;
    assert_eq!(condition(&grpc, "Accepted"), ("True", "Accepted"), "{grpc:?}");
    assert_eq!(condition(&grpc, "ResolvedRefs"), ("True", "ResolvedRefs"), "{grpc:?}");
    // Five calls, each from its own pod (so on its own connection): by chance alone, without
    // the route, all five would answer as expected once in 32.
    let stream: &[&str] = &["--stream", "3"];
    let answers = tokio::join!(
        grpc_call(cluster, ns, "unary-1", &[]),
        grpc_call(cluster, ns, "unary-2", &[]),
        grpc_call(cluster, ns, "unary-3", &[]),
        grpc_call(cluster, ns, "stream-1", stream),
        grpc_call(cluster, ns, "stream-2", stream),
    );
    let answers = [
        ("unary-1", "v2", answers.0),
        ("unary-2", "v2", answers.1),
        ("unary-3", "v2", answers.2),
        ("stream-1", "v1", answers.3),
        ("stream-2", "v1", answers.4),
    ];
    eprintln!("gRPC answers by version: {answers:?}");
    for (name, expected, versions) in &answers {
        assert!(!versions.is_empty() && versions.iter().all(|v| v == expected), "{name}: {versions:?}");
    }

    drop(apps);
    drop(release);
    drop(unused);
    eprintln!("gateway API e2e done in {:?}", started.elapsed());
}
