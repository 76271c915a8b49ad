//! An OTLP/HTTP receiver for benchmarks on one machine: it answers every `POST /v1/traces` with
//! 200 once the body is read and decoded, counts the spans, and runs until killed. It stands for a
//! collector that keeps up, so a benchmark of the proxy with tracing on measures the proxy's cost
//! of making and sending spans, not a collector's.
//!
//!   otlp_sink LISTEN_PORT
//!
//! `GET /spans` answers the number of spans received so far.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: otlp_sink LISTEN_PORT";
    let port: u16 =
        std::env::args().nth(1).and_then(|p| p.parse().ok()).ok_or_else(|| anyhow::anyhow!(usage))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let spans = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let spans = spans.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(spans.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    spans: Arc<AtomicU64>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        Ok(response)
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/spans") => reply(StatusCode::OK, spans.load(Ordering::Relaxed).to_string()),
        (&Method::POST, "/v1/traces") => {
            let Ok(body) = request.into_body().collect().await else {
                return reply(StatusCode::BAD_REQUEST, "the body broke off".into());
            };
            match ExportTraceServiceRequest::decode(body.to_bytes()) {
                Ok(export) => {
                    let count = export
                        .resource_spans
                        .iter()
                        .flat_map(|resource| &resource.scope_spans)
                        .map(|scope| scope.spans.len() as u64)
                        .sum::<u64>();
                    spans.fetch_add(count, Ordering::Relaxed);
                    reply(StatusCode::OK, String::new())
                }
                Err(error) => reply(StatusCode::BAD_REQUEST, format!("not an OTLP export request: {error}")),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "POST /v1/traces or GET /spans".into()),
    }
}
