//! A service's `maxConnections` and `maxPendingRequests` on real loopback sockets: the
//! endpoint never sees more connections than allowed, requests beyond them wait their turn up to
//! the pending bound, and the rest are answered 503 `overloaded` at once and counted, without
//! being held against the endpoint. Opaque TCP is held to `maxConnections` too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server saw: connections accepted, open now, and the most open at once.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
}

/// An HTTP/1.1 keep-alive server that answers each request after `delay`, counting connections.
async fn slow_server(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most_open.fetch_max(open, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                counts.open.fetch_sub(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                    buffer.drain(..end + 4);
                    tokio::time::sleep(delay).await;
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn limited_service(addr: SocketAddr, pool: &str, protocol: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: {protocol}\n{pool}\
         \n    backends: [{{ name: web, endpoints: [{{ address: \"{addr}\" }}] }}]\n    routes: [{{ backends: [{{ name: web }}] }}]\n"
    )
}

#[tokio::test]
async fn requests_beyond_the_connections_wait_up_to_the_pending_bound_and_the_rest_are_refused() {
    let delay = Duration::from_millis(300);
    let (addr, seen) = slow_server(delay).await;
    let config = limited_service(addr, "    maxConnections: 1\n    maxPendingRequests: 1", "auto");
    let proxy = Proxy::start(&config).await;
    let url = format!("http://{}/", proxy.service("web"));

    // Four at once on four client connections: one takes the connection, one waits for it, two
    // are refused at once.
    let started = Instant::now();
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let (status, headers, body) = get(&url).await;
                (status, headers.get("braid-proxy-error").cloned(), body, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    let ok: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::OK).collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!((ok.len(), refused.len()), (2, 2), "{answers:?}");
    for (_, reason, body, took) in &refused {
        assert_eq!(reason.as_ref().unwrap(), "overloaded");
        assert!(body.contains("maxConnections") && body.contains("maxPendingRequests"), "{body}");
        assert!(*took < delay, "refused at once, not after waiting: {took:?}");
    }
    // The waiting one went second, on the same connection.
    let slowest = ok.iter().map(|a| a.3).max().unwrap();
    assert!(slowest >= delay * 2, "the waiting request took its turn: {slowest:?}");
    assert_eq!(seen.most_open.load(Ordering::SeqCst), 1, "never more than maxConnections");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "the waiter reused the connection");

    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "overloaded_total", &[("dst_service", "web")]), Some(2.0), "{metrics}");
    // Refusals are this proxy's own: the endpoint is not ejected, the next request goes through.
    let (status, _, _) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_pending_bound_requests_queue_and_all_get_through_on_the_allowed_connections() {
    let (addr, seen) = slow_server(Duration::from_millis(50)).await;
    let proxy = Proxy::start(&limited_service(addr, "    maxConnections: 2", "auto")).await;
    let url = format!("http://{}/", proxy.service("web"));
    let requests: Vec<_> = (0..10).map(|_| tokio::spawn(get_status(url.clone()))).collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(seen.most_open.load(Ordering::SeqCst), 2);
}

async fn get_status(url: String) -> StatusCode {
    let request = Request::get(url).body(full("")).unwrap();
    send(&http1_client(), request).await.0
}

#[tokio::test]
async fn opaque_connections_are_held_to_max_connections() {
    let server = echo_server(b"").await;
    let proxy = Proxy::start(&limited_service(server, "    maxConnections: 1", "opaque")).await;
    let listener = proxy.service("web");
    let mut first = TcpStream::connect(listener).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut got = [0u8; 3];
    first.read_exact(&mut got).await.unwrap();
    // The second is closed without reaching the server.
    let mut second = TcpStream::connect(listener).await.unwrap();
    let _ = second.write_all(b"two").await;
    let mut buffer = [0u8; 3];
    let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buffer)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "the second connection was served: {read:?}");
    // Once the first closes, a new one is let through.
    drop(first);
    eventually("a connection once the first closed", || async {
        let Ok(mut third) = TcpStream::connect(listener).await else { return false };
        let _ = third.write_all(b"thr").await;
        let mut buffer = [0u8; 3];
        matches!(tokio::time::timeout(Duration::from_secs(1), third.read_exact(&mut buffer)).await, Ok(Ok(_)))
    })
    .await;
}

#[tokio::test]
async fn pending_requests_without_max_connections_are_refused_with_the_field() {
    let (addr, _) = slow_server(Duration::ZERO).await;
    let proxy = Proxy::start(&limited_service(addr, "    maxConnections: 1", "auto")).await;
    std::fs::write(&proxy.config_path, limited_service(addr, "    maxPendingRequests: 3", "auto")).unwrap();
    eventually("the file without maxConnections to be refused", || async {
        let (_, config) = proxy.admin("/config").await;
        config.contains("maxPendingRequests: requests wait for a connection only under maxConnections")
    })
    .await;
}
