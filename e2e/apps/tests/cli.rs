//! Bad flags are refused before anything starts, with a message that says what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::run;

fn refused(binary: &str, args: &[&str], expected: &[&str]) {
    let output = run(binary, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{binary} {args:?} was accepted: {stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "{binary} {args:?}: {needle:?} not in: {stderr}");
    }
}

#[test]
fn load_refuses_bad_urls_rates_and_durations() {
    refused("load", &["--rate", "10"], &["--url"]);
    refused("load", &["--url", "ftp://echo/"], &["scheme \"ftp\" is not supported"]);
    refused("load", &["--url", "https://echo/"], &["https is not supported"]);
    refused("load", &["--url", "echo.demo"], &["no scheme", "http://echo.demo.svc.cluster.local:8080/"]);
    refused("load", &["--url", "http://echo/", "--rate", "0"], &["--rate", "out of range"]);
    refused("load", &["--url", "http://echo/", "--rate", "many"], &["--rate", "not a number"]);
    refused("load", &["--url", "http://echo/", "--duration", "30"], &["--duration", "not a duration"]);
    refused("load", &["--url", "http://echo/", "--duration", "0s"], &["--duration must be longer than 0s"]);
    refused("load", &["--url", "http://echo/", "--concurrency", "0"], &["--concurrency", "at least 1"]);
    refused("load", &["--url", "http://echo/", "--header", "nocolon"], &["name: value"]);
    refused(
        "load",
        &["--url", "http://echo/", "--method", "FETCH"],
        &["--method", "\"FETCH\" is not a method", "POST"],
    );
    refused("load", &["--url", "http://echo/", "--method", "CONNECT"], &["--method", "is not a method"]);
}

#[test]
fn tcp_echo_refuses_bad_targets_and_counts() {
    refused("tcp-echo", &["call"], &["--target"]);
    refused("tcp-echo", &["call", "--target", "tcp-echo"], &["--target", "has no port"]);
    refused("tcp-echo", &["call", "--target", "tcp-echo:0"], &["--target", "from 1 to 65535"]);
    refused(
        "tcp-echo",
        &["call", "--target", "x:9000", "--connections", "0"],
        &["--connections", "at least 1"],
    );
    refused("tcp-echo", &["serve", "--listen", "localhost"], &["--listen"]);
}

#[test]
fn servers_refuse_bad_fault_settings() {
    refused("echo", &["--fail-rate", "1.5"], &["--fail-rate", "out of range"]);
    refused("echo", &["--delay", "6"], &["--delay", "not a duration"]);
    refused("echo", &["--delay-rate=-1"], &["--delay-rate", "out of range"]);
    refused("echo", &["--fail-status", "200"], &["--fail-status", "400 to 599"]);
    refused("echo", &["--listen", "localhost"], &["--listen"]);
    refused("grpc-echo", &["--fail-rate", "2"], &["--fail-rate", "out of range"]);
    refused("grpc-echo", &["call"], &["<TARGET>"]);
}

#[test]
fn every_binary_tells_its_version() {
    for binary in ["echo", "grpc-echo", "load", "tcp-echo"] {
        let output = run(binary, &["--version"]);
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!("{binary} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}
