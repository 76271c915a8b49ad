//! One request forwarded to a fixed address (the app on inbound, an address no service claims on
//! outbound), and the metrics every proxied request records.

use std::time::Instant;

use http::{HeaderName, Response, StatusCode, request};

use super::headers::{client_response, propagate_trace, upstream_request};
use super::respond::{Failure, PROXY_ERROR, REQUEST_BODY, failure_response};
use crate::client::Pool;
use crate::client::body::ProxyBody;
use crate::metrics::{Answerer, Classification, GrpcStatus, RequestMetrics};

/// Where gRPC says how a call ended (a trailers-only answer carries it in the headers).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Sends one request to `pool` as it came (no route, no retry), and records it.
pub async fn forward_once(
    pool: &Pool,
    metrics: &RequestMetrics,
    parts: &mut request::Parts,
    body: ProxyBody,
) -> Response<ProxyBody> {
    let start = Instant::now();
    metrics.requests.inc();
    propagate_trace(&mut parts.headers);
    let request = upstream_request(parts, body, pool.protocol(), false, true);
    let mut response = match pool.send(request).await {
        Ok(response) => client_response(response),
        Err(error) => failure_response(&Failure::Upstream(error)),
    };
    record_at_end(metrics, Answerer::nobody(), &mut response, start);
    response
}

/// A 5xx, or a gRPC status other than OK: gRPC carries failures in grpc-status, which a
/// trailers-only response has in the headers.
pub fn is_failure<B>(response: &Response<B>) -> bool {
    response.status().is_server_error()
        || response.headers().get(GRPC_STATUS).is_some_and(|value| value.as_bytes() != b"0")
}

/// A failure (`is_failure`); a 400 of the proxy's own for a request body the client broke is
/// the client's error; anything else (4xx of the app's included, as Linkerd counts them) a
/// success.
pub fn classify<B>(response: &Response<B>) -> Classification {
    if is_failure(response) {
        Classification::failure
    } else if response.status() == StatusCode::BAD_REQUEST
        && response.headers().get(PROXY_ERROR).is_some_and(|reason| reason == REQUEST_BODY)
    {
        Classification::client_error
    } else {
        Classification::success
    }
}

/// Records, now, a response of the proxy's own: its latency, status, class and server identity.
pub fn record(metrics: &RequestMetrics, answerer: Answerer, response: &Response<ProxyBody>, start: Instant) {
    let grpc_status = GrpcStatus::of(response.headers());
    metrics.answered(response.status().as_u16(), classify(response), grpc_status, &answerer, start.elapsed());
}

/// Records a response's latency when its body's first byte passes (or its end, when it has no
/// data: time to first byte, as Linkerd measures it), and the response in response_total when
/// the body ends: whole (classified as `record` does), broken off (a failure), or dropped
/// unfinished because the client went away (cancelled).
pub fn record_at_end(
    metrics: &RequestMetrics,
    answerer: Answerer,
    response: &mut Response<ProxyBody>,
    start: Instant,
) {
    let grpc_status = GrpcStatus::of(response.headers());
    let pending =
        metrics.pending(response.status().as_u16(), classify(response), grpc_status, &answerer, start);
    response.body_mut().count_at_end(pending);
}
