//! The operator's Prometheus metrics, served on the admin port.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutPhaseLabels {
    pub namespace: String,
    pub route: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutCheckLabels {
    pub namespace: String,
    pub route: String,
    pub result: &'static str,
}

/// Reconcile counts, failures by cause, and durations.
#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader Lease (or runs without leader election), else 0.
    pub leader: Gauge,
    /// Per canary rollout: the canary's effective weight in percent.
    pub canary_weight: Family<RolloutLabels, Gauge>,
    /// Per canary rollout: 1 for its current phase, 0 for the others.
    pub canary_phase: Family<RolloutPhaseLabels, Gauge>,
    /// Per canary rollout: intervals judged, by result.
    pub canary_checks: Family<RolloutCheckLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `braid_operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
            leader: Gauge::default(),
            canary_weight: Family::default(),
            canary_phase: Family::default(),
            canary_checks: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("braid_operator");
        sub.register("reconciles", "Reconciles run, by controller", metrics.reconciles.clone());
        sub.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and cause",
            metrics.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            metrics.duration.clone(),
        );
        sub.register(
            "leader",
            "Whether this replica runs the controllers (holds the leader Lease)",
            metrics.leader.clone(),
        );
        sub.register(
            "canary_weight",
            "Effective weight of each canary rollout's canary backend, in percent",
            metrics.canary_weight.clone(),
        );
        sub.register(
            "canary_phase",
            "1 for the current phase of each canary rollout (Waiting, Progressing, Paused, Promoted, RolledBack)",
            metrics.canary_phase.clone(),
        );
        sub.register(
            "canary_checks",
            "Intervals of each canary rollout judged, by result (passed, failed, too_few_requests)",
            metrics.canary_checks.clone(),
        );
        metrics
    }

    pub fn observe(&self, controller: &'static str, took: Duration) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Exposes `controller`'s failure series for each of `errors` at 0.
    pub fn expose_failures(&self, controller: &'static str, errors: &[&'static str]) {
        for &error in errors {
            drop(self.failures.get_or_create(&ErrorLabels { controller, error }));
        }
    }

    pub fn failed(&self, controller: &'static str, error: &'static str) {
        self.failures.get_or_create(&ErrorLabels { controller, error }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The identity endpoint and the CA, under `braid_identity_` (the names docs/identity.md gives).
#[derive(Debug)]
pub struct IdentityMetrics {
    pub issued: Counter,
    pub rejections: Family<ReasonLabels, Counter>,
    pub certify_duration: Histogram,
    /// Unix seconds; set by the CA controller of the leader.
    pub trust_anchor_expiry: Gauge,
    /// Unix seconds; set by every replica that loaded the issuer.
    pub issuer_expiry: Gauge,
}

impl IdentityMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            issued: Counter::default(),
            rejections: Family::default(),
            certify_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            trust_anchor_expiry: Gauge::default(),
            issuer_expiry: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("braid_identity");
        sub.register("issued", "Workload certificates issued", metrics.issued.clone());
        sub.register("rejections", "Certify requests refused, by error code", metrics.rejections.clone());
        sub.register(
            "certify_duration_seconds",
            "Time to answer one certify request, refusals included",
            metrics.certify_duration.clone(),
        );
        sub.register(
            "trust_anchor_expiry_timestamp_seconds",
            "When the trust anchor that signed the current issuer expires",
            metrics.trust_anchor_expiry.clone(),
        );
        sub.register(
            "issuer_expiry_timestamp_seconds",
            "When the issuer that signs workload certificates expires",
            metrics.issuer_expiry.clone(),
        );
        metrics
    }

    /// Creates the series of `reason` at 0, so it is scraped before the first refusal.
    pub fn zero(&self, reason: &'static str) {
        let _ = self.rejections.get_or_create(&ReasonLabels { reason });
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// The discovery server, under `braid_discovery_` (docs/discovery.md).
#[derive(Debug, Default)]
pub struct DiscoveryMetrics {
    /// Proxies with an open stream.
    pub proxies: Gauge,
    pub updates_sent: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    /// Hellos and subscriptions refused (unknown pod, another identity's pod, not exported).
    pub refusals: Counter,
    /// Pods in the index.
    pub pods: Gauge,
    /// Wake-ups of streams by index changes, each to re-check its destinations or its inbound
    /// policy: a change wakes only the streams subscribed to what it touched.
    pub stream_wakes: Counter,
    /// What a bound refused (connections, hellos, messages, subscriptions), by bound.
    pub limited: Family<LimitLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

impl DiscoveryMetrics {
    pub fn limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabels { limit }).inc();
    }
}

impl DiscoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("braid_discovery");
        sub.register("proxies", "Proxies connected to the discovery endpoint", metrics.proxies.clone());
        sub.register(
            "updates_sent",
            "Destination and policy updates sent to proxies",
            metrics.updates_sent.clone(),
        );
        sub.register("acks", "Updates proxies acknowledged", metrics.acks.clone());
        sub.register(
            "nacks",
            "Updates proxies refused (see the MeshRoute status for why)",
            metrics.nacks.clone(),
        );
        sub.register("refusals", "Hellos and subscriptions the server refused", metrics.refusals.clone());
        sub.register("index_pods", "Pods in the discovery index", metrics.pods.clone());
        sub.register(
            "stream_wakes",
            "Wake-ups of proxy streams (their destinations, or their inbound policy) by a change to what they subscribe to",
            metrics.stream_wakes.clone(),
        );
        sub.register(
            "limited",
            "Connections, streams and messages refused by a bound, by bound",
            metrics.limited.clone(),
        );
        metrics
    }
}
