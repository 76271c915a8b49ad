//! `braid diagnose`: configuration mistakes in a namespace (or all), each with what is wrong,
//! why it matters and the command or edit that fixes it, like `istioctl analyze`:
//!
//! - a MeshRoute whose Service, or a backend Service, does not exist or has no ready endpoints;
//! - a MeshRoute whose Programmed condition is False;
//! - a MeshPolicy that selects no pod, or only pods without a proxy;
//! - pods without a proxy in a namespace labelled for injection (started before the label).
//!
//! `gather` reads the objects; `evaluate` (pure) turns them into findings; `render_text` and
//! `render_json` print them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use braid_crds::{MeshPolicy, MeshRoute};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use crate::proxy_admin::{PROXY_CONTAINER, has_proxy};

const INJECT: &str = "braid.dev/inject";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("cannot list {what}{scope}: {source}")]
    List { what: &'static str, scope: String, source: kube::Error },
    #[error("there is no namespace {0}: `kubectl get namespaces` lists them")]
    NoNamespace(String),
}

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

/// The objects the findings are made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub namespaces: Vec<Namespace>,
    pub routes: Vec<MeshRoute>,
    pub policies: Vec<MeshPolicy>,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    RouteServiceMissing,
    RouteServiceNoEndpoints,
    RouteBackendMissing,
    RouteBackendNoEndpoints,
    RouteNotProgrammed,
    PolicySelectsNoPod,
    PolicySelectsNoMeshedPod,
    PodsWithoutProxy,
}

/// One mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub namespace: String,
    /// The object at fault, like "MeshRoute shop/reviews".
    pub object: String,
    /// What is wrong.
    pub problem: String,
    /// Why it matters.
    pub why: String,
    /// The command or edit that fixes it.
    pub fix: String,
}

/// The findings, ordered by namespace, then kind, then object.
pub fn evaluate(inputs: &Inputs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let services: BTreeMap<(&str, &str), &Service> = inputs
        .services
        .iter()
        .filter_map(|s| Some(((s.metadata.namespace.as_deref()?, s.metadata.name.as_deref()?), s)))
        .collect();
    let mut ready: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for slice in &inputs.slices {
        let (Some(ns), Some(service)) = (
            slice.metadata.namespace.as_deref(),
            slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str),
        ) else {
            continue;
        };
        // An unknown readiness counts as ready, as the EndpointSlice API says consumers should.
        let count = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .map(|e| e.addresses.len())
            .sum::<usize>();
        *ready.entry((ns, service)).or_default() += count;
    }
    // Service state: None when it does not exist; Some(true) when it has ready endpoints (or
    // needs none: ExternalName).
    let service_state = |ns: &str, name: &str| -> Option<bool> {
        let service = services.get(&(ns, name))?;
        let external = service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
        Some(external || ready.get(&(ns, name)).copied().unwrap_or(0) > 0)
    };

    for route in &inputs.routes {
        let ns = route.metadata.namespace.as_deref().unwrap_or_default();
        let name = route.metadata.name.as_deref().unwrap_or_default();
        let object = format!("MeshRoute {ns}/{name}");
        let edit = format!("kubectl -n {ns} edit meshroute {name}");
        let target = &route.spec.service;
        match service_state(ns, target) {
            None => findings.push(Finding {
                kind: Kind::RouteServiceMissing,
                namespace: ns.to_owned(),
                object: object.clone(),
                problem: format!("spec.service names Service {target}, which does not exist in namespace {ns}"),
                why: "no proxy routes by this MeshRoute: clients calling that name get no answer from DNS, and its rules apply to nothing".to_owned(),
                fix: format!("create Service {target} in {ns}, or point spec.service at an existing one: {edit}"),
            }),
            Some(false) => findings.push(Finding {
                kind: Kind::RouteServiceNoEndpoints,
                namespace: ns.to_owned(),
                object: object.clone(),
                problem: format!("its Service {target} has no ready endpoints"),
                why: "the requests its rules send to the Service itself, or to a subset of its pods, fail with 503".to_owned(),
                fix: no_endpoints_fix(ns, target),
            }),
            Some(true) => {}
        }
        let mut seen = BTreeSet::new();
        for (r, rule) in route.spec.rules.iter().enumerate() {
            let total: i64 = rule.backends.iter().map(|b| i64::from(b.weight.max(0))).sum();
            for (b, backend) in rule.backends.iter().enumerate() {
                let Some(service) = &backend.service else { continue };
                if service == target || !seen.insert(service.clone()) {
                    continue;
                }
                let field = format!("spec.rules[{r}].backends[{b}]");
                let share = if total > 0 {
                    format!("its share of the rule's requests (weight {} of {total})", backend.weight)
                } else {
                    "the requests the rule sends it".to_owned()
                };
                match service_state(ns, service) {
                    None => findings.push(Finding {
                        kind: Kind::RouteBackendMissing,
                        namespace: ns.to_owned(),
                        object: object.clone(),
                        problem: format!(
                            "{field} names Service {service}, which does not exist in namespace {ns}"
                        ),
                        why: format!("{share} fail with 503, and the route is not ResolvedRefs"),
                        fix: format!("create Service {service} in {ns}, or name an existing backend: {edit}"),
                    }),
                    Some(false) => findings.push(Finding {
                        kind: Kind::RouteBackendNoEndpoints,
                        namespace: ns.to_owned(),
                        object: object.clone(),
                        problem: format!("{field}: Service {service} has no ready endpoints"),
                        why: format!("{share} fail with 503"),
                        fix: no_endpoints_fix(ns, service),
                    }),
                    Some(true) => {}
                }
            }
        }
        let conditions = route.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
        let is_false = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "False");
        if let Some(condition) = is_false("Programmed") {
            // Not accepted: the Accepted condition's message names the field that is wrong.
            let accepted = is_false("Accepted")
                .map_or(String::new(), |a| format!("; Accepted is False ({}): {:?}", a.reason, a.message));
            findings.push(Finding {
                kind: Kind::RouteNotProgrammed,
                namespace: ns.to_owned(),
                object: object.clone(),
                problem: format!("Programmed is False ({}): {:?}{accepted}", condition.reason, condition.message),
                why: "proxies do not run this generation of the route: they route by an older one, or by none".to_owned(),
                fix: format!(
                    "act on the message; then `kubectl -n {ns} get meshroute {name}` shows Programmed, and `braid routes POD -n NAMESPACE` what a client's proxy holds"
                ),
            });
        }
    }

    let live = |pod: &&Pod| {
        !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
            && pod.metadata.deletion_timestamp.is_none()
    };
    for policy in &inputs.policies {
        let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let selector = &policy.spec.pod_selector;
        let selected: Vec<&Pod> = inputs
            .pods
            .iter()
            .filter(live)
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        let shown = if selector.is_empty() {
            "every pod".to_owned()
        } else {
            selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        };
        let object = format!("MeshPolicy {ns}/{name}");
        if selected.is_empty() {
            findings.push(Finding {
                kind: Kind::PolicySelectsNoPod,
                namespace: ns.to_owned(),
                object,
                problem: format!("spec.podSelector ({shown}) selects no pod in namespace {ns}"),
                why: "it protects nothing: the pods it was meant for admit whoever their default inbound policy admits".to_owned(),
                fix: format!(
                    "compare with the pods' labels (`kubectl -n {ns} get pods --show-labels`) and fix spec.podSelector: kubectl -n {ns} edit meshpolicy {name}"
                ),
            });
        } else if !selected.iter().any(|p| has_proxy(p)) {
            findings.push(Finding {
                kind: Kind::PolicySelectsNoMeshedPod,
                namespace: ns.to_owned(),
                object,
                problem: format!(
                    "spec.podSelector ({shown}) selects {} pod(s), none of which has a proxy",
                    selected.len()
                ),
                why: "only a pod's proxy enforces a MeshPolicy: these pods admit every client".to_owned(),
                fix: format!(
                    "mesh them: kubectl label namespace {ns} {INJECT}=enabled, then kubectl -n {ns} rollout restart the workloads"
                ),
            });
        }
    }

    for namespace in &inputs.namespaces {
        let Some(ns) = namespace.metadata.name.as_deref() else { continue };
        let labelled = namespace.metadata.labels.as_ref().and_then(|l| l.get(INJECT)).map(String::as_str)
            == Some("enabled");
        if !labelled {
            continue;
        }
        let mut workloads: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pod in inputs.pods.iter().filter(live).filter(|p| p.metadata.namespace.as_deref() == Some(ns)) {
            let opted_out = pod.metadata.annotations.as_ref().and_then(|a| a.get(INJECT)).map(String::as_str)
                == Some("disabled");
            let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
            if has_proxy(pod) || opted_out || host_network {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            workloads.entry(workload_of(pod)).or_default().push(name);
        }
        for (workload, pods) in workloads {
            let fix = match workload.split_once('/') {
                Some(("pod", pod)) => format!(
                    "recreate it (`kubectl -n {ns} get pod {pod} -o yaml > pod.yaml; kubectl -n {ns} replace --force -f pod.yaml`), \
                     or annotate it {INJECT}: disabled if it is meant to stay out"
                ),
                Some(("job", _)) => format!(
                    "the Job's next pods get a proxy; rerun it to mesh this one (kubectl -n {ns} delete {workload}, then apply it again)"
                ),
                _ => format!("kubectl -n {ns} rollout restart {workload}"),
            };
            findings.push(Finding {
                kind: Kind::PodsWithoutProxy,
                namespace: ns.to_owned(),
                object: workload.clone(),
                problem: format!(
                    "namespace {ns} is labelled {INJECT}=enabled, but {workload} runs {} pod(s) without a {PROXY_CONTAINER} container: {}",
                    pods.len(),
                    pods.join(", ")
                ),
                why: "the webhook injects pods when they are created: these started before the label (or while the webhook was down), so their traffic is neither mTLS nor routed by MeshRoutes, and STRICT MeshPolicies refuse them as clients".to_owned(),
                fix,
            });
        }
    }
    findings.sort_by(|a, b| (&a.namespace, a.kind, &a.object).cmp(&(&b.namespace, b.kind, &b.object)));
    findings
}

fn no_endpoints_fix(ns: &str, service: &str) -> String {
    format!(
        "check that its selector matches running, ready pods: kubectl -n {ns} describe service {service}; kubectl -n {ns} get endpointslices -l {SERVICE_NAME_LABEL}={service}"
    )
}

/// `deployment/web`, `statefulset/db`, `daemonset/agent`, `job/migrate` or `pod/NAME`: what
/// to restart to recreate the pod.
fn workload_of(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match owner {
        Some(owner) if owner.kind == "ReplicaSet" => {
            let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|hash| owner.name.strip_suffix(&format!("-{hash}"))) {
                Some(deployment) => format!("deployment/{deployment}"),
                None => format!("replicaset/{}", owner.name),
            }
        }
        Some(owner) => format!("{}/{}", owner.kind.to_lowercase(), owner.name),
        None => format!("pod/{name}"),
    }
}

/// One block per finding (`×`, the object and what is wrong; then why and the fix), and a
/// summary line; with `color`, a red mark.
pub fn render_text(findings: &[Finding], scope: &Scope, color: bool) -> String {
    let where_ = match scope {
        Scope::Namespace(ns) => format!("in namespace {ns}"),
        Scope::All => "in any namespace".to_owned(),
    };
    let mut out = String::new();
    for finding in findings {
        let mark = if color { "\x1b[31m×\x1b[0m" } else { "×" };
        let _ = writeln!(out, "{mark} {}: {}", finding.object, finding.problem);
        let _ = writeln!(out, "    why: {}", finding.why);
        let _ = writeln!(out, "    fix: {}\n", finding.fix);
    }
    match findings.len() {
        0 => {
            let mark = if color { "\x1b[32m√\x1b[0m" } else { "√" };
            let _ = writeln!(out, "{mark} no configuration problems found {where_}");
        }
        n => {
            let _ = writeln!(out, "{n} problem{} found {where_}", if n == 1 { "" } else { "s" });
        }
    }
    out
}

pub fn render_json(findings: &[Finding]) -> String {
    let report = serde_json::json!({ "problems": findings.len(), "findings": findings });
    serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
}

/// Reads the objects of `scope`.
pub async fn gather(client: &Client, scope: &Scope) -> Result<Inputs, DiagnoseError> {
    let scope_text = match scope {
        Scope::Namespace(ns) => format!(" in namespace {ns}"),
        Scope::All => String::new(),
    };
    let error = |what| {
        let scope = scope_text.clone();
        move |source| DiagnoseError::List { what, scope, source }
    };
    let lp = ListParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespaces = match scope {
        Scope::Namespace(ns) => vec![
            namespaces
                .get_opt(ns)
                .await
                .map_err(error("namespaces"))?
                .ok_or_else(|| DiagnoseError::NoNamespace(ns.clone()))?,
        ],
        Scope::All => namespaces.list(&lp).await.map_err(error("namespaces"))?.items,
    };
    fn api<K>(client: &Client, scope: &Scope) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match scope {
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Scope::All => Api::all(client.clone()),
        }
    }
    Ok(Inputs {
        namespaces,
        routes: api::<MeshRoute>(client, scope).list(&lp).await.map_err(error("MeshRoutes"))?.items,
        policies: api::<MeshPolicy>(client, scope).list(&lp).await.map_err(error("MeshPolicies"))?.items,
        services: api::<Service>(client, scope).list(&lp).await.map_err(error("Services"))?.items,
        slices: api::<EndpointSlice>(client, scope).list(&lp).await.map_err(error("EndpointSlices"))?.items,
        pods: api::<Pod>(client, scope).list(&lp).await.map_err(error("pods"))?.items,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn namespace(name: &str, injected: bool) -> Namespace {
        let labels = if injected { json!({ "braid.dev/inject": "enabled" }) } else { json!({}) };
        from(json!({ "metadata": { "name": name, "labels": labels } }))
    }

    fn service(ns: &str, name: &str) -> Service {
        from(
            json!({ "metadata": { "name": name, "namespace": ns }, "spec": { "selector": { "app": name } } }),
        )
    }

    fn slice(ns: &str, service: &str, ready: &[bool]) -> EndpointSlice {
        let endpoints: Vec<_> = ready
            .iter()
            .enumerate()
            .map(|(i, r)| json!({ "addresses": [format!("10.244.0.{i}")], "conditions": { "ready": r } }))
            .collect();
        from(json!({
            "metadata": { "name": format!("{service}-abc"), "namespace": ns, "labels": { SERVICE_NAME_LABEL: service } },
            "addressType": "IPv4", "endpoints": endpoints
        }))
    }

    fn route(
        ns: &str,
        name: &str,
        service: &str,
        backends: serde_json::Value,
        programmed: Option<(&str, &str, &str)>,
    ) -> MeshRoute {
        let conditions: Vec<_> = programmed
            .into_iter()
            .map(|(status, reason, message)| {
                json!({ "type": "Programmed", "status": status, "reason": reason, "message": message,
                        "lastTransitionTime": "2026-12-06T00:00:00Z", "observedGeneration": 1 })
            })
            .collect();
        from(json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "service": service, "rules": [ { "backends": backends } ] },
            "status": { "conditions": conditions }
        }))
    }

    fn policy(ns: &str, name: &str, selector: serde_json::Value) -> MeshPolicy {
        from(json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "podSelector": selector, "rules": [] }
        }))
    }

    fn pod(ns: &str, name: &str, app: &str, meshed: bool, owner: Option<(&str, &str, &str)>) -> Pod {
        let mut containers = vec![json!({ "name": "app" })];
        if meshed {
            containers.push(json!({ "name": "braid-proxy" }));
        }
        let (owners, hash) = match owner {
            Some((kind, owner, hash)) => (
                json!([{ "apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true }]),
                hash,
            ),
            None => (json!([]), ""),
        };
        let mut labels = json!({ "app": app });
        if !hash.is_empty() {
            labels["pod-template-hash"] = json!(hash);
        }
        from(json!({
            "metadata": { "name": name, "namespace": ns, "labels": labels, "ownerReferences": owners },
            "spec": { "containers": containers },
            "status": { "phase": "Running" }
        }))
    }

    /// A namespace where everything is right: a meshed Deployment behind its Service, an 80/20
    /// MeshRoute over two versions, a policy that selects the pods.
    fn clean() -> Inputs {
        Inputs {
            namespaces: vec![namespace("shop", true)],
            routes: vec![route(
                "shop",
                "reviews",
                "reviews",
                json!([{ "service": "reviews-v1", "weight": 80 }, { "service": "reviews-v2", "weight": 20 }]),
                Some(("True", "Programmed", "2/2 proxies run generation 1")),
            )],
            policies: vec![policy("shop", "reviews", json!({ "app": "reviews" }))],
            services: vec![
                service("shop", "reviews"),
                service("shop", "reviews-v1"),
                service("shop", "reviews-v2"),
            ],
            slices: vec![
                slice("shop", "reviews", &[true, true]),
                slice("shop", "reviews-v1", &[true]),
                slice("shop", "reviews-v2", &[true]),
            ],
            pods: vec![
                pod(
                    "shop",
                    "reviews-v1-7f9-a",
                    "reviews",
                    true,
                    Some(("ReplicaSet", "reviews-v1-7f9", "7f9")),
                ),
                pod(
                    "shop",
                    "reviews-v2-5c4-b",
                    "reviews",
                    true,
                    Some(("ReplicaSet", "reviews-v2-5c4", "5c4")),
                ),
            ],
        }
    }

    #[test]
    fn a_clean_namespace_has_no_findings() {
        let findings = evaluate(&clean());
        assert_eq!(findings, []);
        assert_eq!(
            render_text(&findings, &Scope::Namespace("shop".into()), false),
            "√ no configuration problems found in namespace shop\n"
        );
        assert_eq!(render_json(&findings), "{\n  \"findings\": [],\n  \"problems\": 0\n}\n");
    }

    #[test]
    fn each_mistake_is_found_explained_and_fixed() {
        let mut inputs = clean();
        // A route to a Service that does not exist, one whose backend has no ready endpoint and
        // whose other backend does not exist, and one the proxies refused.
        inputs.routes.push(route(
            "shop",
            "ghost",
            "ghost",
            json!([{ "service": "ghost", "weight": 1 }]),
            None,
        ));
        inputs.routes.push(route(
            "shop",
            "split",
            "reviews",
            json!([{ "service": "reviews-v3", "weight": 90 }, { "service": "ratings", "weight": 10 }]),
            Some(("False", "Pending", "1/2 proxies run generation 2: 1 refused it: bad weight")),
        ));
        let mut invalid = route("shop", "timeouts", "reviews", json!([{ "service": "reviews" }]), None);
        invalid.status = Some(from(json!({ "conditions": [
            { "type": "Accepted", "status": "False", "reason": "Invalid", "message": "spec.rules[0].retries.perTryTimeout: 2s is longer than the timeout",
              "lastTransitionTime": "2026-12-06T00:00:00Z" },
            { "type": "Programmed", "status": "False", "reason": "NotAccepted", "message": "the route is not accepted",
              "lastTransitionTime": "2026-12-06T00:00:00Z" } ] })));
        inputs.routes.push(invalid);
        inputs.services.push(service("shop", "reviews-v3"));
        inputs.slices.push(slice("shop", "reviews-v3", &[false, false]));
        inputs.policies.push(policy("shop", "nobody", json!({ "app": "nothing" })));
        inputs.policies.push(policy("shop", "bare", json!({ "app": "legacy" })));
        inputs.pods.push(pod(
            "shop",
            "legacy-6d5-x",
            "legacy",
            false,
            Some(("ReplicaSet", "legacy-6d5", "6d5")),
        ));
        inputs.pods.push(pod(
            "shop",
            "legacy-6d5-y",
            "legacy",
            false,
            Some(("ReplicaSet", "legacy-6d5", "6d5")),
        ));
        inputs.pods.push(pod("shop", "db-0", "db", false, Some(("StatefulSet", "db", ""))));
        inputs.pods.push(pod("shop", "debug", "debug", false, None));
        let mut opted_out = pod("shop", "tool", "tool", false, None);
        opted_out.metadata.annotations =
            Some([("braid.dev/inject".to_owned(), "disabled".to_owned())].into());
        inputs.pods.push(opted_out);
        // The same pods in a namespace not labelled for injection are no finding.
        inputs.namespaces.push(namespace("plain", false));
        inputs.pods.push(pod("plain", "web-1", "web", false, None));

        let findings = evaluate(&inputs);
        let kinds: Vec<Kind> = findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::RouteServiceMissing,
                Kind::RouteBackendMissing,
                Kind::RouteBackendNoEndpoints,
                Kind::RouteNotProgrammed,
                Kind::RouteNotProgrammed,
                Kind::PolicySelectsNoPod,
                Kind::PolicySelectsNoMeshedPod,
                Kind::PodsWithoutProxy,
                Kind::PodsWithoutProxy,
                Kind::PodsWithoutProxy,
            ]
        );
        let text = render_text(&findings, &Scope::Namespace("shop".into()), false);
        let expected = "\
× MeshRoute shop/ghost: spec.service names Service ghost, which does not exist in namespace shop
    why: no proxy routes by this MeshRoute: clients calling that name get no answer from DNS, and its rules apply to nothing
    fix: create Service ghost in shop, or point spec.service at an existing one: kubectl -n shop edit meshroute ghost

× MeshRoute shop/split: spec.rules[0].backends[1] names Service ratings, which does not exist in namespace shop
    why: its share of the rule's requests (weight 10 of 100) fail with 503, and the route is not ResolvedRefs
    fix: create Service ratings in shop, or name an existing backend: kubectl -n shop edit meshroute split

× MeshRoute shop/split: spec.rules[0].backends[0]: Service reviews-v3 has no ready endpoints
    why: its share of the rule's requests (weight 90 of 100) fail with 503
    fix: check that its selector matches running, ready pods: kubectl -n shop describe service reviews-v3; kubectl -n shop get endpointslices -l kubernetes.io/service-name=reviews-v3

× MeshRoute shop/split: Programmed is False (Pending): \"1/2 proxies run generation 2: 1 refused it: bad weight\"
    why: proxies do not run this generation of the route: they route by an older one, or by none
    fix: act on the message; then `kubectl -n shop get meshroute split` shows Programmed, and `braid routes POD -n NAMESPACE` what a client's proxy holds

× MeshRoute shop/timeouts: Programmed is False (NotAccepted): \"the route is not accepted\"; Accepted is False (Invalid): \"spec.rules[0].retries.perTryTimeout: 2s is longer than the timeout\"
    why: proxies do not run this generation of the route: they route by an older one, or by none
    fix: act on the message; then `kubectl -n shop get meshroute timeouts` shows Programmed, and `braid routes POD -n NAMESPACE` what a client's proxy holds

× MeshPolicy shop/nobody: spec.podSelector (app=nothing) selects no pod in namespace shop
    why: it protects nothing: the pods it was meant for admit whoever their default inbound policy admits
    fix: compare with the pods' labels (`kubectl -n shop get pods --show-labels`) and fix spec.podSelector: kubectl -n shop edit meshpolicy nobody

× MeshPolicy shop/bare: spec.podSelector (app=legacy) selects 2 pod(s), none of which has a proxy
    why: only a pod's proxy enforces a MeshPolicy: these pods admit every client
    fix: mesh them: kubectl label namespace shop braid.dev/inject=enabled, then kubectl -n shop rollout restart the workloads

× deployment/legacy: namespace shop is labelled braid.dev/inject=enabled, but deployment/legacy runs 2 pod(s) without a braid-proxy container: legacy-6d5-x, legacy-6d5-y
    why: the webhook injects pods when they are created: these started before the label (or while the webhook was down), so their traffic is neither mTLS nor routed by MeshRoutes, and STRICT MeshPolicies refuse them as clients
    fix: kubectl -n shop rollout restart deployment/legacy

× pod/debug: namespace shop is labelled braid.dev/inject=enabled, but pod/debug runs 1 pod(s) without a braid-proxy container: debug
    why: the webhook injects pods when they are created: these started before the label (or while the webhook was down), so their traffic is neither mTLS nor routed by MeshRoutes, and STRICT MeshPolicies refuse them as clients
    fix: recreate it (`kubectl -n shop get pod debug -o yaml > pod.yaml; kubectl -n shop replace --force -f pod.yaml`), or annotate it braid.dev/inject: disabled if it is meant to stay out

× statefulset/db: namespace shop is labelled braid.dev/inject=enabled, but statefulset/db runs 1 pod(s) without a braid-proxy container: db-0
    why: the webhook injects pods when they are created: these started before the label (or while the webhook was down), so their traffic is neither mTLS nor routed by MeshRoutes, and STRICT MeshPolicies refuse them as clients
    fix: kubectl -n shop rollout restart statefulset/db

10 problems found in namespace shop
";
        insta_like(&text, expected);
        let json: serde_json::Value = serde_json::from_str(&render_json(&findings)).unwrap();
        assert_eq!(json["problems"], 10);
        assert_eq!(json["findings"][0]["kind"], "route-service-missing");
        assert_eq!(json["findings"][0]["object"], "MeshRoute shop/ghost");
        assert!(render_text(&findings, &Scope::All, true).contains("\x1b[31m×\x1b[0m MeshRoute shop/ghost"));
    }

    #[test]
    fn a_route_whose_own_service_has_no_ready_endpoint_and_unknown_readiness_counts_as_ready() {
        let mut inputs = clean();
        inputs.slices[0] = slice("shop", "reviews", &[false]);
        let findings = evaluate(&inputs);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].problem, "its Service reviews has no ready endpoints");

        let mut unknown = clean();
        unknown.slices[0] = from(json!({
            "metadata": { "name": "reviews-x", "namespace": "shop", "labels": { SERVICE_NAME_LABEL: "reviews" } },
            "addressType": "IPv4", "endpoints": [{ "addresses": ["10.244.0.9"] }]
        }));
        assert_eq!(evaluate(&unknown), []);
    }

    fn insta_like(actual: &str, expected: &str) {
        for (n, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "line {} of:\n{actual}", n + 1);
        }
        assert_eq!(actual.lines().count(), expected.lines().count(), "{actual}");
    }
}
