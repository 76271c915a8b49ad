//! The webhook's Prometheus metrics, served on the admin port.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::admission::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// injected, skipped, denied, ignored, invalid (the body was not a usable AdmissionReview), or
    /// error (the webhook could not decide).
    pub result: &'static str,
    /// Why: the skip reason, the error, or empty for injected.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub admissions: Family<AdmissionLabels, Counter>,
    pub duration: Family<ResultLabels, Histogram>,
    pub cert_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `braid_webhook_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            admissions: Family::default(),
            // An admission takes well under a millisecond when it needs no API call; the upper
            // buckets catch the namespace lookups and the API server's 10 s webhook timeout.
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0])
            }),
            cert_reloads: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("braid_webhook");
        sub.register(
            "admissions",
            "Admission reviews answered, by result and reason",
            metrics.admissions.clone(),
        );
        sub.register(
            "admission_duration_seconds",
            "Time from request to answer of one admission review, by result",
            metrics.duration.clone(),
        );
        sub.register(
            "certificate_reloads",
            "Serving certificate reloads after the files changed, by result (ok, error)",
            metrics.cert_reloads.clone(),
        );
        metrics
    }

    pub fn admission(&self, outcome: Outcome, took: Duration) {
        self.record(outcome.result(), outcome.reason(), took);
    }

    /// A request that never became a review (malformed, too large).
    pub fn invalid(&self, reason: &'static str, took: Duration) {
        self.record("invalid", reason, took);
    }

    /// A review the webhook could not decide on (the namespace's labels could not be read).
    pub fn error(&self, reason: &'static str, took: Duration) {
        self.record("error", reason, took);
    }

    fn record(&self, result: &'static str, reason: &'static str, took: Duration) {
        self.admissions.get_or_create(&AdmissionLabels { result, reason }).inc();
        self.duration.get_or_create(&ResultLabels { result }).observe(took.as_secs_f64());
    }
}
