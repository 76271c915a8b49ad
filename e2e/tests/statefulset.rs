//! Pod-IP destinations end to end: a StatefulSet of two meshed echo pods behind a headless
//! Service, under a STRICT MeshPolicy. A headless Service has no cluster IP: DNS answers its name
//! and each pod's own name (`web-0.web.NS.svc.cluster.local`) with pod IPs, so the client's proxy
//! sees a pod IP as the original destination. Discovery answers it with that pod and its
//! identity (docs/discovery.md, "Pod IPs"), and the client's proxy originates mTLS to it.
//!
//! Braid is installed with its Helm chart from the local images, as in mesh.rs: needs the node
//! (`make cluster-up`) and the images (`make images`). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    Release, Sidecar, apply, check_prerequisites, count, inbound_from_client_by_pod, install, load, load_with,
};
use braid_e2e::{Cluster, TestNamespace, eventually, ready_endpoints, setup};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde_json::Value;

const REPLICAS: [&str; 2] = ["web-0", "web-1"];

/// The StatefulSet `web` (echo servers as ServiceAccount `web`) behind the headless Service
/// `web`, and the STRICT policy that admits only the `client` identity.
fn workloads(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: web, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: {ns} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: {ns} }}
spec:
  clusterIP: None
  selector: {{ app: web }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{ name: web, namespace: {ns} }}
spec:
  serviceName: web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 5
      containers:
        - name: echo
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [echo, --name, web]
          env: [{{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}]
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 1 }}
---
apiVersion: braid.dev/v1alpha1
kind: MeshPolicy
metadata: {{ name: web, namespace: {ns} }}
spec:
  podSelector: {{ app: web }}
  mtls: STRICT
  rules:
    - from: [{{ serviceAccount: {{ name: client }} }}]
"#
    )
}

/// The IP of each StatefulSet pod, by name.
async fn web_ips(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut ips = BTreeMap::new();
    for name in REPLICAS {
        let pod = pods.get(name).await.unwrap_or_else(|err| panic!("pod {name}: {err}"));
        let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_else(|| panic!("pod {name} has no IP"));
        ips.insert(name.to_owned(), ip);
    }
    ips
}

/// Waits until the headless Service's EndpointSlice lists each pod ready, by its hostname, at
/// its current IP. CoreDNS answers `web-0.web` from that slice, which the endpointslice
/// controller writes after the pod is ready (seconds later on a loaded machine): until then the
/// pod's name does not resolve, or resolves to the IP of the pod it replaced.
async fn names_resolve(client: &Client, ns: &str) {
    let expected: BTreeSet<(Option<String>, String)> =
        web_ips(client, ns).await.into_iter().map(|(pod, ip)| (Some(pod), ip)).collect();
    eventually(Duration::from_secs(60), "web's EndpointSlice to list both pods, ready", || async {
        let ready: BTreeSet<_> = ready_endpoints(client, ns, "web").await?.into_iter().collect();
        expected.is_subset(&ready).then_some(())
    })
    .await;
}

/// What each pod's proxy counted since `before`.
fn since(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(pod, n)| (pod.clone(), n - before.get(pod).copied().unwrap_or(0))).collect()
}

/// The installed mesh and the StatefulSet. Dropped in field order: the namespace, then the
/// release.
struct Mesh {
    apps: TestNamespace,
    _release: Release,
    cluster: &'static Cluster,
    client: Client,
}

impl Mesh {
    async fn install() -> Mesh {
        let started = Instant::now();
        let (cluster, client, apps) = setup("e2e-sts").await;
        check_prerequisites(cluster);
        let release = install(cluster, &[]);
        eprintln!("installed in {:?}", started.elapsed());
        let ns = apps.name.as_str();
        cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled"]);
        apply(cluster, &workloads(ns));
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, "statefulset/web", "--timeout=180s"]);
        names_resolve(&client, ns).await;
        Mesh { apps, _release: release, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    fn url(&self, host: &str) -> String {
        format!("http://{host}.{}.svc.cluster.local:8080/", self.ns())
    }

    /// A meshed run as the `client` identity: 100 requests over 5 s to `url`, with the requests
    /// the web pods' proxies took in from the client meanwhile.
    async fn meshed_load(&self, name: &str, url: &str, extra: &[&str]) -> (Value, BTreeMap<String, u64>) {
        let before = inbound_from_client_by_pod(&self.client, self.ns(), "app=web").await;
        let mut args = vec!["--url", url, "--rate", "20", "--duration", "5s"];
        args.extend_from_slice(extra);
        let report = load(self.cluster, &self.client, self.ns(), name, "client", &args).await;
        let seen = since(&inbound_from_client_by_pod(&self.client, self.ns(), "app=web").await, &before);
        assert!(count(&report, "total") >= 90, "the run sent its requests: {report}");
        (report, seen)
    }

    /// Each pod by its own DNS name: every request answered by that pod, over mTLS with the
    /// client's identity as the pod's proxy counted it, none failed; the client's proxy counted
    /// the pod IP as that pod's destination.
    async fn each_pod_by_its_own_name_is_mtls_with_the_clients_identity(&self) {
        let ns = self.ns();
        for pod in REPLICAS {
            let (report, seen) =
                self.meshed_load(&format!("to-{pod}"), &self.url(&format!("{pod}.web")), &[]).await;
            let total = count(&report, "total");
            assert_eq!(count(&report, "failed"), 0, "no request to {pod} fails under STRICT: {report}");
            assert_eq!(report["pods"][pod].as_u64(), Some(total), "{pod} answered every request: {report}");
            let expected: BTreeMap<String, u64> =
                REPLICAS.iter().map(|p| ((*p).to_owned(), if *p == pod { total } else { 0 })).collect();
            assert_eq!(seen, expected, "the pods' proxies saw every request over mTLS from the client");
            let ip = &web_ips(&self.client, ns).await[pod];
            let destination = format!("{}.{ns}.pod.cluster.local:8080", ip.replace('.', "-"));
            eprintln!("{pod}: {total} requests to {destination}, 0 failed, all over mTLS as the client");
        }
    }

    /// The headless Service's own name resolves to both pods' IPs: answered by its pods, over
    /// mTLS, none failed.
    async fn the_headless_service_name_is_mtls_too(&self) {
        let (report, seen) = self.meshed_load("to-web", &self.url("web"), &[]).await;
        let total = count(&report, "total");
        assert_eq!(count(&report, "failed"), 0, "no request to the headless name fails: {report}");
        let answered: u64 = REPLICAS.iter().filter_map(|p| report["pods"][*p].as_u64()).sum();
        assert_eq!(answered, total, "the StatefulSet's pods answered every request: {report}");
        assert_eq!(seen.values().sum::<u64>(), total, "every request over mTLS from the client: {seen:?}");
        eprintln!("web: {total} requests, 0 failed, by pod {seen:?}");
    }

    /// A MeshRoute on the headless Service applies to its pods' IPs with the pod as the only
    /// backend: its retries hide a pod failing a fifth of its requests.
    async fn the_headless_services_route_retries_for_the_pod(&self) {
        let ns = self.ns();
        let failing = ["--header", "x-echo-fail-rate: 0.2"];
        let url = self.url("web-0.web");
        let (bare, _) = self.meshed_load("fail-bare", &url, &failing).await;
        let bare_failed = count(&bare, "failed");
        assert!(bare_failed >= 5, "without a route about a fifth fails: {bare}");
        apply(
            self.cluster,
            &format!(
                r#"
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: web, namespace: {ns} }}
spec:
  service: web
  rules:
    - backends: [{{ service: web }}]
      retries: {{ attempts: 4, retryOn: ["5xx"] }}
"#
            ),
        );
        eventually(Duration::from_secs(60), "MeshRoute web Programmed", || async {
            let out = self.cluster.kubectl(&["get", "meshroute", "web", "-n", ns, "-o", "json"]);
            let route: Value = serde_json::from_slice(&out.stdout).ok()?;
            let generation = route["metadata"]["generation"].as_i64()?;
            let conditions = route["status"]["conditions"].as_array()?;
            let ok = |t: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True" && c["observedGeneration"] == generation)
            };
            (ok("Accepted") && ok("Programmed")).then_some(())
        })
        .await;
        let (retried, _) = self.meshed_load("fail-retried", &url, &failing).await;
        let total = count(&retried, "total");
        let retried_failed = count(&retried, "failed");
        // Four tries: 0.2^4 per request, 0.16 expected failures in 100, and more than 2 has a
        // chance under 0.1 %. (With three tries, 0.8 expected, more than 2 came one run in 20.)
        assert!(retried_failed <= 2, "the route's retries hide the failures: {retried}");
        assert_eq!(retried["pods"]["web-0"].as_u64(), Some(total), "web-0 stays the only backend: {retried}");
        eprintln!(
            "web-0 failing 20 %: {bare_failed}/{} failed without the route, {retried_failed}/{total} with its retries",
            count(&bare, "total")
        );
        self.cluster.kubectl_ok(&["delete", "meshroute", "web", "-n", ns]);
    }

    /// A client without a proxy speaks plaintext to a pod IP: the STRICT pods refuse all of it.
    async fn a_client_without_a_proxy_is_refused(&self) {
        let (ns, name) = (self.ns(), "unmeshed");
        let url = self.url("web-0.web");
        let args = ["--url", url.as_str(), "--rate", "10", "--duration", "3s"];
        let report = load_with(self.cluster, &self.client, ns, name, "default", Sidecar::None, &args).await;
        assert!(count(&report, "total") > 0, "{report}");
        assert_eq!(count(&report, "ok"), 0, "plaintext is refused under STRICT: {report}");
        eprintln!("unmeshed: {} plaintext requests to web-0, 0 answered", count(&report, "total"));
    }

    /// A pod deleted and recreated by the StatefulSet (a new pod, perhaps at a new IP, its old
    /// IP free for reuse) is reached again, over mTLS, with none failed.
    async fn a_recreated_pod_is_reached_again(&self) {
        let ns = self.ns();
        let before_ip = web_ips(&self.client, ns).await["web-1"].clone();
        self.cluster.kubectl_ok(&["delete", "pod", "-n", ns, "web-1", "--wait=true"]);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        eventually(Duration::from_secs(120), "the new web-1 to be ready", || async {
            let pod = pods.get("web-1").await.ok()?;
            let ready = pod.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(())
        })
        .await;
        names_resolve(&self.client, ns).await;
        let after_ip = web_ips(&self.client, ns).await["web-1"].clone();
        let (report, seen) = self.meshed_load("to-new-web-1", &self.url("web-1.web"), &[]).await;
        let total = count(&report, "total");
        assert_eq!(count(&report, "failed"), 0, "the recreated web-1 is reached: {report}");
        assert_eq!(seen.get("web-1").copied(), Some(total), "over mTLS from the client: {seen:?}");
        eprintln!("web-1 recreated ({before_ip} -> {after_ip}): {total} requests, 0 failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_behind_a_headless_service_is_mtls_under_strict() {
    let started = Instant::now();
    let mesh = Mesh::install().await;
    mesh.each_pod_by_its_own_name_is_mtls_with_the_clients_identity().await;
    mesh.the_headless_service_name_is_mtls_too().await;
    mesh.the_headless_services_route_retries_for_the_pod().await;
    mesh.a_client_without_a_proxy_is_refused().await;
    mesh.a_recreated_pod_is_reached_again().await;
    eprintln!("statefulset e2e done in {:?}", started.elapsed());
}
