//! `braid check`: is the mesh in this cluster healthy? One line per check, each failure with the
//! command that helps, like `linkerd check`. `gather` reads the cluster into a `Snapshot`;
//! `evaluate` (pure) turns it into checks; `render_text` and `render_json` print them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use braid_crds::mesh::{Mesh, MeshStatus};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

/// The CRDs Braid installs.
pub const CRDS: [&str; 4] =
    ["meshes.braid.dev", "meshroutes.braid.dev", "meshpolicies.braid.dev", "meshexternalservices.braid.dev"];
/// The proxy container the webhook injects.
const PROXY_CONTAINER: &str = "braid-proxy";
const INJECT_LABEL: &str = "braid.dev/inject";
/// Certificates closer than this to their end are a warning.
const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(24 * 30);

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {what} from the cluster: {source}")]
    Read { what: &'static str, source: kube::Error },
}

/// What `evaluate` needs from the cluster; plain data, so checks are tested without one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The namespace Braid was installed in, and its release name.
    pub namespace: String,
    pub release: String,
    /// Each Braid CRD found, and whether the API server has established it.
    pub crds: BTreeMap<String, bool>,
    /// The Mesh named default; `None` when there is none (or no CRD for it).
    pub mesh: Option<MeshStatus>,
    pub mesh_exists: bool,
    pub operator: Option<Replicas>,
    pub webhook: Option<Replicas>,
    pub lease: Option<LeaseState>,
    /// The MutatingWebhookConfiguration: how many webhooks it has, and how many lack a caBundle.
    pub webhook_config: Option<(usize, usize)>,
    /// Running pods with the proxy container.
    pub meshed_pods: usize,
    /// Pods in namespaces labelled for injection that run without a proxy, by namespace.
    pub uninjected: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    pub desired: i32,
    pub available: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    /// When the holder last renewed it, and for how long a renewal holds.
    pub renewed: Option<Timestamp>,
    pub duration: SignedDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    /// What to run or change when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self { name: name.to_owned(), outcome: Outcome::Pass, detail: detail.into(), fix: None }
    }

    fn not_passed(name: &str, outcome: Outcome, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.to_owned(), outcome, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Whether any check failed (warnings do not fail the run).
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|check| check.outcome == Outcome::Fail)
}

/// The checks, in the order a reader fixes them: what is installed, then what runs, then the
/// certificates, then the workloads.
pub fn evaluate(snapshot: &Snapshot, now: Timestamp) -> Vec<Check> {
    let ns = &snapshot.namespace;
    let operator = format!("{}-operator", snapshot.release);
    let webhook = format!("{}-webhook", snapshot.release);
    let install =
        format!("helm install {} oci://… (or kubectl apply -f crds/) in namespace {ns}", snapshot.release);
    let mut checks = Vec::new();

    let missing: Vec<&str> = CRDS.iter().copied().filter(|crd| !snapshot.crds.contains_key(*crd)).collect();
    let pending: Vec<&str> = snapshot
        .crds
        .iter()
        .filter(|(_, established)| !**established)
        .map(|(name, _)| name.as_str())
        .collect();
    checks.push(if !missing.is_empty() {
        Check::not_passed(
            "CRDs installed",
            Outcome::Fail,
            format!("missing: {}", missing.join(", ")),
            install.clone(),
        )
    } else if !pending.is_empty() {
        Check::not_passed(
            "CRDs installed",
            Outcome::Fail,
            format!("not established yet: {}", pending.join(", ")),
            format!("kubectl get crd {} -o yaml  # see status.conditions", pending.join(" ")),
        )
    } else {
        Check::pass("CRDs installed", format!("{} established", CRDS.len()))
    });

    checks.push(replicas_check("operator running", &operator, ns, snapshot.operator));
    checks.push(match &snapshot.lease {
        None => Check::not_passed(
            "operator leader",
            Outcome::Fail,
            format!("no Lease {operator} in {ns}: no replica has led yet"),
            format!("kubectl -n {ns} logs deployment/{operator}"),
        ),
        Some(lease) => match (&lease.holder, lease.renewed) {
            (Some(holder), Some(renewed)) if now.duration_since(renewed) <= lease.duration => Check::pass(
                "operator leader",
                format!("{holder}, renewed {}s ago", now.duration_since(renewed).as_secs()),
            ),
            (holder, renewed) => Check::not_passed(
                "operator leader",
                Outcome::Fail,
                format!(
                    "the Lease has {} and was last renewed {}: no replica leads",
                    holder.as_deref().map_or("no holder".to_owned(), |h| format!("holder {h}")),
                    renewed
                        .map_or("never".to_owned(), |r| format!("{}s ago", now.duration_since(r).as_secs())),
                ),
                format!("kubectl -n {ns} logs deployment/{operator}"),
            ),
        },
    });
    checks.push(replicas_check("webhook running", &webhook, ns, snapshot.webhook));
    checks.push(match snapshot.webhook_config {
        None => Check::not_passed(
            "webhook registered",
            Outcome::Fail,
            format!("no MutatingWebhookConfiguration {webhook}: new pods get no proxy"),
            install.clone(),
        ),
        Some((_, without_ca)) if without_ca > 0 => Check::not_passed(
            "webhook registered",
            Outcome::Fail,
            format!(
                "{without_ca} webhook(s) of {webhook} have no caBundle yet: the API server cannot call them"
            ),
            format!("kubectl -n {ns} logs deployment/{operator}  # the operator writes the caBundle"),
        ),
        Some((webhooks, _)) => {
            Check::pass("webhook registered", format!("{webhooks} webhook(s) with a caBundle"))
        }
    });

    let Some(status) = snapshot.mesh.as_ref().filter(|_| snapshot.mesh_exists) else {
        checks.push(Check::not_passed(
            "Mesh default",
            Outcome::Fail,
            "there is no Mesh named default",
            "kubectl apply a Mesh named default, or install the chart with mesh.create=true (its default)",
        ));
        return workload_checks(checks, snapshot, None);
    };
    if status.conditions.is_empty() {
        checks.push(Check::not_passed(
            "Mesh default",
            Outcome::Fail,
            "no status yet: the operator has not reconciled it",
            format!("kubectl -n {ns} logs deployment/{operator}"),
        ));
    }
    for condition in &status.conditions {
        let name = format!("Mesh {}", condition.type_);
        checks.push(if condition.status == "True" {
            Check::pass(&name, condition.reason.clone())
        } else {
            Check::not_passed(
                &name,
                Outcome::Fail,
                format!("{}: {}", condition.reason, condition.message),
                "kubectl get mesh default -o yaml  # status.conditions; the message says what to change",
            )
        });
    }
    if let Some(identity) = &status.identity {
        checks.push(expiry(
            "trust anchor",
            identity.trust_anchor_not_after.0,
            None,
            now,
            "rotate it before it expires: see docs/identity.md",
        ));
        let issuer_fix = if identity.external {
            "renew the issuer in spec.identity.externalCaSecret: see docs/identity.md".to_owned()
        } else {
            format!("kubectl -n {ns} logs deployment/{operator}  # the operator renews it")
        };
        let renew_at = identity.issuer_renew_at.as_ref().map(|time| time.0);
        checks.push(expiry("issuer certificate", identity.issuer_not_after.0, renew_at, now, issuer_fix));
    }
    if let Some(certificate) = &status.webhook_certificate {
        checks.push(expiry(
            "webhook certificate",
            certificate.not_after.0,
            Some(certificate.renew_at.0),
            now,
            format!("kubectl -n {ns} logs deployment/{operator}  # the operator renews it"),
        ));
    }
    workload_checks(checks, snapshot, Some(status))
}

fn workload_checks(mut checks: Vec<Check>, snapshot: &Snapshot, status: Option<&MeshStatus>) -> Vec<Check> {
    let connected = status.and_then(|status| status.proxies.as_ref());
    let connected_count = connected.map_or(0, |proxies| proxies.connected.max(0) as usize);
    checks.push(if connected_count >= snapshot.meshed_pods {
        Check::pass(
            "proxies connected",
            format!("{connected_count} connected, {} meshed pods running", snapshot.meshed_pods),
        )
    } else {
        Check::not_passed(
            "proxies connected",
            Outcome::Fail,
            format!(
                "{} meshed pods run but {connected_count} proxies hold a discovery stream: the others route with what they last knew",
                snapshot.meshed_pods
            ),
            format!(
                "kubectl logs POD -c {PROXY_CONTAINER}  # of a meshed pod; and kubectl -n {} logs deployment/{}-operator",
                snapshot.namespace, snapshot.release
            ),
        )
    });
    if let Some(proxies) = connected
        && proxies.versions.len() > 1
    {
        let versions: Vec<String> = proxies.versions.iter().map(|(v, n)| format!("{v}: {n}")).collect();
        checks.push(Check::not_passed(
            "proxy versions",
            Outcome::Warn,
            format!("more than one proxy version runs ({})", versions.join(", ")),
            "kubectl rollout restart the workloads that run the old one, once the upgrade is meant to be done",
        ));
    }
    checks.push(if snapshot.uninjected.is_empty() {
        Check::pass("pods injected", "every pod of a namespace labelled for injection has a proxy")
    } else {
        let namespaces: Vec<String> =
            snapshot.uninjected.iter().map(|(ns, n)| format!("{ns} ({n})")).collect();
        Check::not_passed(
            "pods injected",
            Outcome::Warn,
            format!("pods without a proxy in namespaces labelled for injection: {}", namespaces.join(", ")),
            "kubectl rollout restart deployment -n NAMESPACE  # pods started before the label or the webhook",
        )
    });
    checks
}

fn replicas_check(name: &str, deployment: &str, ns: &str, replicas: Option<Replicas>) -> Check {
    match replicas {
        None => Check::not_passed(
            name,
            Outcome::Fail,
            format!("no Deployment {deployment} in namespace {ns}"),
            format!(
                "helm install braid helm/braid -n {ns} --create-namespace, or pass --namespace and --release of the installation"
            ),
        ),
        Some(Replicas { desired: 0, available }) => Check::not_passed(
            name,
            Outcome::Fail,
            format!("scaled to 0 replicas ({available} still available)"),
            format!("kubectl -n {ns} scale deployment/{deployment} --replicas=2  # as the chart installs it"),
        ),
        Some(Replicas { desired, available }) if available >= 1 => {
            let outcome_detail = format!("{available}/{desired} available");
            if available < desired {
                Check::not_passed(
                    name,
                    Outcome::Warn,
                    outcome_detail,
                    format!("kubectl -n {ns} describe deployment/{deployment}"),
                )
            } else {
                Check::pass(name, outcome_detail)
            }
        }
        Some(Replicas { desired, available }) => Check::not_passed(
            name,
            Outcome::Fail,
            format!("{available}/{desired} available"),
            format!(
                "kubectl -n {ns} describe deployment/{deployment}; kubectl -n {ns} logs deployment/{deployment}"
            ),
        ),
    }
}

/// A certificate the operator renews (`renew_at`) is a warning once that time has passed without
/// a new one; one it does not renew (the trust anchor, an external CA's issuer) within 30 days of
/// its end. Expired is a failure.
fn expiry(
    name: &str,
    not_after: Timestamp,
    renew_at: Option<Timestamp>,
    now: Timestamp,
    fix: impl Into<String>,
) -> Check {
    let left = not_after.duration_since(now);
    let days = left.as_secs() / 86_400;
    if left <= SignedDuration::ZERO {
        return Check::not_passed(name, Outcome::Fail, format!("expired at {not_after}"), fix);
    }
    match renew_at {
        Some(renew_at) if now > renew_at => Check::not_passed(
            name,
            Outcome::Warn,
            format!("due for renewal since {renew_at} and not renewed; expires in {days} days"),
            fix,
        ),
        Some(renew_at) => {
            Check::pass(name, format!("valid for {days} more days, to be renewed at {renew_at}"))
        }
        None if left < EXPIRY_WARNING => {
            Check::not_passed(name, Outcome::Warn, format!("expires in {days} days, at {not_after}"), fix)
        }
        None => Check::pass(name, format!("valid for {days} more days")),
    }
}

/// One line per check (`√`, `!` or `×`, its name, what was found), a failure's fix indented
/// below it, and a summary; with `color`, green, yellow and red marks.
pub fn render_text(checks: &[Check], color: bool) -> String {
    let mut out = String::new();
    for check in checks {
        let (mark, paint) = match check.outcome {
            Outcome::Pass => ("√", "32"),
            Outcome::Warn => ("!", "33"),
            Outcome::Fail => ("×", "31"),
        };
        let mark = if color { format!("\x1b[{paint}m{mark}\x1b[0m") } else { mark.to_owned() };
        let _ = writeln!(out, "{mark} {}: {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "    fix: {fix}");
        }
    }
    let count = |outcome| checks.iter().filter(|check| check.outcome == outcome).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} warnings, {} failed",
        count(Outcome::Pass),
        count(Outcome::Warn),
        count(Outcome::Fail)
    );
    out
}

pub fn render_json(checks: &[Check]) -> String {
    let report = serde_json::json!({ "healthy": !failed(checks), "checks": checks });
    serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
}

/// Reads what the checks need: the CRDs, the Mesh, the release's Deployments, Lease and
/// webhook configuration, and the pods. Anything absent is absent in the snapshot; only a failed
/// read (no access, no cluster) is an error.
pub async fn gather(client: &Client, namespace: &str, release: &str) -> Result<Snapshot, CheckError> {
    let read = |what| move |source| CheckError::Read { what, source };
    let mut snapshot =
        Snapshot { namespace: namespace.to_owned(), release: release.to_owned(), ..Snapshot::default() };

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        if let Some(crd) = crds.get_opt(name).await.map_err(read("CustomResourceDefinitions"))? {
            let established = crd
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            snapshot.crds.insert(name.to_owned(), established);
        }
    }
    if snapshot.crds.contains_key("meshes.braid.dev") {
        let meshes: Api<Mesh> = Api::all(client.clone());
        if let Some(mesh) = meshes.get_opt("default").await.map_err(read("the Mesh"))? {
            snapshot.mesh_exists = true;
            snapshot.mesh = Some(mesh.status.unwrap_or_default());
        }
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let replicas = |deployment: Deployment| {
        let desired = deployment.spec.and_then(|spec| spec.replicas).unwrap_or(1);
        let available = deployment.status.and_then(|status| status.available_replicas).unwrap_or(0);
        Replicas { desired, available }
    };
    let operator = format!("{release}-operator");
    let webhook = format!("{release}-webhook");
    snapshot.operator = deployments.get_opt(&operator).await.map_err(read("Deployments"))?.map(replicas);
    snapshot.webhook = deployments.get_opt(&webhook).await.map_err(read("Deployments"))?.map(replicas);

    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    snapshot.lease = leases.get_opt(&operator).await.map_err(read("Leases"))?.map(|lease| {
        let spec = lease.spec.unwrap_or_default();
        LeaseState {
            holder: spec.holder_identity.filter(|holder| !holder.is_empty()),
            renewed: spec.renew_time.map(|time| time.0),
            duration: SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15))),
        }
    });

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    snapshot.webhook_config =
        configs.get_opt(&webhook).await.map_err(read("MutatingWebhookConfigurations"))?.map(|config| {
            let webhooks = config.webhooks.unwrap_or_default();
            let without_ca = webhooks
                .iter()
                .filter(|w| w.client_config.ca_bundle.as_ref().is_none_or(|ca| ca.0.is_empty()))
                .count();
            (webhooks.len(), without_ca)
        });

    let labelled: Api<Namespace> = Api::all(client.clone());
    let injected_namespaces: Vec<String> = labelled
        .list(&ListParams::default().labels(&format!("{INJECT_LABEL}=enabled")))
        .await
        .map_err(read("Namespaces"))?
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods.list(&ListParams::default()).await.map_err(read("Pods"))? {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(spec) = &pod.spec else { continue };
        let has_proxy = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|container| container.name == PROXY_CONTAINER);
        if has_proxy && running {
            snapshot.meshed_pods += 1;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let opted_out = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(INJECT_LABEL))
            .is_some_and(|value| value == "disabled");
        let finished =
            matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if !has_proxy && !opted_out && !finished && injected_namespaces.contains(&ns) {
            *snapshot.uninjected.entry(ns).or_default() += 1;
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use braid_crds::mesh::{CertificateStatus, IdentityStatus, ProxiesStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn at(seconds_from_now: i64) -> Time {
        Time(Timestamp::from_second(NOW + seconds_from_now).unwrap())
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: at(-60),
            observed_generation: Some(1),
        }
    }

    /// An installation where everything is as it should be.
    fn healthy() -> Snapshot {
        let day = 86_400;
        Snapshot {
            namespace: "braid-system".into(),
            release: "braid".into(),
            crds: CRDS.iter().map(|crd| ((*crd).to_owned(), true)).collect(),
            mesh_exists: true,
            mesh: Some(MeshStatus {
                observed_generation: Some(1),
                conditions: vec![
                    condition("CAReady", "True", "Issued", "the issuer is valid"),
                    condition("WebhookCertificateReady", "True", "Issued", "valid"),
                ],
                webhook_certificate: Some(CertificateStatus {
                    not_after: at(90 * day),
                    renew_at: at(60 * day),
                    ca_not_after: at(3650 * day),
                }),
                identity: Some(IdentityStatus {
                    trust_anchor_not_after: at(3650 * day),
                    issuer_not_after: at(365 * day),
                    issuer_renew_at: Some(at(300 * day)),
                    trust_bundle_roots: 1,
                    external: false,
                }),
                proxies: Some(ProxiesStatus {
                    connected: 4,
                    versions: [("0.1.0".to_owned(), 4)].into_iter().collect(),
                }),
            }),
            operator: Some(Replicas { desired: 2, available: 2 }),
            webhook: Some(Replicas { desired: 2, available: 2 }),
            lease: Some(LeaseState {
                holder: Some("braid-operator-7c9-x2".into()),
                renewed: Some(Timestamp::from_second(NOW - 3).unwrap()),
                duration: SignedDuration::from_secs(15),
            }),
            webhook_config: Some((1, 0)),
            meshed_pods: 4,
            uninjected: BTreeMap::new(),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    #[test]
    fn a_healthy_mesh_passes_every_check() {
        let checks = evaluate(&healthy(), now());
        assert!(checks.iter().all(|check| check.outcome == Outcome::Pass), "{checks:#?}");
        assert!(!failed(&checks));
        insta_like(
            &render_text(&checks, false),
            "√ CRDs installed: 4 established
√ operator running: 2/2 available
√ operator leader: braid-operator-7c9-x2, renewed 3s ago
√ webhook running: 2/2 available
√ webhook registered: 1 webhook(s) with a caBundle
√ Mesh CAReady: Issued
√ Mesh WebhookCertificateReady: Issued
√ trust anchor: valid for 3650 more days
√ issuer certificate: valid for 365 more days, to be renewed at 2027-11-11T08:00:00Z
√ webhook certificate: valid for 90 more days, to be renewed at 2027-03-16T08:00:00Z
√ proxies connected: 4 connected, 4 meshed pods running
√ pods injected: every pod of a namespace labelled for injection has a proxy

12 passed, 0 warnings, 0 failed
",
        );
    }

    #[test]
    fn each_problem_fails_or_warns_with_its_fix() {
        let mut broken = healthy();
        broken.crds.remove("meshpolicies.braid.dev");
        broken.webhook = Some(Replicas { desired: 2, available: 0 });
        broken.lease.as_mut().unwrap().renewed = Some(Timestamp::from_second(NOW - 60).unwrap());
        broken.webhook_config = Some((1, 1));
        let status = broken.mesh.as_mut().unwrap();
        status.conditions[0] =
            condition("CAReady", "False", "IssuerExpired", "the issuer expired; rotate it");
        status.identity.as_mut().unwrap().issuer_not_after = at(-1);
        status.webhook_certificate.as_mut().unwrap().renew_at = at(-3600);
        status.proxies.as_mut().unwrap().connected = 3;
        status.proxies.as_mut().unwrap().versions.insert("0.0.9".into(), 1);
        broken.uninjected.insert("shop".into(), 2);
        let checks = evaluate(&broken, now());
        assert!(failed(&checks));
        let text = render_text(&checks, false);
        for expected in [
            "× CRDs installed: missing: meshpolicies.braid.dev\n    fix: helm install braid",
            "× operator leader: the Lease has holder braid-operator-7c9-x2 and was last renewed 60s ago: no replica leads\n    fix: kubectl -n braid-system logs deployment/braid-operator",
            "× webhook running: 0/2 available\n    fix: kubectl -n braid-system describe deployment/braid-webhook",
            "× webhook registered: 1 webhook(s) of braid-webhook have no caBundle yet",
            "× Mesh CAReady: IssuerExpired: the issuer expired; rotate it\n    fix: kubectl get mesh default -o yaml",
            "× issuer certificate: expired at",
            "! webhook certificate: due for renewal since",
            "× proxies connected: 4 meshed pods run but 3 proxies hold a discovery stream",
            "! proxy versions: more than one proxy version runs (0.0.9: 1, 0.1.0: 4)",
            "! pods injected: pods without a proxy in namespaces labelled for injection: shop (2)\n    fix: kubectl rollout restart deployment -n NAMESPACE",
            "3 passed, 3 warnings, 7 failed",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(json["healthy"], false);
        assert_eq!(json["checks"][0]["outcome"], "fail");
        assert_eq!(json["checks"][0]["name"], "CRDs installed");
    }

    #[test]
    fn nothing_installed_says_what_to_install() {
        let empty =
            Snapshot { namespace: "braid-system".into(), release: "braid".into(), ..Snapshot::default() };
        let checks = evaluate(&empty, now());
        let text = render_text(&checks, false);
        assert!(
            text.contains(
                "× CRDs installed: missing: meshes.braid.dev, meshroutes.braid.dev, meshpolicies.braid.dev, \
                 meshexternalservices.braid.dev"
            ),
            "{text}"
        );
        assert!(
            text.contains("× operator running: no Deployment braid-operator in namespace braid-system"),
            "{text}"
        );
        assert!(text.contains("× Mesh default: there is no Mesh named default"), "{text}");
        assert!(
            !text.contains('√') || text.contains("√ proxies connected: 0 connected, 0 meshed pods"),
            "{text}"
        );
    }

    #[test]
    fn colour_marks_only_with_a_terminal() {
        let checks = evaluate(&healthy(), now());
        assert!(render_text(&checks, true).starts_with("\x1b[32m√\x1b[0m CRDs installed"));
        assert!(!render_text(&checks, false).contains('\x1b'));
    }

    /// The whole output compared line by line, so a difference names its line.
    fn insta_like(actual: &str, expected: &str) {
        for (n, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "line {}", n + 1);
        }
        assert_eq!(actual.lines().count(), expected.lines().count(), "{actual}");
    }
}
