//! What the proxy reports to the discovery server when it asks: per destination and backend,
//! the tries, failures and latency buckets since the last report (read from the same series
//! /metrics shows, so the request path counts once).

use std::collections::{BTreeMap, HashMap};

use braid_api::discovery::{BackendReport, LATENCY_BUCKETS_MS, ProxyMessage, Report};

use crate::metrics::{BackendLabels, Metrics};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    failures: u64,
    latency: [u64; LATENCY_BUCKETS_MS.len() + 1],
}

/// The counts sent so far; lives across streams, so what happened while the server was away
/// is sent to the next one.
#[derive(Debug, Default)]
pub struct Reporter {
    sent: HashMap<BackendLabels, Counts>,
}

impl Reporter {
    /// One report per destination whose backends had tries since the last call.
    pub fn reports(&mut self, metrics: &Metrics) -> Vec<ProxyMessage> {
        let mut by_service: BTreeMap<String, Vec<BackendReport>> = BTreeMap::new();
        for (labels, series) in metrics.backends() {
            let now = Counts {
                requests: series.requests.get(),
                failures: series.failures.get(),
                latency: series.latency.buckets(),
            };
            let before = self.sent.get(&labels).copied().unwrap_or_default();
            let requests = now.requests.saturating_sub(before.requests);
            if requests == 0 {
                continue;
            }
            let mut latency_ms: Vec<u64> =
                now.latency.iter().zip(before.latency).map(|(now, then)| now.saturating_sub(then)).collect();
            while latency_ms.last() == Some(&0) {
                latency_ms.pop();
            }
            by_service.entry(labels.dst_service.as_str().to_owned()).or_default().push(BackendReport {
                backend: labels.backend.as_str().to_owned(),
                requests,
                failures: now.failures.saturating_sub(before.failures),
                latency_ms,
            });
            self.sent.insert(labels, now);
        }
        by_service
            .into_iter()
            .map(|(service, backends)| ProxyMessage::Report(Report { service, backends }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Label;
    use std::time::Duration;

    #[test]
    fn reports_carry_what_happened_since_the_last_one_and_nothing_when_idle() {
        let metrics = Metrics::new();
        let web = Label::new("web.shop.svc.cluster.local:80");
        let v2 = metrics.backend_metrics(&web, &Label::new("web-v2"));
        let v1 = metrics.backend_metrics(&web, &Label::new("web-v1"));
        for _ in 0..3 {
            v2.requests.inc();
            v2.latency.observe(Duration::from_micros(1500));
        }
        v2.failures.inc();
        v1.requests.inc();
        v1.latency.observe(Duration::from_millis(250));

        let mut reporter = Reporter::default();
        let reports = reporter.reports(&metrics);
        assert_eq!(reports.len(), 1, "one message per destination");
        let ProxyMessage::Report(report) = &reports[0] else { panic!("a report") };
        assert_eq!(report.service, "web.shop.svc.cluster.local:80");
        let mut backends = report.backends.clone();
        backends.sort_by(|a, b| a.backend.cmp(&b.backend));
        assert_eq!(
            (backends[0].backend.as_str(), backends[0].requests, backends[0].failures),
            ("web-v1", 1, 0)
        );
        assert_eq!(backends[0].latency_ms.len(), 13, "250 ms is in the 300 ms bucket, the 13th");
        assert_eq!(backends[1].latency_ms, [0, 3], "1.5 ms is in the 2 ms bucket");
        assert_eq!((backends[1].requests, backends[1].failures), (3, 1));

        assert!(reporter.reports(&metrics).is_empty(), "nothing new, nothing sent");
        v2.requests.inc();
        let reports = reporter.reports(&metrics);
        let ProxyMessage::Report(report) = &reports[0] else { panic!("a report") };
        assert_eq!((report.backends.len(), report.backends[0].requests), (1, 1), "only the delta");
    }

    #[test]
    fn the_backend_series_show_on_metrics() {
        let metrics = Metrics::new();
        let series = metrics.backend_metrics(&Label::new("web"), &Label::new("web-v2"));
        series.requests.inc();
        series.latency.observe(Duration::from_millis(7));
        let text = metrics.encode();
        assert!(
            text.contains("outbound_backend_requests_total{dst_service=\"web\",backend=\"web-v2\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outbound_backend_response_latency_ms_bucket{le=\"10.0\",dst_service=\"web\",backend=\"web-v2\"} 1")
                || text.contains("outbound_backend_response_latency_ms_bucket{dst_service=\"web\",backend=\"web-v2\",le=\"10.0\"} 1"),
            "{text}"
        );
    }
}
