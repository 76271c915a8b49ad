//! WebSockets through both sidecars: a real WebSocket client (tungstenite, in a meshed pod)
//! talks to WebSocket echo servers (two meshed pods) behind a Service whose MeshPolicy takes
//! mTLS only, from the client's ServiceAccount only. Every message comes back intact, the
//! server's sidecar saw each upgrade arrive over mTLS from the client's identity and answered
//! 101, and the tunnels' bytes are counted on the client connections of both sidecars.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`) and the images (`make images`). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::time::Duration;

use braid_e2e::mesh::{addr, apply, check_prerequisites, install};
use braid_e2e::{Cluster, eventually, setup};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

const CONNECTIONS: u64 = 8;
const MESSAGES: u64 = 200;

/// The WebSocket servers (Deployment and Service `chat`, two pods), the client's account and a
/// STRICT MeshPolicy that admits only that account.
fn chat(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: chat, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: {ns} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: chat, namespace: {ns} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: chat }} }}
  template:
    metadata: {{ labels: {{ app: chat }} }}
    spec:
      serviceAccountName: chat
      containers:
        - name: chat
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [websocket, serve, --listen, "0.0.0.0:8080"]
          env: [{{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}]
          ports: [{{ name: ws, containerPort: 8080 }}]
          readinessProbe: {{ tcpSocket: {{ port: 8080 }}, periodSeconds: 1 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: chat, namespace: {ns} }}
spec:
  selector: {{ app: chat }}
  ports: [{{ name: ws, port: 8080, targetPort: ws }}]
---
apiVersion: braid.dev/v1alpha1
kind: MeshPolicy
metadata: {{ name: chat, namespace: {ns} }}
spec:
  podSelector: {{ app: chat }}
  mtls: STRICT
  rules:
    - from: [{{ serviceAccount: {{ name: client }} }}]
"#
    )
}

/// A meshed pod running the WebSocket client as `account` against Service chat.
fn caller(ns: &str, name: &str, account: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  serviceAccountName: {account}
  restartPolicy: Never
  containers:
    - name: client
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Always
      command: [websocket, call, --url, "ws://chat.{ns}.svc.cluster.local:8080/chat",
                --connections, "{CONNECTIONS}", --messages, "{MESSAGES}"]
"#
    )
}

/// Runs the client pod `name` to its end and returns its exit code and JSON report.
async fn call(cluster: &Cluster, client: &Client, ns: &str, name: &str, account: &str) -> (i32, Value) {
    apply(cluster, &caller(ns, name, account));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let exit_code = eventually(Duration::from_secs(180), &format!("client pod {name} to finish"), || {
        let pods = pods.clone();
        let name = name.to_owned();
        async move {
            let statuses = pods.get(&name).await.ok()?.status?.container_statuses?;
            let client = statuses.iter().find(|s| s.name == "client")?;
            client.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
        }
    })
    .await;
    let logs = cluster.kubectl_ok(&["logs", "-n", ns, name, "-c", "client"]);
    let report = logs
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report in the log of {name}:\n{logs}"));
    let report = serde_json::from_str(report).unwrap_or_else(|err| panic!("bad report {err}: {logs}"));
    eprintln!("{name} (as {account}): exit {exit_code}, {report}");
    (exit_code, report)
}

/// The chat pods' sidecars' /metrics, one text per pod.
async fn chat_metrics(client: &Client, ns: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut texts = Vec::new();
    for pod in pods.list(&ListParams::default().labels("app=chat")).await.expect("list chat pods") {
        let ip = pod.status.and_then(|s| s.pod_ip).expect("a running chat pod has an IP");
        let (_, text) = braid_e2e::http_get(addr(&ip, 4191), "/metrics").expect("the sidecar's /metrics");
        texts.push(text);
    }
    texts
}

/// The sum over `texts` of the series whose line starts with `name{` and contains every label.
fn sum(texts: &[String], name: &str, labels: &[&str]) -> f64 {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn websocket_clients_reach_their_servers_through_both_sidecars_over_mtls() {
    let (cluster, client, apps) = setup("e2e-ws").await;
    check_prerequisites(cluster);
    let _release = install(cluster, &[]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &chat(ns));
    cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/chat", "--timeout=300s"]);

    let (exit_code, report) = call(cluster, &client, ns, "caller", "client").await;
    assert_eq!(exit_code, 0, "the WebSocket client failed: {report}");
    assert_eq!(report["failed_connections"], 0, "{report}");
    assert_eq!(report["messages_echoed"], CONNECTIONS * MESSAGES, "{report}");
    let pods = report["pods"].as_object().map(|pods| pods.len()).unwrap_or(0);
    assert_eq!(pods, 2, "the connections spread over both chat pods: {report}");

    let client_id = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/client\"");
    let metrics = chat_metrics(&client, ns).await;
    let switched =
        sum(&metrics, "response_total", &["direction=\"inbound\"", &client_id, "status_code=\"101\""]);
    assert_eq!(switched, CONNECTIONS as f64, "each upgrade arrived over mTLS from the client and got 101");
    // Every message crossed the tunnels (half of them 4 KiB binary ones): the sidecars' client
    // connections counted at least that many bytes.
    let echoed = report["bytes_echoed"].as_f64().unwrap_or_default();
    let read = sum(&metrics, "tcp_read_bytes_total", &["direction=\"inbound\""]);
    eprintln!("chat sidecars: {switched} upgrades from the client, {read} bytes read; {echoed} bytes echoed");
    assert!(read >= echoed, "inbound bytes {read} < the {echoed} bytes the client sent");

    // Another account is refused by the policy, upgrade or not.
    cluster.kubectl_ok(&["create", "serviceaccount", "-n", ns, "intruder"]);
    let (exit_code, report) = call(cluster, &client, ns, "intruder", "intruder").await;
    assert_ne!(exit_code, 0, "the intruder's WebSocket was let in: {report}");
    assert_eq!(report["failed_connections"], CONNECTIONS, "{report}");
    assert!(report["errors"][0].as_str().is_some_and(|e| e.contains("403")), "refused with 403: {report}");
}
