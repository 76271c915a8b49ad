//! Load balancing: power of two choices over a peak-sensitive EWMA of latency, weighted by
//! outstanding requests (as Linkerd and Finagle do), and outlier ejection after consecutive
//! failures, with an ejection time that doubles for an endpoint that keeps failing. An endpoint
//! that could not be reached at all is passed over at once, for a short backoff: an address that
//! does not answer (a pod deleted while discovery could not say so) would otherwise cost every
//! request picked for it a connect timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_api::config::{Algorithm, LoadBalancerConfig};

use crate::client::{Pool, TlsTarget, UpstreamProtocol};
use crate::identity::{ALPN_H2, ALPN_OPAQUE, IdentityStore};
use crate::metrics::{Answerer, DstPod, Label};

/// The latency assumed for an endpoint that has not answered yet.
const INITIAL_LATENCY_NANOS: f64 = 1_000_000.0;
/// Without new samples an endpoint's latency estimate fades with this time constant, so one that
/// was slow once (its first request paid for the TLS handshake) is tried again instead of being
/// starved forever: peak-EWMA's decay, applied at read time as Finagle and Linkerd do.
const IDLE_DECAY_SECS: f64 = 10.0;
/// Added to the cost of an endpoint passed over (ejected or backing off): more than any real
/// cost, so it loses to every other.
const PASSED_OVER_PENALTY: f64 = 1e12;
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
    /// The pod behind it, as discovery named it (its answers' `dst_*` labels).
    pub pod: DstPod,
    pub pool: Pool,
    /// For this pod itself (`EndpointConfig::local`): the pool of HTTP/2 connections to the app,
    /// for requests that came in as HTTP/2 (`pool` is then HTTP/1.1), as on the inbound side.
    /// Boxed: one endpoint of a whole mesh's has it, and a pool inline would double every
    /// endpoint's size (a sidecar holds every endpoint of the services it may call).
    local_http2: Option<Box<Pool>>,
    /// How opaque TCP reaches it: TLS with ALPN braid/opaque when it has an identity.
    pub opaque_tls: Option<TlsTarget>,
    pending: AtomicU32,
    health: Mutex<Health>,
    /// The address, hashed once, for rendezvous hashing.
    addr_hash: u64,
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
        endpoint.local_http2 = Some(Box::new(Pool::new(addr, UpstreamProtocol::Http2)));
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
            pod: DstPod::default(),
            pool: Pool::with_tls(addr, protocol, tls(ALPN_H2)),
            local_http2: None,
            opaque_tls: tls(ALPN_OPAQUE),
            pending: AtomicU32::new(0),
            addr_hash: hash_of(&addr),
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

    /// The pod behind this endpoint (`EndpointConfig::pod`).
    pub fn with_pod(mut self, pod: DstPod) -> Self {
        self.pod = pod;
        self
    }

    /// Who answers a request this endpoint had: what labels its answers.
    pub fn answerer(&self) -> Answerer {
        Answerer { server_id: self.identity.clone(), pod: self.pod.clone() }
    }

    /// Whether the balancer passes this endpoint over: ejected, or backing off after it could not
    /// be reached.
    pub fn passed_over(&self, now: Instant) -> bool {
        self.health().passed_over(now)
    }

    fn cost(&self, now: Instant) -> f64 {
        let pending = f64::from(self.pending.load(Ordering::Relaxed));
        let health = self.health();
        // One passed over is chosen only when every other one is passed over too.
        let penalty = if health.passed_over(now) { PASSED_OVER_PENALTY } else { 0.0 };
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
    /// `siblings` are the backend's endpoints (this one among them): at most
    /// `maxEjectedPercent` of them are ejected at once.
    pub fn record<E: std::borrow::Borrow<Endpoint>>(
        &self,
        latency: Duration,
        outcome: Outcome,
        config: &LoadBalancerConfig,
        siblings: &[E],
        now: Instant,
    ) {
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
        // An ejected endpoint still gets requests when nothing better is left; its failures then
        // must not eject it again, or its ejection would double to the maximum within seconds
        // and keep it out long after it recovers (Envoy does not re-eject an ejected host).
        let ejected = health.ejected_until.is_some_and(|until| until > now);
        if config.consecutive_failures > 0
            && !ejected
            && health.consecutive_failures >= config.consecutive_failures
            && may_eject_another(siblings, self, config.max_ejected_percent, now)
        {
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

/// Whether one more of `siblings` may be ejected: fewer than `max_percent` of them are (one
/// always may be). Counted only when an ejection is due, so never on the request path.
fn may_eject_another<E: std::borrow::Borrow<Endpoint>>(
    siblings: &[E],
    this: &Endpoint,
    max_percent: u32,
    now: Instant,
) -> bool {
    let allowed = (siblings.len() * max_percent.min(100) as usize / 100).max(1);
    let ejected = siblings
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|other| !std::ptr::eq(*other, this))
        .filter(|other| other.health().ejected_until.is_some_and(|until| until > now))
        .count();
    ejected < allowed
}

/// How a backend's endpoints are chosen: its load-balancer settings and its round-robin cursor.
pub struct Balancer<'a> {
    pub config: &'a LoadBalancerConfig,
    pub cursor: &'a AtomicUsize,
}

impl Balancer<'_> {
    /// The endpoint for one request: the one its affinity key (`hashOn`) hashes to among the
    /// available endpoints, when it has a key; otherwise as the algorithm picks.
    pub fn choose<'e, E: std::borrow::Borrow<Endpoint>>(
        &self,
        endpoints: &'e [E],
        key: Option<u64>,
        now: Instant,
    ) -> Option<&'e E> {
        if let Some(key) = key
            && endpoints.len() > 1
        {
            return rendezvous(endpoints, key, now);
        }
        match self.config.algorithm {
            Algorithm::Ewma => pick(endpoints, now),
            Algorithm::LeastRequest => two_choices(endpoints, now, |endpoint| {
                let passed_over = if endpoint.passed_over(now) { PASSED_OVER_PENALTY } else { 0.0 };
                f64::from(endpoint.pending.load(Ordering::Relaxed)) + passed_over
            }),
            Algorithm::RoundRobin => {
                let len = endpoints.len();
                if len == 0 {
                    return None;
                }
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                // The next available one in turn; when none is, the next one anyway.
                (0..len)
                    .map(|i| &endpoints[(start + i) % len])
                    .find(|endpoint| !endpoint.borrow().passed_over(now))
                    .or_else(|| endpoints.get(start % len))
            }
        }
    }
}

/// Rendezvous (highest random weight) hashing: each available endpoint scores the key, the highest
/// wins; when endpoints come or go only the keys they win move. When none is available, all score.
fn rendezvous<E: std::borrow::Borrow<Endpoint>>(endpoints: &[E], key: u64, now: Instant) -> Option<&E> {
    let best = |available: bool| {
        endpoints
            .iter()
            .filter(|endpoint| !available || !endpoint.borrow().passed_over(now))
            .max_by_key(|endpoint| mix(key ^ endpoint.borrow().addr_hash))
    };
    best(true).or_else(|| best(false))
}

/// The session-affinity key of a request under `hash_on`, hashed: the header's value, the
/// cookie's value, or the client's IP address. None when the request has no such key.
pub fn affinity_key(
    hash_on: Option<&braid_api::config::HashOn>,
    headers: &http::HeaderMap,
    client: Option<std::net::IpAddr>,
) -> Option<u64> {
    use braid_api::config::HashOn;
    match hash_on? {
        HashOn::Header(name) => headers.get(name.as_str()).map(|value| hash_of(value.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|cookies| cookies.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| hash_of(value.as_bytes()))
            }),
        HashOn::SourceIp => client.map(|ip| hash_of(&ip)),
    }
}

/// A session-affinity key's hash.
pub fn hash_of<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
}

/// SplitMix64's finaliser: spreads a key-endpoint pair over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Power of two choices over EWMA latency: two distinct endpoints at random, the cheaper one wins.
/// When both are passed over (ejected or backing off), the cheapest endpoint that is not wins
/// instead, so one passed over is picked only when every endpoint is; then the balancer still
/// picks one rather than failing every request (Envoy's panic threshold does the same).
pub fn pick<E: std::borrow::Borrow<Endpoint>>(endpoints: &[E], now: Instant) -> Option<&E> {
    two_choices(endpoints, now, |endpoint| endpoint.cost(now))
}

/// Power of two choices under `cost`, in which a passed-over endpoint costs more than any other.
fn two_choices<E: std::borrow::Borrow<Endpoint>>(
    endpoints: &[E],
    now: Instant,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&E> {
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
            let (first_cost, second_cost) = (cost(first.borrow()), cost(second.borrow()));
            let (winner, winner_cost) =
                if first_cost <= second_cost { (first, first_cost) } else { (second, second_cost) };
            // The cost carries the penalty of an endpoint passed over: no second look at its health.
            if winner_cost < PASSED_OVER_PENALTY {
                return Some(winner);
            }
            // Rare (two picks passed over): a scan over the rest costs less than a doomed try.
            let fallback = endpoints
                .iter()
                .filter(|endpoint| !endpoint.borrow().passed_over(now))
                .map(|endpoint| (cost(endpoint.borrow()), endpoint))
                .min_by(|x, y| x.0.total_cmp(&y.0));
            Some(fallback.map_or(winner, |(_, endpoint)| endpoint))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_stays_small_for_mesh_sized_tables() {
        // A sidecar holds every endpoint of the services it may call (10,000 in a large mesh):
        // each byte here is 10 KB of its memory there.
        let size = std::mem::size_of::<Endpoint>();
        println!("Endpoint: {size} bytes, Pool: {} bytes", std::mem::size_of::<Pool>());
        assert!(size <= 600, "an Endpoint is {size} bytes");
    }

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
        endpoints[0].record(Duration::from_millis(50), Outcome::Healthy, &config(), &endpoints, now);
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), &endpoints, now);
        let picks = (0..100).filter(|_| pick(&endpoints, now).unwrap().addr == endpoints[1].addr).count();
        assert_eq!(picks, 100, "with two endpoints, P2C always compares both");
    }

    #[test]
    fn an_endpoint_slow_once_is_tried_again_once_its_estimate_has_faded() {
        let endpoints = endpoints(2);
        let start = Instant::now();
        // Its only request was slow (a new connection); the other keeps answering fast.
        endpoints[0].record(Duration::from_millis(50), Outcome::Healthy, &config(), &endpoints, start);
        let later = start + Duration::from_secs(60);
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), &endpoints, later);
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
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, start);
        }
        assert!(endpoints[0].is_ejected(start + Duration::from_secs(9)));
        assert!(!endpoints[0].is_ejected(start + Duration::from_secs(11)));
        for _ in 0..200 {
            assert_eq!(pick(&endpoints, start).unwrap().addr, endpoints[1].addr);
        }
        // Fails again after coming back: ejected twice as long, then capped at the maximum.
        let later = start + Duration::from_secs(11);
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, later);
        }
        assert!(endpoints[0].is_ejected(later + Duration::from_secs(19)));
        assert!(!endpoints[0].is_ejected(later + Duration::from_secs(21)));
        let third = later + Duration::from_secs(21);
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, third);
        }
        assert!(endpoints[0].is_ejected(third + Duration::from_secs(34)));
        assert!(!endpoints[0].is_ejected(third + Duration::from_secs(36)));
    }

    #[test]
    fn failures_while_ejected_do_not_eject_again() {
        // The only endpoint: picked while ejected, as nothing else is left.
        let endpoints = endpoints(1);
        let config = config();
        let start = Instant::now();
        for _ in 0..3 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, start);
        }
        assert!(endpoints[0].is_ejected(start));
        let during = start + Duration::from_secs(1);
        for _ in 0..30 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, during);
        }
        // Still the first ejection's 10 s, not doubled ten times to the maximum.
        assert!(endpoints[0].is_ejected(start + Duration::from_secs(9)));
        assert!(!endpoints[0].is_ejected(start + Duration::from_secs(11)));
        assert_eq!(endpoints[0].health().ejections, 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let endpoints = endpoints(1);
        let now = Instant::now();
        for _ in 0..10 {
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config(), &endpoints, now);
            endpoints[0].record(Duration::from_millis(1), Outcome::Failed, &config(), &endpoints, now);
            endpoints[0].record(Duration::from_millis(1), Outcome::Healthy, &config(), &endpoints, now);
        }
        assert!(!endpoints[0].is_ejected(now));
    }

    #[test]
    fn still_picks_when_every_endpoint_is_ejected() {
        let endpoints = endpoints(3);
        let now = Instant::now();
        for endpoint in &endpoints {
            for _ in 0..3 {
                endpoint.record(Duration::from_millis(1), Outcome::Failed, &config(), &endpoints, now);
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
            endpoint.record(Duration::from_secs(1), Outcome::Unreachable, &config(), &endpoints, start);
        }
        let dead = |addr: SocketAddr| endpoints[..5].iter().any(|endpoint| endpoint.addr == addr);
        let soon = start + Duration::from_millis(900);
        let picked_dead = (0..1000).filter(|_| dead(pick(&endpoints, soon).unwrap().addr)).count();
        assert_eq!(picked_dead, 0, "picks of an unreached endpoint within its first second");
        // The backoff ends and the endpoint is tried again; not reached again, it waits twice as
        // long; any answer ends the backoff at once.
        let retry = start + Duration::from_millis(1100);
        assert!(!endpoints[0].passed_over(retry));
        endpoints[0].record(Duration::from_secs(1), Outcome::Unreachable, &config(), &endpoints, retry);
        assert!(endpoints[0].passed_over(retry + Duration::from_millis(1900)));
        assert!(!endpoints[0].passed_over(retry + Duration::from_millis(2100)));
        endpoints[1].record(Duration::from_millis(1), Outcome::Healthy, &config(), &endpoints, retry);
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
            endpoints[0].record(Duration::from_secs(1), Outcome::Unreachable, &config, &endpoints, now);
            now += UNREACHABLE_BACKOFF_MAX + Duration::from_millis(1);
            assert!(!endpoints[0].passed_over(now), "tried again within {UNREACHABLE_BACKOFF_MAX:?}");
        }
    }

    fn balancer<'a>(config: &'a LoadBalancerConfig, cursor: &'a AtomicUsize) -> Balancer<'a> {
        Balancer { config, cursor }
    }

    #[test]
    fn round_robin_takes_each_available_endpoint_in_turn() {
        let endpoints = endpoints(3);
        let config = LoadBalancerConfig { algorithm: Algorithm::RoundRobin, ..config() };
        let cursor = AtomicUsize::new(0);
        let balancer = balancer(&config, &cursor);
        let now = Instant::now();
        let order: Vec<u16> =
            (0..6).map(|_| balancer.choose(&endpoints, None, now).unwrap().addr.port()).collect();
        assert_eq!(order, [1000, 1001, 1002, 1000, 1001, 1002]);
        endpoints[1].record(Duration::from_secs(1), Outcome::Unreachable, &config, &endpoints, now);
        let order: Vec<u16> =
            (0..4).map(|_| balancer.choose(&endpoints, None, now).unwrap().addr.port()).collect();
        assert!(!order.contains(&1001), "an endpoint backing off is skipped: {order:?}");
    }

    #[test]
    fn least_request_goes_to_the_endpoint_with_fewer_outstanding_requests_whatever_its_latency() {
        let endpoints = endpoints(2);
        let config = LoadBalancerConfig { algorithm: Algorithm::LeastRequest, ..config() };
        let cursor = AtomicUsize::new(0);
        let balancer = balancer(&config, &cursor);
        let now = Instant::now();
        // Slow but idle beats fast but busy (EWMA would weigh the latency).
        endpoints[0].record(Duration::from_millis(500), Outcome::Healthy, &config, &endpoints, now);
        let _busy: Vec<_> = (0..3).map(|_| endpoints[1].start()).collect();
        assert!((0..50).all(|_| balancer.choose(&endpoints, None, now).unwrap().addr.port() == 1000));
    }

    #[test]
    fn a_key_sticks_to_one_endpoint_and_only_the_keys_of_a_removed_endpoint_move() {
        let all = endpoints(5);
        let (config, cursor) = (config(), AtomicUsize::new(0));
        let balancer = balancer(&config, &cursor);
        let now = Instant::now();
        let owner =
            |endpoints: &[Endpoint], key: u64| balancer.choose(endpoints, Some(key), now).unwrap().addr;
        let keys: Vec<u64> = (0..1000).map(|i| hash_of(&format!("user-{i}"))).collect();
        for &key in &keys[..20] {
            assert!((0..20).all(|_| owner(&all, key) == owner(&all, key)), "the same key, the same endpoint");
        }
        let mut per_endpoint = std::collections::HashMap::new();
        for &key in &keys {
            *per_endpoint.entry(owner(&all, key)).or_insert(0) += 1;
        }
        assert_eq!(per_endpoint.len(), 5, "keys spread over every endpoint: {per_endpoint:?}");
        assert!(per_endpoint.values().all(|&n| n > 120), "roughly even: {per_endpoint:?}");
        // Endpoint 2 leaves: its keys move, no other key does.
        let rest: Vec<Endpoint> = endpoints(5).into_iter().filter(|e| e.addr.port() != 1002).collect();
        let moved = keys.iter().filter(|&&key| owner(&all, key) != owner(&rest, key)).count();
        assert_eq!(moved, per_endpoint[&all[2].addr]);
        // While its endpoint backs off, a key goes elsewhere, and comes back after.
        let key = keys[0];
        let home = owner(&all, key);
        let home_endpoint = all.iter().find(|e| e.addr == home).unwrap();
        home_endpoint.record(Duration::from_secs(1), Outcome::Unreachable, &config, &all, now);
        assert_ne!(balancer.choose(&all, Some(key), now).unwrap().addr, home);
        let later = now + Duration::from_secs(2);
        assert_eq!(balancer.choose(&all, Some(key), later).unwrap().addr, home);
    }

    #[test]
    fn affinity_keys_come_from_the_header_the_cookie_or_the_client_address() {
        use braid_api::config::HashOn;
        let mut headers = http::HeaderMap::new();
        headers.insert("x-session", "abc".parse().unwrap());
        headers.append(http::header::COOKIE, "theme=dark; session=s1".parse().unwrap());
        headers.append(http::header::COOKIE, "other=1".parse().unwrap());
        let ip = Some(std::net::IpAddr::from([10, 0, 0, 7]));
        let header = HashOn::Header("x-session".into());
        assert_eq!(affinity_key(Some(&header), &headers, ip), Some(hash_of(b"abc".as_slice())));
        let cookie = HashOn::Cookie("session".into());
        assert_eq!(affinity_key(Some(&cookie), &headers, ip), Some(hash_of(b"s1".as_slice())));
        assert_eq!(affinity_key(Some(&HashOn::Cookie("missing".into())), &headers, ip), None);
        assert_eq!(affinity_key(Some(&HashOn::Header("x-none".into())), &headers, ip), None);
        assert!(affinity_key(Some(&HashOn::SourceIp), &headers, ip).is_some());
        assert_eq!(affinity_key(None, &headers, ip), None);
    }

    #[test]
    fn at_most_max_ejected_percent_of_a_backends_endpoints_are_ejected_at_once() {
        let endpoints = endpoints(4);
        let config = LoadBalancerConfig { max_ejected_percent: 50, ..config() };
        let now = Instant::now();
        for endpoint in &endpoints {
            for _ in 0..3 {
                endpoint.record(Duration::from_millis(1), Outcome::Failed, &config, &endpoints, now);
            }
        }
        let ejected = endpoints.iter().filter(|e| e.is_ejected(now)).count();
        assert_eq!(ejected, 2, "half of four");
        // One is always allowed, even under a small percentage.
        let two = self::endpoints(2);
        let config = LoadBalancerConfig { max_ejected_percent: 10, ..config };
        for _ in 0..3 {
            two[0].record(Duration::from_millis(1), Outcome::Failed, &config, &two, now);
        }
        assert!(two[0].is_ejected(now));
    }
}
