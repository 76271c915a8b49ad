//! A MeshRoute's traffic policy end to end, through real sidecars: a rule's rate limit answers
//! the excess with 429 in the client's pod, session affinity on a header keeps each session on
//! one echo pod while requests without the header spread over all of them, and requests over
//! `connectionPool.maxRequests` in flight get 503 at once.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`) and the images (`make images`). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;

use braid_e2e::mesh::{
    Release, check_prerequisites, count, deploy_meshed_echo, inbound_from_client, install, load, programmed,
    url, workloads,
};
use braid_e2e::{Cluster, TestNamespace, setup};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

/// Echo pods per version: four endpoints behind Service `echo`.
const REPLICAS: u32 = 2;
/// The limited rule's bucket: 10 requests at once, then 10 per second.
const RATE: u64 = 10;
const BURST: u64 = 10;
/// Requests one client pod may have in flight to the echo Service.
const MAX_REQUESTS: u64 = 5;

/// MeshRoute `echo`: session affinity on `x-session` for the port; `/limited` limited to RATE
/// per second with BURST, everything else open.
fn policy_route(ns: &str) -> String {
    format!(
        r#"
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: echo, namespace: {ns} }}
spec:
  service: echo
  loadBalancer:
    hashOn: {{ type: Header, name: x-session }}
  connectionPool:
    maxRequests: {MAX_REQUESTS}
  rules:
    - name: limited
      matches: [{{ path: {{ type: PathPrefix, value: /limited }} }}]
      backends: [{{ service: echo }}]
      rateLimit: {{ requestsPerSecond: {RATE}, burst: {BURST} }}
    - name: open
      backends: [{{ service: echo }}]
"#
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
        let (cluster, client, apps) = setup("e2e-policy").await;
        check_prerequisites(cluster);
        let release = install(cluster, &[]);
        let ns = apps.name.as_str();
        let yaml = [workloads(ns, REPLICAS), policy_route(ns)].join("\n---\n");
        deploy_meshed_echo(cluster, ns, &yaml, "300s");
        programmed(cluster, ns).await;
        // The webhook named each pod's Deployment, for metrics queries by workload.
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for pod in pods.list(&ListParams::default().labels("app=echo")).await.expect("list echo pods") {
            let labels = pod.metadata.labels.unwrap_or_default();
            let version = labels.get("version").cloned().unwrap_or_default();
            assert_eq!(
                labels.get("braid.dev/proxy-deployment"),
                Some(&format!("echo-{version}")),
                "pod {:?}: {labels:?}",
                pod.metadata.name
            );
        }
        Mesh { apps, _release: release, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    /// A meshed load run as `client`: `rate` per second for `seconds` to `path`, with `extra`.
    async fn run(&self, name: &str, path: &str, rate: u32, seconds: u32, extra: &[&str]) -> Value {
        let url = url(self.ns(), path);
        let (rate, duration) = (rate.to_string(), format!("{seconds}s"));
        let mut args = vec!["--url", &url, "--rate", &rate, "--duration", &duration];
        args.extend_from_slice(extra);
        load(self.cluster, &self.client, self.ns(), name, "client", &args).await
    }

    /// 50 requests a second for 10 s on the limited rule: the burst and 10 a second pass, the
    /// rest get 429 from the client's own proxy and never reach an echo pod.
    async fn the_rate_limit_answers_the_excess_with_429_in_the_clients_pod(&self) {
        let seconds = 10;
        let before = inbound_from_client(&self.client, self.ns()).await;
        let report = self.run("limited", "/limited", 50, seconds, &[]).await;
        let reached = inbound_from_client(&self.client, self.ns()).await - before;
        let statuses: BTreeMap<String, u64> =
            serde_json::from_value(report["statuses"].clone()).unwrap_or_default();
        let (passed, limited) =
            (statuses.get("200").copied().unwrap_or(0), statuses.get("429").copied().unwrap_or(0));
        eprintln!(
            "rate limit {RATE}/s burst {BURST}: {} sent over {seconds} s, {passed} answered 200, {limited} got 429, \
             {reached} reached the echo pods",
            count(&report, "total")
        );
        assert_eq!(passed + limited, count(&report, "total"), "only 200s and 429s: {report}");
        // The bucket allows BURST + RATE per second; the run's start and end blur it by a second.
        let expected = BURST + RATE * u64::from(seconds);
        assert!(
            (expected - RATE..=expected + RATE).contains(&passed),
            "{passed} passed, expected {expected} ± {RATE}: {report}"
        );
        assert_eq!(reached, passed, "a limited request never leaves the client's pod");
    }

    /// Two sessions by header: every request of each answered by one pod; requests without the
    /// header spread over at least three of the four pods.
    async fn a_session_header_sticks_to_one_pod_and_requests_without_it_spread(&self) {
        for session in ["alice", "bob"] {
            let header = format!("x-session: {session}");
            let report = self.run(&format!("session-{session}"), "/", 20, 5, &["--header", &header]).await;
            let pods: BTreeMap<String, u64> =
                serde_json::from_value(report["pods"].clone()).unwrap_or_default();
            eprintln!("session {session}: answered by {pods:?}");
            assert_eq!(count(&report, "failed"), 0, "{report}");
            assert_eq!(pods.len(), 1, "session {session} went to one pod only: {pods:?}");
        }
        let report = self.run("no-session", "/", 20, 5, &[]).await;
        let pods: BTreeMap<String, u64> = serde_json::from_value(report["pods"].clone()).unwrap_or_default();
        eprintln!("without a session: answered by {pods:?}");
        assert!(pods.len() >= 3, "requests without the header spread over the pods: {pods:?}");
    }

    /// 20 requests a second for 5 s, each answered after 1 s: about MAX_REQUESTS a second fit,
    /// the rest get 503 `overloaded` from the client's proxy without waiting.
    async fn requests_over_max_requests_get_503_at_once(&self) {
        let slow = ["--header", "x-echo-delay: 1s", "--header", "x-echo-delay-rate: 1"];
        let report = self.run("overload", "/", 20, 5, &slow).await;
        let statuses: BTreeMap<String, u64> =
            serde_json::from_value(report["statuses"].clone()).unwrap_or_default();
        let (passed, refused) =
            (statuses.get("200").copied().unwrap_or(0), statuses.get("503").copied().unwrap_or(0));
        eprintln!(
            "maxRequests {MAX_REQUESTS}, 1 s answers: {} sent, {passed} answered 200, {refused} got 503; latency {}",
            count(&report, "total"),
            report["latency_ms"]
        );
        assert_eq!(passed + refused, count(&report, "total"), "only 200s and 503s: {report}");
        // MAX_REQUESTS slots of 1 s each over 5 s, give or take the first and last second.
        let expected = MAX_REQUESTS * 5;
        assert!(
            (expected - MAX_REQUESTS..=expected + MAX_REQUESTS).contains(&passed),
            "{passed} passed, expected {expected} ± {MAX_REQUESTS}: {report}"
        );
    }
}

#[tokio::test]
async fn a_routes_rate_limit_session_affinity_and_request_limit_hold_through_the_sidecars() {
    let mesh = Mesh::install().await;
    mesh.the_rate_limit_answers_the_excess_with_429_in_the_clients_pod().await;
    mesh.a_session_header_sticks_to_one_pod_and_requests_without_it_spread().await;
    mesh.requests_over_max_requests_get_503_at_once().await;
}
