//! Keeps the webhook's certificates and its MutatingWebhookConfiguration current: reads the
//! stored state, runs the pure plan of certs.rs, writes Secrets, the configuration and the Mesh
//! condition, and sleeps until the next renewal or until something it owns changes.
//!
//! Who owns the configuration depends on how Braid was installed ([`ConfigMode`]): run by hand
//! the operator creates all of it; installed with the Helm chart, the chart owns the object and
//! the operator only keeps its caBundle and failure policy, and never creates it, so that
//! `helm uninstall` leaves no configuration behind even while the operator is still stopping.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use braid_crds::{
    Mesh,
    conditions::{self, reasons},
    duration::parse_duration,
    mesh::{CertificateStatus, InjectionSettings},
};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        core::v1::{Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use super::{
    certs::{self, KeyedCert, Rotation as _, Stored},
    config::{self, Endpoint},
};
use crate::{
    certs::{
        secret::{OwnedSecrets, Owner, annotate_time, annotated_time, keyed, text},
        shell::{self, Shell},
    },
    conditions::{Observed, Status},
    metrics::Metrics,
};

pub const CA_SECRET: &str = "braid-webhook-ca";
pub const TLS_SECRET: &str = "braid-webhook-tls";
const ROTATED_AT_ANNOTATION: &str = "braid.dev/ca-rotated-at";
/// Status writers own their own conditions under server-side apply, so each has a manager.
const FIELD_MANAGER: &str = "braid-operator/webhook-certificate";
const CONTROLLER: &str = "webhook-certificate";

/// Who owns the MutatingWebhookConfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigMode {
    /// The operator creates the whole configuration, calling the webhook at this endpoint, and
    /// recreates it when it is deleted (local runs and tests).
    Full(Endpoint),
    /// The Helm chart (or a GitOps tool applying it) creates the configuration; the operator
    /// keeps its caBundle and the Mesh's failure policy, and never creates or deletes it. The
    /// Secrets it writes are owned by the webhook's Service (this name, in the mesh namespace),
    /// so the garbage collector removes them when the chart is uninstalled; until that Service
    /// exists the operator writes nothing.
    CaBundle { service: String },
}

/// Where the webhook lives and how its certificates are managed; from the operator's flags.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub mesh_namespace: String,
    pub config_name: String,
    pub mode: ConfigMode,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub ca_propagation: Duration,
    /// Re-check at least this often, whatever the certificates say.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("Mesh default: spec.injection.{field} {value:?}: {reason}")]
    Settings { field: &'static str, value: String, reason: String },
}

impl WebhookError {
    fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::Kube(_) => "kube",
            WebhookError::Cert(_) => "certificate",
            WebhookError::Settings { .. } => "settings",
        }
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let triggers = triggers(&client, &settings);
    shell::run(Certificates { client, settings, triggers }, metrics, shutdown).await;
}

/// The webhook certificate controller, as the kit's rotation loop runs it.
struct Certificates {
    client: Client,
    settings: WebhookSettings,
    triggers: BoxStream<'static, ()>,
}

impl Shell for Certificates {
    type Error = WebhookError;
    const CONTROLLER: &'static str = CONTROLLER;
    const WHAT: &'static str = "webhook certificate";
    const COALESCE_EVENTS: bool = false;

    fn resync(&self) -> Duration {
        self.settings.resync
    }

    async fn pass(&mut self) -> Result<Option<i64>, WebhookError> {
        reconcile(&self.client, &self.settings).await
    }

    fn metric_label(err: &WebhookError) -> &'static str {
        err.metric_label()
    }

    async fn report_failure(&mut self, err: &WebhookError) {
        report_failure(&self.client, err).await;
    }

    fn triggers(&mut self) -> &mut BoxStream<'static, ()> {
        &mut self.triggers
    }
}

/// Wakes the loop when something it owns or reads changes (a Helm upgrade resetting the
/// caBundle, a deleted Secret, an edited Mesh).
fn triggers(client: &Client, settings: &WebhookSettings) -> BoxStream<'static, ()> {
    fn named<K>(api: Api<K>, name: &str) -> BoxStream<'static, ()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api, config).default_backoff().touched_objects().map(|_| ()).boxed()
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.mesh_namespace);
    let mut streams = vec![
        named(Api::<Mesh>::all(client.clone()), "default"),
        named(Api::<MutatingWebhookConfiguration>::all(client.clone()), &settings.config_name),
        named(secrets.clone(), CA_SECRET),
        named(secrets, TLS_SECRET),
    ];
    if let ConfigMode::CaBundle { service } = &settings.mode {
        streams.push(named(Api::<Service>::namespaced(client.clone(), &settings.mesh_namespace), service));
    }
    futures::stream::select_all(streams).boxed()
}

/// One pass; returns when the plan could next change.
async fn reconcile(client: &Client, settings: &WebhookSettings) -> Result<Option<i64>, WebhookError> {
    let meshes: Api<Mesh> = Api::all(client.clone());
    let mesh = meshes.get_opt("default").await?;
    let injection = mesh.as_ref().map(|m| m.spec.injection.clone()).unwrap_or_default();
    let cert_settings = cert_settings(&injection, settings)?;

    let service = match &settings.mode {
        ConfigMode::Full(_) => None,
        ConfigMode::CaBundle { service } => Some(service.as_str()),
    };
    let owner = match Owner::lookup(client, &settings.mesh_namespace, service).await? {
        Owner::None => None,
        Owner::Service(owner) => Some(owner),
        Owner::Missing => {
            // Not installed yet, or being uninstalled: Secrets written now would outlive it.
            tracing::info!(
                service = %format!("{}/{}", settings.mesh_namespace, service.unwrap_or_default()),
                "the webhook's Service does not exist; waiting for it before writing certificates"
            );
            return Ok(None);
        }
    };

    let secrets = OwnedSecrets::new(client, &settings.mesh_namespace, owner);
    let ca_secret = secrets.get(CA_SECRET).await?;
    let tls_secret = secrets.get(TLS_SECRET).await?;
    let stored = stored_from(ca_secret.as_ref(), tls_secret.as_ref());

    let now = Timestamp::now().as_second();
    let (changes, next) = cert_settings.step(now, &stored)?;
    for change in &changes {
        tracing::info!(?change, "webhook certificate change");
    }

    // Order matters for a rollover: the CA is saved first (its key must never be lost), the
    // bundle reaches the API server next, and only then does the webhook get a new certificate.
    if next.ca != stored.ca
        || next.previous_ca_pem != stored.previous_ca_pem
        || !secrets.owns(ca_secret.as_ref())
    {
        secrets.write(&ca_secret_object(&next, &secrets), ca_secret.as_ref()).await?;
    }
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    let bundle = certs::Settings::bundle(&next);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match &settings.mode {
        ConfigMode::Full(endpoint) => {
            let desired = config::desired(
                &settings.config_name,
                endpoint,
                &bundle,
                injection.failure_policy,
                &settings.mesh_namespace,
            );
            configs.patch(&settings.config_name, &params, &Patch::Apply(&desired)).await?;
        }
        ConfigMode::CaBundle { .. } => {
            if configs.get_metadata_opt(&settings.config_name).await?.is_some() {
                let patch = config::ca_bundle_patch(&settings.config_name, &bundle, injection.failure_policy);
                configs.patch(&settings.config_name, &params, &Patch::Apply(&patch)).await?;
            } else {
                // The chart creates it (last, after the webhook is up); the webhook needs its
                // certificate before that, so the Secrets are still kept.
                tracing::info!(
                    config = %settings.config_name,
                    "the MutatingWebhookConfiguration does not exist; it is the chart's to create, so only the certificates are kept"
                );
            }
        }
    }
    if next.serving != stored.serving
        || tls_bundle(tls_secret.as_ref()) != Some(bundle.as_str())
        || !secrets.owns(tls_secret.as_ref())
    {
        secrets.write(&tls_secret_object(&next, &bundle, &secrets), tls_secret.as_ref()).await?;
    }

    if let Some(mesh) = &mesh {
        report_ready(&meshes, mesh, &next, &cert_settings).await?;
    }
    Ok(cert_settings.next_change(now, &next))
}

fn cert_settings(
    injection: &InjectionSettings,
    settings: &WebhookSettings,
) -> Result<certs::Settings, WebhookError> {
    let duration = |field: &'static str, value: &str| {
        parse_duration(value).map_err(|err| WebhookError::Settings {
            field,
            value: value.to_owned(),
            reason: err.to_string(),
        })
    };
    let cert_lifetime = duration("certificateLifetime", &injection.certificate_lifetime)?;
    let ca_lifetime = duration("caLifetime", &injection.ca_lifetime)?;
    if ca_lifetime < cert_lifetime {
        return Err(WebhookError::Settings {
            field: "caLifetime",
            value: injection.ca_lifetime.clone(),
            reason: format!("shorter than certificateLifetime {}", injection.certificate_lifetime),
        });
    }
    Ok(certs::Settings {
        cert_lifetime,
        ca_lifetime,
        renew_at_percent: u32::try_from(injection.renew_at_percent.clamp(10, 90)).unwrap_or(66),
        ca_propagation: settings.ca_propagation,
        dns_names: settings.dns_names.clone(),
        ip_addresses: settings.ip_addresses.clone(),
    })
}

fn stored_from(ca: Option<&Secret>, tls: Option<&Secret>) -> Stored {
    Stored {
        ca: keyed(ca, "ca.crt", "ca.key"),
        previous_ca_pem: text(ca, "previous-ca.crt"),
        ca_rotated_at: annotated_time(ca, ROTATED_AT_ANNOTATION),
        serving: keyed(tls, "tls.crt", "tls.key"),
    }
}

fn tls_bundle(tls: Option<&Secret>) -> Option<&str> {
    let bytes = tls?.data.as_ref()?.get("ca.crt")?;
    std::str::from_utf8(&bytes.0).ok()
}

fn ca_secret_object(stored: &Stored, secrets: &OwnedSecrets) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(ca) = &stored.ca {
        data.insert("ca.crt".to_owned(), ca.cert_pem.clone());
        data.insert("ca.key".to_owned(), ca.key_pem.clone());
    }
    if let Some(previous) = &stored.previous_ca_pem {
        data.insert("previous-ca.crt".to_owned(), previous.clone());
    }
    let mut object = secrets.object(CA_SECRET, "Opaque", data);
    annotate_time(&mut object, ROTATED_AT_ANNOTATION, stored.ca_rotated_at);
    object
}

/// The Secret the webhook mounts: its certificate and key, and the bundle for reference. It
/// never holds the CA's key.
fn tls_secret_object(stored: &Stored, bundle: &str, secrets: &OwnedSecrets) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(serving) = &stored.serving {
        data.insert("tls.crt".to_owned(), serving.cert_pem.clone());
        data.insert("tls.key".to_owned(), serving.key_pem.clone());
    }
    data.insert("ca.crt".to_owned(), bundle.to_owned());
    secrets.object(TLS_SECRET, "kubernetes.io/tls", data)
}

async fn report_ready(
    meshes: &Api<Mesh>,
    mesh: &Mesh,
    stored: &Stored,
    settings: &certs::Settings,
) -> Result<(), WebhookError> {
    let validity = |pem: Option<&KeyedCert>| pem.and_then(|c| certs::parse(&c.cert_pem)).map(|p| p.validity);
    let (Some(serving), Some(ca)) = (validity(stored.serving.as_ref()), validity(stored.ca.as_ref())) else {
        return Ok(());
    };
    let time = |secs: i64| Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH));
    let renew_at = serving.renew_at(settings.renew_at_percent);
    let certificate = CertificateStatus {
        not_after: time(serving.not_after),
        renew_at: time(renew_at),
        ca_not_after: time(ca.not_after),
    };
    let message = format!(
        "serving certificate valid until {}, renewed at {}; CA valid until {}{}",
        certificate.not_after.0,
        certificate.renew_at.0,
        certificate.ca_not_after.0,
        if stored.previous_ca_pem.is_some() {
            "; the previous CA is still trusted during the rollover"
        } else {
            ""
        }
    );
    let observed = Observed {
        type_: conditions::WEBHOOK_CERTIFICATE_READY,
        status: Status::True,
        reason: reasons::CERTIFICATE_ISSUED,
        message,
    };
    write_condition(meshes, mesh, observed, Some(certificate)).await
}

async fn report_failure(client: &Client, err: &WebhookError) {
    let meshes: Api<Mesh> = Api::all(client.clone());
    let Ok(Some(mesh)) = meshes.get_opt("default").await else { return };
    let observed = Observed {
        type_: conditions::WEBHOOK_CERTIFICATE_READY,
        status: Status::False,
        reason: reasons::CERTIFICATE_FAILED,
        message: err.to_string(),
    };
    let previous = mesh.status.as_ref().and_then(|s| s.webhook_certificate.clone());
    if let Err(write_err) = write_condition(&meshes, &mesh, observed, previous).await {
        tracing::warn!(error = %write_err, "cannot report the failure on Mesh default");
    }
}

async fn write_condition(
    meshes: &Api<Mesh>,
    mesh: &Mesh,
    observed: Observed,
    certificate: Option<CertificateStatus>,
) -> Result<(), WebhookError> {
    let current = mesh.status.as_ref().and_then(|s| s.webhook_certificate.as_ref());
    shell::write_mesh_status(
        meshes,
        mesh,
        FIELD_MANAGER,
        observed,
        "webhookCertificate",
        certificate,
        current,
    )
    .await?;
    Ok(())
}
