//! Keeps the mesh's CA current (only the leading operator runs this): reads the stored roots and
//! issuer, runs the pure plan of ca.rs, writes Secrets braid-trust-anchor and braid-issuer,
//! publishes the trust bundle (trust_bundle.rs) as ConfigMap braid-trust-anchors in the mesh
//! namespace and in every namespace labelled braid.dev/inject=enabled, and reports it all on Mesh
//! default (CAReady and status.identity). The kit's rotation loop (crate::certs::shell) sleeps
//! until the next renewal, propagation or expiry, or until something it reads or owns changes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use braid_api::contract::{INJECT, INJECT_ENABLED, NEEDS_TRUST_BUNDLE, TRUST_CONFIG_MAP};
use braid_crds::{
    Mesh,
    conditions::{self, reasons},
    duration::parse_duration,
    mesh::{IdentitySettings, IdentityStatus},
};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service},
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use super::{
    ANCHOR_SECRET, ISSUER_SECRET,
    ca::{self, Ca, ExternalCa, KeyedCert, Source, Stored},
    trust_bundle,
};
use crate::{
    certs::{
        Rotation as _,
        secret::{self, OwnedSecrets, Owner, annotate_time, annotated_time, keyed, text},
        shell::{self, Shell},
    },
    conditions::{Observed, Status},
    metrics::{IdentityMetrics, Metrics},
};

const PREVIOUS_UNTIL_ANNOTATION: &str = "braid.dev/previous-trusted-until";
/// Status writers own their own conditions under server-side apply, so each has a manager.
const FIELD_MANAGER: &str = "braid-operator/identity-ca";
const CONTROLLER: &str = "identity-ca";

/// Where the CA lives and how it rotates; from the operator's flags.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub mesh_namespace: String,
    /// How long a changed trust bundle is published before an issuer under a new root is used.
    pub propagation: Duration,
    /// Re-check at least this often, whatever the certificates say.
    pub resync: Duration,
    /// A Service of the mesh namespace (the Helm chart's braid-identity) that owns the Secrets
    /// and the mesh namespace's ConfigMap, so the garbage collector removes them when the chart
    /// is uninstalled; until it exists nothing is written. None: nothing is owned (a local run).
    pub owner_service: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaFailure {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

impl CaFailure {
    fn metric_label(&self) -> &'static str {
        match self {
            CaFailure::Kube(_) => "kube",
            CaFailure::Ca(_) => "certificate",
        }
    }
}

/// The bundle last published everywhere, and since when (Unix seconds). In memory only: after a
/// restart the propagation wait starts over, which is the safe direction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    bundle: String,
    since: i64,
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: CaSettings,
    metrics: Arc<Metrics>,
    identity_metrics: Arc<IdentityMetrics>,
    shutdown: CancellationToken,
) {
    let triggers = triggers(&client, &settings, None);
    let controller =
        Controller { client, settings, identity_metrics, published: None, external: None, triggers };
    shell::run(controller, metrics, shutdown).await;
}

/// The CA controller, as the kit's rotation loop runs it.
struct Controller {
    client: Client,
    settings: CaSettings,
    identity_metrics: Arc<IdentityMetrics>,
    published: Option<Published>,
    /// The external CA's Secret the triggers watch, once it is known.
    external: Option<String>,
    triggers: BoxStream<'static, ()>,
}

impl Shell for Controller {
    type Error = CaFailure;
    const CONTROLLER: &'static str = CONTROLLER;
    const WHAT: &'static str = "identity CA";
    const COALESCE_EVENTS: bool = true;

    fn resync(&self) -> Duration {
        self.settings.resync
    }

    async fn pass(&mut self) -> Result<Option<i64>, CaFailure> {
        let result =
            reconcile(&self.client, &self.settings, &self.identity_metrics, &mut self.published).await;
        // Watch the external CA's Secret too, by name (so RBAC can name it), once it is known.
        if let Ok((_, used)) = &result
            && *used != self.external
        {
            self.external.clone_from(used);
            self.triggers = triggers(&self.client, &self.settings, self.external.as_deref());
        }
        result.map(|(next_change, _)| next_change)
    }

    fn metric_label(err: &CaFailure) -> &'static str {
        err.metric_label()
    }

    async fn report_failure(&mut self, err: &CaFailure) {
        let observed = Observed {
            type_: conditions::CA_READY,
            status: Status::False,
            reason: reasons::CA_FAILED,
            message: err.to_string(),
        };
        report(&self.client, observed, None).await;
    }

    fn triggers(&mut self) -> &mut BoxStream<'static, ()> {
        &mut self.triggers
    }
}

/// Wakes the loop when something it reads or owns changes: the Mesh, its Secrets and the external
/// CA's, a labelled namespace, a published ConfigMap.
fn triggers(client: &Client, settings: &CaSettings, external: Option<&str>) -> BoxStream<'static, ()> {
    let mesh = watcher::Config::default().fields("metadata.name=default");
    let labelled = watcher::Config::default().labels(&format!("{INJECT}={INJECT_ENABLED}"));
    let bundles = watcher::Config::default().fields(&format!("metadata.name={TRUST_CONFIG_MAP}"));
    let asking = watcher::Config::default().labels(NEEDS_TRUST_BUNDLE);
    // Metadata only: the loop re-reads what it needs, so events need carry no data.
    fn wake<K>(api: Api<PartialObjectMeta<K>>, config: watcher::Config) -> BoxStream<'static, ()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        watcher(api, config).default_backoff().map(|_| ()).boxed()
    }
    let secrets = Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &settings.mesh_namespace);
    let mut streams = vec![
        wake(Api::<PartialObjectMeta<Mesh>>::all(client.clone()), mesh),
        wake(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), labelled),
        wake(Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()), bundles),
        wake(Api::<PartialObjectMeta<Pod>>::all(client.clone()), asking),
    ];
    for name in [ANCHOR_SECRET, ISSUER_SECRET].into_iter().chain(external) {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
        streams.push(wake(secrets.clone(), by_name));
    }
    if let Some(service) = &settings.owner_service {
        let services =
            Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), &settings.mesh_namespace);
        streams.push(wake(services, watcher::Config::default().fields(&format!("metadata.name={service}"))));
    }
    futures::stream::select_all(streams).boxed()
}

/// Settings or an external CA the operator cannot use: the stored CA keeps serving, and the Mesh
/// says why nothing changes.
struct Problem {
    reason: &'static str,
    message: String,
}

/// One pass; returns when the plan could next change, and the external CA Secret it read.
async fn reconcile(
    client: &Client,
    settings: &CaSettings,
    identity_metrics: &IdentityMetrics,
    published: &mut Option<Published>,
) -> Result<(Option<i64>, Option<String>), CaFailure> {
    let meshes: Api<Mesh> = Api::all(client.clone());
    let mesh = meshes.get_opt("default").await?;
    let identity = mesh.as_ref().map(|m| m.spec.identity.clone()).unwrap_or_default();
    let owner =
        match Owner::lookup(client, &settings.mesh_namespace, settings.owner_service.as_deref()).await? {
            Owner::None => None,
            Owner::Service(owner) => Some(owner),
            Owner::Missing => {
                // Not installed yet, or being uninstalled: what is written now would outlive it.
                tracing::info!(
                    service = %format!(
                        "{}/{}",
                        settings.mesh_namespace,
                        settings.owner_service.as_deref().unwrap_or_default()
                    ),
                    "the identity Service does not exist; waiting for it before writing the CA"
                );
                return Ok((None, identity.external_ca_secret));
            }
        };
    let secrets = OwnedSecrets::new(client, &settings.mesh_namespace, owner);
    let anchor_secret = secrets.get(ANCHOR_SECRET).await?;
    let issuer_secret = secrets.get(ISSUER_SECRET).await?;
    let stored = stored_from(anchor_secret.as_ref(), issuer_secret.as_ref());

    let now = Timestamp::now().as_second();
    let ca_settings = ca_settings(&identity, settings.propagation);
    let source = match &identity.external_ca_secret {
        None => Ok(Source::Generate),
        Some(name) => external_source(secrets.api(), name, now).await?,
    };
    let since = published.as_ref().filter(|p| p.bundle == Ca::bundle(&stored)).map(|p| p.since);
    let (next, problem, plan_settings) = match (&ca_settings, &source) {
        (Ok(ca_settings), Ok(source)) => {
            let ca = Ca { source, settings: ca_settings, published_since: since };
            let (changes, next) = ca.step(now, &stored)?;
            for change in &changes {
                tracing::info!(?change, "identity CA change");
            }
            (next, None, Some((ca_settings, source)))
        }
        (Err(problem), _) | (_, Err(problem)) => {
            tracing::warn!(reason = problem.reason, message = %problem.message, "identity CA: keeping what is stored");
            (stored.clone(), Some(problem), None)
        }
    };

    // Order matters: the roots are saved first (a generated root's key must never be lost), the
    // bundle is published next, and only then does the issuer change.
    if anchor_secret.is_none() || next != stored || !secrets.owns(anchor_secret.as_ref()) {
        secrets
            .write(&anchor_object(&next, &settings.mesh_namespace, secrets.owner()), anchor_secret.as_ref())
            .await?;
    }
    let bundle = Ca::bundle(&next);
    let namespaces = if bundle.is_empty() {
        0
    } else {
        trust_bundle::publish(client, &settings.mesh_namespace, &bundle, secrets.owner()).await?
    };
    if published.as_ref().is_none_or(|p| p.bundle != bundle) {
        *published = Some(Published { bundle: bundle.clone(), since: now });
    }
    if next.issuer.is_some()
        && (issuer_secret.is_none()
            || next.issuer != stored.issuer
            || text(issuer_secret.as_ref(), "ca.crt").as_deref() != Some(bundle.as_str())
            || !secrets.owns(issuer_secret.as_ref()))
    {
        let issuer = issuer_object(&next, &bundle, &settings.mesh_namespace, secrets.owner());
        secrets.write(&issuer, issuer_secret.as_ref()).await?;
    }

    let (observed, status) = observe(now, &next, &source, namespaces, settings.propagation, problem);
    if let Some(status) = &status {
        identity_metrics.trust_anchor_expiry.set(status.trust_anchor_not_after.0.as_second());
        identity_metrics.issuer_expiry.set(status.issuer_not_after.0.as_second());
    }
    if let Some(mesh) = &mesh {
        write_status(&meshes, mesh, observed, status).await?;
    }
    let since = published.as_ref().map(|p| p.since);
    let next_change = plan_settings.and_then(|(ca_settings, source)| {
        Ca { source, settings: ca_settings, published_since: since }.next_change(now, &next)
    });
    Ok((next_change, identity.external_ca_secret))
}

fn ca_settings(identity: &IdentitySettings, propagation: Duration) -> Result<ca::Settings, Problem> {
    let duration = |field: &str, value: &str| {
        parse_duration(value).map_err(|err| Problem {
            reason: reasons::INVALID_SETTINGS,
            message: format!("Mesh default: spec.identity.{field} {value:?}: {err}"),
        })
    };
    let settings = ca::Settings {
        trust_anchor_lifetime: duration("trustAnchorLifetime", &identity.trust_anchor_lifetime)?,
        issuer_lifetime: duration("issuerLifetime", &identity.issuer_lifetime)?,
        workload_lifetime: duration("workloadLifetime", &identity.workload_lifetime)?,
        propagation,
    };
    if settings.issuer_lifetime > settings.trust_anchor_lifetime {
        return Err(Problem {
            reason: reasons::INVALID_SETTINGS,
            message: format!(
                "Mesh default: spec.identity.issuerLifetime {} is longer than trustAnchorLifetime {}",
                identity.issuer_lifetime, identity.trust_anchor_lifetime
            ),
        });
    }
    if settings.issuer_lifetime.is_zero() || settings.workload_lifetime.is_zero() {
        return Err(Problem {
            reason: reasons::INVALID_SETTINGS,
            message: "Mesh default: spec.identity lifetimes must be longer than zero".to_owned(),
        });
    }
    Ok(settings)
}

async fn external_source(
    secrets: &Api<Secret>,
    name: &str,
    now: i64,
) -> Result<Result<Source, Problem>, CaFailure> {
    let invalid = |message: String| Ok(Err(Problem { reason: reasons::EXTERNAL_CA_INVALID, message }));
    let namespace = secrets.namespace().unwrap_or_default().to_owned();
    let Some(secret) = secrets.get_opt(name).await? else {
        return invalid(format!(
            "Secret {namespace}/{name}, named by spec.identity.externalCaSecret, does not exist"
        ));
    };
    let get = |key: &str| text(Some(&secret), key).unwrap_or_default();
    let external = ExternalCa {
        issuer: KeyedCert { cert_pem: get("tls.crt"), key_pem: get("tls.key") },
        roots_pem: get("ca.crt"),
    };
    match ca::check_external(now, &external) {
        Ok(()) => Ok(Ok(Source::External(external))),
        Err(why) => invalid(format!("Secret {namespace}/{name}: {why}")),
    }
}

fn stored_from(anchor: Option<&Secret>, issuer: Option<&Secret>) -> Stored {
    Stored {
        roots_pem: text(anchor, "ca.crt").unwrap_or_default(),
        root_key_pem: text(anchor, "ca.key"),
        previous_pem: text(anchor, "previous.crt").unwrap_or_default(),
        previous_until: annotated_time(anchor, PREVIOUS_UNTIL_ANNOTATION),
        issuer: keyed(issuer, "tls.crt", "tls.key"),
    }
}

/// braid-trust-anchor: the current roots (ca.crt), the generated root's key (ca.key), and the
/// roots still trusted from before a rotation (previous.crt), with when they leave.
fn anchor_object(stored: &Stored, namespace: &str, owner: Option<&OwnerReference>) -> Secret {
    let mut data = BTreeMap::new();
    data.insert("ca.crt".to_owned(), stored.roots_pem.clone());
    if let Some(key) = &stored.root_key_pem {
        data.insert("ca.key".to_owned(), key.clone());
    }
    if !stored.previous_pem.is_empty() {
        data.insert("previous.crt".to_owned(), stored.previous_pem.clone());
    }
    let mut object = secret::object(ANCHOR_SECRET, namespace, "Opaque", data, owner);
    annotate_time(&mut object, PREVIOUS_UNTIL_ANNOTATION, stored.previous_until);
    object
}

/// braid-issuer, in the layout cert-manager writes: tls.crt, tls.key, and the bundle as ca.crt.
/// What the identity endpoint of every replica reads.
fn issuer_object(stored: &Stored, bundle: &str, namespace: &str, owner: Option<&OwnerReference>) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(issuer) = &stored.issuer {
        data.insert("tls.crt".to_owned(), issuer.cert_pem.clone());
        data.insert("tls.key".to_owned(), issuer.key_pem.clone());
    }
    data.insert("ca.crt".to_owned(), bundle.to_owned());
    secret::object(ISSUER_SECRET, namespace, "kubernetes.io/tls", data, owner)
}

/// The CAReady condition and status.identity for what is stored now.
fn observe(
    now: i64,
    stored: &Stored,
    source: &Result<Source, Problem>,
    namespaces: usize,
    propagation: Duration,
    problem: Option<&Problem>,
) -> (Observed, Option<IdentityStatus>) {
    let time = |secs: i64| Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH));
    let roots = ca::certs(&stored.roots_pem).unwrap_or_default();
    let previous = ca::certs(&stored.previous_pem).unwrap_or_default();
    let chain = stored.issuer.as_ref().and_then(|i| ca::certs(&i.cert_pem).ok()).filter(|c| !c.is_empty());
    let external = match source {
        Ok(source) => matches!(source, Source::External(_)),
        Err(_) => stored.root_key_pem.is_none(),
    };
    let Some(chain) = chain else {
        let message = problem.map_or_else(|| "no issuer yet".to_owned(), |p| p.message.clone());
        let reason = reasons::CA_FAILED;
        return (Observed { type_: conditions::CA_READY, status: Status::False, reason, message }, None);
    };
    let issuer = chain[0].validity;
    // The root the issuer chains to; it may already be a previous one during a rotation.
    let anchor = roots
        .iter()
        .chain(&previous)
        .find(|root| ca::chains_to(&chain, std::slice::from_ref(root)))
        .or(roots.first())
        .map(|root| root.validity);
    let status = IdentityStatus {
        trust_anchor_not_after: time(anchor.map_or(issuer.not_after, |a| a.not_after)),
        issuer_not_after: time(issuer.not_after),
        issuer_renew_at: (!external).then(|| time(issuer.renew_at(ca::RENEW_AT_PERCENT))),
        trust_bundle_roots: i32::try_from(roots.len() + previous.len()).unwrap_or(i32::MAX),
        external,
    };
    let describe = |t: &Time| t.0.to_string();
    let mut message = format!(
        "issuer valid until {}{}; trust anchor valid until {}; trust bundle of {} root(s) published in {namespaces} namespace(s)",
        describe(&status.issuer_not_after),
        status.issuer_renew_at.as_ref().map(|t| format!(", renewed at {}", describe(t))).unwrap_or_default(),
        describe(&status.trust_anchor_not_after),
        status.trust_bundle_roots,
    );
    let under_current = ca::chains_to(&chain, &roots);
    let rotating = !previous.is_empty() || !under_current;
    if !under_current {
        message.push_str(&format!(
            "; trust-anchor rotation: the issuer moves to the new root once the bundle has been published for {}s",
            propagation.as_secs()
        ));
    } else if let Some(until) = stored.previous_until.filter(|_| !previous.is_empty()) {
        message.push_str(&format!(
            "; trust-anchor rotation: the previous root stays trusted until {}",
            describe(&time(until))
        ));
    }
    let observed = match problem {
        Some(problem) => Observed {
            type_: conditions::CA_READY,
            status: Status::False,
            reason: problem.reason,
            message: format!("{}; still serving the stored CA: {message}", problem.message),
        },
        None if now >= issuer.not_after => Observed {
            type_: conditions::CA_READY,
            status: Status::False,
            reason: reasons::CA_FAILED,
            message: format!("the issuer expired; {message}"),
        },
        None => Observed {
            type_: conditions::CA_READY,
            status: Status::True,
            reason: if rotating { reasons::TRUST_ANCHOR_ROTATING } else { reasons::ISSUER_READY },
            message,
        },
    };
    (observed, Some(status))
}

async fn report(client: &Client, observed: Observed, status: Option<IdentityStatus>) {
    let meshes: Api<Mesh> = Api::all(client.clone());
    let Ok(Some(mesh)) = meshes.get_opt("default").await else { return };
    let status = status.or_else(|| mesh.status.as_ref().and_then(|s| s.identity.clone()));
    if let Err(err) = write_status(&meshes, &mesh, observed, status).await {
        tracing::warn!(error = %err, "cannot report on Mesh default");
    }
}

async fn write_status(
    meshes: &Api<Mesh>,
    mesh: &Mesh,
    observed: Observed,
    identity: Option<IdentityStatus>,
) -> Result<(), CaFailure> {
    let current = mesh.status.as_ref().and_then(|s| s.identity.as_ref());
    shell::write_mesh_status(meshes, mesh, FIELD_MANAGER, observed, "identity", identity, current).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::secret::owned_by;

    fn stored(now: i64) -> Stored {
        let settings = ca::Settings {
            trust_anchor_lifetime: Duration::from_secs(365 * 86400),
            issuer_lifetime: Duration::from_secs(30 * 86400),
            workload_lifetime: Duration::from_secs(86400),
            propagation: Duration::from_secs(60),
        };
        let changes = ca::plan(now, &Stored::default(), &Source::Generate, &settings, None);
        ca::apply(now, &Stored::default(), &changes, &Source::Generate, &settings).unwrap()
    }

    fn settings() -> CaSettings {
        CaSettings {
            mesh_namespace: "braid-system".to_owned(),
            propagation: Duration::from_secs(60),
            resync: Duration::from_secs(300),
            owner_service: None,
        }
    }

    #[test]
    fn secrets_round_trip() {
        let now = 1_800_000_000;
        let mut stored = stored(now);
        stored.previous_pem = stored.roots_pem.clone();
        stored.previous_until = Some(now + 3600);
        let bundle = ca::bundle(&stored);
        let anchor = anchor_object(&stored, &settings().mesh_namespace, None);
        let issuer = issuer_object(&stored, &bundle, &settings().mesh_namespace, None);
        assert_eq!(issuer.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(stored_from(Some(&anchor), Some(&issuer)), stored);
        assert_eq!(text(Some(&issuer), "ca.crt").as_deref(), Some(bundle.as_str()));
        // The Secret the endpoints read never holds the root's key.
        assert!(!issuer.data.as_ref().unwrap().contains_key("ca.key"));

        // Owned by the chart's Service (what "owned" means is the kit's, tested there).
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "braid-identity".into(),
            uid: "uid-1".into(),
            ..OwnerReference::default()
        };
        let owned = issuer_object(&stored, &bundle, &settings().mesh_namespace, Some(&owner));
        assert!(owned_by(Some(&owned), Some(&owner)));
        assert_eq!(owned.metadata.namespace.as_deref(), Some("braid-system"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let mut identity = IdentitySettings::default();
        assert!(ca_settings(&identity, Duration::from_secs(60)).is_ok());
        identity.issuer_lifetime = "9000h".to_owned();
        let problem = ca_settings(&identity, Duration::from_secs(60)).err().unwrap();
        assert_eq!(problem.reason, reasons::INVALID_SETTINGS);
        assert!(problem.message.contains("longer than trustAnchorLifetime"), "{}", problem.message);
        identity.issuer_lifetime = "10x".to_owned();
        let problem = ca_settings(&identity, Duration::from_secs(60)).err().unwrap();
        assert!(problem.message.contains("spec.identity.issuerLifetime \"10x\""), "{}", problem.message);
    }

    #[test]
    fn the_condition_says_ready_rotating_or_why_not() {
        let now = 1_800_000_000;
        let stored = stored(now);
        let (observed, status) =
            observe(now, &stored, &Ok(Source::Generate), 3, Duration::from_secs(60), None);
        assert_eq!((observed.status, observed.reason), (Status::True, reasons::ISSUER_READY));
        assert!(observed.message.contains("published in 3 namespace(s)"), "{}", observed.message);
        let status = status.unwrap();
        assert_eq!(status.trust_bundle_roots, 1);
        assert!(!status.external);
        assert_eq!(status.issuer_not_after.0.as_second(), now + 30 * 86400);
        assert_eq!(status.trust_anchor_not_after.0.as_second(), now + 365 * 86400);

        let mut rotating = stored.clone();
        rotating.previous_pem = rotating.roots_pem.clone();
        rotating.roots_pem = self::stored(now).roots_pem;
        let (observed, status) =
            observe(now, &rotating, &Ok(Source::Generate), 3, Duration::from_secs(60), None);
        assert_eq!(observed.reason, reasons::TRUST_ANCHOR_ROTATING);
        assert!(observed.message.contains("moves to the new root"), "{}", observed.message);
        assert_eq!(status.unwrap().trust_bundle_roots, 2);

        let problem = Problem { reason: reasons::EXTERNAL_CA_INVALID, message: "Secret x: nope".to_owned() };
        let (observed, _) =
            observe(now, &stored, &Ok(Source::Generate), 3, Duration::from_secs(60), Some(&problem));
        assert_eq!((observed.status, observed.reason), (Status::False, reasons::EXTERNAL_CA_INVALID));
        assert!(
            observed.message.starts_with("Secret x: nope; still serving the stored CA"),
            "{}",
            observed.message
        );

        let (observed, status) =
            observe(now, &Stored::default(), &Ok(Source::Generate), 0, Duration::from_secs(60), None);
        assert_eq!((observed.status, observed.message.as_str()), (Status::False, "no issuer yet"));
        assert!(status.is_none());
    }
}
