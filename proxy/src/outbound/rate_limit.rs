//! Local rate limiting per route: a token bucket per proxy with a burst, kept as the generic cell
//! rate algorithm's single timestamp, so admitting a request costs one compare-and-swap and
//! allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use braid_api::config::RateLimitConfig;

pub struct RateLimiter {
    config: RateLimitConfig,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far the theoretical arrival time may run ahead of now: the burst, less one request.
    tolerance: u64,
    origin: Instant,
    /// When the next request would arrive at the sustained rate, in nanoseconds since `origin`.
    theoretical_arrival: AtomicU64,
}

impl RateLimiter {
    /// `config` is validated (`requestsPerSecond` and `burst` at least 1).
    pub fn new(config: RateLimitConfig, now: Instant) -> Self {
        let interval = 1_000_000_000 / u64::from(config.requests_per_second.max(1));
        let tolerance = interval * u64::from(config.burst.max(1) - 1);
        Self { config, interval, tolerance, origin: now, theoretical_arrival: AtomicU64::new(0) }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Admits a request at `now`, or says how long until one would be admitted.
    pub fn acquire(&self, now: Instant) -> Result<(), Duration> {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let mut arrival = self.theoretical_arrival.load(Ordering::Relaxed);
        loop {
            let start = arrival.max(now);
            let ahead = start - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self.theoretical_arrival.compare_exchange_weak(
                arrival,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => arrival = current,
            }
        }
    }
}

/// The `retry-after` value for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests_per_second: u32, burst: u32, now: Instant) -> RateLimiter {
        RateLimiter::new(RateLimitConfig { requests_per_second, burst }, now)
    }

    #[test]
    fn a_burst_is_admitted_at_once_then_the_sustained_rate() {
        let start = Instant::now();
        let limiter = limiter(10, 5, start);
        let admitted = (0..20).filter(|_| limiter.acquire(start).is_ok()).count();
        assert_eq!(admitted, 5, "the burst, all at once");
        let wait = limiter.acquire(start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one interval at 10 per second");
        // Over the next second, ten more at the sustained rate and no more.
        let admitted =
            (1..=100).filter(|ms| limiter.acquire(start + Duration::from_millis(10 * ms)).is_ok()).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn an_idle_limiter_refills_only_up_to_its_burst() {
        let start = Instant::now();
        let limiter = limiter(100, 3, start);
        let later = start + Duration::from_secs(60);
        let admitted = (0..10).filter(|_| limiter.acquire(later).is_ok()).count();
        assert_eq!(admitted, 3, "a minute idle earns the burst, not 6,000 requests");
    }

    #[test]
    fn threads_together_get_no_more_than_the_burst() {
        let start = Instant::now();
        let limiter = std::sync::Arc::new(limiter(1, 50, start));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || (0..100).filter(|_| limiter.acquire(start).is_ok()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
