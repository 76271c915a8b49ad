//! Sending a routed request, with retries under the route's budget (or its service's) and per-try
//! timeouts; the body is kept for replay when it is small enough.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::config::RetryOn;
use bytes::Bytes;
use http::{Response, request};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::retry::budget::Budget as _;

use crate::balance;
use crate::client::body::{BodyError, ProxyBody};
use crate::client::replay::ReplayBody;
use crate::http::forward::is_failure;
use crate::http::headers::{clone_parts, empty_parts, upstream_request};
use crate::http::respond::{Failure, is_connect_failure};
use crate::metrics::{
    Answerer, Direction, Label, Metrics, RequestLabels, RetryLabels, TimeoutKind, TimeoutLabels,
};
use crate::table::{Backend, Route, Service};
use tracing::debug;

/// A request body: kept in memory (so it can be sent again), kept as it streams (up to the
/// bound, for a retry to replay), or left streaming.
pub enum Kept {
    Yes(Bytes),
    Replay(ReplayBody),
    No(ProxyBody),
}

impl Kept {
    /// Whether another try can send the whole body again.
    fn can_send_again(&self) -> bool {
        match self {
            Self::Yes(_) => true,
            Self::Replay(body) => body.can_replay(),
            Self::No(_) => false,
        }
    }
}

/// Reads the body into memory when it is known to be at most `limit` bytes. A body of unknown
/// length is kept as it streams when the request may be `retried` (a retry replays it unless it
/// grew past `limit`); a larger one, or one nothing may send twice, is left streaming.
pub async fn keep_for_replay(body: ProxyBody, limit: usize, retried: bool) -> Result<Kept, BodyError> {
    if body.is_end_stream() {
        return Ok(Kept::Yes(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(upper) if upper <= limit as u64 => Ok(Kept::Yes(body.collect().await?.to_bytes())),
        None if retried => Ok(Kept::Replay(ReplayBody::new(body, limit))),
        _ => Ok(Kept::No(body)),
    }
}

/// Sends the request to an endpoint of a backend the route picks, again (to a fresh pick) while
/// the outcome is one the route retries on, attempts remain, the body was kept and the budget
/// allows. The response comes with the identity of the endpoint that answered.
/// `affinity` is the request's session-affinity key (`hashOn`), if it has one.
pub async fn send_with_retries(
    registry: &Metrics,
    service: &Service,
    route: &Route,
    labels: &RequestLabels,
    parts: request::Parts,
    body: Kept,
    affinity: Option<u64>,
) -> Result<(Response<ProxyBody>, Answerer), Failure> {
    let (attempts, per_try_timeout, retry_on) = match (&route.retries, &body) {
        (Some(retries), Kept::Yes(_) | Kept::Replay(_)) => {
            (retries.attempts, retries.per_try_timeout, retries.retry_on.as_slice())
        }
        (Some(retries), Kept::No(_)) => (1, retries.per_try_timeout, &[][..]),
        (None, _) => (1, None, &[][..]),
    };
    let context = TryContext { registry, service, labels, per_try_timeout, affinity };
    let mut parts = parts;
    let mut body = Some(body);
    for attempt in 1..=attempts {
        let picked = route.pick_backend();
        let backend = &service.backends[picked];
        let now = Instant::now();
        let Some(endpoint) = service.balancer(backend).choose(&backend.endpoints, affinity, now) else {
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
            Some(Kept::Replay(replay)) => {
                if !last {
                    body = replay.replay().map(Kept::Replay);
                }
                ProxyBody::replay(replay)
            }
            Some(Kept::No(body)) => body,
            None => ProxyBody::empty(),
        };
        let mut try_parts =
            if last { std::mem::replace(&mut parts, empty_parts()) } else { clone_parts(&parts) };
        let pool = endpoint.pool_for(try_parts.version);
        let request = upstream_request(&mut try_parts, request_body, pool.protocol(), endpoint.meshed, false);
        let (endpoint, outcome) =
            send_once(&context, route, (picked, backend), endpoint, request, try_parts.version).await;
        // A request body the client broke, or a request this proxy's connection limits kept from
        // leaving, is neither retried nor held against anyone (send_once did not record it); one
        // over the limits is counted as overloaded, as one over maxRequests is.
        if let Err(Failure::Upstream(error)) = &outcome
            && (error.is_client_error() || error.never_sent())
        {
            if error.is_overflow() {
                let labels = RetryLabels {
                    direction: Direction::outbound,
                    dst_service: labels.dst_service.clone(),
                    route: labels.route.clone(),
                };
                registry.overloaded.get_or_create(&labels).inc();
            }
            return outcome.map(|response| (response, endpoint.answerer()));
        }
        if !last
            && should_retry(&outcome, retry_on, endpoint.meshed)
            && body.as_ref().is_some_and(Kept::can_send_again)
            && let Some(pause) = pause_before_retry(attempt, &outcome)
        {
            let retry_labels = RetryLabels {
                direction: Direction::outbound,
                dst_service: labels.dst_service.clone(),
                route: labels.route.clone(),
            };
            if route.budget(service).withdraw() {
                registry.retries.get_or_create(&retry_labels).inc();
                drop(outcome);
                tokio::time::sleep(pause).await;
                continue;
            }
            registry.retry_budget_exhausted.get_or_create(&retry_labels).inc();
        }
        return outcome.map(|response| (response, endpoint.answerer()));
    }
    // attempts >= 1 (checked with the configuration), so the loop returned.
    Err(Failure::NoEndpoints { service: service.name.clone(), backend: Label::empty() })
}

/// What every try of a request shares.
struct TryContext<'a> {
    registry: &'a Metrics,
    service: &'a Service,
    labels: &'a RequestLabels,
    per_try_timeout: Option<Duration>,
    affinity: Option<u64>,
}

/// How long one try goes on to other endpoints when no connection could be had to the ones
/// chosen (each may take the 1 s connect timeout; a refusal is immediate): Linkerd's outbound
/// HTTP balancer waits as long for an endpoint it can reach before it fails the request.
const UNREACHABLE_WINDOW: Duration = Duration::from_secs(3);

/// One try: `request` to `endpoint`, and while no connection to it can be had (refused, gone,
/// a failed handshake), so that none of the request left, to another endpoint of the backend
/// that is not passed over (the unreachable one now is), and when the backend has none left,
/// to one of the route's other weighted backends (a split's or rollout's other version): each
/// endpoint at most once, for up to `UNREACHABLE_WINDOW`. Pods that are gone while discovery
/// still lists them (a control plane failing over while a Deployment rolls, a node lost) then
/// cost the next requests connect attempts, not the requests, however many of the backend's
/// pods went: Linkerd's balancer sends only to endpoints it is connected to, to the same
/// effect. Each endpoint's outcome is recorded (its health, the backend's series) except a
/// request the client broke or this proxy's limits held back. `version` is the client's (it
/// chooses the endpoint's pool). Returns the endpoint that had the request last, and how it
/// went.
async fn send_once<'b>(
    context: &TryContext<'b>,
    route: &Route,
    (mut backend_index, mut backend): (usize, &'b Backend),
    mut endpoint: &'b Arc<balance::Endpoint>,
    mut request: http::Request<ProxyBody>,
    version: http::Version,
) -> (&'b Arc<balance::Endpoint>, Result<Response<ProxyBody>, Failure>) {
    let (mut repicks, first_started) = (0, Instant::now());
    loop {
        let pool = endpoint.pool_for(version);
        let protocol = pool.protocol();
        let started = Instant::now();
        let in_flight = endpoint.start();
        let sent = match context.per_try_timeout {
            Some(timeout) => match tokio::time::timeout(timeout, pool.try_send(request)).await {
                Ok(sent) => sent.map_err(|failed| (Failure::Upstream(failed.error), failed.unsent)),
                Err(_) => {
                    context
                        .registry
                        .timeouts
                        .get_or_create(&TimeoutLabels {
                            direction: Direction::outbound,
                            dst_service: context.labels.dst_service.clone(),
                            route: context.labels.route.clone(),
                            kind: TimeoutKind::per_try,
                        })
                        .inc();
                    Err((Failure::PerTryTimeout { addr: endpoint.addr, timeout }, None))
                }
            },
            None => pool
                .try_send(request)
                .await
                .map_err(|failed| (Failure::Upstream(failed.error), failed.unsent)),
        };
        drop(in_flight);
        let (outcome, unsent) = match sent {
            Ok(response) => (Ok(response), None),
            Err((failure, unsent)) => (Err(failure), unsent),
        };
        if let Err(Failure::Upstream(error)) = &outcome
            && (error.is_client_error() || error.never_sent())
        {
            return (endpoint, outcome);
        }
        let done = Instant::now();
        let judged = match &outcome {
            Ok(response) if is_connect_failure(endpoint.meshed, response) => balance::Outcome::Unreachable,
            Ok(response) if !response.status().is_server_error() => balance::Outcome::Healthy,
            Err(Failure::Upstream(error)) if error.is_endpoint_unreachable() => balance::Outcome::Unreachable,
            _ => balance::Outcome::Failed,
        };
        // Per try and per backend: what a canary check judges the canary by.
        let series = backend
            .metrics
            .get_or_init(|| context.registry.backend_metrics(&context.service.name, &backend.name));
        series.requests.inc();
        if !matches!(&outcome, Ok(response) if !is_failure(response)) {
            series.failures.inc();
        }
        series.latency.observe(done.saturating_duration_since(started));
        endpoint.record(
            done.saturating_duration_since(started),
            judged,
            &context.service.load_balancer,
            &backend.endpoints,
            done,
        );
        let unreachable = judged == balance::Outcome::Unreachable;
        if let (Some(unsent), true) = (unsent, unreachable)
            && done.saturating_duration_since(first_started) < UNREACHABLE_WINDOW
            // Every endpoint of the service bounds it; passed-over ones are never picked again.
            && repicks < context.service.backends.iter().map(|b| b.endpoints.len()).sum::<usize>()
        {
            // The request was written for this endpoint's protocol and mesh membership.
            let usable = |next: &Arc<balance::Endpoint>| {
                !next.passed_over(done)
                    && next.meshed == endpoint.meshed
                    && next.pool_for(version).protocol() == protocol
            };
            let choose = |index: usize| {
                let candidate = &context.service.backends[index];
                let next = context.service.balancer(candidate).choose(
                    &candidate.endpoints,
                    context.affinity,
                    done,
                )?;
                usable(next).then_some((index, candidate, next))
            };
            let next = choose(backend_index).or_else(|| {
                route.weighted_backends().filter(|&index| index != backend_index).find_map(choose)
            });
            if let Some((index, next_backend, next)) = next {
                repicks += 1;
                (backend_index, backend, endpoint) = (index, next_backend, next);
                request = *unsent;
                continue;
            }
        }
        if unreachable && outcome.is_err() {
            // Why the request goes back failed rather than to another endpoint: what an operator
            // needs to tell a gone pod that discovery still lists from a backend with no live one.
            debug!(
                endpoint = %endpoint.addr,
                backend = backend.name.as_str(),
                repicks,
                elapsed = ?done.saturating_duration_since(first_started),
                "endpoint not reached, and no other endpoint of the route's backends to send to"
            );
        }
        return (endpoint, outcome);
    }
}

/// Between tries: an exponential backoff from 25 ms up to 250 ms with full jitter (Envoy's
/// defaults), so that retries of many clients do not arrive in step; or what the answer's
/// `retry-after` asks, in whole seconds, up to `MAX_RETRY_AFTER`. None when it asks for more:
/// then the answer goes back to the client rather than holding the request that long.
fn pause_before_retry(attempt: u32, outcome: &Result<Response<ProxyBody>, Failure>) -> Option<Duration> {
    if let Ok(response) = outcome
        && let Some(value) = response.headers().get(http::header::RETRY_AFTER)
        && let Some(seconds) = value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok())
    {
        let asked = Duration::from_secs(seconds);
        return (asked <= MAX_RETRY_AFTER).then_some(asked);
    }
    let ceiling = (BACKOFF_BASE * 2u32.saturating_pow(attempt.saturating_sub(1))).min(BACKOFF_MAX);
    Some(Duration::from_micros(fastrand::u64(..=ceiling.as_micros() as u64)))
}

const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// The longest `retry-after` a retry waits for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The `grpc-status` of a trailers-only gRPC answer (the status in its headers): the only gRPC
/// failure known before any of the answer went to the client.
fn grpc_status(response: &Response<ProxyBody>) -> Option<u8> {
    response.headers().get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Whether the route retries `outcome`, the answer of an endpoint that is `meshed` or not.
fn should_retry(outcome: &Result<Response<ProxyBody>, Failure>, retry_on: &[RetryOn], meshed: bool) -> bool {
    let on = |condition: RetryOn| retry_on.contains(&condition);
    match outcome {
        Ok(response) => {
            let status = response.status();
            (status.is_server_error() && on(RetryOn::FiveXx))
                || (on(RetryOn::ConnectFailure) && is_connect_failure(meshed, response))
                || (matches!(status.as_u16(), 502..=504) && on(RetryOn::GatewayError))
                || grpc_status(response).is_some_and(|code| {
                    retry_on.iter().any(|condition| condition.grpc_status() == Some(code))
                })
        }
        Err(Failure::Upstream(error)) if error.is_connect() => {
            on(RetryOn::ConnectFailure) || on(RetryOn::FiveXx)
        }
        Err(Failure::Upstream(_)) => on(RetryOn::Reset) || on(RetryOn::FiveXx),
        Err(Failure::PerTryTimeout { .. }) => on(RetryOn::GatewayError) || on(RetryOn::FiveXx),
        Err(Failure::Timeout { .. } | Failure::NoEndpoints { .. }) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)]) -> Result<Response<ProxyBody>, Failure> {
        let mut builder = Response::builder().status(503);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        Ok(builder.body(ProxyBody::empty()).expect("test response"))
    }

    #[test]
    fn the_pause_grows_with_the_attempt_within_the_jittered_ceiling() {
        for (attempt, ceiling_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
            let pauses: Vec<Duration> =
                (0..200).filter_map(|_| pause_before_retry(attempt, &answer(&[]))).collect();
            assert_eq!(pauses.len(), 200);
            assert!(pauses.iter().all(|p| *p <= Duration::from_millis(ceiling_ms)), "attempt {attempt}");
            // Full jitter: spread over the range, not a fixed step.
            let distinct: std::collections::BTreeSet<_> = pauses.iter().collect();
            assert!(distinct.len() > 100, "attempt {attempt}: {} distinct pauses", distinct.len());
        }
    }

    #[test]
    fn retry_after_in_seconds_is_waited_for_up_to_its_bound_and_a_longer_one_is_not_retried() {
        assert_eq!(pause_before_retry(1, &answer(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(pause_before_retry(1, &answer(&[("retry-after", "11")])), None);
        // An HTTP date (or anything else) is not read: the usual backoff applies.
        let dated = answer(&[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")]);
        assert!(pause_before_retry(1, &dated).is_some_and(|p| p <= BACKOFF_BASE));
    }

    #[test]
    fn grpc_conditions_retry_their_status_in_a_trailers_only_answer() {
        let unavailable = {
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .body(ProxyBody::empty());
            Ok(response.expect("test response"))
        };
        assert!(should_retry(&unavailable, &[RetryOn::Unavailable], true));
        assert!(!should_retry(&unavailable, &[RetryOn::DeadlineExceeded, RetryOn::FiveXx], true));
        let ok = Ok(Response::builder()
            .header("grpc-status", "0")
            .body(ProxyBody::empty())
            .expect("test response"));
        assert!(!should_retry(&ok, &[RetryOn::Unavailable, RetryOn::Cancelled], true));
    }

    #[test]
    fn a_meshed_endpoints_proxy_that_could_not_reach_its_app_is_a_connect_failure() {
        let app_gone = answer(&[("braid-proxy-error", "connect-failure")]);
        assert!(should_retry(&app_gone, &[RetryOn::ConnectFailure], true));
        // From an endpoint without a braid proxy the header is the app's own: a plain 503.
        assert!(!should_retry(&app_gone, &[RetryOn::ConnectFailure], false));
        // Another 503 of the proxy's, or the app's own 503, is not a connect failure.
        assert!(!should_retry(
            &answer(&[("braid-proxy-error", "overloaded")]),
            &[RetryOn::ConnectFailure],
            true
        ));
        assert!(!should_retry(&answer(&[]), &[RetryOn::ConnectFailure], true));
        assert!(should_retry(&answer(&[]), &[RetryOn::FiveXx], true));
    }
}
