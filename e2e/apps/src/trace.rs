//! W3C trace context and OTLP/HTTP JSON export, just enough for the test apps to report their own
//! spans to a collector: a server span for each sampled request the echo server answers, and a
//! root span for each traced request the load client sends. Configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`), so the same pods would report to any
//! OTLP collector.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Request, Uri, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::body::{self, Body};

pub const TRACEPARENT: &str = "traceparent";

/// The environment variables the OpenTelemetry SDKs read.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server = 2,
    Client = 3,
}

/// A parsed `traceparent` header (W3C Trace Context, version 00 and the forward-compatible
/// reading of later versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The header's value, or None when it is malformed: wrong length, upper-case or non-hex
    /// digits, version ff, or an all-zero trace or parent id (which the spec says to ignore).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut fields = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let version = hex_bytes::<1>(version)?[0];
        match version {
            0xff => return None,
            // Version 00 has exactly four fields; a later version may add more after a '-'.
            0 if fields.next().is_some() => return None,
            _ => {}
        }
        let trace_id = hex_bytes::<16>(trace_id)?;
        let parent_id = hex_bytes::<8>(parent_id)?;
        let flags = hex_bytes::<1>(flags)?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, flags })
    }

    /// The first well-formed `traceparent` of `headers` (there should be one).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        let value = headers.get(TRACEPARENT)?.to_str().ok()?;
        TraceParent::parse(value)
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header a participant forwards: same trace and flags, `span_id` as the parent.
    pub fn child_header(&self, span_id: [u8; 8]) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&span_id), self.flags)
    }

    /// This header as it is sent.
    pub fn header(&self) -> String {
        self.child_header(self.parent_id)
    }
}

/// Lower-case hex of `bytes`, the form of ids in `traceparent` and in OTLP JSON.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// N bytes from exactly 2N lower-case hex digits.
pub fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

/// A random span id (never all zero, which means "none").
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// A random trace id (never all zero).
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// An attribute value: OTLP's string or int.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
}

impl From<&str> for AttributeValue {
    fn from(text: &str) -> Self {
        AttributeValue::String(text.to_owned())
    }
}

impl From<String> for AttributeValue {
    fn from(text: String) -> Self {
        AttributeValue::String(text)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None for a root span.
    pub parent_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
}

fn unix_nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos()).to_string()
}

fn attributes<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a AttributeValue)>) -> Vec<Value> {
    pairs
        .into_iter()
        .map(|(key, value)| {
            // OTLP JSON writes 64-bit integers as strings.
            let value = match value {
                AttributeValue::String(text) => json!({ "stringValue": text }),
                AttributeValue::Int(n) => json!({ "intValue": n.to_string() }),
            };
            json!({ "key": key, "value": value })
        })
        .collect()
}

/// The OTLP/HTTP JSON body (ExportTraceServiceRequest) for `spans` of one resource. Ids are hex
/// strings, as the OTLP JSON mapping says (not proto3's base64).
pub fn export_request(resource: &[(&'static str, AttributeValue)], spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut value = json!({
                "traceId": hex(&span.trace_id),
                "spanId": hex(&span.span_id),
                "name": span.name,
                "kind": span.kind as i32,
                "startTimeUnixNano": unix_nanos(span.start),
                "endTimeUnixNano": unix_nanos(span.end),
                "attributes": attributes(span.attributes.iter().map(|(k, v)| (*k, v))),
            });
            if let Some(parent) = span.parent_id {
                value["parentSpanId"] = Value::from(hex(&parent));
            }
            value
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": attributes(resource.iter().map(|(k, v)| (*k, v))) },
            "scopeSpans": [{ "scope": { "name": "braid-testapps" }, "spans": spans }],
        }]
    })
}

/// Spans waiting to be sent at most; past that a span is dropped (and logged), so a collector
/// that is down cannot make an app grow without bound.
const QUEUE: usize = 4096;
/// Spans per export request at most.
const BATCH: usize = 256;

/// Sends spans to an OTLP/HTTP collector from a background task: each export takes what has
/// queued up since the last one (up to BATCH spans), so a busy app sends few requests and an
/// idle one sends each span at once. Dropping every clone stops the task after it has sent what
/// was queued.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    url: Uri,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("url", &self.url).finish()
    }
}

/// `{endpoint}/v1/traces`, as the OTLP exporter specification builds the traces URL from
/// OTEL_EXPORTER_OTLP_ENDPOINT; only http:// (the test collector speaks plaintext).
pub fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let url = format!("{}/v1/traces", endpoint.trim().trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|err| format!("{endpoint:?} is not a URL: {err}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?}: the collector's endpoint must be an http:// URL with a host"));
    }
    Ok(uri)
}

impl Exporter {
    /// Starts the export task (needs a Tokio runtime). `resource` names the app: service.name
    /// and what else identifies it.
    pub fn start(endpoint: &str, resource: Vec<(&'static str, AttributeValue)>) -> Result<Exporter, String> {
        let url = traces_url(endpoint)?;
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(url.clone(), resource, spans));
        Ok(Exporter { queue, url })
    }

    /// From the environment: None when OTEL_EXPORTER_OTLP_ENDPOINT is unset or empty;
    /// `default_name` unless OTEL_SERVICE_NAME names the service; `pod` (when known) as
    /// k8s.pod.name.
    pub fn from_env(default_name: &str, pod: &str) -> Result<Option<Exporter>, String> {
        let Some(endpoint) = std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let name = std::env::var(SERVICE_NAME_ENV)
            .ok()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name.to_owned());
        let mut resource = vec![("service.name", AttributeValue::from(name))];
        if !pod.is_empty() {
            resource.push(("k8s.pod.name", pod.into()));
        }
        let exporter =
            Exporter::start(&endpoint, resource).map_err(|err| format!("{ENDPOINT_ENV}: {err}"))?;
        Ok(Some(exporter))
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Queues `span` for export; drops it when the queue is full.
    pub fn export(&self, span: Span) {
        if let Err(err) = self.queue.try_send(span) {
            tracing::warn!(%err, url = %self.url, "span dropped: the export queue is full or closed");
        }
    }
}

async fn export_loop(
    url: Uri,
    resource: Vec<(&'static str, AttributeValue)>,
    mut spans: mpsc::Receiver<Span>,
) {
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut batch = Vec::with_capacity(BATCH);
    while spans.recv_many(&mut batch, BATCH).await > 0 {
        let body = export_request(&resource, &batch).to_string();
        let count = batch.len();
        batch.clear();
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body::full(body));
        let Ok(request) = request else { continue };
        let sent = tokio::time::timeout(Duration::from_secs(10), async {
            let response = client.request(request).await.map_err(|err| err.to_string())?;
            let status = response.status();
            let answer = response.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(300)])))
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".to_owned()));
        match sent {
            Ok(()) => tracing::debug!(%url, spans = count, "spans exported"),
            Err(err) => tracing::warn!(%url, spans = count, %err, "span export failed; these spans are lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specs_example_and_writes_it_back() {
        let parent = TraceParent::parse(GOOD).unwrap();
        assert_eq!(hex(&parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent.parent_id), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.header(), GOOD);
        assert_eq!(
            parent.child_header([1, 2, 3, 4, 5, 6, 7, 8]),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        let unsampled = TraceParent::parse(&GOOD.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
        // A later version may carry more fields; its first four are read as version 00's.
        assert!(TraceParent::parse(&format!("01{}-extra", &GOOD[2..])).is_some());
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "garbage",
            "00-abc-def-01",
            &GOOD.to_uppercase(),
            &GOOD.replace("00-4b", "ff-4b"),
            &format!("{GOOD}-extra"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_export_body_is_otlp_json_with_hex_ids() {
        let span = Span {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_id: Some([0x02; 8]),
            name: "GET".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH + Duration::from_nanos(1_000),
            end: UNIX_EPOCH + Duration::from_nanos(2_500),
            attributes: vec![("http.response.status_code", 200.into()), ("url.path", "/a".into())],
        };
        let body = export_request(&[("service.name", "front".into())], &[span]);
        let resource = &body["resourceSpans"][0];
        assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "front");
        let span = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "abababababababababababababababab");
        assert_eq!(
            (span["spanId"].as_str(), span["parentSpanId"].as_str()),
            (Some("0101010101010101"), Some("0202020202020202"))
        );
        assert_eq!(
            (span["kind"].as_i64(), span["startTimeUnixNano"].as_str(), span["endTimeUnixNano"].as_str()),
            (Some(2), Some("1000"), Some("2500"))
        );
        assert_eq!(span["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(span["attributes"][1]["value"]["stringValue"], "/a");
    }

    #[test]
    fn the_traces_url_is_the_endpoint_and_v1_traces() {
        assert_eq!(
            traces_url("http://jaeger.tracing:4318").unwrap().to_string(),
            "http://jaeger.tracing:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/base/").unwrap().to_string(), "http://c:4318/base/v1/traces");
        assert!(traces_url("https://c:4318").is_err());
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("http://exa mple").is_err());
    }
}
