//! The whole mesh, end to end, with real pods on the local cluster's node: Braid installed with
//! its Helm chart from the local images (operator and webhook as Deployments), a labelled
//! namespace, an echo service in v1 and v2 and load clients, all with injected sidecars, and
//! real traffic between pods through kube-proxy, CoreDNS, the proxies' iptables redirect and
//! mTLS. Needs the node (`make cluster-up`) and the images (`make images`); `make e2e` does both.
//! A test binary of its own: it installs the chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use braid_e2e::{Cluster, TestNamespace, eventually, repo_root, setup};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

const RELEASE: &str = "braid";
const IMAGES: [&str; 4] = [
    "braid.dev/braid-operator:0.1.0",
    "braid.dev/braid-webhook:0.1.0",
    "braid.dev/braid-proxy:dev",
    "braid.dev/braid-testapps:dev",
];

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster.kubectl_ok(args)
}

fn apply(cluster: &Cluster, yaml: &str) {
    let output = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(yaml));
    assert!(
        output.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fails with what to run when the node or the images are missing.
fn check_prerequisites(cluster: &Cluster) {
    let nodes = kubectl(
        cluster,
        &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"],
    );
    assert!(
        nodes.split_whitespace().any(|s| s == "True"),
        "no Ready node: this test runs real pods; start the cluster with its node: make cluster-up"
    );
    let script = repo_root().join("e2e/cluster/cluster.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .args(["ctr", "images", "ls", "-q"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run cluster.sh ctr: {err}"));
    let listed = String::from_utf8_lossy(&output.stdout);
    for image in IMAGES {
        assert!(
            listed.lines().any(|l| l == image),
            "image {image} is not on the node: build and import the images with: make images"
        );
    }
}

fn install(cluster: &Cluster) {
    let _ = cluster.helm(&["uninstall", RELEASE, "-n", "braid-system", "--ignore-not-found", "--wait"]);
    let _ = cluster.kubectl(&["delete", "mesh", "default", "--ignore-not-found"]);
    let chart = repo_root().join("helm/braid");
    let output = cluster.helm(&[
        "install",
        RELEASE,
        &chart.to_string_lossy(),
        "-n",
        "braid-system",
        "--create-namespace",
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "5m",
    ]);
    assert!(
        output.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        kubectl(cluster, &["get", "pods", "-n", "braid-system", "-o", "wide"])
    );
}

struct Uninstall<'a>(&'a Cluster);

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        let _ = self.0.helm(&["uninstall", RELEASE, "-n", "braid-system", "--ignore-not-found"]);
    }
}

fn echo(ns: &str, version: &str, env: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: echo-{version}, namespace: {ns} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: echo, version: {version} }} }}
  strategy: {{ rollingUpdate: {{ maxUnavailable: 0, maxSurge: 1 }} }}
  template:
    metadata: {{ labels: {{ app: echo, version: {version} }} }}
    spec:
      serviceAccountName: echo
      terminationGracePeriodSeconds: 20
      containers:
        - name: echo
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Never
          command: [echo, --name, echo, --app-version, {version}, --shutdown-delay, 3s]
          env: [{{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}{env}]
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 1 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: echo-{version}, namespace: {ns} }}
spec:
  selector: {{ app: echo, version: {version} }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
"#
    )
}

fn workloads(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: echo, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: intruder, namespace: {ns} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: echo, namespace: {ns} }}
spec:
  selector: {{ app: echo }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
---
{}
---
{}
"#,
        echo(ns, "v1", ""),
        echo(ns, "v2", "")
    )
}

fn route(ns: &str, rules: &str) -> String {
    format!(
        r#"
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: echo, namespace: {ns} }}
spec:
  service: echo
  rules:
{rules}
"#
    )
}

/// A load run in a meshed pod as `account`: its JSON report (e2e/apps load --json).
async fn load(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Value {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns}, labels: {{ app: load }} }}
spec:
  serviceAccountName: {account}
  restartPolicy: Never
  containers:
    - name: load
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Never
      command: [load, --json, {}]
"#,
            args.join(", ")
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // What the pod's proxy routes with, read from its admin port while the load runs: the first
    // thing to look at when a figure is off.
    let running = format!("load pod {name} to run");
    let ip = eventually(Duration::from_secs(120), &running, || {
        let pods = pods.clone();
        let name = name.to_owned();
        async move {
            let pod = pods.get(&name).await.ok()?;
            let status = pod.status?;
            let load_started = status.container_statuses?.iter().any(|s| {
                s.name == "load"
                    && s.state.as_ref().is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            });
            load_started.then_some(status.pod_ip).flatten()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let routing = braid_e2e::http_get(format!("{ip}:4191").parse().expect("pod address"), "/config")
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .map(|config| {
            let services: Vec<Value> = config["config"]["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| serde_json::json!({"routes": s["routes"], "backends": s["backends"]}))
                .collect();
            serde_json::json!({"services": services, "destinations": config["discovery"]["destinations"]})
        });
    let what = format!("load pod {name} to finish");
    eventually(Duration::from_secs(180), &what, || {
        let pods = pods.clone();
        let name = name.to_owned();
        async move {
            let pod = pods.get(&name).await.ok()?;
            let statuses = pod.status?.container_statuses?;
            let load = statuses.iter().find(|s| s.name == "load")?;
            load.state.as_ref()?.terminated.as_ref().map(|_| ())
        }
    })
    .await;
    let logs = kubectl(cluster, &["logs", "-n", ns, name, "-c", "load"]);
    // The report is the JSON document at the end of the log (pretty-printed).
    let start = logs.rfind("\n{").map(|i| i + 1).or_else(|| logs.starts_with('{').then_some(0));
    let report = start.map(|i| &logs[i..]).unwrap_or_else(|| panic!("no JSON report in:\n{logs}"));
    let mut report: Value =
        serde_json::from_str(report).unwrap_or_else(|err| panic!("bad report {err}: {logs}"));
    report["proxy"] = routing.unwrap_or(Value::Null);
    let summary = ["total", "failed", "statuses", "errors", "backends", "latency_ms"]
        .map(|k| format!("{k}={}", report[k]));
    eprintln!("{name}: {}", summary.join(" "));
    if count(&report, "failed") > 0 {
        let proxy = cluster.kubectl(&["logs", "-n", ns, name, "-c", "braid-proxy", "--tail", "20"]);
        eprintln!("{name}: its proxy's log:\n{}", String::from_utf8_lossy(&proxy.stdout));
    }
    let _ = cluster.kubectl(&["delete", "pod", "-n", ns, name, "--wait=false"]);
    report
}

/// Requests the echo pods' sidecars took in over mTLS from the `client` identity, summed over
/// the pods: what proves a load run crossed both sidecars rather than going around them.
async fn inbound_from_client(client: &Client, ns: &str) -> u64 {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let client_id = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/client\"");
    let mut total = 0;
    for pod in pods.list(&ListParams::default().labels("app=echo")).await.expect("list echo pods") {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else { continue };
        let (_, metrics) =
            braid_e2e::http_get(format!("{ip}:4191").parse().expect("pod address"), "/metrics")
                .unwrap_or_else(|| panic!("no /metrics from the sidecar of echo pod {ip}"));
        total += metrics
            .lines()
            .filter(|l| l.starts_with("request_total{direction=\"inbound\"") && l.contains(&client_id))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

/// Asserts that every request of a load run crossed both sidecars: the echo pods' proxies
/// counted as many from the client's SPIFFE id as the client sent (`before`: the count before).
async fn assert_all_meshed(client: &Client, ns: &str, before: u64, report: &Value) {
    let meshed = inbound_from_client(client, ns).await - before;
    assert_eq!(
        meshed,
        count(report, "total"),
        "requests the echo sidecars saw over mTLS from the client: {report}"
    );
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or(0)
}

/// Requests answered by each echo version.
fn by_version(report: &Value) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for (backend, n) in report["backends"].as_object().into_iter().flatten() {
        let version = backend.rsplit('@').next().unwrap_or(backend).to_owned();
        *versions.entry(version).or_default() += n.as_u64().unwrap_or(0);
    }
    versions
}

fn url(ns: &str, path: &str) -> String {
    format!("http://echo.{ns}.svc.cluster.local:8080{path}")
}

async fn programmed(cluster: &Cluster, ns: &str) -> String {
    eventually(Duration::from_secs(60), "MeshRoute echo Programmed=True", || async {
        let out = cluster.kubectl(&["get", "meshroute", "echo", "-n", ns, "-o", "json"]);
        let route: Value = serde_json::from_slice(&out.stdout).ok()?;
        let generation = route["metadata"]["generation"].as_i64()?;
        let conditions = route["status"]["conditions"].as_array()?;
        let ok = |t: &str| {
            conditions
                .iter()
                .any(|c| c["type"] == t && c["status"] == "True" && c["observedGeneration"] == generation)
        };
        (ok("Accepted") && ok("Programmed"))
            .then(|| route["status"]["proxies"].as_str().unwrap_or_default().to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_end_to_end_with_real_pods() {
    let started = Instant::now();
    let (cluster, client, _unused) = setup("e2e-mesh-unused").await;
    check_prerequisites(cluster);
    install(cluster);
    let _uninstall = Uninstall(cluster);
    eprintln!("installed in {:?}", started.elapsed());

    let apps = TestNamespace::create(cluster, &client, "e2e-mesh").await;
    let ns = apps.name.as_str();
    kubectl(cluster, &["label", "namespace", ns, "braid.dev/inject=enabled"]);
    apply(cluster, &workloads(ns));
    for deployment in ["echo-v1", "echo-v2"] {
        kubectl(
            cluster,
            &["rollout", "status", "-n", ns, &format!("deployment/{deployment}"), "--timeout=180s"],
        );
    }

    // Every app pod has the sidecar, injected by the API server calling the webhook.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in pods.list(&ListParams::default().labels("app=echo")).await.expect("list pods") {
        let spec = pod.spec.expect("spec");
        let containers: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert!(
            containers.contains(&"braid-proxy"),
            "pod {:?} has no braid-proxy: {containers:?}",
            pod.metadata.name
        );
    }

    // 80/20 within statistical tolerance, then 50/50 under load with no failed request.
    let split = |v1: u32, v2: u32, extra: &str| {
        route(
            ns,
            &format!(
                "    - backends: [{{ service: echo-v1, weight: {v1} }}, {{ service: echo-v2, weight: {v2} }}]\n{extra}"
            ),
        )
    };
    apply(cluster, &split(80, 20, ""));
    programmed(cluster, ns).await;
    let meshed_before = inbound_from_client(&client, ns).await;
    let report = load(
        cluster,
        &client,
        ns,
        "split-80-20",
        "client",
        &["--url", &url(ns, "/"), "--rate", "100", "--duration", "20s"],
    )
    .await;
    let share = |report: &Value| {
        *by_version(report).get("v2").unwrap_or(&0) as f64 / count(report, "total").max(1) as f64
    };
    assert_all_meshed(&client, ns, meshed_before, &report).await;
    // 2000 requests: the standard deviation of the share is 0.009; 0.03 is over 3 of them.
    let v2 = share(&report);
    // (Runs of this test once measured 0.12 here: the load client's pooled connections that sat
    // idle past the proxy's 1 s protocol detection were tunnelled as opaque TCP to one endpoint.
    // Silent clients of a known HTTP service are now waited for; see proxy/src/outbound/mod.rs.)
    assert!((0.17..=0.23).contains(&v2), "80/20 split measured v2 = {v2:.3}: {report}");
    assert_eq!(count(&report, "failed"), 0, "{report}");
    eprintln!("80/20: measured v2 share {v2:.3} of {} requests", count(&report, "total"));

    let during = {
        let client = client.clone();
        let ns = ns.to_owned();
        let url = url(&ns, "/");
        tokio::spawn(async move {
            load(
                cluster,
                &client,
                &ns,
                "split-change",
                "client",
                &["--url", &url, "--rate", "100", "--duration", "25s"],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    apply(cluster, &split(50, 50, ""));
    // The load pod's proxy routes to echo: the status counts it.
    let proxies = programmed(cluster, ns).await;
    let listing = kubectl(cluster, &["get", "meshroutes", "-n", ns]);
    eprintln!("$ kubectl get meshroutes -n {ns}\n{listing}");
    assert!(
        proxies != "0/0" && listing.contains(&proxies),
        "a proxy routes to echo during the load: {listing}"
    );
    let report = during.await.expect("load task");
    assert_eq!(count(&report, "failed"), 0, "changing the split fails no request: {report}");
    let meshed_before = inbound_from_client(&client, ns).await;
    let report = load(
        cluster,
        &client,
        ns,
        "split-50-50",
        "client",
        &["--url", &url(ns, "/"), "--rate", "100", "--duration", "20s"],
    )
    .await;
    assert_all_meshed(&client, ns, meshed_before, &report).await;
    let v2 = share(&report);
    // 2000 requests at p = 0.5: the standard deviation is 0.011; 0.04 is over 3.5 of them.
    assert!((0.46..=0.54).contains(&v2), "50/50 split measured v2 = {v2:.3}: {report}");
    eprintln!("50/50: measured v2 share {v2:.3} of {} requests", count(&report, "total"));

    // v2 now fails 30% of its requests: without retries clients see it, the retry route hides it.
    kubectl(cluster, &["set", "env", "-n", ns, "deployment/echo-v2", "FAIL_RATE=0.3"]);
    kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v2", "--timeout=180s"]);
    let bare = load(
        cluster,
        &client,
        ns,
        "no-retries",
        "client",
        &["--url", &url(ns, "/"), "--rate", "100", "--duration", "10s"],
    )
    .await;
    let bare_failed = count(&bare, "failed") as f64 / count(&bare, "total").max(1) as f64;
    assert!((0.10..=0.20).contains(&bare_failed), "half the requests reach a v2 failing 30%: {bare}");
    apply(cluster, &split(50, 50, "      retries: { attempts: 3, retryOn: [\"5xx\"] }"));
    programmed(cluster, ns).await;
    let retried = load(
        cluster,
        &client,
        ns,
        "retries",
        "client",
        &["--url", &url(ns, "/"), "--rate", "100", "--duration", "20s"],
    )
    .await;
    let retried_failed = count(&retried, "failed") as f64 / count(&retried, "total").max(1) as f64;
    eprintln!(
        "v2 failing 30%: {:.1}% failed without retries, {:.2}% with",
        bare_failed * 100.0,
        retried_failed * 100.0
    );
    assert!(retried_failed <= 0.01, "retries hide v2's failures: {retried}");
    kubectl(cluster, &["set", "env", "-n", ns, "deployment/echo-v2", "FAIL_RATE-"]);
    kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v2", "--timeout=180s"]);
    let retries = "      retries: { attempts: 3, retryOn: [\"5xx\"] }";

    // The timeout answers a deliberately slow route: 504 after 5 s, not 6.
    apply(
        cluster,
        &route(
            ns,
            &format!(
                "    - matches: [{{ path: {{ type: PathPrefix, value: /slow }} }}]\n      backends: [{{ service: echo-v1 }}]\n      timeout: 5s\n    - backends: [{{ service: echo-v1, weight: 50 }}, {{ service: echo-v2, weight: 50 }}]\n{retries}"
            ),
        ),
    );
    programmed(cluster, ns).await;
    let report = load(
        cluster,
        &client,
        ns,
        "slow",
        "client",
        &["--url", &url(ns, "/slow"), "--rate", "1", "--duration", "3s", "--header", "x-echo-delay: 6s"],
    )
    .await;
    assert_eq!(
        report["statuses"]["504"].as_u64(),
        Some(count(&report, "total")),
        "every slow request gets 504: {report}"
    );
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
    assert!((4900.0..5900.0).contains(&p50), "504 after the 5 s timeout, measured {p50} ms: {report}");

    // mTLS: the server side names the client's SPIFFE id; a plaintext client to a pod IP is refused
    // under STRICT, and a MeshPolicy admits the client identity but not the intruder.
    apply(
        cluster,
        &format!(
            r#"
apiVersion: braid.dev/v1alpha1
kind: MeshPolicy
metadata: {{ name: echo, namespace: {ns} }}
spec:
  podSelector: {{ app: echo }}
  mtls: STRICT
  rules:
    - from: [{{ serviceAccount: {{ name: client }} }}]
"#
        ),
    );
    let pod =
        pods.list(&ListParams::default().labels("app=echo,version=v1")).await.expect("pods").items.remove(0);
    let pod_ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    let plain = braid_e2e::http_get(format!("{pod_ip}:8080").parse().expect("addr"), "/");
    let what = "a plaintext request to the pod IP to be refused under STRICT";
    eventually(Duration::from_secs(30), what, || async {
        let answer = braid_e2e::http_get(format!("{pod_ip}:8080").parse().expect("addr"), "/");
        answer.as_ref().is_none_or(|(code, _)| *code != 200).then_some(())
    })
    .await;
    eprintln!("plaintext to {pod_ip}:8080 before the policy took: {plain:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admitted = load(
        cluster,
        &client,
        ns,
        "admitted",
        "client",
        &["--url", &url(ns, "/"), "--rate", "20", "--duration", "5s"],
    )
    .await;
    let server_log = || {
        cluster
            .kubectl(&["logs", "-n", ns, "-l", "app=echo,version=v1", "-c", "braid-proxy", "--tail", "20"])
            .stdout
    };
    assert_eq!(
        count(&admitted, "failed"),
        0,
        "the client identity is admitted: {admitted}\nserver proxies:\n{}",
        String::from_utf8_lossy(&server_log())
    );
    let denied = load(
        cluster,
        &client,
        ns,
        "denied",
        "intruder",
        &["--url", &url(ns, "/"), "--rate", "20", "--duration", "5s"],
    )
    .await;
    assert_eq!(count(&denied, "ok"), 0, "the intruder identity is denied: {denied}");
    assert!(denied["statuses"]["403"].as_u64().unwrap_or(0) > 0, "denied with 403: {denied}");
    let metrics = braid_e2e::http_get(format!("{pod_ip}:4191").parse().expect("addr"), "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let client_id = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/client\"");
    assert!(
        metrics.lines().any(|l| l.starts_with("response_total{") && l.contains(&client_id)),
        "server metrics:\n{metrics}"
    );
    kubectl(cluster, &["delete", "meshpolicy", "echo", "-n", ns]);

    // The operator away for 30 s breaks no traffic; rolling the app under load loses no
    // request beyond what retries cover.
    let during = {
        let client = client.clone();
        let ns = ns.to_owned();
        let url = url(&ns, "/");
        tokio::spawn(async move {
            load(
                cluster,
                &client,
                &ns,
                "operator-away",
                "client",
                &["--url", &url, "--rate", "50", "--duration", "45s"],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    kubectl(cluster, &["scale", "-n", "braid-system", "deployment", "braid-operator", "--replicas=0"]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    kubectl(cluster, &["scale", "-n", "braid-system", "deployment", "braid-operator", "--replicas=2"]);
    let report = during.await.expect("load task");
    assert_eq!(count(&report, "failed"), 0, "no request fails while the operator is away: {report}");

    let during = {
        let client = client.clone();
        let ns = ns.to_owned();
        let url = url(&ns, "/");
        tokio::spawn(async move {
            load(
                cluster,
                &client,
                &ns,
                "rollout",
                "client",
                &["--url", &url, "--rate", "50", "--duration", "40s"],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    kubectl(cluster, &["rollout", "restart", "-n", ns, "deployment/echo-v1"]);
    kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v1", "--timeout=120s"]);
    let report = during.await.expect("load task");
    let failed = count(&report, "failed");
    assert!(
        failed * 100 <= count(&report, "total"),
        "a rollout loses at most 1% of requests, lost {failed}: {report}"
    );
    eprintln!("mesh e2e done in {:?}", started.elapsed());
}
