//! Per-object exponential backoff for failed reconciles, so one broken object neither spins in a
//! hot loop nor delays the others.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Consecutive failures per object key, and the delays they earn.
#[derive(Debug)]
pub struct FailureBackoff {
    failures: Mutex<HashMap<String, u32>>,
    initial: Duration,
    max: Duration,
}

impl FailureBackoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { failures: Mutex::new(HashMap::new()), initial, max }
    }

    /// Records a failure of `key` and returns how long to wait before the next try:
    /// initial, 2x, 4x, ... capped at max.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let factor = 2u32.saturating_pow(count.saturating_sub(1).min(16));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_on_success() {
        let backoff = FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| backoff.failed("ns/a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.failed("ns/b"), Duration::from_secs(1), "objects back off independently");
        backoff.succeeded("ns/a");
        assert_eq!(backoff.failed("ns/a"), Duration::from_secs(1));
    }
}
