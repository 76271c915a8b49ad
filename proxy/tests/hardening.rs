//! What a client must not be able to do to the proxy, over real sockets: reach a path the policy
//! does not allow by spelling it another way, pass STRICT plaintext as a kubelet probe, pass a
//! policy with an identity of another trust domain under the same root, make mirroring hold
//! unbounded work, or hold connections and connection slots forever.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::identity::{Authority, IdentityFiles, IdentityServer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An app that records the request target (path and query) of every request it gets, and how
/// many requests it is answering at once; each answer waits `delay`.
struct App {
    addr: SocketAddr,
    targets: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Duration,
}

impl App {
    async fn start(delay: Duration) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            targets: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay,
        });
        let server = app.clone();
        serve_http(listener, move |request| server.clone().handle(request));
        app
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let target = request.uri().path_and_query().map_or("", |p| p.as_str()).to_owned();
        self.targets.lock().unwrap().push(target);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Response::new(full("ok")))
    }

    fn take_targets(&self) -> Vec<String> {
        std::mem::take(&mut *self.targets.lock().unwrap())
    }
}

/// One HTTP/1.1 request written byte for byte (no client library rewrites the target) on a new
/// connection: the status (0 when the connection closed without an answer) and the answer.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to GET {target} within 5 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn plaintext_proxy_config(app: SocketAddr, inbound: &str, limits: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound:\n  listen: 127.0.0.1:0\n  target: \"{app}\"\n{inbound}{limits}"
    )
}

/// With only `/public/*` allowed, every other spelling of `/admin` is refused, and what reaches
/// the app is the path the policy allowed (the class of Istio's CVE-2019-9901).
#[tokio::test]
async fn a_path_is_authorised_and_forwarded_as_one_normal_form() {
    let app = App::start(Duration::ZERO).await;
    let policy = "  policy:\n    mtls: PERMISSIVE\n    rules:\n      - to: [{ paths: [\"/public/*\"] }]\n";
    let proxy = Proxy::start(&plaintext_proxy_config(app.addr, policy, "")).await;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/ok", 200, Some("/public/ok")),
        ("/admin", 403, None),
        // Dot segments, plain and percent-encoded: resolved, then authorised.
        ("/public/../admin", 403, None),
        ("/public/%2e%2e/admin", 403, None),
        ("/public/%2E%2E/admin", 403, None),
        ("/public/.%2e/admin", 403, None),
        ("/public/%2e./admin", 403, None),
        ("/public/./../admin", 403, None),
        ("/public/x/../../admin", 403, None),
        // Repeated slashes are merged first.
        ("//public/../admin", 403, None),
        ("/public//../admin", 403, None),
        // Ambiguous spellings: refused whole, with a reason.
        ("/public/..%2fadmin", 400, None),
        ("/public/..%2Fadmin", 400, None),
        ("/public/..%5cadmin", 400, None),
        ("/public/..%5Cadmin", 400, None),
        ("/public/..\\admin", 400, None),
        ("/public\\..\\admin", 400, None),
        ("/../admin", 400, None),
        ("/public/../../admin", 400, None),
        ("/public/..;/admin", 400, None),
        ("/public/.;/../admin", 400, None),
        ("/public/%zz", 400, None),
        // Normalised and allowed: the app gets the normal form, the query as it was.
        ("/public/a/./b/../c", 200, Some("/public/a/c")),
        ("/public//x", 200, Some("/public/x")),
        ("/public/x/..", 200, Some("/public/")),
        ("/public/%7Euser/%61", 200, Some("/public/~user/a")),
        ("/public/%c3%a9", 200, Some("/public/%C3%A9")),
        ("/public/x?next=/../admin", 200, Some("/public/x?next=/../admin")),
    ];
    let mut wrong = Vec::new();
    for &(target, status, reached) in cases {
        let (got, answer) = raw_get(proxy.inbound(), target).await;
        let targets = app.take_targets();
        let got_reached = targets.first().map(String::as_str);
        if got != status || got_reached != reached {
            wrong.push(format!(
                "{target}: {got} and the app got {got_reached:?}, expected {status} and {reached:?}\n{answer}"
            ));
        }
        if status == 400 && got == 400 && !answer.contains("braid-proxy-error: ambiguous-path") {
            wrong.push(format!("{target}: the 400 does not say why\n{answer}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));

    // HTTP/2 requests are checked the same way.
    let http2 = http2_client();
    for (target, status) in [("/public/%2e%2e/admin", 403), ("/public/..%2fadmin", 400), ("/public/ok", 200)]
    {
        let request = Request::get(format!("http://{}{target}", proxy.inbound())).body(full("")).unwrap();
        let (got, _, body) = send(&http2, request).await;
        assert_eq!(got.as_u16(), status, "HTTP/2 {target}: {body}");
    }
    assert_eq!(app.take_targets(), ["/public/ok"]);
}

/// Outbound routes match the same normal form, and it is what goes upstream.
#[tokio::test]
async fn outbound_routes_match_the_normalised_path() {
    let v1 = App::start(Duration::ZERO).await;
    let other = App::start(Duration::ZERO).await;
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\nservices:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: v1, endpoints: [{{ address: \"{}\" }}] }}\n      - {{ name: other, endpoints: [{{ address: \"{}\" }}] }}\n    routes:\n      - {{ matches: [{{ path: {{ prefix: /v1 }} }}], backends: [{{ name: v1 }}] }}\n      - {{ backends: [{{ name: other }}] }}\n",
        v1.addr, other.addr
    );
    let proxy = Proxy::start(&config).await;
    let web = proxy.service("web");
    let cases: &[(&str, u16, Option<&str>, Option<&str>)] = &[
        ("/v1/items", 200, Some("/v1/items"), None),
        ("/v1/../admin", 200, None, Some("/admin")),
        ("/v1/%2e%2e/admin", 200, None, Some("/admin")),
        ("//v1//items", 200, Some("/v1/items"), None),
        ("/x/../v1/items", 200, Some("/v1/items"), None),
        ("/v1/..%2fadmin", 400, None, None),
    ];
    for &(target, status, to_v1, to_other) in cases {
        let (got, answer) = raw_get(web, target).await;
        let (v1_got, other_got) = (v1.take_targets(), other.take_targets());
        assert_eq!(got, status, "{target}: {answer}");
        assert_eq!(v1_got.first().map(String::as_str), to_v1, "{target}: what v1 got");
        assert_eq!(other_got.first().map(String::as_str), to_other, "{target}: what the other backend got");
    }
}

/// The probe exemption is for the probe's request exactly: its path and its query.
#[tokio::test]
async fn only_the_kubelets_exact_probe_passes_strict_in_plaintext() {
    let app = App::start(Duration::ZERO).await;
    let policy = format!(
        "  policy:\n    mtls: STRICT\n    rules: [{{}}]\n    probes: [{{ port: {0}, path: / }}, {{ port: {0}, path: \"/ready?verbose=1\" }}]\n",
        app.addr.port()
    );
    let proxy = Proxy::start(&plaintext_proxy_config(app.addr, &policy, "")).await;
    for (target, status) in [
        ("/", 200),
        ("/?x", 403),
        ("/ready?verbose=1", 200),
        ("/?", 403),
        ("/?anything=/admin", 403),
        ("/ready", 403),
        ("/ready?verbose=1&x", 403),
        ("/admin", 403),
    ] {
        let (got, answer) = raw_get(proxy.inbound(), target).await;
        assert_eq!(got, status, "plaintext GET {target} under STRICT: {answer}");
    }
    assert_eq!(app.take_targets(), ["/", "/ready?verbose=1"]);
}

const WEB: &str = "spiffe://test.local/ns/shop/sa/web";
const FRONTEND: &str = "spiffe://test.local/ns/shop/sa/frontend";
/// The same namespace and service account, in another trust domain, issued under the same root.
const FOREIGN_FRONTEND: &str = "spiffe://other.domain/ns/shop/sa/frontend";
const FOREIGN_WEB: &str = "spiffe://other.domain/ns/shop/sa/web";

async fn identity_proxy(identity: &Arc<IdentityServer>, me: &str, rest: &str) -> (Proxy, IdentityFiles) {
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), me);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\n{rest}{}",
        files.config(me, identity.addr)
    );
    let proxy = Proxy::start(&config).await;
    eventually("the proxy holds a certificate", || async { proxy.admin("/ready").await.0 == StatusCode::OK })
        .await;
    (proxy, files)
}

fn service_to(server: &Proxy, expected: &str) -> String {
    format!(
        "inbound: {{ listen: 127.0.0.1:0 }}\nservices:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: b, endpoints: [{{ address: \"{}\", meshed: true, identity: \"{expected}\" }}] }}\n    routes:\n      - backends: [{{ name: b }}]\n",
        server.inbound()
    )
}

/// Accepts any server certificate: a client that does not check the server's trust domain.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One HTTP/2 request over mTLS (ALPN braid/h2, as a proxy sends) to `server`, with a
/// certificate for `me` from the identity server's CA: the answer's status, or what failed.
async fn foreign_client_request(
    identity: &IdentityServer,
    me: &str,
    server: SocketAddr,
) -> Result<StatusCode, String> {
    use braid_proxy::identity::tls;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(me).unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (certificate, issuer) = {
        let authority = identity.authority.lock().unwrap();
        (authority.sign_csr(&csr, Duration::from_secs(3600)).unwrap(), authority.issuer_pem.clone())
    };
    let mut chain = tls::parse_pem_certificates(certificate.as_bytes());
    chain.extend(tls::parse_pem_certificates(issuer.as_bytes()));
    let provider = tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    config.alpn_protocols = vec![b"braid/h2".to_vec()];
    let tcp = TcpStream::connect(server).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::mesh_server_name(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(connection);
    let request = Request::get(format!("http://{server}/")).body(full("")).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    Ok(response.status())
}

/// A certificate that chains to the mesh's root but names another trust domain is no identity
/// of this mesh: its connection is refused (counted), whatever the policy says of the namespace
/// and service account, and a server that proves one is refused too.
#[tokio::test]
async fn an_identity_of_another_trust_domain_under_the_same_root_is_refused() {
    let identity = IdentityServer::start(Authority::new()).await;
    let app = App::start(Duration::ZERO).await;
    let policy = format!(
        "inbound:\n  listen: 127.0.0.1:0\n  target: \"{}\"\n  policy:\n    mtls: STRICT\n    rules:\n      - from: [{{ serviceAccount: {{ namespace: shop, name: frontend }} }}, {{ namespace: shop }}]\n",
        app.addr
    );
    let (server, _s) = identity_proxy(&identity, WEB, &policy).await;
    let (frontend, _f) = identity_proxy(&identity, FRONTEND, &service_to(&server, WEB)).await;
    let (foreign, _o) = identity_proxy(&identity, FOREIGN_FRONTEND, &service_to(&server, WEB)).await;

    let (status, _, body) = get(&format!("http://{}/", frontend.service("web"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "the mesh's own frontend");
    let (status, _, body) = get(&format!("http://{}/", foreign.service("web"))).await;
    assert_ne!(status, StatusCode::OK, "another trust domain's frontend got through: {body}");
    // A client that does not check the server's trust domain itself: the server refuses it.
    let answer = foreign_client_request(&identity, FOREIGN_FRONTEND, server.inbound()).await;
    assert!(answer.is_err(), "another trust domain's client got an answer: {answer:?}");
    assert_eq!(app.take_targets().len(), 1, "only the mesh's own frontend reached the app");
    let metrics = server.metrics().await;
    let refused = metric(&metrics, "inbound_identity_refused_total", &[("reason", "foreign_trust_domain")]);
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");

    // A server of another trust domain is refused even when the endpoint names exactly it.
    let (foreign_server, _fs) = identity_proxy(
        &identity,
        FOREIGN_WEB,
        &format!("inbound:\n  listen: 127.0.0.1:0\n  target: \"{}\"\n", app.addr),
    )
    .await;
    let (client, _c) = identity_proxy(&identity, FRONTEND, &service_to(&foreign_server, FOREIGN_WEB)).await;
    let (status, _, body) = get(&format!("http://{}/", client.service("web"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("other.domain"), "the reason names the trust domain: {body}");
    assert!(app.take_targets().is_empty());
}

/// A slow mirror target never slows the primary, and no more mirrored copies are in flight than
/// the limit: the rest are dropped and counted, and a copy that takes too long is abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_is_bounded_and_never_slows_the_primary() {
    let primary = App::start(Duration::ZERO).await;
    let shadow = App::start(Duration::from_secs(3)).await;
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\nlimits: {{ maxMirrorsInFlight: 5, mirrorTimeout: 1s }}\nservices:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: primary, endpoints: [{{ address: \"{}\" }}] }}\n      - {{ name: shadow, endpoints: [{{ address: \"{}\" }}] }}\n    routes:\n      - {{ backends: [{{ name: primary }}], mirror: {{ backend: shadow }} }}\n",
        primary.addr, shadow.addr
    );
    let proxy = Proxy::start(&config).await;
    let url = format!("http://{}/", proxy.service("web"));
    let client = http1_client();
    let mut requests = Vec::new();
    for _ in 0..40 {
        let (client, url) = (client.clone(), url.clone());
        requests.push(tokio::spawn(async move {
            let start = Instant::now();
            let response = client.request(Request::get(url).body(full("")).unwrap()).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await;
            (status, start.elapsed())
        }));
    }
    for request in requests {
        let (status, took) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(took < Duration::from_millis(900), "a primary request took {took:?} behind a 3 s mirror");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let most = shadow.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=5).contains(&most), "{most} mirrored copies were in flight at once, over the limit of 5");
    let metrics = proxy.metrics().await;
    let dropped = metric(&metrics, "mirror_dropped_total", &[("dst_service", "web")]).unwrap_or(0.0);
    assert_eq!(dropped as usize + shadow.take_targets().len(), 40, "every copy sent or counted: {metrics}");
    eventually("the copies in flight time out after mirrorTimeout", || async {
        metric(&proxy.metrics().await, "timeout_total", &[("kind", "mirror")]) == Some(most as f64)
    })
    .await;
    // Their slots are free again: new requests are mirrored.
    let (status, _, _) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
    eventually("a new copy is mirrored", || async { shadow.targets.lock().unwrap().len() == 1 }).await;
}

/// Opens an HTTP/2 connection (prior knowledge) to `addr`; the sender, and the connection's task.
async fn http2_connection(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Body>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    )
}

/// An inbound HTTP/2 connection is closed once it has had no open stream for idleTimeout; a
/// stream that takes longer than that is not cut.
async fn an_idle_http2_connection_is_closed() {
    let app = App::start(Duration::from_millis(800)).await;
    let limits = "limits: { idleTimeout: 300ms }\n";
    let proxy = Proxy::start(&plaintext_proxy_config(app.addr, "", limits)).await;
    let (mut sender, connection) = http2_connection(proxy.inbound()).await;
    for _ in 0..2 {
        let request = Request::get(format!("http://{}/slow", proxy.inbound())).body(full("")).unwrap();
        let response =
            sender.send_request(request).await.expect("a stream longer than idleTimeout is not cut");
        assert_eq!(response.status(), StatusCode::OK);
        // Shorter than idleTimeout: the connection is still there for the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(3), connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection was still open 3 s after its last stream");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tcp_idle_timeout_total", &[("direction", "inbound")]),
        Some(1.0),
        "{metrics}"
    );
}

/// Streams driven on the connection's task (a one-thread runtime, a sidecar's default).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_on_one_thread() {
    an_idle_http2_connection_is_closed().await;
}

/// Streams on tasks of their own (more runtime threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_on_several_threads() {
    an_idle_http2_connection_is_closed().await;
}

/// An inbound opaque connection is closed once no byte has crossed it for idleTimeout.
#[tokio::test]
async fn an_idle_opaque_connection_is_closed() {
    let echo = echo_server(b"").await;
    let proxy = Proxy::start(&plaintext_proxy_config(echo, "", "limits: { idleTimeout: 300ms }\n")).await;
    let mut stream = TcpStream::connect(proxy.inbound()).await.unwrap();
    let mut back = [0u8; 8];
    for _ in 0..3 {
        stream.write_all(b"\x00\x01opaque").await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle opaque connection was still open 3 s after its last byte");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tcp_idle_timeout_total", &[("direction", "inbound")]),
        Some(1.0),
        "{metrics}"
    );
}

/// A connection from 127.0.0.`last` to `addr` that has completed one keep-alive request.
async fn held_connection(addr: SocketAddr, last: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    stream
}

/// Whether the proxy closes a new connection from 127.0.0.`last` without serving it.
async fn refused(addr: SocketAddr, last: u8) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

/// One client address holds at most maxConnectionsPerClient of the inbound slots; the excess is
/// refused and counted, and other clients still get in.
#[tokio::test]
async fn one_client_cannot_take_every_connection_slot() {
    let app = App::start(Duration::ZERO).await;
    let limits = "limits: { maxConnections: 20, maxConnectionsPerClient: 3 }\n";
    let proxy = Proxy::start(&plaintext_proxy_config(app.addr, "", limits)).await;
    let inbound = proxy.inbound();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(held_connection(inbound, 1).await);
    }
    assert!(refused(inbound, 1).await, "a 4th connection from 127.0.0.1 was served");
    let other = held_connection(inbound, 2).await;
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tcp_refused_client_limit_total", &[("direction", "inbound")]),
        Some(1.0),
        "{metrics}"
    );
    drop(held.pop());
    eventually("a slot of 127.0.0.1 is free again", || async { !refused(inbound, 1).await }).await;
    drop(other);
}
