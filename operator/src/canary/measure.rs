//! What the proxies measured: each report (a delta since the proxy's previous one) is added to
//! running totals per backend, across every proxy; a check takes the difference of the totals
//! between two moments, so no per-proxy or per-second history is kept.

use std::collections::HashMap;
use std::sync::Mutex;

use braid_api::discovery::{BackendReport, LATENCY_BUCKETS_MS};

use super::machine::Window;

/// One backend's counts since this operator started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub failures: u64,
    /// Per bucket of LATENCY_BUCKETS_MS, then one for slower.
    pub latency: [u64; LATENCY_BUCKETS_MS.len() + 1],
}

/// (namespace, target Service, backend): the backend as the route names it, whatever the port.
type BackendKey = (String, String, String);

/// The totals of every backend a proxy reported on.
#[derive(Debug, Default)]
pub struct Measurements {
    totals: Mutex<HashMap<BackendKey, Totals>>,
}

/// Backend names are `service`, `service:port` or `target[labels]`: the route's name for it is
/// the part before a port.
fn backend_name(reported: &str) -> &str {
    reported.split_once(':').map_or(reported, |(name, _)| name)
}

impl Measurements {
    /// Adds one proxy's report on `target` (namespace, Service). Failures are capped at the
    /// requests, so a confused proxy cannot report a success rate below 0.
    pub fn add(&self, namespace: &str, target: &str, backend: &BackendReport) {
        let key = (namespace.to_owned(), target.to_owned(), backend_name(&backend.backend).to_owned());
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = totals.entry(key).or_default();
        entry.requests = entry.requests.saturating_add(backend.requests);
        entry.failures = entry.failures.saturating_add(backend.failures.min(backend.requests));
        for (slot, count) in entry.latency.iter_mut().zip(&backend.latency_ms) {
            *slot = slot.saturating_add(*count);
        }
    }

    pub fn totals(&self, namespace: &str, target: &str, backend: &str) -> Totals {
        let key = (namespace.to_owned(), target.to_owned(), backend.to_owned());
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned().unwrap_or_default()
    }
}

/// What happened between `before` and `after`.
pub fn window(before: &Totals, after: &Totals) -> Window {
    let requests = after.requests.saturating_sub(before.requests);
    let failures = after.failures.saturating_sub(before.failures).min(requests);
    let mut buckets = [0u64; LATENCY_BUCKETS_MS.len() + 1];
    for (i, slot) in buckets.iter_mut().enumerate() {
        *slot = after.latency[i].saturating_sub(before.latency[i]);
    }
    Window { requests, failures, p99_ms: quantile(&buckets, 0.99) }
}

/// The quantile of a bucketed distribution, interpolated within its bucket the way Prometheus'
/// histogram_quantile does; the slowest bucket answers with the last bound.
pub fn quantile(buckets: &[u64; LATENCY_BUCKETS_MS.len() + 1], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, &in_bucket) in buckets.iter().enumerate() {
        if in_bucket > 0 && (below + in_bucket) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS_MS.get(i) else {
                return LATENCY_BUCKETS_MS.last().map(|&b| b as f64);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS_MS[i - 1] as f64 };
            let within = (rank - below as f64).max(0.0) / in_bucket as f64;
            return Some(lower + (upper as f64 - lower) * within);
        }
        below += in_bucket;
    }
    LATENCY_BUCKETS_MS.last().map(|&b| b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(backend: &str, requests: u64, failures: u64, latency_ms: Vec<u64>) -> BackendReport {
        BackendReport { backend: backend.into(), requests, failures, latency_ms }
    }

    #[test]
    fn reports_from_several_proxies_add_up_and_a_window_is_a_difference() {
        let m = Measurements::default();
        m.add("shop", "web", &report("web-v2", 100, 5, vec![0, 0, 0, 0, 0, 100]));
        let before = m.totals("shop", "web", "web-v2");
        m.add("shop", "web", &report("web-v2", 60, 3, vec![0, 0, 0, 0, 0, 60]));
        m.add("shop", "web", &report("web-v2:8080", 40, 40, vec![]));
        m.add("other", "web", &report("web-v2", 1000, 0, vec![]));
        let w = window(&before, &m.totals("shop", "web", "web-v2"));
        assert_eq!((w.requests, w.failures), (100, 43));
        assert_eq!(w.success_rate(), Some(57.0));
    }

    #[test]
    fn failures_above_requests_are_capped() {
        let m = Measurements::default();
        m.add("shop", "web", &report("web-v2", 10, 50, vec![]));
        let w = window(&Totals::default(), &m.totals("shop", "web", "web-v2"));
        assert_eq!(w.success_rate(), Some(0.0));
    }

    #[test]
    fn p99_is_interpolated_in_its_bucket() {
        let mut buckets = [0u64; LATENCY_BUCKETS_MS.len() + 1];
        // 990 requests at <= 10 ms, 10 between 200 and 300 ms.
        buckets[5] = 990;
        buckets[12] = 10;
        let p99 = quantile(&buckets, 0.99).expect("requests");
        assert!((5.0..=10.0).contains(&p99), "{p99}");
        buckets[12] = 20;
        let p99 = quantile(&buckets, 0.99).expect("requests");
        assert!((200.0..=300.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0; LATENCY_BUCKETS_MS.len() + 1], 0.99), None);
        let mut slow = [0u64; LATENCY_BUCKETS_MS.len() + 1];
        slow[LATENCY_BUCKETS_MS.len()] = 5;
        assert_eq!(quantile(&slow, 0.99), Some(30000.0));
    }
}
