//! Sending a routed request, with retries under the service's budget and per-try timeouts; the
//! body is kept in memory for replay when it is small enough.

use std::time::Instant;

use braid_api::config::RetryOn;
use bytes::Bytes;
use http::{Response, request};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::retry::budget::Budget as _;

use crate::balance;
use crate::client::body::{BodyError, ProxyBody};
use crate::http::forward::is_failure;
use crate::http::headers::{clone_parts, empty_parts, upstream_request};
use crate::http::respond::Failure;
use crate::metrics::{Direction, Label, Metrics, RequestLabels, RetryLabels, TimeoutKind, TimeoutLabels};
use crate::table::{Route, Service};

/// A request body: kept in memory (so it can be sent again), or left streaming.
pub enum Kept {
    Yes(Bytes),
    No(ProxyBody),
}

/// Reads the body into memory when it is known to be at most `limit` bytes; otherwise leaves it
/// streaming (and the request is then not retried or mirrored).
pub async fn keep_small_body(body: ProxyBody, limit: usize) -> Result<Kept, BodyError> {
    if body.is_end_stream() {
        return Ok(Kept::Yes(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(upper) if upper <= limit as u64 => Ok(Kept::Yes(body.collect().await?.to_bytes())),
        _ => Ok(Kept::No(body)),
    }
}

/// Sends the request to an endpoint of a backend the route picks, again (to a fresh pick) while
/// the outcome is one the route retries on, attempts remain, the body was kept and the budget
/// allows. The response comes with the identity of the endpoint that answered.
pub async fn send_with_retries(
    registry: &Metrics,
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
        let pool = endpoint.pool_for(try_parts.version);
        let request = upstream_request(&mut try_parts, request_body, pool.protocol(), endpoint.meshed, false);
        let in_flight = endpoint.start();
        let outcome = match per_try_timeout {
            Some(timeout) => match tokio::time::timeout(timeout, pool.send(request)).await {
                Ok(result) => result.map_err(Failure::Upstream),
                Err(_) => {
                    registry
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
            None => pool.send(request).await.map_err(Failure::Upstream),
        };
        drop(in_flight);
        let healthy = matches!(&outcome, Ok(response) if !response.status().is_server_error());
        let done = Instant::now();
        // A request body the client broke says nothing of the endpoint or its backend: it is
        // counted against neither (five in a row would eject a healthy endpoint), nor retried.
        if matches!(&outcome, Err(Failure::Upstream(error)) if error.is_client_error()) {
            return outcome.map(|response| (response, endpoint.identity.clone()));
        }
        // Per try and per backend: what a canary check judges the canary by.
        let series = backend.metrics.get_or_init(|| registry.backend_metrics(&service.name, &backend.name));
        series.requests.inc();
        if !matches!(&outcome, Ok(response) if !is_failure(response)) {
            series.failures.inc();
        }
        series.latency.observe(done.saturating_duration_since(now));
        endpoint.record(done.saturating_duration_since(now), healthy, &service.load_balancer, done);
        if !last && should_retry(&outcome, retry_on) {
            let retry_labels = RetryLabels {
                direction: Direction::outbound,
                dst_service: labels.dst_service.clone(),
                route: labels.route.clone(),
            };
            if service.budget.withdraw() {
                registry.retries.get_or_create(&retry_labels).inc();
                continue;
            }
            registry.retry_budget_exhausted.get_or_create(&retry_labels).inc();
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
