//! The proxy on real loopback sockets: routing, weights, retries, timeouts, budgets, HTTP/2 and
//! gRPC streaming, opaque TCP, errors a client can cause, reloads and drain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy with one service `web` on a dedicated listener; `body` is the service's
/// backends and routes, indented under it.
fn one_service(body: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  - name: web.shop.svc.cluster.local\n    hosts: [web]\n    listen: 127.0.0.1:0\n{body}"
    )
}

fn backends(list: &[(&str, std::net::SocketAddr)]) -> String {
    let mut text = String::from("    backends:\n");
    for (name, addr) in list {
        text.push_str(&format!("      - {{ name: {name}, endpoints: [{{ address: \"{addr}\" }}] }}\n"));
    }
    text
}

/// The test service with one backend, `name` at `addr`, that every request goes to.
fn one_backend_service(name: &str, addr: std::net::SocketAddr) -> String {
    one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: {name} }}]\n",
        backends(&[(name, addr)])
    ))
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{path}", proxy.service("web.shop.svc.cluster.local"))
}

#[tokio::test]
async fn routes_by_path_method_and_header() {
    let (a, b, c, d, e) = tokio::join!(
        Upstream::start("exact"),
        Upstream::start("prefix"),
        Upstream::start("regex"),
        Upstream::start("method-or-header"),
        Upstream::start("default")
    );
    let config = one_service(&format!(
        "{}    routes:
      - {{ name: exact, matches: [{{ path: {{ exact: /login }} }}], backends: [{{ name: a }}] }}
      - {{ name: prefix, matches: [{{ path: {{ prefix: /api }} }}], backends: [{{ name: b }}] }}
      - {{ name: regex, matches: [{{ path: {{ regex: \"/items/[0-9]+\" }} }}], backends: [{{ name: c }}] }}
      - {{ name: special, matches: [{{ method: DELETE }}, {{ headers: [{{ name: x-canary, exact: \"on\" }}] }}], backends: [{{ name: d }}] }}
      - {{ name: default, backends: [{{ name: e }}] }}
",
        backends(&[("a", a.addr), ("b", b.addr), ("c", c.addr), ("d", d.addr), ("e", e.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let client = http1_client();
    let cases = [
        ("GET", "/login", None, "exact"),
        ("GET", "/login/again", None, "default"),
        ("GET", "/api/v1/users", None, "prefix"),
        ("GET", "/apiv2", None, "default"),
        ("GET", "/items/17", None, "regex"),
        ("GET", "/items/x", None, "default"),
        ("DELETE", "/anything", None, "method-or-header"),
        ("GET", "/anything", Some("on"), "method-or-header"),
        ("GET", "/anything", Some("off"), "default"),
    ];
    for (method, path, canary, expected) in cases {
        let mut request = Request::builder().method(method).uri(url(&proxy, path));
        if let Some(value) = canary {
            request = request.header("x-canary", value);
        }
        let (status, _, body) = send(&client, request.body(full("")).unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, expected), "{method} {path} canary={canary:?}");
    }
    // Route labels reach the metrics, with Linkerd's names.
    let metrics = proxy.metrics().await;
    let labels =
        [("direction", "outbound"), ("dst_service", "web.shop.svc.cluster.local"), ("route", "regex")];
    assert_eq!(metric(&metrics, "request_total", &labels), Some(1.0), "{metrics}");
    let success = [("route", "exact"), ("status_code", "200"), ("classification", "success")];
    assert_eq!(metric(&metrics, "response_total", &success), Some(1.0));
    assert!(
        metric(&metrics, "response_latency_ms_bucket", &[("route", "default"), ("le", "+Inf")]).is_some()
    );
}

/// Linkerd's response_latency_ms: time to the first byte of the body, not to the headers, and
/// split by status code. The app sends its headers at once and its body 300 ms later (a 200), or
/// a 503 at once.
#[tokio::test]
async fn response_latency_is_time_to_first_body_byte_by_status_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_http(listener, |request: Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/fail" {
            let mut response = http::Response::new(full("down"));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(response);
        }
        let late = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"late")))
        });
        Ok(http::Response::new(BodyExt::boxed(StreamBody::new(late))))
    });
    let proxy = Proxy::start(&one_backend_service("slow", addr)).await;
    let client = http1_client();
    let started = Instant::now();
    let response = client.request(Request::get(url(&proxy, "/slow")).body(full("")).unwrap()).await.unwrap();
    let headers_after = started.elapsed();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"late");
    assert!(headers_after < Duration::from_millis(250), "the headers came at once ({headers_after:?})");
    let (status, _, _) = get(&url(&proxy, "/fail")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let metrics = proxy.metrics().await;
    let ok = |le: &str| {
        metric(
            &metrics,
            "response_latency_ms_bucket",
            &[("direction", "outbound"), ("status_code", "200"), ("le", le)],
        )
    };
    assert_eq!(ok("200.0"), Some(0.0), "timed to the body's first byte, 300 ms in:\n{metrics}");
    assert_eq!(ok("+Inf"), Some(1.0), "{metrics}");
    let ok_sum =
        metric(&metrics, "response_latency_ms_sum", &[("direction", "outbound"), ("status_code", "200")]);
    assert!(ok_sum.is_some_and(|ms| ms >= 300.0), "{ok_sum:?}\n{metrics}");
    let failed = [("direction", "outbound"), ("status_code", "503"), ("le", "200.0")];
    assert_eq!(metric(&metrics, "response_latency_ms_bucket", &failed), Some(1.0), "{metrics}");
    // Outbound to a plaintext endpoint: Linkerd's `no_identity`.
    let plain = [
        ("direction", "outbound"),
        ("status_code", "200"),
        ("tls", "no_identity"),
        ("no_tls_reason", "not_provided_by_service_discovery"),
    ];
    assert_eq!(metric(&metrics, "response_total", &plain), Some(1.0), "{metrics}");
}

/// Linkerd's endpoint labels: each answer names the pod behind the endpoint that gave it, as
/// the configuration (or discovery) says who it is.
#[tokio::test]
async fn answers_are_labelled_with_the_pod_behind_the_endpoint() {
    let (a, b) = tokio::join!(Upstream::start("a"), Upstream::start("b"));
    let pod = |name: &str| {
        format!(
            "{{ namespace: shop, name: {name}, serviceAccount: web, \
             workload: {{ kind: deployment, name: web }}, podTemplateHash: 5d8f }}"
        )
    };
    let config = one_service(&format!(
        "    backends:\n      - name: web\n        endpoints:\n\
         \x20         - {{ address: \"{}\", pod: {} }}\n\
         \x20         - {{ address: \"{}\", pod: {} }}\n\
         \x20   routes:\n      - backends: [{{ name: web }}]\n",
        a.addr,
        pod("web-5d8f-a"),
        b.addr,
        pod("web-5d8f-b")
    ));
    let proxy = Proxy::start(&config).await;
    for _ in 0..20 {
        assert_eq!(get(&url(&proxy, "/")).await.0, StatusCode::OK);
    }
    let metrics = proxy.metrics().await;
    let answered_by = |pod: &str, hits: usize| {
        let labels = [
            ("direction", "outbound"),
            ("dst_namespace", "shop"),
            ("dst_pod", pod),
            ("dst_serviceaccount", "web"),
            ("dst_deployment", "web"),
            ("dst_pod_template_hash", "5d8f"),
        ];
        let counted = metric(&metrics, "response_total", &labels).unwrap_or(0.0);
        assert_eq!(counted, hits as f64, "{pod} answered {hits}:\n{metrics}");
    };
    answered_by("web-5d8f-a", a.hits());
    answered_by("web-5d8f-b", b.hits());
    assert_eq!(a.hits() + b.hits(), 20);
}

#[tokio::test]
async fn a_request_no_route_matches_gets_404_with_the_reason() {
    let a = Upstream::start("a").await;
    let config = one_service(&format!(
        "{}    routes:\n      - {{ matches: [{{ path: {{ exact: /only }} }}], backends: [{{ name: a }}] }}\n",
        backends(&[("a", a.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let (status, headers, body) = get(&url(&proxy, "/other")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["braid-proxy-error"], "no-route");
    assert!(body.contains("no route of service web.shop.svc.cluster.local matches GET /other"), "{body}");
    assert_eq!(a.hits(), 0);
}

/// Upstreams v1 and v2 behind the proxy's one service, split by the weights given.
async fn split(v1_weight: u32, v2_weight: u32) -> (Arc<Upstream>, Arc<Upstream>, Proxy) {
    let (v1, v2) = tokio::join!(Upstream::start("v1"), Upstream::start("v2"));
    let config = one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: v1, weight: {v1_weight} }}, {{ name: v2, weight: {v2_weight} }}]\n",
        backends(&[("v1", v1.addr), ("v2", v2.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    (v1, v2, proxy)
}

#[tokio::test]
async fn weighted_split_honours_the_weights() {
    let (v1, v2, proxy) = split(80, 20).await;
    let client = http1_client();
    let total = 2000;
    for _ in 0..total {
        let (status, _, _) = send(&client, Request::get(url(&proxy, "/")).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Binomial(2000, 0.2): standard deviation 17.9; five of them either side cannot fail by chance.
    let share = v2.hits() as f64;
    assert!((400.0 - 90.0..=400.0 + 90.0).contains(&share), "v2 got {share} of {total}, expected ~400");
    assert_eq!(v1.hits() + v2.hits(), total);
}

/// HTTP client pools open connections ahead of need and use them seconds later. Such a
/// connection, silent past the detection timeout, must still carry HTTP that is routed request by
/// request, not become an opaque tunnel to whichever backend was picked when it opened.
#[tokio::test]
async fn a_connection_silent_past_detection_still_routes_each_request() {
    let (v1, v2, proxy) = split(50, 50).await;
    let stream = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    // Longer than the default detection timeout (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    for _ in 0..40 {
        let response = sender.send_request(Request::get("/").body(full("")).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = response.into_body().collect().await;
    }
    // One backend for all 40 would mean a tunnel (probability 2^-39 by chance).
    assert!(v1.hits() > 0 && v2.hits() > 0, "v1 {} / v2 {} of 40 on one connection", v1.hits(), v2.hits());
}

#[tokio::test]
async fn retries_hide_an_upstream_that_fails_its_first_requests() {
    let flaky = Upstream::start("flaky").await;
    flaky.fail_first.store(2, std::sync::atomic::Ordering::SeqCst);
    let config = one_service(&format!(
        "{}    routes:\n      - name: retried\n        backends: [{{ name: flaky }}]\n        retries: {{ attempts: 3, retryOn: [5xx] }}\n",
        backends(&[("flaky", flaky.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    // A body small enough to replay goes out again on every try.
    let request = Request::post(url(&proxy, "/body")).body(full("x".repeat(1000))).unwrap();
    let (status, _, body) = send(&http1_client(), request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "flaky got 1000 bytes"));
    assert_eq!(flaky.hits(), 3);
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "retry_total", &[("route", "retried")]), Some(2.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "response_total", &[("route", "retried"), ("status_code", "200")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn retries_are_off_unless_the_route_asks_and_large_bodies_are_not_replayed() {
    let flaky = Upstream::start("flaky").await;
    flaky.fail_first.store(1, std::sync::atomic::Ordering::SeqCst);
    let config = one_service(&format!(
        "{}    routes:
      - {{ name: retried, matches: [{{ path: {{ prefix: /body }} }}], backends: [{{ name: flaky }}], retries: {{ attempts: 3, retryOn: [5xx] }} }}
      - {{ name: plain, backends: [{{ name: flaky }}] }}
",
        backends(&[("flaky", flaky.addr)])
    ))
    .replacen("admin:", "limits: { maxRetryBodyBytes: 1024 }\nadmin:", 1);
    let proxy = Proxy::start(&config).await;
    let (status, _, _) = get(&url(&proxy, "/plain")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no retries configured: the failure reaches the client"
    );
    flaky.fail_first.store(2, std::sync::atomic::Ordering::SeqCst);
    let request = Request::post(url(&proxy, "/body")).body(full("x".repeat(4096))).unwrap();
    let (status, _, _) = send(&http1_client(), request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a 4 KiB body over the 1 KiB bound is sent once");
    assert_eq!(flaky.hits(), 2);
}

/// A request body of unknown length (chunked, or an HTTP/2 stream without content-length):
/// `count` chunks of `size` bytes, each sent 2 ms after the one before, while the proxy is
/// already sending the request on.
fn streamed_body(count: usize, size: usize) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    tokio::spawn(async move {
        for _ in 0..count {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; size])))).await.is_err() {
                return;
            }
        }
    });
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
}

#[tokio::test]
async fn a_streamed_body_is_replayed_on_retries_up_to_the_bound_and_sent_once_past_it() {
    let flaky = Upstream::start("flaky").await;
    let config = one_service(&format!(
        "{}    routes:\n      - name: retried\n        backends: [{{ name: flaky }}]\n        retries: {{ attempts: 3, retryOn: [5xx] }}\n",
        backends(&[("flaky", flaky.addr)])
    ))
    .replacen("admin:", "limits: { maxRetryBodyBytes: 4096 }\nadmin:", 1);
    let proxy = Proxy::start(&config).await;
    for (client, protocol) in [(http1_client(), "HTTP/1.1 chunked"), (http2_client(), "HTTP/2")] {
        // 3,000 bytes, under the bound: the two failed tries (answered before the body was all
        // read) and the third each get the whole body.
        let hits_before = flaky.hits();
        flaky.fail_first.store(hits_before + 2, std::sync::atomic::Ordering::SeqCst);
        let request = Request::post(url(&proxy, "/body")).body(streamed_body(30, 100)).unwrap();
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "flaky got 3000 bytes"), "{protocol}");
        assert_eq!(flaky.hits() - hits_before, 3, "{protocol}");

        // 6,000 bytes, over the 4 KiB bound, failed at once: when the retry starts only a few
        // chunks were read, all kept, so it replays them and streams the rest.
        let hits_before = flaky.hits();
        flaky.fail_first.store(hits_before + 1, std::sync::atomic::Ordering::SeqCst);
        let request = Request::post(url(&proxy, "/body")).body(streamed_body(60, 100)).unwrap();
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "flaky got 6000 bytes"), "{protocol}");
        assert_eq!(flaky.hits() - hits_before, 2, "{protocol}");

        // The same body failed after all of it was sent: past the bound, the copy is gone, so it
        // is sent once and the failure reaches the client.
        *flaky.delay.lock().unwrap() = Duration::from_millis(500);
        let hits_before = flaky.hits();
        flaky.fail_first.store(hits_before + 1, std::sync::atomic::Ordering::SeqCst);
        let request = Request::post(url(&proxy, "/body")).body(streamed_body(60, 100)).unwrap();
        let (status, _, _) = send(&client, request).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{protocol}: a body past the bound is not replayed"
        );
        assert_eq!(flaky.hits() - hits_before, 1, "{protocol}");
        *flaky.delay.lock().unwrap() = Duration::ZERO;
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "retry_total", &[("route", "retried")]), Some(6.0), "{metrics}");
}

#[tokio::test]
async fn the_retry_budget_stops_retries_from_amplifying_an_outage() {
    let down = Upstream::start("down").await;
    down.fail_first.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let config = one_service(&format!(
        "{}    retryBudget: {{ percent: 20, minPerSecond: 1, ttl: 10s }}\n    routes:\n      - name: r\n        backends: [{{ name: down }}]\n        retries: {{ attempts: 5, retryOn: [5xx] }}\n",
        backends(&[("down", down.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let client = http1_client();
    let requests = 100;
    for _ in 0..requests {
        let (status, _, _) = send(&client, Request::get(url(&proxy, "/")).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Without a budget, 5 attempts each would be 500 upstream requests. With it: 100 plus 20%
    // of them plus the 1/s reserve over the 10 s window.
    let hits = down.hits();
    assert!(
        hits <= requests + 20 + 10 + 1,
        "{hits} upstream requests for {requests}: the budget did not hold"
    );
    assert!(hits > requests, "some retries are allowed");
    let metrics = proxy.metrics().await;
    assert!(metric(&metrics, "retry_budget_exhausted_total", &[("route", "r")]).unwrap_or(0.0) > 50.0);
}

#[tokio::test]
async fn a_routes_own_retry_budget_binds_that_route_only() {
    let down = Upstream::start("down").await;
    down.fail_first.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let config = one_service(&format!(
        "{}    retryBudget: {{ percent: 100, minPerSecond: 100, ttl: 10s }}
    routes:
      - name: strict
        matches: [{{ path: {{ prefix: /strict }} }}]
        backends: [{{ name: down }}]
        retries: {{ attempts: 3, retryOn: [5xx] }}
        retryBudget: {{ percent: 0, minPerSecond: 0, ttl: 10s }}
      - name: open
        backends: [{{ name: down }}]
        retries: {{ attempts: 3, retryOn: [5xx] }}
",
        backends(&[("down", down.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let client = http1_client();
    for _ in 0..10 {
        let (status, _, _) =
            send(&client, Request::get(url(&proxy, "/strict")).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(down.hits(), 10, "the strict route's own budget allows no retry");
    for _ in 0..10 {
        let (status, _, _) = send(&client, Request::get(url(&proxy, "/open")).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(down.hits(), 10 + 30, "the other route retries under the service's budget");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "retry_budget_exhausted_total", &[("route", "strict")]),
        Some(10.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "retry_total", &[("route", "open")]), Some(20.0), "{metrics}");
}

/// An app that answers its first `failures` requests with `failure` (status and headers), then
/// 200 "ok"; the number of requests it got.
async fn failing_app(
    failures: usize,
    failure: (u16, &'static [(&'static str, &'static str)]),
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    serve_http(listener, move |_request| {
        let hit = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            let mut response = http::Response::builder();
            if hit <= failures {
                response = response.status(failure.0);
                for (name, value) in failure.1 {
                    response = response.header(*name, *value);
                }
                return Ok(response.body(full("")).unwrap());
            }
            Ok(response.body(full("ok")).unwrap())
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_grpc_unavailable_answer_is_retried_when_the_route_asks_and_retry_after_is_waited_for() {
    let unavailable: &[(&str, &str)] = &[("content-type", "application/grpc"), ("grpc-status", "14")];
    for (retry_on, expected_hits) in [("[unavailable]", 2), ("[5xx, deadline-exceeded]", 1)] {
        let (app, hits) = failing_app(1, (200, unavailable)).await;
        let config = one_service(&format!(
            "{}    routes:\n      - backends: [{{ name: app }}]\n        retries: {{ attempts: 3, retryOn: {retry_on} }}\n",
            backends(&[("app", app)])
        ));
        let proxy = Proxy::start(&config).await;
        let (_, headers, _) = get(&url(&proxy, "/")).await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), expected_hits, "retryOn {retry_on}");
        let retried = expected_hits == 2;
        assert_eq!(headers.get("grpc-status").is_none(), retried, "retryOn {retry_on}: {headers:?}");
    }

    // 503 with retry-after: 1 is tried again a second later; retry-after: 60 is not waited for.
    for (after, expected_hits, at_least) in [("1", 2, Duration::from_secs(1)), ("60", 1, Duration::ZERO)] {
        let headers: &'static [(&'static str, &'static str)] =
            if after == "1" { &[("retry-after", "1")] } else { &[("retry-after", "60")] };
        let (app, hits) = failing_app(1, (503, headers)).await;
        let config = one_service(&format!(
            "{}    routes:\n      - backends: [{{ name: app }}]\n        retries: {{ attempts: 3, retryOn: [5xx] }}\n",
            backends(&[("app", app)])
        ));
        let proxy = Proxy::start(&config).await;
        let started = Instant::now();
        let (status, _, _) = get(&url(&proxy, "/")).await;
        let took = started.elapsed();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), expected_hits, "retry-after {after}");
        assert!(
            took >= at_least && took < at_least + Duration::from_secs(1),
            "retry-after {after}: {took:?}"
        );
        let expected = if expected_hits == 2 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        assert_eq!(status, expected);
    }
}

#[tokio::test]
async fn per_try_timeout_retries_a_slow_try_and_total_timeout_answers_504() {
    let slow = Upstream::start("slow").await;
    *slow.delay.lock().unwrap() = Duration::from_secs(3);
    let fast = Upstream::start("fast").await;
    let config = one_service(&format!(
        "{}    routes:
      - name: total
        matches: [{{ path: {{ prefix: /total }} }}]
        backends: [{{ name: slow }}]
        timeout: 300ms
      - name: per-try
        backends: [{{ name: slow, weight: 1 }}, {{ name: fast, weight: 1 }}]
        retries: {{ attempts: 10, perTryTimeout: 200ms }}
",
        backends(&[("slow", slow.addr), ("fast", fast.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let started = Instant::now();
    let (status, headers, body) = get(&url(&proxy, "/total")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["braid-proxy-error"], "timeout");
    assert!(body.contains("timed out after 300ms"), "{body}");
    assert!(elapsed < Duration::from_secs(2), "answered after {elapsed:?}");

    // Tries that hit the slow backend time out after 200 ms and go again; one lands on fast.
    for _ in 0..5 {
        let (status, _, body) = get(&url(&proxy, "/x")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fast"));
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "timeout_total", &[("route", "total"), ("kind", "total")]), Some(1.0));
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_gets_503_fast() {
    let (_refusing, addr) = refusing_addr();
    let config = one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: gone }}]\n",
        backends(&[("gone", addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let started = Instant::now();
    let (status, headers, body) = get(&url(&proxy, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["braid-proxy-error"], "connect-failure");
    assert!(body.contains(&format!("could not connect to {addr}")), "{body}");
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
}

/// An app on raw TCP that reads one request per connection and answers with the next of
/// `answers`, then closes.
async fn raw_app(answers: Vec<&'static [u8]>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("binding loopback: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("the bound address: {e}"));
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            read_request_head(&mut stream).await;
            let _ = stream.write_all(answer).await;
        }
    });
    addr
}

/// Reads from `stream` until a request head has come (true) or the connection ended (false);
/// what follows the head in the same read is dropped.
async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut chunk = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

#[tokio::test]
async fn an_app_answering_what_is_not_http_gets_502_with_the_reason_and_the_next_answer_passes() {
    let app = raw_app(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        b"\x16\x03\x01\x00\x05hello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ])
    .await;
    let config = one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: app }}]\n",
        backends(&[("app", app)])
    ));
    let proxy = Proxy::start(&config).await;
    let (status, headers, body) = get(&url(&proxy, "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["braid-proxy-error"], "upstream-reset");
    assert!(body.contains("conflicting Content-Length values"), "{body}");
    let (status, _, body) = get(&url(&proxy, "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("not an HTTP/1.x response head"), "{body}");
    let (status, _, body) = get(&url(&proxy, "/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "abc"));
}

#[tokio::test]
async fn fault_injection_and_mirroring() {
    let (main, shadow) = tokio::join!(Upstream::start("main"), Upstream::start("shadow"));
    let config = one_service(&format!(
        "{}    routes:
      - {{ name: abort, matches: [{{ path: {{ prefix: /abort }} }}], backends: [{{ name: main }}], fault: {{ abort: {{ status: 418, percent: 100 }} }} }}
      - {{ name: mirrored, backends: [{{ name: main }}], mirror: {{ backend: shadow }} }}
",
        backends(&[("main", main.addr), ("shadow", shadow.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let (status, headers, _) = get(&url(&proxy, "/abort")).await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(headers["braid-proxy-error"], "fault-injected");
    assert_eq!(main.hits(), 0);
    for _ in 0..3 {
        let (status, _, body) = get(&url(&proxy, "/x")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "main"));
    }
    eventually("the mirror received copies", || async { shadow.hits() == 3 }).await;
}

#[tokio::test]
async fn round_robin_takes_endpoints_in_turn_and_a_session_header_sticks_to_one() {
    let (e1, e2, e3) = tokio::join!(Upstream::start("e1"), Upstream::start("e2"), Upstream::start("e3"));
    let config = one_service(&format!(
        "    backends:
      - {{ name: pool, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}, {{ address: \"{}\" }}] }}
    routes:
      - backends: [{{ name: pool }}]
    loadBalancer: {{ algorithm: round-robin, hashOn: {{ header: x-session }} }}
",
        e1.addr, e2.addr, e3.addr
    ));
    let proxy = Proxy::start(&config).await;
    let client = http1_client();
    // Without the key: each endpoint in turn.
    for _ in 0..6 {
        assert_eq!(get(&url(&proxy, "/")).await.0, StatusCode::OK);
    }
    assert_eq!((e1.hits(), e2.hits(), e3.hits()), (2, 2, 2), "round robin");
    // With it: every request of a session to one endpoint, the sessions spread over them.
    let mut homes = std::collections::BTreeMap::new();
    for session in 0..12 {
        let mut answered_by = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let request = Request::get(url(&proxy, "/"))
                .header("x-session", format!("user-{session}"))
                .body(full(""))
                .unwrap();
            let (status, _, body) = send(&client, request).await;
            assert_eq!(status, StatusCode::OK);
            answered_by.insert(body);
        }
        assert_eq!(answered_by.len(), 1, "session {session} went to {answered_by:?}");
        *homes.entry(answered_by.into_iter().next().unwrap_or_default()).or_insert(0) += 1;
    }
    assert!(homes.len() >= 2, "12 sessions all on one endpoint: {homes:?}");
}

#[tokio::test]
async fn requests_over_max_requests_in_flight_get_503_at_once_and_the_rest_pass() {
    let app = Upstream::start("app").await;
    *app.delay.lock().unwrap() = Duration::from_millis(500);
    let config = one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: app }}]\n    maxRequests: 2\n",
        backends(&[("app", app.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = url(&proxy, "/");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let (status, headers, _) = request.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(headers["braid-proxy-error"], "overloaded");
        }
        statuses.push(status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503], "two in flight, three refused");
    assert!(started.elapsed() < Duration::from_millis(1500), "the refused ones did not wait");
    assert_eq!(app.hits(), 2);
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "overloaded_total", &[("direction", "outbound")]), Some(3.0), "{metrics}");
    // Once they are done, the next ones pass.
    assert_eq!(get(&url(&proxy, "/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_route_over_its_rate_limit_gets_429_with_retry_after_and_a_reload_refills_nothing() {
    let app = Upstream::start("app").await;
    let config = one_service(&format!(
        "{}    routes:
      - {{ name: limited, matches: [{{ path: {{ prefix: /limited }} }}], backends: [{{ name: app }}], rateLimit: {{ requestsPerSecond: 1, burst: 3 }} }}
      - {{ name: open, backends: [{{ name: app }}] }}
",
        backends(&[("app", app.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, headers, _) = get(&url(&proxy, "/limited")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers["retry-after"], "1", "one request per second: the next in at most 1 s");
            assert_eq!(headers["braid-proxy-error"], "rate-limited");
        }
        statuses.push(status.as_u16());
    }
    // Six requests well within a second: the burst of 3 passes, the rest wait.
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(app.hits(), 3, "a limited request never reaches the app");
    // Other routes of the service are not limited.
    for _ in 0..5 {
        assert_eq!(get(&url(&proxy, "/other")).await.0, StatusCode::OK);
    }
    let metrics = proxy.metrics().await;
    let limited = [("direction", "outbound"), ("route", "limited")];
    assert_eq!(metric(&metrics, "rate_limited_total", &limited), Some(3.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "response_total", &[("route", "limited"), ("status_code", "429")]),
        Some(3.0),
        "{metrics}"
    );

    // A reload that keeps the route and its limit keeps its bucket: still empty.
    std::fs::write(&proxy.config_path, config.replace("name: open", "name: open-renamed")).unwrap();
    eventually("the reload applies", || async {
        proxy.metrics().await.contains("route=\"open-renamed\"") || {
            let _ = get(&url(&proxy, "/other")).await;
            false
        }
    })
    .await;
    assert_eq!(get(&url(&proxy, "/limited")).await.0, StatusCode::TOO_MANY_REQUESTS);
    // A second later the bucket has one request more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&url(&proxy, "/limited")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn query_parameter_matches_and_header_edits() {
    let (edited, plain) = tokio::join!(Upstream::start("edited"), Upstream::start("plain"));
    let config = one_service(&format!(
        "{}    routes:
      - name: edited
        matches: [{{ queryParams: [{{ name: animal, exact: whale }}] }}]
        backends: [{{ name: edited }}]
        requestHeaders: {{ set: [{{ name: x-set, value: new }}], add: [{{ name: x-add, value: added }}], remove: [x-secret] }}
        responseHeaders: {{ add: [{{ name: x-served-by, value: edited }}] }}
      - {{ name: plain, backends: [{{ name: plain }}] }}
",
        backends(&[("edited", edited.addr), ("plain", plain.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let client = http1_client();
    let request = Request::get(url(&proxy, "/zoo?size=big&animal=whale"))
        .header("x-set", "old")
        .header("x-add", "there")
        .header("x-secret", "s3cret")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(&client, request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "edited"));
    assert_eq!(headers["x-served-by"], "edited", "the response edit reached the client");
    let seen = edited.last_headers.lock().unwrap().clone().expect("the upstream saw the request");
    assert_eq!(seen["x-set"], "new");
    assert_eq!(seen["x-add"], "there,added");
    assert!(seen.get("x-secret").is_none(), "removed before it left the proxy");
    let (status, headers, body) = get(&url(&proxy, "/zoo?animal=whales")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"), "the value must match whole");
    assert!(headers.get("x-served-by").is_none(), "edits belong to their route");
}

#[tokio::test]
async fn a_redirect_is_answered_by_the_proxy_and_a_rewrite_reaches_the_backend() {
    let app = Upstream::start("app").await;
    let config = one_service(&format!(
        "{}    routes:
      - name: moved
        matches: [{{ path: {{ prefix: /old }} }}]
        backends: [{{ name: app }}]
        redirect: {{ hostname: example.org, status: 301, path: {{ replacePrefixMatch: {{ prefix: /old, with: /new }} }} }}
      - name: rewritten
        backends: [{{ name: app }}]
        rewrite: {{ hostname: app.internal }}
",
        backends(&[("app", app.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let (status, headers, _) = get(&url(&proxy, "/old/page?x=1")).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    // The host and path change; the port is the one the client called, as the redirect names none.
    let port = proxy.service("web.shop.svc.cluster.local").port();
    assert_eq!(headers["location"], format!("http://example.org:{port}/new/page?x=1").as_str());
    assert_eq!(app.hits(), 0, "a redirect never reaches the backend");
    let (status, _, body) = get(&url(&proxy, "/other")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    let seen = app.last_headers.lock().unwrap().clone().expect("the upstream saw the request");
    assert!(seen["host"].to_str().unwrap().starts_with("app.internal"), "{seen:?}");
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_connection_is_closed() {
    let a = Upstream::start("a").await;
    let config = one_backend_service("a", a.addr);
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nno colon here\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(a.hits(), 0);
}

/// The outbound side serves bodiless requests itself and hands a connection to hyper's server at
/// its first request with a body: on one client connection, every request is answered, in order.
#[tokio::test]
async fn one_client_connection_carries_pipelined_gets_a_post_with_a_body_and_what_follows() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(&one_backend_service("a", a.addr)).await;
    let mut stream = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    stream
        .write_all(
            b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: web\r\n\r\n\
              POST /body HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\nhello world\
              GET /4 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let answers: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 4, "{answer}");
    assert!(answers[0].ends_with("\r\n\r\na"), "GET: {answer}");
    assert!(answers[1].ends_with("\r\n\r\n"), "HEAD has no body: {answer}");
    assert!(answers[2].ends_with("\r\n\r\na got 11 bytes"), "POST: {answer}");
    assert!(answers[3].ends_with("\r\n\r\na") && answers[3].contains("connection: close"), "{answer}");
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let a = Upstream::start("a").await;
    let config =
        one_backend_service("a", a.addr).replacen("admin:", "limits: { maxHeaderBytes: 16384 }\nadmin:", 1);
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    let huge = "a".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: web\r\nx-huge: {huge}\r\n\r\n");
    // The proxy may answer and close before it read everything: a write error is fine.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(a.hits(), 0);
    // A request just under the bound passes.
    let request = Request::get(url(&proxy, "/")).header("x-big", "b".repeat(8000)).body(full("")).unwrap();
    assert_eq!(send(&http1_client(), request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn http2_and_grpc_streaming_pass_through_with_trailers() {
    let server = Upstream::start("grpc").await;
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\nservices:\n  - name: grpc.svc\n    listen: 127.0.0.1:0\n    backends:\n      - {{ name: g, endpoints: [{{ address: \"{}\", http2: true }}] }}\n    routes:\n      - backends: [{{ name: g }}]\n",
        server.addr
    );
    let proxy = Proxy::start(&config).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let request = Request::post(format!("http://{}/echo", proxy.service("grpc.svc")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let client = http2_client();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
    let response =
        tokio::time::timeout(Duration::from_secs(5), client.request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    // The first message comes back while the request is still open: nothing is buffered.
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "second");
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(*server.last_version.lock().unwrap(), Some(http::Version::HTTP_2));
}

/// What a silent app saw on a connection.
#[derive(Debug, PartialEq)]
enum AppSaw {
    RequestHead,
    Closed,
}

/// An app on raw TCP that reads a request head on each connection and never answers; it reports
/// the head and, later, the connection closed by the other end.
async fn silent_app() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<AppSaw>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (saw, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let saw = saw.clone();
            tokio::spawn(async move {
                while read_request_head(&mut stream).await {
                    let _ = saw.send(AppSaw::RequestHead);
                }
                let _ = saw.send(AppSaw::Closed);
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn an_http2_client_that_resets_its_stream_cancels_the_request_upstream() {
    let (app, mut seen) = silent_app().await;
    let proxy = Proxy::start(&one_backend_service("silent", app)).await;
    let io = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(url(&proxy, "/never-answered")).body(()).unwrap();
    let (_response, mut stream) = client.send_request(request, true).unwrap();
    let within = Duration::from_secs(5);
    let first = tokio::time::timeout(within, seen.recv()).await.expect("the request reaches the app");
    assert_eq!(first, Some(AppSaw::RequestHead));
    // The route has no timeout: only the reset can end the request.
    stream.send_reset(h2::Reason::CANCEL);
    let next = tokio::time::timeout(within, seen.recv()).await.expect("the proxy gives the request up");
    assert_eq!(next, Some(AppSaw::Closed), "the request's upstream connection is closed, not reused");
}

/// On a one-thread runtime an HTTP/2 connection's task drives all its streams (http::h2_server):
/// a stream whose app never answers must not hold up the others on the same connection.
#[tokio::test]
async fn a_stuck_http2_stream_does_not_hold_up_the_others_on_its_connection() {
    let (stuck_app, mut seen) = silent_app().await;
    let fast = Upstream::start("fast").await;
    let config = one_service(&format!(
        "{}    routes:\n      - {{ matches: [{{ path: {{ prefix: /stuck }} }}], backends: [{{ name: stuck }}] }}\n      - backends: [{{ name: fast }}]\n",
        backends(&[("stuck", stuck_app), ("fast", fast.addr)])
    ));
    let proxy = Proxy::start(&config).await;
    let io = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let within = Duration::from_secs(5);
    let mut client = client.ready().await.unwrap();
    let (stuck, _) =
        client.send_request(Request::get(url(&proxy, "/stuck")).body(()).unwrap(), true).unwrap();
    let first = tokio::time::timeout(within, seen.recv()).await.expect("the stuck request reaches its app");
    assert_eq!(first, Some(AppSaw::RequestHead));
    for i in 0..3 {
        let mut client = client.clone().ready().await.unwrap();
        let (answer, _) =
            client.send_request(Request::get(url(&proxy, "/")).body(()).unwrap(), true).unwrap();
        let answer =
            tokio::time::timeout(within, answer).await.expect("answered while a stream is stuck").unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "request {i}");
        let mut body = answer.into_body();
        let data = tokio::time::timeout(within, body.data()).await.unwrap().unwrap().unwrap();
        assert_eq!(data, "fast", "request {i}");
    }
    assert_eq!(fast.hits(), 3);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stuck).await.is_err(),
        "the stuck request is still waiting for its app"
    );
}

/// The app's sidecar (inbound to `app`) and a client's sidecar whose service `web` has the
/// app's sidecar as its one meshed endpoint: (client side, server side).
async fn two_sidecars(app: std::net::SocketAddr) -> (Proxy, Proxy) {
    let server_side = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0, target: \"{}\" }}\n",
        app
    ))
    .await;
    let client_side = Proxy::start(&one_service(&format!(
        "    backends:\n      - {{ name: app, endpoints: [{{ address: \"{}\", meshed: true }}] }}\n    routes:\n      - backends: [{{ name: app }}]\n",
        server_side.inbound()
    )))
    .await;
    (client_side, server_side)
}

#[tokio::test]
async fn two_sidecars_carry_http1_over_one_http2_connection_and_propagate_the_trace() {
    let app = Upstream::start("app").await;
    let (client_side, server_side) = two_sidecars(app.addr).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for _ in 0..3 {
        let request = Request::get(url(&client_side, "/hello"))
            .header("host", "web.shop.svc.cluster.local")
            .header("traceparent", traceparent)
            .body(full(""))
            .unwrap();
        let (status, headers, body) = send(&http1_client(), request).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
        assert_eq!(headers["x-upstream"], "app");
    }
    let seen = app.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(*app.last_version.lock().unwrap(), Some(http::Version::HTTP_11), "the app gets HTTP/1.1 back");
    assert_eq!(seen["host"], "web.shop.svc.cluster.local");
    assert!(!seen.contains_key("braid-orig-proto"), "the proxies' own header does not reach the app");
    let received = seen["traceparent"].to_str().unwrap();
    // Without tracing the proxies report no spans, so the app's span must stay the child of the
    // caller's: a new parent id would point at a span no collector has (tests/tracing.rs has them on).
    assert_eq!(received, traceparent, "the trace context reaches the app unchanged");
    // One HTTP/2 connection between the proxies carried all three requests.
    let metrics = server_side.metrics().await;
    assert_eq!(metric(&metrics, "tcp_open_total", &[("direction", "inbound")]), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "request_total", &[("direction", "inbound")]), Some(3.0));
    assert!(metric(&metrics, "tcp_read_bytes_total", &[("direction", "inbound")]).unwrap() > 0.0);
    assert!(metric(&metrics, "tcp_write_bytes_total", &[("direction", "inbound")]).unwrap() > 0.0);
}

/// The inbound proxy gathers the frames of concurrent responses into one write per turn
/// (http::coalesce): every byte of every response must still arrive, in order, whatever its size.
#[tokio::test]
async fn two_sidecars_return_every_byte_of_concurrent_responses_of_any_size() {
    every_byte_of_concurrent_responses().await;
}

/// With more than one thread, each HTTP/2 stream is served on a task of its own
/// (http::h2_server); on one thread the connection's task drives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_two_threads_return_every_byte_of_concurrent_responses() {
    every_byte_of_concurrent_responses().await;
}

async fn every_byte_of_concurrent_responses() {
    let app = Upstream::start("app").await;
    let (client_side, server_side) = two_sidecars(app.addr).await;
    let (http1, http2) = (http1_client(), http2_client());
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..48usize {
        // 1 byte to 2 MiB: small frames that share a write, and frames larger than the buffer.
        let size = [1, 700, 1024, 5_000, 70_000, 2 << 20][i % 6];
        let body: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let client = if i % 2 == 0 { http1.clone() } else { http2.clone() };
        let url = url(&client_side, "/echo");
        requests.spawn(async move {
            let request = Request::post(url)
                .header("host", "web.shop.svc.cluster.local")
                .body(full(body.clone()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let received = response.into_body().collect().await.unwrap().to_bytes();
            assert!(received == body, "request {i}: {} bytes back for {} sent", received.len(), body.len());
        });
    }
    let all = async {
        while let Some(done) = requests.join_next().await {
            done.expect("a request failed");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all).await.expect("all 48 answered within 30 s");
    let metrics = server_side.metrics().await;
    assert_eq!(metric(&metrics, "tcp_open_total", &[("direction", "inbound")]), Some(1.0), "{metrics}");
}

/// An HTTP/1.1 app's connection-specific header fields cannot cross HTTP/2 (RFC 9113 §8.2.2):
/// the app's sidecar drops them, and the client gets the answer.
#[tokio::test]
async fn two_sidecars_carry_a_chunked_keep_alive_answer_over_http2() {
    let app = raw_app(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
          x-app: yes\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ])
    .await;
    let (client_side, _server_side) = two_sidecars(app).await;
    let (status, headers, body) = get(&url(&client_side, "/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "abc"));
    assert_eq!(headers["x-app"], "yes");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
}

/// A proxy whose one service answers "slow" after 700 ms: a request stays in flight long enough
/// for a drain to begin under it.
async fn slow_service_proxy() -> (Arc<Upstream>, Proxy) {
    let slow = Upstream::start("slow").await;
    *slow.delay.lock().unwrap() = Duration::from_millis(700);
    let proxy = Proxy::start(&one_backend_service("slow", slow.addr)).await;
    (slow, proxy)
}

#[tokio::test]
async fn drain_finishes_in_flight_http2_streams() {
    let (_slow, mut proxy) = slow_service_proxy().await;
    let url = url(&proxy, "/");
    let client = http2_client();
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { send(&client, Request::get(url).body(full("")).unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drain = tokio::spawn(proxy.running.take().unwrap().drain(Duration::from_secs(5)));
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"), "the stream in flight completed");
    assert!(drain.await.unwrap(), "drained before the deadline");
}

#[tokio::test]
async fn opaque_tcp_is_forwarded_both_ways() {
    // An echo server that also speaks first, like a database would. A known service that speaks
    // first is declared opaque (a silent client of an HTTP service is only waited for).
    let echo_addr = echo_server(b"HELLO\n").await;
    let config = one_service(&format!(
        "    protocol: opaque\n{}    routes:\n      - backends: [{{ name: db }}]\n",
        backends(&[("db", echo_addr)])
    ));
    let proxy = Proxy::start(&config).await;
    // Server speaks first: the client sends nothing, bytes flow at once.
    let mut stream = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    let mut banner = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut banner)).await.unwrap().unwrap();
    assert_eq!(&banner, b"HELLO\n");
    // Then a non-HTTP protocol both ways, including the bytes read during detection.
    let payload = b"\x16\x03\x01 not http at all \x00\xff";
    stream.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, payload);
}

#[tokio::test]
async fn a_bad_config_file_is_refused_and_the_last_good_one_keeps_serving() {
    let (v1, v2) = tokio::join!(Upstream::start("v1"), Upstream::start("v2"));
    let good = one_service(&format!(
        "{}    routes:\n      - backends: [{{ name: v1 }}]\n",
        backends(&[("v1", v1.addr), ("v2", v2.addr)])
    ));
    let proxy = Proxy::start(&good).await;
    assert_eq!(get(&url(&proxy, "/")).await.2, "v1");

    std::fs::write(&proxy.config_path, good.replace("name: v1 }]\n", "name: v3 }]\n")).unwrap();
    eventually("the rejection is reported", || async {
        proxy.admin("/config").await.1.contains("no backend named \\\"v3\\\"")
    })
    .await;
    let (_, config) = proxy.admin("/config").await;
    assert!(config.contains("services[0].routes[0].backends[0].name"), "{config}");
    assert_eq!(get(&url(&proxy, "/")).await.2, "v1", "the last good configuration still routes");
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "config_reload_total", &[("result", "rejected")]), Some(1.0));

    // A good change applies, and requests in flight on the old table finish.
    *v1.delay.lock().unwrap() = Duration::from_millis(500);
    let in_flight = tokio::spawn({
        let url = url(&proxy, "/");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&proxy.config_path, good.replace("name: v1 }]\n", "name: v2 }]\n")).unwrap();
    eventually("the new route applies", || async { get(&url(&proxy, "/")).await.2 == "v2" }).await;
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert!(!proxy.admin("/config").await.1.contains("lastError\": \""));
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let (_slow, mut proxy) = slow_service_proxy().await;
    let listener = proxy.service("web.shop.svc.cluster.local");
    let admin = proxy.running().admin;
    let in_flight = tokio::spawn(async move { get(&format!("http://{listener}/")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = proxy.running.take().unwrap();
    let drain = tokio::spawn(running.drain(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = get(&format!("http://{admin}/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready while draining");
    assert!(TcpStream::connect(listener).await.is_err(), "new connections are refused");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"), "the request in flight completed");
    assert!(drain.await.unwrap(), "drained before the deadline");
}

/// A pooled client connection that never sent a request has nothing in flight: a drain closes it
/// at once instead of waiting for it until the deadline.
#[tokio::test]
async fn drain_closes_a_client_connection_that_never_sent_a_request() {
    let (_v1, _v2, mut proxy) = split(50, 50).await;
    let mut silent = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let drained = proxy.running.take().unwrap().drain(Duration::from_secs(20)).await;
    assert!(drained, "the drain reached its deadline");
    assert!(started.elapsed() < Duration::from_secs(5), "the drain took {:?}", started.elapsed());
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the silent connection is still open: {read:?}");
}

/// Clients from outside the pod get `limits.headTimeout` for each request head (slowloris), with
/// a 408 that says why; the pod's own app, on the outbound side, is not timed.
#[tokio::test]
async fn inbound_request_heads_are_timed_and_the_apps_own_are_not() {
    let app = Upstream::start("app").await;
    let config = one_backend_service("app", app.addr)
        .replacen("admin:", "limits: { headTimeout: 300ms }\nadmin:", 1)
        .replacen(
            "inbound: { listen: 127.0.0.1:0 }",
            &format!("inbound: {{ listen: 127.0.0.1:0, target: \"{}\" }}", app.addr),
            1,
        );
    let proxy = Proxy::start(&config).await;

    let mut inbound = TcpStream::connect(proxy.inbound()).await.unwrap();
    inbound.write_all(b"GET /whole HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), inbound.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app"), "{answer}");
    inbound.write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), inbound.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("the request head did not arrive within 300ms"), "{answer}");
    assert_eq!(app.hits(), 1);

    let mut outbound = TcpStream::connect(proxy.service("web.shop.svc.cluster.local")).await.unwrap();
    outbound.write_all(b"GET /slow HTTP/1.1\r\nHost: web\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    outbound.write_all(b"\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), outbound.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app"), "{answer}");
    assert_eq!(app.hits(), 2);
}

/// An address of this machine that is not loopback, as a pod's admin port is reached from the
/// pod network.
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing; it only picks the source address of the route.
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a network interface with a default route besides loopback");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no address besides loopback: this test needs one");
    ip
}

#[tokio::test]
async fn config_is_answered_on_loopback_only_and_probes_and_metrics_everywhere() {
    let proxy = Proxy::start(
        "admin: 0.0.0.0:0\noutbound: { listen: 127.0.0.1:0 }\ninbound: { listen: 127.0.0.1:0 }\n",
    )
    .await;
    let port = proxy.running().admin.port();
    let outside = format!("http://{}:{port}", non_loopback_address());
    let (status, _, body) = get(&format!("{outside}/config")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("loopback only") && body.contains("kubectl port-forward"), "{body}");
    for path in ["/ready", "/live", "/metrics"] {
        assert_eq!(get(&format!("{outside}{path}")).await.0, StatusCode::OK, "{path} from the pod network");
    }
    let (status, _, body) = get(&format!("http://127.0.0.1:{port}/config")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"config\""), "{body}");
}

/// A split whose bigger backend has only gone pods (a version rolled while discovery could not
/// say so): none of a request left, so it goes to the route's other weighted backend rather than
/// failing. A backend at weight 0 (a canary not started) is never such a fallback.
#[tokio::test]
async fn a_request_goes_to_the_other_backend_when_none_of_its_backends_endpoints_can_be_reached() {
    let live = Upstream::start("live").await;
    let refusing: Vec<_> = (0..3).map(|_| refusing_addr()).collect();
    let gone: Vec<String> = refusing.iter().map(|(_, addr)| format!("{{ address: \"{addr}\" }}")).collect();
    let config = |live_weight: u32| {
        one_service(&format!(
            "    backends:\n      - {{ name: gone, endpoints: [{}] }}\n      - {{ name: live, endpoints: [{{ address: \"{}\" }}] }}\n\
             \x20   routes:\n      - backends: [{{ name: gone, weight: 99 }}, {{ name: live, weight: {live_weight} }}]\n",
            gone.join(", "),
            live.addr
        ))
    };
    let proxy = Proxy::start(&config(1)).await;
    for _ in 0..20 {
        let (status, headers, body) = get(&url(&proxy, "/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "live"), "{headers:?}");
    }
    assert_eq!(live.hits(), 20);

    let proxy = Proxy::start(&config(0)).await;
    let (status, headers, _) = get(&url(&proxy, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no fallback to a backend at weight 0: {headers:?}");
    assert_eq!(live.hits(), 20);
}

/// Endpoints whose pods are gone while the proxy still has them (discovery not yet told): no
/// connection can be had, so none of the request left, and it goes to another endpoint within
/// the same try. No retries are configured, and round robin sends the first request to each
/// of the six gone endpoints in turn (most of a Deployment rolled while the control plane failed
/// over): every request still reaches the live one, its body whole, over HTTP/1.1 (lean and
/// streaming) and HTTP/2.
#[tokio::test]
async fn a_request_to_an_endpoint_that_refuses_connections_goes_to_another_one() {
    let live = Upstream::start("live").await;
    for http2 in ["", ", http2: true"] {
        let refusing: Vec<_> = (0..6).map(|_| refusing_addr()).collect();
        let endpoints: Vec<String> = refusing
            .iter()
            .map(|(_, addr)| format!("{{ address: \"{addr}\"{http2} }}"))
            .chain([format!("{{ address: \"{}\"{http2} }}", live.addr)])
            .collect();
        let config = one_service(&format!(
            "    backends:\n      - {{ name: pool, endpoints: [{}] }}\n    routes:\n      - backends: [{{ name: pool }}]\n    loadBalancer: {{ algorithm: round-robin }}\n",
            endpoints.join(", ")
        ));
        let proxy = Proxy::start(&config).await;
        let before = live.hits();
        let (status, headers, body) = get(&url(&proxy, "/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "live"), "{http2}: {headers:?}");
        // A body of unknown length (chunked), which is not kept for a retry: still sent whole.
        let request = Request::post(url(&proxy, "/body")).body(streamed_body(3, 4)).unwrap();
        let client = if http2.is_empty() { http1_client() } else { http2_client() };
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "live got 12 bytes"), "{http2}");
        for _ in 0..10 {
            assert_eq!(get(&url(&proxy, "/")).await.0, StatusCode::OK, "{http2}");
        }
        assert_eq!(live.hits() - before, 12, "{http2}: every request reached the live endpoint once");
        let metrics = proxy.metrics().await;
        assert_eq!(
            metric(&metrics, "response_total", &[("direction", "outbound"), ("classification", "failure")]),
            None,
            "{http2}: no request failed: {metrics}"
        );
    }
}
