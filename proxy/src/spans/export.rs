//! Finished spans, sent to the collector in batches with OTLP/HTTP (protobuf). The queue is
//! bounded: when the collector is slow or gone, spans beyond it are dropped and counted, and no
//! request ever waits for the export.

use std::sync::OnceLock;
use std::time::Duration;

use braid_api::config::CollectorEndpoint;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as proto, ResourceSpans, ScopeSpans, span, status};
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ProxyResource, Span, SpanKind};

/// Finished spans waiting for export; beyond this they are dropped. A span takes a few hundred
/// bytes, so the queue holds well under a megabyte.
const QUEUE: usize = 2048;
/// Spans per export request at most.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// A connection and request to the collector that take longer fail; their spans are lost.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a collector's answer read (its error message).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What became of the spans: `trace_spans_total{result}`.
#[derive(Clone, Default)]
pub struct SpanCounters {
    pub exported: Counter,
    /// The queue was full (the collector is slower than the traffic) or there was no runtime.
    pub dropped: Counter,
    /// The collector could not be reached or refused them.
    pub failed: Counter,
}

/// One collector and the task that sends to it, started with the first span. The task ends
/// once the exporter and every span under way are gone.
pub struct Exporter {
    endpoint: CollectorEndpoint,
    resource: Resource,
    queue: OnceLock<Option<mpsc::Sender<Box<Span>>>>,
    counters: SpanCounters,
}

impl Exporter {
    pub fn new(endpoint: CollectorEndpoint, resource: &ProxyResource, counters: SpanCounters) -> Self {
        let mut attributes =
            vec![string("service.name", "braid-proxy"), string("service.version", env!("CARGO_PKG_VERSION"))];
        if let Some(namespace) = &resource.pod_namespace {
            attributes.push(string("k8s.namespace.name", namespace));
        }
        if let Some(pod) = &resource.pod_name {
            attributes.push(string("k8s.pod.name", pod));
        }
        let resource = Resource { attributes, ..Default::default() };
        Self { endpoint, resource, queue: OnceLock::new(), counters }
    }

    pub(super) fn send(&self, span: Box<Span>) {
        let queue = self.queue.get_or_init(|| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (sender, receiver) = mpsc::channel(QUEUE);
            let collector = Collector {
                endpoint: self.endpoint.clone(),
                resource: self.resource.clone(),
                counters: self.counters.clone(),
                connection: None,
            };
            runtime.spawn(collector.run(receiver));
            Some(sender)
        });
        match queue {
            Some(sender) if sender.try_send(span).is_ok() => {}
            _ => {
                self.counters.dropped.inc();
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connecting to {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP to the collector failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the collector answered {status}: {answer}")]
    Refused { status: http::StatusCode, answer: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

struct Collector {
    endpoint: CollectorEndpoint,
    resource: Resource,
    counters: SpanCounters,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Collector {
    async fn run(mut self, mut queue: mpsc::Receiver<Box<Span>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut failing = false;
        let mut open = true;
        while open {
            let Some(first) = queue.recv().await else { return };
            batch.push(first);
            let deadline = tokio::time::sleep(BATCH_DELAY);
            tokio::pin!(deadline);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    span = queue.recv() => match span {
                        Some(span) => batch.push(span),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = &mut deadline => break,
                }
            }
            let body = encode(&self.resource, &batch);
            let count = batch.len() as u64;
            batch.clear();
            let sent = tokio::time::timeout(EXPORT_TIMEOUT, self.post(body))
                .await
                .unwrap_or(Err(ExportError::Timeout(EXPORT_TIMEOUT)));
            match sent {
                Ok(()) => {
                    self.counters.exported.inc_by(count);
                    if failing {
                        info!(collector = %self.address(), "spans reach the collector again");
                        failing = false;
                    }
                }
                Err(error) => {
                    self.counters.failed.inc_by(count);
                    self.connection = None;
                    // Once per outage: trace_spans_total{result="failed"} counts the rest.
                    if !failing {
                        warn!(collector = %self.address(), %error, spans = count, "exporting spans failed; dropping them until the collector answers");
                        failing = true;
                    }
                }
            }
        }
    }

    fn address(&self) -> String {
        if self.endpoint.host.contains(':') {
            format!("[{}]:{}", self.endpoint.host, self.endpoint.port)
        } else {
            format!("{}:{}", self.endpoint.host, self.endpoint.port)
        }
    }

    async fn post(&mut self, body: Vec<u8>) -> Result<(), ExportError> {
        let address = self.address();
        let mut sender = match self.connection.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                    .await
                    .map_err(|error| ExportError::Connect(address.clone(), error))?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
        };
        sender.ready().await?;
        let request = Request::post(self.endpoint.traces_path.as_str())
            .header(header::HOST, address.as_str())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        // The path was checked with the configuration; a request that cannot be built is a
        // refusal of ours, reported like the collector's.
        let request = request.map_err(|error| ExportError::Refused {
            status: http::StatusCode::BAD_REQUEST,
            answer: format!("the request to {} cannot be built: {error}", self.endpoint.traces_path),
        })?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read to the end, so the connection can carry the next batch.
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
        if !status.is_success() {
            let answer = answer.map(|body| String::from_utf8_lossy(&body.to_bytes()).into_owned());
            return Err(ExportError::Refused { status, answer: answer.unwrap_or_default() });
        }
        if answer.is_ok() {
            self.connection = Some(sender);
        }
        Ok(())
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

/// The OTLP export request of a batch: one resource (this proxy), one scope, the spans with
/// OpenTelemetry's HTTP attribute names and Braid's own under `braid.`.
pub(super) fn encode(resource: &Resource, batch: &[Box<Span>]) -> Vec<u8> {
    let spans = batch.iter().map(|span| to_proto(span)).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "braid-proxy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Span flags: the trace flags, and that the parent (when there is one) is in another process.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn to_proto(span: &Span) -> proto::Span {
    let (kind, direction) = match span.kind {
        SpanKind::Server => (span::SpanKind::Server, "inbound"),
        SpanKind::Client => (span::SpanKind::Client, "outbound"),
    };
    let mut attributes = vec![
        string("braid.direction", direction),
        string("http.request.method", span.method.as_str()),
        string("url.path", &span.path),
        string("server.address", &span.authority),
        int("http.response.body.size", i64::try_from(span.response_size).unwrap_or(i64::MAX)),
    ];
    if span.status_code != 0 {
        attributes.push(int("http.response.status_code", i64::from(span.status_code)));
    }
    if let Some(size) = span.request_size {
        attributes.push(int("http.request.body.size", i64::try_from(size).unwrap_or(i64::MAX)));
    }
    if !span.route.is_empty() {
        attributes.push(string("braid.route", &span.route));
    }
    if !span.peer_identity.is_empty() {
        attributes.push(string("braid.peer.identity", &span.peer_identity));
    }
    let outcome = match span.outcome {
        super::Outcome::Complete => None,
        super::Outcome::Failed => Some("the response body broke off or its gRPC status was not OK"),
        super::Outcome::Cancelled => Some("the client went away before the response ended"),
    };
    if let Some(outcome) = outcome {
        attributes.push(string("braid.outcome", outcome));
    }
    let status = if span.is_error() {
        let message = outcome.map_or_else(|| format!("HTTP {}", span.status_code), str::to_owned);
        proto::Status { code: status::StatusCode::Error as i32, message }
    } else {
        proto::Status::default()
    };
    let flags = 1 | HAS_IS_REMOTE | if span.parent_id.is_some() { IS_REMOTE } else { 0 };
    proto::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id: span.parent_id.map(|id| id.to_vec()).unwrap_or_default(),
        flags,
        name: format!("{} {}", span.method, span.authority),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.start_unix_nanos.saturating_add(span.duration_nanos),
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{Outcome, Tracer};
    use braid_api::config::TracingConfig;
    use http::{HeaderMap, Method};

    fn attribute<'a>(span: &'a proto::Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn a_batch_is_one_resource_with_the_spans_and_their_attributes() {
        let config = TracingConfig { collector: "http://127.0.0.1:9".into(), sampling_percent: 100.0 };
        let resource = ProxyResource { pod_namespace: Some("shop".into()), pod_name: Some("web-1".into()) };
        let tracer = Tracer::new(config, &resource, SpanCounters::default()).expect("valid");
        let mut span =
            tracer.start(SpanKind::Client, &mut HeaderMap::new(), &Method::GET, "/items").expect("100 %");
        span.authority = "api.shop.svc.cluster.local:80".into();
        span.route = "items".into();
        span.peer_identity = "spiffe://cluster.local/ns/shop/sa/api".into();
        span.answered(503);
        span.response_size = 42;
        span.outcome = Outcome::Complete;

        let encoded = encode(&tracer.exporter.resource, &[span]);
        let decoded = ExportTraceServiceRequest::decode(encoded.as_slice()).expect("valid protobuf");
        let resource_spans = &decoded.resource_spans[0];
        let resource = resource_spans.resource.as_ref().expect("a resource");
        let names: Vec<&str> = resource.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(names, ["service.name", "service.version", "k8s.namespace.name", "k8s.pod.name"]);
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert!(span.parent_span_id.is_empty(), "a root span");
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.name, "GET api.shop.svc.cluster.local:80");
        assert_eq!(attribute(span, "http.response.status_code"), Some(&any_value::Value::IntValue(503)));
        assert_eq!(attribute(span, "http.response.body.size"), Some(&any_value::Value::IntValue(42)));
        assert_eq!(attribute(span, "braid.route"), Some(&any_value::Value::StringValue("items".into())));
        assert_eq!(
            attribute(span, "braid.peer.identity"),
            Some(&any_value::Value::StringValue("spiffe://cluster.local/ns/shop/sa/api".into()))
        );
        let status = span.status.as_ref().expect("a status");
        assert_eq!((status.code, status.message.as_str()), (status::StatusCode::Error as i32, "HTTP 503"));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }

    #[tokio::test]
    async fn spans_beyond_the_queue_are_dropped_and_counted_not_waited_for() {
        // Port 9 (discard) has no listener here: every export fails, slowly or at once; the
        // queue fills meanwhile and sending never blocks.
        let config = TracingConfig { collector: "http://127.0.0.1:9".into(), sampling_percent: 100.0 };
        let counters = SpanCounters::default();
        let tracer = Tracer::new(config, &ProxyResource::default(), counters.clone()).expect("valid");
        let started = std::time::Instant::now();
        for _ in 0..QUEUE + 500 {
            let span =
                tracer.start(SpanKind::Server, &mut HeaderMap::new(), &Method::GET, "/").expect("100 %");
            span.finish(Outcome::Complete);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "sending spans waited: {:?}", started.elapsed());
        // The export task has not run yet (one thread, no await): the queue holds QUEUE spans.
        assert_eq!(counters.dropped.get(), 500);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counters.failed.get() < QUEUE as u64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counters.failed.get(), QUEUE as u64, "each queued span counted once as failed");
        assert_eq!(counters.exported.get(), 0);
    }
}
