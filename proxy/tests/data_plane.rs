//! What real clients meet on the data plane, on loopback sockets: errors that are the client's
//! own (a malformed request body, an oversized or folded header), upstream HTTP/2 resets and the
//! proxy's own errors as gRPC clients see them, and the metrics of cancelled requests and of
//! connection teardowns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(5);

/// A proxy with one service `web` on a dedicated listener, its one backend `app` at `addr`.
fn web_service(addr: std::net::SocketAddr, endpoint: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: app, endpoints: [{{ address: \"{addr}\"{endpoint} }}] }}\n    routes:\n      - backends: [{{ name: app }}]\n"
    )
}

/// Writes `request` on a new connection to `addr` and reads until the peer closes (or 5 s).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before it read everything: a write error is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WITHIN, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_folded_header_line_is_refused_as_obs_fold() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&web_service(app.addr, "")).await;
    let answer = raw_exchange(
        proxy.service("web"),
        b"GET / HTTP/1.1\r\nHost: web\r\nx-long: first part\r\n  second part\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("obs-fold"), "the reason names line folding: {answer}");
    assert!(!answer.contains("invalid header name"), "{answer}");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn an_oversized_header_over_http2_gets_431_not_a_refused_stream() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&web_service(app.addr, "")).await;
    let io = TcpStream::connect(proxy.service("web")).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get("http://web/").header("x-huge", "a".repeat(100 * 1024)).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(WITHIN, response).await.expect("an answer in time");
    let status = response.map(|r| r.status()).map_err(|e| format!("{e:?} reason {:?}", e.reason()));
    assert_eq!(status, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    assert_eq!(app.hits(), 0);
    // The connection goes on.
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(Request::get("http://web/").body(()).unwrap(), true).unwrap();
    let response = tokio::time::timeout(WITHIN, response).await.expect("an answer in time").unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
