//! Three things a MeshRoute and a Service port do end to end, through real sidecars:
//!
//! - Mirroring: over 1,200 requests from a meshed load client on a rule that mirrors
//!   MIRROR_PERCENT % of its requests to Service `mirror`, the mirror's pods (their echo app's own
//!   count, `GET /stats`) received a share within SIGMAS binomial standard deviations of it, each
//!   copy over mTLS from the client's identity (the mirror sidecars' count); every answer the
//!   client got came from the primary (echo v1), which got each request once; none from the mirror.
//! - Per-try timeouts: on a rule with ATTEMPTS tries of PER_TRY_MS each, requests whose first try
//!   is slower than that (and the retry fast) all succeed, after about one per-try timeout and well
//!   within the rule's total timeout; requests slow on every try get 504 after about ATTEMPTS
//!   per-try timeouts. The echo pod saw exactly the tries that says, and the client's proxy counted
//!   each per-try timeout.
//! - Opaque TCP: a server-speaks-first TCP echo behind a Service port marked `appProtocol: tcp`,
//!   under a STRICT MeshPolicy that admits only the `client` ServiceAccount: a meshed client
//!   gets every byte back intact from both server pods; the same client without a sidecar
//!   (plaintext) and a meshed client of another identity are refused, the latter by its SPIFFE id,
//!   so what passed was mTLS between the sidecars. The server sidecars counted the bytes and no
//!   HTTP request. The server speaking first is what makes the marking matter: on a port not
//!   marked, the client's sidecar waits for the client to speak (an HTTP pool warming up) and
//!   the greeting never comes.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`) and the images (`make images`). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, Release, Sidecar, addr, apply, check_prerequisites, count, deploy_meshed_echo,
    inbound_from_client_by_pod, install, programmed, route, url, workloads,
};
use braid_e2e::{Cluster, SIGMAS, TestNamespace, eventually, setup, within};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

/// Echo pods per version; the per-try case needs its backend to be one pod, which keeps the
/// tries of each request (told apart by their request id) on it.
const REPLICAS: u32 = 1;
/// The mirror rule copies this share of its requests to Service mirror...
const MIRROR_PERCENT: u32 = 30;
/// ...measured over this many: 100 a second for 12 s.
const MIRROR_RATE: u32 = 100;
const MIRROR_SECONDS: u32 = 12;
/// The retry rule: this many tries, each given PER_TRY_MS, all within TOTAL_TIMEOUT_MS.
const ATTEMPTS: u64 = 3;
const PER_TRY_MS: u64 = 300;
const TOTAL_TIMEOUT_MS: u64 = 3000;
/// A slow try's answer comes this late: far past the per-try timeout.
const SLOW: &str = "2s";
/// The longest backoff before the retries of one request, summed: the proxy waits up to 25 ms
/// before the second try and up to 50 ms before the third (jittered, as Envoy).
const BACKOFF_MS: u64 = 25 + 50;
/// What a request may take on top of its tries and backoffs: the client's and the server's
/// sidecars, the pods' network and the load client's schedule, on a busy two-core node.
const SLACK_MS: u64 = 250;
/// The TCP echo: connections from one client at once, and bytes each sends and gets back.
const TCP_CONNECTIONS: u64 = 16;
const TCP_BYTES: u64 = 64 * 1024;
const TCP_PORT: u16 = 9000;
/// Connections the refused clients try.
const REFUSED: u64 = 4;

/// MeshRoute `echo`: `/mirror` to echo-v1, copied in part to Service mirror; `/retry` to echo-v1
/// with per-try timeouts; the rest to echo-v1.
fn echo_route(ns: &str) -> String {
    route(
        ns,
        &format!(
            r#"    - name: mirror
      matches: [{{ path: {{ type: PathPrefix, value: /mirror }} }}]
      backends: [{{ service: echo-v1 }}]
      mirror: {{ service: mirror, percent: {MIRROR_PERCENT} }}
    - name: retry
      matches: [{{ path: {{ type: PathPrefix, value: /retry }} }}]
      backends: [{{ service: echo-v1 }}]
      timeout: {TOTAL_TIMEOUT_MS}ms
      retries:
        attempts: {ATTEMPTS}
        perTryTimeout: {PER_TRY_MS}ms
        retryOn: [gateway-error]
        # Every request here is retried once or twice: the shared budget (20% of requests plus
        # 10 a second) would refuse some of those retries, which is not what this case checks.
        budget: {{ percent: 100, minRetriesPerSecond: 100 }}
    - name: default
      backends: [{{ service: echo-v1 }}]"#
        ),
    )
}

/// Deployment and Service `mirror`: two echo servers named `mirror`, not behind Service echo.
fn mirror(ns: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: mirror, namespace: {ns} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: mirror }} }}
  template:
    metadata: {{ labels: {{ app: mirror }} }}
    spec:
      serviceAccountName: echo
      containers:
        - name: echo
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [echo, --name, mirror, --app-version, v1]
          env: [{{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}]
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 1 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: mirror, namespace: {ns} }}
spec:
  selector: {{ app: mirror }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
"#
    )
}

/// Deployment and Service `tcp-echo` (two pods, ServiceAccount tcp-echo), the port opaque by its
/// appProtocol (its name says nothing), and a STRICT MeshPolicy that admits only `client`.
fn tcp_echo(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: tcp-echo, namespace: {ns} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: tcp-echo, namespace: {ns} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: tcp-echo }} }}
  template:
    metadata: {{ labels: {{ app: tcp-echo }} }}
    spec:
      serviceAccountName: tcp-echo
      containers:
        - name: tcp-echo
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [tcp-echo, serve, --listen, "0.0.0.0:{TCP_PORT}"]
          env: [{{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}]
          ports: [{{ name: echo, containerPort: {TCP_PORT} }}]
          readinessProbe: {{ tcpSocket: {{ port: {TCP_PORT} }}, periodSeconds: 1 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: tcp-echo, namespace: {ns} }}
spec:
  selector: {{ app: tcp-echo }}
  ports: [{{ name: echo, port: {TCP_PORT}, targetPort: echo, appProtocol: tcp }}]
---
apiVersion: braid.dev/v1alpha1
kind: MeshPolicy
metadata: {{ name: tcp-echo, namespace: {ns} }}
spec:
  podSelector: {{ app: tcp-echo }}
  mtls: STRICT
  rules:
    - from: [{{ serviceAccount: {{ name: client }} }}]
"#
    )
}

/// The sum over `texts` of the samples of `name` whose labels contain every one of `labels`.
/// A timed run's median and slowest latency, and the per-try and total timeouts its client's
/// proxy counted.
struct TimeoutFigures {
    p50: f64,
    max: f64,
    per_try_timeouts: f64,
    total_timeouts: f64,
}

fn timeout_figures(report: &Value, metrics: &str) -> TimeoutFigures {
    let latency = &report["latency_ms"];
    TimeoutFigures {
        p50: latency["p50"].as_f64().unwrap_or(0.0),
        max: latency["max"].as_f64().unwrap_or(f64::MAX),
        per_try_timeouts: sum(&[metrics], "timeout_total", &["kind=\"per_try\""]),
        total_timeouts: sum(&[metrics], "timeout_total", &["kind=\"total\""]),
    }
}

fn sum<S: AsRef<str>>(texts: &[S], name: &str, labels: &[&str]) -> f64 {
    texts
        .iter()
        .flat_map(|text| text.as_ref().lines())
        .filter(|line| line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // An empty sum is -0.0, which prints as such.
        .sum::<f64>()
        + 0.0
}

/// The installed mesh and the apps. Dropped in field order: the namespace, then the release.
struct Mesh {
    apps: TestNamespace,
    _release: Release,
    cluster: &'static Cluster,
    client: Client,
}

impl Mesh {
    async fn install() -> Mesh {
        let (cluster, client, apps) = setup("e2e-mirror-tcp").await;
        check_prerequisites(cluster);
        let release = install(cluster, &[]);
        let ns = apps.name.as_str();
        let yaml = [workloads(ns, REPLICAS), mirror(ns), tcp_echo(ns), echo_route(ns)].join("\n---\n");
        deploy_meshed_echo(cluster, ns, &yaml, "300s");
        for deployment in ["deployment/mirror", "deployment/tcp-echo"] {
            cluster.kubectl_ok(&["rollout", "status", "-n", ns, deployment, "--timeout=300s"]);
        }
        programmed(cluster, ns).await;
        Mesh { apps, _release: release, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    /// The IPs of the running pods of `selector`, by pod name.
    async fn pod_ips(&self, selector: &str) -> BTreeMap<String, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        let list = pods.list(&ListParams::default().labels(selector)).await.expect("list pods");
        list.into_iter().filter_map(|pod| Some((pod.metadata.name?, pod.status?.pod_ip?))).collect()
    }

    /// Requests to `path` the echo apps of `selector` have echoed, summed over their pods (their
    /// own count, GET /stats, asked through their sidecars in plaintext: no policy selects them).
    async fn echoed(&self, selector: &str, path: &str) -> u64 {
        let mut total = 0;
        for (name, ip) in self.pod_ips(selector).await {
            let (status, body) = braid_e2e::http_get(addr(&ip, 8080), "/stats")
                .unwrap_or_else(|| panic!("no answer to GET /stats from pod {name} at {ip}"));
            assert_eq!(status, 200, "GET /stats from pod {name}: {body}");
            let stats: Value = serde_json::from_str(&body)
                .unwrap_or_else(|err| panic!("pod {name}: bad /stats {err}: {body}"));
            total += stats["paths"][path].as_u64().unwrap_or(0);
        }
        total
    }

    /// `echoed`, once it has stopped changing: a mirrored copy runs on its own task and may land
    /// a little after the client had its answer.
    async fn echoed_settled(&self, selector: &str, path: &str) -> u64 {
        let mut last = self.echoed(selector, path).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.echoed(selector, path).await;
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// A meshed load client as `client`: `rate` requests a second to `path` for `seconds`, with
    /// `extra`. Returns its report once every request has finished, and its own sidecar's
    /// /metrics read then (before its pod goes).
    async fn run(&self, name: &str, path: &str, rate: u32, seconds: u32, extra: &[&str]) -> (Value, String) {
        let url = url(self.ns(), path);
        let duration = format!("{seconds}s");
        let mut args = vec!["--duration", &duration];
        args.extend_from_slice(extra);
        let spec = LoadSpec {
            name,
            account: "client",
            sidecar: Sidecar::Meshed,
            url: &url,
            rate,
            extra: &args,
            probe: false,
        };
        let run = LoadRun::start(self.cluster, &self.client, self.ns(), spec).await;
        let wait = Duration::from_secs(u64::from(seconds) + 60);
        eventually(wait, &format!("load {name} to finish its {seconds} s"), || async {
            let report = run.report()?;
            (report["running"] == false && report["in_flight"] == 0 && count(&report, "total") > 0)
                .then_some(())
        })
        .await;
        let ips = self.pod_ips("app=load").await;
        let ip = ips.get(name).unwrap_or_else(|| panic!("load pod {name} has no IP: {ips:?}"));
        let (_, metrics) = braid_e2e::http_get(addr(ip, 4191), "/metrics")
            .unwrap_or_else(|| panic!("no /metrics from the sidecar of load pod {name}"));
        (run.stop(), metrics)
    }

    /// MIRROR_RATE requests a second for MIRROR_SECONDS on the mirror rule.
    async fn mirroring_copies_its_share_and_the_client_sees_only_the_primary(&self) {
        let path = "/mirror";
        let mirrored_before = self.echoed("app=mirror", path).await;
        let primary_before = self.echoed("app=echo,version=v1", path).await;
        let meshed_before: u64 =
            inbound_from_client_by_pod(&self.client, self.ns(), "app=mirror").await.values().sum();
        let started = Instant::now();
        let (report, client_metrics) = self.run("mirror-load", path, MIRROR_RATE, MIRROR_SECONDS, &[]).await;
        let mirrored = self.echoed_settled("app=mirror", path).await - mirrored_before;
        let primary = self.echoed("app=echo,version=v1", path).await - primary_before;
        let meshed =
            inbound_from_client_by_pod(&self.client, self.ns(), "app=mirror").await.values().sum::<u64>()
                - meshed_before;
        let total = count(&report, "total");
        let p = f64::from(MIRROR_PERCENT) / 100.0;
        let (share_ok, expected, sd) = within(mirrored, total, p);
        let dropped = sum(&[&client_metrics], "mirror_dropped_total", &[]);
        eprintln!(
            "mirror {MIRROR_PERCENT} %: {total} requests in {:.1} s, the mirror pods echoed {mirrored} copies ({:.2} %, \
             expected {expected:.0} ± {:.0}), {meshed} reached their sidecars over mTLS from the client, {dropped} \
             dropped by the client's proxy; the primary echoed {primary}; the client's answers came from {}",
            started.elapsed().as_secs_f64(),
            100.0 * mirrored as f64 / total.max(1) as f64,
            SIGMAS * sd,
            report["backends"]
        );
        assert!(total >= 1000, "at least 1,000 requests: {report}");
        assert_eq!(count(&report, "ok"), total, "every request answered 2xx: {report}");
        let backends: BTreeMap<String, u64> =
            serde_json::from_value(report["backends"].clone()).unwrap_or_default();
        assert_eq!(
            backends,
            BTreeMap::from([("echo@v1".to_owned(), total)]),
            "every answer the client got is the primary's, none a mirror's: {report}"
        );
        assert_eq!(primary, total, "the primary echoed each request once");
        assert!(
            share_ok,
            "{mirrored} copies of {total} requests is off the {MIRROR_PERCENT} % by more than {SIGMAS} sd \
             ({expected:.0} ± {:.0}); {dropped} copies dropped by the client's proxy",
            SIGMAS * sd
        );
        assert_eq!(
            meshed, mirrored,
            "every copy the mirror echoed came over mTLS from the client's identity"
        );
    }

    /// Requests whose first try answers in SLOW and whose retry answers at once: all succeed, after
    /// the first try's timeout and well before the total timeout. Then requests slow on every try:
    /// 504 once the last try timed out.
    async fn per_try_timeouts_retry_slow_tries_and_give_up_after_the_last(&self) {
        let path = "/retry";
        let selector = "app=echo,version=v1";
        // 10 a second for 5 s, each slow on its first try only.
        let before = self.echoed(selector, path).await;
        let started = Instant::now();
        let slow_once = [
            "--request-ids",
            "--header",
            &format!("x-echo-delay: {SLOW}"),
            "--header",
            "x-echo-delay-tries: 1",
        ];
        let (report, metrics) = self.run("slow-first-try", path, 10, 5, &slow_once).await;
        let tries = self.echoed(selector, path).await - before;
        let total = count(&report, "total");
        let latency = &report["latency_ms"];
        let TimeoutFigures { p50, max, per_try_timeouts, total_timeouts } =
            timeout_figures(&report, &metrics);
        let retries = sum(&[&metrics], "retry_total", &[]);
        eprintln!(
            "slow first try ({PER_TRY_MS} ms per try, {SLOW} answers): {total} requests in {:.1} s, statuses {}, \
             latency {latency}; the echo pod saw {tries} tries; the client's proxy counted {per_try_timeouts} \
             per-try timeouts, {total_timeouts} total timeouts and {retries} retries",
            started.elapsed().as_secs_f64(),
            report["statuses"]
        );
        assert!(total >= 40, "the load ran: {report}");
        assert_eq!(count(&report, "ok"), total, "every request succeeded on its retry: {report}");
        assert_eq!(v1_answers(&report), Some(total), "every answer came from echo v1: {report}");
        assert_eq!(tries, 2 * total, "each request was tried twice: once slow, once fast");
        assert_eq!(per_try_timeouts as u64, total, "one per-try timeout per request");
        assert_eq!(retries as u64, total, "one retry per request");
        assert_eq!(total_timeouts, 0.0, "the total timeout never fired");
        // Every request waited out its first try (the histogram's buckets are within 2 %), then
        // got the fast answer: far from the slow answer and the total timeout.
        let per_try = PER_TRY_MS as f64;
        assert!(
            p50 >= per_try * 0.98,
            "p50 {p50} ms: the first try's {PER_TRY_MS} ms were waited out: {latency}"
        );
        let bound = (PER_TRY_MS + BACKOFF_MS + SLACK_MS) as f64;
        assert!(
            max <= bound,
            "max {max} ms, more than {PER_TRY_MS} + {BACKOFF_MS} + {SLACK_MS} ms: {latency}"
        );

        // 4 a second for 5 s, slow on every try.
        let before = self.echoed(selector, path).await;
        let started = Instant::now();
        let slow_always = ["--header", &format!("x-echo-delay: {SLOW}")];
        let (report, metrics) = self.run("slow-every-try", path, 4, 5, &slow_always).await;
        let tries = self.echoed(selector, path).await - before;
        let total = count(&report, "total");
        let latency = &report["latency_ms"];
        let TimeoutFigures { p50, max, per_try_timeouts, total_timeouts } =
            timeout_figures(&report, &metrics);
        eprintln!(
            "slow every try: {total} requests in {:.1} s, statuses {}, latency {latency}; the echo pod saw {tries} \
             tries; the client's proxy counted {per_try_timeouts} per-try and {total_timeouts} total timeouts",
            started.elapsed().as_secs_f64(),
            report["statuses"]
        );
        let statuses: BTreeMap<String, u64> =
            serde_json::from_value(report["statuses"].clone()).unwrap_or_default();
        assert!(total >= 16, "the load ran: {report}");
        assert_eq!(statuses, BTreeMap::from([("504".to_owned(), total)]), "every request got 504: {report}");
        assert_eq!(tries, ATTEMPTS * total, "each request was tried {ATTEMPTS} times");
        assert_eq!(per_try_timeouts as u64, ATTEMPTS * total, "every try timed out");
        assert_eq!(total_timeouts, 0.0, "the per-try timeouts, not the total one, ended the requests");
        // ATTEMPTS tries of PER_TRY_MS each, then 504: not the slow answer, not the total timeout.
        let tries_ms = (ATTEMPTS * PER_TRY_MS) as f64;
        assert!(
            p50 >= tries_ms * 0.98,
            "p50 {p50} ms: {ATTEMPTS} tries of {PER_TRY_MS} ms were waited out: {latency}"
        );
        let bound = (ATTEMPTS * PER_TRY_MS + BACKOFF_MS + SLACK_MS) as f64;
        assert!(
            max <= bound && bound < TOTAL_TIMEOUT_MS as f64,
            "max {max} ms, more than {ATTEMPTS} × {PER_TRY_MS} + {BACKOFF_MS} + {SLACK_MS} ms: {latency}"
        );
    }

    /// Runs `tcp-echo call` in a pod as `account` (with or without a sidecar) to the tcp-echo
    /// Service until it exits: its exit code and JSON report.
    async fn tcp_call(&self, name: &str, account: &str, sidecar: Sidecar, connections: u64) -> (i32, Value) {
        let ns = self.ns();
        let inject = match sidecar {
            // This pod's proxy carries opaque TCP: nothing of the outbound HTTP logs to add.
            Sidecar::Meshed | Sidecar::MeshedDebug => "",
            Sidecar::None => ", annotations: { braid.dev/inject: disabled }",
        };
        apply(
            self.cluster,
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns}{inject} }}
spec:
  serviceAccountName: {account}
  restartPolicy: Never
  containers:
    - name: client
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Always
      command: [tcp-echo, call, --target, "tcp-echo.{ns}.svc.cluster.local:{TCP_PORT}",
                --connections, "{connections}", --bytes, "{TCP_BYTES}"]
"#
            ),
        );
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let exit_code =
            eventually(Duration::from_secs(180), &format!("tcp client pod {name} to finish"), || {
                let pods = pods.clone();
                async move {
                    let statuses = pods.get(name).await.ok()?.status?.container_statuses?;
                    let client = statuses.iter().find(|s| s.name == "client")?;
                    client.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
                }
            })
            .await;
        let logs = self.cluster.kubectl_ok(&["logs", "-n", ns, name, "-c", "client"]);
        let report = logs
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON report in the log of {name}:\n{logs}"));
        let report = serde_json::from_str(report).unwrap_or_else(|err| panic!("bad report {err}: {logs}"));
        eprintln!("{name} (as {account}, {sidecar:?}): exit {exit_code}, {report}");
        let _ = self.cluster.kubectl(&["delete", "pod", "-n", ns, name, "--wait=false"]);
        (exit_code, report)
    }

    /// The tcp-echo pods' sidecars' /metrics, one text per pod.
    async fn tcp_echo_metrics(&self) -> Vec<String> {
        let mut texts = Vec::new();
        for (name, ip) in self.pod_ips("app=tcp-echo").await {
            let (_, text) = braid_e2e::http_get(addr(&ip, 4191), "/metrics")
                .unwrap_or_else(|| panic!("no /metrics from the sidecar of pod {name}"));
            texts.push(text);
        }
        texts
    }

    async fn opaque_tcp_crosses_both_sidecars_over_mtls_intact(&self) {
        let ns = self.ns();
        let denied = |texts: &[String], account: &str| {
            let id = if account.is_empty() {
                "client_id=\"\"".to_owned()
            } else {
                format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/{account}\"")
            };
            sum(texts, "inbound_tcp_authz_deny_total", &[&id])
        };
        let before = self.tcp_echo_metrics().await;
        let started = Instant::now();
        let (exit_code, report) =
            self.tcp_call("tcp-client", "client", Sidecar::Meshed, TCP_CONNECTIONS).await;
        let elapsed = started.elapsed();
        let after = self.tcp_echo_metrics().await;
        let read = sum(&after, "tcp_read_bytes_total", &["direction=\"inbound\""])
            - sum(&before, "tcp_read_bytes_total", &["direction=\"inbound\""]);
        let http_requests = sum(&after, "request_total", &["direction=\"inbound\""]);
        let sent = TCP_CONNECTIONS * TCP_BYTES;
        eprintln!(
            "opaque TCP: {TCP_CONNECTIONS} connections of {TCP_BYTES} bytes in {:.1} s (pod included); the server \
             sidecars read {read} bytes from clients, and counted {http_requests} HTTP requests",
            elapsed.as_secs_f64()
        );
        assert_eq!(exit_code, 0, "the TCP client failed: {report}");
        assert_eq!(report["failed_connections"], 0, "{report}");
        assert_eq!(report["bytes_echoed"], sent, "every byte came back intact: {report}");
        let pods = report["pods"].as_object().cloned().unwrap_or_default();
        assert_eq!(pods.len(), 2, "the connections spread over both tcp-echo pods: {report}");
        assert!(
            pods.keys().all(|pod| pod.starts_with("tcp-echo-")),
            "each greeting came from a tcp-echo pod: {report}"
        );
        // The bytes crossed the server's sidecar, with the TLS records around them.
        assert!(read >= sent as f64, "the server sidecars read {read} bytes, less than the {sent} sent");
        assert_eq!(http_requests, 0.0, "the port is opaque: nothing was taken for HTTP");

        // Refused connections are closed (or reset) before the server speaks, not left hanging.
        let refused_promptly = |report: &Value| {
            let errors = report["errors"].as_array().cloned().unwrap_or_default();
            let closed =
                |e: &str| e.contains("closed before the greeting") || e.contains("reading the greeting");
            errors.len() == REFUSED as usize
                && errors.iter().all(|e| e.as_str().is_some_and(closed))
                && report["bytes_sent"] == 0
        };
        // Plaintext (no sidecar) is refused by STRICT: what passed above was mTLS...
        let before = self.tcp_echo_metrics().await;
        let (exit_code, report) = self.tcp_call("tcp-plaintext", "client", Sidecar::None, REFUSED).await;
        assert_ne!(exit_code, 0, "a plaintext client got through STRICT: {report}");
        assert_eq!(report["failed_connections"], REFUSED, "{report}");
        assert!(refused_promptly(&report), "{report}");
        let refused = denied(&self.tcp_echo_metrics().await, "") - denied(&before, "");
        // The kubelet's TCP readiness probes are plaintext too, and refused likewise.
        assert!(
            refused >= REFUSED as f64,
            "{refused} plaintext connections refused by the server sidecars, expected {REFUSED} or more"
        );
        // ...and another identity is refused by its SPIFFE id: the sidecars checked the client's.
        let (exit_code, report) = self.tcp_call("tcp-intruder", "intruder", Sidecar::Meshed, REFUSED).await;
        assert_ne!(exit_code, 0, "the intruder got through: {report}");
        assert_eq!(report["failed_connections"], REFUSED, "{report}");
        assert!(refused_promptly(&report), "{report}");
        let refused = denied(&self.tcp_echo_metrics().await, "intruder");
        eprintln!(
            "opaque TCP: the intruder's {REFUSED} connections were refused by its identity {refused} times"
        );
        assert_eq!(refused, REFUSED as f64, "each intruder connection refused by its mTLS identity");
    }
}

/// Answers from echo v1, or None when some came from another backend.
fn v1_answers(report: &Value) -> Option<u64> {
    let backends: BTreeMap<String, u64> = serde_json::from_value(report["backends"].clone()).ok()?;
    (backends.len() == 1).then(|| backends.get("echo@v1").copied()).flatten()
}

#[tokio::test]
async fn mirroring_per_try_timeouts_and_opaque_tcp_hold_through_the_sidecars() {
    let mesh = Mesh::install().await;
    mesh.mirroring_copies_its_share_and_the_client_sees_only_the_primary().await;
    mesh.per_try_timeouts_retry_slow_tries_and_give_up_after_the_last().await;
    mesh.opaque_tcp_crosses_both_sidecars_over_mtls_intact().await;
}
