//! The stream's protocol, tested over channels: what a proxy is sent, when, and what wakes it.

use super::*;
use crate::discovery::index::{EndpointInfo, PodInfo, PortInfo, ServiceInfo, SliceInfo};
use braid_api::config::DefaultInboundPolicy;
use braid_crds::MeshPolicySpec;
use serde_json::json;
use std::collections::BTreeSet;
use std::convert::Infallible;

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

fn index_pod(service_account: &str, ip: &str, created: &str) -> PodInfo {
    PodInfo {
        service_account: service_account.into(),
        meshed: true,
        ips: vec![ip.parse().unwrap()],
        created: created.into(),
        ..Default::default()
    }
}

fn cluster() -> Arc<Discovery> {
    let mut index = Index::new("cluster.local", "cluster.local");
    let port = || PortInfo { name: String::new(), port: 80, http2: false, opaque: false };
    index.upsert_pod(
        key("web", "client"),
        PodInfo {
            service_account: "client".into(),
            labels: Default::default(),
            meshed: true,
            probes: Vec::new(),
            ..Default::default()
        },
    );
    index.upsert_pod(
        key("shop", "api-1"),
        PodInfo {
            service_account: "api".into(),
            labels: Default::default(),
            meshed: true,
            probes: Vec::new(),
            ..Default::default()
        },
    );
    index.upsert_service(
        key("shop", "api"),
        ServiceInfo {
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            headless: false,
            ports: vec![port()],
            export_to: None,
        },
    );
    index.upsert_service(
        key("shop", "private"),
        ServiceInfo {
            cluster_ips: vec!["10.96.0.21".parse().unwrap()],
            headless: false,
            ports: vec![port()],
            export_to: Some(BTreeSet::from(["shop".to_owned()])),
        },
    );
    index.upsert_slice(
        key("shop", "api-x"),
        SliceInfo {
            service: "api".into(),
            ports: vec![PortInfo { name: String::new(), port: 8080, http2: false, opaque: false }],
            endpoints: vec![EndpointInfo {
                addresses: vec!["10.1.0.5".parse().unwrap()],
                ready: true,
                pod: Some("api-1".into()),
            }],
        },
    );
    Discovery::new(index)
}

struct Proxy {
    to_server: mpsc::UnboundedSender<Result<Bytes, Infallible>>,
    from_server: mpsc::Receiver<Bytes>,
    task: tokio::task::JoinHandle<Result<(), StreamError>>,
}

fn start(discovery: &Arc<Discovery>, peer: (&str, &str)) -> Proxy {
    start_with(discovery, peer, ProxyFeatures::default())
}

fn start_with(discovery: &Arc<Discovery>, peer: (&str, &str), features: ProxyFeatures) -> Proxy {
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (out, from_server) = mpsc::channel(16);
    let peer = Peer { namespace: peer.0.into(), service_account: peer.1.into(), features };
    let incoming = Box::pin(futures::stream::unfold(incoming, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let task = tokio::spawn(serve(discovery.clone(), peer, incoming, out, CancellationToken::new()));
    Proxy { to_server, from_server, task }
}

impl Proxy {
    fn send(&self, message: &ProxyMessage) {
        self.to_server.send(Ok(Bytes::from(api::encode(message)))).expect("server running");
    }
    async fn next(&mut self) -> ControlMessage {
        let line = tokio::time::timeout(std::time::Duration::from_secs(5), self.from_server.recv())
            .await
            .expect("a message within 5 s")
            .expect("stream open");
        let mut reader = LineReader::default();
        reader.push(&line).expect("fits");
        reader.next().expect("one line").expect("valid message")
    }
}

fn hello(ns: &str, pod: &str) -> ProxyMessage {
    ProxyMessage::Hello(api::Hello {
        pod_namespace: ns.into(),
        pod_name: pod.into(),
        proxy_version: "test".into(),
    })
}

fn subscribe(destination: &str) -> ProxyMessage {
    ProxyMessage::Subscribe(Resource::Destination(destination.into()))
}

fn destination(message: ControlMessage) -> DestinationUpdate {
    match message {
        ControlMessage::Destination(update) => update,
        other => panic!("expected a destination, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscribed_destination_gets_a_snapshot_then_each_change() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    proxy.send(&subscribe("10.96.0.20:80"));
    let first = destination(proxy.next().await);
    let service = first.service.expect("a mesh service");
    assert_eq!(service.backends[0].endpoints[0].address.to_string(), "10.1.0.5:8080");
    proxy.send(&ProxyMessage::Ack(api::Ack {
        resource: Resource::Destination("10.96.0.20:80".into()),
        version: first.version,
    }));

    discovery.update(|index| {
        index.upsert_slice(
            key("shop", "api-x"),
            SliceInfo {
                service: "api".into(),
                ports: vec![PortInfo { name: String::new(), port: 8080, http2: false, opaque: false }],
                endpoints: vec![EndpointInfo {
                    addresses: vec!["10.1.0.6".parse().unwrap()],
                    ready: true,
                    pod: None,
                }],
            },
        );
    });
    let second = destination(proxy.next().await);
    assert!(second.version > first.version);
    assert_eq!(second.service.expect("mesh").backends[0].endpoints[0].address.to_string(), "10.1.0.6:8080");

    // A change elsewhere sends nothing new to this proxy.
    discovery.update(|index| index.remove_pod(&key("shop", "api-1")));
    proxy.send(&subscribe("10.1.2.3:80"));
    let unknown = destination(proxy.next().await);
    assert_eq!((unknown.destination.as_str(), unknown.service), ("10.1.2.3:80", None));
    assert_eq!(discovery.registry.summary().connected, 1);
    drop(proxy.to_server);
    proxy.task.await.expect("task").expect("ends cleanly when the proxy hangs up");
    assert_eq!(discovery.registry.summary().connected, 0);
}

/// The identity the proxy is told to expect at the pod-IP destination of `update`.
fn identity(update: &DestinationUpdate) -> Option<&str> {
    update.service.as_ref()?.backends.first()?.endpoints.first()?.identity.as_deref()
}

#[tokio::test]
async fn a_pod_ip_follows_whoever_holds_it_and_an_unchanged_answer_is_not_resent() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    discovery.update(|index| {
        let mut pod = index_pod("api", "10.1.0.5", "2026-01-01T00:00:00Z");
        pod.labels.insert("app".into(), "api".into());
        index.upsert_pod(key("shop", "api-1"), pod);
    });
    proxy.send(&subscribe("10.1.0.5:8080"));
    let first = destination(proxy.next().await);
    assert_eq!(identity(&first), Some("spiffe://cluster.local/ns/shop/sa/api"));

    // A change that leaves the answer as it was sends nothing; the next message is the
    // answer to the reuse below.
    discovery.update(|index| index.remove_pod(&key("web", "client-gone")));
    discovery.update(|index| {
        index.upsert_pod(key("shop", "other"), index_pod("api", "10.1.0.99", "2026-01-01T00:00:00Z"))
    });
    // The IP is reused by a pod of another identity before the old pod's deletion arrives.
    discovery.update(|index| {
        index.upsert_pod(key("jobs", "batch-1"), index_pod("batch", "10.1.0.5", "2026-01-01T00:09:00Z"))
    });
    let reused = destination(proxy.next().await);
    assert!(reused.version > first.version);
    assert_eq!(identity(&reused), Some("spiffe://cluster.local/ns/jobs/sa/batch"));
    discovery.update(|index| {
        index.remove_pod(&key("shop", "api-1"));
        index.remove_pod(&key("jobs", "batch-1"));
    });
    let gone = destination(proxy.next().await);
    assert_eq!((gone.destination.as_str(), gone.service), ("10.1.0.5:8080", None), "forwarded unchanged");
}

#[tokio::test]
async fn a_service_not_exported_to_the_proxys_namespace_is_refused() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    proxy.send(&subscribe("private.shop.svc.cluster.local:80"));
    match proxy.next().await {
        ControlMessage::Refused(refusal) => {
            assert_eq!(
                refusal.resource,
                Some(Resource::Destination("private.shop.svc.cluster.local:80".into()))
            );
            assert!(refusal.reason.contains("exported only to namespace(s) shop"), "{}", refusal.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn inbound(message: ControlMessage) -> InboundUpdate {
    match message {
        ControlMessage::Inbound(update) => update,
        other => panic!("expected an inbound update, got {other:?}"),
    }
}

#[tokio::test]
async fn tracing_goes_only_to_proxies_that_name_it_and_follows_the_mesh() {
    let discovery = cluster();
    let tracing = TracingConfig { collector: "http://jaeger.tracing:4318".into(), sampling_percent: 10.0 };
    discovery.update(|index| index.set_tracing(Some(tracing.clone())));
    let features = ProxyFeatures::parse(Some(b"future-thing, tracing"));
    assert!(features.tracing);
    let mut newer = start_with(&discovery, ("shop", "api"), features);
    let mut older = start(&discovery, ("shop", "api"));
    for proxy in [&newer, &older] {
        proxy.send(&hello("shop", "api-1"));
        proxy.send(&ProxyMessage::Subscribe(Resource::Inbound));
    }
    assert_eq!(inbound(newer.next().await).tracing, Some(tracing));
    assert_eq!(inbound(older.next().await).tracing, None, "an older proxy would refuse the field");

    discovery.update(|index| index.set_tracing(None));
    assert_eq!(inbound(newer.next().await).tracing, None, "tracing turned off reaches the proxy");
}

#[tokio::test]
async fn the_policys_source_goes_only_to_proxies_that_name_it() {
    let discovery = cluster();
    let newer = start_with(&discovery, ("shop", "api"), ProxyFeatures::parse(Some(b"policy-source")));
    let older = start(&discovery, ("shop", "api"));
    let mut sources = Vec::new();
    for mut proxy in [newer, older] {
        proxy.send(&hello("shop", "api-1"));
        proxy.send(&ProxyMessage::Subscribe(Resource::Inbound));
        let policy = inbound(proxy.next().await).policy.expect("api-1 has a policy");
        sources.push(policy.source);
    }
    assert!(sources[0].is_some(), "the proxy that names the feature gets the source");
    assert_eq!(sources[1], None, "an older proxy would refuse the field");
}

#[test]
fn proxy_features_skip_what_they_do_not_know() {
    assert!(!ProxyFeatures::parse(None).tracing);
    assert!(!ProxyFeatures::parse(Some(b"tracingx")).tracing);
    assert!(!ProxyFeatures::parse(Some(b"\xff\xfe")).tracing);
    assert!(ProxyFeatures::parse(Some(b"tracing")).tracing);
    let both = ProxyFeatures::parse(Some(b"endpoint-pod,tracing"));
    assert!(both.tracing && both.endpoint_pod);
    assert!(!ProxyFeatures::parse(Some(b"tracing")).endpoint_pod);
    assert!(ProxyFeatures::parse(Some(b"tracing, policy-source")).policy_source);
}

#[tokio::test]
async fn endpoint_pods_go_only_to_proxies_that_name_them() {
    let discovery = cluster();
    let newer = start_with(&discovery, ("web", "client"), ProxyFeatures::parse(Some(b"endpoint-pod")));
    let older = start(&discovery, ("web", "client"));
    let mut pods = Vec::new();
    for mut proxy in [newer, older] {
        proxy.send(&hello("web", "client"));
        proxy.send(&subscribe("10.96.0.20:80"));
        let config = destination(proxy.next().await).service.expect("api is known");
        let endpoint = &config.backends[0].endpoints[0];
        pods.push(endpoint.pod.as_ref().map(|pod| (pod.namespace.clone(), pod.name.clone())));
    }
    assert_eq!(
        pods,
        [Some(("shop".to_owned(), "api-1".to_owned())), None],
        "an older proxy would refuse the field"
    );
}

#[tokio::test]
async fn a_proxy_cannot_speak_for_another_identitys_pod() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("shop", "api-1"));
    match proxy.next().await {
        ControlMessage::Refused(refusal) => {
            assert_eq!(refusal.resource, None);
            assert!(refusal.reason.contains("client certificate names web/client"), "{}", refusal.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(proxy.task.await.expect("task"), Err(StreamError::Refused(_))));
    assert_eq!(discovery.registry.summary().connected, 0, "never counted");
}

#[tokio::test]
async fn garbage_and_a_missing_hello_end_the_stream_with_the_reason() {
    let discovery = cluster();
    let proxy = start(&discovery, ("web", "client"));
    proxy.send(&subscribe("10.96.0.20:80"));
    assert!(matches!(proxy.task.await.expect("task"), Err(StreamError::NoHello)));

    let proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    proxy.to_server.send(Ok(Bytes::from_static(b"{\"subscribe\": 42}\n"))).expect("running");
    let error = proxy.task.await.expect("task").unwrap_err();
    assert!(error.to_string().contains("not valid"), "{error}");
}

fn limited(discovery: &Discovery, limit: &'static str) -> u64 {
    discovery.metrics.limited.get_or_create(&crate::metrics::LimitLabels { limit }).get()
}

#[tokio::test]
async fn a_client_that_says_nothing_useful_is_dropped_early_and_counted() {
    let discovery = cluster();
    // Bytes without a newline before the hello: cut at MAX_HELLO_BYTES, not 4 MiB.
    let proxy = start(&discovery, ("web", "client"));
    proxy.to_server.send(Ok(Bytes::from(vec![b'{'; MAX_HELLO_BYTES + 1]))).expect("running");
    let error = proxy.task.await.expect("task").unwrap_err();
    assert!(error.to_string().contains(&format!("longer than {MAX_HELLO_BYTES} bytes")), "{error}");
    assert_eq!(limited(&discovery, "hello_size"), 1);

    // A hello whose version would bloat the Mesh status is refused with the reason.
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&ProxyMessage::Hello(api::Hello {
        pod_namespace: "web".into(),
        pod_name: "client".into(),
        proxy_version: "v".repeat(65),
    }));
    let ControlMessage::Refused(refusal) = proxy.next().await else { panic!("a refusal") };
    assert!(refusal.reason.contains("proxyVersion must be at most 64 bytes"), "{}", refusal.reason);
    assert_eq!(limited(&discovery, "hello_fields"), 1);
}

#[tokio::test(start_paused = true)]
async fn no_hello_in_time_ends_the_stream() {
    let discovery = cluster();
    let proxy = start(&discovery, ("web", "client"));
    let error = proxy.task.await.expect("task").unwrap_err();
    assert!(matches!(error, StreamError::HelloTimeout), "{error}");
    assert_eq!(limited(&discovery, "hello_timeout"), 1);
}

#[tokio::test]
async fn subscriptions_beyond_the_bound_are_refused_one_by_one_and_the_stream_lives() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    let mut batch = Vec::new();
    for i in 0..MAX_SUBSCRIPTIONS {
        batch.extend(api::encode(&subscribe(&format!("10.200.{}.{}:80", i / 250, i % 250))));
    }
    proxy.to_server.send(Ok(Bytes::from(batch))).expect("running");
    for _ in 0..MAX_SUBSCRIPTIONS {
        proxy.next().await;
    }
    proxy.send(&subscribe("10.96.0.20:80"));
    let ControlMessage::Refused(refusal) = proxy.next().await else { panic!("a refusal") };
    assert_eq!(refusal.resource, Some(Resource::Destination("10.96.0.20:80".into())));
    assert!(refusal.reason.contains("more than 10000 destinations"), "{}", refusal.reason);
    assert_eq!(limited(&discovery, "subscriptions"), 1);
    proxy.send(&ProxyMessage::Unsubscribe(Resource::Destination("10.200.0.0:80".into())));
    proxy.send(&subscribe("10.96.0.20:80"));
    assert!(destination(proxy.next().await).service.is_some(), "room again after an unsubscribe");
}

#[tokio::test]
async fn reports_count_only_for_destinations_and_backends_the_proxy_was_sent() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    proxy.send(&hello("web", "client"));
    let report = |service: &str, backend: &str| {
        ProxyMessage::Report(api::Report {
            service: service.into(),
            backends: vec![api::BackendReport {
                backend: backend.into(),
                requests: 10,
                failures: 2,
                latency_ms: vec![0, 10],
            }],
        })
    };
    // Before the destination was sent: not counted.
    proxy.send(&report("api.shop.svc.cluster.local:80", "api"));
    proxy.send(&subscribe("10.96.0.20:80"));
    let sent = destination(proxy.next().await).service.expect("a mesh service");
    assert_eq!(sent.name, "api.shop.svc.cluster.local:80");
    proxy.send(&report("api.shop.svc.cluster.local:80", "api"));
    proxy.send(&report("api.shop.svc.cluster.local:80", "made-up"));
    proxy.send(&report("private.shop.svc.cluster.local:80", "private"));
    // A round trip, so the reports before it were handled.
    proxy.send(&subscribe("10.1.2.3:80"));
    proxy.next().await;
    let totals = discovery.measurements.totals("shop", "api", "api");
    assert_eq!((totals.requests, totals.failures, totals.latency[1]), (10, 2, 10));
    assert_eq!(discovery.measurements.totals("shop", "api", "made-up").requests, 0);
    assert_eq!(discovery.measurements.totals("shop", "private", "private").requests, 0);
    assert_eq!(limited(&discovery, "report_unknown_service"), 2);
}

#[test]
fn long_reasons_are_cut_on_a_character_boundary() {
    let mut reason = "é".repeat(MAX_REASON_BYTES);
    truncate(&mut reason, MAX_REASON_BYTES);
    assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8() && reason.ends_with('…'));
    let mut short = "fine".to_owned();
    truncate(&mut short, MAX_REASON_BYTES);
    assert_eq!(short, "fine");
}

/// What a proxy holds for each name it subscribed to: the answer, or why it was refused.
#[derive(Debug, Clone, PartialEq)]
enum Held {
    Answer(Box<Option<braid_api::config::ServiceConfig>>),
    Refused(String),
}

/// A proxy's state as the server's messages left it: destinations by name, and its inbound policy.
#[derive(Debug, Default, Clone, PartialEq)]
struct Holding {
    destinations: BTreeMap<String, Held>,
    inbound: Option<Option<PolicyConfig>>,
}

impl Proxy {
    /// Applies every message the server sends until it has nothing more to say. With time
    /// paused, the timeout fires only once every task is idle, so "quiet" is exact.
    async fn settle(&mut self, holding: &mut Holding) {
        while let Ok(Some(line)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), self.from_server.recv()).await
        {
            let mut reader = LineReader::default();
            reader.push(&line).expect("fits");
            match reader.next().expect("one line").expect("valid message") {
                ControlMessage::Destination(update) => {
                    holding.destinations.insert(update.destination, Held::Answer(Box::new(update.service)));
                }
                ControlMessage::Refused(Refusal { resource: Some(Resource::Destination(name)), reason }) => {
                    holding.destinations.insert(name, Held::Refused(reason));
                }
                ControlMessage::Inbound(update) => holding.inbound = Some(update.policy),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
}

fn slice(service: &str, endpoints: &[(&str, &str)]) -> SliceInfo {
    SliceInfo {
        service: service.into(),
        ports: vec![PortInfo { name: String::new(), port: 8080, http2: false, opaque: false }],
        endpoints: endpoints
            .iter()
            .map(|(pod, ip)| EndpointInfo {
                addresses: vec![ip.parse().unwrap()],
                ready: true,
                pod: Some((*pod).into()),
            })
            .collect(),
    }
}

fn service(cluster_ip: &str) -> ServiceInfo {
    ServiceInfo {
        cluster_ips: vec![cluster_ip.parse().unwrap()],
        headless: false,
        ports: vec![PortInfo { name: String::new(), port: 80, http2: false, opaque: false }],
        export_to: None,
    }
}

fn route_info(spec: serde_json::Value) -> crate::discovery::index::RouteInfo {
    let spec: braid_crds::MeshRouteSpec = serde_json::from_value(spec).expect("test route spec");
    let accepted = crate::meshroute::validate::validate(&spec).is_empty();
    crate::discovery::index::RouteInfo {
        generation: 1,
        created: "2026-01-01T00:00:00Z".into(),
        accepted,
        spec,
    }
}

fn stream_wakes(discovery: &Discovery) -> u64 {
    discovery.metrics.stream_wakes.get()
}

#[tokio::test(start_paused = true)]
async fn a_change_wakes_only_the_proxies_subscribed_to_what_it_touched() {
    let discovery = cluster();
    discovery.update(|index| {
        index.upsert_service(key("shop", "cart"), service("10.96.0.30"));
        index.upsert_slice(key("shop", "cart-x"), slice("cart", &[("cart-1", "10.1.0.30")]));
    });
    let (mut api_caller, mut cart_caller) =
        (start(&discovery, ("web", "client")), start(&discovery, ("web", "client")));
    let (mut api_held, mut cart_held) = (Holding::default(), Holding::default());
    for (proxy, name) in [(&api_caller, "api.shop:80"), (&cart_caller, "cart.shop.svc.cluster.local:80")] {
        proxy.send(&hello("web", "client"));
        proxy.send(&subscribe(name));
    }
    api_caller.settle(&mut api_held).await;
    cart_caller.settle(&mut cart_held).await;
    let before = stream_wakes(&discovery);

    discovery.update(|index| {
        index.upsert_slice(key("shop", "cart-x"), slice("cart", &[("cart-2", "10.1.0.31")]));
    });
    assert_eq!(stream_wakes(&discovery) - before, 1, "only the cart's caller wakes");
    let cart_before = cart_held.clone();
    cart_caller.settle(&mut cart_held).await;
    assert_ne!(cart_held, cart_before, "the cart's caller has the new endpoint");
    let api_before = api_held.clone();
    api_caller.settle(&mut api_held).await;
    assert_eq!(api_held, api_before, "the api's caller is sent nothing");

    // A change to what every answer is made of wakes every stream: its destinations and its
    // inbound policy, which wake apart.
    discovery.update(|index| index.set_trust_domain("example.org"));
    assert_eq!(stream_wakes(&discovery) - before, 1 + 2 * 2);
}

#[tokio::test(start_paused = true)]
async fn a_change_to_a_routes_backend_reaches_the_routes_callers() {
    let discovery = cluster();
    discovery.update(|index| {
        index.upsert_service(key("shop", "api-v2"), service("10.96.0.22"));
        index.upsert_route(
            key("shop", "split"),
            route_info(json!({"service": "api", "rules": [{"backends": [
                {"service": "api", "weight": 90}, {"service": "api-v2", "weight": 10}]}]})),
        );
    });
    let mut proxy = start(&discovery, ("web", "client"));
    let mut held = Holding::default();
    proxy.send(&hello("web", "client"));
    proxy.send(&subscribe("api.shop:80"));
    proxy.settle(&mut held).await;
    let endpoints = |held: &Holding| match held.destinations.get("api.shop:80") {
        Some(Held::Answer(answer)) if let Some(config) = answer.as_ref() => config
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        other => panic!("expected an answer, got {other:?}"),
    };
    assert!(endpoints(&held).contains(&("api-v2".to_owned(), Vec::new())), "{:?}", endpoints(&held));

    // The backend's pods come: only its slice changes, not the route's Service.
    discovery.update(|index| {
        index.upsert_slice(key("shop", "api-v2-x"), slice("api-v2", &[("api-2", "10.1.0.9")]));
    });
    proxy.settle(&mut held).await;
    assert!(
        endpoints(&held).contains(&("api-v2".to_owned(), vec!["10.1.0.9:8080".to_owned()])),
        "{:?}",
        endpoints(&held)
    );
}

/// A small deterministic generator: the same seed, the same changes.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(sides).unwrap()).unwrap()
    }
}

/// One random change to a small cluster: pods (IPs reused, labels changed), Services (cluster
/// IPs moved, export-to), EndpointSlices, MeshRoutes across Services, MeshPolicies, defaults.
fn random_change(dice: &mut Dice, index: &mut Index) {
    const SERVICES: [&str; 4] = ["api", "cart", "cart-v2", "private"];
    let pod_name = |n: usize| format!("pod-{n}");
    let pod_ip = |n: usize| format!("10.1.0.{n}");
    match dice.roll(12) {
        0 | 1 => {
            let (n, ip) = (dice.roll(6), dice.roll(6));
            let labels = [("version".to_owned(), format!("v{}", dice.roll(2)))].into();
            let created = format!("2026-01-01T00:00:0{}Z", dice.roll(9));
            let mut pod = index_pod(&format!("sa-{}", dice.roll(2)), &pod_ip(ip), &created);
            pod.labels = labels;
            index.upsert_pod(key("shop", &pod_name(n)), pod);
        }
        2 => index.remove_pod(&key("shop", &pod_name(dice.roll(6)))),
        3 => {
            let name = SERVICES[dice.roll(4)];
            let mut info = service(&format!("10.96.0.{}", 20 + dice.roll(6)));
            if dice.roll(3) == 0 {
                info.export_to = Some(BTreeSet::from(["shop".to_owned()]));
            }
            index.upsert_service(key("shop", name), info);
        }
        4 => index.remove_service(&key("shop", SERVICES[dice.roll(4)])),
        5 | 6 => {
            let name = SERVICES[dice.roll(4)];
            let endpoints: Vec<(String, String)> =
                (0..dice.roll(3)).map(|_| (pod_name(dice.roll(6)), pod_ip(dice.roll(6)))).collect();
            let endpoints: Vec<(&str, &str)> =
                endpoints.iter().map(|(p, i)| (p.as_str(), i.as_str())).collect();
            index.upsert_slice(key("shop", &format!("{name}-x")), slice(name, &endpoints));
        }
        7 => index.remove_slice(&key("shop", &format!("{}-x", SERVICES[dice.roll(4)]))),
        8 => {
            let (target, backend) = (SERVICES[dice.roll(4)], SERVICES[dice.roll(4)]);
            let weight = dice.roll(100);
            index.upsert_route(
                key("shop", &format!("route-{}", dice.roll(2))),
                route_info(json!({"service": target, "rules": [{"backends": [
                    {"service": target, "weight": weight}, {"service": backend, "weight": 100 - weight}]}]})),
            );
        }
        9 => index.remove_route(&key("shop", &format!("route-{}", dice.roll(2)))),
        10 => {
            let policy: MeshPolicySpec = serde_json::from_value(json!({
                "podSelector": {"version": format!("v{}", dice.roll(2))},
                "rules": [{"from": [{"serviceAccount": {"name": format!("sa-{}", dice.roll(2))}}]}]
            }))
            .expect("test policy");
            if dice.roll(2) == 0 {
                index.upsert_policy(key("shop", "policy"), policy);
            } else {
                index.remove_policy(&key("shop", "policy"));
            }
        }
        _ => {
            let policy = [DefaultInboundPolicy::AllUnauthenticated, DefaultInboundPolicy::Deny][dice.roll(2)];
            index.set_default_policy(policy);
        }
    }
}

/// What a proxy just connected with `subscriptions` is given now.
async fn fresh(discovery: &Arc<Discovery>, peer: (&str, &str, &str), subscriptions: &[String]) -> Holding {
    let mut proxy = start(discovery, (peer.0, peer.1));
    let mut holding = Holding::default();
    proxy.send(&hello(peer.0, peer.2));
    for name in subscriptions {
        proxy.send(&subscribe(name));
    }
    proxy.send(&ProxyMessage::Subscribe(Resource::Inbound));
    proxy.settle(&mut holding).await;
    holding
}

/// The oracle for the wake-ups: after every change, each connected proxy holds exactly what a
/// proxy connecting now would be given. Each proxy subscribes to one name only (or only to its
/// inbound policy), since a stream woken for one subscription re-checks all of its own: a
/// change that failed to wake a stream whose answer it touched leaves that stream behind, and
/// this fails on that change.
#[tokio::test(start_paused = true)]
async fn after_every_change_each_proxy_holds_what_a_new_proxy_would_be_given() {
    let names: Vec<String> =
        ["api.shop:80", "cart.shop.svc.cluster.local:80", "cart-v2.shop:80", "private.shop:80"]
            .into_iter()
            .map(str::to_owned)
            .chain((20..26).map(|n| format!("10.96.0.{n}:80")))
            .chain((0..6).map(|n| format!("10.1.0.{n}:8080")))
            .chain(["nonsense".to_owned(), "missing.shop:80".to_owned()])
            .collect();
    // A client in another namespace (export-to refusals) and one in the Services' own, which
    // MeshPolicies and the default policy apply to.
    let peers = [("web", "client", "client"), ("shop", "api", "api-1")];
    for seed in [1_u64, 7, 42] {
        let discovery = cluster();
        let mut dice = Dice(seed);
        // (peer, the name subscribed to or None for the inbound policy, the stream, what it holds)
        let mut proxies = Vec::new();
        for peer in peers {
            for name in names.iter().map(Some).chain([None]) {
                let mut proxy = start(&discovery, (peer.0, peer.1));
                let mut holding = Holding::default();
                proxy.send(&hello(peer.0, peer.2));
                match name {
                    Some(name) => proxy.send(&subscribe(name)),
                    None => proxy.send(&ProxyMessage::Subscribe(Resource::Inbound)),
                }
                proxy.settle(&mut holding).await;
                proxies.push((peer, name, proxy, holding));
            }
        }
        for step in 0..150 {
            discovery.update(|index| random_change(&mut dice, index));
            let mut expected = BTreeMap::new();
            for peer in peers {
                expected.insert(peer, fresh(&discovery, peer, &names).await);
            }
            for (peer, name, proxy, holding) in &mut proxies {
                proxy.settle(holding).await;
                let expected = &expected[peer];
                match name {
                    Some(name) => assert_eq!(
                        holding.destinations.get(*name),
                        expected.destinations.get(*name),
                        "seed {seed}, change {step}: the proxy of {peer:?} subscribed to {name} fell behind"
                    ),
                    None => assert_eq!(
                        holding.inbound, expected.inbound,
                        "seed {seed}, change {step}: the inbound policy of {peer:?} fell behind"
                    ),
                }
            }
        }
    }
}

/// A slice names its endpoints' pods; the pod's identity is in its callers' answers even while
/// the index knows no IP of the pod (its status not seen yet).
#[tokio::test(start_paused = true)]
async fn a_new_identity_of_a_pod_a_slice_names_reaches_its_callers() {
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    let mut held = Holding::default();
    proxy.send(&hello("web", "client"));
    proxy.send(&subscribe("api.shop:80"));
    proxy.settle(&mut held).await;
    let identity = |held: &Holding| match held.destinations.get("api.shop:80") {
        Some(Held::Answer(answer)) if let Some(config) = answer.as_ref() => {
            config.backends[0].endpoints[0].identity.clone()
        }
        other => panic!("expected an answer, got {other:?}"),
    };
    assert_eq!(identity(&held).as_deref(), Some("spiffe://cluster.local/ns/shop/sa/api"));
    discovery.update(|index| {
        index.upsert_pod(
            key("shop", "api-1"),
            PodInfo { service_account: "api-next".into(), meshed: true, ..Default::default() },
        );
    });
    proxy.settle(&mut held).await;
    assert_eq!(identity(&held).as_deref(), Some("spiffe://cluster.local/ns/shop/sa/api-next"));
}

/// An HTTPRoute's answer depends on its parent and on whether its backends exist: both wake the
/// parent's callers.
#[tokio::test(start_paused = true)]
async fn an_httproute_and_the_service_it_waited_for_reach_the_parents_callers() {
    use crate::discovery::index::GatewayRouteInfo;
    use crate::gateway::translate::{RouteKind, RouteSpec};
    let discovery = cluster();
    let mut proxy = start(&discovery, ("web", "client"));
    let mut held = Holding::default();
    proxy.send(&hello("web", "client"));
    proxy.send(&subscribe("api.shop:80"));
    proxy.settle(&mut held).await;
    let backends = |held: &Holding| match held.destinations.get("api.shop:80") {
        Some(Held::Answer(answer)) if let Some(config) = answer.as_ref() => {
            config.backends.iter().map(|b| b.name.clone()).collect::<Vec<_>>()
        }
        other => panic!("expected an answer, got {other:?}"),
    };
    assert_eq!(backends(&held), ["api"]);

    let spec = json!({"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
        "rules": [{"backendRefs": [{"name": "api-canary", "port": 80}]}]});
    let spec = serde_json::from_value(spec).map(RouteSpec::Http).expect("test HTTPRoute");
    discovery.update(|index| {
        let route = GatewayRouteInfo { generation: 1, created: "2026-01-01T00:00:00Z".into(), spec };
        index.upsert_gateway_route(RouteKind::Http, key("shop", "canary"), route);
    });
    proxy.settle(&mut held).await;
    let refused = held.clone();
    assert!(
        !backends(&held).contains(&"api-canary".to_owned()),
        "no such Service yet: {:?}",
        backends(&held)
    );

    discovery.update(|index| index.upsert_service(key("shop", "api-canary"), service("10.96.0.40")));
    proxy.settle(&mut held).await;
    assert_ne!(held, refused, "the Service the route named now exists");
    assert!(backends(&held).contains(&"api-canary".to_owned()), "{:?}", backends(&held));
}
