//! What the webhook knows about the cluster: namespace labels and the Mesh named default, kept
//! by reflectors so an admission reads them from memory instead of calling the API server.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use braid_crds::mesh::{Mesh, MeshSpec};
use futures::{StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, reflector},
        watcher,
    },
};
use tokio::sync::Notify;

use crate::inject::{ControlPlane, InjectConfig};

/// The name of the one Mesh object.
pub const MESH_NAME: &str = "default";

/// How long an admission waits for a namespace the reflector has not seen yet.
const NAMESPACE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot read the labels of namespace {namespace}: {source}")]
    Kube { namespace: String, source: kube::Error },
    #[error(
        "cannot read the labels of namespace {namespace}: the API server did not answer within {NAMESPACE_LOOKUP_TIMEOUT:?}"
    )]
    Timeout { namespace: String },
}

/// Where namespace labels come from.
// One per process, cloned rarely: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Namespaces {
    /// A reflector of namespace metadata; a namespace it has not seen yet (created a moment ago)
    /// is read from the API server, so a pod in a brand-new meshed namespace is not missed.
    Watched { store: Store<PartialObjectMeta<Namespace>>, api: Api<Namespace> },
    /// Fixed labels by namespace name (tests, `braid-webhook inject`).
    Fixed(Arc<BTreeMap<String, BTreeMap<String, String>>>),
}

impl Namespaces {
    pub async fn labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, LookupError> {
        match self {
            Namespaces::Fixed(map) => Ok(map.get(namespace).cloned().unwrap_or_default()),
            // A pod sent without a namespace (not something the API server does) has no labels;
            // looking up "" would list every namespace instead.
            Namespaces::Watched { .. } if namespace.is_empty() => Ok(BTreeMap::new()),
            Namespaces::Watched { store, api } => {
                if let Some(meta) = store.get(&ObjectRef::new(namespace)) {
                    return Ok(meta.metadata.labels.clone().unwrap_or_default());
                }
                tracing::debug!(
                    namespace,
                    "namespace not in the reflector yet; reading it from the API server"
                );
                match tokio::time::timeout(NAMESPACE_LOOKUP_TIMEOUT, api.get_metadata_opt(namespace)).await {
                    Ok(Ok(meta)) => Ok(meta.and_then(|meta| meta.metadata.labels).unwrap_or_default()),
                    Ok(Err(source)) => Err(LookupError::Kube { namespace: namespace.to_owned(), source }),
                    Err(_) => Err(LookupError::Timeout { namespace: namespace.to_owned() }),
                }
            }
        }
    }
}

/// Where the Mesh settings come from.
#[derive(Clone)]
pub enum MeshSource {
    Watched(Store<Mesh>),
    Fixed(Option<Arc<MeshSpec>>),
}

/// The cluster as the admission handler sees it.
#[derive(Clone)]
pub struct Cluster {
    pub namespaces: Namespaces,
    pub mesh: MeshSource,
    pub proxy_version: String,
    pub control_plane: ControlPlane,
    /// Both reflectors have listed once (or the Mesh CRD is known to be absent).
    pub synced: Arc<AtomicBool>,
}

impl Cluster {
    /// The injection settings now: the Mesh's when there is one, the defaults otherwise.
    pub fn inject_config(&self) -> InjectConfig {
        let mesh = match &self.mesh {
            MeshSource::Watched(store) => store.get(&ObjectRef::new(MESH_NAME)).map(|mesh| mesh.spec.clone()),
            MeshSource::Fixed(spec) => spec.as_deref().cloned(),
        };
        match mesh {
            Some(spec) => InjectConfig::from_mesh(&spec, &self.proxy_version, &self.control_plane),
            None => InjectConfig::defaults(&self.proxy_version, &self.control_plane),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Starts the reflectors on `client`; the returned future drives them and must be polled (it
    /// ends only when both watch streams do, which they do not).
    pub fn watch(
        client: Client,
        proxy_version: String,
        control_plane: ControlPlane,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let namespaces_api = Api::<Namespace>::all(client.clone());
        let (namespace_store, namespace_writer) = reflector::store();
        // Metadata only: labels are all injection reads, and a namespace's spec/status is noise.
        let namespace_stream = reflector(
            namespace_writer,
            watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
                // managedFields are most of a namespace's metadata and nothing injection reads.
                .modify(|namespace| namespace.metadata.managed_fields = None),
        )
        .default_backoff()
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(%err, "namespace watch failed; retrying with backoff");
            }
        });

        let (mesh_store, mesh_writer) = reflector::store();
        let mesh_crd_missing = Arc::new(Notify::new());
        let missing = mesh_crd_missing.clone();
        let warned = AtomicBool::new(false);
        let mesh_stream = reflector(
            mesh_writer,
            watcher(
                Api::<Mesh>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={MESH_NAME}")),
            )
            .modify(|mesh| mesh.metadata.managed_fields = None),
        )
        .default_backoff()
        .map_err(move |err| {
            // Without the CRD there is no Mesh: inject with the defaults, and keep watching so
            // a Mesh created later is picked up.
            if let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &err
                && status.code == 404
            {
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the Mesh CRD is not installed; injecting with the default settings");
                }
                // Stores a permit when no one waits yet: readiness sees it whenever it looks.
                missing.notify_one();
            } else {
                tracing::warn!(%err, "Mesh watch failed; retrying with backoff");
            }
            err
        })
        .for_each(|_| async {});

        let synced = Arc::new(AtomicBool::new(false));
        let cluster = Self {
            namespaces: Namespaces::Watched { store: namespace_store.clone(), api: namespaces_api },
            mesh: MeshSource::Watched(mesh_store.clone()),
            proxy_version,
            control_plane,
            synced: synced.clone(),
        };
        let readiness = async move {
            if namespace_store.wait_until_ready().await.is_err() {
                return;
            }
            tracing::info!("namespaces listed");
            // Either the Mesh list succeeded (with or without a Mesh named default) or the CRD
            // is missing; both settle what this webhook injects.
            tokio::select! {
                _ = mesh_store.wait_until_ready() => tracing::info!("Mesh settings listed"),
                _ = mesh_crd_missing.notified() => {}
            }
            synced.store(true, Ordering::Relaxed);
            tracing::info!("ready");
        };
        let driver = async move {
            tokio::join!(namespace_stream, mesh_stream, readiness);
        };
        (cluster, driver)
    }
}
