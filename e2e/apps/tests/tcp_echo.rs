//! The TCP echo on real sockets: the greeting comes first, every byte comes back, and a server
//! that never greets is reported as such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use braid_testapps::tcp_echo::{self, call};
use support::{binary, wait_listening};
use tokio::net::TcpListener;

#[tokio::test]
async fn every_byte_comes_back_after_the_greeting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(tcp_echo::echo_connection(stream, "pod-a"));
        }
    });
    let report = call(&addr.to_string(), 4, 100_000, 1000).await;
    assert_eq!(report.failed_connections, 0, "{report:?}");
    assert_eq!((report.bytes_sent, report.bytes_echoed), (400_000, 400_000));
    assert_eq!(report.pods.get("pod-a"), Some(&4));
}

#[tokio::test]
async fn a_server_that_closes_without_greeting_or_garbles_the_echo_fails_the_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // The first connection is closed at once; the second is greeted and gets wrong bytes.
        let (closed, _) = listener.accept().await.unwrap();
        drop(closed);
        let (mut stream, _) = listener.accept().await.unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.write_all(b"braid-tcp-echo pod-b\n").await.unwrap();
        let mut buffer = vec![0; 10];
        stream.read_exact(&mut buffer).await.unwrap();
        stream.write_all(&[0; 10]).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let first = call(&addr.to_string(), 1, 10, 10).await;
    assert_eq!(first.failed_connections, 1, "{first:?}");
    assert!(first.errors[0].contains("closed before the greeting"), "{first:?}");
    assert_eq!(first.bytes_sent, 0, "nothing is sent before the greeting: {first:?}");
    let second = call(&addr.to_string(), 1, 10, 10).await;
    assert_eq!((second.failed_connections, second.bytes_echoed), (1, 0), "{second:?}");
    assert!(second.errors[0].contains("first difference"), "{second:?}");
}

#[tokio::test]
async fn the_binaries_serve_and_call() {
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server =
        binary("tcp-echo").args(["serve", "--listen", &listen, "--pod", "tcp-0"]).spawn().unwrap();
    wait_listening(listen.parse().unwrap()).await;
    let output = tokio::task::spawn_blocking(move || {
        let child = binary("tcp-echo")
            .args(["call", "--target", &listen, "--connections", "3", "--bytes", "50000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        support::wait_with_timeout(child, Duration::from_secs(20))
    })
    .await
    .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let report: tcp_echo::CallReport = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((report.bytes_echoed, report.pods.get("tcp-0")), (150_000, Some(&3)), "{report:?}");
}
