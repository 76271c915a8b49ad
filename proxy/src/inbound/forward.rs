//! The requests of an inbound connection: each authorised, then forwarded to the app in the
//! protocol it came in (an HTTP/1.1 request another proxy carried over HTTP/2 goes as HTTP/1.1).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};
use tracing::debug;

use super::authorize;
use crate::client::body::ProxyBody;
use crate::client::{Pool, UpstreamProtocol};
use crate::http::forward::{forward_once, record};
use crate::http::headers::{ORIG_PROTO, propagate_trace};
use crate::http::path;
use crate::metrics::{Answerer, Direction, Label, RequestLabels, RequestMetrics, TargetAddr, Tls};
use crate::policy::HttpRequest;
use crate::spans::SpanKind;
use crate::state::ProxyState;

/// One inbound client connection, the app address its requests go to, and who the client is.
pub struct InboundConnection {
    pub state: Arc<ProxyState>,
    pub app: SocketAddr,
    /// The SPIFFE id the client proved with mTLS; `None` for plaintext.
    pub client_id: Option<String>,
    pub labels: RequestLabels,
    pub metrics: RequestMetrics,
    pub allow_counters: authorize::AllowCounters,
    pub http1: Arc<Pool>,
    pub http2: Arc<Pool>,
}

impl InboundConnection {
    pub fn new(state: Arc<ProxyState>, app: SocketAddr, client_id: Option<String>) -> Self {
        let target_addr = TargetAddr::new(app);
        let labels = RequestLabels {
            direction: Direction::inbound,
            authority: target_addr.label().clone(),
            target_addr,
            dst_service: Label::empty(),
            route: Label::empty(),
            client_id: client_id.as_deref().map_or_else(Label::empty, Label::new),
            tls: Tls::inbound(client_id.is_some()),
        };
        let http1 = state.app_pool(app, UpstreamProtocol::Http1);
        let http2 = state.app_pool(app, UpstreamProtocol::Http2);
        let metrics = state.metrics.request_metrics(&labels);
        Self { state, app, client_id, labels, metrics, allow_counters: Default::default(), http1, http2 }
    }
}

/// Handles one request that arrived for the local app: its path is put in normal form, which is
/// what the policy checks and what the app gets. Traced (a server span) when tracing is on and
/// the request is sampled.
pub async fn handle(connection: Arc<InboundConnection>, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    propagate_trace(&mut parts.headers);
    let span = connection.state.table.tracer().as_ref().and_then(|tracer| {
        let mut span = tracer.start(SpanKind::Server, &mut parts.headers, &parts.method, parts.uri.path())?;
        let host = parts.headers.get(http::header::HOST).and_then(|host| host.to_str().ok());
        let authority = parts.uri.authority().map(|authority| authority.as_str()).or(host);
        authority.unwrap_or(connection.labels.target_addr.as_str()).clone_into(&mut span.authority);
        if let Some(client_id) = &connection.client_id {
            client_id.clone_into(&mut span.peer_identity);
        }
        Some(span)
    });
    let mut response = authorize_and_forward(&connection, parts, body).await;
    ProxyBody::trace(&mut response, span);
    response
}

async fn authorize_and_forward(
    connection: &Arc<InboundConnection>,
    mut parts: http::request::Parts,
    body: ProxyBody,
) -> Response<ProxyBody> {
    let state = &connection.state;
    let normal = match path::normalize(parts.uri.path()) {
        Ok(normal) => normal,
        Err(ambiguous) => return refuse(connection, ambiguous),
    };
    let target = parts.uri.path_and_query().map_or("", |target| target.as_str());
    let request = HttpRequest { method: &parts.method, path: &normal, target };
    if let Some(denied) = authorize::request(
        state,
        connection.client_id.as_deref(),
        request,
        connection.app,
        &connection.labels,
        &connection.metrics,
        &connection.allow_counters,
    ) {
        return denied;
    }
    if let Cow::Owned(normal) = normal
        && let Err(ambiguous) = path::set_path(&mut parts.uri, normal)
    {
        return refuse(connection, ambiguous);
    }
    // A request another proxy upgraded to HTTP/2 goes to the app as the HTTP/1.1 it was.
    let pool = if parts.headers.remove(&ORIG_PROTO).is_some() || parts.version != Version::HTTP_2 {
        &connection.http1
    } else {
        &connection.http2
    };
    forward_once(pool, &connection.metrics, &mut parts, body).await
}

/// A request refused for its path: answered here, and counted like any other.
fn refuse(connection: &InboundConnection, ambiguous: path::Ambiguous) -> Response<ProxyBody> {
    debug!(reason = %ambiguous, "refused an inbound request's path");
    connection.metrics.requests.inc();
    let response = path::refusal(ambiguous);
    record(&connection.metrics, Answerer::nobody(), &response, Instant::now());
    response
}
