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
    meshroute::controller::{self, Context, Scope},
    metrics::Metrics,
    webhook::{self, config::Endpoint, controller::WebhookSettings},
};
use braid_runtime::LogFormat;
use clap::Parser;
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
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    braid_crds::duration::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    braid_runtime::init_logging(&args.log, args.log_format).context("invalid --log filter")?;

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client: set KUBECONFIG or run inside a cluster")?;
    let scope = args.namespace.clone().map_or(Scope::AllNamespaces, Scope::Namespace);
    controller::check_crd(&client, &scope).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let admin_state = Arc::new(AdminState { registry, ready: Default::default() });
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));

    let ctx = Arc::new(Context {
        client,
        metrics,
        backoff: FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(300)),
    });
    if !args.skip_webhook {
        let settings = webhook_settings(&args)?;
        tokio::spawn(webhook::controller::run(
            ctx.client.clone(),
            settings,
            ctx.metrics.clone(),
            shutdown.clone(),
        ));
    }
    let ready_state = admin_state.clone();
    let admin = tokio::spawn(admin::serve(listener, admin_state, shutdown.clone()));
    tracing::info!(scope = ?scope, version = env!("CARGO_PKG_VERSION"), "braid-operator starting");
    controller::run(ctx, scope, shutdown.clone().cancelled_owned(), move || {
        ready_state.ready.store(true, Ordering::Relaxed);
        tracing::info!("MeshRoutes listed; ready");
    })
    .await;
    shutdown.cancel();
    admin.await.context("admin server task failed")?.context("admin server failed")?;
    tracing::info!("braid-operator stopped");
    Ok(())
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
    let service = format!("{}.{}.svc", args.webhook_service, args.mesh_namespace);
    Ok(WebhookSettings {
        mesh_namespace: args.mesh_namespace.clone(),
        config_name: args.webhook_config_name.clone(),
        endpoint,
        dns_names: vec![service.clone(), format!("{service}.cluster.local")],
        ip_addresses: args.webhook_ip_sans.clone(),
        ca_propagation: args.webhook_ca_propagation,
        resync: Duration::from_secs(300),
    })
}
