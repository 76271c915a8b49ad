//! Spans of the requests the proxy forwards, when the Mesh (or the file) names a collector: one
//! per request per direction (a client span on outbound, a server span on inbound), each the
//! parent of what comes next, exported with OTLP by `export`.
//!
//! Sampling: a request with a well-formed `traceparent` follows its sampled flag; one without
//! starts a trace, sampled at the configured rate, and the decision goes on in the header so
//! every later hop agrees. An unsampled request costs a header lookup and nothing else.

mod export;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use braid_api::config::TracingConfig;
use http::{HeaderMap, Method};

pub use export::{Exporter, SpanCounters};

use crate::trace_context::{TRACEPARENT, TRACESTATE, TraceParent};

/// Which side of the hop a span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Inbound: the request as the pod's proxy received it for the app.
    Server,
    /// Outbound: the request as the app's proxy sent it to a service.
    Client,
}

/// Who the proxy is: the resource its spans belong to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyResource {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// Makes spans under one tracing configuration and hands them to its exporter.
pub struct Tracer {
    pub config: TracingConfig,
    exporter: Arc<Exporter>,
}

impl Tracer {
    /// `config` must have passed `Config::validate` (its collector address parses).
    pub fn new(config: TracingConfig, resource: &ProxyResource, counters: SpanCounters) -> Option<Self> {
        let endpoint = config.endpoint().ok()?;
        Some(Self { exporter: Arc::new(Exporter::new(endpoint, resource, counters)), config })
    }

    /// A span for this request when it is sampled; the `traceparent` going on then names the
    /// span as its parent. An unsampled request with a trace context goes on unchanged; one
    /// without gets a context that says "not sampled", so the hops after this one agree.
    pub fn start(
        &self,
        kind: SpanKind,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
    ) -> Option<Box<Span>> {
        let received = headers.get(TRACEPARENT).and_then(TraceParent::parse);
        let (trace_id, parent_id, flags) = match received {
            Some(received) if !received.sampled() => return None,
            Some(received) => (received.trace_id, Some(received.parent_id), received.flags),
            None => {
                // A new trace: whatever vendor state came with no trace context belongs to none.
                headers.remove(TRACESTATE);
                let trace_id = random_trace_id();
                if fastrand::f64() * 100.0 >= self.config.sampling_percent {
                    let unsampled = TraceParent { trace_id, parent_id: random_span_id(), flags: 0 };
                    headers.insert(TRACEPARENT, unsampled.to_header());
                    return None;
                }
                (trace_id, None, 1)
            }
        };
        let span_id = random_span_id();
        headers.insert(TRACEPARENT, TraceParent { trace_id, parent_id: span_id, flags }.to_header());
        let request_size = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        Some(Box::new(Span {
            trace_id,
            span_id,
            parent_id,
            kind,
            start_unix_nanos: unix_nanos(SystemTime::now()),
            started: Instant::now(),
            duration_nanos: 0,
            method: method.clone(),
            path: path.to_owned(),
            authority: String::new(),
            route: String::new(),
            peer_identity: String::new(),
            status_code: 0,
            request_size,
            response_size: 0,
            outcome: Outcome::Complete,
            exporter: self.exporter.clone(),
        }))
    }
}

/// How the response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// The body broke off, or gRPC trailers carried a status other than OK.
    Failed,
    /// The client went away before the body ended.
    Cancelled,
}

/// A span under way: what it will report when the response ends.
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    start_unix_nanos: u64,
    started: Instant,
    duration_nanos: u64,
    pub method: Method,
    pub path: String,
    /// Outbound: the destination service; inbound: the Host the client named (or the app's
    /// address). The span is named after it and the method.
    pub authority: String,
    /// The route that matched (outbound).
    pub route: String,
    /// The SPIFFE id the other side proved with mTLS, when it did.
    pub peer_identity: String,
    pub status_code: u16,
    pub request_size: Option<u64>,
    pub response_size: u64,
    pub outcome: Outcome,
    exporter: Arc<Exporter>,
}

impl Span {
    /// The response's status is known (its body may still be streaming).
    pub fn answered(&mut self, status_code: u16) {
        self.status_code = status_code;
    }

    /// The response has ended: the span goes to the exporter (or is counted as dropped when
    /// its queue is full).
    pub fn finish(mut self: Box<Self>, outcome: Outcome) {
        self.outcome = outcome;
        self.duration_nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let exporter = self.exporter.clone();
        exporter.send(self);
    }

    /// An error span, as OpenTelemetry's HTTP conventions say: any 5xx, a 4xx on the client side,
    /// a body that broke off.
    pub fn is_error(&self) -> bool {
        self.outcome == Outcome::Failed
            || self.status_code >= 500
            || (self.kind == SpanKind::Client && self.status_code >= 400)
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

fn random_trace_id() -> [u8; 16] {
    // All zeroes is not a valid id.
    fastrand::u128(1..).to_be_bytes()
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn tracer(percent: f64) -> Tracer {
        let config = TracingConfig { collector: "http://127.0.0.1:9".into(), sampling_percent: percent };
        Tracer::new(config, &ProxyResource::default(), SpanCounters::default()).expect("a valid collector")
    }

    fn parent(headers: &HeaderMap) -> TraceParent {
        TraceParent::parse(headers.get(TRACEPARENT).expect("a traceparent goes on")).expect("well formed")
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_sampled_request_gets_a_span_that_the_next_hop_names_as_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(SAMPLED));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let span = tracer(0.0)
            .start(SpanKind::Client, &mut headers, &Method::POST, "/a")
            .expect("sampled upstream: traced whatever the rate");
        let received = TraceParent::parse(&HeaderValue::from_static(SAMPLED)).unwrap();
        assert_eq!(span.trace_id, received.trace_id);
        assert_eq!(span.parent_id, Some(received.parent_id));
        assert_eq!(
            parent(&headers),
            TraceParent { trace_id: received.trace_id, parent_id: span.span_id, flags: 1 }
        );
        assert_eq!(headers.get(TRACESTATE).unwrap(), "vendor=1", "tracestate goes on with its trace");
        assert_eq!(span.request_size, Some(12));
    }

    #[test]
    fn an_unsampled_request_goes_on_untouched_and_makes_no_span() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(unsampled));
        assert!(tracer(100.0).start(SpanKind::Server, &mut headers, &Method::GET, "/").is_none());
        assert_eq!(headers.get(TRACEPARENT).unwrap(), unsampled);
    }

    #[test]
    fn a_request_without_context_starts_a_trace_at_the_rate_and_passes_the_decision_on() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACESTATE, HeaderValue::from_static("orphan=1"));
        let span = tracer(100.0).start(SpanKind::Client, &mut headers, &Method::GET, "/").expect("100 %");
        assert_eq!(span.parent_id, None, "a root span");
        assert_eq!(parent(&headers).parent_id, span.span_id);
        assert!(parent(&headers).sampled());
        assert!(headers.get(TRACESTATE).is_none(), "state without a trace context is dropped");

        let mut headers = HeaderMap::new();
        assert!(tracer(0.0).start(SpanKind::Client, &mut headers, &Method::GET, "/").is_none());
        assert!(!parent(&headers).sampled(), "the next hops learn it is not sampled");

        let tracer = tracer(25.0);
        let sampled = (0..4000)
            .filter(|_| tracer.start(SpanKind::Client, &mut HeaderMap::new(), &Method::GET, "/").is_some())
            .count();
        assert!((800..1200).contains(&sampled), "25 % of 4000, got {sampled}");
    }

    #[test]
    fn a_malformed_context_is_replaced_by_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"));
        let span = tracer(100.0).start(SpanKind::Server, &mut headers, &Method::GET, "/").expect("100 %");
        assert_eq!(parent(&headers).trace_id, span.trace_id);
        assert_eq!(span.parent_id, None);
    }

    #[test]
    fn errors_follow_the_http_conventions() {
        let mut span =
            tracer(100.0).start(SpanKind::Server, &mut HeaderMap::new(), &Method::GET, "/").expect("100 %");
        span.answered(404);
        assert!(!span.is_error(), "a 404 is the client's error, not the server's");
        span.kind = SpanKind::Client;
        assert!(span.is_error());
        span.kind = SpanKind::Server;
        span.answered(503);
        assert!(span.is_error());
        span.answered(200);
        span.outcome = Outcome::Failed;
        assert!(span.is_error());
    }
}
