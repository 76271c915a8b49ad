//! Which run a canary status belongs to, and the weights the proxies get from it: the spec stays
//! as the user wrote it, and discovery sends the weights of `status.canary` instead.

use braid_crds::{
    MeshRoute, MeshRouteSpec,
    meshroute::{Backend, Canary},
};
use serde::Serialize;

/// A digest of what defines a run: the canary block and the canary's backend entry (without its
/// weight, which the rollout owns). A change of either starts a new run.
pub fn revision(spec: &MeshRouteSpec) -> Option<String> {
    #[derive(Serialize)]
    struct Defining<'a> {
        canary: &'a Canary,
        backend: Option<Backend>,
    }
    let canary = spec.canary.as_ref()?;
    let backend = spec
        .rules
        .iter()
        .flat_map(|rule| &rule.backends)
        .find(|b| b.service.as_deref() == Some(canary.canary.as_str()))
        .map(|b| Backend { weight: 0, ..b.clone() });
    let text = serde_json::to_vec(&Defining { canary, backend }).unwrap_or_default();
    Some(format!("{:016x}", fnv1a(&text)))
}

/// FNV-1a: stable across Rust versions and processes, unlike the standard library's hasher, so
/// every operator computes the same revision.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The canary's effective weight: the status's when it is for this spec's run, else 0 (a run
/// the operator has not started yet sends nothing to the canary).
pub fn effective_weight(route: &MeshRoute) -> Option<i32> {
    let revision = revision(&route.spec)?;
    let weight = route
        .status
        .as_ref()
        .and_then(|s| s.canary.as_ref())
        .filter(|c| c.revision == revision)
        .map_or(0, |c| c.weight.clamp(0, 100));
    Some(weight)
}

/// The spec with the rollout's weights in the canary rule: canary `weight`, stable the rest.
/// Other backends of that rule keep their weights.
pub fn with_weight(spec: &MeshRouteSpec, weight: i32) -> MeshRouteSpec {
    let mut spec = spec.clone();
    let Some(canary) = spec.canary.clone() else { return spec };
    for rule in &mut spec.rules {
        if !rule.backends.iter().any(|b| b.service.as_deref() == Some(canary.canary.as_str())) {
            continue;
        }
        for backend in &mut rule.backends {
            if backend.service.as_deref() == Some(canary.canary.as_str()) {
                backend.weight = weight;
            } else if backend.service.as_deref() == Some(canary.stable.as_str()) {
                backend.weight = 100 - weight;
            }
        }
    }
    spec
}

/// What discovery sends for a route: the spec, with a canary's effective weights.
pub fn effective_spec(route: &MeshRoute) -> MeshRouteSpec {
    match effective_weight(route) {
        Some(weight) => with_weight(&route.spec, weight),
        None => route.spec.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(canary_weight_in_status: Option<(&str, i32)>) -> MeshRoute {
        let mut route: MeshRoute = serde_json::from_value(json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"service": "web", "rules": [
                {"matches": [{"path": {"value": "/admin"}}], "backends": [{"service": "web-v1"}]},
                {"backends": [{"service": "web-v1", "weight": 100}, {"service": "web-v2", "weight": 0},
                              {"service": "web-mirror", "weight": 5}]}],
                "canary": {"stable": "web-v1", "canary": "web-v2", "steps": [10, 50], "interval": "10s"}},
        }))
        .expect("route");
        if let Some((revision, weight)) = canary_weight_in_status {
            route.status = Some(braid_crds::MeshRouteStatus {
                canary: Some(braid_crds::CanaryStatus {
                    revision: revision.to_owned(),
                    weight,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        route
    }

    fn weights(spec: &MeshRouteSpec, rule: usize) -> Vec<i32> {
        spec.rules[rule].backends.iter().map(|b| b.weight).collect()
    }

    #[test]
    fn the_status_weight_of_this_run_reaches_the_canary_rule_only() {
        let revision = revision(&route(None).spec).expect("a canary");
        let spec = effective_spec(&route(Some((&revision, 25))));
        assert_eq!(weights(&spec, 1), [75, 25, 5]);
        assert_eq!(weights(&spec, 0), [1], "a rule without the canary is left alone");
    }

    #[test]
    fn a_status_of_another_run_or_none_sends_nothing_to_the_canary() {
        assert_eq!(weights(&effective_spec(&route(None)), 1), [100, 0, 5]);
        assert_eq!(weights(&effective_spec(&route(Some(("old", 50)))), 1), [100, 0, 5]);
    }

    #[test]
    fn the_revision_follows_the_canary_block_and_backend_but_not_weights() {
        let base = route(None).spec;
        let mut weights_changed = base.clone();
        weights_changed.rules[1].backends[0].weight = 90;
        weights_changed.rules[1].backends[1].weight = 10;
        assert_eq!(revision(&base), revision(&weights_changed));
        let mut steps_changed = base.clone();
        steps_changed.canary.as_mut().expect("canary").steps = vec![20, 50];
        assert_ne!(revision(&base), revision(&steps_changed));
        let mut port_changed = base.clone();
        port_changed.rules[1].backends[1].port = Some(8080);
        assert_ne!(revision(&base), revision(&port_changed));
        let mut no_canary = base;
        no_canary.canary = None;
        assert_eq!(revision(&no_canary), None);
    }
}
