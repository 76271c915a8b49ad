//! The echo server on real sockets: what it reports, and the faults it injects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use braid_testapps::echo::Echo;
use braid_testapps::faults::Faults;
use http::StatusCode;
use support::*;

#[tokio::test]
async fn answers_with_its_name_version_and_pod_over_http1_and_h2c() {
    let server = start_echo(config("reviews", "v2")).await;
    let url = format!("http://{}/api/items?id=7", server.addr);
    for (client, protocol) in [(http1(), "HTTP/1.1"), (h2c(), "HTTP/2.0")] {
        let (status, answer) = echo(&client, &url, &[("traceparent", "00-abc-def-01")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((answer.name.as_str(), answer.version.as_str()), ("reviews", "v2"));
        assert_eq!(answer.pod, "reviews-v2-pod");
        assert_eq!(
            (answer.method.as_str(), answer.path.as_str(), answer.query.as_str()),
            ("GET", "/api/items", "id=7")
        );
        assert_eq!(answer.protocol, protocol);
        assert_eq!(answer.headers["traceparent"], "00-abc-def-01");
        assert_eq!(answer.status, 200);
        assert!(!answer.injected_failure);
        assert!(answer.peer.starts_with("127.0.0.1:"), "{}", answer.peer);
    }
    let (status, bytes) = request(
        &http1(),
        "POST",
        &url,
        &[("content-type", "text/plain")],
        braid_testapps::body::full("12345"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: braid_testapps::echo::EchoResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!((answer.method.as_str(), answer.body_bytes), ("POST", 5));
}

#[tokio::test]
async fn fails_the_fraction_of_requests_it_is_told_to() {
    let mut config = config("ratings", "v1");
    config.faults = Faults { fail_rate: 0.3, ..Faults::default() };
    let server = start_echo(config).await;
    let client = http1();
    let url = format!("http://{}/", server.addr);
    let requests = 2000;
    let mut failed = 0;
    for _ in 0..requests {
        let (status, answer) = echo(&client, &url, &[]).await;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            assert!(answer.injected_failure);
            assert_eq!(answer.name, "ratings", "a failed answer still says who failed");
            failed += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    // Binomial(2000, 0.3): the standard deviation of the fraction is 0.01; 0.05 is 5 of them.
    let fraction = f64::from(failed) / f64::from(requests);
    assert!((fraction - 0.3).abs() < 0.05, "{failed} of {requests} failed, not about 30 %");
}

#[tokio::test]
async fn request_headers_override_the_faults_and_bad_ones_get_400() {
    let server = start_echo(config("echo", "v1")).await;
    let client = http1();
    let url = format!("http://{}/", server.addr);
    let (status, answer) =
        echo(&client, &url, &[("x-echo-fail-rate", "1"), ("x-echo-fail-status", "503")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.status, 503);
    for _ in 0..50 {
        assert_eq!(echo(&client, &url, &[("x-echo-fail-rate", "0")]).await.0, StatusCode::OK);
    }
    let (status, body) = get(&client, &url, &[("x-echo-fail-rate", "1.5")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("x-echo-fail-rate") && body.contains("out of range"), "{body}");
    let (status, body) = get(&client, &url, &[("x-echo-delay", "soon")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn delays_the_fraction_of_requests_it_is_told_to() {
    let mut slow = config("slow", "v1");
    slow.faults = Faults { delay: Duration::from_millis(300), ..Faults::default() };
    let server = start_echo(slow).await;
    let client = http1();
    let started = Instant::now();
    let (status, answer) = echo(&client, &format!("http://{}/", server.addr), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.delay_ms, 300);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Half of 100 concurrent requests delayed by a header; the others answer at once.
    let server = start_echo(config("echo", "v1")).await;
    let url = format!("http://{}/", server.addr);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move {
            let started = Instant::now();
            let (_, answer) =
                echo(&client, &url, &[("x-echo-delay", "200ms"), ("x-echo-delay-rate", "0.5")]).await;
            (answer.delay_ms, started.elapsed())
        });
    }
    let mut delayed = 0;
    while let Some(result) = requests.join_next().await {
        let (delay_ms, elapsed) = result.unwrap();
        if delay_ms > 0 {
            assert_eq!(delay_ms, 200);
            assert!(elapsed >= Duration::from_millis(200));
            delayed += 1;
        }
    }
    // Binomial(100, 0.5): standard deviation 5.
    assert!((25..=75).contains(&delayed), "{delayed} of 100 were delayed, not about half");
}

#[tokio::test]
async fn healthz_is_never_faulted_and_fails_once_shutting_down() {
    let mut config = config("echo", "v1");
    config.faults = Faults { fail_rate: 1.0, delay: Duration::from_secs(30), ..Faults::default() };
    let echo = Echo::new(config);
    let server = start(echo.handler()).await;
    let client = http1();
    let url = format!("http://{}/healthz", server.addr);
    let (status, body) = get(&client, &url, &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    echo.set_shutting_down();
    assert_eq!(get(&client, &url, &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_binary_finishes_requests_in_flight_on_sigterm() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = binary("echo")
        .args(["--listen", &addr, "--name", "web", "--app-version", "v3", "--pod", "web-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = addr.parse().unwrap();
    wait_ready(addr, "/healthz").await;
    let client = http1();
    let url = format!("http://{addr}/");
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { echo(&client, &url, &[("x-echo-delay", "1s")]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    let (status, answer) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer.name.as_str(), answer.version.as_str(), answer.pod.as_str()), ("web", "v3", "web-0"));
    let output =
        tokio::task::spawn_blocking(move || wait_with_timeout(child, Duration::from_secs(10))).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after exit");
}

#[tokio::test]
async fn stats_count_echoed_requests_by_path_but_not_health_checks() {
    let echo = Echo::new(config("mirror", "v1"));
    let server = start(echo.handler()).await;
    let client = http1();
    for path in ["/a", "/a", "/b?x=1"] {
        assert_eq!(get(&client, &format!("http://{}{path}", server.addr), &[]).await.0, StatusCode::OK);
    }
    let _ = get(&client, &format!("http://{}/healthz", server.addr), &[]).await;
    let (status, body) = get(&client, &format!("http://{}/stats", server.addr), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let stats: braid_testapps::echo::EchoStats = serde_json::from_slice(&body).unwrap();
    assert_eq!((stats.name.as_str(), stats.pod.as_str(), stats.requests), ("mirror", "mirror-v1-pod", 3));
    assert_eq!(stats.paths.get("/a"), Some(&2));
    assert_eq!(stats.paths.get("/b"), Some(&1));
    assert_eq!(stats.paths.len(), 2, "neither /healthz nor /stats is counted: {stats:?}");
}

#[tokio::test]
async fn delay_tries_slow_only_the_first_tries_of_each_request() {
    let server = start_echo(config("echo", "v1")).await;
    let client = http1();
    let url = format!("http://{}/", server.addr);
    let slow = [("x-echo-delay", "300ms"), ("x-echo-delay-tries", "1")];
    for id in ["req-1", "req-2"] {
        let headers = [slow[0], slow[1], ("x-request-id", id)];
        let started = Instant::now();
        let (status, answer) = echo(&client, &url, &headers).await;
        assert_eq!((status, answer.delay_ms), (StatusCode::OK, 300), "{id}: the first try is slow");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let started = Instant::now();
        let (status, answer) = echo(&client, &url, &headers).await;
        assert_eq!((status, answer.delay_ms), (StatusCode::OK, 0), "{id}: the second try is not");
        assert!(started.elapsed() < Duration::from_millis(300));
    }
    // Without a request id the header cannot work: refused, not ignored.
    let (status, body) = request(&client, "GET", &url, &slow, braid_testapps::body::empty()).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("x-request-id"), "{body}");
}
