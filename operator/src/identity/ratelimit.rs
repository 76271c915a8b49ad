//! A token bucket per identity: a workload renews once a day or so, so more than a few requests a
//! minute means a crash loop or abuse, and each issuance costs a signature and API requests.
//! Time is passed in, so tests step it explicitly.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Keys kept before idle (full) buckets are forgotten; a full bucket is the same as none.
const PRUNE_ABOVE: usize = 4096;

#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_minute` requests a minute on average, up to `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now`; Err(how long until one is available) when there is none.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= PRUNE_ABOVE && !buckets.contains_key(key) {
            buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, updated: now });
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, updated: now };
            Ok(())
        } else {
            *bucket = Bucket { tokens, updated: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_at_once_then_one_every_six_seconds() {
        let limiter = RateLimiter::new(10, 10);
        let start = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check("a", start), Ok(()), "request {i} of the burst");
        }
        let wait = limiter.check("a", start).unwrap_err();
        assert!((5.9..=6.0).contains(&wait.as_secs_f64()), "{wait:?}");
        // Other identities have their own buckets.
        assert_eq!(limiter.check("b", start), Ok(()));
        // A token comes back after 6 s, and only one.
        assert!(limiter.check("a", start + Duration::from_millis(5_900)).is_err());
        assert_eq!(limiter.check("a", start + Duration::from_secs(6)), Ok(()));
        assert!(limiter.check("a", start + Duration::from_secs(6)).is_err());
        // A minute of quiet refills the whole burst, and no more.
        let later = start + Duration::from_secs(600);
        for _ in 0..10 {
            assert_eq!(limiter.check("a", later), Ok(()));
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn refused_requests_do_not_push_the_next_token_further_away() {
        let limiter = RateLimiter::new(60, 1);
        let start = Instant::now();
        assert_eq!(limiter.check("a", start), Ok(()));
        for ms in [100, 200, 500, 900] {
            assert!(limiter.check("a", start + Duration::from_millis(ms)).is_err());
        }
        assert_eq!(limiter.check("a", start + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn idle_identities_are_forgotten_when_the_map_grows() {
        let limiter = RateLimiter::new(10, 10);
        let start = Instant::now();
        for i in 0..PRUNE_ABOVE {
            limiter.check(&format!("id-{i}"), start).unwrap();
        }
        assert_eq!(limiter.keys(), PRUNE_ABOVE);
        // A minute later every bucket is full again, so a new key prunes them all.
        limiter.check("new", start + Duration::from_secs(60)).unwrap();
        assert_eq!(limiter.keys(), 1);
    }
}
