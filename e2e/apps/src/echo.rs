//! The HTTP echo server: every request is answered with who answered it (name, version, pod)
//! and what it received, as JSON, after any injected delay and with any injected failure status.
//! `GET /stats` says how many requests it has echoed, so a test can count what reached a pod
//! whose answers nobody sees (a mirror's). With a next hop it calls that first and answers with
//! its status, passing the trace context on; with an exporter it reports a server span for each
//! request that arrives with a sampled `traceparent` ([`EchoTracing`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::body::{self, Body, full};
use crate::faults::Faults;
use crate::serve::Handler;
use crate::trace::{Exporter, Span, SpanKind, TRACEPARENT, TraceParent, new_span_id};

/// Delay only the first N tries of each request (`x-echo-delay` says how long): a retry of the
/// same request, told apart by its `x-request-id`, is answered at once. Per request only, since
/// it needs the request's id; what a test of per-try timeouts needs.
pub const DELAY_TRIES_HEADER: &str = "x-echo-delay-tries";
/// What tells one request's tries apart: a retry carries the same headers as the first try.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Request ids remembered for `x-echo-delay-tries`; past this many the memory starts afresh, so a
/// long run cannot grow it without bound (a test's retries follow their first try within seconds).
const REMEMBERED_REQUEST_IDS: usize = 100_000;
/// Distinct paths counted by name in /stats; the others are counted under OTHER_PATHS.
const COUNTED_PATHS: usize = 64;
pub const OTHER_PATHS: &str = "(other)";
/// The status of the next hop's answer (or 502 when there was none), when the server calls one.
pub const CALL_STATUS_HEADER: &str = "x-echo-call-status";
/// How long the call to the next hop may take, answer included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this server is and what it injects.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoConfig {
    pub name: String,
    pub version: String,
    pub pod: String,
    pub faults: Faults,
}

/// The JSON body of every answer but /healthz's, failed ones included (so a client can tell
/// which backend failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoResponse {
    pub name: String,
    pub version: String,
    pub pod: String,
    pub method: String,
    pub path: String,
    /// The query string without the `?`; empty when there is none.
    pub query: String,
    /// "HTTP/1.1" or "HTTP/2.0", as this server received the request.
    pub protocol: String,
    /// The address the connection came from: the client, or its sidecar when meshed.
    pub peer: String,
    /// Every request header, names in lower case, repeated values joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The size of the request body, which is read and dropped.
    pub body_bytes: u64,
    /// The status of this answer.
    pub status: u16,
    /// The injected delay, 0 when none.
    pub delay_ms: u64,
    /// True when this answer is an injected failure.
    pub injected_failure: bool,
    /// What the next hop answered, when this server calls one (`--call`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallOutcome>,
}

/// The call an echo server made to its next hop before answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutcome {
    pub url: String,
    /// The next hop's status; None when it did not answer.
    pub status: Option<u16>,
    /// Why there is no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `traceparent` sent with the call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The next hop's answer: its JSON, or its text.
    pub body: serde_json::Value,
}

/// What an echo server does about tracing: report a server span for each sampled request to
/// `exporter`, and call `call` (GET) for each request before answering, passing the trace on.
#[derive(Debug, Clone, Default)]
pub struct EchoTracing {
    pub exporter: Option<Exporter>,
    pub call: Option<Uri>,
}

/// The answer to `GET /stats`: the requests echoed since the server started (failed and delayed
/// ones included; /healthz and /stats not).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoStats {
    pub name: String,
    pub version: String,
    pub pod: String,
    pub requests: u64,
    /// Requests per path; paths beyond the first COUNTED_PATHS under OTHER_PATHS.
    pub paths: BTreeMap<String, u64>,
}

pub struct Echo {
    config: EchoConfig,
    tracing: EchoTracing,
    client: Client<HttpConnector, Body>,
    shutting_down: AtomicBool,
    stats: Mutex<EchoStats>,
    /// Tries seen per request id, for `x-echo-delay-tries`.
    tries: Mutex<HashMap<String, u32>>,
}

impl Echo {
    pub fn new(config: EchoConfig) -> Arc<Self> {
        Self::with_tracing(config, EchoTracing::default())
    }

    pub fn with_tracing(config: EchoConfig, tracing: EchoTracing) -> Arc<Self> {
        let stats = EchoStats {
            name: config.name.clone(),
            version: config.version.clone(),
            pod: config.pod.clone(),
            ..EchoStats::default()
        };
        Arc::new(Self {
            config,
            tracing,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            shutting_down: AtomicBool::new(false),
            stats: Mutex::new(stats),
            tries: Mutex::new(HashMap::new()),
        })
    }

    pub fn stats(&self) -> EchoStats {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn count(&self, path: &str) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.requests += 1;
        let key = if stats.paths.contains_key(path) || stats.paths.len() < COUNTED_PATHS {
            path
        } else {
            OTHER_PATHS
        };
        *stats.paths.entry(key.to_owned()).or_default() += 1;
    }

    /// Which try of request `id` this is, from 1.
    fn try_number(&self, id: &str) -> u32 {
        let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
        if tries.len() >= REMEMBERED_REQUEST_IDS && !tries.contains_key(id) {
            tries.clear();
        }
        let seen = tries.entry(id.to_owned()).or_default();
        *seen = seen.saturating_add(1);
        *seen
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let echo = self.clone();
        Arc::new(move |request, peer| {
            let echo = echo.clone();
            Box::pin(async move { echo.handle(request, peer).await })
        })
    }

    /// From now on /healthz answers 503, so readiness probes take the pod out of its Service
    /// while requests are still served.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if request.uri().path() == "/healthz" {
            return if self.shutting_down.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ok\n")
            };
        }
        if request.uri().path() == "/stats" {
            // Serializing strings and numbers cannot fail; should it ever, say so.
            return match serde_json::to_vec(&self.stats()) {
                Ok(json) => json_response(StatusCode::OK, json),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
            };
        }
        self.count(request.uri().path());
        // A server span of its own for a request that arrives with a well-formed trace context;
        // a malformed one is ignored, as if there were none.
        let started = SystemTime::now();
        let incoming = TraceParent::from_headers(request.headers());
        let span_id = new_span_id();
        let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
        let forward = incoming.map(|parent| parent.child_header(span_id));
        let response = self.answer(request, peer, forward).await;
        if let (Some(exporter), Some(parent)) = (&self.tracing.exporter, incoming)
            && parent.sampled()
        {
            exporter.export(Span {
                trace_id: parent.trace_id,
                span_id,
                parent_id: Some(parent.parent_id),
                name: method.clone(),
                kind: SpanKind::Server,
                start: started,
                end: SystemTime::now(),
                attributes: vec![
                    ("http.request.method", method.into()),
                    ("url.path", path.into()),
                    ("http.response.status_code", i64::from(response.status().as_u16()).into()),
                ],
            });
        }
        response
    }

    /// GETs the next hop with `traceparent`: what it answered.
    async fn call(&self, url: &Uri, traceparent: Option<String>) -> CallOutcome {
        let mut request = Request::new(body::empty());
        *request.uri_mut() = url.clone();
        if let Some(value) = traceparent.as_deref().and_then(|value| HeaderValue::from_str(value).ok()) {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| crate::error_chain(&err))?;
            let status = response.status().as_u16();
            let bytes =
                response.into_body().collect().await.map_err(|err| crate::error_chain(&err))?.to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, error, body) = match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok((status, bytes))) => {
                let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    serde_json::Value::from(String::from_utf8_lossy(&bytes).into_owned())
                });
                (Some(status), None, body)
            }
            Ok(Err(err)) => (None, Some(err), serde_json::Value::Null),
            Err(_) => {
                (None, Some(format!("no whole answer within {CALL_TIMEOUT:?}")), serde_json::Value::Null)
            }
        };
        CallOutcome { url: url.to_string(), status, error, traceparent, body }
    }

    /// The echo of `request`, after the call to the next hop when there is one (`traceparent`
    /// is what that call passes on).
    async fn answer(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        traceparent: Option<String>,
    ) -> Response<Body> {
        let mut faults = match self.config.faults.with_headers(request.headers()) {
            Ok(faults) => faults,
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        };
        match delay_tries(request.headers()) {
            Ok(None) => {}
            Ok(Some((limit, id))) => {
                if self.try_number(&id) > limit {
                    faults.delay = std::time::Duration::ZERO;
                }
            }
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        }
        let (parts, mut body) = request.into_parts();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => body_bytes += frame.data_ref().map_or(0, |data| data.len() as u64),
                Err(err) => {
                    tracing::debug!(%peer, %err, "reading the request body failed");
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body failed: {err}\n"),
                    );
                }
            }
        }
        let outcome = faults.roll();
        if !outcome.delay.is_zero() {
            tokio::time::sleep(outcome.delay).await;
        }
        let call = match &self.tracing.call {
            Some(url) => Some(self.call(url, traceparent).await),
            None => None,
        };
        // An injected failure wins; otherwise the answer carries the next hop's status, so a
        // client sees a failure anywhere down the chain.
        let called = call.as_ref().map(|call| {
            call.status
                .and_then(|status| StatusCode::from_u16(status).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY)
        });
        let status = outcome.fail.or(called).unwrap_or(StatusCode::OK);
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let answer = EchoResponse {
            name: self.config.name.clone(),
            version: self.config.version.clone(),
            pod: self.config.pod.clone(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            protocol: format!("{:?}", parts.version),
            peer: peer.to_string(),
            headers,
            body_bytes,
            status: status.as_u16(),
            delay_ms: u64::try_from(outcome.delay.as_millis()).unwrap_or(u64::MAX),
            injected_failure: outcome.fail.is_some(),
            call,
        };
        tracing::debug!(%peer, method = %parts.method, path = parts.uri.path(), status = status.as_u16(), "answered");
        // Serializing strings and numbers cannot fail; should it ever, an empty object beats a panic.
        let json = serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = json_response(status, json);
        if let Some(called) = called {
            response.headers_mut().insert(CALL_STATUS_HEADER, HeaderValue::from(called.as_u16()));
        }
        response
    }
}

/// `x-echo-delay-tries` and the request's id, when the header is there: how many tries of the
/// request are delayed. An error (answered 400) when it is malformed or the id is missing.
pub fn delay_tries(headers: &http::HeaderMap) -> Result<Option<(u32, String)>, String> {
    let Some(value) = headers.get(DELAY_TRIES_HEADER) else { return Ok(None) };
    let value = value.to_str().map_err(|_| format!("header {DELAY_TRIES_HEADER} is not ASCII"))?;
    let limit = parse_tries(value).map_err(|err| format!("header {DELAY_TRIES_HEADER}: {err}"))?;
    let id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|id| id.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            format!(
                "header {DELAY_TRIES_HEADER} needs an {REQUEST_ID_HEADER} header to tell one request's tries \
                 apart (load --request-ids sends one)"
            )
        })?;
    Ok(Some((limit, id.to_owned())))
}

/// A number of tries: a whole number from 0 to 100.
pub fn parse_tries(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(tries) if tries <= 100 => Ok(tries),
        _ => Err(format!("{text:?} is not a number of tries: give a whole number from 0 to 100")),
    }
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    #[test]
    fn delay_tries_need_a_number_and_a_request_id() {
        let mut headers = HeaderMap::new();
        assert_eq!(delay_tries(&headers), Ok(None));
        headers.insert(DELAY_TRIES_HEADER, "1".parse().unwrap());
        let err = delay_tries(&headers).unwrap_err();
        assert!(err.contains(REQUEST_ID_HEADER), "{err}");
        headers.insert(REQUEST_ID_HEADER, "abc-7".parse().unwrap());
        assert_eq!(delay_tries(&headers), Ok(Some((1, "abc-7".to_owned()))));
        for bad in ["-1", "two", "101", "1.5", ""] {
            headers.insert(DELAY_TRIES_HEADER, bad.parse().unwrap());
            let err = delay_tries(&headers).unwrap_err();
            assert!(err.contains(DELAY_TRIES_HEADER) && err.contains("0 to 100"), "{bad}: {err}");
        }
        assert_eq!(parse_tries(" 0 "), Ok(0));
    }

    #[test]
    fn tries_are_counted_per_request_id() {
        let echo = Echo::new(EchoConfig {
            name: "echo".into(),
            version: "v1".into(),
            pod: "pod".into(),
            faults: Faults::default(),
        });
        assert_eq!((echo.try_number("a"), echo.try_number("a"), echo.try_number("b")), (1, 2, 1));
    }

    #[test]
    fn stats_count_paths_up_to_a_bound() {
        let echo = Echo::new(EchoConfig {
            name: "echo".into(),
            version: "v1".into(),
            pod: "pod".into(),
            faults: Faults::default(),
        });
        for n in 0..COUNTED_PATHS + 10 {
            echo.count(&format!("/p{n}"));
        }
        echo.count("/p0");
        let stats = echo.stats();
        assert_eq!(stats.requests, COUNTED_PATHS as u64 + 11);
        assert_eq!(stats.paths["/p0"], 2);
        assert_eq!(stats.paths[OTHER_PATHS], 10);
        assert_eq!(stats.paths.len(), COUNTED_PATHS + 1);
    }
}
