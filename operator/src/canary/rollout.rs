//! The rollout of one route, run by the MeshRoute controller on every reconcile (and requeued
//! for the next check): reads the proxies' measurements since the last check, asks the machine,
//! and says what to write, record and expose. The state is the status; this side only keeps
//! where each interval's measurement started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use braid_crds::{MeshRoute, conditions::CANARY_ANNOTATION, meshroute::CanaryPhase};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Resource, ResourceExt,
    runtime::events::{Event as KubeEvent, EventType, Recorder},
};

use super::machine::{self, Measurement, Settings};
use super::measure::{Measurements, Totals, window};
use crate::meshroute::status::CanaryDecision;
use crate::metrics::{Metrics, RolloutCheckLabels, RolloutLabels, RolloutPhaseLabels};

/// Where the current interval's measurement of a route started: the totals of its stable and
/// canary backends then, for the run (revision) it belongs to.
#[derive(Debug, Clone)]
struct Baseline {
    revision: String,
    stable: Totals,
    canary: Totals,
}

/// The interval starts of every route with a canary, by namespace/name.
#[derive(Debug, Default)]
pub struct Baselines(Mutex<HashMap<String, Baseline>>);

impl Baselines {
    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// A decision and what comes with it.
pub struct Step {
    pub decision: CanaryDecision,
    pub events: Vec<machine::Event>,
    pub next_check: Option<Duration>,
    check: Option<machine::Check>,
}

/// Decides the next state of `route`'s rollout; None when it has no canary that can run.
pub fn step(
    route: &MeshRoute,
    measurements: Option<&Measurements>,
    baselines: &Baselines,
    now: Timestamp,
) -> Option<Step> {
    let canary = route.spec.canary.as_ref()?;
    let settings = Settings::from_spec(canary).ok()?;
    let revision = super::weights::revision(&route.spec)?;
    let namespace = route.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", route.name_any());
    let current = |backend: &str| {
        measurements.map(|m| m.totals(&namespace, &route.spec.service, backend)).unwrap_or_default()
    };
    let (stable_now, canary_now) = (current(&settings.stable), current(&settings.canary));

    let mut baselines = baselines.0.lock().unwrap_or_else(|p| p.into_inner());
    let measurement = baselines.get(&key).filter(|b| b.revision == revision).map(|b| Measurement {
        stable: window(&b.stable, &stable_now),
        canary: window(&b.canary, &canary_now),
    });
    let previous = route.status.as_ref().and_then(|s| s.canary.as_ref());
    let out = machine::decide(machine::Input {
        settings: &settings,
        revision: &revision,
        previous,
        measurement: measurement.as_ref(),
        now,
        steering: route.annotations().get(CANARY_ANNOTATION).map(String::as_str),
    });
    let new_run = previous.is_none_or(|p| p.revision != revision);
    if out.judged || new_run || measurement.is_none() {
        baselines.insert(key, Baseline { revision, stable: stable_now, canary: canary_now });
    }
    Some(Step {
        decision: CanaryDecision { status: out.status, outcome: out.outcome },
        events: out.events,
        next_check: out.next_check,
        check: out.check,
    })
}

impl Step {
    /// The rollout's metrics, once its status is written.
    pub fn observe(&self, route: &MeshRoute, metrics: &Metrics) {
        let namespace = route.namespace().unwrap_or_default();
        let name = route.name_any();
        let status = &self.decision.status;
        metrics
            .canary_weight
            .get_or_create(&RolloutLabels { namespace: namespace.clone(), route: name.clone() })
            .set(i64::from(status.weight));
        for phase in [
            CanaryPhase::Waiting,
            CanaryPhase::Progressing,
            CanaryPhase::Paused,
            CanaryPhase::Promoted,
            CanaryPhase::RolledBack,
        ] {
            metrics
                .canary_phase
                .get_or_create(&RolloutPhaseLabels {
                    namespace: namespace.clone(),
                    route: name.clone(),
                    phase: phase.as_str(),
                })
                .set(i64::from(phase == status.phase));
        }
        if let Some(check) = self.check {
            metrics
                .canary_checks
                .get_or_create(&RolloutCheckLabels { namespace, route: name, result: check.as_str() })
                .inc();
        }
    }

    /// Records the events on the route; a failure is logged, never retried (the status holds
    /// the same facts).
    pub async fn publish(&self, route: &MeshRoute, recorder: &Recorder) {
        let reference = route.object_ref(&());
        for event in &self.events {
            tracing::info!(route = %route.name_any(), namespace = route.namespace(), reason = event.reason,
                message = %event.message, "canary");
            let published = recorder
                .publish(
                    &KubeEvent {
                        type_: if event.warning { EventType::Warning } else { EventType::Normal },
                        reason: event.reason.to_owned(),
                        note: Some(truncate(&event.message, 1000)),
                        action: "Rollout".to_owned(),
                        secondary: None,
                    },
                    &reference,
                )
                .await;
            if let Err(error) = published {
                tracing::warn!(%error, reason = event.reason, "recording a canary event failed");
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..cut])
}

/// Forgets the metrics of a route that no longer has a rollout.
pub fn forget_metrics(namespace: &str, name: &str, metrics: &Metrics) {
    let labels = RolloutLabels { namespace: namespace.to_owned(), route: name.to_owned() };
    metrics.canary_weight.remove(&labels);
    for phase in ["Waiting", "Progressing", "Paused", "Promoted", "RolledBack"] {
        metrics.canary_phase.remove(&RolloutPhaseLabels {
            namespace: namespace.to_owned(),
            route: name.to_owned(),
            phase,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::discovery::BackendReport;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn route(status: Option<serde_json::Value>) -> MeshRoute {
        let mut route = json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"service": "web", "rules": [{"backends": [
                {"service": "web-v1", "weight": 100}, {"service": "web-v2", "weight": 0}]}],
                "canary": {"stable": "web-v1", "canary": "web-v2", "steps": [10, 50], "interval": "10s"}},
        });
        if let Some(status) = status {
            route["status"] = json!({"canary": status});
        }
        serde_json::from_value(route).expect("route")
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(2_000_000 + seconds).expect("timestamp")
    }

    fn traffic(measurements: &Measurements, backend: &str, requests: u64, failures: u64) {
        let report =
            BackendReport { backend: backend.into(), requests, failures, latency_ms: vec![0, requests] };
        measurements.add("shop", "web", &report);
    }

    #[test]
    fn a_new_leader_measures_from_when_it_took_over_and_then_judges_that_window() {
        let revision = super::super::weights::revision(&route(None).spec).expect("canary");
        let at_step_one = |last_check: i64| {
            route(Some(json!({"phase": "Progressing", "revision": revision, "step": 1, "weight": 10,
                "failedChecks": 0, "lastCheckTime": Time(at(last_check)), "message": ""})))
        };
        let measurements = Measurements::default();
        let baselines = Baselines::default();
        // What the proxies reported to the old leader is not this one's to judge.
        traffic(&measurements, "web-v2", 1000, 1000);

        // Taking over 3 s into the step: nothing changes, the next check is on time.
        let step = super::step(&at_step_one(0), Some(&measurements), &baselines, at(3)).expect("a rollout");
        assert_eq!((step.decision.status.step, step.next_check), (1, Some(Duration::from_secs(7))));
        assert!(step.events.is_empty());

        traffic(&measurements, "web-v2", 100, 0);
        traffic(&measurements, "web-v1", 900, 0);
        let step = super::step(&at_step_one(0), Some(&measurements), &baselines, at(10)).expect("a rollout");
        let canary = step.decision.status.canary_metrics.clone().expect("judged");
        assert_eq!((canary.requests, canary.success_rate.as_deref()), (100, Some("100.00%")));
        assert_eq!((step.decision.status.step, step.decision.status.weight), (2, 50));

        // The next window starts where that one ended.
        traffic(&measurements, "web-v2", 30, 0);
        let advanced = route(Some(serde_json::to_value(&step.decision.status).expect("status")));
        let step = super::step(&advanced, Some(&measurements), &baselines, at(20)).expect("a rollout");
        assert_eq!(step.decision.status.canary_metrics.map(|m| m.requests), Some(30));
    }

    #[test]
    fn a_route_without_a_canary_has_no_rollout() {
        let mut plain = route(None);
        plain.spec.canary = None;
        assert!(super::step(&plain, None, &Baselines::default(), at(0)).is_none());
    }
}
