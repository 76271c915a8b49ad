//! The simulated proxies' application traffic and the reports they make of it: while traffic is
//! on, each proxy "sends" a fixed rate to every destination it subscribes to, split across the
//! backends of the destination's first route by their weights as the server last sent them,
//! every request a success in the 5 ms latency bucket. Every report interval the server asked
//! for (the braid-report-interval header), it sends one `report` per destination with what
//! went to each backend since the last one, as the real proxy does (proxy/src/discovery/report.rs):
//! one message per destination name, only backends that had tries, trailing empty buckets left
//! out.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use braid_api::config::ServiceConfig;
use braid_api::discovery::{BackendReport, ProxyMessage, Report};

/// Shared by every simulated proxy.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Set by the driver for the rollouts phase; before, proxies have nothing to report.
    pub on: AtomicBool,
    /// Requests per second each proxy sends to each of its destinations.
    pub per_second: u64,
    /// Report messages sent, all proxies.
    pub reports: AtomicU64,
}

/// The latency bucket every simulated request lands in: the fifth, up to 5 ms.
const BUCKET: usize = 4;

/// What one proxy calls: per subscribed destination, the configuration name and the first
/// route's backends with their weights.
#[derive(Debug, Default)]
pub struct Calls {
    destinations: HashMap<String, (String, Vec<(String, u32)>)>,
}

impl Calls {
    /// The destination's latest answer.
    pub fn update(&mut self, destination: &str, service: Option<&ServiceConfig>) {
        let Some(service) = service else {
            self.destinations.remove(destination);
            return;
        };
        let backends = match service.routes.first() {
            Some(route) => route.backends.iter().map(|b| (b.name.clone(), b.weight)).collect(),
            None => service.backends.iter().map(|b| (b.name.clone(), 1)).collect(),
        };
        self.destinations.insert(destination.to_owned(), (service.name.clone(), backends));
    }

    /// The reports of `period` of traffic, one per destination name; none while traffic is off.
    pub fn reports(&self, traffic: &Traffic, period: Duration) -> Vec<ProxyMessage> {
        if !traffic.on.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let per_destination = (traffic.per_second as f64 * period.as_secs_f64()).round() as u64;
        let mut by_service: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for (name, backends) in self.destinations.values() {
            let total_weight: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
            if total_weight == 0 {
                continue;
            }
            for (backend, weight) in backends {
                let requests = per_destination * u64::from(*weight) / total_weight;
                if requests > 0 {
                    *by_service.entry(name).or_default().entry(backend).or_default() += requests;
                }
            }
        }
        let reports: Vec<ProxyMessage> = by_service
            .into_iter()
            .map(|(service, backends)| {
                let backends = backends
                    .into_iter()
                    .map(|(backend, requests)| {
                        let mut latency_ms = vec![0; BUCKET + 1];
                        latency_ms[BUCKET] = requests;
                        BackendReport { backend: backend.to_owned(), requests, failures: 0, latency_ms }
                    })
                    .collect();
                ProxyMessage::Report(Report { service: service.to_owned(), backends })
            })
            .collect();
        traffic.reports.fetch_add(reports.len() as u64, Ordering::Relaxed);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, weights: &[(&str, u32)]) -> ServiceConfig {
        let backends: Vec<_> = weights.iter().map(|(b, _)| json!({"name": b, "endpoints": []})).collect();
        let route: Vec<_> = weights.iter().map(|(b, w)| json!({"name": b, "weight": w})).collect();
        serde_json::from_value(json!({"name": name, "backends": backends, "routes": [{"backends": route}]}))
            .expect("a service config")
    }

    #[test]
    fn traffic_is_split_by_the_weights_last_received_and_merged_per_destination_name() {
        let traffic = Traffic { per_second: 50, ..Traffic::default() };
        let mut calls = Calls::default();
        calls.update("10.96.0.1:80", Some(&service("web:80", &[("web-v1", 90), ("web-v2", 10)])));
        calls.update(
            "web.shop.svc.cluster.local:80",
            Some(&service("web:80", &[("web-v1", 90), ("web-v2", 10)])),
        );
        assert!(calls.reports(&traffic, Duration::from_secs(2)).is_empty(), "no traffic yet");
        traffic.on.store(true, Ordering::Relaxed);
        let reports = calls.reports(&traffic, Duration::from_secs(2));
        let [ProxyMessage::Report(report)] = reports.as_slice() else { panic!("one report: {reports:?}") };
        let counts: Vec<(&str, u64)> =
            report.backends.iter().map(|b| (b.backend.as_str(), b.requests)).collect();
        assert_eq!(counts, [("web-v1", 180), ("web-v2", 20)]);
        assert_eq!(report.backends[1].latency_ms, [0, 0, 0, 0, 20]);

        calls.update("10.96.0.1:80", Some(&service("web:80", &[("web-v1", 100), ("web-v2", 0)])));
        calls.update("web.shop.svc.cluster.local:80", None);
        let reports = calls.reports(&traffic, Duration::from_secs(2));
        let [ProxyMessage::Report(report)] = reports.as_slice() else { panic!("one report: {reports:?}") };
        assert_eq!(report.backends.len(), 1, "a backend without tries is left out");
        assert_eq!(traffic.reports.load(Ordering::Relaxed), 2);
    }
}
