//! The braid-proxy binary as the kubelet runs it: starts from a file, refuses a bad one with the
//! reason, and drains on SIGTERM (in-flight requests finish, then it exits 0).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let slow = Upstream::start("slow").await;
    *slow.delay.lock().unwrap() = Duration::from_millis(800);
    let (admin, listen) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        format!(
            "admin: 127.0.0.1:{admin}\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n\
             services:\n  - name: slow\n    listen: 127.0.0.1:{listen}\n    backends: [{{ name: s, endpoints: [{{ address: \"{}\" }}] }}]\n    routes: [{{ backends: [{{ name: s }}] }}]\n",
            slow.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid-proxy"))
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the proxy is ready", || async {
        let url = format!("http://127.0.0.1:{admin}/ready");
        tokio::spawn(async move {
            let client = http1_client();
            let request = http::Request::get(url).body(full("")).unwrap();
            client.request(request).await.map(|r| r.status() == StatusCode::OK).unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    })
    .await;
    let in_flight = tokio::spawn(async move { get(&format!("http://127.0.0.1:{listen}/")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"), "the request in flight finished");
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the proxy did not exit after draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

#[test]
fn a_bad_config_file_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, "services:\n  - name: x\n    backends: []\n    routes: []\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_braid-proxy")).arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services[0].backends: a service needs at least one backend"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_braid-proxy"))
        .args(["--config", "/nonexistent/braid.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the configuration file"));
}
