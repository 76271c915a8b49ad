//! mTLS between two proxies on loopback with certificates from an identity endpoint, the
//! MeshPolicy modes and rules, readiness, and certificate rotation under load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use support::identity::{Authority, IdentityFiles, IdentityServer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRONTEND: &str = "spiffe://test.local/ns/shop/sa/frontend";
const BATCH: &str = "spiffe://test.local/ns/jobs/sa/batch";
const WEB: &str = "spiffe://test.local/ns/shop/sa/web";

/// The server side: proxy B in front of `app`, with identity WEB and an optional policy.
async fn server_proxy(
    identity: &Arc<IdentityServer>,
    app: std::net::SocketAddr,
    policy: &str,
) -> (Proxy, IdentityFiles) {
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), WEB);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound:\n  listen: 127.0.0.1:0\n  target: \"{app}\"\n{policy}{}",
        files.config(WEB, identity.addr)
    );
    (Proxy::start(&config).await, files)
}

/// The client side: proxy A with identity `me`, sending service `web` to B as `expected`.
async fn client_proxy(
    identity: &Arc<IdentityServer>,
    me: &str,
    server: &Proxy,
    expected: &str,
    extra: &str,
) -> (Proxy, IdentityFiles) {
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), me);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}services:\n  - name: web\n    listen: 127.0.0.1:0\n{extra}    backends:\n      - {{ name: b, endpoints: [{{ address: \"{}\", meshed: true, identity: \"{expected}\" }}] }}\n    routes:\n      - backends: [{{ name: b }}]\n",
        files.config(me, identity.addr),
        server.inbound()
    );
    (Proxy::start(&config).await, files)
}

async fn ready(proxy: &Proxy) {
    eventually("the proxy holds a certificate and is ready", || async {
        proxy.admin("/ready").await.0 == StatusCode::OK
    })
    .await;
}

fn web(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{path}", proxy.service("web"))
}

#[tokio::test]
async fn two_proxies_talk_mtls_and_see_each_others_identity() {
    let identity = IdentityServer::start(Authority::new()).await;
    let app = Upstream::start("app").await;
    let (b, _b_files) = server_proxy(&identity, app.addr, "").await;
    let (a, _a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    ready(&a).await;
    ready(&b).await;
    for _ in 0..3 {
        let (status, _, body) = get(&web(&a, "/hello")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    }
    assert!(!app.last_headers.lock().unwrap().clone().unwrap().contains_key("braid-orig-proto"));
    let server_metrics = b.metrics().await;
    let inbound = [("direction", "inbound"), ("client_id", FRONTEND), ("status_code", "200")];
    assert_eq!(metric(&server_metrics, "response_total", &inbound), Some(3.0), "{server_metrics}");
    let client_metrics = a.metrics().await;
    let outbound = [("direction", "outbound"), ("server_id", WEB), ("status_code", "200")];
    assert_eq!(metric(&client_metrics, "response_total", &outbound), Some(3.0), "{client_metrics}");
    // Linkerd's `tls` label, which its dashboards' "secured" panels filter on.
    let secured = [("direction", "inbound"), ("tls", "true"), ("client_id", FRONTEND)];
    assert_eq!(metric(&server_metrics, "request_total", &secured), Some(3.0), "{server_metrics}");
    let secured = [("direction", "inbound"), ("tls", "true"), ("status_code", "200"), ("le", "+Inf")];
    assert_eq!(
        metric(&server_metrics, "response_latency_ms_bucket", &secured),
        Some(3.0),
        "{server_metrics}"
    );
    let secured = [("direction", "outbound"), ("tls", "true"), ("server_id", WEB), ("status_code", "200")];
    assert_eq!(metric(&client_metrics, "response_total", &secured), Some(3.0), "{client_metrics}");
    // Each proxy got its certificate once; the key never left the process (nothing to check on
    // disk: the proxy has no key path at all).
    assert_eq!(identity.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_server_that_proves_another_identity_is_refused() {
    let identity = IdentityServer::start(Authority::new()).await;
    let app = Upstream::start("app").await;
    let (b, _b_files) = server_proxy(&identity, app.addr, "").await;
    let (a, _a_files) =
        client_proxy(&identity, FRONTEND, &b, "spiffe://test.local/ns/shop/sa/payments", "").await;
    ready(&a).await;
    ready(&b).await;
    let (status, headers, body) = get(&web(&a, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["braid-proxy-error"], "connect-failure");
    assert!(body.contains("mTLS handshake"), "{body}");
    assert!(body.contains(WEB) && body.contains("payments"), "the reason names both identities: {body}");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_accepts_it() {
    let identity = IdentityServer::start(Authority::new()).await;
    let app = Upstream::start("app").await;
    let strict = "  policy: { mtls: STRICT, rules: [{}] }\n";
    let (b, _files) = server_proxy(&identity, app.addr, strict).await;
    ready(&b).await;
    // Plaintext HTTP straight to the inbound port: the connection is closed, no answer.
    let mut stream = TcpStream::connect(b.inbound()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap();
    assert!(answer.is_empty(), "STRICT answered plaintext: {}", String::from_utf8_lossy(&answer));
    assert_eq!(app.hits(), 0);
    let metrics = b.metrics().await;
    // Linkerd's labels: the app's address whole and split, and why there was no identity.
    let port = app.addr.port().to_string();
    let plaintext = [
        ("target_addr", &*app.addr.to_string()),
        ("target_ip", "127.0.0.1"),
        ("target_port", &*port),
        ("tls", "no_identity"),
        ("no_tls_reason", "no_tls_from_remote"),
        ("client_id", ""),
    ];
    assert_eq!(metric(&metrics, "inbound_tcp_authz_deny_total", &plaintext), Some(1.0), "{metrics}");
    // mTLS from a meshed client passes, and has no reason for a TLS it had.
    let (a, _a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    ready(&a).await;
    assert_eq!(get(&web(&a, "/")).await.0, StatusCode::OK);
    let metrics = b.metrics().await;
    let mutual = [("direction", "inbound"), ("tls", "true"), ("target_port", &*port)];
    assert_eq!(metric(&metrics, "response_total", &mutual), Some(1.0), "{metrics}");
    let inbound_mutual = metrics
        .lines()
        .filter(|line| line.starts_with("response_total{") && line.contains(r#"tls="true""#))
        .collect::<Vec<_>>();
    assert!(
        !inbound_mutual.is_empty() && inbound_mutual.iter().all(|line| !line.contains("no_tls_reason")),
        "{metrics}"
    );

    let permissive = "  policy: { mtls: PERMISSIVE, rules: [{}] }\n";
    let (p, _p_files) = server_proxy(&identity, app.addr, permissive).await;
    ready(&p).await;
    let (status, _, body) = get(&format!("http://{}/", p.inbound())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"), "PERMISSIVE accepts plaintext");
}

#[tokio::test]
async fn the_policy_allows_and_denies_by_identity_and_route() {
    let identity = IdentityServer::start(Authority::new()).await;
    let app = Upstream::start("app").await;
    let policy = "  policy:\n    mtls: STRICT\n    source: { meshPolicies: [frontend, shop-readers] }\n    rules:\n      - name: frontend-reads\n        from: [{ serviceAccount: { namespace: shop, name: frontend } }]\n        to: [{ paths: [\"/api/*\"], methods: [GET] }]\n";
    let (b, _files) = server_proxy(&identity, app.addr, policy).await;
    let (frontend, _f) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    let (batch, _b) = client_proxy(&identity, BATCH, &b, WEB, "").await;
    for proxy in [&b, &frontend, &batch] {
        ready(proxy).await;
    }
    assert_eq!(get(&web(&frontend, "/api/items")).await.0, StatusCode::OK);

    let request = Request::post(web(&frontend, "/api/items")).body(full("")).unwrap();
    let (status, headers, _) = send(&http1_client(), request).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the route is not allowed");
    assert_eq!(
        headers["braid-deny-reason"],
        format!("no rule of the policy allows {FRONTEND} to POST /api/items")
    );

    let (status, headers, _) = get(&web(&batch, "/api/items")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the identity is not allowed");
    assert!(headers["braid-deny-reason"].to_str().unwrap().contains(BATCH));
    assert_eq!(app.hits(), 1);
    let metrics = b.metrics().await;
    assert_eq!(
        metric(&metrics, "inbound_http_authz_deny_total", &[("tls", "true"), ("client_id", BATCH)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "inbound_http_authz_deny_total", &[("client_id", FRONTEND)]),
        Some(1.0),
        "the POST"
    );
    // Linkerd's server and route labels: the MeshPolicies that select the pod, at the app's port.
    let port = app.addr.port().to_string();
    let server = [
        ("srv_group", "braid.dev"),
        ("srv_kind", "meshpolicy"),
        ("srv_name", "frontend,shop-readers"),
        ("srv_port", port.as_str()),
        ("route_group", ""),
        ("route_kind", "default"),
        ("route_name", "default"),
    ];
    let denied = [&server[..], &[("client_id", BATCH)]].concat();
    assert_eq!(metric(&metrics, "inbound_http_authz_deny_total", &denied), Some(1.0), "{metrics}");
    let allowed = [
        &server[..],
        &[
            ("authz_group", "braid.dev"),
            ("authz_kind", "meshpolicy"),
            ("authz_name", "frontend-reads"),
            ("client_id", FRONTEND),
        ],
    ]
    .concat();
    assert_eq!(metric(&metrics, "inbound_http_authz_allow_total", &allowed), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn opaque_tcp_crosses_mtls_and_a_denied_connection_is_closed() {
    let identity = IdentityServer::start(Authority::new()).await;
    let echo_addr = echo_server(b"").await;
    let policy = "  policy:\n    rules:\n      - from: [{ namespace: shop }]\n";
    let (b, _files) = server_proxy(&identity, echo_addr, policy).await;
    let (a, _a) = client_proxy(&identity, FRONTEND, &b, WEB, "    protocol: opaque\n").await;
    let (c, _c) = client_proxy(&identity, BATCH, &b, WEB, "    protocol: opaque\n").await;
    for proxy in [&a, &b, &c] {
        ready(proxy).await;
    }
    let mut stream = TcpStream::connect(a.service("web")).await.unwrap();
    stream.write_all(b"\x00binary\xffpayload").await.unwrap();
    let mut back = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"\x00binary\xffpayload");

    let mut denied = TcpStream::connect(c.service("web")).await.unwrap();
    let _ = denied.write_all(b"hello").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), denied.read_to_end(&mut answer)).await.unwrap();
    assert!(answer.is_empty(), "a denied TCP connection gets no bytes back");
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, "inbound_tcp_authz_deny_total", &[("client_id", BATCH)]), Some(1.0));
    // The rule has no name (a hand-written file): allowed by a MeshPolicy rule, name empty.
    // Nor a source: a server of MeshPolicies not named. Opaque connections have no route.
    let allowed = [
        ("srv_kind", "meshpolicy"),
        ("srv_name", ""),
        ("authz_kind", "meshpolicy"),
        ("authz_name", ""),
        ("client_id", FRONTEND),
    ];
    assert_eq!(metric(&metrics, "inbound_tcp_authz_allow_total", &allowed), Some(1.0), "{metrics}");
    let tcp_authz = metrics.lines().filter(|line| line.starts_with("inbound_tcp_authz_")).collect::<Vec<_>>();
    assert!(!tcp_authz.is_empty() && tcp_authz.iter().all(|line| !line.contains("route_")), "{metrics}");
}

/// An app that takes HTTP/1.1 upgrades as a WebSocket server would: a request with `Upgrade:
/// websocket` on `/chat` gets 101 and then every byte it sends comes back in upper case; any
/// other request gets `200 no upgrade here`. Each head it read is kept.
async fn upgrading_app() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                seen.lock().unwrap().push(head.clone());
                if !(head.starts_with("get /chat ") && head.contains("upgrade: websocket")) {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\nno upgrade here\n")
                        .await;
                    return;
                }
                let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                stream.write_all(switch.as_bytes()).await.unwrap();
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 || stream.write_all(&buffer[..n].to_ascii_uppercase()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_websocket_upgrade_crosses_both_proxies_over_mtls_and_its_bytes_are_counted() {
    let identity = IdentityServer::start(Authority::new()).await;
    let (app, heads) = upgrading_app().await;
    let (b, _b_files) = server_proxy(&identity, app, "").await;
    let (a, _a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    ready(&a).await;
    ready(&b).await;

    let mut stream = TcpStream::connect(a.service("web")).await.unwrap();
    let upgrade = "GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await.to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    // Many exchanges on the one tunnel, both ways, binary included.
    let mut sent = 0;
    for round in 0..50u8 {
        let message = [b"frame-".as_slice(), &[round, 0xff, 0x00], b"-end"].concat();
        stream.write_all(&message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message.to_ascii_uppercase(), "round {round}");
        sent += message.len();
    }
    drop(stream);

    let app_head = heads.lock().unwrap()[0].clone();
    assert!(
        app_head.contains("upgrade: websocket") && app_head.contains("connection: upgrade"),
        "{app_head}"
    );
    assert!(app_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="), "{app_head}");
    // A request that does not upgrade still gets its answer, and an upgrade the app declines too.
    let (status, _, body) = get(&web(&a, "/plain")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "no upgrade here\n"));
    let mut declined = TcpStream::connect(a.service("web")).await.unwrap();
    declined.write_all(upgrade.replace("/chat", "/elsewhere").as_bytes()).await.unwrap();
    let head = read_head(&mut declined).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let b_metrics = b.metrics().await;
    let switched = [("direction", "inbound"), ("client_id", FRONTEND), ("status_code", "101")];
    assert_eq!(metric(&b_metrics, "response_total", &switched), Some(1.0), "{b_metrics}");
    eventually("the tunnel's bytes are counted on both proxies' client connections", || async {
        let a_read = metric(&a.metrics().await, "tcp_read_bytes_total", &[("direction", "outbound")]);
        let b_read = metric(&b.metrics().await, "tcp_read_bytes_total", &[("direction", "inbound")]);
        let counted = |read: Option<f64>| read.is_some_and(|read| read >= (sent + upgrade.len()) as f64);
        counted(a_read) && counted(b_read)
    })
    .await;
    let a_metrics = a.metrics().await;
    let switched = [("direction", "outbound"), ("status_code", "101"), ("classification", "success")];
    assert_eq!(metric(&a_metrics, "response_total", &switched), Some(1.0), "{a_metrics}");
}

#[tokio::test]
async fn not_ready_until_it_holds_a_certificate() {
    let authority = Authority::new();
    let files = IdentityFiles::new(&authority.root_pem, FRONTEND);
    // Nothing listens at the endpoint.
    let (_refusing, addr) = refusing_addr();
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}",
        files.config(FRONTEND, addr)
    );
    let proxy = Proxy::start(&config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = proxy.admin("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no workload certificate"), "{body}");
}

/// One round trip on a new connection: through opaque TCP, every one is a new mTLS handshake
/// between the proxies, made with whatever certificates they hold at that moment.
async fn echo_once(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"ping").await.ok()?;
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.ok()?;
        Some(&back == b"ping")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.ok().flatten().unwrap_or(false)
}

/// New connections in a loop through the mTLS pair while `rotate` runs; counts failures.
async fn load_during(a: &Proxy, rotate: impl std::future::Future<Output = ()>) -> (usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = a.service("web");
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if echo_once(addr).await {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    rotate.await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_trust_anchor_rotation_fail_no_request() {
    let identity = IdentityServer::start(Authority::new()).await;
    *identity.lifetime.lock().unwrap() = Duration::from_secs(3);
    let app = echo_server(b"").await;
    let (b, b_files) = server_proxy(&identity, app, "  policy: { mtls: STRICT, rules: [{}] }\n").await;
    let (a, a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "    protocol: opaque\n").await;
    ready(&a).await;
    ready(&b).await;
    let issued_before = identity.issued.load(Ordering::SeqCst);

    // Issuer rotation: a new intermediate under the same root, while 3 s certificates renew.
    let (ok, failed) = load_during(&a, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        identity.authority.lock().unwrap().rotate_issuer();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    assert_eq!(failed, 0, "{failed} of {} requests failed during the issuer rotation", ok + failed);
    assert!(identity.issued.load(Ordering::SeqCst) >= issued_before + 4, "certificates were renewed");

    // Trust-anchor rotation: publish [old, new], let proxies pick it up, switch issuing to the new
    // root, then drop the old root once no certificate under it remains valid.
    let (ok, failed) = load_during(&a, async {
        let new_root = Authority::new();
        let old_root_pem = identity.authority.lock().unwrap().root_pem.clone();
        let both = format!("{old_root_pem}{}", new_root.root_pem);
        for files in [&a_files, &b_files] {
            std::fs::write(&files.bundle, &both).unwrap();
        }
        *identity.bundle.lock().unwrap() = both;
        tokio::time::sleep(Duration::from_secs(6)).await; // the bundle poll is 5 s
        let new_root_pem = new_root.root_pem.clone();
        *identity.authority.lock().unwrap() = new_root;
        tokio::time::sleep(Duration::from_secs(4)).await; // every 3 s certificate renewed under the new root
        for files in [&a_files, &b_files] {
            std::fs::write(&files.bundle, &new_root_pem).unwrap();
        }
        *identity.bundle.lock().unwrap() = new_root_pem;
        tokio::time::sleep(Duration::from_secs(7)).await;
    })
    .await;
    assert_eq!(failed, 0, "{failed} of {} requests failed during the trust-anchor rotation", ok + failed);
    assert!(ok > 100, "the load kept flowing: {ok} requests");
}

/// The mesh's weighted split runs over meshed endpoints: HTTP/1.1 from the app upgraded to one
/// multiplexed HTTP/2 mTLS connection per endpoint. The weights must hold there as they do over
/// plaintext, whatever the endpoints' connections and latencies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_over_mtls_endpoints_holds_its_weights() {
    let identity = IdentityServer::start(Authority::new()).await;
    let names = ["v1-a", "v1-b", "v2-a", "v2-b"];
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    for name in names {
        let app = Upstream::start(name).await;
        let (proxy, files) = server_proxy(&identity, app.addr, "").await;
        ready(&proxy).await;
        apps.push(app);
        servers.push((proxy, files));
    }
    let endpoint = |i: usize| {
        format!("{{ address: \"{}\", meshed: true, identity: \"{WEB}\" }}", servers[i].0.inbound())
    };
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), FRONTEND);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: v1, endpoints: [{}, {}] }}\n      - {{ name: v2, endpoints: [{}, {}] }}\n    routes:\n      - backends: [{{ name: v1, weight: 50 }}, {{ name: v2, weight: 50 }}]\n",
        files.config(FRONTEND, identity.addr),
        endpoint(0),
        endpoint(1),
        endpoint(2),
        endpoint(3),
    );
    let client = Proxy::start(&config).await;
    ready(&client).await;

    // 16 keep-alive connections, 2,000 requests, as the e2e load client sends them.
    const REQUESTS: usize = 2000;
    let url = web(&client, "/");
    let http = http1_client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut failed = 0;
            while next.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                let request = Request::get(&url).body(full("")).unwrap();
                match http.request(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    }
                    _ => failed += 1,
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for worker in workers {
        failed += worker.await.unwrap();
    }
    let hits: Vec<usize> = apps.iter().map(|app| app.hits()).collect();
    assert_eq!(failed, 0, "hits {names:?} = {hits:?}");
    let v2 = (hits[2] + hits[3]) as f64 / REQUESTS as f64;
    eprintln!("v2 share {v2:.3}; hits {names:?} = {hits:?}");
    // 2,000 draws at p = 0.5: the standard deviation of the share is 0.011; 0.04 is over 3.5 of them.
    assert!((0.46..=0.54).contains(&v2), "v2 share {v2:.3}; hits {names:?} = {hits:?}");
}

/// A pod shutting down: its app has closed its listener while its sidecar still serves, and
/// discovery still lists it (as when no operator leads). Its proxy answers 503 connect-failure;
/// the client's proxy takes that, from a meshed endpoint, as a connect failure one hop on: the
/// endpoint is passed over, and the route's `connect-failure` retry sends the request to the
/// other endpoint. No request fails, and the closing pod is not sent more than a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshed_endpoint_whose_app_is_gone_is_passed_over_and_retried_as_a_connect_failure() {
    let identity = IdentityServer::start(Authority::new()).await;
    let (_closed_port, closed_app) = refusing_addr();
    let (closing, _closing_files) = server_proxy(&identity, closed_app, "").await;
    let app = Upstream::start("app").await;
    let (serving, _serving_files) = server_proxy(&identity, app.addr, "").await;
    ready(&closing).await;
    ready(&serving).await;
    let endpoint =
        |proxy: &Proxy| format!("{{ address: \"{}\", meshed: true, identity: \"{WEB}\" }}", proxy.inbound());
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), FRONTEND);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: b, endpoints: [{}, {}] }}\n    routes:\n      - backends: [{{ name: b }}]\n        retries: {{ attempts: 2, retryOn: [connect-failure] }}\n",
        files.config(FRONTEND, identity.addr),
        endpoint(&closing),
        endpoint(&serving),
    );
    let client = Proxy::start(&config).await;
    ready(&client).await;

    const REQUESTS: usize = 200;
    let mut failed = Vec::new();
    for _ in 0..REQUESTS {
        let (status, headers, body) = get(&web(&client, "/")).await;
        if status != StatusCode::OK {
            failed.push(format!("{status} {:?} {body}", headers.get("braid-proxy-error")));
        }
    }
    assert!(failed.is_empty(), "{} of {REQUESTS} failed: {failed:?}", failed.len());
    assert_eq!(app.hits(), REQUESTS);
    let closing_metrics = closing.metrics().await;
    let refused = [("direction", "inbound"), ("status_code", "503")];
    let refused = metric(&closing_metrics, "response_total", &refused).unwrap_or(0.0);
    // Passed over for 1 s, then 2 s, ...: a handful of tries over the run, not a share of it.
    assert!((1.0..=10.0).contains(&refused), "the closing pod's proxy answered {refused} requests 503");
    let client_metrics = client.metrics().await;
    let retries = metric(&client_metrics, "retry_total", &[("direction", "outbound")]);
    assert_eq!(retries, Some(refused), "every 503 connect-failure was retried: {client_metrics}");
}

/// A burst of requests to a meshed endpoint that is gone (its connects get no answer, as a
/// deleted pod's while discovery still lists it): the requests that waited on the connect
/// attempt under way get its failure with it, and each goes on to the live endpoint after one
/// connect timeout, rather than each waiting for an attempt of its own after the ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_waited_on_a_failed_connect_go_on_to_another_endpoint_together() {
    let identity = IdentityServer::start(Authority::new()).await;
    let (_listener, _queued, gone) = silent_addr();
    let app = Upstream::start("app").await;
    let (live, _live_files) = server_proxy(&identity, app.addr, "").await;
    ready(&live).await;
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), FRONTEND);
    // Nearly every request picks the gone endpoint's backend first; the live one takes them
    // when its connect fails.
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: gone, endpoints: [{{ address: \"{gone}\", meshed: true, identity: \"{WEB}\" }}] }}\n      - {{ name: live, endpoints: [{{ address: \"{}\", meshed: true, identity: \"{WEB}\" }}] }}\n    routes:\n      - backends: [{{ name: gone, weight: 1000 }}, {{ name: live, weight: 1 }}]\n",
        files.config(FRONTEND, identity.addr),
        live.inbound(),
    );
    let client = Proxy::start(&config).await;
    ready(&client).await;

    const BURST: usize = 6;
    let url = web(&client, "/");
    let requests = (0..BURST).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (status, headers, body) = get(&url).await;
            (status, headers.get("braid-proxy-error").cloned(), body, started.elapsed())
        })
    });
    let mut answers = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        answers.push(request.await.unwrap());
    }
    let took: Vec<Duration> = answers.iter().map(|answer| answer.3).collect();
    eprintln!("{BURST} requests, one connect timeout at the gone endpoint: {took:?}");
    let failed: Vec<_> = answers.iter().filter(|answer| answer.0 != StatusCode::OK).collect();
    assert!(failed.is_empty(), "{} of {BURST} failed: {failed:?}", failed.len());
    assert_eq!(app.hits(), BURST);
}

/// An app serving `size` bytes on every request, in 64 KiB chunks made as they are read, on
/// HTTP/1.1 and HTTP/2; counts the connections it accepted.
async fn download_server(size: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| async move {
                    const CHUNK: usize = 64 << 10;
                    let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
                        let len = CHUNK.min(size - i * CHUNK);
                        Ok::<_, hyper::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; len])))
                    }));
                    let body: Body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(chunks));
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Clients that go away with downloads in flight cancel their streams on the HTTP/2 connections
/// the proxies share (A→B over mTLS, B→app). h2 ends a connection once it has reset 1,024
/// streams in its life; ordinary cancellations must never get there, nor cut off a bystander's
/// download on the same connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_cancelled_downloads_leave_the_shared_connections_up() {
    const SIZE: usize = 10 << 20;
    const ROUNDS: usize = 25;
    const PER_ROUND: usize = 100;
    let identity = IdentityServer::start(Authority::new()).await;
    let (app, app_connections) = download_server(SIZE).await;
    let (b, _b_files) = server_proxy(&identity, app, "").await;
    let (a, _a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    ready(&a).await;
    ready(&b).await;

    // A bystander on its own connection reads one download slowly through every round.
    let url = web(&a, "/download");
    let bystander = {
        let url = url.clone();
        tokio::spawn(async move {
            let response = http2_client().request(Request::get(&url).body(full("")).unwrap()).await;
            let mut body = response.map_err(|err| err.to_string())?.into_body();
            let mut read = 0;
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                read += frame
                    .map_err(|err| format!("after {read} bytes: {err}"))?
                    .data_ref()
                    .map_or(0, |d| d.len());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, String>(read)
        })
    };

    for round in 0..ROUNDS {
        // One client connection per round: its downloads read until each has some data, then
        // the client goes away with all of them in flight.
        let client = http2_client();
        let started = Arc::new(AtomicUsize::new(0));
        let downloads: Vec<_> = (0..PER_ROUND)
            .map(|_| {
                let request = client.request(Request::get(&url).body(full("")).unwrap());
                let started = started.clone();
                tokio::spawn(async move {
                    let mut body = request.await.expect("the download's response").into_body();
                    let mut read = 0;
                    while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                        let before = read;
                        read += frame.data_ref().map_or(0, |data| data.len());
                        if before < 64 << 10 && read >= 64 << 10 {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while started.load(Ordering::SeqCst) < PER_ROUND {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} of {PER_ROUND} downloads got 64 KiB in 30 s",
                started.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for download in &downloads {
            download.abort();
        }
        drop(client);
        eprintln!("round {round}: {PER_ROUND} downloads under way, then cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let read = bystander.await.unwrap().expect("the bystander's download is not cut off");
    assert_eq!(read, SIZE, "the bystander read the whole download");
    let b_metrics = b.metrics().await;
    let from_a = metric(&b_metrics, "tcp_open_total", &[("direction", "inbound")]).unwrap_or(0.0);
    assert_eq!(
        from_a,
        1.0,
        "A kept its one HTTP/2 connection to B through {} cancellations",
        ROUNDS * PER_ROUND
    );
    assert_eq!(app_connections.load(Ordering::SeqCst), 1, "B kept its one HTTP/2 connection to the app");
}

/// An HTTP/2 (h2c) app that takes extended CONNECT (RFC 8441): a `websocket` stream is answered
/// 200 and every DATA frame comes back in upper case; the `:protocol` it saw is recorded.
async fn extended_connect_app() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let protocols = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let protocols = protocols.clone();
            tokio::spawn(async move {
                let mut builder = h2::server::Builder::new();
                builder.enable_connect_protocol();
                let Ok(mut connection) = builder.handshake::<_, bytes::Bytes>(stream).await else { return };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let protocols = protocols.clone();
                    tokio::spawn(async move {
                        let protocol =
                            request.extensions().get::<h2::ext::Protocol>().map(|p| p.as_str().to_owned());
                        protocols.lock().unwrap().push(format!("{} {:?}", request.method(), protocol));
                        let mut body = request.into_body();
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        let Ok(mut send) = respond.send_response(response, false) else { return };
                        while let Some(Ok(data)) = body.data().await {
                            let _ = body.flow_control().release_capacity(data.len());
                            if send.send_data(data.to_ascii_uppercase().into(), false).is_err() {
                                return;
                            }
                        }
                        let _ = send.send_data(bytes::Bytes::new(), true);
                    });
                }
            });
        }
    });
    (addr, seen)
}

/// An h2c client on `addr` that waits for the server's SETTINGS to allow extended CONNECT.
async fn extended_connect_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
    }
    panic!("the proxy did not allow extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)");
}

fn websocket_connect(path: &str) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://web{path}"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    request.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
    request
}

#[tokio::test]
async fn an_http2_extended_connect_crosses_both_proxies_over_mtls() {
    let identity = IdentityServer::start(Authority::new()).await;
    let (app, protocols) = extended_connect_app().await;
    let (b, _b_files) = server_proxy(&identity, app, "").await;
    let (a, _a_files) = client_proxy(&identity, FRONTEND, &b, WEB, "").await;
    ready(&a).await;
    ready(&b).await;

    let mut client = extended_connect_client(a.service("web")).await;
    let (response, mut send) = client.send_request(websocket_connect("/chat"), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = response.into_body();
    for round in 0..20u8 {
        let message = [b"frame-".as_slice(), &[round, 0xff, 0x00], b"-end"].concat();
        send.send_data(bytes::Bytes::from(message.clone()), false).unwrap();
        let mut back = Vec::new();
        while back.len() < message.len() {
            let data = tokio::time::timeout(Duration::from_secs(5), received.data())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let _ = received.flow_control().release_capacity(data.len());
            back.extend_from_slice(&data);
        }
        assert_eq!(back, message.to_ascii_uppercase(), "round {round}");
    }
    send.send_data(bytes::Bytes::new(), true).unwrap();
    // The app saw an extended CONNECT with its :protocol, through both proxies.
    assert_eq!(protocols.lock().unwrap().as_slice(), ["CONNECT Some(\"websocket\")"]);
    let counted = [("direction", "inbound"), ("client_id", FRONTEND), ("status_code", "200")];
    eventually("the stream is counted on the server's proxy, under the client's identity", || async {
        metric(&b.metrics().await, "response_total", &counted).is_some()
    })
    .await;
}

#[tokio::test]
async fn an_extended_connect_to_an_http1_upstream_is_refused_with_the_reason() {
    let (app, _) = upgrading_app().await;
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\nservices:\n  - name: web\n    listen: 127.0.0.1:0\n    backends: [{{ name: b, endpoints: [{{ address: \"{app}\" }}] }}]\n    routes: [{{ backends: [{{ name: b }}] }}]\n"
    );
    let proxy = Proxy::start(&config).await;
    let mut client = extended_connect_client(proxy.service("web")).await;
    let (response, _send) = client.send_request(websocket_connect("/chat"), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["braid-proxy-error"], "extended-connect-unsupported");
    // Not the endpoint's fault: it is not ejected, and a plain request still goes through.
    let (status, _, _) = get(&format!("http://{}/plain", proxy.service("web"))).await;
    assert_eq!(status, StatusCode::OK);
}
