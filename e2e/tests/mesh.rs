//! The whole mesh, end to end, with real pods on the local cluster's node: Braid installed with
//! its Helm chart from the local images (operator and webhook as Deployments), a labelled
//! namespace, an echo service in v1 and v2 and load clients, all with injected sidecars, and
//! real traffic between pods through kube-proxy, CoreDNS, the proxies' iptables redirect and
//! mTLS. Needs the node (`make cluster-up`) and the images (`make images`); `make e2e` does both.
//! A test binary of its own: it installs the chart, which owns the cluster's single Mesh.

use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, Release, Sidecar, Window, addr, apply, assert_overlaps, by_version,
    check_prerequisites, count, deploy_meshed_echo, inbound_from_client, install, load, programmed, route,
    split, strict_policy, url, workloads,
};
use braid_e2e::{Cluster, TestNamespace, eventually, setup};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster.kubectl_ok(args)
}

/// How long a load run of `load_while` sends before the change (on connections made under the
/// old state) and after it (on the new state).
const LOAD_BEFORE_CHANGE: Duration = Duration::from_secs(3);
const LOAD_AFTER_CHANGE: Duration = Duration::from_secs(5);

/// Runs `change` while a load client (pod `name`, the `client` identity, `rate` requests per
/// second to the echo Service) sends: starts the load pod, waits until its report shows a
/// successful answer (so the load really runs, on its own clock, before the change), lets it
/// run LOAD_BEFORE_CHANGE more, runs `change`, lets the load run LOAD_AFTER_CHANGE on the changed
/// state, stops it and returns the report and what `change` returned. Asserts that the change
/// overlapped the load: the load pod's first successful answer came before the change started
/// and its last one after the change ended.
async fn load_while<T>(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    name: &str,
    rate: u32,
    change: impl std::future::Future<Output = T>,
) -> (Value, T) {
    let url = url(ns, "/");
    let spec = LoadSpec {
        name,
        account: "client",
        sidecar: Sidecar::Meshed,
        url: &url,
        rate,
        extra: &[],
        probe: false,
    };
    let run = LoadRun::start(cluster, client, ns, spec).await;
    run.answered().await;
    tokio::time::sleep(LOAD_BEFORE_CHANGE).await;
    let (out, window) = Window::of(change).await;
    tokio::time::sleep(LOAD_AFTER_CHANGE).await;
    let report = run.stop();
    assert_overlaps(&report, "ok", window, &format!("load {name}"));
    eprintln!("{name}: the change took {} ms", window.ended_ms - window.started_ms);
    (report, out)
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

/// The installed mesh and the echo apps in a labelled namespace, which each step below checks
/// something of. Dropped in field order: the apps' namespace, then the release.
struct Mesh {
    apps: TestNamespace,
    _release: Release,
    _unused: TestNamespace,
    cluster: &'static Cluster,
    client: Client,
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
        let release = install(cluster, &[]);
        eprintln!("installed in {:?}", started.elapsed());
        let apps = TestNamespace::create(cluster, &client, "e2e-mesh").await;
        let ns = apps.name.as_str();
        deploy_meshed_echo(cluster, ns, &workloads(ns, 2), "180s");
        Mesh { apps, _release: release, _unused: unused, cluster, client }
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
        apply(cluster, &strict_policy(ns));
        self.the_policy_reports_the_pods_it_selects(4).await;
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
        // Linkerd's authorization labels name the MeshPolicy that governs the pod, as the
        // operator sent it to the proxy: the intruder's denials and the client's admissions.
        let intruder = format!("client_id=\"spiffe://cluster.local/ns/{ns}/sa/intruder\"");
        let under_echo = |family: &str, client: &str, more: &str| {
            metrics.lines().any(|line| {
                line.starts_with(family)
                    && line.contains(client)
                    && line.contains("srv_kind=\"meshpolicy\"")
                    && line.contains("srv_name=\"echo\"")
                    && line.contains("srv_port=\"8080\"")
                    && line.contains(more)
            })
        };
        assert!(
            under_echo("inbound_http_authz_deny_total{", &intruder, "route_name=\"default\""),
            "the intruder's denials, under MeshPolicy echo:\n{metrics}"
        );
        assert!(
            under_echo("inbound_http_authz_allow_total{", &client_id, "authz_name=\"echo-0\""),
            "the client's admissions, by rule 0 of MeshPolicy echo:\n{metrics}"
        );
        kubectl(cluster, &["delete", "meshpolicy", "echo", "-n", ns]);
    }

    /// MeshPolicy echo is Accepted at its generation and counts the `pods` meshed echo pods it
    /// selects, as `kubectl get meshpolicies` shows.
    async fn the_policy_reports_the_pods_it_selects(&self, pods: u64) {
        let (cluster, ns) = (self.cluster, self.ns());
        eventually(Duration::from_secs(30), "MeshPolicy echo Accepted, selecting the echo pods", || async {
            let out = cluster.kubectl(&["get", "meshpolicy", "echo", "-n", ns, "-o", "json"]);
            let policy: Value = serde_json::from_slice(&out.stdout).ok()?;
            let generation = policy["metadata"]["generation"].as_i64()?;
            let accepted = policy["status"]["conditions"].as_array()?.iter().any(|c| {
                c["type"] == "Accepted" && c["status"] == "True" && c["observedGeneration"] == generation
            });
            (accepted && policy["status"]["pods"].as_u64() == Some(pods)).then_some(())
        })
        .await;
        let listing = kubectl(cluster, &["get", "meshpolicies", "-n", ns]);
        eprintln!("$ kubectl get meshpolicies -n {ns}\n{listing}");
        assert!(
            listing.lines().skip(1).any(|l| l.split_whitespace().any(|w| w == pods.to_string())),
            "the PODS column shows {pods}: {listing}"
        );
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
