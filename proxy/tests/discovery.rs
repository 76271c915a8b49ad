//! The proxy fed by a discovery server (tests/support/discovery.rs) over real mTLS on loopback:
//! on-demand subscription on the first connection to a destination, updates under load, nacks,
//! outages, passthrough answers, refusals, idle destinations let go, the inbound policy, garbage from the server, and a
//! pod IP answered with the pod's identity (mTLS to a STRICT pod's proxy).
//! Redirected connections come through `fixed_destinations` listeners (no iptables here): each
//! stands for a connection the app made to one original destination.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::config::{Config, PolicyConfig, ServiceConfig};
use braid_api::discovery::Resource;
use http::{Request, StatusCode};
use support::discovery::{Answer, DiscoveryServer, SERVER_NAME};
use support::identity::{Authority, IdentityFiles, IdentityServer};
use support::*;

const FRONTEND: &str = "spiffe://test.local/ns/shop/sa/frontend";
/// A cluster IP: nothing listens there; only the discovered service makes it reachable.
const CLUSTER_IP: &str = "10.255.0.10:80";

fn cluster_ip() -> SocketAddr {
    CLUSTER_IP.parse().unwrap()
}

struct Mesh {
    server: Arc<DiscoveryServer>,
    /// The proxy's configuration file as written.
    config: String,
    proxy: Proxy,
    _identity: Arc<IdentityServer>,
    _files: IdentityFiles,
}

/// A discovery server and a proxy that uses it; `extra` is more configuration file (lines).
/// `timeouts` is the discovery section's timeouts as written (`3s` is initialTimeout alone).
async fn mesh(fixed: &[SocketAddr], timeouts: &str, extra: &str) -> Mesh {
    let authority = Authority::new();
    let server = DiscoveryServer::start(&authority).await;
    let identity = IdentityServer::start(authority).await;
    client_of(server, identity, fixed, timeouts, extra).await
}

/// The proxy of `mesh`, fed by `server`, with its certificate from `identity`.
async fn client_of(
    server: Arc<DiscoveryServer>,
    identity: Arc<IdentityServer>,
    fixed: &[SocketAddr],
    timeouts: &str,
    extra: &str,
) -> Mesh {
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), FRONTEND);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\n{}discovery: {{ endpoint: \"{}\", serverName: {SERVER_NAME}, podNamespace: shop, podName: frontend-0, initialTimeout: {timeouts} }}\n{extra}",
        files.config(FRONTEND, identity.addr),
        server.addr,
    );
    let config = if extra.contains("inbound:") {
        config
    } else {
        format!("{config}inbound: {{ listen: 127.0.0.1:0 }}\n")
    };
    let proxy = Proxy::start_with(&config, fixed.to_vec()).await;
    let mesh = Mesh { server, config, proxy, _identity: identity, _files: files };
    eventually("the proxy connects to the discovery server", || async { connected(&mesh.proxy).await }).await;
    mesh
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    let (_, body) = proxy.admin("/config").await;
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["discovery"].clone()
}

async fn connected(proxy: &Proxy) -> bool {
    status(proxy).await["connected"] == true
}

async fn destination_status(proxy: &Proxy, destination: &str) -> serde_json::Value {
    let status = status(proxy).await;
    let destinations = status["destinations"].as_array().cloned().unwrap_or_default();
    destinations.into_iter().find(|d| d["destination"] == destination).unwrap_or_default()
}

/// A service with weighted backends, one endpoint each.
fn service(name: &str, backends: &[(&str, SocketAddr, u32)]) -> ServiceConfig {
    let mut yaml = format!("services:\n  - name: {name}\n    backends:\n");
    for (backend, addr, _) in backends {
        yaml.push_str(&format!("      - {{ name: {backend}, endpoints: [{{ address: \"{addr}\" }}] }}\n"));
    }
    let weights: Vec<String> = backends
        .iter()
        .map(|(backend, _, weight)| format!("{{ name: {backend}, weight: {weight} }}"))
        .collect();
    yaml.push_str(&format!("    routes:\n      - backends: [{}]\n", weights.join(", ")));
    Config::parse(&yaml).unwrap().services.remove(0)
}

/// A GET on a new connection that was "redirected" from `destination`.
async fn get_via(mesh: &Mesh, destination: SocketAddr, path: &str) -> (StatusCode, String) {
    let listener = mesh.proxy.running().fixed_destinations[&destination];
    let (status, _, body) = get(&format!("http://{listener}{path}")).await;
    (status, body)
}

fn web(resource: &str) -> Resource {
    Resource::Destination(resource.to_owned())
}

#[tokio::test]
async fn the_first_request_waits_for_the_snapshot_then_follows_its_weights() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mesh = mesh(&[cluster_ip()], "3s", "").await;
    mesh.server.set(
        CLUSTER_IP,
        Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 3), ("v2", b.addr, 1)])),
    );
    *mesh.server.answer_delay.lock().unwrap() = Duration::from_millis(300);
    let start = Instant::now();
    let (status, body) = get_via(&mesh, cluster_ip(), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == "a" || body == "b", "{body}");
    assert!(start.elapsed() >= Duration::from_millis(300), "the connection waited for the snapshot");
    for _ in 0..59 {
        let (status, _) = get_via(&mesh, cluster_ip(), "/").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(a.hits() + b.hits(), 60);
    assert!(a.hits() > b.hits() && b.hits() > 0, "3:1 split, got a={} b={}", a.hits(), b.hits());
    // One subscription, acked; the server saw the proxy's workload certificate.
    assert_eq!(mesh.server.subscriptions_of(CLUSTER_IP), 1);
    assert!(mesh.server.acked(&web(CLUSTER_IP), 1), "{:?}", mesh.server.messages());
    assert_eq!(mesh.server.client_ids.lock().unwrap()[0].as_deref(), Some(FRONTEND));
    let destination = destination_status(&mesh.proxy, CLUSTER_IP).await;
    assert_eq!(destination["state"], "service", "{destination}");
    assert_eq!(destination["version"], 1);
    assert_eq!(destination["acked"], true);
    let metrics = mesh.proxy.metrics().await;
    assert_eq!(metric(&metrics, "discovery_connected", &[]), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "discovery_updates_total", &[("result", "applied")]), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn the_proxy_reports_tries_per_backend_when_the_server_asks_and_only_then() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let authority_asks = mesh(&[cluster_ip()], "3s", "").await;
    *authority_asks.server.report_interval.lock().unwrap() = Some(1);
    // The header is read when the stream opens: make the proxy open a new one.
    authority_asks.server.end_streams();
    eventually("the proxy reconnects", || async { authority_asks.server.hellos() >= 2 }).await;
    let name = "web.shop.svc.cluster.local:80";
    authority_asks
        .server
        .set(CLUSTER_IP, Answer::Service(service(name, &[("v1", a.addr, 1), ("v2", b.addr, 1)])));
    for _ in 0..40 {
        let (status, _) = get_via(&authority_asks, cluster_ip(), "/").await;
        assert_eq!(status, StatusCode::OK);
    }
    let sum = |server: &DiscoveryServer, backend: &str| -> (u64, u64, u64) {
        server.reports().iter().flat_map(|r| r.backends.clone()).filter(|b| b.backend == backend).fold(
            (0, 0, 0),
            |(requests, failures, timed), b| {
                (requests + b.requests, failures + b.failures, timed + b.latency_ms.iter().sum::<u64>())
            },
        )
    };
    let server = authority_asks.server.clone();
    eventually("every try is reported", || async { sum(&server, "v1").0 + sum(&server, "v2").0 == 40 }).await;
    assert!(server.reports().iter().all(|r| r.service == name), "{:?}", server.reports());
    let (v1, v2) = (sum(&server, "v1"), sum(&server, "v2"));
    assert_eq!((v1.0, v2.0), (a.hits() as u64, b.hits() as u64), "per backend, as routed");
    assert_eq!((v1.1, v2.1), (0, 0), "no failures");
    assert_eq!((v1.2, v2.2), (v1.0, v2.0), "each try is in a latency bucket");

    // A server that does not ask gets no report (an older operator would refuse the message).
    let silent = mesh(&[cluster_ip()], "3s", "").await;
    silent.server.set(CLUSTER_IP, Answer::Service(service(name, &[("v1", a.addr, 1)])));
    for _ in 0..5 {
        get_via(&silent, cluster_ip(), "/").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(silent.server.reports().is_empty(), "{:?}", silent.server.reports());
}

#[tokio::test]
async fn concurrent_first_connections_share_one_subscription() {
    let a = Upstream::start("a").await;
    let mesh = mesh(&[cluster_ip()], "3s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    *mesh.server.answer_delay.lock().unwrap() = Duration::from_millis(300);
    let listener = mesh.proxy.running().fixed_destinations[&cluster_ip()];
    let requests: Vec<_> =
        (0..8).map(|_| tokio::spawn(async move { get(&format!("http://{listener}/")).await })).collect();
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    }
    assert_eq!(mesh.server.subscriptions_of(CLUSTER_IP), 1);
}

#[tokio::test]
async fn an_update_moves_traffic_without_a_failed_request() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mesh = mesh(&[cluster_ip()], "3s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await.1, "a");
    let listener = mesh.proxy.running().fixed_destinations[&cluster_ip()];
    // Keep-alive connections from the client pool, opened before, during and after the update.
    let load = tokio::spawn(async move {
        let client = http1_client();
        let mut answers = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            let request = Request::get(format!("http://{listener}/")).body(full("")).unwrap();
            let (status, _, body) = send(&client, request).await;
            answers.push((status, body));
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let version = mesh
        .server
        .push(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v2", b.addr, 1)])));
    let answers = load.await.unwrap();
    assert!(answers.len() > 20, "{} requests", answers.len());
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "a request failed: {answers:?}");
    assert_eq!(answers.first().unwrap().1, "a");
    assert_eq!(answers.last().unwrap().1, "b", "the update took effect");
    assert!(mesh.server.acked(&web(CLUSTER_IP), version));
}

#[tokio::test]
async fn a_bad_or_colliding_update_is_nacked_and_the_old_config_keeps_serving() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let file = format!(
        "services:\n  - name: file.svc\n    addresses: [\"10.255.0.99:80\"]\n    backends: [{{ name: f, endpoints: [{{ address: \"{}\" }}] }}]\n    routes: [{{ backends: [{{ name: f }}] }}]\n",
        b.addr
    );
    let mesh = mesh(&[cluster_ip()], "3s", &file).await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await.1, "a");

    let mut bad = service("web.shop.svc.cluster.local", &[("v2", b.addr, 1)]);
    bad.routes[0].backends[0].name = "v3".into();
    let version = mesh.server.push(CLUSTER_IP, Answer::Service(bad));
    eventually("the bad update is nacked", || async {
        mesh.server.nack_reason(&web(CLUSTER_IP), version).is_some()
    })
    .await;
    let reason = mesh.server.nack_reason(&web(CLUSTER_IP), version).unwrap();
    assert!(reason.contains("routes[0].backends[0].name: no backend named \"v3\""), "{reason}");

    let colliding = service("file.svc", &[("v2", b.addr, 1)]);
    let version = mesh.server.push(CLUSTER_IP, Answer::Service(colliding));
    eventually("the colliding update is nacked", || async {
        mesh.server.nack_reason(&web(CLUSTER_IP), version).is_some()
    })
    .await;
    let reason = mesh.server.nack_reason(&web(CLUSTER_IP), version).unwrap();
    assert!(reason.contains("the configuration file's service file.svc, which wins"), "{reason}");

    for _ in 0..5 {
        assert_eq!(get_via(&mesh, cluster_ip(), "/").await, (StatusCode::OK, "a".to_owned()));
    }
    let destination = destination_status(&mesh.proxy, CLUSTER_IP).await;
    assert_eq!(
        (destination["version"].clone(), destination["acked"].clone()),
        (1.into(), false.into()),
        "{destination}"
    );
    assert!(destination["error"].as_str().unwrap().contains("wins"), "{destination}");
    let metrics = mesh.proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "discovery_updates_total", &[("result", "rejected")]),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_last_config_serves_while_the_server_is_away_and_the_proxy_resubscribes() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mesh = mesh(&[cluster_ip()], "3s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await.1, "a");

    // The operator goes away: the stream ends and new connections are refused.
    mesh.server.set_accepting(false);
    mesh.server.end_streams();
    eventually("the proxy notices", || async { !connected(&mesh.proxy).await }).await;
    for _ in 0..5 {
        assert_eq!(get_via(&mesh, cluster_ip(), "/").await, (StatusCode::OK, "a".to_owned()));
    }
    eventually("the proxy retries", || async {
        metric(&mesh.proxy.metrics().await, "discovery_reconnects_total", &[]).unwrap_or(0.0) >= 2.0
    })
    .await;
    assert_eq!(metric(&mesh.proxy.metrics().await, "discovery_connected", &[]), Some(0.0));

    // It comes back with another answer: the proxy resubscribes and follows it.
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v2", b.addr, 1)])));
    mesh.server.set_accepting(true);
    eventually("the proxy resubscribes", || async { mesh.server.subscriptions_of(CLUSTER_IP) == 2 }).await;
    assert_eq!(mesh.server.hellos(), 2);
    eventually("the fresh snapshot routes", || async { get_via(&mesh, cluster_ip(), "/").await.1 == "b" })
        .await;
    assert!(connected(&mesh.proxy).await);
}

/// One HTTP/1.1 request on a connection the caller keeps open; the response's body.
async fn request_on(connection: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let n = connection.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the proxy closed the connection: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned)
                })
                .and_then(|length| length.trim().parse::<usize>().ok())
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body[..length].to_owned();
            }
        }
    }
}

#[tokio::test]
async fn an_idle_destination_is_let_go_and_asked_for_again_but_never_while_a_connection_is_open() {
    let a = Upstream::start("a").await;
    let mesh = mesh(&[cluster_ip()], "3s, idleTimeout: 1s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    let listener = mesh.proxy.running().fixed_destinations[&cluster_ip()];

    // A connection held open for three idle timeouts keeps its destination.
    let mut held = tokio::net::TcpStream::connect(listener).await.unwrap();
    assert_eq!(request_on(&mut held).await, "a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mesh.server.unsubscriptions_of(CLUSTER_IP), 0, "let go while a connection was open");
    assert_eq!(destination_status(&mesh.proxy, CLUSTER_IP).await["state"], "service");
    assert_eq!(request_on(&mut held).await, "a", "still routed to the discovered backend");
    drop(held);

    // Closed, it goes after the idle timeout: unsubscribed, off /config, counted.
    let started = Instant::now();
    while mesh.server.unsubscriptions_of(CLUSTER_IP) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "never let go of the idle destination");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(destination_status(&mesh.proxy, CLUSTER_IP).await.is_null(), "still on /config");
    assert_eq!(metric(&mesh.proxy.metrics().await, "discovery_evictions_total", &[]), Some(1.0));

    // The next connection subscribes again, waits for the answer, and is routed as before.
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await, (StatusCode::OK, "a".to_owned()));
    assert_eq!(mesh.server.subscriptions_of(CLUSTER_IP), 2);
}

#[tokio::test]
async fn not_a_mesh_service_is_forwarded_unchanged_without_asking_twice() {
    let outside = Upstream::start("outside").await;
    let mesh = mesh(&[outside.addr], "3s", "").await;
    let name = outside.addr.to_string();
    mesh.server.set(&name, Answer::NotMesh);
    for _ in 0..3 {
        assert_eq!(get_via(&mesh, outside.addr, "/").await, (StatusCode::OK, "outside".to_owned()));
    }
    assert_eq!(mesh.server.subscriptions_of(&name), 1);
    assert!(mesh.server.acked(&web(&name), 1));
    assert_eq!(destination_status(&mesh.proxy, &name).await["state"], "passthrough");
}

#[tokio::test]
async fn a_refused_destination_is_forwarded_unchanged_at_once() {
    let outside = Upstream::start("outside").await;
    let mesh = mesh(&[outside.addr], "3s", "").await;
    let name = outside.addr.to_string();
    mesh.server.set(&name, Answer::Refuse("this identity may not see it".into()));
    let start = Instant::now();
    assert_eq!(get_via(&mesh, outside.addr, "/").await, (StatusCode::OK, "outside".to_owned()));
    assert!(start.elapsed() < Duration::from_secs(2), "no wait for the timeout: {:?}", start.elapsed());
    let destination = destination_status(&mesh.proxy, &name).await;
    assert_eq!(destination["state"], "refused", "{destination}");
    assert_eq!(destination["error"], "this identity may not see it");
}

#[tokio::test]
async fn no_answer_in_time_is_forwarded_unchanged_until_the_answer_comes() {
    let (outside, a) = (Upstream::start("outside").await, Upstream::start("a").await);
    let mesh = mesh(&[outside.addr], "500ms", "").await;
    let name = outside.addr.to_string();
    mesh.server.set(&name, Answer::Silent);
    let start = Instant::now();
    assert_eq!(get_via(&mesh, outside.addr, "/").await, (StatusCode::OK, "outside".to_owned()));
    assert!(start.elapsed() >= Duration::from_millis(500));
    let start = Instant::now();
    assert_eq!(get_via(&mesh, outside.addr, "/").await.1, "outside");
    assert!(start.elapsed() < Duration::from_millis(400), "the second connection does not wait");
    assert_eq!(metric(&mesh.proxy.metrics().await, "discovery_lookup_timeouts_total", &[]), Some(1.0));
    assert_eq!(destination_status(&mesh.proxy, &name).await["state"], "timed-out");
    // The late answer still applies.
    mesh.server.push(&name, Answer::Service(service("late.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    eventually("the late snapshot routes", || async { get_via(&mesh, outside.addr, "/").await.1 == "a" })
        .await;
}

#[tokio::test]
async fn the_inbound_policy_follows_discovery() {
    let app = Upstream::start("app").await;
    let mesh =
        mesh(&[], "3s", &format!("inbound: {{ listen: 127.0.0.1:0, target: \"{}\" }}\n", app.addr)).await;
    let url = |path: &str| format!("http://{}{path}", mesh.proxy.inbound());
    // No policy from the server yet and no default from the webhook: closed, and not ready.
    let refused = http1_client().request(Request::get(url("/closed")).body(full("")).unwrap()).await;
    assert!(refused.is_err(), "a plaintext client got through before any policy: {refused:?}");
    assert_eq!(app.hits(), 0);
    let (ready, reason) = mesh.proxy.admin("/ready").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason.contains("no inbound policy from discovery yet"), "{reason}");

    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "mtls": "PERMISSIVE",
        "rules": [{ "name": "open-only", "to": [{ "paths": ["/open"] }] }],
    }))
    .unwrap();
    let version = mesh.server.push_inbound(Some(policy));
    eventually("the policy is acked", || async { mesh.server.acked(&Resource::Inbound, version) }).await;
    assert_eq!(mesh.proxy.admin("/ready").await.0, StatusCode::OK, "ready once the policy arrived");
    let (denied, headers, _) = get(&url("/closed")).await;
    assert_eq!(denied, StatusCode::FORBIDDEN);
    assert!(headers.contains_key("braid-deny-reason"));
    assert_eq!(get(&url("/open")).await.0, StatusCode::OK);

    let version = mesh.server.push_inbound(None);
    eventually("no policy is acked", || async { mesh.server.acked(&Resource::Inbound, version) }).await;
    assert_eq!(get(&url("/closed")).await.0, StatusCode::OK);
    assert_eq!(status(&mesh.proxy).await["inbound"]["version"], version);
}

/// The Mesh's tracing settings come with the inbound update (the proxy names the feature), turn
/// span export on without a restart, and off again.
#[tokio::test]
async fn the_mesh_tracing_settings_arrive_through_discovery_and_spans_follow() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = Upstream::start("app").await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = collector.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    serve_http(collector, move |request: Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            use http_body_util::BodyExt as _;
            use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
            use prost::Message as _;
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            let spans: usize =
                export.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            count.fetch_add(spans, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(http::Response::new(full("")))
        }
    });
    let mesh =
        mesh(&[], "3s", &format!("inbound: {{ listen: 127.0.0.1:0, target: \"{}\" }}\n", app.addr)).await;
    let url = format!("http://{}/", mesh.proxy.inbound());
    let spans = || received.load(Ordering::SeqCst);
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced_get = || async {
        let request = Request::get(url.as_str()).header("traceparent", sampled).body(full("")).unwrap();
        send(&http1_client(), request).await.0
    };
    let app_saw = || app.last_headers.lock().unwrap().clone().unwrap()["traceparent"].clone();

    let version = mesh.server.push_inbound(None);
    eventually("the policy is acked", || async { mesh.server.acked(&Resource::Inbound, version) }).await;
    let features = mesh.server.features.lock().unwrap().clone();
    assert!(
        !features.is_empty()
            && features
                .iter()
                .all(|header| header.split(',').any(|name| name == braid_api::discovery::FEATURE_TRACING)),
        "the proxy names the feature: {features:?}"
    );
    assert_eq!(traced_get().await, StatusCode::OK);
    assert_eq!(app_saw(), sampled, "no tracing yet: the context passes unchanged");

    *mesh.server.tracing.lock().unwrap() = Some(braid_api::config::TracingConfig {
        collector: format!("http://{collector_addr}"),
        sampling_percent: 0.0,
    });
    let version = mesh.server.push_inbound(None);
    eventually("tracing is acked", || async { mesh.server.acked(&Resource::Inbound, version) }).await;
    assert_eq!(traced_get().await, StatusCode::OK);
    assert_ne!(app_saw(), sampled, "the inbound span is now the app's parent");
    eventually("the inbound span reaches the collector", || async { spans() == 1 }).await;

    *mesh.server.tracing.lock().unwrap() = None;
    let version = mesh.server.push_inbound(None);
    eventually("tracing off is acked", || async { mesh.server.acked(&Resource::Inbound, version) }).await;
    assert_eq!(traced_get().await, StatusCode::OK);
    assert_eq!(app_saw(), sampled, "export off: passed on unchanged again");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(spans(), 1);
}

#[tokio::test]
async fn garbage_from_the_server_restarts_the_stream_and_nothing_else() {
    let a = Upstream::start("a").await;
    let mesh = mesh(&[cluster_ip()], "3s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await.1, "a");

    mesh.server.push_raw(b"this is not json\n");
    eventually("the stream restarts", || async { mesh.server.hellos() == 2 && connected(&mesh.proxy).await })
        .await;
    let error = status(&mesh.proxy).await["lastError"].as_str().unwrap_or("").to_owned();
    assert!(error.contains("unreadable message"), "{error}");

    let unknown =
        format!("{{\"destination\":{{\"destination\":\"{CLUSTER_IP}\",\"version\":9,\"extra\":true}}}}\n");
    mesh.server.push_raw(unknown.as_bytes());
    eventually("the stream restarts again", || async { mesh.server.hellos() == 3 }).await;
    eventually("the reason is shown", || async {
        status(&mesh.proxy).await["lastError"].as_str().unwrap_or("").contains("unknown field")
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get_via(&mesh, cluster_ip(), "/").await, (StatusCode::OK, "a".to_owned()));
    }
}

#[tokio::test]
async fn a_changed_file_is_composed_with_what_discovery_holds() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let file_ip: SocketAddr = "10.255.0.20:80".parse().unwrap();
    let mesh = mesh(&[cluster_ip(), file_ip], "3s", "").await;
    mesh.server.set(CLUSTER_IP, Answer::Service(service("web.shop.svc.cluster.local", &[("v1", a.addr, 1)])));
    assert_eq!(get_via(&mesh, cluster_ip(), "/").await.1, "a");

    let file_service = format!(
        "services:\n  - name: file.svc\n    addresses: [\"{file_ip}\"]\n    backends: [{{ name: f, endpoints: [{{ address: \"{}\" }}] }}]\n    routes: [{{ backends: [{{ name: f }}] }}]\n",
        b.addr
    );
    std::fs::write(&mesh.proxy.config_path, format!("{}{file_service}", mesh.config)).unwrap();
    eventually("the file's new service routes", || async {
        metric(&mesh.proxy.metrics().await, "config_reload_total", &[("result", "applied")]) == Some(1.0)
    })
    .await;
    assert_eq!(get_via(&mesh, file_ip, "/").await, (StatusCode::OK, "b".to_owned()));
    assert_eq!(
        get_via(&mesh, cluster_ip(), "/").await,
        (StatusCode::OK, "a".to_owned()),
        "the discovered one stays"
    );
    assert_eq!(mesh.server.subscriptions_of(&file_ip.to_string()), 0, "a file service is never asked about");

    // A file service that takes the discovered one's address wins; the discovered one is nacked.
    let taking = file_service.replace(&file_ip.to_string(), CLUSTER_IP);
    std::fs::write(&mesh.proxy.config_path, format!("{}{taking}", mesh.config)).unwrap();
    eventually("the file's service takes the address", || async {
        get_via(&mesh, cluster_ip(), "/").await.1 == "b"
    })
    .await;
    eventually("the discovered one is nacked", || async {
        mesh.server.nack_reason(&web(CLUSTER_IP), 1).is_some()
    })
    .await;
    assert_eq!(destination_status(&mesh.proxy, CLUSTER_IP).await["state"], "shadowed");
}

const WEB: &str = "spiffe://test.local/ns/shop/sa/web";

/// What the operator answers for a meshed pod's IP:PORT (operator/src/discovery/index.rs,
/// `Index::address`): the pod alone, with the identity its proxy must prove.
fn pod_answer(addr: SocketAddr, pod: &str, identity: &str) -> ServiceConfig {
    let name = format!("{}.shop.pod.cluster.local:{}", addr.ip().to_string().replace('.', "-"), addr.port());
    serde_json::from_value(serde_json::json!({
        "name": name,
        "addresses": [addr],
        "backends": [{"name": pod, "endpoints": [{"address": addr, "meshed": true, "identity": identity}]}],
        "routes": [{"name": "default", "backends": [{"name": pod}]}],
    }))
    .unwrap()
}

#[tokio::test]
async fn a_pod_ip_known_from_discovery_is_mtls_to_its_identity_and_an_unknown_one_passes_through() {
    let authority = Authority::new();
    let server = DiscoveryServer::start(&authority).await;
    let identity = IdentityServer::start(authority).await;
    // The pod: its proxy admits only mTLS (a STRICT MeshPolicy) in front of its app.
    let app = Upstream::start("web-0").await;
    let pod_files = IdentityFiles::new(&identity.bundle.lock().unwrap(), WEB);
    let pod_config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound:\n  listen: 127.0.0.1:0\n  target: \"{}\"\n  policy: {{ mtls: STRICT, rules: [{{}}] }}\n{}",
        app.addr,
        pod_files.config(WEB, identity.addr)
    );
    let pod = Proxy::start(&pod_config).await;
    eventually("the pod's proxy is ready", || async { pod.admin("/ready").await.0 == StatusCode::OK }).await;
    // Its address stands for the pod IP the app dialled (a headless Service's DNS answer).
    let pod_ip = pod.inbound();
    let outside = Upstream::start("outside").await;
    let mesh = client_of(server, identity, &[pod_ip, outside.addr], "3s", "").await;
    mesh.server.set(&pod_ip.to_string(), Answer::Service(pod_answer(pod_ip, "web-0", WEB)));
    mesh.server.set(&outside.addr.to_string(), Answer::NotMesh);

    for _ in 0..3 {
        assert_eq!(get_via(&mesh, pod_ip, "/").await, (StatusCode::OK, "web-0".to_owned()));
    }
    // The pod's proxy saw the client's identity; the client's saw the pod's.
    let pod_metrics = pod.metrics().await;
    let inbound = [("direction", "inbound"), ("client_id", FRONTEND), ("status_code", "200")];
    assert_eq!(metric(&pod_metrics, "response_total", &inbound), Some(3.0), "{pod_metrics}");
    let client_metrics = mesh.proxy.metrics().await;
    let outbound = [("direction", "outbound"), ("server_id", WEB), ("status_code", "200")];
    assert_eq!(metric(&client_metrics, "response_total", &outbound), Some(3.0), "{client_metrics}");
    assert_eq!(destination_status(&mesh.proxy, &pod_ip.to_string()).await["state"], "service");

    // An IP discovery knows no meshed pod at: forwarded unchanged, as before.
    assert_eq!(get_via(&mesh, outside.addr, "/").await, (StatusCode::OK, "outside".to_owned()));
    assert_eq!(destination_status(&mesh.proxy, &outside.addr.to_string()).await["state"], "passthrough");
    assert_eq!(outside.hits(), 1);

    // The IP goes to a pod of another identity: the proxy expects that one at once (so the pod
    // still proving WEB is refused) and keeps no connection made for the old one.
    let other = "spiffe://test.local/ns/jobs/sa/batch";
    let version =
        mesh.server.push(&pod_ip.to_string(), Answer::Service(pod_answer(pod_ip, "batch-1", other)));
    eventually("the new identity is applied", || async {
        mesh.server.acked(&web(&pod_ip.to_string()), version)
    })
    .await;
    let (status, body) = get_via(&mesh, pod_ip, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("batch"), "the refusal names the identity expected: {body}");
    assert_eq!(app.hits(), 3, "nothing reached the pod under the wrong identity");

    // No meshed pod there any more: plaintext, which the STRICT pod refuses.
    let version = mesh.server.push(&pod_ip.to_string(), Answer::NotMesh);
    eventually("the passthrough answer is applied", || async {
        mesh.server.acked(&web(&pod_ip.to_string()), version)
    })
    .await;
    let (status, _) = get_via(&mesh, pod_ip, "/").await;
    assert_ne!(status, StatusCode::OK, "plaintext to a STRICT pod is refused");
    assert_eq!(app.hits(), 3);
    let denied = metric(&pod.metrics().await, "inbound_tcp_authz_deny_total", &[("tls", "no_identity")]);
    assert_eq!(denied, Some(1.0), "the pod's proxy refused the plaintext connection");
}

#[tokio::test]
async fn an_endpoint_at_the_pods_own_ip_is_its_app_reached_directly_in_the_requests_protocol() {
    // The operator names every pod of a Service as a meshed endpoint with its identity, this pod
    // included. The proxy's own connections are not redirected, so mTLS to its own pod IP would
    // reach the app's port, which does not speak TLS: the app calling its own Service would fail
    // whenever the balancer picked this pod.
    let app = Upstream::start("self").await;
    let mesh = mesh(&[cluster_ip()], "3s, podIps: [\"127.0.0.1\"]", "").await;
    let mut service = pod_answer(app.addr, "self-0", FRONTEND);
    service.name = "web.shop.svc.cluster.local".into();
    service.addresses = vec![cluster_ip()];
    mesh.server.set(CLUSTER_IP, Answer::Service(service));

    assert_eq!(get_via(&mesh, cluster_ip(), "/").await, (StatusCode::OK, "self".to_owned()));
    assert_eq!(*app.last_version.lock().unwrap(), Some(http::Version::HTTP_11));
    // gRPC and other HTTP/2 clients keep HTTP/2 to the app, whatever the Service port says.
    let listener = mesh.proxy.running().fixed_destinations[&cluster_ip()];
    let request = Request::get(format!("http://{listener}/")).body(full("")).unwrap();
    let (status, _, body) = send(&http2_client(), request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "self"));
    assert_eq!(*app.last_version.lock().unwrap(), Some(http::Version::HTTP_2));
    assert_eq!(app.hits(), 2);
}
