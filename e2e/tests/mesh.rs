//! The whole mesh, end to end, with real pods on the local cluster's node: Braid installed with
//! its Helm chart from the local images (operator and webhook as Deployments), a labelled
//! namespace, an echo service in v1 and v2 and load clients, all with injected sidecars, and
//! real traffic between pods through kube-proxy, CoreDNS, the proxies' iptables redirect and
//! mTLS. Needs the node (`make cluster-up`) and the images (`make images`); `make e2e` does both.
//! A test binary of its own: it installs the chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The pod of a load client (e2e/apps `load --json ARGS`), meshed, running as `account`.
fn start_load_pod(cluster: &Cluster, ns: &str, name: &str, account: &str, args: &[&str]) {
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
}

/// The IP of load pod `name` once its load container has started.
async fn load_pod_ip(client: &Client, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(120), &format!("load pod {name} to run"), || {
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
    .await
}

/// What the proxy of the pod at `ip` routes with, from its admin port: the first thing to look
/// at when a figure of a load run is off.
fn proxy_routing(ip: &str) -> Option<Value> {
    braid_e2e::http_get(addr(ip, 4191), "/config")
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .map(|config| {
            let services: Vec<Value> = config["config"]["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| serde_json::json!({"routes": s["routes"], "backends": s["backends"]}))
                .collect();
            serde_json::json!({"services": services, "destinations": config["discovery"]["destinations"]})
        })
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap_or_else(|err| panic!("pod address {ip}:{port}: {err}"))
}

/// Prints a load run's summary (and its proxy's log when a request failed), deletes its pod,
/// and returns its report with `routing` added.
fn finish_load(cluster: &Cluster, ns: &str, name: &str, mut report: Value, routing: Option<Value>) -> Value {
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

/// A load run of fixed length (`--duration` in `args`) in a meshed pod as `account`: its JSON
/// report (e2e/apps load --json).
async fn load(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Value {
    start_load_pod(cluster, ns, name, account, args);
    let ip = load_pod_ip(client, ns, name).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let routing = proxy_routing(&ip);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
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
    let report = serde_json::from_str(report).unwrap_or_else(|err| panic!("bad report {err}: {logs}"));
    finish_load(cluster, ns, name, report, routing)
}

/// The port a load client started by `load_while` serves its report on (GET /report, POST /stop).
const LOAD_REPORT_PORT: u16 = 9090;

/// Milliseconds since the Unix epoch: the clock the load pods date their answers with (they run
/// on this machine).
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When a change made by `load_while` ran, on the test's clock.
#[derive(Debug, Clone, Copy)]
struct Window {
    change_started_ms: u64,
    change_ended_ms: u64,
}

/// How long a load run of `load_while` sends before the change (on connections made under the
/// old state) and after it (on the new state).
const LOAD_BEFORE_CHANGE: Duration = Duration::from_secs(3);
const LOAD_AFTER_CHANGE: Duration = Duration::from_secs(5);

/// Runs `change` while a load client (pod `name`, the `client` identity, `rate` requests per
/// second to the echo Service) sends: starts the load pod, waits until its report shows a
/// successful answer (so the load really runs, on its own clock, before the change), lets it
/// run LOAD_BEFORE_CHANGE more, runs `change`, lets the load run LOAD_AFTER_CHANGE on the changed
/// state, stops it (POST /stop: the final report once every request sent has finished) and
/// returns the report and what `change` returned. Asserts that the change overlapped the load:
/// the load pod's first successful answer came before the change started and its last one
/// after the change ended.
async fn load_while<T>(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    rate: u32,
    change: impl std::future::Future<Output = T>,
) -> (Value, T) {
    let url = url(ns, "/");
    let serve = format!("0.0.0.0:{LOAD_REPORT_PORT}");
    let rate = rate.to_string();
    start_load_pod(cluster, ns, name, "client", &["--url", &url, "--rate", &rate, "--serve", &serve]);
    let ip = load_pod_ip(client, ns, name).await;
    let reports = addr(&ip, LOAD_REPORT_PORT);
    let first_ok =
        eventually(Duration::from_secs(60), &format!("load {name} to get a 2xx answer"), || async {
            let (_, body) = braid_e2e::http_get(reports, "/report").filter(|(code, _)| *code == 200)?;
            let report: Value = serde_json::from_str(&body).ok()?;
            report["first_ok_unix_ms"].as_u64()
        })
        .await;
    eprintln!(
        "{name}: sending, first 2xx answer {} ms before the test saw it",
        unix_ms().saturating_sub(first_ok)
    );
    let routing = proxy_routing(&ip);
    tokio::time::sleep(LOAD_BEFORE_CHANGE).await;

    let change_started_ms = unix_ms();
    let out = change.await;
    let change_ended_ms = unix_ms();
    let window = Window { change_started_ms, change_ended_ms };
    tokio::time::sleep(LOAD_AFTER_CHANGE).await;

    // Each request in flight may take up to the load client's 10 s timeout.
    let (code, body) = braid_e2e::http_post(reports, "/stop", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("load {name}: POST /stop got no answer from {reports}"));
    assert_eq!(code, 200, "load {name}: POST /stop: {body}");
    let report: Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad report {err}: {body}"));
    let report = finish_load(cluster, ns, name, report, routing);
    assert_eq!(
        (report["running"].as_bool(), report["in_flight"].as_u64()),
        (Some(false), Some(0)),
        "load {name} stopped with every request finished: {report}"
    );
    let first = report["first_ok_unix_ms"].as_u64();
    let last = report["last_ok_unix_ms"].as_u64();
    assert!(
        first.is_some_and(|first| first <= window.change_started_ms)
            && last.is_some_and(|last| last >= window.change_ended_ms),
        "load {name} must be answered before and after the change ({window:?}): first 2xx at {first:?}, last at {last:?}"
    );
    eprintln!(
        "{name}: the change took {} ms, inside {} ms of answered load",
        window.change_ended_ms - window.change_started_ms,
        last.unwrap_or(0) - first.unwrap_or(0)
    );
    (report, out)
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

/// The installed mesh and the echo apps in a labelled namespace, which each step below checks
/// something of. Dropped in field order: the apps' namespace, then the release.
struct Mesh {
    apps: TestNamespace,
    _uninstall: Uninstall<'static>,
    _unused: TestNamespace,
    cluster: &'static Cluster,
    client: Client,
}

/// The v1/v2 weights of the echo route, with `extra` lines appended to its one rule.
fn split(ns: &str, v1: u32, v2: u32, extra: &str) -> String {
    route(
        ns,
        &format!(
            "    - backends: [{{ service: echo-v1, weight: {v1} }}, {{ service: echo-v2, weight: {v2} }}]\n{extra}"
        ),
    )
}

const RETRIES: &str = "      retries: { attempts: 3, retryOn: [\"5xx\"] }";

/// The share of a load run's requests that echo v2 answered.
fn v2_share(report: &Value) -> f64 {
    *by_version(report).get("v2").unwrap_or(&0) as f64 / count(report, "total").max(1) as f64
}

fn failed_share(report: &Value) -> f64 {
    count(report, "failed") as f64 / count(report, "total").max(1) as f64
}

impl Mesh {
    /// Braid from its Helm chart, a namespace labelled for injection, and echo v1 and v2 rolled out.
    async fn install() -> Mesh {
        let started = Instant::now();
        let (cluster, client, unused) = setup("e2e-mesh-unused").await;
        check_prerequisites(cluster);
        install(cluster);
        let uninstall = Uninstall(cluster);
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
        Mesh { apps, _uninstall: uninstall, _unused: unused, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// A fixed-length load run as the `client` identity to `path` of the echo Service.
    async fn load(&self, name: &str, path: &str, rate: &str, duration: &str, extra: &[&str]) -> Value {
        let url = url(self.ns(), path);
        let mut args = vec!["--url", url.as_str(), "--rate", rate, "--duration", duration];
        args.extend_from_slice(extra);
        load(self.cluster, &self.client, self.ns(), name, "client", &args).await
    }

    /// Applies a MeshRoute and waits until the operator reports it Programmed.
    async fn route(&self, yaml: &str) -> String {
        apply(self.cluster, yaml);
        programmed(self.cluster, self.ns()).await
    }

    /// Every app pod has the sidecar, injected by the API server calling the webhook.
    async fn every_app_pod_has_the_sidecar(&self) {
        for pod in self.pods().list(&ListParams::default().labels("app=echo")).await.expect("list pods") {
            let spec = pod.spec.expect("spec");
            let containers: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
            assert!(
                containers.contains(&"braid-proxy"),
                "pod {:?} has no braid-proxy: {containers:?}",
                pod.metadata.name
            );
        }
    }

    /// 80/20 within statistical tolerance, every request through both sidecars, none failed.
    async fn an_80_20_split_holds_and_every_request_crosses_both_sidecars(&self) {
        let ns = self.ns();
        self.route(&split(ns, 80, 20, "")).await;
        let meshed_before = inbound_from_client(&self.client, ns).await;
        let report = self.load("split-80-20", "/", "100", "20s", &[]).await;
        assert_all_meshed(&self.client, ns, meshed_before, &report).await;
        // 2000 requests: the standard deviation of the share is 0.009; 0.03 is over 3 of them.
        let v2 = v2_share(&report);
        // (Runs of this test once measured 0.12 here: the load client's pooled connections that sat
        // idle past the proxy's 1 s protocol detection were tunnelled as opaque TCP to one endpoint.
        // Silent clients of a known HTTP service are now waited for; see proxy/src/outbound/mod.rs.)
        assert!((0.17..=0.23).contains(&v2), "80/20 split measured v2 = {v2:.3}: {report}");
        assert_eq!(count(&report, "failed"), 0, "{report}");
        eprintln!("80/20: measured v2 share {v2:.3} of {} requests", count(&report, "total"));
    }

    /// Changing the split to 50/50 while a client sends fails no request, and the route's
    /// status counts the load pod's proxy among those that route to echo.
    async fn changing_the_split_under_load_fails_no_request(&self) {
        let ns = self.ns();
        let change = async {
            let proxies = self.route(&split(ns, 50, 50, "")).await;
            let listing = kubectl(self.cluster, &["get", "meshroutes", "-n", ns]);
            (proxies, listing)
        };
        let (report, (proxies, listing)) =
            load_while(self.cluster, &self.client, ns, "split-change", 100, change).await;
        eprintln!("$ kubectl get meshroutes -n {ns}\n{listing}");
        assert!(
            proxies != "0/0" && listing.contains(&proxies),
            "a proxy routes to echo during the load: {listing}"
        );
        assert_eq!(count(&report, "failed"), 0, "changing the split fails no request: {report}");
    }

    /// 50/50 within statistical tolerance, every request through both sidecars.
    async fn the_new_50_50_split_holds(&self) {
        let meshed_before = inbound_from_client(&self.client, self.ns()).await;
        let report = self.load("split-50-50", "/", "100", "20s", &[]).await;
        assert_all_meshed(&self.client, self.ns(), meshed_before, &report).await;
        let v2 = v2_share(&report);
        // 2000 requests at p = 0.5: the standard deviation is 0.011; 0.04 is over 3.5 of them.
        assert!((0.46..=0.54).contains(&v2), "50/50 split measured v2 = {v2:.3}: {report}");
        eprintln!("50/50: measured v2 share {v2:.3} of {} requests", count(&report, "total"));
    }

    /// v2 fails 30% of its requests: without retries clients see it, the retry route hides it.
    /// Leaves the retry route in place, and v2 healthy again.
    async fn retries_hide_a_failing_version(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
        kubectl(cluster, &["set", "env", "-n", ns, "deployment/echo-v2", "FAIL_RATE=0.3"]);
        kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v2", "--timeout=180s"]);
        let bare = self.load("no-retries", "/", "100", "10s", &[]).await;
        let bare_failed = failed_share(&bare);
        assert!((0.10..=0.20).contains(&bare_failed), "half the requests reach a v2 failing 30%: {bare}");
        self.route(&split(ns, 50, 50, RETRIES)).await;
        let retried = self.load("retries", "/", "100", "20s", &[]).await;
        let retried_failed = failed_share(&retried);
        eprintln!(
            "v2 failing 30%: {:.1}% failed without retries, {:.2}% with",
            bare_failed * 100.0,
            retried_failed * 100.0
        );
        assert!(retried_failed <= 0.01, "retries hide v2's failures: {retried}");
        kubectl(cluster, &["set", "env", "-n", ns, "deployment/echo-v2", "FAIL_RATE-"]);
        kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v2", "--timeout=180s"]);
    }

    /// The timeout answers a deliberately slow route: 504 after 5 s, not 6.
    async fn a_route_timeout_answers_504_on_time(&self) {
        let slow_rule = "    - matches: [{ path: { type: PathPrefix, value: /slow } }]\n      backends: [{ service: echo-v1 }]\n      timeout: 5s\n";
        let rest = format!(
            "    - backends: [{{ service: echo-v1, weight: 50 }}, {{ service: echo-v2, weight: 50 }}]\n{RETRIES}"
        );
        self.route(&route(self.ns(), &format!("{slow_rule}{rest}"))).await;
        let report = self.load("slow", "/slow", "1", "3s", &["--header", "x-echo-delay: 6s"]).await;
        assert_eq!(
            report["statuses"]["504"].as_u64(),
            Some(count(&report, "total")),
            "every slow request gets 504: {report}"
        );
        let p50 = report["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
        assert!((4900.0..5900.0).contains(&p50), "504 after the 5 s timeout, measured {p50} ms: {report}");
    }

    /// mTLS: the server side names the client's SPIFFE id; a plaintext client to a pod IP is
    /// refused under STRICT, and a MeshPolicy admits the client identity but not the intruder.
    async fn strict_mtls_admits_the_client_identity_and_denies_the_intruder(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
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
        let pod = self
            .pods()
            .list(&ListParams::default().labels("app=echo,version=v1"))
            .await
            .expect("pods")
            .items
            .remove(0);
        let pod_ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
        let plain = braid_e2e::http_get(addr(&pod_ip, 8080), "/");
        let what = "a plaintext request to the pod IP to be refused under STRICT";
        eventually(Duration::from_secs(30), what, || async {
            let answer = braid_e2e::http_get(addr(&pod_ip, 8080), "/");
            answer.as_ref().is_none_or(|(code, _)| *code != 200).then_some(())
        })
        .await;
        eprintln!("plaintext to {pod_ip}:8080 before the policy took: {plain:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let admitted = self.load("admitted", "/", "20", "5s", &[]).await;
        let server_log = || {
            cluster
                .kubectl(&[
                    "logs",
                    "-n",
                    ns,
                    "-l",
                    "app=echo,version=v1",
                    "-c",
                    "braid-proxy",
                    "--tail",
                    "20",
                ])
                .stdout
        };
        assert_eq!(
            count(&admitted, "failed"),
            0,
            "the client identity is admitted: {admitted}\nserver proxies:\n{}",
            String::from_utf8_lossy(&server_log())
        );
        let url = url(ns, "/");
        let denied = load(
            cluster,
            &self.client,
            ns,
            "denied",
            "intruder",
            &["--url", &url, "--rate", "20", "--duration", "5s"],
        )
        .await;
        assert_eq!(count(&denied, "ok"), 0, "the intruder identity is denied: {denied}");
        assert!(denied["statuses"]["403"].as_u64().unwrap_or(0) > 0, "denied with 403: {denied}");
        let metrics =
            braid_e2e::http_get(addr(&pod_ip, 4191), "/metrics").map(|(_, b)| b).unwrap_or_default();
        let client_id = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/client\"");
        assert!(
            metrics.lines().any(|l| l.starts_with("response_total{") && l.contains(&client_id)),
            "server metrics:\n{metrics}"
        );
        kubectl(cluster, &["delete", "meshpolicy", "echo", "-n", ns]);
    }

    /// The operator away for 30 s (scaled to 0, then back) breaks no traffic.
    async fn the_operator_away_for_30_s_breaks_no_request(&self) {
        let cluster = self.cluster;
        let scale = |replicas: &str| {
            let replicas = format!("--replicas={replicas}");
            kubectl(cluster, &["scale", "-n", "braid-system", "deployment", "braid-operator", &replicas]);
        };
        let away = async {
            scale("0");
            tokio::time::sleep(Duration::from_secs(30)).await;
            scale("2");
        };
        let ns = self.ns();
        let (report, ()) = load_while(cluster, &self.client, ns, "operator-away", 50, away).await;
        assert_eq!(count(&report, "failed"), 0, "no request fails while the operator is away: {report}");
    }

    /// Rolling the app under load loses no request beyond what retries cover.
    async fn rolling_the_app_under_load_loses_at_most_1_percent(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
        let rollout = async {
            kubectl(cluster, &["rollout", "restart", "-n", ns, "deployment/echo-v1"]);
            kubectl(cluster, &["rollout", "status", "-n", ns, "deployment/echo-v1", "--timeout=120s"]);
        };
        let (report, ()) = load_while(cluster, &self.client, ns, "rollout", 50, rollout).await;
        let failed = count(&report, "failed");
        assert!(
            failed * 100 <= count(&report, "total"),
            "a rollout loses at most 1% of requests, lost {failed}: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_end_to_end_with_real_pods() {
    let started = Instant::now();
    let mesh = Mesh::install().await;
    mesh.every_app_pod_has_the_sidecar().await;
    mesh.an_80_20_split_holds_and_every_request_crosses_both_sidecars().await;
    mesh.changing_the_split_under_load_fails_no_request().await;
    mesh.the_new_50_50_split_holds().await;
    mesh.retries_hide_a_failing_version().await;
    mesh.a_route_timeout_answers_504_on_time().await;
    mesh.strict_mtls_admits_the_client_identity_and_denies_the_intruder().await;
    mesh.the_operator_away_for_30_s_breaks_no_request().await;
    mesh.rolling_the_app_under_load_loses_at_most_1_percent().await;
    eprintln!("mesh e2e done in {:?}", started.elapsed());
}
