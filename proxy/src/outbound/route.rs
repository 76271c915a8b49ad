//! A request to a service: its route is chosen, then the route's fault, mirror, retries and
//! timeout apply, and the request is counted under the route.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use tower::retry::budget::Budget as _;
use tracing::info;

use super::fault::inject_fault;
use super::mirror::mirror;
use super::rate_limit::retry_after_seconds;
use super::retry::{Kept, keep_for_replay, send_with_retries};
use crate::balance;
use crate::client::body::ProxyBody;
use crate::http::forward::{record, record_at_end};
use crate::http::headers::{client_response, propagate_trace};
use crate::http::path;
use crate::http::respond::{Failure, REQUEST_BODY, failure_response, local};
use crate::metrics::{
    Answerer, Direction, Label, RequestLabels, RetryLabels, TimeoutKind, TimeoutLabels, Tls,
};
use crate::spans::{Span, SpanKind};
use crate::state::ProxyState;
use crate::table::{Admission, Service};

/// Handles one request to `service`: the route that matches it, then the route's fault, mirror,
/// retries and timeout; counted under the route, logged when the access log is on, and traced
/// (a client span) when tracing is on and the request is sampled.
pub async fn route_request(
    state: &ProxyState,
    service: &Arc<Service>,
    client: Option<std::net::IpAddr>,
    request: Request<ProxyBody>,
    retry_body_limit: usize,
    access_log: bool,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    propagate_trace(&mut parts.headers);
    let mut span = state.table.tracer().as_ref().and_then(|tracer| {
        let mut span = tracer.start(SpanKind::Client, &mut parts.headers, &parts.method, parts.uri.path())?;
        service.name.as_str().clone_into(&mut span.authority);
        Some(span)
    });
    let mut response =
        route_and_send(state, service, client, parts, body, retry_body_limit, access_log, &mut span).await;
    ProxyBody::trace(&mut response, span);
    response
}

#[allow(clippy::too_many_arguments)]
async fn route_and_send(
    state: &ProxyState,
    service: &Arc<Service>,
    client: Option<std::net::IpAddr>,
    mut parts: http::request::Parts,
    body: ProxyBody,
    retry_body_limit: usize,
    access_log: bool,
    span: &mut Option<Box<Span>>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    // Routes match the path in the normal form the destination's inbound proxy authorises, and
    // that is what goes upstream.
    let normalized = path::normalize_uri(&mut parts.uri);
    let route = normalized
        .ok()
        .and_then(|()| service.route(&parts.method, parts.uri.path(), parts.uri.query(), &parts.headers));
    let Some(route) = route else {
        let labels = RequestLabels {
            direction: Direction::outbound,
            authority: service.name.clone(),
            target_addr: crate::metrics::TargetAddr::none(),
            dst_service: service.name.clone(),
            route: Label::empty(),
            client_id: Label::empty(),
            tls: Tls::NotYetKnown,
        };
        let metrics = state.metrics.request_metrics(&labels);
        metrics.requests.inc();
        if let Err(ambiguous) = normalized {
            let response = path::refusal(ambiguous);
            record(&metrics, Answerer::nobody(), &response, start);
            return response;
        }
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
        record(&metrics, Answerer::nobody(), &response, start);
        return response;
    };
    let labels = RequestLabels {
        direction: Direction::outbound,
        authority: service.name.clone(),
        target_addr: crate::metrics::TargetAddr::none(),
        dst_service: service.name.clone(),
        route: route.name.clone(),
        client_id: Label::empty(),
        tls: Tls::NotYetKnown,
    };
    let metrics = route.metrics.get_or_init(|| state.metrics.request_metrics(&labels));
    // In request_total once answered, under the endpoint that answered; the proxy's own answers
    // below and a client that gives up count it under none.
    let uncounted = metrics.count_when_answered();
    if let Some(span) = span {
        route.name.as_str().clone_into(&mut span.route);
    }
    if let Some(edits) = &route.request_headers {
        edits.apply(&mut parts.headers);
    }

    if let Some(limiter) = &route.rate_limit
        && let Err(wait) = limiter.acquire(Instant::now())
    {
        let response = rate_limited(state, &labels, wait);
        record(metrics, Answerer::nobody(), &response, start);
        return response;
    }
    let admission = service.admit();
    if let Admission::Refused = admission {
        let response = overloaded(state, service, &labels);
        record(metrics, Answerer::nobody(), &response, start);
        return response;
    }
    if let Some(response) = inject_fault(route).await {
        record(metrics, Answerer::nobody(), &response, start);
        return response;
    }
    if let Some(redirect) = &route.redirect {
        let mut response = super::redirect::redirect_response(redirect, &parts);
        if let Some(edits) = &route.response_headers {
            edits.apply(response.headers_mut());
        }
        record(metrics, Answerer::nobody(), &response, start);
        return response;
    }
    if let Some(rewrite) = &route.rewrite {
        super::redirect::rewrite(rewrite, &mut parts);
    }

    // A body is kept for replay only when something may send it twice, and only up to the bound.
    let retried = route.retries.as_ref().is_some_and(|r| r.attempts > 1);
    let wants_copy = retried || route.mirror.is_some();
    let body =
        if wants_copy { keep_for_replay(body, retry_body_limit, retried).await } else { Ok(Kept::No(body)) };
    let body = match body {
        Ok(body) => body,
        Err(error) => {
            let response = local(
                StatusCode::BAD_REQUEST,
                REQUEST_BODY,
                format!("braid-proxy: reading the request body failed: {error}\n"),
            );
            record(metrics, Answerer::nobody(), &response, start);
            return response;
        }
    };
    // An upgrade is not mirrored: the copy's 101 would open a tunnel nobody reads.
    if let (Some((backend, percent)), Kept::Yes(bytes)) = (route.mirror, &body)
        && fastrand::f64() * 100.0 < percent
        && crate::http::upgrade::requested(parts.version, &parts.headers).is_none()
    {
        mirror(state, service, route, backend, &parts, bytes.clone());
    }

    route.budget(service).deposit();
    let affinity = balance::affinity_key(service.load_balancer.hash_on.as_ref(), &parts.headers, client);
    let tries = send_with_retries(&state.metrics, service, route, &labels, parts, body, affinity);
    let result = match route.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, tries).await {
            Ok(result) => result,
            Err(_) => {
                state
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
    let (mut response, answerer) = match result {
        Ok((response, answerer)) => (client_response(response), answerer),
        Err(failure) => (failure_response(&failure), Answerer::nobody()),
    };
    if let Some(span) = span {
        answerer.server_id.as_str().clone_into(&mut span.peer_identity);
    }
    if let Some(edits) = &route.response_headers {
        edits.apply(response.headers_mut());
    }
    if access_log {
        info!(
            target: "braid_proxy::access",
            service = service.name.as_str(),
            route = route.name.as_str(),
            status = response.status().as_u16(),
            latency_us = start.elapsed().as_micros() as u64,
        );
    }
    uncounted.answered_by(&answerer);
    record_at_end(metrics, answerer, &mut response, start);
    response
}

/// The answer to a request over the route's rate limit: 429, and when to try again.
fn rate_limited(
    state: &ProxyState,
    labels: &RequestLabels,
    wait: std::time::Duration,
) -> Response<ProxyBody> {
    state
        .metrics
        .rate_limited
        .get_or_create(&RetryLabels {
            direction: Direction::outbound,
            dst_service: labels.dst_service.clone(),
            route: labels.route.clone(),
        })
        .inc();
    let seconds = retry_after_seconds(wait);
    let mut response = local(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!(
            "braid-proxy: route {} of service {} is over its rate limit; retry after {seconds} s\n",
            labels.route.as_str(),
            labels.dst_service.as_str()
        ),
    );
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    response
}

/// The answer to a request over the service's `maxRequests`: 503 at once.
fn overloaded(state: &ProxyState, service: &Service, labels: &RequestLabels) -> Response<ProxyBody> {
    state
        .metrics
        .overloaded
        .get_or_create(&RetryLabels {
            direction: Direction::outbound,
            dst_service: labels.dst_service.clone(),
            route: labels.route.clone(),
        })
        .inc();
    local(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "braid-proxy: {} requests to service {} are in flight from this pod (its maxRequests); try again later\n",
            service.max_requests.unwrap_or_default(),
            labels.dst_service.as_str()
        ),
    )
}
