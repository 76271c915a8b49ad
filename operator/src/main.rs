//! braid-operator: flags and wiring; the logic lives in the library.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use braid_operator::{
    admin::{self, AdminState},
    backoff::FailureBackoff,
    discovery, identity,
    leader::{self, Elector, Held, LeaseSettings},
    meshroute::controller::{self, Context, Scope},
    metrics::{DiscoveryMetrics, IdentityMetrics, Metrics},
    webhook::{
        self,
        config::Endpoint,
        controller::{ConfigMode, WebhookSettings},
    },
};
use braid_runtime::LogFormat;
use clap::{Parser, ValueEnum};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Reconciles the Braid mesh API (MeshRoute, MeshPolicy, Mesh) and reports status.
/// Connects with the in-cluster config, or KUBECONFIG / ~/.kube/config outside a cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "BRAID_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,

    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "BRAID_WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "BRAID_LOG", default_value = "info")]
    log: String,

    /// Log line format.
    #[arg(long, env = "BRAID_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,

    /// Namespace the mesh's control plane runs in; its Secrets live there.
    #[arg(long, env = "BRAID_MESH_NAMESPACE", default_value = "braid-system")]
    mesh_namespace: String,

    /// Do not manage the admission webhook's certificates and configuration.
    #[arg(long, env = "BRAID_SKIP_WEBHOOK")]
    skip_webhook: bool,

    /// Name of the MutatingWebhookConfiguration the operator keeps.
    #[arg(long, default_value = "braid-webhook")]
    webhook_config_name: String,

    /// Who owns the MutatingWebhookConfiguration: `full`, the operator creates all of it (and
    /// recreates it if deleted); `ca-bundle`, the Helm chart does, and the operator only keeps its
    /// caBundle and failure policy, never creates it, and writes the webhook's Secrets only while
    /// the webhook's Service exists (they are owned by it, so uninstalling removes them).
    #[arg(long, value_enum, default_value = "full")]
    webhook_config_mode: WebhookConfigMode,

    /// Name of the webhook's Service in the mesh namespace.
    #[arg(long, default_value = "braid-webhook")]
    webhook_service: String,

    /// Call the webhook at this https URL instead of its Service (a webhook outside the cluster).
    #[arg(long, env = "BRAID_WEBHOOK_URL")]
    webhook_url: Option<String>,

    /// IP addresses the webhook's certificate names, besides its Service's DNS names.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    webhook_ip_sans: Vec<std::net::IpAddr>,

    /// How long a new webhook CA is trusted before it signs the serving certificate.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    webhook_ca_propagation: Duration,

    /// Run the mesh's certificate authority (docs/identity.md): the leader keeps the trust anchor
    /// and issuer Secrets and publishes the trust bundle; every replica serves POST /v1/certify.
    #[arg(long, env = "BRAID_IDENTITY")]
    identity: bool,

    /// Address of the identity endpoint (HTTPS).
    #[arg(long, env = "BRAID_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    identity_addr: SocketAddr,

    /// Name of the identity endpoint's Service in the mesh namespace; its certificate names
    /// SERVICE.MESH_NAMESPACE.svc (and .svc.cluster.local).
    #[arg(long, default_value = "braid-identity")]
    identity_service: String,

    /// More DNS names for the identity endpoint's certificate.
    #[arg(long, value_delimiter = ',')]
    identity_dns_sans: Vec<String>,

    /// IP addresses for the identity endpoint's certificate (127.0.0.1 for a local run).
    #[arg(long, value_delimiter = ',')]
    identity_ip_sans: Vec<std::net::IpAddr>,

    /// How long a changed trust bundle is published before an issuer signed by a new trust
    /// anchor is used: the kubelet takes up to about a minute to update a mounted ConfigMap.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    identity_propagation: Duration,

    /// Have this Service of the mesh namespace (the Helm chart's identity Service) own the CA's
    /// Secrets and the mesh namespace's trust-bundle ConfigMap, so uninstalling removes them;
    /// the CA writes nothing until it exists. Without it nothing is owned.
    #[arg(long)]
    identity_owner_service: Option<String>,

    /// Serve discovery (docs/discovery.md): stream routes, endpoints and policies to the proxies
    /// over mTLS, and count their acks in MeshRoute and Mesh status. Needs --identity. The
    /// leader serves it, so that one process counts every proxy.
    #[arg(long, env = "BRAID_DISCOVERY", requires = "identity")]
    discovery: bool,

    /// Address of the discovery endpoint (HTTP/2, mTLS).
    #[arg(long, env = "BRAID_DISCOVERY_ADDR", default_value = "0.0.0.0:8086")]
    discovery_addr: SocketAddr,

    /// Name of the discovery endpoint's Service in the mesh namespace; its certificate names
    /// SERVICE.MESH_NAMESPACE.svc (and .svc.CLUSTER_DOMAIN).
    #[arg(long, default_value = "braid-discovery")]
    discovery_service: String,

    /// More DNS names for the discovery endpoint's certificate.
    #[arg(long, value_delimiter = ',')]
    discovery_dns_sans: Vec<String>,

    /// IP addresses for the discovery endpoint's certificate (127.0.0.1 for a local run).
    #[arg(long, value_delimiter = ',')]
    discovery_ip_sans: Vec<std::net::IpAddr>,

    /// Point the discovery Service (a Service without a selector) at this replica while it
    /// leads, by writing its EndpointSlice with BRAID_POD_IP.
    #[arg(long, requires = "discovery")]
    discovery_leader_endpoint: bool,

    /// This replica's pod IP (the downward API), for --discovery-leader-endpoint.
    #[arg(long, env = "BRAID_POD_IP")]
    pod_ip: Option<String>,

    /// The cluster's DNS domain: Services are NAME.NAMESPACE.svc.CLUSTER_DOMAIN.
    #[arg(long, env = "BRAID_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,

    /// Run the controllers only while holding a Lease, so that of several replicas one leads and
    /// the others stand by. Off for a single operator run by hand.
    #[arg(long, env = "BRAID_LEADER_ELECT")]
    leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(long, default_value = "braid-operator")]
    leader_election_lease: String,

    /// Namespace of the leader Lease (default: --mesh-namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,

    /// This replica's name in the Lease (default: host name and process id).
    #[arg(long, env = "BRAID_POD_NAME")]
    leader_election_identity: Option<String>,

    /// How long a standby waits after the leader's last renewal before it takes over.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    leader_lease_duration: Duration,

    /// How often the leader renews the Lease (at most a third of the lease duration).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    leader_renew_period: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WebhookConfigMode {
    Full,
    CaBundle,
}

/// A standby looks at the Lease this often, and a failed renewal is retried this soon.
const LEADER_RETRY_PERIOD: Duration = Duration::from_secs(2);

fn parse_duration(text: &str) -> Result<Duration, String> {
    braid_crds::duration::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    braid_runtime::init_logging(&args.log, args.log_format).context("invalid --log filter")?;
    let lease_settings = args.leader_elect.then(|| lease_settings(&args)).transpose()?;
    let webhook_settings = (!args.skip_webhook).then(|| webhook_settings(&args)).transpose()?;

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client: set KUBECONFIG or run inside a cluster")?;
    let scope = args.namespace.clone().map_or(Scope::AllNamespaces, Scope::Namespace);
    controller::check_crd(&client, &scope).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let identity_metrics = args.identity.then(|| Arc::new(IdentityMetrics::register(&mut registry)));
    let discovery_metrics = args.discovery.then(|| Arc::new(DiscoveryMetrics::register(&mut registry)));
    let admin_state = Arc::new(AdminState { registry, ready: Default::default() });
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));
    // The admin server runs from the start: a standby answers probes while it waits to lead.
    let admin = tokio::spawn(admin::serve(listener, admin_state.clone(), shutdown.clone()));
    // The identity endpoint too: it only reads the issuer, so every replica serves it.
    let (authorities, authority_changes) = tokio::sync::watch::channel(None);
    let identity_server = match &identity_metrics {
        Some(identity_metrics) => {
            let listener = tokio::net::TcpListener::bind(args.identity_addr)
                .await
                .with_context(|| format!("cannot listen on --identity-addr {}", args.identity_addr))?;
            Some(tokio::spawn(identity::server::run(
                client.clone(),
                listener,
                identity_server_settings(&args),
                identity_metrics.clone(),
                authorities,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(scope = ?scope, version = env!("CARGO_PKG_VERSION"), "braid-operator starting");

    // What the leader runs stops on SIGTERM, and also when it loses the Lease.
    let stop = shutdown.child_token();
    let mut election = None;
    if let Some(settings) = lease_settings {
        let mut elector = Elector::new(client.clone(), settings);
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

    let discovery = if let Some(discovery_metrics) = discovery_metrics {
        let listener = tokio::net::TcpListener::bind(args.discovery_addr)
            .await
            .with_context(|| format!("cannot listen on --discovery-addr {}", args.discovery_addr))?;
        if args.discovery_leader_endpoint {
            let (Some(pod_name), Some(pod_ip)) = (args.leader_election_identity.clone(), args.pod_ip.clone())
            else {
                anyhow::bail!(
                    "--discovery-leader-endpoint needs BRAID_POD_NAME and BRAID_POD_IP (the downward API)"
                );
            };
            tokio::spawn(discovery::endpoint::keep_pointing_at_self(
                client.clone(),
                args.mesh_namespace.clone(),
                args.discovery_service.clone(),
                pod_name,
                pod_ip,
                args.discovery_addr.port(),
                stop.clone(),
            ));
        }
        let index =
            discovery::index::Index::new(&braid_crds::MeshSpec::default().trust_domain, &args.cluster_domain);
        let state = discovery::stream::Discovery::with_metrics(index, discovery_metrics);
        tokio::spawn(discovery::watch::run(client.clone(), state.clone(), stop.clone(), || {}));
        tokio::spawn(discovery::mesh_status::run(client.clone(), state.clone(), stop.clone()));
        tokio::spawn(discovery::server::run(
            state.clone(),
            listener,
            discovery_server_settings(&args),
            authority_changes,
            stop.clone(),
        ));
        Some(state)
    } else {
        None
    };
    let ctx = Arc::new(Context {
        client,
        metrics,
        backoff: FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        discovery,
    });
    let webhook_task = webhook_settings.map(|settings| {
        tokio::spawn(webhook::controller::run(
            ctx.client.clone(),
            settings,
            ctx.metrics.clone(),
            stop.clone(),
        ))
    });
    let ca_task = identity_metrics.map(|identity_metrics| {
        let settings = identity::controller::CaSettings {
            mesh_namespace: args.mesh_namespace.clone(),
            propagation: args.identity_propagation,
            resync: Duration::from_secs(300),
            owner_service: args.identity_owner_service.clone(),
        };
        tokio::spawn(identity::controller::run(
            ctx.client.clone(),
            settings,
            ctx.metrics.clone(),
            identity_metrics,
            stop.clone(),
        ))
    });
    let ready_state = admin_state.clone();
    controller::run(ctx.clone(), scope, stop.clone().cancelled_owned(), move || {
        ready_state.ready.store(true, Ordering::Relaxed);
        tracing::info!("MeshRoutes listed; ready");
    })
    .await;
    stop.cancel();
    if let Some(task) = webhook_task {
        task.await.context("webhook certificate task failed")?;
    }
    if let Some(task) = ca_task {
        task.await.context("identity CA task failed")?;
    }
    ctx.metrics.leader.set(0);

    // Released only after the controllers have stopped, so two leaders never act at once.
    let lost = match election {
        None => None,
        Some(task) => match task.await.context("leader election task failed")? {
            (mut elector, Held::Stopped) => {
                elector.release().await;
                None
            }
            (_, Held::Lost(reason)) => Some(reason),
        },
    };
    shutdown.cancel();
    if let Some(task) = identity_server {
        task.await.context("identity endpoint task failed")?.context("identity endpoint failed")?;
    }
    stop_admin(admin).await?;
    if let Some(reason) = lost {
        // Exiting (rather than standing by again) is what client-go does too: the Deployment
        // restarts the process, which starts over as a standby with fresh state.
        anyhow::bail!("lost the leader Lease: {reason}");
    }
    Ok(())
}

async fn stop_admin(admin: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    admin.await.context("admin server task failed")?;
    tracing::info!("braid-operator stopped");
    Ok(())
}

fn lease_settings(args: &Args) -> anyhow::Result<LeaseSettings> {
    let settings = LeaseSettings {
        namespace: args.leader_election_namespace.clone().unwrap_or_else(|| args.mesh_namespace.clone()),
        name: args.leader_election_lease.clone(),
        identity: args.leader_election_identity.clone().unwrap_or_else(leader::default_identity),
        lease_duration: args.leader_lease_duration,
        renew_period: args.leader_renew_period,
        retry_period: LEADER_RETRY_PERIOD.min(args.leader_renew_period / 2),
    };
    settings.validate().context("invalid leader election flags")?;
    Ok(settings)
}

fn identity_server_settings(args: &Args) -> identity::server::ServerSettings {
    let service = format!("{}.{}.svc", args.identity_service, args.mesh_namespace);
    let mut dns_names = vec![service.clone(), format!("{service}.cluster.local")];
    dns_names.extend(args.identity_dns_sans.iter().cloned());
    identity::server::ServerSettings {
        mesh_namespace: args.mesh_namespace.clone(),
        dns_names,
        ip_addresses: args.identity_ip_sans.clone(),
    }
}

fn discovery_server_settings(args: &Args) -> discovery::server::ServerSettings {
    let service = format!("{}.{}.svc", args.discovery_service, args.mesh_namespace);
    let mut dns_names = vec![service.clone(), format!("{service}.{}", args.cluster_domain)];
    dns_names.extend(args.discovery_dns_sans.iter().cloned());
    discovery::server::ServerSettings { dns_names, ip_addresses: args.discovery_ip_sans.clone() }
}

fn webhook_settings(args: &Args) -> anyhow::Result<WebhookSettings> {
    let endpoint = match &args.webhook_url {
        Some(url) if url.starts_with("https://") => Endpoint::Url(url.clone()),
        Some(url) => anyhow::bail!("--webhook-url {url:?}: the API server calls webhooks over https only"),
        None => Endpoint::Service {
            namespace: args.mesh_namespace.clone(),
            name: args.webhook_service.clone(),
            port: 443,
        },
    };
    let mode = match args.webhook_config_mode {
        WebhookConfigMode::Full => ConfigMode::Full(endpoint),
        WebhookConfigMode::CaBundle if args.webhook_url.is_some() => anyhow::bail!(
            "--webhook-url has no effect with --webhook-config-mode ca-bundle: the chart's configuration names the Service"
        ),
        WebhookConfigMode::CaBundle => ConfigMode::CaBundle { service: args.webhook_service.clone() },
    };
    let service = format!("{}.{}.svc", args.webhook_service, args.mesh_namespace);
    Ok(WebhookSettings {
        mesh_namespace: args.mesh_namespace.clone(),
        config_name: args.webhook_config_name.clone(),
        mode,
        dns_names: vec![service.clone(), format!("{service}.cluster.local")],
        ip_addresses: args.webhook_ip_sans.clone(),
        ca_propagation: args.webhook_ca_propagation,
        resync: Duration::from_secs(300),
    })
}
