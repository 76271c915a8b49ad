//! Braid installed from its Helm chart with real meshed pods: the echo apps, load clients that
//! run in pods, and what their reports and the sidecars' metrics say. Shared by the suites that
//! run traffic through the mesh (tests/mesh.rs, tests/faults.rs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

use crate::{Cluster, eventually, repo_root};

pub const RELEASE: &str = "braid";
/// The images a meshed test runs: the chart's (tagged with its appVersion) and the apps'.
pub fn images() -> [String; 4] {
    let version = crate::app_version();
    [
        format!("braid.dev/braid-operator:{version}"),
        format!("braid.dev/braid-webhook:{version}"),
        "braid.dev/braid-proxy:dev".to_owned(),
        "braid.dev/braid-testapps:dev".to_owned(),
    ]
}

/// `kubectl apply -f -` of `yaml`; panics with kubectl's message when it is refused.
pub fn apply(cluster: &Cluster, yaml: &str) {
    let output = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(yaml));
    assert!(
        output.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fails with what to run when the node or the images are missing.
pub fn check_prerequisites(cluster: &Cluster) {
    let nodes = cluster.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert!(
        nodes.split_whitespace().any(|s| s == "True"),
        "no Ready node: this test runs real pods; start the cluster with its node: make cluster-up"
    );
    let registry = crate::registry::Registry::get();
    for image in images() {
        registry.require_pushed(&image);
    }
}

/// The chart installed as release `braid` in braid-system, its images pinned to the digests last
/// pushed to the node's registry (make images), with `sets` (`key=value`) added; uninstalled when
/// the guard is dropped.
pub fn install(cluster: &'static Cluster, sets: &[&str]) -> Release {
    let _ = cluster.helm(&["uninstall", RELEASE, "-n", "braid-system", "--ignore-not-found", "--wait"]);
    let _ = cluster.kubectl(&["delete", "mesh", "default", "--ignore-not-found"]);
    let chart = repo_root().join("helm/braid");
    let chart = chart.to_string_lossy();
    let digests = crate::registry::digests_values();
    let digests = digests.to_string_lossy();
    let mut args = vec![
        "install",
        RELEASE,
        &chart,
        "-n",
        "braid-system",
        "--create-namespace",
        "-f",
        &digests,
        "--wait",
        "--timeout",
        "5m",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let output = cluster.helm(&args);
    assert!(
        output.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.kubectl_ok(&["get", "pods", "-n", "braid-system", "-o", "wide"])
    );
    Release(cluster)
}

/// Uninstalls the release when dropped.
pub struct Release(&'static Cluster);

impl Release {
    /// The guard of release `braid` in braid-system, installed some other way than `install`.
    pub fn installed(cluster: &'static Cluster) -> Release {
        Release(cluster)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.helm(&["uninstall", RELEASE, "-n", "braid-system", "--ignore-not-found"]);
    }
}

/// Labels `ns` for injection, applies `yaml` (the echo apps and what goes with them) and waits
/// until echo v1 and v2 have rolled out (`timeout`, as kubectl writes it), so their pods have
/// sidecars.
pub fn deploy_meshed_echo(cluster: &Cluster, ns: &str, yaml: &str, timeout: &str) {
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, yaml);
    for deployment in ["echo-v1", "echo-v2"] {
        let deployment = format!("deployment/{deployment}");
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, &deployment, &format!("--timeout={timeout}")]);
    }
}

/// Deployment and Service `echo-VERSION`: `replicas` echo servers as ServiceAccount `echo`, with
/// `env` (`, {name: .., value: ..}` items) added to their environment.
pub fn echo(ns: &str, version: &str, replicas: u32, env: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: echo-{version}, namespace: {ns} }}
spec:
  replicas: {replicas}
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
          imagePullPolicy: Always
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

/// ServiceAccounts echo, client and intruder, Service `echo` over both versions, and
/// `replicas` pods each of echo v1 and v2.
pub fn workloads(ns: &str, replicas: u32) -> String {
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
        echo(ns, "v1", replicas, ""),
        echo(ns, "v2", replicas, "")
    )
}

/// MeshPolicy `echo`: the echo pods take mTLS only (STRICT), from the `client` ServiceAccount only.
pub fn strict_policy(ns: &str) -> String {
    format!(
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
    )
}

/// MeshRoute `echo` for Service echo with `rules` (YAML list items, indented by four).
pub fn route(ns: &str, rules: &str) -> String {
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

/// The v1/v2 weights of the echo route, with `extra` lines appended to its one rule.
pub fn split(ns: &str, v1: u32, v2: u32, extra: &str) -> String {
    route(
        ns,
        &format!(
            "    - backends: [{{ service: echo-v1, weight: {v1} }}, {{ service: echo-v2, weight: {v2} }}]\n{extra}"
        ),
    )
}

/// Waits until MeshRoute echo is Accepted and Programmed at its generation; its PROXIES column.
pub async fn programmed(cluster: &Cluster, ns: &str) -> String {
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

pub fn url(ns: &str, path: &str) -> String {
    format!("http://echo.{ns}.svc.cluster.local:8080{path}")
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap_or_else(|err| panic!("pod address {ip}:{port}: {err}"))
}

/// Milliseconds since the Unix epoch: the clock the load pods date their answers with (they run
/// on this machine).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether a load client's pod gets a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sidecar {
    Meshed,
    /// Meshed, its proxy logging at debug how it picks endpoints (balance, outbound), so that a
    /// test can say why a request was lost (`sidecar_log`).
    MeshedDebug,
    /// Annotated braid.dev/inject=disabled: a plaintext client from inside the cluster.
    None,
}

/// The log level a `Sidecar::MeshedDebug` proxy gets (braid.dev/proxy-log-level).
const DEBUG_PROXY_LOG: &str = "info,braid_proxy::outbound=debug,braid_proxy::balance=debug";

/// The last `lines` lines of pod `name`'s proxy log that contain one of `needles`.
pub fn sidecar_log(cluster: &Cluster, ns: &str, name: &str, needles: &[&str], lines: usize) -> String {
    let output = cluster.kubectl(&["logs", "-n", ns, name, "-c", "braid-proxy"]);
    let log = String::from_utf8_lossy(&output.stdout);
    let matching: Vec<&str> =
        log.lines().filter(|line| needles.iter().any(|needle| line.contains(needle))).collect();
    matching[matching.len().saturating_sub(lines)..].join("\n")
}

/// The pod of a load client (e2e/apps `load --json ARGS`) running as `account`.
pub fn start_load_pod(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    account: &str,
    sidecar: Sidecar,
    args: &[&str],
) {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    let inject = match sidecar {
        Sidecar::Meshed => String::new(),
        Sidecar::MeshedDebug => {
            format!(", annotations: {{ braid.dev/proxy-log-level: \"{DEBUG_PROXY_LOG}\" }}")
        }
        Sidecar::None => ", annotations: { braid.dev/inject: disabled }".to_owned(),
    };
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns}, labels: {{ app: load }}{inject} }}
spec:
  serviceAccountName: {account}
  restartPolicy: Never
  containers:
    - name: load
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Always
      command: [load, --json, {}]
"#,
            args.join(", ")
        ),
    );
}

/// The IP of load pod `name` once its load container has started.
pub async fn load_pod_ip(client: &Client, ns: &str, name: &str) -> String {
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

/// Prints a load run's summary (and its proxy's log when a request failed, unless it is a probe
/// meant to be refused), deletes its pod, and returns its report.
pub fn finish_load(cluster: &Cluster, ns: &str, name: &str, report: Value, probe: bool) -> Value {
    let summary = ["total", "ok", "failed", "statuses", "errors", "backends", "latency_ms"]
        .map(|k| format!("{k}={}", report[k]));
    eprintln!("{name}: {}", summary.join(" "));
    if count(&report, "failed") > 0 && !probe {
        eprintln!("{name}: what the failures said: {}", report["error_examples"]);
        // Every discovery update is logged too; the lines that tell a failure are the others.
        let proxy = cluster.kubectl(&["logs", "-n", ns, name, "-c", "braid-proxy"]);
        let log = String::from_utf8_lossy(&proxy.stdout);
        let lines: Vec<&str> =
            log.lines().filter(|line| !line.contains("discovered destination applied")).collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        eprintln!("{name}: its proxy's log (discovery updates left out):\n{}", tail.join("\n"));
    }
    let _ = cluster.kubectl(&["delete", "pod", "-n", ns, name, "--wait=false"]);
    report
}

/// A load run of fixed length (`--duration` in `args`) in a meshed pod as `account`: its JSON
/// report (e2e/apps load --json).
pub async fn load(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Value {
    load_with(cluster, client, ns, name, account, Sidecar::Meshed, args).await
}

/// `load`, in a pod with or without a sidecar.
pub async fn load_with(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    account: &str,
    sidecar: Sidecar,
    args: &[&str],
) -> Value {
    start_load_pod(cluster, ns, name, account, sidecar, args);
    load_pod_ip(client, ns, name).await;
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
    let logs = cluster.kubectl_ok(&["logs", "-n", ns, name, "-c", "load"]);
    // The report is the JSON document at the end of the log (pretty-printed).
    let start = logs.rfind("\n{").map(|i| i + 1).or_else(|| logs.starts_with('{').then_some(0));
    let report = start.map(|i| &logs[i..]).unwrap_or_else(|| panic!("no JSON report in:\n{logs}"));
    let report = serde_json::from_str(report).unwrap_or_else(|err| panic!("bad report {err}: {logs}"));
    // A pod without a sidecar has no proxy log to show.
    finish_load(cluster, ns, name, report, sidecar == Sidecar::None)
}

/// The port a running load client serves its report on (GET /report, POST /stop).
pub const LOAD_REPORT_PORT: u16 = 9090;

/// When a change ran, on the test's clock.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub started_ms: u64,
    pub ended_ms: u64,
}

impl Window {
    /// Runs `change` and returns what it returned and when it ran.
    pub async fn of<T>(change: impl std::future::Future<Output = T>) -> (T, Window) {
        let started_ms = unix_ms();
        let out = change.await;
        (out, Window { started_ms, ended_ms: unix_ms() })
    }
}

/// A load client to run in a pod: `rate` requests per second to `url` as `account`, with `extra`
/// added to its command line.
pub struct LoadSpec<'s> {
    pub name: &'s str,
    pub account: &'s str,
    pub sidecar: Sidecar,
    pub url: &'s str,
    pub rate: u32,
    pub extra: &'s [&'s str],
    /// Every request is meant to be refused: failures are the expected outcome.
    pub probe: bool,
}

/// A load client running in a pod until stopped, serving its report.
pub struct LoadRun<'a> {
    cluster: &'a Cluster,
    ns: String,
    pub name: String,
    reports: SocketAddr,
    probe: bool,
}

impl<'a> LoadRun<'a> {
    /// Starts the load pod `spec` describes and waits until its load container runs.
    pub async fn start(cluster: &'a Cluster, client: &Client, ns: &str, spec: LoadSpec<'_>) -> LoadRun<'a> {
        let serve = format!("0.0.0.0:{LOAD_REPORT_PORT}");
        let rate = spec.rate.to_string();
        let mut args = vec!["--url", spec.url, "--rate", &rate, "--serve", &serve];
        args.extend_from_slice(spec.extra);
        start_load_pod(cluster, ns, spec.name, spec.account, spec.sidecar, &args);
        let ip = load_pod_ip(client, ns, spec.name).await;
        LoadRun {
            cluster,
            ns: ns.to_owned(),
            name: spec.name.to_owned(),
            reports: addr(&ip, LOAD_REPORT_PORT),
            probe: spec.probe,
        }
    }

    /// The report so far, or None while the client does not answer yet.
    pub fn report(&self) -> Option<Value> {
        let (_, body) = crate::http_get(self.reports, "/report").filter(|(code, _)| *code == 200)?;
        serde_json::from_str(&body).ok()
    }

    /// Waits until the client got a 2xx answer: the route works from its pod.
    pub async fn answered(&self) {
        let first_ok = eventually(
            Duration::from_secs(60),
            &format!("load {} to get a 2xx answer", self.name),
            || async { self.report()?["first_ok_unix_ms"].as_u64() },
        )
        .await;
        eprintln!(
            "{}: sending, first 2xx answer {} ms before the test saw it",
            self.name,
            unix_ms().saturating_sub(first_ok)
        );
    }

    /// Waits until the client has finished `n` requests, whatever their outcome (for probes
    /// that should be refused).
    pub async fn sent(&self, n: u64) {
        eventually(
            Duration::from_secs(60),
            &format!("load {} to finish {n} requests", self.name),
            || async { (self.report()?["total"].as_u64()? >= n).then_some(()) },
        )
        .await;
    }

    /// The report since the last reset (or the start), and a new start (POST /reset).
    pub fn reset(&self) -> Value {
        let (code, body) = crate::http_post(self.reports, "/reset", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("load {}: POST /reset got no answer from {}", self.name, self.reports));
        assert_eq!(code, 200, "load {}: POST /reset: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad report {err}: {body}"))
    }

    /// Stops the client (POST /stop: the final report once every request sent has finished),
    /// deletes its pod and returns the report.
    pub fn stop(self) -> Value {
        // Each request in flight may take up to the load client's 10 s timeout.
        let (code, body) = crate::http_post(self.reports, "/stop", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("load {}: POST /stop got no answer from {}", self.name, self.reports));
        assert_eq!(code, 200, "load {}: POST /stop: {body}", self.name);
        let report: Value =
            serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad report {err}: {body}"));
        let report = finish_load(self.cluster, &self.ns, &self.name, report, self.probe);
        assert_eq!(
            (report["running"].as_bool(), report["in_flight"].as_u64()),
            (Some(false), Some(0)),
            "load {} stopped with every request finished: {report}",
            self.name
        );
        report
    }
}

/// Asserts that a load run's answered requests (`first_ok`/`last_ok`, or for a probe that is
/// refused every time `first_done`/`last_done`) came both before `window` started and after it
/// ended: the disruption really overlapped the load, on the pods' clock.
pub fn assert_overlaps(report: &Value, field: &str, window: Window, what: &str) {
    let first = report[format!("first_{field}_unix_ms")].as_u64();
    let last = report[format!("last_{field}_unix_ms")].as_u64();
    assert!(
        first.is_some_and(|first| first <= window.started_ms)
            && last.is_some_and(|last| last >= window.ended_ms),
        "{what} must have run before and after the change ({window:?}): first at {first:?}, last at {last:?}: {report}"
    );
}

/// Requests the echo pods' sidecars took in over mTLS from the `client` identity, summed over
/// the pods: what proves a load run crossed both sidecars rather than going around them.
pub async fn inbound_from_client(client: &Client, ns: &str) -> u64 {
    inbound_from_client_by_pod(client, ns, "app=echo").await.values().sum()
}

/// Requests each pod of `selector` took in through its sidecar over mTLS from the `client`
/// identity, by pod name.
pub async fn inbound_from_client_by_pod(client: &Client, ns: &str, selector: &str) -> BTreeMap<String, u64> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let client_id = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/client\"");
    let mut counts = BTreeMap::new();
    for pod in pods.list(&ListParams::default().labels(selector)).await.expect("list pods") {
        let name = pod.metadata.name.unwrap_or_default();
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else { continue };
        let (_, metrics) = crate::http_get(addr(&ip, 4191), "/metrics")
            .unwrap_or_else(|| panic!("no /metrics from the sidecar of pod {name} at {ip}"));
        let total = metrics
            .lines()
            .filter(|l| l.starts_with("request_total{direction=\"inbound\"") && l.contains(&client_id))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        counts.insert(name, total as u64);
    }
    counts
}

pub fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or(0)
}

/// Requests answered by each echo version.
pub fn by_version(report: &Value) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for (backend, n) in report["backends"].as_object().into_iter().flatten() {
        let version = backend.rsplit('@').next().unwrap_or(backend).to_owned();
        *versions.entry(version).or_default() += n.as_u64().unwrap_or(0);
    }
    versions
}

/// The operators' leader election Lease.
pub fn lease(cluster: &Cluster) -> Value {
    let out = cluster.kubectl_ok(&["get", "lease", "braid-operator", "-n", "braid-system", "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|err| panic!("lease braid-operator: {err}: {out}"))
}

/// The pod of the operator that leads.
pub fn lease_holder(cluster: &Cluster) -> String {
    holder(&lease(cluster))
}

/// The holder of `lease` (as `lease` read it).
pub fn holder(lease: &Value) -> String {
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| panic!("no operator holds the lease: {lease}"))
        .to_owned()
}

/// SIGKILL to the leading operator `leader`, and its pod deleted, so the kubelet cannot restart
/// it under the same name and take the lease back: the standby must notice the silence and take
/// over. Returns the new leader and how long after the kill it took the lease.
pub async fn kill_leader(cluster: &Cluster, leader: &str) -> (String, Duration) {
    let killed = kill_container_process(leader, "braid-operator");
    cluster.kubectl_ok(&["delete", "pod", "-n", "braid-system", leader, "--grace-period=0", "--force"]);
    eprintln!("SIGKILL to the leading operator {leader} (pid {killed}), its pod deleted");
    let started = std::time::Instant::now();
    let next = eventually(Duration::from_secs(90), "another operator to take the lease", || async {
        let lease = lease(cluster);
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned();
        (!holder.is_empty() && holder != leader).then_some(holder)
    })
    .await;
    (next, started.elapsed())
}

/// Sends SIGKILL to the process of container `binary` in pod `pod` (found on this machine, where
/// the node runs its containers, by its HOSTNAME) and returns its pid.
pub fn kill_container_process(pod: &str, binary: &str) -> u32 {
    let hostname = format!("HOSTNAME={pod}");
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(first).ends_with(binary)
                && environ.split(|b| *b == 0).any(|var| var == hostname.as_bytes())
        })
        .unwrap_or_else(|| panic!("no {binary} process of pod {pod} on this machine"));
    let status =
        std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -KILL {pid}: {status}");
    pid
}
