//! A MeshRoute's routing features end to end, through real sidecars: fault injection (a delay
//! and an abort, each on a share of requests) measured over 1,000 requests against binomial
//! tolerances, and rule matches on path (exact and prefix), method, header and query parameter
//! sending to different backends, with a request that matches none going to the default.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`) and the images (`make images`). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;

use braid_e2e::mesh::{
    Release, by_version, check_prerequisites, count, deploy_meshed_echo, install, load, programmed, route,
    url, workloads,
};
use braid_e2e::{Cluster, SIGMAS, TestNamespace, setup, within};
use kube::Client;
use serde_json::Value;

/// Echo pods per version: one each keeps the set-up short.
const REPLICAS: u32 = 1;
/// The fault rule: this share of requests waits DELAY_MS before going on...
const DELAY_PERCENT: u32 = 30;
const DELAY_MS: u64 = 400;
/// ...and, independently, this share is answered ABORT_STATUS instead of being forwarded.
const ABORT_PERCENT: u32 = 20;
const ABORT_STATUS: u16 = 503;
/// Requests per fault run: 100 a second for 10 s.
const RATE: u32 = 100;
const SECONDS: u32 = 10;

/// MeshRoute `echo`: `/fault` with both faults to Service echo; exact `/exact`, prefix `/v2`,
/// method POST, header `x-canary: yes` and query `version=v2` each to echo-v2; the rest to echo-v1.
fn routing_route(ns: &str) -> String {
    route(
        ns,
        &format!(
            r#"    - name: fault
      matches: [{{ path: {{ type: PathPrefix, value: /fault }} }}]
      backends: [{{ service: echo }}]
      fault:
        delay: {{ duration: {DELAY_MS}ms, percent: {DELAY_PERCENT} }}
        abort: {{ status: {ABORT_STATUS}, percent: {ABORT_PERCENT} }}
    - name: exact
      matches: [{{ path: {{ type: Exact, value: /exact }} }}]
      backends: [{{ service: echo-v2 }}]
    - name: prefix
      matches: [{{ path: {{ type: PathPrefix, value: /v2 }} }}]
      backends: [{{ service: echo-v2 }}]
    - name: method
      matches: [{{ method: POST }}]
      backends: [{{ service: echo-v2 }}]
    - name: header
      matches: [{{ headers: [{{ name: x-canary, value: "yes" }}] }}]
      backends: [{{ service: echo-v2 }}]
    - name: query
      matches: [{{ queryParams: [{{ name: version, value: v2 }}] }}]
      backends: [{{ service: echo-v2 }}]
    - name: default
      backends: [{{ service: echo-v1 }}]"#
        ),
    )
}

/// The installed mesh and the echo pods. Dropped in field order: the namespace, then the release.
struct Mesh {
    apps: TestNamespace,
    _release: Release,
    cluster: &'static Cluster,
    client: Client,
}

impl Mesh {
    async fn install() -> Mesh {
        let (cluster, client, apps) = setup("e2e-routing").await;
        check_prerequisites(cluster);
        let release = install(cluster, &[]);
        let ns = apps.name.as_str();
        let yaml = [workloads(ns, REPLICAS), routing_route(ns)].join("\n---\n");
        deploy_meshed_echo(cluster, ns, &yaml, "300s");
        programmed(cluster, ns).await;
        Mesh { apps, _release: release, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    /// A meshed load run as `client` to `path`, with `extra` arguments.
    async fn run(&self, name: &str, path: &str, rate: u32, seconds: u32, extra: &[&str]) -> Value {
        let url = url(self.ns(), path);
        let (rate, duration) = (rate.to_string(), format!("{seconds}s"));
        let mut args = vec!["--url", &url, "--rate", &rate, "--duration", &duration];
        args.extend_from_slice(extra);
        load(self.cluster, &self.client, self.ns(), name, "client", &args).await
    }

    /// Two runs of 1,000 requests on the fault rule. The first with a client timeout of half the
    /// delay: a delayed request times out (delay and abort are drawn independently, so an aborted
    /// request may be delayed too), an undelayed aborted one gets the abort status, the rest 200;
    /// each share within SIGMAS of its configured probability. The second without that timeout:
    /// the slowest requests take at least the delay, the median does not.
    async fn faults_hit_their_configured_shares(&self) {
        let timeout = format!("{}ms", DELAY_MS / 2);
        let report = self.run("fault-shares", "/fault", RATE, SECONDS, &["--timeout", &timeout]).await;
        let total = count(&report, "total");
        let statuses: BTreeMap<String, u64> =
            serde_json::from_value(report["statuses"].clone()).unwrap_or_default();
        let errors: BTreeMap<String, u64> =
            serde_json::from_value(report["errors"].clone()).unwrap_or_default();
        let ok = statuses.get("200").copied().unwrap_or(0);
        let aborted = statuses.get(&ABORT_STATUS.to_string()).copied().unwrap_or(0);
        let delayed = errors.get("timeout").copied().unwrap_or(0);
        let p_delay = f64::from(DELAY_PERCENT) / 100.0;
        let p_abort = (1.0 - p_delay) * f64::from(ABORT_PERCENT) / 100.0;
        let (delay_ok, delay_expected, delay_sd) = within(delayed, total, p_delay);
        let (abort_ok, abort_expected, abort_sd) = within(aborted, total, p_abort);
        eprintln!(
            "faults: {total} requests; {delayed} timed out at {timeout} (delayed, expected {delay_expected:.0} ± \
             {:.0}); {aborted} got {ABORT_STATUS} (expected {abort_expected:.0} ± {:.0}); {ok} got 200",
            SIGMAS * delay_sd,
            SIGMAS * abort_sd
        );
        assert!(total >= 1000, "at least 1,000 requests: {report}");
        assert_eq!(ok + aborted + delayed, total, "only 200s, aborts and delayed requests: {report}");
        assert!(delay_ok, "delayed share off by more than {SIGMAS} sd: {report}");
        assert!(abort_ok, "aborted share off by more than {SIGMAS} sd: {report}");

        let report = self.run("fault-latency", "/fault", RATE, SECONDS, &[]).await;
        let latency = &report["latency_ms"];
        let (p50, p90, max) = (
            latency["p50"].as_f64().unwrap_or(0.0),
            latency["p90"].as_f64().unwrap_or(0.0),
            latency["max"].as_f64().unwrap_or(0.0),
        );
        eprintln!("faults without a client timeout: latency {latency}");
        assert_eq!(count(&report, "failed") + count(&report, "ok"), count(&report, "total"), "{report}");
        // 30% delayed: the 90th percentile is a delayed request, the median is not. The
        // histogram's buckets are within 2%.
        let delay = DELAY_MS as f64;
        assert!(p90 >= delay * 0.98, "p90 {p90} ms is at least the {DELAY_MS} ms delay: {latency}");
        assert!(max >= delay * 0.98, "max {max} ms: {latency}");
        assert!(p50 < delay, "p50 {p50} ms is an undelayed request: {latency}");
    }

    /// 20 requests for each kind of match: all answered 200 by the version the rule names.
    async fn matches_pick_their_backends(&self) {
        let cases: [(&str, &str, &[&str], &str); 8] = [
            ("exact", "/exact", &[], "v2"),
            // Exact is exact: a longer path falls through to the default.
            ("exact-longer", "/exact/more", &[], "v1"),
            ("prefix", "/v2/anything", &[], "v2"),
            ("method", "/m", &["--method", "POST"], "v2"),
            ("header", "/h", &["--header", "x-canary: yes"], "v2"),
            ("header-other", "/h", &["--header", "x-canary: no"], "v1"),
            ("query", "/q?version=v2", &[], "v2"),
            // The load client's default GET does not match the POST rule.
            ("default", "/anything?version=v1", &[], "v1"),
        ];
        let mut failures = Vec::new();
        for (name, path, extra, want) in cases {
            let report = self.run(&format!("match-{name}"), path, 20, 1, extra).await;
            let versions = by_version(&report);
            let method = report["method"].as_str().unwrap_or_default();
            eprintln!("match {name} ({method} {path} {extra:?}): answered by {versions:?}, want {want}");
            let total = count(&report, "total");
            // The client sent the method the case asks for (the report says which it sent).
            let want_method = extra.iter().skip_while(|a| **a != "--method").nth(1).copied().unwrap_or("GET");
            if total == 0
                || method != want_method
                || count(&report, "ok") != total
                || versions.get(want).copied() != Some(total)
            {
                failures.push(format!("{name}: {report}"));
            }
        }
        assert!(failures.is_empty(), "requests answered by the wrong version: {failures:#?}");
    }
}

#[tokio::test]
async fn a_routes_faults_and_matches_hold_through_the_sidecars() {
    let mesh = Mesh::install().await;
    mesh.matches_pick_their_backends().await;
    mesh.faults_hit_their_configured_shares().await;
}
