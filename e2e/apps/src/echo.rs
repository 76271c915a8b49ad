//! The HTTP echo server: every request is answered with who answered it (name, version, pod)
//! and what it received, as JSON, after any injected delay and with any injected failure status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::body::{Body, full};
use crate::faults::Faults;
use crate::serve::Handler;

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
}

pub struct Echo {
    config: EchoConfig,
    shutting_down: AtomicBool,
}

impl Echo {
    pub fn new(config: EchoConfig) -> Arc<Self> {
        Arc::new(Self { config, shutting_down: AtomicBool::new(false) })
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
        let faults = match self.config.faults.with_headers(request.headers()) {
            Ok(faults) => faults,
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        };
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
        let status = outcome.fail.unwrap_or(StatusCode::OK);
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
        };
        tracing::debug!(%peer, method = %parts.method, path = parts.uri.path(), status = status.as_u16(), "answered");
        // Serializing strings and numbers cannot fail; should it ever, an empty object beats a panic.
        let json = serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(full(json));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
