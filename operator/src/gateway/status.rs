//! The status of an HTTPRoute or GRPCRoute: for each Service parent, `Accepted` and
//! `ResolvedRefs` with the Gateway API's reasons. Pure functions of the route and the discovery
//! index.

use braid_crds::conditions as crd_conditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::translate::{self, CONTROLLER_NAME, Key, Refusal, RouteSpec, reasons};
use super::types::{BackendRef, ParentReference, RouteParentStatus, RouteStatus};
use crate::conditions::{Observed, Status, merge};
use crate::discovery::index::{GatewayRouteInfo, Index};
use crate::discovery::registry::Programming;

/// The implementation-specific condition that counts the proxies running the route, as a
/// MeshRoute's `Programmed` does (Kubernetes condition types may carry a domain prefix).
pub const PROGRAMMED: &str = "braid.dev/Programmed";

/// What Braid concludes about one Service parent of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub parent_ref: ParentReference,
    /// The Service the parent names.
    pub target: Key,
    pub accepted: Observed,
    pub resolved: Observed,
    /// Set by the status writer, which knows the proxies (`programmed`).
    pub programmed: Option<Observed>,
}

/// The `braid.dev/Programmed` condition of a parent: how many of the proxies that call the
/// Service run this generation of the route.
pub fn programmed(verdict: &Verdict, counts: &Programming, generation: i64) -> Observed {
    let observed = |status, reason, message: String| Observed { type_: PROGRAMMED, status, reason, message };
    let (namespace, service) = &verdict.target;
    if verdict.accepted.status != Status::True {
        return observed(
            Status::False,
            crd_conditions::reasons::NOT_ACCEPTED,
            "the route is not accepted for this parent; proxies keep routing as before".to_owned(),
        );
    }
    crate::conditions::programmed(
        PROGRAMMED,
        counts,
        &format!("{namespace}/{service}"),
        &format!(" generation {generation}"),
    )
}

fn refused(type_: &'static str, refusal: &Refusal) -> Observed {
    Observed { type_, status: Status::False, reason: refusal.reason, message: refusal.to_string() }
}

/// Every backendRef of a route (rules, then their mirrors), with its field.
fn backend_refs(spec: &RouteSpec) -> Vec<(String, &BackendRef)> {
    let mut refs = Vec::new();
    let rules: Vec<(&[BackendRef], &[super::types::Filter])> = match spec {
        RouteSpec::Http(spec) => spec.rules.iter().map(|r| (&r.backend_refs[..], &r.filters[..])).collect(),
        RouteSpec::Grpc(spec) => spec.rules.iter().map(|r| (&r.backend_refs[..], &r.filters[..])).collect(),
    };
    for (r, (backends, filters)) in rules.into_iter().enumerate() {
        for (b, backend) in backends.iter().enumerate() {
            refs.push((format!("spec.rules[{r}].backendRefs[{b}]"), backend));
        }
        for (f, filter) in filters.iter().enumerate() {
            if let Some(mirror) = &filter.request_mirror {
                refs.push((
                    format!("spec.rules[{r}].filters[{f}].requestMirror.backendRef"),
                    &mirror.backend_ref,
                ));
            }
        }
    }
    refs
}

/// The verdict on each Service parent of route `namespace/name`; parents of other kinds
/// (Gateways) belong to other controllers and get none.
pub fn verdicts(namespace: &str, name: &str, route: &GatewayRouteInfo, index: &Index) -> Vec<Verdict> {
    let mut out = Vec::new();
    for parent in route.spec.parent_refs().iter().filter(|p| p.is_service()) {
        let target: Key =
            (parent.namespace.clone().unwrap_or_else(|| namespace.to_owned()), parent.name.clone());
        let resolved = resolved(namespace, route, index);
        let accepted = accepted(namespace, name, route, parent, &target, index);
        out.push(Verdict { parent_ref: parent.clone(), target, accepted, resolved, programmed: None });
    }
    out
}

fn accepted(
    namespace: &str,
    name: &str,
    route: &GatewayRouteInfo,
    parent: &ParentReference,
    target: &Key,
    index: &Index,
) -> Observed {
    let accepted = crd_conditions::ACCEPTED;
    if let Some(refusal) = translate::parent_refusal(parent) {
        return refused(accepted, &refusal);
    }
    let no_parent = |message: String| Observed {
        type_: accepted,
        status: Status::False,
        reason: reasons::NO_MATCHING_PARENT,
        message,
    };
    let Some(ports) = index.service_ports(target) else {
        return no_parent(format!("Service {}/{} does not exist", target.0, target.1));
    };
    let ports: Vec<u16> = match parent.port.map(u16::try_from) {
        None => ports,
        Some(Ok(port)) if ports.contains(&port) => vec![port],
        Some(_) => {
            return no_parent(format!(
                "Service {}/{} has no port {}",
                target.0,
                target.1,
                parent.port.unwrap_or_default()
            ));
        }
    };
    let Some(&first) = ports.first() else {
        return no_parent(format!("Service {}/{} has no TCP port", target.0, target.1));
    };
    if let Err(refusal) =
        translate::translate(namespace, name, &route.created, &route.spec, target, first, index)
    {
        return refused(accepted, &refusal);
    }
    let mut overriding = Vec::new();
    for port in &ports {
        for meshroute in index.meshroutes_on(target, *port) {
            overriding.push(format!("MeshRoute {meshroute} (port {port})"));
        }
    }
    if !overriding.is_empty() {
        return Observed {
            type_: accepted,
            status: Status::False,
            reason: reasons::OVERRIDDEN,
            message: format!(
                "{} also route(s) Service {}/{}, and a MeshRoute wins over HTTPRoutes and GRPCRoutes on the \
                 ports it routes: this route is not applied there",
                overriding.join(", "),
                target.0,
                target.1
            ),
        };
    }
    let rules = match &route.spec {
        RouteSpec::Http(spec) => spec.rules.len(),
        RouteSpec::Grpc(spec) => spec.rules.len(),
    };
    let on = match parent.port {
        Some(port) => format!("port {port} of Service {}/{}", target.0, target.1),
        None => format!("Service {}/{}", target.0, target.1),
    };
    Observed {
        type_: accepted,
        status: Status::True,
        reason: reasons::ACCEPTED,
        message: format!("{rules} rule(s) applied by the mesh's proxies to requests for {on}"),
    }
}

fn resolved(namespace: &str, route: &GatewayRouteInfo, index: &Index) -> Observed {
    let kind = route.spec.kind();
    let refs = backend_refs(&route.spec);
    let lookup = translate::RouteLookup::new(namespace, &route.spec, index);
    let mut problems: Vec<Refusal> = Vec::new();
    for (field, backend) in &refs {
        if let Err(refusal) = translate::resolve_backend(kind, namespace, backend, field, &lookup) {
            problems.push(refusal);
        }
    }
    match problems.first() {
        None => Observed {
            type_: crd_conditions::RESOLVED_REFS,
            status: Status::True,
            reason: reasons::RESOLVED_REFS,
            message: format!("all {} backend reference(s) resolved", refs.len()),
        },
        Some(first) => Observed {
            type_: crd_conditions::RESOLVED_REFS,
            status: Status::False,
            reason: first.reason,
            message: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        },
    }
}

/// The whole `status` to write: the entries of other controllers as they are, then Braid's, one
/// per verdict, each condition keeping its lastTransitionTime while its status holds.
pub fn desired_status(
    previous: &RouteStatus,
    verdicts: &[Verdict],
    generation: i64,
    now: &Time,
) -> RouteStatus {
    let mut parents: Vec<RouteParentStatus> =
        previous.parents.iter().filter(|p| p.controller_name != CONTROLLER_NAME).cloned().collect();
    for verdict in verdicts {
        let before = previous
            .parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == verdict.parent_ref)
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default();
        parents.push(RouteParentStatus {
            parent_ref: verdict.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: merge(
                before,
                [verdict.accepted.clone(), verdict.resolved.clone()]
                    .into_iter()
                    .chain(verdict.programmed.clone())
                    .collect(),
                Some(generation),
                now,
            ),
        });
    }
    RouteStatus { parents }
}
