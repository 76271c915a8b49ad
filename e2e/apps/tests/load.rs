//! The load client against real echo servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use braid_testapps::faults::Faults;
use braid_testapps::load::{self, LoadConfig, Recorder, Report};
use support::*;
use tokio_util::sync::CancellationToken;

async fn load(config: LoadConfig) -> Report {
    let config = Arc::new(config);
    let recorder = Recorder::new(&config);
    load::run(config, recorder.clone(), CancellationToken::new()).await;
    recorder.report()
}

fn config_for(url: &str, rate: f64, duration: Duration) -> LoadConfig {
    let mut config = LoadConfig::new(load::parse_url(url).unwrap(), rate);
    config.duration = Some(duration);
    config
}

#[tokio::test]
async fn counts_answers_per_backend_of_two_echo_servers() {
    // Two servers on one port (SO_REUSEPORT): the kernel spreads connections over them.
    let first = start_on(
        shared_listener("127.0.0.1:0".parse().unwrap()),
        braid_testapps::echo::Echo::new(config("reviews", "v1")).handler(),
    );
    let _second = start_on(
        shared_listener(first.addr),
        braid_testapps::echo::Echo::new(config("reviews", "v2")).handler(),
    );
    let mut config = config_for(&format!("http://{}/", first.addr), 200.0, Duration::from_secs(1));
    config.keepalive = false;
    let report = load(config).await;
    assert_eq!((report.total, report.ok, report.failed), (200, 200, 0), "{report:#?}");
    assert_eq!(report.statuses.get(&200), Some(&200));
    let v1 = report.backends.get("reviews@v1").copied().unwrap_or(0);
    let v2 = report.backends.get("reviews@v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "{:?}", report.backends);
    assert!(v1 > 20 && v2 > 20, "both backends answer: {:?}", report.backends);
    assert_eq!(report.pods.get("reviews-v1-pod"), Some(&v1));
    assert_eq!(report.pods.get("reviews-v2-pod"), Some(&v2));
    assert_eq!(report.latency_ms.count, 200);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.p99);
    assert!(!report.running);
    assert_eq!(report.in_flight, 0);
}

#[tokio::test]
async fn counts_statuses_and_errors_honestly() {
    let mut failing = config("ratings", "v1");
    failing.faults =
        Faults { fail_rate: 1.0, fail_status: http::StatusCode::BAD_GATEWAY, ..Faults::default() };
    let server = start_echo(failing).await;
    let report =
        load(config_for(&format!("http://{}/", server.addr), 100.0, Duration::from_millis(500))).await;
    assert_eq!((report.total, report.ok, report.failed), (50, 0, 50), "{report:#?}");
    assert_eq!(report.statuses.get(&502), Some(&50));
    assert_eq!(report.backends.get("ratings@v1"), Some(&50), "failed answers still name their backend");
    // What a failed answer said, for the one reading a report: the echo's own 502 carries no
    // proxy reason.
    let example = &report.error_examples["status 502"];
    assert!(example.starts_with("braid-proxy-error: none; body: "), "{example}");

    // Nothing listens: every request is a connect error, none is dropped from the count.
    let report =
        load(config_for(&format!("http://127.0.0.1:{}/", free_port()), 100.0, Duration::from_millis(500)))
            .await;
    assert_eq!((report.total, report.failed), (50, 50), "{report:#?}");
    assert_eq!(report.errors.get("connect"), Some(&50));
    assert!(report.error_examples["connect"].contains("onnection refused"), "{:?}", report.error_examples);
    assert!(report.statuses.is_empty() && report.backends.is_empty());
}

#[tokio::test]
async fn slow_answers_time_out_and_show_in_latency() {
    let mut slow = config("slow", "v1");
    slow.faults = Faults { delay: Duration::from_millis(150), ..Faults::default() };
    let server = start_echo(slow).await;
    let report =
        load(config_for(&format!("http://{}/", server.addr), 50.0, Duration::from_millis(400))).await;
    assert_eq!((report.total, report.ok), (20, 20), "{report:#?}");
    assert!(report.latency_ms.p50 >= 150.0, "{:?}", report.latency_ms);

    let mut config = config_for(&format!("http://{}/", server.addr), 50.0, Duration::from_millis(400));
    config.timeout = Duration::from_millis(50);
    let report = load(config).await;
    assert_eq!(report.errors.get("timeout"), Some(&20), "{report:#?}");
    assert_eq!(report.failed, 20);

    // One request in flight at most: the ones due meanwhile are not sent, and are counted.
    let mut config = config_for(&format!("http://{}/", server.addr), 50.0, Duration::from_millis(400));
    config.concurrency = 1;
    let report = load(config).await;
    assert_eq!(report.total, 20, "{report:#?}");
    let saturated = report.errors.get("saturated").copied().unwrap_or(0);
    assert!(saturated >= 14, "{report:#?}");
    assert_eq!(report.ok + saturated, 20);
}

#[tokio::test]
async fn the_binary_prints_a_json_report() {
    let server = start_echo(config("web", "v1")).await;
    let url = format!("http://{}/", server.addr);
    let output = tokio::task::spawn_blocking(move || {
        run(
            "load",
            &["--url", &url, "--rate", "50", "--duration", "1s", "--json", "--header", "x-echo-fail-rate: 0"],
        )
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Report = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report.total, report.ok), (50, 50), "{report:#?}");
    assert_eq!(report.backends.get("web@v1"), Some(&50));
    assert_eq!(report.rate, 50.0);

    let url = format!("http://{}/", server.addr);
    let output = tokio::task::spawn_blocking(move || {
        run("load", &["--url", &url, "--rate", "20", "--duration", "500ms"])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("10 requests") && text.contains("web@v1: 10 (100.0 %)"), "{text}");
}

#[tokio::test]
async fn the_binary_serves_its_report_until_sigterm() {
    let server = start_echo(config("web", "v1")).await;
    let report_addr = format!("127.0.0.1:{}", free_port());
    let child = binary("load")
        .args([
            "--url",
            &format!("http://{}/", server.addr),
            "--rate",
            "100",
            "--serve",
            &report_addr,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(report_addr.parse().unwrap(), "/healthz").await;
    let client = http1();
    let report_url = format!("http://{report_addr}/report");
    let mut report: Report;
    loop {
        report = serde_json::from_slice(&get(&client, &report_url, &[]).await.1).unwrap();
        if report.total >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(report.running && report.failed == 0, "{report:#?}");
    let (status, bytes) =
        request(&client, "POST", &format!("http://{report_addr}/reset"), &[], braid_testapps::body::empty())
            .await;
    assert_eq!(status, http::StatusCode::OK);
    let before_reset: Report = serde_json::from_slice(&bytes).unwrap();
    assert!(before_reset.total >= report.total);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    let output =
        tokio::task::spawn_blocking(move || wait_with_timeout(child, Duration::from_secs(15))).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let last: Report = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!last.running && last.in_flight == 0, "{last:#?}");
    assert!(last.total >= 10 && last.failed == 0, "counts start again after the reset: {last:#?}");
    assert_eq!(last.backends.get("web@v1"), Some(&last.total));
}

#[tokio::test]
async fn post_stop_ends_the_sending_and_the_report_dates_the_first_and_last_answers() {
    let server = start_echo(config("web", "v1")).await;
    let report_addr = format!("127.0.0.1:{}", free_port());
    let unix_ms =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let spawned = unix_ms();
    let child = binary("load")
        .args([
            "--url",
            &format!("http://{}/", server.addr),
            "--rate",
            "100",
            "--serve",
            &report_addr,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(report_addr.parse().unwrap(), "/healthz").await;
    let client = http1();
    let report_url = format!("http://{report_addr}/report");
    let first: Report = loop {
        let report: Report = serde_json::from_slice(&get(&client, &report_url, &[]).await.1).unwrap();
        if report.ok > 0 {
            break report;
        }
        assert_eq!(report.first_ok_unix_ms, None, "no answer yet, no date: {report:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first_ok = first.first_ok_unix_ms.expect("dated once answered");
    assert!(spawned <= first_ok && first_ok <= unix_ms(), "{spawned} {first_ok}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before_stop = unix_ms();
    let (status, bytes) =
        request(&client, "POST", &format!("http://{report_addr}/stop"), &[], braid_testapps::body::empty())
            .await;
    let after_stop = unix_ms();
    assert_eq!(status, http::StatusCode::OK);
    let stopped: Report = serde_json::from_slice(&bytes).unwrap();
    assert!(!stopped.running && stopped.in_flight == 0, "final once stopped: {stopped:#?}");
    assert_eq!(stopped.first_ok_unix_ms, Some(first_ok));
    let last_ok = stopped.last_ok_unix_ms.expect("dated");
    assert!(before_stop - 100 <= last_ok && last_ok <= after_stop, "{before_stop} {last_ok} {after_stop}");
    assert!(stopped.total >= 30 && stopped.failed == 0, "{stopped:#?}");

    // Stopped means stopped: nothing is sent any more, and the report stays served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later: Report = serde_json::from_slice(&get(&client, &report_url, &[]).await.1).unwrap();
    assert_eq!(later.total, stopped.total, "{later:#?}");
    // A reset starts a period with no answer yet.
    let (_, bytes) =
        request(&client, "POST", &format!("http://{report_addr}/reset"), &[], braid_testapps::body::empty())
            .await;
    assert_eq!(serde_json::from_slice::<Report>(&bytes).unwrap().total, stopped.total);
    let reset: Report = serde_json::from_slice(&get(&client, &report_url, &[]).await.1).unwrap();
    assert_eq!((reset.total, reset.first_ok_unix_ms, reset.last_ok_unix_ms), (0, None, None), "{reset:#?}");

    sigterm(&child);
    let output =
        tokio::task::spawn_blocking(move || wait_with_timeout(child, Duration::from_secs(15))).await.unwrap();
    assert!(output.status.success(), "{output:?}");
}
