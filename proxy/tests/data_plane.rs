//! What real clients meet on the data plane, on loopback sockets: errors that are the client's
//! own (a malformed request body, an oversized or folded header), upstream HTTP/2 resets and the
//! proxy's own errors as gRPC clients see them, and the metrics of cancelled requests and of
//! connection teardowns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A proxy in front of the app at `app` (its inbound side), as a meshed pod's.
fn app_side(app: std::net::SocketAddr) -> String {
    format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0, target: \"{app}\" }}\n"
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

/// A client's chunked request bodies that break the framing: a size that is not hex, a bare LF
/// after the size, chunk data not followed by CRLF.
const BAD_CHUNKED: [&str; 3] = ["zz\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n"];

fn chunked_post(host: &str, body: &str) -> Vec<u8> {
    format!("POST /body HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

#[tokio::test]
async fn a_clients_malformed_chunked_body_is_its_own_400_and_no_failure_of_the_endpoint() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&web_service(app.addr, "")).await;
    // Six in a row: more than the five consecutive failures that eject an endpoint.
    for body in BAD_CHUNKED.iter().chain(&BAD_CHUNKED) {
        let answer = raw_exchange(proxy.service("web"), &chunked_post("web", body)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
        assert!(answer.contains("braid-proxy-error: request-body"), "{body:?}: {answer}");
    }
    let answer = raw_exchange(
        proxy.service("web"),
        &chunked_post("web\r\nConnection: close", "5\r\nhello\r\n0\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app got 5 bytes"), "{answer}");
    let metrics = proxy.metrics().await;
    let client_errors =
        [("direction", "outbound"), ("status_code", "400"), ("classification", "client_error")];
    assert_eq!(metric(&metrics, "response_total", &client_errors), Some(6.0), "{metrics}");
    let failures = [("direction", "outbound"), ("classification", "failure")];
    assert_eq!(metric(&metrics, "response_total", &failures), None, "{metrics}");
    let backend = [("dst_service", "web"), ("backend", "app")];
    assert_eq!(metric(&metrics, "outbound_backend_failures_total", &backend), Some(0.0), "{metrics}");
    assert_eq!(metric(&metrics, "outbound_backend_requests_total", &backend), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_clients_malformed_chunked_body_on_the_inbound_side_is_a_400_and_no_failure() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&app_side(app.addr)).await;
    for body in BAD_CHUNKED.iter().chain(&BAD_CHUNKED) {
        let answer = raw_exchange(proxy.inbound(), &chunked_post("app", body)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
    }
    let answer =
        raw_exchange(proxy.inbound(), &chunked_post("app\r\nConnection: close", "5\r\nhello\r\n0\r\n\r\n"))
            .await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app got 5 bytes"), "{answer}");
    let metrics = proxy.metrics().await;
    let client_errors =
        [("direction", "inbound"), ("status_code", "400"), ("classification", "client_error")];
    assert_eq!(metric(&metrics, "response_total", &client_errors), Some(6.0), "{metrics}");
    let failures = [("direction", "inbound"), ("classification", "failure")];
    assert_eq!(metric(&metrics, "response_total", &failures), None, "{metrics}");
}

/// Between two proxies the body crosses HTTP/2: A's body task resets the stream to B when the
/// client's body breaks, and that reset must not read as B's failure.
#[tokio::test]
async fn a_clients_malformed_chunked_body_sent_across_two_proxies_is_a_400_and_no_failure() {
    let app = Upstream::start("app").await;
    let b = Proxy::start(&app_side(app.addr)).await;
    let a = Proxy::start(&web_service(b.inbound(), ", meshed: true")).await;
    // A good request first, so that the bad ones go on an open HTTP/2 connection to B.
    let (status, _, body) = send(
        &http1_client(),
        Request::post(format!("http://{}/body", a.service("web"))).body(full("hello")).unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app got 5 bytes"));
    for body in BAD_CHUNKED.iter().chain(&BAD_CHUNKED) {
        // The head and the first bytes go first, so the request is under way upstream.
        let mut stream = TcpStream::connect(a.service("web")).await.unwrap();
        stream.write_all(&chunked_post("web", "3\r\nabc\r\n")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WITHIN, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
    }
    let (status, _, body) = send(
        &http1_client(),
        Request::post(format!("http://{}/body", a.service("web"))).body(full("hello")).unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app got 5 bytes"));
    let a_metrics = a.metrics().await;
    let client_errors =
        [("direction", "outbound"), ("status_code", "400"), ("classification", "client_error")];
    assert_eq!(metric(&a_metrics, "response_total", &client_errors), Some(6.0), "{a_metrics}");
    let backend = [("dst_service", "web"), ("backend", "app")];
    assert_eq!(metric(&a_metrics, "outbound_backend_failures_total", &backend), Some(0.0), "{a_metrics}");
    let b_metrics = b.metrics().await;
    let failures = [("direction", "inbound"), ("classification", "failure")];
    assert_eq!(metric(&b_metrics, "response_total", &failures), None, "{b_metrics}");
}

/// An HTTP/2 origin (the h2 crate's server) that resets each stream before any response
/// header: `/cancel` with CANCEL (as a gRPC server whose deadline passed), `/refused` with
/// REFUSED_STREAM; `/midway` answers, sends a few bytes, then resets with INTERNAL_ERROR;
/// `/pkg.Svc/Fails` answers 200 with grpc-status 14 in its trailers; anything else gets 200.
async fn resetting_origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    match request.uri().path() {
                        "/cancel" => respond.send_reset(h2::Reason::CANCEL),
                        "/refused" => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        "/midway" => {
                            let Ok(mut stream) = respond.send_response(http::Response::new(()), false) else {
                                return;
                            };
                            let _ = stream.send_data(bytes::Bytes::from_static(b"part"), false);
                            // Later, while the connection is driven: the head and bytes go first.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                            });
                        }
                        "/pkg.Svc/Fails" => {
                            let Ok(mut stream) = respond.send_response(http::Response::new(()), false) else {
                                return;
                            };
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
                            let _ = stream.send_trailers(trailers);
                        }
                        _ => {
                            let _ = respond.send_response(http::Response::new(()), true);
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends `request` on a new HTTP/2 connection to `addr`: the response head, or the error.
async fn h2_request(
    addr: std::net::SocketAddr,
    request: Request<()>,
) -> Result<http::Response<h2::RecvStream>, h2::Error> {
    let io = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::time::timeout(WITHIN, response).await.expect("an answer in time")
}

#[tokio::test]
async fn an_upstream_reset_before_headers_reaches_an_http2_client_as_the_same_reset() {
    let origin = resetting_origin().await;
    // One proxy in front of the origin, and two (A to B over HTTP/2, B to the origin).
    let alone = Proxy::start(&web_service(origin, ", http2: true")).await;
    let b = Proxy::start(&app_side(origin)).await;
    let a = Proxy::start(&web_service(b.inbound(), ", meshed: true")).await;
    for (proxy, what) in [(&alone, "one proxy"), (&a, "A then B")] {
        let ok = h2_request(proxy.service("web"), Request::get("http://web/").body(()).unwrap()).await;
        assert_eq!(ok.map(|r| r.status()).ok(), Some(StatusCode::OK), "{what}");
        for (path, reason) in [("/cancel", h2::Reason::CANCEL), ("/refused", h2::Reason::REFUSED_STREAM)] {
            let request = Request::post(format!("http://web{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let error = match h2_request(proxy.service("web"), request).await {
                Ok(response) => {
                    panic!("{what} {path}: answered {:?} {:?}", response.status(), response.headers())
                }
                Err(error) => error,
            };
            assert!(error.is_reset() && error.is_remote(), "{what} {path}: {error:?}");
            assert_eq!(error.reason(), Some(reason), "{what} {path}");
        }
    }
    // A reset after the response began reaches the client's body with the same reason.
    for (proxy, what) in [(&alone, "one proxy"), (&a, "A then B")] {
        let response = h2_request(proxy.service("web"), Request::get("http://web/midway").body(()).unwrap())
            .await
            .expect("the response head");
        let mut body = response.into_body();
        let first = tokio::time::timeout(WITHIN, body.data()).await.unwrap();
        assert_eq!(first.map(Result::unwrap).as_deref(), Some(&b"part"[..]), "{what}");
        let error = tokio::time::timeout(WITHIN, body.data()).await.unwrap().expect("an error").unwrap_err();
        assert_eq!(error.reason(), Some(h2::Reason::INTERNAL_ERROR), "{what}: {error:?}");
    }
    // Counted as the upstream's failures, not as cancellations by the client.
    for (proxy, direction) in [(&alone, "outbound"), (&a, "outbound"), (&b, "inbound")] {
        let metrics = proxy.metrics().await;
        let cancelled = [("direction", direction), ("classification", "cancelled")];
        assert_eq!(metric(&metrics, "response_total", &cancelled), None, "{metrics}");
        let failed = [("direction", direction), ("status_code", "502"), ("classification", "failure")];
        assert_eq!(metric(&metrics, "response_total", &failed), Some(2.0), "{metrics}");
    }
    // An HTTP/1.1 client cannot take a reset: it gets a 502 that says why.
    let (status, headers, body) = get(&format!("http://{}/cancel", alone.service("web"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["braid-proxy-error"], "upstream-reset");
    assert!(body.contains("CANCEL"), "{body}");
}

/// A gRPC call the proxy itself cannot complete: HTTP 200, `application/grpc` and a
/// grpc-status in the headers alone (trailers-only), with the reason in grpc-message.
async fn grpc_error(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let request = Request::post(format!("http://web{path}"))
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let response = h2_request(addr, request).await.expect("a response, not a reset");
    assert_eq!(response.status(), StatusCode::OK, "{path}: {:?}", response.headers());
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/grpc", "{path}");
    assert!(response.body().is_end_stream(), "{path}: trailers-only, no body");
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (text("grpc-status"), text("grpc-message"), text("braid-proxy-error"))
}

#[tokio::test]
async fn grpc_clients_get_the_proxys_own_errors_as_grpc_statuses() {
    let slow = Upstream::start("slow").await;
    *slow.delay.lock().unwrap() = Duration::from_secs(3);
    let (_refusing, gone) = refusing_addr();
    let proxy = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: gone, endpoints: [{{ address: \"{gone}\" }}] }}\n      - {{ name: slow, endpoints: [{{ address: \"{}\" }}] }}\n    routes:\n      - {{ matches: [{{ path: {{ prefix: /gone }} }}], backends: [{{ name: gone }}] }}\n      - {{ matches: [{{ path: {{ prefix: /slow }} }}], backends: [{{ name: slow }}], timeout: 200ms }}\n",
        slow.addr
    ))
    .await;
    let web = proxy.service("web");
    let (status, message, reason) = grpc_error(web, "/gone/Call").await;
    assert_eq!((status.as_str(), reason.as_str()), ("14", "connect-failure"), "UNAVAILABLE: {message}");
    assert!(
        message.contains(&format!("could not connect to {gone}")) && !message.contains('\n'),
        "{message}"
    );
    let (status, message, reason) = grpc_error(web, "/slow/Call").await;
    assert_eq!((status.as_str(), reason.as_str()), ("4", "timeout"), "DEADLINE_EXCEEDED: {message}");
    let (status, _, reason) = grpc_error(web, "/pkg.Other/Call").await;
    assert_eq!((status.as_str(), reason.as_str()), ("12", "no-route"), "UNIMPLEMENTED");
    let request = Request::post("http://web/pkg.Other/Call")
        .header("content-type", "application/grpc")
        .header("x-huge", "a".repeat(20 * 1024))
        .body(())
        .unwrap();
    let response = h2_request(web, request).await.expect("a response");
    assert_eq!(response.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED: {:?}", response.headers());
    // Not gRPC: the HTTP status, as before.
    let response = h2_request(web, Request::get("http://web/gone").body(()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The failures count as failures, under the HTTP status the answer had before it was
    // written for gRPC; none as cancelled.
    let metrics = proxy.metrics().await;
    let failures =
        |status| [("direction", "outbound"), ("status_code", status), ("classification", "failure")];
    assert_eq!(metric(&metrics, "response_total", &failures("503")), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "response_total", &failures("504")), Some(1.0), "{metrics}");
    let cancelled = [("direction", "outbound"), ("classification", "cancelled")];
    assert_eq!(metric(&metrics, "response_total", &cancelled), None, "{metrics}");
}

#[tokio::test]
async fn a_grpc_call_the_inbound_policy_denies_gets_permission_denied() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound:\n  listen: 127.0.0.1:0\n  target: \"{}\"\n  policy: {{ mtls: PERMISSIVE, rules: [{{ to: [{{ paths: [\"/allowed\"] }}] }}] }}\n",
        app.addr
    ))
    .await;
    let (status, message, reason) = grpc_error(proxy.inbound(), "/pkg.Svc/Call").await;
    assert_eq!((status.as_str(), reason.as_str()), ("7", "forbidden"), "PERMISSION_DENIED: {message}");
    // Through a client's proxy: B's gRPC answer reaches the client as B wrote it.
    let a = Proxy::start(&web_service(proxy.inbound(), ", meshed: true")).await;
    let (status, through_a, reason) = grpc_error(a.service("web"), "/pkg.Svc/Call").await;
    assert_eq!((status.as_str(), reason.as_str()), ("7", "forbidden"));
    assert_eq!(through_a, message);
    assert!(message.contains("no rule of the policy allows"), "{message}");
    assert_eq!(app.hits(), 0);
}

/// An app (HTTP/1.1 and HTTP/2) that answers `/download` with 10 MiB in 64 KiB chunks, made as
/// they are read, and anything else with `ok`.
async fn download_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_http(listener, |request: Request<hyper::body::Incoming>| async move {
        if request.uri().path() != "/download" {
            return Ok(http::Response::new(full("ok")));
        }
        const CHUNK: usize = 64 << 10;
        let chunks =
            futures_util::stream::iter((0..160).map(|_| {
                Ok::<_, hyper::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; CHUNK])))
            }));
        Ok(http::Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(chunks))))
    });
    addr
}

/// Two proxies, A (the client's, service `web`) to B (the app's, plaintext between them).
async fn a_and_b(app: std::net::SocketAddr) -> (Proxy, Proxy) {
    let b = Proxy::start(&format!("limits: {{ idleTimeout: 300ms }}\n{}", app_side(app))).await;
    let a = Proxy::start(&web_service(b.inbound(), ", meshed: true")).await;
    (a, b)
}

#[tokio::test]
async fn responses_the_client_gives_up_midway_count_as_cancelled_on_both_proxies() {
    let app = download_app().await;
    let (a, b) = a_and_b(app).await;
    let (status, _, body) = get(&format!("http://{}/", a.service("web"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    // Three HTTP/1.1 and three HTTP/2 clients read part of a download, then go away.
    for client in
        [http1_client(), http1_client(), http1_client(), http2_client(), http2_client(), http2_client()]
    {
        let request = Request::get(format!("http://{}/download", a.service("web"))).body(full("")).unwrap();
        let response = tokio::time::timeout(WITHIN, client.request(request)).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut read = 0;
        while read < 64 << 10 {
            let frame =
                tokio::time::timeout(WITHIN, http_body_util::BodyExt::frame(&mut body)).await.unwrap();
            read += frame.unwrap().unwrap().data_ref().map_or(0, |data| data.len());
        }
        drop(body);
        drop(client);
    }
    let cancelled =
        |direction| [("direction", direction), ("status_code", "200"), ("classification", "cancelled")];
    let success =
        |direction| [("direction", direction), ("status_code", "200"), ("classification", "success")];
    eventually("A counts six cancelled responses", || async {
        metric(&a.metrics().await, "response_total", &cancelled("outbound")) == Some(6.0)
    })
    .await;
    eventually("B counts six cancelled responses", || async {
        metric(&b.metrics().await, "response_total", &cancelled("inbound")) == Some(6.0)
    })
    .await;
    let (a_metrics, b_metrics) = (a.metrics().await, b.metrics().await);
    assert_eq!(metric(&a_metrics, "response_total", &success("outbound")), Some(1.0), "{a_metrics}");
    assert_eq!(metric(&b_metrics, "response_total", &success("inbound")), Some(1.0), "{b_metrics}");
}

/// An HTTP/2 origin that answers each request with 200, then ends its connection with GOAWAY
/// ENHANCE_YOUR_CALM (as a server does that finds its client abusive).
async fn goaway_origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                if let Some(Ok((_, mut respond))) = connection.accept().await {
                    let _ = respond.send_response(http::Response::new(()), true);
                    // The answer goes out first, while the connection is driven.
                    let _ = tokio::time::timeout(Duration::from_millis(100), connection.accept()).await;
                    connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                }
                while connection.accept().await.is_some() {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_connection_teardowns_are_counted_by_direction_peer_and_reason() {
    let app = download_app().await;
    let (a, b) = a_and_b(app).await;
    let teardowns = |text: &str, direction, peer, reason| {
        metric(
            text,
            "http_connection_teardowns_total",
            &[("direction", direction), ("peer", peer), ("reason", reason)],
        )
    };
    // A client's HTTP/2 connection to A, closed by the client after one request.
    let ok = h2_request(a.service("web"), Request::get("http://web/").body(()).unwrap()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    drop(ok);
    eventually("A counts the client's connection closed", || async {
        teardowns(&a.metrics().await, "outbound", "client", "closed") == Some(1.0)
    })
    .await;
    // A client's HTTP/2 connection to B left idle past B's idleTimeout (300 ms): B sends GOAWAY.
    let io = TcpStream::connect(b.inbound()).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(Request::get("http://app/").body(()).unwrap(), true).unwrap();
    assert_eq!(tokio::time::timeout(WITHIN, response).await.unwrap().unwrap().status(), StatusCode::OK);
    let ended = tokio::time::timeout(WITHIN, connection).await.expect("B closes the idle connection");
    assert!(ended.unwrap().is_ok(), "a graceful GOAWAY");
    // B also closed A's connection, idle since the first request: A counts that as closed, as
    // h2 does not tell a GOAWAY without error from a plain close.
    eventually("B counts the GOAWAYs it sent", || async {
        teardowns(&b.metrics().await, "inbound", "client", "goaway_sent") == Some(2.0)
    })
    .await;
    eventually("A counts its upstream connection closed", || async {
        teardowns(&a.metrics().await, "outbound", "upstream", "closed") == Some(1.0)
    })
    .await;
    // A's connection to an upstream that ends it with GOAWAY ENHANCE_YOUR_CALM.
    let origin = goaway_origin().await;
    let c = Proxy::start(&web_service(origin, ", http2: true")).await;
    let (status, _, _) = get(&format!("http://{}/", c.service("web"))).await;
    assert_eq!(status, StatusCode::OK);
    eventually("C counts the GOAWAY its upstream sent", || async {
        teardowns(&c.metrics().await, "outbound", "upstream", "goaway_received") == Some(1.0)
    })
    .await;
    let a_metrics = a.metrics().await;
    assert_eq!(teardowns(&a_metrics, "outbound", "upstream", "error"), None, "{a_metrics}");
}

#[tokio::test]
async fn an_answer_to_head_is_counted_as_sent_not_as_cancelled() {
    let (_refusing, gone) = refusing_addr();
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  - name: web\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: gone, endpoints: [{{ address: \"{gone}\" }}] }}\n      - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}\n    routes:\n      - {{ matches: [{{ path: {{ prefix: /gone }} }}], backends: [{{ name: gone }}] }}\n      - {{ backends: [{{ name: app }}] }}\n",
        app.addr
    ))
    .await;
    // The lean server answers HEAD; after a request with a body, hyper's server does.
    let answer = raw_exchange(
        proxy.service("web"),
        b"HEAD /gone HTTP/1.1\r\nHost: web\r\n\r\nHEAD / HTTP/1.1\r\nHost: web\r\n\r\n\
          POST /body HTTP/1.1\r\nHost: web\r\ncontent-length: 2\r\n\r\nhi\
          HEAD /gone HTTP/1.1\r\nHost: web\r\n\r\nHEAD / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 503").count(), 2, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let metrics = proxy.metrics().await;
    let counted = |status, classification| {
        metric(&metrics, "response_total", &[("status_code", status), ("classification", classification)])
    };
    assert_eq!(counted("503", "failure"), Some(2.0), "{metrics}");
    assert_eq!(counted("200", "success"), Some(3.0), "{metrics}");
    assert_eq!(metric(&metrics, "response_total", &[("classification", "cancelled")]), None, "{metrics}");
}

#[tokio::test]
async fn a_grpc_status_other_than_ok_in_the_trailers_counts_as_a_failure() {
    let origin = resetting_origin().await;
    let proxy = Proxy::start(&web_service(origin, ", http2: true")).await;
    let request = Request::post("http://web/pkg.Svc/Fails")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut body = h2_request(proxy.service("web"), request).await.expect("a response").into_body();
    let trailers = tokio::time::timeout(WITHIN, body.trailers()).await.unwrap().unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "14");
    let ok = h2_request(proxy.service("web"), Request::get("http://web/").body(()).unwrap()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    drop(ok);
    eventually("the call counts as a failure", || async {
        let metrics = proxy.metrics().await;
        // The trailer's status is a label, as Linkerd writes it; empty (no label) for plain HTTP.
        let failed = [("status_code", "200"), ("classification", "failure"), ("grpc_status_code", "14")];
        let succeeded = [("status_code", "200"), ("classification", "success"), ("grpc_status_code", "")];
        metric(&metrics, "response_total", &failed) == Some(1.0)
            && metric(&metrics, "response_total", &succeeded) == Some(1.0)
    })
    .await;
}

/// An HTTP/1.1 app that answers `ok` and counts the connections it accepted.
async fn counting_app() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn max_requests_per_connection_moves_requests_to_new_connections() {
    const REQUESTS: usize = 6;
    let per_connection = "    listen: 127.0.0.1:0\n    maxRequestsPerConnection: 2\n";
    // Straight to an HTTP/1.1 app: 6 requests, 2 on each connection.
    let (app, accepted) = counting_app().await;
    let proxy =
        Proxy::start(&web_service(app, "").replacen("    listen: 127.0.0.1:0\n", per_connection, 1)).await;
    let client = http1_client();
    for _ in 0..REQUESTS {
        let (status, _, body) =
            send(&client, Request::get(format!("http://{}/", proxy.service("web"))).body(full("")).unwrap())
                .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), REQUESTS / 2, "HTTP/1.1: two requests per connection");

    // Across two proxies: 6 streams, 2 on each HTTP/2 connection from A to B.
    let (app, _) = counting_app().await;
    let b = Proxy::start(&app_side(app)).await;
    let a = Proxy::start(&web_service(b.inbound(), ", meshed: true").replacen(
        "    listen: 127.0.0.1:0\n",
        per_connection,
        1,
    ))
    .await;
    for _ in 0..REQUESTS {
        let (status, _, body) =
            send(&client, Request::get(format!("http://{}/", a.service("web"))).body(full("")).unwrap())
                .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    let opened = metric(&b.metrics().await, "tcp_open_total", &[("direction", "inbound")]);
    assert_eq!(opened, Some((REQUESTS / 2) as f64), "HTTP/2 between the proxies: two streams per connection");
    // Each connection, the last one too, is closed once it carried its two streams.
    eventually("A closed every connection that carried its share", || async {
        let a_metrics = a.metrics().await;
        let closed = [("peer", "upstream"), ("reason", "goaway_sent")];
        metric(&a_metrics, "http_connection_teardowns_total", &closed) == Some((REQUESTS / 2) as f64)
    })
    .await;
}
