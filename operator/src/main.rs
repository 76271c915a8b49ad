//! braid-operator: flags and wiring; the logic lives in the library.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use braid_operator::{
    app::{self, DiscoverySettings, IdentitySettings, LEADER_RETRY_PERIOD, LeaderEndpoint, Settings},
    discovery, identity,
    leader::{self, LeaseSettings},
    meshroute::controller::Scope,
    webhook::{
        config::Endpoint,
        controller::{ConfigMode, WebhookSettings},
    },
};
use braid_runtime::LogFormat;
use clap::{Parser, ValueEnum};
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
    /// anchor is used: the kubelet's sync period (1 min by default) plus its cache's delay to
    /// update a mounted ConfigMap, plus the proxies' poll of the file.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    braid_crds::duration::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    braid_runtime::init_logging(&args.log, args.log_format).context("invalid --log filter")?;
    let settings = settings(&args)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));
    app::run(settings, shutdown).await?;
    Ok(())
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let leader_endpoint = if args.discovery_leader_endpoint {
        let (Some(pod_name), Some(pod_ip)) = (args.leader_election_identity.clone(), args.pod_ip.clone())
        else {
            anyhow::bail!(
                "--discovery-leader-endpoint needs BRAID_POD_NAME and BRAID_POD_IP (the downward API)"
            );
        };
        Some(LeaderEndpoint { service: args.discovery_service.clone(), pod_name, pod_ip })
    } else {
        None
    };
    Ok(Settings {
        admin_addr: args.admin_addr,
        scope: args.namespace.clone().map_or(Scope::AllNamespaces, Scope::Namespace),
        mesh_namespace: args.mesh_namespace.clone(),
        cluster_domain: args.cluster_domain.clone(),
        lease: args.leader_elect.then(|| lease_settings(args)).transpose()?,
        webhook: (!args.skip_webhook).then(|| webhook_settings(args)).transpose()?,
        identity: args.identity.then(|| IdentitySettings {
            addr: args.identity_addr,
            server: identity_server_settings(args),
            propagation: args.identity_propagation,
            owner_service: args.identity_owner_service.clone(),
        }),
        discovery: args.discovery.then(|| DiscoverySettings {
            addr: args.discovery_addr,
            server: discovery_server_settings(args),
            leader_endpoint,
        }),
    })
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
    discovery::server::ServerSettings {
        dns_names,
        ip_addresses: args.discovery_ip_sans.clone(),
        max_connections_per_address: discovery::server::MAX_CONNECTIONS_PER_ADDRESS,
    }
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
