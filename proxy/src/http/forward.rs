//! The request path. Outbound: find the service, its route, apply faults, pick a backend by
//! weight and an endpoint by P2C, send with retries under the budget and timeouts, count it all.
//! Inbound and unknown destinations: forward to a fixed address, counted the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::config::RetryOn;
use bytes::Bytes;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, request};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::retry::budget::Budget as _;
use tracing::info;

use super::Shared;
use super::body::{BodyError, ProxyBody};
use super::upstream::{Pool, UpstreamError, UpstreamProtocol};
use crate::balance;
use crate::metrics::{
    Classification, DenyLabels, DenyProtocol, Direction, Label, RequestLabels, RequestMetrics, RetryLabels,
    TimeoutKind, TimeoutLabels,
};
use crate::table::{Route, Service};
use crate::{policy, trace_context};

/// Set by the outbound proxy when it carries an HTTP/1.1 request over the HTTP/2 connection
/// between two proxies, so the inbound proxy hands it to the app as HTTP/1.1 again.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("braid-orig-proto");
/// Names the reason of a response the proxy made itself, for people and tests.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("braid-proxy-error");
/// Why the policy denied a request.
pub const DENY_REASON: HeaderName = HeaderName::from_static("braid-deny-reason");
/// Where gRPC says how a call ended (a trailers-only answer carries it in the headers).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP11: HeaderValue = HeaderValue::from_static("HTTP/1.1");
/// Header fields that describe one connection (`te` aside: it may stay as `te: trailers`).
const HOP_BY_HOP: [HeaderName; 5] = [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING, UPGRADE];

/// Where an outbound client connection was going.
#[derive(Debug, Clone)]
pub enum OutboundTarget {
    /// A listener dedicated to a service.
    Service(Arc<str>),
    /// A redirected connection: its original destination.
    Original(SocketAddr),
    /// Connected to the proxy directly: the Host header decides.
    Unknown,
}

/// One outbound client connection.
pub struct OutboundConnection {
    pub shared: Arc<Shared>,
    pub target: OutboundTarget,
}

/// One inbound client connection, the app address its requests go to, and who the client is.
pub struct InboundConnection {
    pub shared: Arc<Shared>,
    pub app: SocketAddr,
    /// The SPIFFE id the client proved with mTLS; `None` for plaintext.
    pub client_id: Option<String>,
    pub labels: RequestLabels,
    pub metrics: RequestMetrics,
    pub http1: Arc<Pool>,
    pub http2: Arc<Pool>,
}

impl InboundConnection {
    pub fn new(shared: Arc<Shared>, app: SocketAddr, client_id: Option<String>) -> Self {
        let labels = RequestLabels {
            direction: Direction::inbound,
            authority: Label::new(app.to_string()),
            dst_service: Label::empty(),
            route: Label::empty(),
            client_id: client_id.as_deref().map_or_else(Label::empty, Label::new),
        };
        let http1 = shared.pool(app, UpstreamProtocol::Http1);
        let http2 = shared.pool(app, UpstreamProtocol::Http2);
        let metrics = shared.metrics.request_metrics(&labels);
        Self { shared, app, client_id, labels, metrics, http1, http2 }
    }
}

/// Handles one request from the app to a destination.
pub async fn outbound(
    connection: Arc<OutboundConnection>,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let shared = &connection.shared;
    let table = shared.table.load_full();
    let service = match &connection.target {
        OutboundTarget::Service(name) => table.service_by_name(name),
        OutboundTarget::Original(addr) => match table.service_by_address(*addr) {
            Some(service) => Some(service),
            None => return passthrough(shared, *addr, request).await,
        },
        OutboundTarget::Unknown => {
            authority_of(&request).and_then(|authority| table.service_by_host(authority))
        }
    };
    let Some(service) = service.cloned() else {
        let host = authority_of(&request).unwrap_or("").to_owned();
        return local(
            StatusCode::BAD_GATEWAY,
            "no-destination",
            format!(
                "braid-proxy: no service is configured for host {host:?}, and the connection was not redirected, so \
                 there is no original destination to forward to\n"
            ),
        );
    };
    let limit = table.config.limits.max_retry_body_bytes;
    let access_log = table.config.access_log;
    drop(table);
    route_request(shared, &service, request, limit, access_log).await
}

/// Handles one request that arrived for the local app.
pub async fn inbound(connection: Arc<InboundConnection>, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let shared = &connection.shared;
    let denied = {
        let table = shared.table.load();
        let client = policy::Client { identity: connection.client_id.as_deref() };
        policy::authorize(
            table.config.inbound.policy.as_ref(),
            client,
            Some(&parts.method),
            Some(parts.uri.path()),
            connection.app.port(),
        )
    };
    if let Err(denied) = denied {
        let labels = connection.labels.clone();
        connection.metrics.requests.inc();
        shared
            .metrics
            .authz_denied
            .get_or_create(&DenyLabels { protocol: DenyProtocol::http, client_id: labels.client_id.clone() })
            .inc();
        let mut response = local(StatusCode::FORBIDDEN, "forbidden", format!("braid-proxy: {}\n", denied.0));
        if let Ok(reason) = HeaderValue::from_str(&denied.0) {
            response.headers_mut().insert(DENY_REASON, reason);
        }
        record(shared, &labels, &connection.metrics, Label::empty(), &response, Instant::now());
        return response;
    }
    // A request another proxy upgraded to HTTP/2 goes to the app as the HTTP/1.1 it was.
    let pool = if parts.headers.remove(&ORIG_PROTO).is_some() || parts.version != Version::HTTP_2 {
        &connection.http1
    } else {
        &connection.http2
    };
    forward_once(&connection.shared, pool, &connection.labels, &connection.metrics, &mut parts, body).await
}

/// An outbound request to an address no service claims: forwarded unchanged, and counted.
async fn passthrough(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let protocol =
        if parts.version == Version::HTTP_2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
    let pool = shared.pool(addr, protocol);
    let labels = RequestLabels {
        direction: Direction::outbound,
        authority: Label::new(addr.to_string()),
        dst_service: Label::empty(),
        route: Label::empty(),
        client_id: Label::empty(),
    };
    let metrics = shared.metrics.request_metrics(&labels);
    forward_once(shared, &pool, &labels, &metrics, &mut parts, body).await
}

async fn forward_once(
    shared: &Shared,
    pool: &Pool,
    labels: &RequestLabels,
    metrics: &RequestMetrics,
    parts: &mut request::Parts,
    body: ProxyBody,
) -> Response<ProxyBody> {
    let start = Instant::now();
    metrics.requests.inc();
    propagate_trace(&mut parts.headers);
    let request = upstream_request(parts, body, pool.protocol(), false, true);
    let response = match pool.send(request).await {
        Ok(response) => client_response(response),
        Err(error) => failure_response(&Failure::Upstream(error)),
    };
    record(shared, labels, metrics, Label::empty(), &response, start);
    response
}

/// Why a request got no response from upstream.
enum Failure {
    Upstream(UpstreamError),
    PerTryTimeout { addr: SocketAddr, timeout: Duration },
    Timeout { service: Label, timeout: Duration },
    NoEndpoints { service: Label, backend: Label },
}

async fn route_request(
    shared: &Arc<Shared>,
    service: &Arc<Service>,
    request: Request<ProxyBody>,
    retry_body_limit: usize,
    access_log: bool,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let (mut parts, body) = request.into_parts();
    let Some(route) = service.route(&parts.method, parts.uri.path(), &parts.headers) else {
        let labels = RequestLabels {
            direction: Direction::outbound,
            authority: service.name.clone(),
            dst_service: service.name.clone(),
            route: Label::empty(),
            client_id: Label::empty(),
        };
        let metrics = shared.metrics.request_metrics(&labels);
        metrics.requests.inc();
        let response = local(
            StatusCode::NOT_FOUND,
            "no-route",
            format!(
                "braid-proxy: no route of service {} matches {} {}\n",
                service.name.as_str(),
                parts.method,
                parts.uri.path()
            ),
        );
        record(shared, &labels, &metrics, Label::empty(), &response, start);
        return response;
    };
    let labels = RequestLabels {
        direction: Direction::outbound,
        authority: service.name.clone(),
        dst_service: service.name.clone(),
        route: route.name.clone(),
        client_id: Label::empty(),
    };
    let metrics = route.metrics.get_or_init(|| shared.metrics.request_metrics(&labels));
    metrics.requests.inc();
    propagate_trace(&mut parts.headers);

    if let Some(response) = inject_fault(route).await {
        record(shared, &labels, metrics, Label::empty(), &response, start);
        return response;
    }

    // A body is kept for replay only when something may send it twice, and only when small.
    let wants_copy = route.retries.as_ref().is_some_and(|r| r.attempts > 1) || route.mirror.is_some();
    let body = if wants_copy { keep_small_body(body, retry_body_limit).await } else { Ok(Kept::No(body)) };
    let body = match body {
        Ok(body) => body,
        Err(error) => {
            let response = local(
                StatusCode::BAD_REQUEST,
                "request-body",
                format!("braid-proxy: reading the request body failed: {error}\n"),
            );
            record(shared, &labels, metrics, Label::empty(), &response, start);
            return response;
        }
    };
    if let (Some((backend, percent)), Kept::Yes(bytes)) = (route.mirror, &body)
        && fastrand::f64() * 100.0 < percent
    {
        mirror(service, backend, &parts, bytes.clone());
    }

    service.budget.deposit();
    let tries = send_with_retries(shared, service, route, &labels, parts, body);
    let result = match route.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, tries).await {
            Ok(result) => result,
            Err(_) => {
                shared
                    .metrics
                    .timeouts
                    .get_or_create(&TimeoutLabels {
                        direction: Direction::outbound,
                        dst_service: service.name.clone(),
                        route: route.name.clone(),
                        kind: TimeoutKind::total,
                    })
                    .inc();
                Err(Failure::Timeout { service: service.name.clone(), timeout })
            }
        },
        None => tries.await,
    };
    let (response, server_id) = match result {
        Ok((response, server_id)) => (client_response(response), server_id),
        Err(failure) => (failure_response(&failure), Label::empty()),
    };
    if access_log {
        info!(
            target: "braid_proxy::access",
            service = service.name.as_str(),
            route = route.name.as_str(),
            status = response.status().as_u16(),
            latency_us = start.elapsed().as_micros() as u64,
        );
    }
    record(shared, &labels, metrics, server_id, &response, start);
    response
}

enum Kept {
    Yes(Bytes),
    No(ProxyBody),
}

/// Reads the body into memory when it is known to be at most `limit` bytes; otherwise leaves it
/// streaming (and the request is then not retried or mirrored).
async fn keep_small_body(body: ProxyBody, limit: usize) -> Result<Kept, BodyError> {
    if body.is_end_stream() {
        return Ok(Kept::Yes(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(upper) if upper <= limit as u64 => Ok(Kept::Yes(body.collect().await?.to_bytes())),
        _ => Ok(Kept::No(body)),
    }
}

async fn send_with_retries(
    shared: &Shared,
    service: &Service,
    route: &Route,
    labels: &RequestLabels,
    parts: request::Parts,
    body: Kept,
) -> Result<(Response<ProxyBody>, Label), Failure> {
    let (attempts, per_try_timeout, retry_on) = match (&route.retries, &body) {
        (Some(retries), Kept::Yes(_)) => {
            (retries.attempts, retries.per_try_timeout, retries.retry_on.as_slice())
        }
        (Some(retries), Kept::No(_)) => (1, retries.per_try_timeout, &[][..]),
        (None, _) => (1, None, &[][..]),
    };
    let mut parts = parts;
    let mut body = Some(body);
    for attempt in 1..=attempts {
        let backend = &service.backends[route.pick_backend()];
        let now = Instant::now();
        let Some(endpoint) = balance::pick(&backend.endpoints, now) else {
            return Err(Failure::NoEndpoints {
                service: service.name.clone(),
                backend: backend.name.clone(),
            });
        };
        let last = attempt == attempts;
        let request_body = match body.take() {
            Some(Kept::Yes(bytes)) => {
                if !last {
                    body = Some(Kept::Yes(bytes.clone()));
                }
                ProxyBody::text(bytes)
            }
            Some(Kept::No(body)) => body,
            None => ProxyBody::empty(),
        };
        let mut try_parts =
            if last { std::mem::replace(&mut parts, empty_parts()) } else { clone_parts(&parts) };
        let request =
            upstream_request(&mut try_parts, request_body, endpoint.pool.protocol(), endpoint.meshed, false);
        let in_flight = endpoint.start();
        let outcome = match per_try_timeout {
            Some(timeout) => match tokio::time::timeout(timeout, endpoint.pool.send(request)).await {
                Ok(result) => result.map_err(Failure::Upstream),
                Err(_) => {
                    shared
                        .metrics
                        .timeouts
                        .get_or_create(&TimeoutLabels {
                            direction: Direction::outbound,
                            dst_service: labels.dst_service.clone(),
                            route: labels.route.clone(),
                            kind: TimeoutKind::per_try,
                        })
                        .inc();
                    Err(Failure::PerTryTimeout { addr: endpoint.addr, timeout })
                }
            },
            None => endpoint.pool.send(request).await.map_err(Failure::Upstream),
        };
        drop(in_flight);
        let healthy = matches!(&outcome, Ok(response) if !response.status().is_server_error());
        let done = Instant::now();
        endpoint.record(done.saturating_duration_since(now), healthy, &service.load_balancer, done);
        if !last && should_retry(&outcome, retry_on) {
            let retry_labels = RetryLabels {
                direction: Direction::outbound,
                dst_service: labels.dst_service.clone(),
                route: labels.route.clone(),
            };
            if service.budget.withdraw() {
                shared.metrics.retries.get_or_create(&retry_labels).inc();
                continue;
            }
            shared.metrics.retry_budget_exhausted.get_or_create(&retry_labels).inc();
        }
        return outcome.map(|response| (response, endpoint.identity.clone()));
    }
    // attempts >= 1 (checked with the configuration), so the loop returned.
    Err(Failure::NoEndpoints { service: service.name.clone(), backend: Label::empty() })
}

fn should_retry(outcome: &Result<Response<ProxyBody>, Failure>, retry_on: &[RetryOn]) -> bool {
    let on = |condition: RetryOn| retry_on.contains(&condition);
    match outcome {
        Ok(response) => {
            let status = response.status();
            (status.is_server_error() && on(RetryOn::FiveXx))
                || (matches!(status.as_u16(), 502..=504) && on(RetryOn::GatewayError))
        }
        Err(Failure::Upstream(error)) if error.is_connect() => {
            on(RetryOn::ConnectFailure) || on(RetryOn::FiveXx)
        }
        Err(Failure::Upstream(_)) => on(RetryOn::Reset) || on(RetryOn::FiveXx),
        Err(Failure::PerTryTimeout { .. }) => on(RetryOn::GatewayError) || on(RetryOn::FiveXx),
        Err(Failure::Timeout { .. } | Failure::NoEndpoints { .. }) => false,
    }
}

async fn inject_fault(route: &Route) -> Option<Response<ProxyBody>> {
    let fault = route.fault.as_ref()?;
    if let Some(delay) = &fault.delay
        && fastrand::f64() * 100.0 < delay.percent
    {
        tokio::time::sleep(delay.fixed).await;
    }
    let abort = fault.abort.as_ref()?;
    if fastrand::f64() * 100.0 < abort.percent {
        let status = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Some(local(
            status,
            "fault-injected",
            "braid-proxy: fault injected by the route\n".to_owned(),
        ));
    }
    None
}

/// Sends a copy of the request to the mirror backend and forgets the answer.
fn mirror(service: &Arc<Service>, backend: usize, parts: &request::Parts, body: Bytes) {
    let service = service.clone();
    let mut parts = clone_parts(parts);
    tokio::spawn(async move {
        let Some(backend) = service.backends.get(backend) else { return };
        let Some(endpoint) = balance::pick(&backend.endpoints, Instant::now()) else { return };
        let request = upstream_request(
            &mut parts,
            ProxyBody::text(body),
            endpoint.pool.protocol(),
            endpoint.meshed,
            false,
        );
        if let Ok(response) = endpoint.pool.send(request).await {
            // Read it through, so the connection returns to the pool.
            let _ = response.into_body().collect().await;
        }
    });
}

/// The request as the upstream connection needs it: origin-form URI for HTTP/1.1, an absolute
/// URI for HTTP/2 (its :authority is the Host the client used), hop-by-hop headers removed.
fn upstream_request(
    parts: &mut request::Parts,
    body: ProxyBody,
    protocol: UpstreamProtocol,
    meshed: bool,
    inbound: bool,
) -> Request<ProxyBody> {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let was_http1 = parts.version != Version::HTTP_2;
    match protocol {
        UpstreamProtocol::Http1 => {
            if parts.uri.authority().is_some() {
                if !headers.contains_key(HOST)
                    && let Some(authority) = parts.uri.authority()
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    headers.insert(HOST, host);
                }
                let path = parts.uri.path_and_query().cloned();
                let mut uri = http::uri::Parts::default();
                uri.path_and_query = path.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            if parts.uri.authority().is_none() {
                let host = headers.get(HOST).and_then(|host| Authority::try_from(host.as_bytes()).ok());
                let authority = match host {
                    Some(host) => {
                        // :authority carries it (RFC 9113 §8.3.1), so HPACK codes it once, not
                        // twice; the inbound side gives an HTTP/1.1 app its Host again from it.
                        headers.remove(HOST);
                        host
                    }
                    None => Authority::from_static("localhost"),
                };
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority);
                if uri.path_and_query.is_none() {
                    uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                }
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            if meshed && was_http1 && !inbound {
                headers.insert(ORIG_PROTO, HTTP11);
            }
            parts.version = Version::HTTP_2;
        }
    }
    let mut request = Request::new(body);
    *request.method_mut() = std::mem::take(&mut parts.method);
    *request.uri_mut() = std::mem::take(&mut parts.uri);
    *request.version_mut() = parts.version;
    *request.headers_mut() = std::mem::take(&mut parts.headers);
    request
}

fn clone_parts(parts: &request::Parts) -> request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

fn empty_parts() -> request::Parts {
    Request::new(()).into_parts().0
}

fn propagate_trace(headers: &mut http::HeaderMap) {
    if let Some(received) = headers.get(trace_context::TRACEPARENT) {
        match trace_context::next_hop(received) {
            Some(next) => headers.insert(trace_context::TRACEPARENT, next),
            None => headers.remove(trace_context::TRACEPARENT),
        };
    }
}

fn authority_of<B>(request: &Request<B>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| request.headers().get(HOST)?.to_str().ok())
}

/// The upstream response as the client gets it: connection-level headers are the proxy's own.
fn client_response(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    strip_hop_by_hop(response.headers_mut());
    response
}

/// Removes the header fields that describe one connection rather than the message, from every
/// request and response the proxy passes on: each side frames its own connection, and HTTP/2
/// forbids them (RFC 9113 §8.2.2; h2 refuses a head that has one). `te: trailers` stays: gRPC
/// needs it end to end. Fields a Connection header names stay too, as in Linkerd: a client must
/// not be able to strip fields such as host from what the next hop sees.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present; only those are looked up again. Most
    // requests carry none, and most HTTP/1.1 responses just `connection` (nginx: keep-alive).
    let mut present = 0u8; // bit i: HOP_BY_HOP[i]
    let mut te = false;
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << index;
        } else if name == TE {
            te = true;
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    if te && headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

fn failure_response(failure: &Failure) -> Response<ProxyBody> {
    match failure {
        Failure::Upstream(error) if error.is_connect() => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "connect-failure",
            format!("braid-proxy: {error}: the endpoint refused or did not answer\n"),
        ),
        Failure::Upstream(error) => {
            local(StatusCode::BAD_GATEWAY, "upstream-reset", format!("braid-proxy: {error}\n"))
        }
        Failure::PerTryTimeout { addr, timeout } => local(
            StatusCode::GATEWAY_TIMEOUT,
            "per-try-timeout",
            format!("braid-proxy: {addr} sent no response within the per-try timeout of {timeout:?}\n"),
        ),
        Failure::Timeout { service, timeout } => local(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "braid-proxy: the request to {} timed out after {timeout:?} (the route's timeout)\n",
                service.as_str()
            ),
        ),
        Failure::NoEndpoints { service, backend } => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoints",
            format!(
                "braid-proxy: backend {} of service {} has no endpoints\n",
                backend.as_str(),
                service.as_str()
            ),
        ),
    }
}

/// A response the proxy makes itself.
pub fn local(status: StatusCode, reason: &'static str, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(PROXY_ERROR, HeaderValue::from_static(reason));
    response
}

fn record(
    shared: &Shared,
    labels: &RequestLabels,
    metrics: &RequestMetrics,
    server_id: Label,
    response: &Response<ProxyBody>,
    start: Instant,
) {
    let status = response.status();
    // gRPC carries failures in grpc-status; a trailers-only response has it in the headers.
    let grpc_failed = response.headers().get(GRPC_STATUS).is_some_and(|value| value.as_bytes() != b"0");
    let classification = if status.is_server_error() || grpc_failed {
        Classification::failure
    } else {
        Classification::success
    };
    metrics.latency.observe(start.elapsed().as_secs_f64() * 1000.0);
    metrics.response(&shared.metrics, labels, status.as_u16(), classification, &server_id).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_with_te(te: &'static str) -> request::Parts {
        let request = Request::get("http://web/").header(TE, te).header(CONNECTION, "close").body(());
        request.expect("a valid request").into_parts().0
    }

    #[test]
    fn an_http2_request_keeps_te_only_when_it_is_trailers() {
        let mut gzip = parts_with_te("gzip");
        let request = upstream_request(&mut gzip, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert!(!request.headers().contains_key(TE), "h2 refuses any te but trailers");
        assert!(!request.headers().contains_key(CONNECTION), "no connection headers in HTTP/2");
        let mut trailers = parts_with_te("trailers");
        let request =
            upstream_request(&mut trailers, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert_eq!(request.headers()[TE], "trailers", "gRPC needs it");
        let mut http1 = parts_with_te("gzip");
        let request = upstream_request(&mut http1, ProxyBody::empty(), UpstreamProtocol::Http1, false, false);
        assert!(!request.headers().contains_key(TE), "te is hop-by-hop in HTTP/1.1 too");
    }

    #[test]
    fn host_travels_as_the_authority_over_http2_and_comes_back_as_host_for_http1() {
        let request = Request::get("/items?id=1").header(HOST, "web.shop:8080").body(());
        let mut parts = request.expect("a valid request").into_parts().0;
        let http2 = upstream_request(&mut parts, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert_eq!(http2.uri().to_string(), "http://web.shop:8080/items?id=1");
        assert!(!http2.headers().contains_key(HOST), "sent once, as :authority");
        let mut parts = http2.into_parts().0;
        let http1 = upstream_request(&mut parts, ProxyBody::empty(), UpstreamProtocol::Http1, false, true);
        assert_eq!(http1.uri().to_string(), "/items?id=1");
        assert_eq!(http1.headers()[HOST], "web.shop:8080");
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_end_to_end_fields_kept() {
        let response = Response::builder()
            .header(CONNECTION, "keep-alive, host, close")
            .header("keep-alive", "timeout=5")
            .header(TRANSFER_ENCODING, "chunked")
            .header(UPGRADE, "h2c")
            .header("proxy-connection", "keep-alive")
            .header(TE, "trailers")
            .header("content-type", "text/plain")
            .header("grpc-status", "0")
            .body(ProxyBody::empty())
            .expect("a valid response");
        let response = client_response(response);
        let mut names: Vec<&str> = response.headers().keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "grpc-status", "te"]);
    }

    #[test]
    fn each_hop_by_hop_field_is_removed_alone_with_all_its_values() {
        let alone = [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
        ];
        assert_eq!(alone.len(), HOP_BY_HOP.len() + 1, "every hop-by-hop field, and te");
        for (name, value) in alone {
            let mut headers = HeaderMap::new();
            headers.append(name, HeaderValue::from_static("first"));
            headers.append("etag", HeaderValue::from_static("\"v1\""));
            headers.append(name, HeaderValue::from_str(value).expect("a valid value"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name} was kept: {headers:?}");
            assert_eq!(headers.len(), 1, "{name}: {headers:?}");
            assert_eq!(headers["etag"], "\"v1\"");
        }
        let mut te_trailers = HeaderMap::new();
        te_trailers.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut te_trailers);
        assert_eq!(te_trailers[TE], "trailers", "gRPC needs te: trailers end to end");
    }
}
