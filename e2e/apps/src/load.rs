//! The load client: requests at a fixed rate (open loop: a slow server does not slow the
//! schedule, and each request's latency counts from when it was due, so queueing shows), and a
//! report of what came back: status codes, errors, latency, and answers per backend (the echo
//! servers' name and version) and per pod. With `--serve`, the report is read and the sending
//! stopped over HTTP, and the report dates the first and last successful answers (Unix time, so a
//! test on the same machine can place a change it made inside the load's window). With a trace
//! option every request carries a W3C `traceparent`, and with OTEL_EXPORTER_OTLP_ENDPOINT set each
//! sampled one is reported as a root client span.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::histogram::Histogram;
use crate::serve::Handler;
use crate::trace::{self, Exporter, Span, SpanKind, TRACEPARENT};

/// The highest rate accepted: far above what one client process can send, low enough that a
/// typo (an extra zero or three) is caught.
pub const MAX_RATE: f64 = 100_000.0;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: Uri,
    /// Requests per second.
    pub rate: f64,
    /// None: until stopped.
    pub duration: Option<Duration>,
    /// Requests in flight at most; a request due while this many are open is not sent and is
    /// counted as an error of kind "saturated".
    pub concurrency: usize,
    /// Per request, from sending to the end of the answer.
    pub timeout: Duration,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Reuse connections (the default); without, every request opens a new one.
    pub keepalive: bool,
    pub headers: HeaderMap,
    /// The method of every request (GET by default; the body is empty whatever it is).
    pub method: Method,
    /// Give each request an `x-request-id` of its own (this run's random prefix and the
    /// request's number), so that a server can tell a retry from a new request.
    pub request_ids: bool,
    /// Send a `traceparent` with every request.
    pub trace: Option<TraceOptions>,
    /// Report a root client span for each sampled request.
    pub exporter: Option<Exporter>,
}

/// The trace context the load client starts for each request: a new parent (span) id each time,
/// the trace id given or a new random one, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceOptions {
    /// None: a new random trace for each request.
    pub trace_id: Option<[u8; 16]>,
    pub sampled: bool,
}

/// Trace ids listed in a report at most (the first ones sent).
pub const REPORTED_TRACE_IDS: usize = 100;

/// The trace id(s) of --trace-id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceIdChoice {
    /// A new random trace for each request.
    Random,
    /// This trace for every request.
    Fixed([u8; 16]),
}

/// A trace id for --trace-id: 32 lower-case hex digits, not all zero, or "random".
pub fn parse_trace_id(text: &str) -> Result<TraceIdChoice, String> {
    let text = text.trim();
    if text == "random" {
        return Ok(TraceIdChoice::Random);
    }
    match trace::hex_bytes::<16>(text) {
        Some(id) if id != [0; 16] => Ok(TraceIdChoice::Fixed(id)),
        _ => Err(format!(
            "{text:?} is not a trace id: give 32 lower-case hex digits, not all zero, or \"random\" for a new one per request"
        )),
    }
}

impl LoadConfig {
    pub fn new(url: Uri, rate: f64) -> Self {
        Self {
            url,
            rate,
            duration: None,
            concurrency: 1000,
            timeout: Duration::from_secs(10),
            http2: false,
            keepalive: true,
            headers: HeaderMap::new(),
            method: Method::GET,
            request_ids: false,
            trace: None,
            exporter: None,
        }
    }
}

/// The methods the load client sends (with an empty body). CONNECT is not one: it would open a
/// tunnel, not make a request.
pub const METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// An HTTP method of [`METHODS`], in any case ("post" is POST).
pub fn parse_method(text: &str) -> Result<Method, String> {
    let upper = text.trim().to_ascii_uppercase();
    METHODS.iter().find(|method| method.as_str() == upper).cloned().ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
        format!("{text:?} is not a method the load client sends: use one of {}", names.join(", "))
    })
}

/// An http:// URL with a host.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let example = "write it like http://echo.demo.svc.cluster.local:8080/";
    let uri: Uri = text.parse().map_err(|err| format!("{text:?} is not a URL ({err}): {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text:?}: https is not supported; the load client speaks plaintext HTTP (in the mesh, the sidecars \
                 add mTLS)"
            ));
        }
        Some(other) => return Err(format!("{text:?}: the scheme {other:?} is not supported: {example}")),
        None => return Err(format!("{text:?} has no scheme: {example}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host: {example}"));
    }
    Ok(uri)
}

/// Requests per second: a positive number up to [`MAX_RATE`].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= MAX_RATE => Ok(rate),
        Ok(_) => Err(format!(
            "{text:?} is out of range: the rate is requests per second, more than 0 and at most {MAX_RATE}"
        )),
        Err(_) => Err(format!("{text:?} is not a number: the rate is requests per second, like 200")),
    }
}

/// A whole number of at least 1.
pub fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// "name: value".
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not a header: write it as \"name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|err| format!("{text:?}: bad header name: {err}"))?;
    let value =
        HeaderValue::from_str(value.trim()).map_err(|err| format!("{text:?}: bad header value: {err}"))?;
    Ok((name, value))
}

/// What the load client has seen. `total` = `ok` + `failed`; every scheduled request that has
/// finished (answered, failed, timed out or not sent because `concurrency` were open) is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    /// The method of every request.
    #[serde(default)]
    pub method: String,
    /// The rate asked for, requests per second.
    pub rate: f64,
    /// Since the start (or the last reset).
    pub elapsed_secs: f64,
    /// Still sending requests.
    pub running: bool,
    /// Sent, not answered yet (not in total).
    pub in_flight: u64,
    pub total: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Everything else: other statuses, errors, requests not sent.
    pub failed: u64,
    /// total / elapsed_secs.
    pub achieved_rate: f64,
    /// Answers per HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, per kind: connect, request, body, timeout, saturated.
    pub errors: BTreeMap<String, u64>,
    /// The first error message of each kind.
    pub error_examples: BTreeMap<String, String>,
    /// Answers per backend, "NAME@VERSION" from the echo servers' JSON, whatever their status;
    /// answers that are not an echo's (a proxy's 503, say) are not counted here.
    pub backends: BTreeMap<String, u64>,
    /// Answers per pod, from the same JSON.
    pub pods: BTreeMap<String, u64>,
    /// Of the answers (any status), from when each request was due to the end of its body.
    pub latency_ms: Latency,
    /// When the first and the last 2xx answer of the period arrived, milliseconds since the Unix
    /// epoch; None before the first one.
    #[serde(default)]
    pub first_ok_unix_ms: Option<u64>,
    #[serde(default)]
    pub last_ok_unix_ms: Option<u64>,
    /// When the first and the last request of the period finished, whatever the outcome: what a
    /// probe that should be refused every time proves its run with.
    #[serde(default)]
    pub first_done_unix_ms: Option<u64>,
    #[serde(default)]
    pub last_done_unix_ms: Option<u64>,
    /// The trace ids the requests carried in `traceparent` (the first REPORTED_TRACE_IDS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    /// The report for a person.
    pub fn text(&self) -> String {
        fn join<K: std::fmt::Display>(map: &BTreeMap<K, u64>, total: u64) -> String {
            if map.is_empty() {
                return "none".to_owned();
            }
            map.iter()
                .map(|(key, count)| {
                    format!("{key}: {count} ({:.1} %)", 100.0 * *count as f64 / total.max(1) as f64)
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        let answers: u64 = self.statuses.values().sum();
        let mut text = format!(
            "{}: {} requests in {:.1} s ({:.1}/s, {:.1}/s asked), {} ok, {} failed\n",
            self.url, self.total, self.elapsed_secs, self.achieved_rate, self.rate, self.ok, self.failed
        );
        text.push_str(&format!("  statuses: {}\n", join(&self.statuses, answers)));
        text.push_str(&format!("  errors:   {}\n", join(&self.errors, self.total)));
        for (kind, message) in &self.error_examples {
            text.push_str(&format!("            {kind}, e.g.: {message}\n"));
        }
        text.push_str(&format!("  backends: {}\n", join(&self.backends, self.backends.values().sum())));
        text.push_str(&format!("  pods:     {}\n", join(&self.pods, self.pods.values().sum())));
        let latency = &self.latency_ms;
        text.push_str(&format!(
            "  latency:  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {:.2} ms ({} answers)\n",
            latency.p50, latency.p90, latency.p99, latency.max, latency.mean, latency.count
        ));
        text
    }
}

/// The fields of an echo answer the client counts by; other answers do not parse.
#[derive(Deserialize)]
struct BackendId {
    name: String,
    version: String,
    #[serde(default)]
    pod: String,
}

enum Outcome {
    /// `refusal`: for an answer that is not a success, what it said (see `refusal`).
    Answer {
        status: StatusCode,
        latency: Duration,
        backend: Option<BackendId>,
        refusal: Option<String>,
    },
    Error {
        kind: &'static str,
        message: String,
    },
}

#[derive(Default)]
struct Stats {
    total: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    backends: BTreeMap<String, u64>,
    pods: BTreeMap<String, u64>,
    latency: Histogram,
    first_ok: Option<SystemTime>,
    last_ok: Option<SystemTime>,
    first_done: Option<SystemTime>,
    last_done: Option<SystemTime>,
    trace_ids: Vec<String>,
}

/// The counts, shared by the requests in flight and whoever reads the report.
pub struct Recorder {
    url: String,
    method: String,
    rate: f64,
    stats: Mutex<(Instant, Stats)>,
    in_flight: AtomicU64,
    running: AtomicBool,
    /// Set by `run` once it has stopped sending and every request it sent has finished.
    finished: watch::Sender<bool>,
}

impl Recorder {
    pub fn new(config: &LoadConfig) -> Arc<Self> {
        Arc::new(Self {
            url: config.url.to_string(),
            method: config.method.to_string(),
            rate: config.rate,
            stats: Mutex::new((Instant::now(), Stats::default())),
            in_flight: AtomicU64::new(0),
            running: AtomicBool::new(false),
            finished: watch::Sender::new(false),
        })
    }

    /// Returns once `run` has stopped sending and every request it sent has finished.
    pub async fn finished(&self) {
        let mut finished = self.finished.subscribe();
        // An error means the sender is gone, which cannot happen while `self` is alive.
        let _ = finished.wait_for(|done| *done).await;
    }

    pub fn report(&self) -> Report {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        self.report_of(stats.0, &stats.1)
    }

    /// The report up to now; then every count starts again from zero (requests in flight are
    /// counted in the new period when they finish).
    pub fn reset(&self) -> Report {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let report = self.report_of(stats.0, &stats.1);
        *stats = (Instant::now(), Stats::default());
        report
    }

    fn report_of(&self, since: Instant, stats: &Stats) -> Report {
        let elapsed_secs = since.elapsed().as_secs_f64();
        let millis = |duration: Duration| (duration.as_secs_f64() * 1e6).round() / 1e3;
        Report {
            url: self.url.clone(),
            method: self.method.clone(),
            rate: self.rate,
            elapsed_secs,
            running: self.running.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            total: stats.total,
            ok: stats.ok,
            failed: stats.total - stats.ok,
            achieved_rate: if elapsed_secs > 0.0 { stats.total as f64 / elapsed_secs } else { 0.0 },
            statuses: stats.statuses.clone(),
            errors: stats.errors.clone(),
            error_examples: stats.error_examples.clone(),
            backends: stats.backends.clone(),
            pods: stats.pods.clone(),
            latency_ms: Latency {
                count: stats.latency.count(),
                mean: millis(stats.latency.mean()),
                p50: millis(stats.latency.quantile(0.5)),
                p90: millis(stats.latency.quantile(0.9)),
                p99: millis(stats.latency.quantile(0.99)),
                max: millis(stats.latency.max()),
            },
            first_ok_unix_ms: stats.first_ok.map(unix_ms),
            last_ok_unix_ms: stats.last_ok.map(unix_ms),
            first_done_unix_ms: stats.first_done.map(unix_ms),
            last_done_unix_ms: stats.last_done.map(unix_ms),
            trace_ids: stats.trace_ids.clone(),
        }
    }

    fn record_trace_id(&self, trace_id: &[u8; 16]) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let ids = &mut stats.1.trace_ids;
        let id = trace::hex(trace_id);
        if ids.len() < REPORTED_TRACE_IDS && !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn record(&self, outcome: Outcome) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = &mut stats.1;
        stats.total += 1;
        let done = SystemTime::now();
        stats.first_done.get_or_insert(done);
        stats.last_done = Some(done);
        match outcome {
            Outcome::Answer { status, latency, backend, refusal } => {
                if let Some(refusal) = refusal {
                    stats.error_examples.entry(format!("status {}", status.as_u16())).or_insert(refusal);
                }
                if status.is_success() {
                    stats.ok += 1;
                    let now = SystemTime::now();
                    stats.first_ok.get_or_insert(now);
                    stats.last_ok = Some(now);
                }
                *stats.statuses.entry(status.as_u16()).or_default() += 1;
                stats.latency.record(latency);
                if let Some(backend) = backend {
                    *stats.backends.entry(format!("{}@{}", backend.name, backend.version)).or_default() += 1;
                    if !backend.pod.is_empty() {
                        *stats.pods.entry(backend.pod).or_default() += 1;
                    }
                }
            }
            Outcome::Error { kind, message } => {
                *stats.errors.entry(kind.to_owned()).or_default() += 1;
                stats.error_examples.entry(kind.to_owned()).or_insert(message);
            }
        }
    }
}

/// Sends requests at `config.rate` until `config.duration` has passed or `stop` fires, then
/// waits for the requests in flight (each at most `config.timeout`).
pub async fn run(config: Arc<LoadConfig>, recorder: Arc<Recorder>, stop: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(config.http2);
    if !config.keepalive {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<HttpConnector, Body> = builder.build(connector);
    // Tells this run's request ids from another's that reached the same server.
    let run_id = format!("{:016x}", fastrand::u64(..));
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let tasks = TaskTracker::new();
    recorder.running.store(true, Ordering::SeqCst);
    let start = Instant::now();
    for sequence in 0u64.. {
        // From the start, not from the previous request, so the schedule does not drift.
        let offset = Duration::from_secs_f64(sequence as f64 / config.rate);
        if config.duration.is_some_and(|duration| offset >= duration) {
            break;
        }
        let due = start + offset;
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = stop.cancelled() => break,
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let message = format!("{} requests were in flight when this one was due", config.concurrency);
            recorder.record(Outcome::Error { kind: "saturated", message });
            continue;
        };
        recorder.in_flight.fetch_add(1, Ordering::SeqCst);
        let (client, config, recorder) = (client.clone(), config.clone(), recorder.clone());
        let request_id = config.request_ids.then(|| format!("{run_id}-{sequence}"));
        let traced = config.trace.map(|options| {
            let trace_id = options.trace_id.unwrap_or_else(trace::new_trace_id);
            recorder.record_trace_id(&trace_id);
            let flags = u8::from(options.sampled);
            trace::TraceParent { trace_id, parent_id: trace::new_span_id(), flags }
        });
        tasks.spawn(async move {
            let outcome = send(&client, &config, due, request_id, traced).await;
            recorder.record(outcome);
            recorder.in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }
    recorder.running.store(false, Ordering::SeqCst);
    tasks.close();
    tasks.wait().await;
    recorder.finished.send_replace(true);
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

async fn send(
    client: &Client<HttpConnector, Body>,
    config: &LoadConfig,
    due: Instant,
    request_id: Option<String>,
    traced: Option<trace::TraceParent>,
) -> Outcome {
    let started = SystemTime::now();
    let mut request = Request::new(body::empty());
    *request.method_mut() = config.method.clone();
    *request.uri_mut() = config.url.clone();
    request.headers_mut().extend(config.headers.clone());
    // The run id is hex and the sequence a number: always a valid header value.
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        request.headers_mut().insert(HeaderName::from_static("x-request-id"), id);
    }
    // Hex and dashes: always a valid header value.
    if let Some(value) = traced.and_then(|parent| HeaderValue::from_str(&parent.header()).ok()) {
        request.headers_mut().insert(TRACEPARENT, value);
    }
    let exchange = async {
        let response = client.request(request).await.map_err(|err| {
            let kind = if err.is_connect() { "connect" } else { "request" };
            (kind, crate::error_chain(&err))
        })?;
        let (head, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|err| ("body", crate::error_chain(&err)))?.to_bytes();
        Ok::<_, (&'static str, String)>((head, bytes))
    };
    let outcome = match tokio::time::timeout(config.timeout, exchange).await {
        Err(_) => Outcome::Error {
            kind: "timeout",
            message: format!("no whole answer within {:?}", config.timeout),
        },
        Ok(Err((kind, message))) => Outcome::Error { kind, message },
        Ok(Ok((head, bytes))) => Outcome::Answer {
            status: head.status,
            latency: due.elapsed(),
            backend: serde_json::from_slice(&bytes).ok(),
            refusal: (!head.status.is_success()).then(|| refusal(&head.headers, &bytes)),
        },
    };
    if let (Some(exporter), Some(parent)) = (&config.exporter, traced)
        && parent.sampled()
    {
        exporter.export(root_span(config, parent, started, &outcome));
    }
    outcome
}

/// The root span of a traced request: its id is the parent id the request carried.
fn root_span(config: &LoadConfig, parent: trace::TraceParent, start: SystemTime, outcome: &Outcome) -> Span {
    let mut attributes = vec![
        ("http.request.method", config.method.as_str().into()),
        ("url.full", config.url.to_string().into()),
        ("server.address", config.url.host().unwrap_or_default().into()),
    ];
    match outcome {
        Outcome::Answer { status, .. } => {
            attributes.push(("http.response.status_code", i64::from(status.as_u16()).into()))
        }
        Outcome::Error { kind, .. } => attributes.push(("error.type", (*kind).into())),
    }
    Span {
        trace_id: parent.trace_id,
        span_id: parent.parent_id,
        parent_id: None,
        name: config.method.to_string(),
        kind: SpanKind::Client,
        start,
        end: SystemTime::now(),
        attributes,
    }
}

/// What an answer that is not a success said: the proxy's reason (`braid-proxy-error`) and the
/// start of the body, so a report tells which hop refused and why.
fn refusal(headers: &HeaderMap, body: &[u8]) -> String {
    let reason = headers.get("braid-proxy-error").and_then(|value| value.to_str().ok()).unwrap_or("none");
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    format!("braid-proxy-error: {reason}; body: {}", text.trim_end())
}

/// The report over HTTP, for a load client that runs in a pod: `GET /report` (JSON), `POST
/// /reset` (the report so far, then zero), `POST /stop` (cancels `stop`, which must stop `run`,
/// and answers the final report once every request sent has finished), `GET /healthz`.
pub fn report_handler(recorder: Arc<Recorder>, stop: CancellationToken) -> Handler {
    Arc::new(move |request, _peer| {
        let (recorder, stop) = (recorder.clone(), stop.clone());
        Box::pin(async move {
            let report = match (request.method(), request.uri().path()) {
                (&Method::GET, "/report") => recorder.report(),
                (&Method::POST, "/reset") => recorder.reset(),
                (&Method::POST, "/stop") => {
                    stop.cancel();
                    recorder.finished().await;
                    recorder.report()
                }
                (&Method::GET, "/healthz") => {
                    return answer(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"));
                }
                _ => {
                    let text = "GET /report, POST /reset, POST /stop or GET /healthz\n";
                    return answer(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(text.as_bytes()));
                }
            };
            match serde_json::to_vec(&report) {
                Ok(json) => answer(StatusCode::OK, "application/json", json.into()),
                Err(err) => answer(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", err.to_string().into()),
            }
        })
    })
}

fn answer(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert_eq!(parse_url("http://echo.demo.svc.cluster.local:8080/").unwrap().port_u16(), Some(8080));
        assert!(parse_url("https://echo/").unwrap_err().contains("https is not supported"));
        assert!(parse_url("ftp://echo/").unwrap_err().contains("scheme \"ftp\""));
        assert!(parse_url("echo:8080").unwrap_err().contains("no scheme"));
        assert!(parse_url("/path").unwrap_err().contains("no scheme"));
        assert!(parse_url("http://exa mple/").unwrap_err().contains("is not a URL"));
    }

    #[test]
    fn rates_and_headers() {
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "1e9", "inf", "NaN"] {
            assert!(parse_rate(bad).unwrap_err().contains("out of range"), "{bad}");
        }
        assert!(parse_rate("fast").unwrap_err().contains("not a number"));
        let (name, value) = parse_header("X-Echo-Fail-Rate: 0.3").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-echo-fail-rate", "0.3"));
        assert!(parse_header("novalue").unwrap_err().contains("name: value"));
        assert!(parse_header("bad name: 1").unwrap_err().contains("bad header name"));
        assert_eq!(parse_positive("8"), Ok(8));
        assert!(parse_positive("0").is_err());
    }

    #[test]
    fn methods_are_the_usual_ones_in_any_case() {
        assert_eq!(parse_method("POST"), Ok(Method::POST));
        assert_eq!(parse_method("post"), Ok(Method::POST));
        assert_eq!(parse_method(" Delete "), Ok(Method::DELETE));
        for bad in ["", "FETCH", "CONNECT", "GET /", "P0ST"] {
            let err = parse_method(bad).unwrap_err();
            assert!(err.contains("is not a method") && err.contains("GET, HEAD, POST"), "{bad}: {err}");
        }
    }
}
