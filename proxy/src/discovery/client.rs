//! The stream to the discovery server: a thin shell around [`Discovery`]. Waits for the
//! workload certificate, opens one HTTP/2 stream over mTLS (`POST /v1/discovery`), sends the
//! hello and every subscription held, then feeds the server's messages to the state and its
//! acks and nacks back. Whenever the stream ends — the server went away, ended it, sent
//! something unreadable — the proxy keeps serving what it has and reconnects after an
//! exponential backoff with jitter (0.5 s doubling to 30 s; reset once a message arrives).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use braid_api::discovery::{self as api, ControlMessage, DecodeError, Hello, LineReader, ProxyMessage};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Discovery;
use super::report::Reporter;
use crate::identity::client::Backoff;
use crate::identity::tls::{self, TlsError};
use crate::identity::{Credentials, IdentityStore};
use crate::metrics::Metrics;
use crate::table::LiveTable;

pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// TCP connect, TLS handshake and the response headers, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings: a server that vanished without closing (a partition) is noticed in ~20 s.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// The optional message parts this proxy understands (`braid-proxy-features`):
/// `api::FEATURE_TRACING`, `api::FEATURE_ENDPOINT_POD` and `api::FEATURE_POLICY_SOURCE`.
const PROXY_FEATURES: &str = "tracing,endpoint-pod,policy-source";

/// How often to look for the workload certificate before the first one arrives.
const CERTIFICATE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("the TLS configuration could not be built: {0}")]
    Tls(#[from] TlsError),
    #[error("the server answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the stream broke: {0}")]
    Broken(String),
    #[error("the server ended the stream")]
    Ended,
    #[error("the server sent an unreadable message, restarting the stream: {0}")]
    Decode(#[from] DecodeError),
    #[error("the server refused this proxy: {0}")]
    Refused(String),
}

/// Keeps the stream open until `shutdown`.
pub async fn run(
    table: &LiveTable,
    metrics: &Metrics,
    discovery: Arc<Discovery>,
    identity: Arc<IdentityStore>,
    shutdown: CancellationToken,
) {
    let Some(mut outbox) = discovery.take_outbox() else {
        warn!("a discovery client is already running");
        return;
    };
    let mut backoff = Backoff::between(BACKOFF_BASE, BACKOFF_MAX);
    let mut reporter = Reporter::default();
    let mut attempts = 0u64;
    loop {
        let credentials = loop {
            if let Some(credentials) = identity.current() {
                break credentials;
            }
            tokio::select! {
                () = tokio::time::sleep(CERTIFICATE_POLL) => {}
                () = shutdown.cancelled() => return,
            }
        };
        if attempts > 0 {
            metrics.discovery_reconnects.inc();
        }
        attempts += 1;
        let result = tokio::select! {
            result = stream(table, metrics, &discovery, &credentials, &mut outbox, &mut backoff, &mut reporter) => result,
            () = shutdown.cancelled() => return,
        };
        metrics.discovery_connected.set(0);
        let error = match result {
            Ok(never) => match never {},
            Err(error) => error,
        };
        let wait = backoff.next_wait();
        warn!(
            endpoint = %discovery.config.endpoint, %error, retry_in = ?wait,
            "discovery stream down; serving the last configuration received"
        );
        discovery.set_connected(false, Some(error.to_string()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One stream, from connect to its end (always an error: the stream is meant to last).
async fn stream(
    table: &LiveTable,
    metrics: &Metrics,
    discovery: &Discovery,
    credentials: &Credentials,
    outbox: &mut mpsc::UnboundedReceiver<ProxyMessage>,
    backoff: &mut Backoff,
    reporter: &mut Reporter,
) -> Result<Infallible, StreamError> {
    let config = &discovery.config;
    let connect_error = |reason: String| StreamError::Connect { endpoint: config.endpoint.clone(), reason };
    let server_name = rustls::pki_types::ServerName::try_from(config.server_name().to_owned())
        .map_err(|e| connect_error(format!("server name {:?}: {e}", config.server_name())))?;
    let tls_config =
        tls::control_plane_client_config(credentials.key.clone(), credentials.roots.clone(), b"h2")?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&config.endpoint))
        .await
        .map_err(|_| connect_error("TCP connect timed out".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls_stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(tls_config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| connect_error("TLS handshake timed out".into()))?
    .map_err(|e| connect_error(format!("TLS: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|e| connect_error(format!("HTTP/2: {e}")))?;
    // Lives as long as this stream: dropping it closes the connection.
    let _connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "discovery connection ended");
        }
    }));

    let (lines, body) = mpsc::unbounded_channel();
    let hello = ProxyMessage::Hello(Hello {
        pod_namespace: config.pod_namespace.clone(),
        pod_name: config.pod_name.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let subscriptions = discovery.subscriptions(outbox);
    let count = subscriptions.len();
    for message in std::iter::once(hello).chain(subscriptions) {
        let _ = lines.send(Bytes::from(api::encode(&message)));
    }
    let request = Request::post(format!("https://{}{}", config.endpoint, api::PATH))
        .header(header::CONTENT_TYPE, api::CONTENT_TYPE)
        .header(api::PROXY_FEATURES_HEADER, PROXY_FEATURES)
        .body(LinesBody(body))
        .map_err(|e| connect_error(e.to_string()))?;
    let response = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| connect_error("no response headers in time".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = http_body_util::Limited::new(response.into_body(), 4096).collect().await;
        let text = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned()).unwrap_or_default();
        return Err(StreamError::Status { status, body: text });
    }
    // The server asks for reports (and says how often) with a header; an older one does not.
    let mut reports = response
        .headers()
        .get(api::REPORT_INTERVAL_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|seconds| {
            let mut ticker = tokio::time::interval(Duration::from_secs(seconds.clamp(1, 300)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
    metrics.discovery_connected.set(1);
    discovery.set_connected(true, None);
    info!(endpoint = %config.endpoint, subscriptions = count, "discovery stream open");

    let mut body = response.into_body();
    let mut reader = LineReader::default();
    loop {
        tokio::select! {
            frame = body.frame() => {
                let data = match frame {
                    None => return Err(StreamError::Ended),
                    Some(Err(error)) => return Err(StreamError::Broken(error.to_string())),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                };
                reader.push(&data)?;
                while let Some(message) = reader.next::<ControlMessage>() {
                    let message = message?;
                    // The server is talking sense: the next outage starts from a short wait.
                    backoff.reset();
                    if let Some(answer) = discovery.handle(table, metrics, message).map_err(StreamError::Refused)? {
                        let _ = lines.send(Bytes::from(api::encode(&answer)));
                    }
                }
            }
            Some(message) = outbox.recv() => {
                let _ = lines.send(Bytes::from(api::encode(&message)));
            }
            () = async {
                match reports.as_mut() {
                    Some(ticker) => {
                        ticker.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => {
                for report in reporter.reports(metrics) {
                    let _ = lines.send(Bytes::from(api::encode(&report)));
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The request body: the lines the proxy sends, as they are queued.
struct LinesBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for LinesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_features_header_names_the_optional_parts_this_proxy_reads() {
        let named: Vec<&str> = PROXY_FEATURES.split(',').collect();
        assert_eq!(named, [api::FEATURE_TRACING, api::FEATURE_ENDPOINT_POD, api::FEATURE_POLICY_SOURCE]);
    }
}
