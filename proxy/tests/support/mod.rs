//! Real sockets on loopback: in-process upstream servers, the proxy started in-process from a
//! configuration file, and HTTP clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod discovery;
pub mod identity;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

/// An upstream HTTP server (HTTP/1.1 and HTTP/2) that answers with its name, and can be told to
/// fail its first N requests or to be slow.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: AtomicUsize,
    pub fail_first: AtomicUsize,
    pub fail_status: Mutex<StatusCode>,
    pub delay: Mutex<Duration>,
    pub last_headers: Mutex<Option<HeaderMap>>,
    pub last_version: Mutex<Option<http::Version>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            name,
            hits: AtomicUsize::new(0),
            fail_first: AtomicUsize::new(0),
            fail_status: Mutex::new(StatusCode::SERVICE_UNAVAILABLE),
            delay: Mutex::new(Duration::ZERO),
            last_headers: Mutex::new(None),
            last_version: Mutex::new(None),
        });
        let server = upstream.clone();
        serve_http(listener, move |request| server.clone().handle(request));
        upstream
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let hit = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
        *self.last_headers.lock().unwrap() = Some(request.headers().clone());
        *self.last_version.lock().unwrap() = Some(request.version());
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if hit <= self.fail_first.load(Ordering::SeqCst) {
            let status = *self.fail_status.lock().unwrap();
            return Ok(Response::builder().status(status).body(full("failing on purpose")).unwrap());
        }
        let path = request.uri().path().to_owned();
        if path == "/echo" {
            // Echoes the request body frame by frame, as it arrives, then gRPC-style trailers.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(16);
            let mut body = request.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(Frame::data(data))).await.is_err()
                    {
                        return;
                    }
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("grpc-message", "echoed".parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            return Ok(Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(stream).boxed())
                .unwrap());
        }
        if path == "/body" {
            let bytes = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Ok(Response::new(full(format!("{} got {} bytes", self.name, bytes.len()))));
        }
        Ok(Response::builder().header("x-upstream", self.name).body(full(self.name)).unwrap())
    }
}

/// A proxy started in-process from a configuration file it owns.
pub struct Proxy {
    pub running: Option<braid_proxy::app::Running>,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, Vec::new()).await
    }

    /// With listeners that stand for redirected connections to `fixed_destinations`
    /// (`Running::fixed_destinations`).
    pub async fn start_with(config: &str, fixed_destinations: Vec<SocketAddr>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("proxy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let running = braid_proxy::app::start(braid_proxy::app::Options {
            config: Some(config_path.clone()),
            config_poll: Duration::from_millis(100),
            admin: None,
            default_identity: None,
            default_discovery: None,
            fixed_destinations,
        })
        .await
        .unwrap();
        Self { running: Some(running), config_path, _dir: dir }
    }

    pub fn running(&self) -> &braid_proxy::app::Running {
        self.running.as_ref().unwrap()
    }

    pub fn service(&self, name: &str) -> SocketAddr {
        self.running().services[name]
    }

    pub fn inbound(&self) -> SocketAddr {
        self.running().inbound
    }

    pub async fn admin(&self, path: &str) -> (StatusCode, String) {
        let (status, _, body) = get(&format!("http://{}{path}", self.running().admin)).await;
        (status, body)
    }

    pub async fn metrics(&self) -> String {
        self.admin("/metrics").await.1
    }
}

/// The value of the first metric line that starts with `prefix` (name and labels as written).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric_name != name {
            return None;
        }
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

/// A TCP echo server; it sends `banner` first, as a server-speaks-first protocol would.
pub async fn echo_server(banner: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                if stream.write_all(banner).await.is_err() {
                    return;
                }
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

/// A port nothing listens on now (for the binary, which binds its own listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An address that refuses connections for as long as the returned socket lives: bound but never
/// listening, so no listener (this test's proxy, a test running beside it) can be given its
/// port, as a port merely found free can be, and answer in its place.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// An address whose connections get no answer, as a pod's that is gone, for as long as the
/// returned sockets live: a listener that never accepts, with its accept queue filled, so the
/// kernel drops further SYNs and a connect waits for its timeout.
pub fn silent_addr() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let mut queued = Vec::new();
    // The queue holds one connection at backlog 0; the first connect that times out found it full.
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(stream);
        assert!(queued.len() < 16, "{addr}: the accept queue did not fill");
    }
    (listener, queued, addr)
}

pub fn http1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    send(&http1_client(), Request::get(url).body(full("")).unwrap()).await
}

pub async fn send(
    client: &Client<HttpConnector, Body>,
    request: Request<Body>,
) -> (StatusCode, HeaderMap, String) {
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `check` every 50 ms for up to 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Serves HTTP/1.1 and HTTP/2 on `listener`, each request answered by `handle`, until the test ends.
pub fn serve_http<F, Fut>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}
