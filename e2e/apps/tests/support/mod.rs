//! Real sockets on loopback: the apps' servers started in-process, plain HTTP clients, and the
//! binaries as child processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use braid_testapps::body::{self, Body};
use braid_testapps::echo::{Echo, EchoConfig, EchoResponse};
use braid_testapps::faults::Faults;
use braid_testapps::grpc::server::GrpcEcho;
use braid_testapps::serve::{Handler, serve};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

pub fn config(name: &str, version: &str) -> EchoConfig {
    EchoConfig {
        name: name.into(),
        version: version.into(),
        pod: format!("{name}-{version}-pod"),
        faults: Faults::default(),
    }
}

/// A server on its own port; it stops (and drains) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(handler: Handler) -> Server {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

pub fn start_on(listener: TcpListener, handler: Handler) -> Server {
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, handler, stop.clone(), Duration::from_secs(5)));
    Server { addr, stop }
}

pub async fn start_echo(config: EchoConfig) -> Server {
    start(Echo::new(config).handler()).await
}

pub async fn start_grpc(config: EchoConfig) -> (Server, std::sync::Arc<GrpcEcho>) {
    let server = GrpcEcho::new(config);
    (start(server.handler()).await, server)
}

/// A listener that shares its port with others bound the same way: the kernel spreads new
/// connections over them, as a Service spreads them over pods.
pub fn shared_listener(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

pub fn http1() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

pub async fn get(
    client: &Client<HttpConnector, Body>,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Bytes) {
    request(client, "GET", url, headers, body::empty()).await
}

pub async fn request(
    client: &Client<HttpConnector, Body>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> (StatusCode, Bytes) {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client.request(builder.body(body).unwrap()).await.unwrap();
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

pub async fn echo(
    client: &Client<HttpConnector, Body>,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, EchoResponse) {
    let (status, bytes) = get(client, url, headers).await;
    let answer = serde_json::from_slice(&bytes)
        .unwrap_or_else(|err| panic!("not an echo answer ({err}): {}", String::from_utf8_lossy(&bytes)));
    (status, answer)
}

pub fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs.iter().map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap())).collect()
}

/// A port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn binary(name: &str) -> Command {
    let path = match name {
        "echo" => env!("CARGO_BIN_EXE_echo"),
        "grpc-echo" => env!("CARGO_BIN_EXE_grpc-echo"),
        "load" => env!("CARGO_BIN_EXE_load"),
        "tcp-echo" => env!("CARGO_BIN_EXE_tcp-echo"),
        other => panic!("no binary {other}"),
    };
    let mut command = Command::new(path);
    // The tests' environment must not configure the apps.
    for var in [
        "APP_NAME",
        "APP_VERSION",
        "POD_NAME",
        "FAIL_RATE",
        "FAIL_STATUS",
        "DELAY",
        "DELAY_RATE",
        "RUST_LOG",
        "ECHO_CALL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs a binary to its end (it must end within 30 s).
pub fn run(name: &str, args: &[&str]) -> Output {
    let child = binary(name).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_with_timeout(child, Duration::from_secs(30))
}

pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the process did not end within {timeout:?}: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits until `addr` answers `GET path` with 200.
pub async fn wait_ready(addr: SocketAddr, path: &str) {
    let client = http1();
    for _ in 0..300 {
        let request = Request::get(format!("http://{addr}{path}")).body(body::empty()).unwrap();
        if let Ok(response) = client.request(request).await
            && response.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}{path} did not become ready within 15 s");
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after 15 s");
}
