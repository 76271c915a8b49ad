//! The operator's life: serve probes and the identity endpoint from the start, wait to lead, run
//! the controllers and discovery while leading, and stop them all before the Lease is released.
//! The binary builds [`Settings`] from its flags and calls [`run`].

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    backoff::FailureBackoff,
    discovery::{self, stream::Discovery},
    identity,
    leader::{Elector, Held, LeaseSettings},
    meshroute::controller::{self, Context, Scope},
    metrics::{DiscoveryMetrics, IdentityMetrics, Metrics},
    webhook::{self, controller::WebhookSettings},
};

/// Everything the operator runs, as its flags chose it.
pub struct Settings {
    pub admin_addr: SocketAddr,
    pub scope: Scope,
    pub mesh_namespace: String,
    pub cluster_domain: String,
    /// With a Lease, the controllers run only while this replica holds it.
    pub lease: Option<LeaseSettings>,
    pub webhook: Option<WebhookSettings>,
    pub identity: Option<IdentitySettings>,
    /// Needs `identity`: discovery authenticates proxies with the mesh issuer.
    pub discovery: Option<DiscoverySettings>,
}

pub struct IdentitySettings {
    pub addr: SocketAddr,
    pub server: identity::server::ServerSettings,
    pub propagation: Duration,
    pub owner_service: Option<String>,
}

pub struct DiscoverySettings {
    pub addr: SocketAddr,
    pub server: discovery::server::ServerSettings,
    /// The selector-less Service whose EndpointSlice points at the leader, with this replica's
    /// pod name and IP.
    pub leader_endpoint: Option<LeaderEndpoint>,
}

pub struct LeaderEndpoint {
    pub service: String,
    pub pod_name: String,
    pub pod_ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot build a Kubernetes client ({0}): set KUBECONFIG or run inside a cluster")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Crd(#[from] crate::Error),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("discovery needs the identity endpoint: enable both")]
    DiscoveryWithoutIdentity,
    #[error("the {0} task failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
    #[error("the identity endpoint failed: {0}")]
    IdentityEndpoint(#[from] rustls::Error),
    /// Exiting rather than standing by again is what client-go does too: the Deployment
    /// restarts the process, which starts over as a standby with fresh state.
    #[error("lost the leader Lease: {0}")]
    LostLease(String),
}

/// A standby looks at the Lease this often, and a failed renewal is retried this soon.
pub const LEADER_RETRY_PERIOD: Duration = Duration::from_secs(2);

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { what, addr, source })
}

async fn joined<T>(what: &'static str, task: tokio::task::JoinHandle<T>) -> Result<T, AppError> {
    task.await.map_err(|err| AppError::Task(what, err))
}

/// Runs until SIGTERM (or `shutdown`), or until the Lease is lost.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), AppError> {
    if settings.discovery.is_some() && settings.identity.is_none() {
        return Err(AppError::DiscoveryWithoutIdentity);
    }
    let client = kube::Client::try_default().await.map_err(AppError::Client)?;
    controller::check_crd(&client, &settings.scope).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let identity_metrics =
        settings.identity.as_ref().map(|_| Arc::new(IdentityMetrics::register(&mut registry)));
    let discovery_metrics =
        settings.discovery.as_ref().map(|_| Arc::new(DiscoveryMetrics::register(&mut registry)));
    let admin_state = Arc::new(AdminState { registry, ready: Default::default() });
    let admin_listener = bind("admin", settings.admin_addr).await?;

    // The admin server runs from the start: a standby answers probes while it waits to lead.
    let admin = tokio::spawn(admin::serve(admin_listener, admin_state.clone(), shutdown.clone()));
    // The identity endpoint too: it only reads the issuer, so every replica serves it.
    let (authorities, authority_changes) = tokio::sync::watch::channel(None);
    let identity_server = match (&settings.identity, &identity_metrics) {
        (Some(identity), Some(identity_metrics)) => {
            let listener = bind("identity endpoint", identity.addr).await?;
            Some(tokio::spawn(identity::server::run(
                client.clone(),
                listener,
                identity.server.clone(),
                identity_metrics.clone(),
                authorities,
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    tracing::info!(scope = ?settings.scope, version = env!("CARGO_PKG_VERSION"), "braid-operator starting");

    // What the leader runs stops on SIGTERM, and also when it loses the Lease.
    let stop = shutdown.child_token();
    let mut election = None;
    if let Some(lease) = settings.lease.clone() {
        let mut elector = Elector::new(client.clone(), lease);
        // A standby is ready: it is healthy and can take over, and a Deployment's rollout must
        // not wait for it to lead.
        let standby_state = admin_state.clone();
        let leading =
            elector.acquire(&shutdown, |_| standby_state.ready.store(true, Ordering::Relaxed)).await;
        if !leading {
            return stop_admin(admin).await;
        }
        // Leading but not synced yet: not ready until the controllers have listed.
        admin_state.ready.store(false, Ordering::Relaxed);
        let holder_stop = stop.clone();
        election = Some(tokio::spawn(async move {
            let held = elector.hold(&holder_stop).await;
            if let Held::Lost(reason) = &held {
                tracing::error!(%reason, "lost the leader Lease; stopping the controllers");
                holder_stop.cancel();
            }
            (elector, held)
        }));
    }
    metrics.leader.set(1);

    let discovery = match (settings.discovery, discovery_metrics) {
        (Some(discovery), Some(discovery_metrics)) => Some(
            start_discovery(
                &client,
                discovery,
                (&settings.mesh_namespace, &settings.cluster_domain),
                discovery_metrics,
                authority_changes,
                &stop,
            )
            .await?,
        ),
        _ => None,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        backoff: FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        discovery: discovery.clone(),
        recorder: Some(kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: crate::FIELD_MANAGER.to_owned(),
                instance: std::env::var("BRAID_POD_NAME").ok(),
            },
        )),
        baselines: Default::default(),
    });
    let webhook_task = settings.webhook.map(|webhook| {
        tokio::spawn(webhook::controller::run(ctx.client.clone(), webhook, ctx.metrics.clone(), stop.clone()))
    });
    let ca_task = match (settings.identity, identity_metrics) {
        (Some(identity), Some(identity_metrics)) => {
            let ca = identity::controller::CaSettings {
                mesh_namespace: settings.mesh_namespace.clone(),
                propagation: identity.propagation,
                resync: Duration::from_secs(300),
                owner_service: identity.owner_service,
            };
            Some(tokio::spawn(identity::controller::run(
                ctx.client.clone(),
                ca,
                ctx.metrics.clone(),
                identity_metrics,
                stop.clone(),
            )))
        }
        _ => None,
    };
    let ready_state = admin_state.clone();
    let ready_stop = stop.clone();
    controller::run(ctx.clone(), settings.scope, stop.clone().cancelled_owned(), move || {
        // Ready once the MeshRoutes have listed and, with discovery, once its index is whole.
        tokio::spawn(async move {
            if let Some(discovery) = discovery {
                tokio::select! {
                    () = discovery.synced() => {}
                    () = ready_stop.cancelled() => return,
                }
            }
            ready_state.ready.store(true, Ordering::Relaxed);
            tracing::info!("MeshRoutes listed; ready");
        });
    })
    .await;
    stop.cancel();
    if let Some(task) = webhook_task {
        joined("webhook certificate", task).await?;
    }
    if let Some(task) = ca_task {
        joined("identity CA", task).await?;
    }
    ctx.metrics.leader.set(0);

    // Released only after the controllers have stopped, so two leaders never act at once.
    let lost = match election {
        None => None,
        Some(task) => match joined("leader election", task).await? {
            (mut elector, Held::Stopped) => {
                elector.release().await;
                None
            }
            (_, Held::Lost(reason)) => Some(reason),
        },
    };
    shutdown.cancel();
    if let Some(task) = identity_server {
        joined("identity endpoint", task).await??;
    }
    stop_admin(admin).await?;
    match lost {
        Some(reason) => Err(AppError::LostLease(reason)),
        None => Ok(()),
    }
}

/// Starts the watches, the Mesh status writer and the server; the server answers once every
/// watch has listed (see `discovery::server::run`).
async fn start_discovery(
    client: &kube::Client,
    settings: DiscoverySettings,
    (mesh_namespace, cluster_domain): (&str, &str),
    metrics: Arc<DiscoveryMetrics>,
    authorities: tokio::sync::watch::Receiver<Option<Arc<identity::authority::Authority>>>,
    stop: &CancellationToken,
) -> Result<Arc<Discovery>, AppError> {
    let listener = bind("discovery endpoint", settings.addr).await?;
    if let Some(endpoint) = settings.leader_endpoint {
        tokio::spawn(discovery::endpoint::keep_pointing_at_self(
            client.clone(),
            mesh_namespace.to_owned(),
            endpoint.service,
            endpoint.pod_name,
            endpoint.pod_ip,
            settings.addr.port(),
            stop.clone(),
        ));
    }
    let index = discovery::index::Index::new(&braid_crds::MeshSpec::default().trust_domain, cluster_domain)
        .with_mesh_namespace(mesh_namespace);
    let state = Discovery::with_metrics(index, metrics);
    tokio::spawn(discovery::watch::run(client.clone(), state.clone(), stop.clone()));
    tokio::spawn(discovery::mesh_status::run(client.clone(), state.clone(), stop.clone()));
    tokio::spawn(discovery::policy_status::run(client.clone(), state.clone(), stop.clone()));
    tokio::spawn(crate::gateway::watch::run(client.clone(), state.clone(), stop.clone()));
    tokio::spawn(discovery::server::run(state.clone(), listener, settings.server, authorities, stop.clone()));
    Ok(state)
}

async fn stop_admin(admin: tokio::task::JoinHandle<()>) -> Result<(), AppError> {
    joined("admin server", admin).await?;
    tracing::info!("braid-operator stopped");
    Ok(())
}
