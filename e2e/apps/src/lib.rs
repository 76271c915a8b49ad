//! Test apps for the end-to-end tests, one library behind these binaries:
//!
//! - `echo`: an HTTP/1.1 and h2c server that answers with its name, version and pod as JSON
//!   ([`echo::EchoResponse`]) and can be told to fail or slow down a fraction of requests;
//! - `grpc-echo`: a gRPC server with a unary and a bidirectional streaming echo ([`grpc`]);
//! - `load`: an open-loop load client that counts responses per backend and status and measures
//!   latency ([`load::Report`]);
//! - `websocket`: a WebSocket echo server and client;
//! - `tcp-echo`: a TCP echo server that speaks first and a client that checks every byte
//!   ([`tcp_echo`]).
//!
//! The echo server and the load client report their own spans to an OTLP collector when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`trace`]).

pub mod body;
pub mod cli;
pub mod echo;
pub mod faults;
pub mod grpc;
pub mod histogram;
pub mod load;
pub mod serve;
pub mod tcp_echo;
pub mod trace;

/// An error and its sources: hyper-util's own message ("client error (Connect)") says little.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
