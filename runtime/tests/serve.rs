//! The shared accept loop and admin endpoints on real loopback sockets, with TLS certificates
//! from rcgen.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// both a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use braid_runtime::{
    admin::{self, Status},
    serve::{self, Protocol, Settings, TlsSource},
};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all from rcgen.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &self.ca).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(roots)
    }

    /// HTTP/1.1 without client authentication, or HTTP/2 requiring a client certificate.
    fn server(&self, mtls: bool) -> Arc<ServerConfig> {
        let (chain, key) = self.leaf("127.0.0.1");
        let builder =
            ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
        let mut config = if mtls {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(self.roots(), provider()).build().unwrap();
            builder.with_client_cert_verifier(verifier).with_single_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth().with_single_cert(chain, key).unwrap()
        };
        config.alpn_protocols = vec![if mtls { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        Arc::new(config)
    }

    fn client(&self, certificate: Option<&str>, alpn: &[u8]) -> TlsConnector {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let mut config = match certificate {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let (chain, key) = self.leaf(name);
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

type Answer = Response<Full<Bytes>>;

fn text(body: impl Into<String>) -> Answer {
    Response::new(Full::new(Bytes::from(body.into())))
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// The accept loop on a loopback port, answering each request with what `answer` says.
async fn start<F, Fut>(tls: Option<Arc<dyn TlsSource>>, settings: Settings, answer: F) -> Running
where
    F: Fn(SocketAddr, Option<String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let make = move |connection: &serve::Connection<'_>| {
        let peer = connection.peer;
        // The subject alternative name of the client certificate, to show it reaches the service.
        let client = connection
            .tls
            .and_then(|tls| tls.peer_certificates())
            .and_then(|certs| certs.first())
            .map(|cert| format!("{} bytes", cert.len()));
        let answer = answer.clone();
        Some(service_fn(move |_request: Request<hyper::body::Incoming>| {
            let answer = answer(peer, client.clone());
            async move { Ok::<_, Infallible>(answer.await) }
        }))
    };
    let task = tokio::spawn(serve::serve(listener, tls, make, settings, shutdown.clone()));
    Running { addr, shutdown, task }
}

/// One HTTP/1.1 GET on `io`: the status and body, or the error.
async fn get_on<I>(io: I, path: &str) -> Result<(u16, String), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let request = Request::get(path).header("host", "127.0.0.1").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), hyper::Error> {
    get_on(TcpStream::connect(addr).await.unwrap(), path).await
}

fn fast(protocol: Protocol) -> Settings {
    Settings {
        handshake_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(5),
        ..Settings::new("test server", protocol)
    }
}

#[tokio::test]
async fn a_request_over_tls_is_served() {
    let pki = Pki::new();
    let tls: Arc<dyn TlsSource> = Arc::new(pki.server(false));
    let server =
        start(Some(tls), fast(Protocol::Http1), |peer, _| async move { text(format!("hello {peer}")) }).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let tls = pki.client(None, b"http/1.1").connect(name, tcp).await.unwrap();
    let (status, body) = get_on(tls, "/").await.unwrap();
    assert_eq!((status, body), (200, format!("hello {local}")), "the service sees the peer address");

    // Plain HTTP on the TLS port is not served.
    assert!(get(server.addr, "/").await.is_err());
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn http2_with_client_certificates_reaches_the_service_with_the_certificate() {
    let pki = Pki::new();
    let tls: Arc<dyn TlsSource> = Arc::new(pki.server(true));
    let settings = Settings { keep_alive_interval: Some(Duration::from_secs(30)), ..fast(Protocol::Http2) };
    let server =
        start(Some(tls), settings, |_, client| async move { text(client.unwrap_or_default()) }).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let tls = pki.client(Some("client.test"), b"h2").connect(name, tcp).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://127.0.0.1/").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with(" bytes"), "{body:?}");

    // Without a client certificate the handshake, or the first request, fails.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let refused = match pki.client(None, b"h2").connect(name, tcp).await {
        Err(_) => true,
        Ok(tls) => match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
        {
            Err(_) => true,
            Ok((mut sender, connection)) => {
                tokio::spawn(connection);
                let request = Request::get("https://127.0.0.1/").body(Empty::<Bytes>::new()).unwrap();
                sender.send_request(request).await.is_err()
            }
        },
    };
    assert!(refused, "a client without a certificate is not served");
    server.shutdown.cancel();
}

#[tokio::test]
async fn without_a_tls_configuration_connections_are_closed() {
    let source: Arc<dyn TlsSource> = Arc::new(std::sync::RwLock::new(None::<Arc<ServerConfig>>));
    let server = start(Some(source), fast(Protocol::Http1), |_, _| async { text("unreachable") }).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut [0; 16])).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed at once: {read:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_never_starts_the_handshake_is_dropped_after_the_timeout() {
    let pki = Pki::new();
    let tls: Arc<dyn TlsSource> = Arc::new(pki.server(false));
    let server = start(Some(tls), fast(Protocol::Http1), |_, _| async { text("unreachable") }).await;

    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut [0; 16])).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the server closed the connection: {read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "not before the handshake timeout: {waited:?}");
    assert!(waited < Duration::from_secs(3), "soon after the handshake timeout: {waited:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn on_shutdown_an_in_flight_request_completes_then_the_loop_returns() {
    let server = start(None, fast(Protocol::Auto), |_, _| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        text("finished")
    })
    .await;
    let addr = server.addr;
    let request = tokio::spawn(async move { get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), server.task).await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250), "the loop waited for the request");
    assert_eq!(request.await.unwrap().unwrap(), (200, "finished".to_owned()));
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn the_drain_ends_after_its_timeout_even_if_a_request_never_does() {
    let settings = Settings { drain_timeout: Duration::from_millis(300), ..fast(Protocol::Http1) };
    let server = start(None, settings, |_, _| std::future::pending::<Answer>()).await;
    let addr = server.addr;
    let request = tokio::spawn(async move { get(addr, "/forever").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), server.task).await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    let outcome = tokio::time::timeout(Duration::from_secs(3), request).await.unwrap().unwrap();
    assert!(outcome.is_err(), "the connection was closed at the end of the drain: {outcome:?}");
}

struct AdminState {
    registry: Registry,
    ready: AtomicBool,
}

impl Status for AdminState {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ready(&self) -> Result<(), &str> {
        if self.ready.load(Ordering::Relaxed) { Ok(()) } else { Err("not ready: still starting") }
    }
}

#[tokio::test]
async fn admin_readiness_follows_the_state_and_metrics_come_from_the_registry() {
    let mut registry = Registry::default();
    let requests = Counter::<u64>::default();
    registry.register("test_requests", "Requests", requests.clone());
    requests.inc_by(3);
    let state = Arc::new(AdminState { registry, ready: AtomicBool::new(false) });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(admin::serve(listener, state.clone(), shutdown.clone()));

    assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/readyz").await.unwrap(), (503, "not ready: still starting\n".to_owned()));
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await.unwrap(), (200, "ready\n".to_owned()));

    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(addr).await.unwrap()))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/metrics").header("host", "127.0.0.1").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], admin::METRICS_CONTENT_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("test_requests_total 3"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(6), task).await.unwrap().unwrap();
}
