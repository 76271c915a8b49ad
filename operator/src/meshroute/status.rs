//! The status a MeshRoute should have, given which of the Services it names exist: a pure
//! function of the route, the lookup and the clock.

use std::collections::{BTreeMap, BTreeSet};

use braid_crds::{
    MeshRoute, MeshRouteSpec, MeshRouteStatus,
    conditions::{self, reasons},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::validate::validate;
use crate::conditions::{Observed, Status, merge};

/// Every Service a route names, each with the first field that names it. The target comes first,
/// so a missing target is reported as such.
pub fn referenced_services(spec: &MeshRouteSpec) -> BTreeMap<String, String> {
    let mut refs = BTreeMap::new();
    refs.insert(spec.service.clone(), "spec.service".to_owned());
    for (i, rule) in spec.rules.iter().enumerate() {
        for (b, backend) in rule.backends.iter().enumerate() {
            if let Some(service) = &backend.service {
                refs.entry(service.clone()).or_insert_with(|| format!("spec.rules[{i}].backends[{b}]"));
            }
        }
        if let Some(mirror) = &rule.mirror {
            refs.entry(mirror.service.clone()).or_insert_with(|| format!("spec.rules[{i}].mirror"));
        }
    }
    refs
}

/// What the discovery server knows about a route's rollout to the proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Programming {
    /// This operator runs no discovery server.
    Off,
    /// The proxies cannot apply the route as written.
    Unsupported(String),
    /// Of the proxies routing to the Service, how many run this generation.
    Counted(crate::discovery::registry::Programming),
}

/// A canary rollout's next state, as the machine decided it (see `crate::canary`).
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryDecision {
    pub status: braid_crds::CanaryStatus,
    /// Why the run ended, when it ended in this decision.
    pub outcome: Option<crate::canary::machine::Outcome>,
}

/// The status to write for `route`, given the names of the Services that exist in its namespace
/// (only the referenced ones need to be in `existing`), the proxies' progress and, for a route
/// with a canary, the rollout's next state.
pub fn desired_status(
    route: &MeshRoute,
    existing: &BTreeSet<String>,
    programming: &Programming,
    canary: Option<&CanaryDecision>,
    now: &Time,
) -> MeshRouteStatus {
    let spec = &route.spec;
    let previous = route.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = route.metadata.generation;

    let problems = validate(spec);
    let accepted = if problems.is_empty() {
        Observed {
            type_: conditions::ACCEPTED,
            status: Status::True,
            reason: reasons::ACCEPTED,
            message: format!("{} rule(s) for Service {}", spec.rules.len(), spec.service),
        }
    } else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Observed {
            type_: conditions::ACCEPTED,
            status: Status::False,
            reason: reasons::INVALID,
            message: list.join("; "),
        }
    };

    let namespace = route.metadata.namespace.as_deref().unwrap_or("default");
    let refs = referenced_services(spec);
    let missing: Vec<String> = refs
        .iter()
        .filter(|(name, _)| !existing.contains(*name))
        .map(|(name, field)| format!("Service {namespace}/{name} ({field})"))
        .collect();
    let resolved = if missing.is_empty() {
        Observed {
            type_: conditions::RESOLVED_REFS,
            status: Status::True,
            reason: reasons::RESOLVED_REFS,
            message: format!("all {} referenced Service(s) exist", refs.len()),
        }
    } else {
        let target_missing = !existing.contains(&spec.service);
        Observed {
            type_: conditions::RESOLVED_REFS,
            status: Status::False,
            reason: if target_missing { reasons::TARGET_NOT_FOUND } else { reasons::BACKEND_NOT_FOUND },
            message: format!("not found: {}", missing.join(", ")),
        }
    };

    let observed =
        |status, reason, message: String| Observed { type_: conditions::PROGRAMMED, status, reason, message };
    let generation_text = generation.map_or_else(String::new, |g| format!(" generation {g}"));
    let (programmed, proxies) = match programming {
        _ if !problems.is_empty() => (
            observed(
                Status::False,
                reasons::NOT_ACCEPTED,
                "the route is not accepted; proxies keep routing as before".to_owned(),
            ),
            None,
        ),
        Programming::Off => (
            observed(
                Status::Unknown,
                reasons::DISCOVERY_PENDING,
                "the operator runs without --discovery, so no proxy gets this route from it".to_owned(),
            ),
            None,
        ),
        Programming::Unsupported(why) => (
            observed(Status::False, reasons::UNSUPPORTED, format!("{why}; proxies keep routing as before")),
            None,
        ),
        Programming::Counted(counts) => {
            let fraction = format!("{}/{}", counts.acked, counts.total);
            let service = format!("{namespace}/{}", spec.service);
            let programmed =
                crate::conditions::programmed(conditions::PROGRAMMED, counts, &service, &generation_text);
            (programmed, Some(fraction))
        }
    };

    let mut observed = vec![accepted, resolved, programmed];
    let mut canary_status = None;
    if spec.canary.is_some() {
        match canary {
            Some(decision) if problems.is_empty() => {
                observed.extend(crate::canary::observed_conditions(
                    &decision.status,
                    previous,
                    decision.outcome,
                ));
                canary_status = Some(decision.status.clone());
            }
            _ => {
                let why = if problems.is_empty() {
                    "the rollout has not started yet".to_owned()
                } else {
                    "the route is not accepted, so its canary does not run; proxies keep routing as before"
                        .to_owned()
                };
                observed.extend(crate::canary::not_running(&why));
                canary_status = route.status.as_ref().and_then(|s| s.canary.clone());
            }
        }
    }

    MeshRouteStatus {
        observed_generation: generation,
        conditions: merge(previous, observed, generation, now),
        proxies,
        canary: canary_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn route(spec: serde_json::Value) -> MeshRoute {
        serde_json::from_value(json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
            "metadata": {"name": "r", "namespace": "shop", "generation": 4},
            "spec": spec,
        }))
        .expect("test route deserializes")
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).expect("valid timestamp"))
    }

    fn existing(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn condition<'a>(
        status: &'a MeshRouteStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == type_).expect("condition present")
    }

    fn split() -> MeshRoute {
        route(json!({"service": "reviews", "rules": [{"backends": [
            {"service": "reviews-v1", "weight": 80}, {"service": "reviews-v2", "weight": 20}]}]}))
    }

    #[test]
    fn a_valid_resolved_route_is_accepted_and_waits_for_discovery() {
        let status = desired_status(
            &split(),
            &existing(&["reviews", "reviews-v1", "reviews-v2"]),
            &Programming::Off,
            None,
            &now(),
        );
        assert_eq!(status.observed_generation, Some(4));
        let accepted = condition(&status, "Accepted");
        assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("True", "Accepted"));
        let resolved = condition(&status, "ResolvedRefs");
        assert_eq!(
            (resolved.status.as_str(), resolved.message.as_str()),
            ("True", "all 3 referenced Service(s) exist")
        );
        let programmed = condition(&status, "Programmed");
        assert_eq!((programmed.status.as_str(), programmed.reason.as_str()), ("Unknown", "DiscoveryPending"));
        assert_eq!(status.proxies, None);
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn a_missing_backend_is_named_with_its_field() {
        let status =
            desired_status(&split(), &existing(&["reviews", "reviews-v1"]), &Programming::Off, None, &now());
        let resolved = condition(&status, "ResolvedRefs");
        assert_eq!(resolved.status, "False");
        assert_eq!(resolved.reason, "BackendNotFound");
        assert_eq!(resolved.message, "not found: Service shop/reviews-v2 (spec.rules[0].backends[1])");
        assert_eq!(
            condition(&status, "Accepted").status,
            "True",
            "a missing Service does not make the spec invalid"
        );
    }

    #[test]
    fn a_missing_target_takes_precedence_in_the_reason() {
        let status = desired_status(&split(), &existing(&["reviews-v1"]), &Programming::Off, None, &now());
        let resolved = condition(&status, "ResolvedRefs");
        assert_eq!(resolved.reason, "TargetNotFound");
        assert_eq!(
            resolved.message,
            "not found: Service shop/reviews (spec.service), Service shop/reviews-v2 (spec.rules[0].backends[1])"
        );
    }

    #[test]
    fn an_invalid_route_says_which_field_and_is_not_programmed() {
        let bad = route(json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "timeout": "1s",
            "retries": {"attempts": 3, "perTryTimeout": "2s"}}]}));
        let status = desired_status(&bad, &existing(&["a", "b"]), &Programming::Off, None, &now());
        let accepted = condition(&status, "Accepted");
        assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "Invalid"));
        assert!(
            accepted.message.starts_with("spec.rules[0].retries.perTryTimeout: 2s is longer"),
            "{}",
            accepted.message
        );
        assert_eq!(condition(&status, "Programmed").reason, "NotAccepted");
    }

    #[test]
    fn recomputing_an_unchanged_route_yields_the_same_status() {
        let mut r = split();
        let names = existing(&["reviews", "reviews-v1", "reviews-v2"]);
        r.status = Some(desired_status(&r, &names, &Programming::Off, None, &now()));
        let later = Time(Timestamp::from_second(9_999).expect("valid timestamp"));
        assert_eq!(
            Some(desired_status(&r, &names, &Programming::Off, None, &later)),
            r.status,
            "no write when nothing changed"
        );
    }

    #[test]
    fn the_proxies_progress_is_counted_in_the_condition_and_the_column() {
        use crate::discovery::registry::Programming as Counts;
        let names = existing(&["reviews", "reviews-v1", "reviews-v2"]);
        let counted = |acked, total, refusals: &[&str]| {
            Programming::Counted(Counts {
                acked,
                total,
                refusals: refusals.iter().map(|r| (*r).to_owned()).collect(),
            })
        };
        let done = desired_status(&split(), &names, &counted(12, 12, &[]), None, &now());
        let programmed = condition(&done, "Programmed");
        assert_eq!((programmed.status.as_str(), programmed.reason.as_str()), ("True", "Programmed"));
        assert_eq!(programmed.message, "12/12 proxies run generation 4");
        assert_eq!(done.proxies.as_deref(), Some("12/12"));

        let pending =
            desired_status(&split(), &names, &counted(3, 12, &["services[0]: bad weight"]), None, &now());
        let programmed = condition(&pending, "Programmed");
        assert_eq!((programmed.status.as_str(), programmed.reason.as_str()), ("False", "Pending"));
        assert_eq!(programmed.message, "3/12 proxies run generation 4; refused: services[0]: bad weight");

        let idle = desired_status(&split(), &names, &counted(0, 0, &[]), None, &now());
        assert_eq!(condition(&idle, "Programmed").reason, "NoProxies");
        assert_eq!(idle.proxies.as_deref(), Some("0/0"));

        let unsupported = desired_status(
            &split(),
            &names,
            &Programming::Unsupported("spec.rules[0].requestHeaders: no".into()),
            None,
            &now(),
        );
        assert_eq!(condition(&unsupported, "Programmed").reason, "Unsupported");
    }

    #[test]
    fn a_rollout_shows_in_the_status_and_its_conditions() {
        use braid_crds::meshroute::{CanaryPhase, CanaryStatus};
        let canary = route(json!({"service": "web", "rules": [{"backends": [
            {"service": "web-v1", "weight": 100}, {"service": "web-v2", "weight": 0}]}],
            "canary": {"stable": "web-v1", "canary": "web-v2", "steps": [10, 50]}}));
        let names = existing(&["web", "web-v1", "web-v2"]);
        let kind = |status: &MeshRouteStatus, type_: &str| {
            let c = condition(status, type_);
            (c.status.clone(), c.reason.clone())
        };
        let pair = |s: &str, r: &str| (s.to_owned(), r.to_owned());

        let not_started = desired_status(&canary, &names, &Programming::Off, None, &now());
        assert_eq!(kind(&not_started, "Progressing"), pair("False", "RouteNotAccepted"));

        let running = CanaryDecision {
            status: CanaryStatus {
                phase: CanaryPhase::Progressing,
                step: 1,
                weight: 10,
                ..Default::default()
            },
            outcome: None,
        };
        let status = desired_status(&canary, &names, &Programming::Off, Some(&running), &now());
        assert_eq!(status.canary.as_ref().map(|c| c.weight), Some(10));
        assert_eq!(kind(&status, "Progressing"), pair("True", "StepProgressing"));
        assert_eq!(kind(&status, "CanaryHealthy"), pair("Unknown", "NotChecked"));
        assert_eq!(kind(&status, "Promoted"), pair("False", "InProgress"));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(4)));

        let promoted = CanaryDecision {
            status: CanaryStatus { phase: CanaryPhase::Promoted, weight: 100, ..Default::default() },
            outcome: Some(reasons::PROMOTED_BY_USER),
        };
        let mut after = canary.clone();
        after.status = Some(desired_status(&canary, &names, &Programming::Off, Some(&promoted), &now()));
        assert_eq!(kind(after.status.as_ref().expect("status"), "Promoted"), pair("True", "PromotedByUser"));
        // Later decisions carry no outcome: the reason stays.
        let later = CanaryDecision { outcome: None, ..promoted };
        let again = desired_status(&after, &names, &Programming::Off, Some(&later), &now());
        assert_eq!(kind(&again, "Promoted"), pair("True", "PromotedByUser"));
        assert_eq!(kind(&again, "RolledBack"), pair("False", "OtherOutcome"));
        assert_eq!(kind(&again, "Progressing"), pair("False", "PromotedByUser"));
    }

    #[test]
    fn a_route_without_a_canary_has_no_canary_conditions() {
        let status = desired_status(
            &split(),
            &existing(&["reviews", "reviews-v1", "reviews-v2"]),
            &Programming::Off,
            None,
            &now(),
        );
        assert_eq!(status.conditions.len(), 3);
        assert_eq!(status.canary, None);
    }

    #[test]
    fn mirror_and_subset_backends_are_referenced_correctly() {
        let spec: MeshRouteSpec = serde_json::from_value(json!({"service": "a", "rules": [{
            "backends": [{"subset": {"version": "v2"}}], "mirror": {"service": "shadow"}}]}))
        .expect("spec deserializes");
        let refs = referenced_services(&spec);
        assert_eq!(refs.get("a").map(String::as_str), Some("spec.service"));
        assert_eq!(refs.get("shadow").map(String::as_str), Some("spec.rules[0].mirror"));
        assert_eq!(refs.len(), 2, "a subset selects the target's pods and names no other Service");
    }
}
