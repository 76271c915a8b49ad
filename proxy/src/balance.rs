//! Load balancing: power of two choices over a peak-sensitive EWMA of latency, weighted by
//! outstanding requests (as Linkerd and Finagle do), and outlier ejection after consecutive
//! failures, with an ejection time that doubles for an endpoint that keeps failing. An endpoint
//! that could not be reached at all is passed over at once, for a short backoff: an address that
//! does not answer (a pod deleted while discovery could not say so) would otherwise cost every
//! request picked for it a connect timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_api::config::LoadBalancerConfig;

use crate::client::{Pool, TlsTarget, UpstreamProtocol};
use crate::identity::{ALPN_H2, ALPN_OPAQUE, IdentityStore};
use crate::metrics::Label;

/// The latency assumed for an endpoint that has not answered yet.
const INITIAL_LATENCY_NANOS: f64 = 1_000_000.0;
/// Without new samples an endpoint's latency estimate fades with this time constant, so one that
/// was slow once (its first request paid for the TLS handshake) is tried again instead of being
/// starved forever: peak-EWMA's decay, applied at read time as Finagle and Linkerd do.
const IDLE_DECAY_SECS: f64 = 10.0;
/// An endpoint no connection reached is passed over this long, doubling while its connects keep
/// failing, up to `UNREACHABLE_BACKOFF_MAX`; the first request after the backoff tries it again,
/// and any answer ends it. Short, unlike an ejection: a pod that refused while starting is back
/// within a second.
const UNREACHABLE_BACKOFF_MIN: Duration = Duration::from_secs(1);
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What became of one request sent to an endpoint, as the balancer judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a server error.
    Healthy,
    /// A server error, or the connection broke before a response.
    Failed,
    /// No connection reached the endpoint: refused, unreachable, timed out, or its mTLS
    /// handshake failed.
    Unreachable,
}

/// One upstream endpoint: its connections and what the balancer knows of it. Kept across
/// configuration reloads while the endpoint stays, so pools and statistics survive.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub meshed: bool,
    /// The SPIFFE id the endpoint must prove (mTLS), or empty (plaintext).
    pub identity: Label,
    pub pool: Pool,
    /// For this pod itself (`EndpointConfig::local`): the pool of HTTP/2 connections to the app,
    /// for requests that came in as HTTP/2 (`pool` is then HTTP/1.1), as on the inbound side.
    local_http2: Option<Pool>,
    /// How opaque TCP reaches it: TLS with ALPN braid/opaque when it has an identity.
    pub opaque_tls: Option<TlsTarget>,
    pending: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    ewma_nanos: f64,
    last_sample: Option<Instant>,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    unreachable_until: Option<Instant>,
    unreachable_streak: u32,
}

impl Health {
    fn passed_over(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
            || self.unreachable_until.is_some_and(|until| until > now)
    }
}

impl Endpoint {
    pub fn new(
        addr: SocketAddr,
        meshed: bool,
        http2: bool,
        identity: Option<&str>,
        store: Option<&Arc<IdentityStore>>,
    ) -> Self {
        let protocol = if meshed || http2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
        Self::with_protocol(addr, meshed, protocol, identity, store)
    }

    /// This pod itself: requests go straight to the app, each in the protocol it came in.
    pub fn local(addr: SocketAddr) -> Self {
        let mut endpoint = Self::with_protocol(addr, false, UpstreamProtocol::Http1, None, None);
        endpoint.local_http2 = Some(Pool::new(addr, UpstreamProtocol::Http2));
        endpoint
    }

    fn with_protocol(
        addr: SocketAddr,
        meshed: bool,
        protocol: UpstreamProtocol,
        identity: Option<&str>,
        store: Option<&Arc<IdentityStore>>,
    ) -> Self {
        let tls = |alpn| match (identity, store) {
            (Some(identity), Some(store)) => Some(TlsTarget::new(store.clone(), identity.to_owned(), alpn)),
            _ => None,
        };
        Self {
            addr,
            meshed,
            identity: Label::new(identity.unwrap_or("")),
            pool: Pool::with_tls(addr, protocol, tls(ALPN_H2)),
            local_http2: None,
            opaque_tls: tls(ALPN_OPAQUE),
            pending: AtomicU32::new(0),
            health: Mutex::new(Health {
                ewma_nanos: INITIAL_LATENCY_NANOS,
                last_sample: None,
                consecutive_failures: 0,
                ejected_until: None,
                ejections: 0,
                unreachable_until: None,
                unreachable_streak: 0,
            }),
        }
    }

    /// The pool a request of `version` goes through.
    #[inline]
    pub fn pool_for(&self, version: http::Version) -> &Pool {
        match &self.local_http2 {
            Some(http2) if version == http::Version::HTTP_2 => http2,
            _ => &self.pool,
        }
    }

    /// Whether this endpoint is this pod itself.
    pub fn is_local(&self) -> bool {
        self.local_http2.is_some()
    }

    fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn is_ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|until| until > now)
    }

    /// Whether the balancer passes this endpoint over: ejected, or backing off after it could not
    /// be reached.
    fn passed_over(&self, now: Instant) -> bool {
        self.health().passed_over(now)
    }

    fn cost(&self, now: Instant) -> f64 {
        let pending = f64::from(self.pending.load(Ordering::Relaxed));
        let health = self.health();
        // One passed over is chosen only when every other one is passed over too.
        let penalty = if health.passed_over(now) { 1e12 } else { 0.0 };
        let idle = health.last_sample.map_or(0.0, |last| now.saturating_duration_since(last).as_secs_f64());
        let ewma = health.ewma_nanos * (-idle / IDLE_DECAY_SECS).exp();
        ewma * (pending + 1.0) + penalty
    }

    /// Marks a request as outstanding until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self }
    }

    /// Records one request's outcome: its latency feeds the EWMA; a failure counts towards
    /// ejection, a success resets the count; an endpoint not reached is backed off from at once.
    pub fn record(&self, latency: Duration, outcome: Outcome, config: &LoadBalancerConfig, now: Instant) {
        let mut health = self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if outcome == Outcome::Unreachable {
            let backoff = (UNREACHABLE_BACKOFF_MIN * (1u32 << health.unreachable_streak.min(16)))
                .min(UNREACHABLE_BACKOFF_MAX);
            health.unreachable_until = Some(now + backoff);
            health.unreachable_streak += 1;
            tracing::debug!(endpoint = %self.addr, ?backoff, "endpoint not reached: passed over for the backoff");
        } else {
            health.unreachable_until = None;
            health.unreachable_streak = 0;
        }
        let success = outcome == Outcome::Healthy;
        let sample = latency.as_nanos() as f64;
        // Peak-sensitive: a slower answer is believed at once, a faster one only gradually.
        health.ewma_nanos = match health.last_sample {
            _ if sample > health.ewma_nanos => sample,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                let decay = (-elapsed / config.ewma_decay.as_secs_f64().max(1e-3)).exp();
                health.ewma_nanos * decay + sample * (1.0 - decay)
            }
            None => sample,
        };
        health.last_sample = Some(now);
        if success {
            health.consecutive_failures = 0;
            // An endpoint that stayed healthy for a full maximum ejection time starts afresh.
            if health.ejected_until.is_some_and(|until| now > until + config.max_ejection_time) {
                health.ejections = 0;
                health.ejected_until = None;
            }
            return;
        }
        health.consecutive_failures += 1;
        if config.consecutive_failures > 0 && health.consecutive_failures >= config.consecutive_failures {
            let factor = 1u32 << health.ejections.min(16);
            let ejection = (config.base_ejection_time * factor).min(config.max_ejection_time);
            health.ejected_until = Some(now + ejection);
            health.ejections += 1;
            health.consecutive_failures = 0;
            tracing::warn!(endpoint = %self.addr, ?ejection, "endpoint ejected after consecutive failures");
        }
    }
}

pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct endpoints at random, the cheaper one wins. When both are
/// passed over (ejected or backing off), the cheapest endpoint that is not wins instead, so one
/// passed over is picked only when every endpoint is; then the balancer still picks one rather
/// than failing every request (Envoy's panic threshold does the same).
pub fn pick<E: std::borrow::Borrow<Endpoint>>(endpoints: &[E], now: Instant) -> Option<&E> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        len => {
            let a = fastrand::usize(..len);
            let mut b = fastrand::usize(..len - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = (&endpoints[a], &endpoints[b]);
            let winner = if first.borrow().cost(now) <= second.borrow().cost(now) { first } else { second };
            if !winner.borrow().passed_over(now) {
                return Some(winner);
            }
            // Rare (two picks passed over): a scan over the rest costs less than a doomed try.
            let fallback = endpoints
                .iter()
                .filter(|endpoint| !endpoint.borrow().passed_over(now))
                .map(|endpoint| (endpoint.borrow().cost(now), endpoint))
                .min_by(|x, y| x.0.total_cmp(&y.0));
            Some(fallback.map_or(winner, |(_, endpoint)| endpoint))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(count: u16) -> Vec<Endpoint> {
        (0..count)
            .map(|i| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i)), false, false, None, None))
            .collect()
    }

    fn config() -> LoadBalancerConfig {
        LoadBalancerConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(35),
            ..Default::default()
        }
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let endpoints = endpoints(2);
        let now = Instant::now();
        endpoints[0].record(Duration::from_millis(50), Outcome::Healthy, &config(), now);
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), now);
        let picks = (0..100).filter(|_| pick(&endpoints, now).unwrap().addr == endpoints[1].addr).count();
        assert_eq!(picks, 100, "with two endpoints, P2C always compares both");
    }

    #[test]
    fn an_endpoint_slow_once_is_tried_again_once_its_estimate_has_faded() {
        let endpoints = endpoints(2);
        let start = Instant::now();
        // Its only request was slow (a new connection); the other keeps answering fast.
        endpoints[0].record(Duration::from_millis(50), Outcome::Healthy, &config(), start);
        let later = start + Duration::from_secs(60);
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), later);
        assert_eq!(pick(&endpoints, start).unwrap().addr, endpoints[1].addr, "slow just now");
        assert_eq!(
            pick(&endpoints, later).unwrap().addr,
            endpoints[0].addr,
            "idle for a minute: probed again"
        );
    }

    #[test]
    fn spreads_load_by_outstanding_requests() {
        let endpoints = endpoints(2);
        let now = Instant::now();
        let _busy: Vec<_> = (0..5).map(|_| endpoints[0].start()).collect();
        assert_eq!(pick(&endpoints, now).unwrap().addr, endpoints[1].addr);
    }

    #[test]
    fn ejects_after_consecutive_failures_with_doubling_backoff() {
        let endpoints = endpoints(2);
        let config = config();
        let start = Instant::now();
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, start);
        }
        assert!(endpoints[0].is_ejected(start + Duration::from_secs(9)));
        assert!(!endpoints[0].is_ejected(start + Duration::from_secs(11)));
        for _ in 0..200 {
            assert_eq!(pick(&endpoints, start).unwrap().addr, endpoints[1].addr);
        }
        // Fails again after coming back: ejected twice as long, then capped at the maximum.
        let later = start + Duration::from_secs(11);
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, later);
        }
        assert!(endpoints[0].is_ejected(later + Duration::from_secs(19)));
        assert!(!endpoints[0].is_ejected(later + Duration::from_secs(21)));
        let third = later + Duration::from_secs(21);
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, third);
        }
        assert!(endpoints[0].is_ejected(third + Duration::from_secs(34)));
        assert!(!endpoints[0].is_ejected(third + Duration::from_secs(36)));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let endpoints = endpoints(1);
        let now = Instant::now();
        for _ in 0..10 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config(), now);
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config(), now);
            endpoints[0].record(Duration::from_millis(1), Outcome::Healthy, &config(), now);
        }
        assert!(!endpoints[0].is_ejected(now));
    }

    #[test]
    fn still_picks_when_every_endpoint_is_ejected() {
        let endpoints = endpoints(3);
        let now = Instant::now();
        for endpoint in &endpoints {
            for _ in 0..3 {
                endpoint.record(Duration::from_millis(1), Outcome::Failed, &config(), now);
            }
        }
        assert!(endpoints.iter().all(|endpoint| endpoint.is_ejected(now)));
        assert!(pick(&endpoints, now).is_some());
    }

    #[test]
    fn an_endpoint_not_reached_is_never_picked_during_its_backoff_while_others_are_available() {
        let endpoints = endpoints(10);
        let start = Instant::now();
        // Half the endpoints are addresses of deleted pods: each was tried once and not reached.
        for endpoint in &endpoints[..5] {
            endpoint.record(Duration::from_secs(1), Outcome::Unreachable, &config(), start);
        }
        let dead = |addr: SocketAddr| endpoints[..5].iter().any(|endpoint| endpoint.addr == addr);
        let soon = start + Duration::from_millis(900);
        let picked_dead = (0..1000).filter(|_| dead(pick(&endpoints, soon).unwrap().addr)).count();
        assert_eq!(picked_dead, 0, "picks of an unreached endpoint within its first second");
        // The backoff ends and the endpoint is tried again; not reached again, it waits twice as
        // long; any answer ends the backoff at once.
        let retry = start + Duration::from_millis(1100);
        assert!(!endpoints[0].passed_over(retry));
        endpoints[0].record(Duration::from_secs(1), Outcome::Unreachable, &config(), retry);
        assert!(endpoints[0].passed_over(retry + Duration::from_millis(1900)));
        assert!(!endpoints[0].passed_over(retry + Duration::from_millis(2100)));
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), retry);
        assert!(!endpoints[1].passed_over(retry));
        assert!(!endpoints[0].is_ejected(retry), "not reached twice is not an ejection");
    }

    #[test]
    fn the_unreached_backoff_is_capped_so_a_pod_that_comes_back_is_tried_within_seconds() {
        let endpoints = endpoints(2);
        // Outlier ejection off: the backoff alone.
        let config = LoadBalancerConfig { consecutive_failures: 0, ..config() };
        let mut now = Instant::now();
        for _ in 0..20 {
            endpoints[0].record(Duration::from_secs(1), Outcome::Unreachable, &config, now);
            now += UNREACHABLE_BACKOFF_MAX + Duration::from_millis(1);
            assert!(!endpoints[0].passed_over(now), "tried again within {UNREACHABLE_BACKOFF_MAX:?}");
        }
    }
}
