//! The gRPC echo on real sockets, called by a real HTTP/2 client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use braid_testapps::faults::Faults;
use braid_testapps::grpc::client::GrpcClient;
use braid_testapps::grpc::proto::{EchoRepeatRequest, EchoReply, NOT_SERVING, SERVING};
use braid_testapps::grpc::{MAX_REPEAT, REPEAT_PATH, code};
use http::HeaderMap;
use support::*;

#[tokio::test]
async fn unary_echo_says_who_answered() {
    let (server, _) = start_grpc(config("greeter", "v2")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let reply = client.echo("hello").await.unwrap();
    assert_eq!(
        reply,
        EchoReply {
            message: "hello".into(),
            name: "greeter".into(),
            version: "v2".into(),
            pod: "greeter-v2-pod".into(),
            sequence: 1
        }
    );
    // The same connection carries the next call.
    assert_eq!(client.echo("").await.unwrap().message, "");
}

#[tokio::test]
async fn bidirectional_stream_answers_each_message_as_it_arrives() {
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let mut stream = client.echo_stream(&HeaderMap::new()).await.unwrap();
    // Each reply is read before the next message is sent: a server that waited for the end of
    // the request stream would hang here.
    for sequence in 1..=5 {
        let message = format!("message {sequence}");
        stream.send(&message).await.unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), stream.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((reply.message, reply.sequence, reply.name.as_str()), (message, sequence, "greeter"));
    }
    stream.close_send();
    assert_eq!(stream.recv().await.unwrap(), None, "the call ends with OK once the client is done");
}

fn repeat(message: &str, count: u32) -> Vec<Vec<u8>> {
    vec![EchoRepeatRequest { message: message.into(), count }.encode()]
}

#[tokio::test]
async fn server_stream_answers_count_times_then_ok() {
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    // `call` returns the messages only once the trailers said OK.
    let replies = client.call(REPEAT_PATH, repeat("again", 10), &HeaderMap::new()).await.unwrap();
    let replies: Vec<EchoReply> = replies.iter().map(|reply| EchoReply::decode(reply).unwrap()).collect();
    assert_eq!(replies.len(), 10);
    for (index, reply) in replies.iter().enumerate() {
        assert_eq!((reply.message.as_str(), reply.sequence), ("again", index as u64 + 1));
        assert_eq!((reply.name.as_str(), reply.pod.as_str()), ("greeter", "greeter-v1-pod"));
    }
    // The cap itself is allowed, and arrives whole.
    let replies = client.call(REPEAT_PATH, repeat("", MAX_REPEAT), &HeaderMap::new()).await.unwrap();
    assert_eq!(replies.len(), MAX_REPEAT as usize);
    let last = EchoReply::decode(replies.last().unwrap()).unwrap();
    assert_eq!(last.sequence, u64::from(MAX_REPEAT));
}

#[tokio::test]
async fn server_stream_refuses_bad_counts_and_malformed_requests() {
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    for count in [0, MAX_REPEAT + 1, u32::MAX] {
        let err = client.call(REPEAT_PATH, repeat("x", count), &HeaderMap::new()).await.unwrap_err();
        assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("count {count} is out of range")), "{text}");
        assert!(text.contains(&format!("1 to {MAX_REPEAT}")), "{text}");
    }
    // A field that ends early, two messages, and none.
    let err = client.call(REPEAT_PATH, vec![vec![0x0a, 0x09]], &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
    let mut two = repeat("x", 1);
    two.extend(repeat("y", 1));
    let err = client.call(REPEAT_PATH, two, &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
    let err = client.call(REPEAT_PATH, vec![], &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
    // The connection still serves.
    assert_eq!(client.call(REPEAT_PATH, repeat("ok", 2), &HeaderMap::new()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn server_stream_takes_injected_faults() {
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let failing = headers(&[("x-echo-fail-rate", "1")]);
    let err = client.call(REPEAT_PATH, repeat("x", 3), &failing).await.unwrap_err();
    assert_eq!(err.code(), Some(code::UNAVAILABLE), "{err}");
}

#[tokio::test]
async fn injected_failures_are_unavailable() {
    let mut failing = config("greeter", "v1");
    failing.faults = Faults { fail_rate: 1.0, ..Faults::default() };
    let (server, _) = start_grpc(failing).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let err = client.echo("hello").await.unwrap_err();
    assert_eq!(err.code(), Some(code::UNAVAILABLE), "{err}");
    assert!(err.to_string().contains("injected failure"), "{err}");
    let mut stream = client.echo_stream(&HeaderMap::new()).await.unwrap();
    stream.close_send();
    assert_eq!(stream.recv().await.unwrap_err().code(), Some(code::UNAVAILABLE));

    // And per call, by header, on a healthy server.
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let err = client.echo_with("hello", &headers(&[("x-echo-fail-rate", "1")])).await.unwrap_err();
    assert_eq!(err.code(), Some(code::UNAVAILABLE));
    let err = client.echo_with("hello", &headers(&[("x-echo-fail-rate", "2")])).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
    assert_eq!(client.echo("hello").await.unwrap().message, "hello");
}

#[tokio::test]
async fn unknown_methods_and_malformed_calls_get_a_status() {
    let (server, _) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    let err = client.call("/braid.echo.v1.Echo/Nope", vec![vec![]], &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::UNIMPLEMENTED), "{err}");
    let err =
        client.call("/braid.echo.v1.Echo/Echo", vec![vec![], vec![]], &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
    let err =
        client.call("/braid.echo.v1.Echo/Echo", vec![vec![0x0a, 0x09]], &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_ARGUMENT), "{err}");
}

#[tokio::test]
async fn health_check_follows_shutdown() {
    let (server, grpc) = start_grpc(config("greeter", "v1")).await;
    let mut client = GrpcClient::connect(&server.addr.to_string()).await.unwrap();
    assert_eq!(client.health().await.unwrap(), SERVING);
    grpc.set_shutting_down();
    assert_eq!(client.health().await.unwrap(), NOT_SERVING);
}

#[tokio::test]
async fn the_binaries_serve_and_call() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = binary("grpc-echo")
        .args(["--listen", &addr, "--name", "greeter", "--app-version", "v9"])
        .env("POD_NAME", "greeter-0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(addr.parse().unwrap()).await;
    let output = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run("grpc-echo", &["call", &addr, "--message", "hi", "--stream", "3"])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let replies: Vec<EchoReply> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(replies.len(), 3);
    assert_eq!((replies[2].message.as_str(), replies[2].sequence), ("hi 3", 3));
    assert_eq!((replies[0].version.as_str(), replies[0].pod.as_str()), ("v9", "greeter-0"));
    let output = tokio::task::spawn_blocking(move || {
        run("grpc-echo", &["call", &addr, "--header", "x-echo-fail-rate: 1"])
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gRPC status 14") && stderr.contains("injected failure"), "{stderr}");
    sigterm(&server);
    let output =
        tokio::task::spawn_blocking(move || wait_with_timeout(server, std::time::Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(output.status.success(), "grpc-echo did not stop cleanly on SIGTERM: {output:?}");
}
