//! braid-webhook: flags and wiring; the logic lives in the library.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use braid_crds::mesh::Mesh;
use braid_runtime::LogFormat;
use braid_webhook::{
    cluster::Cluster,
    inject::{ControlPlane, InjectConfig},
    manifest,
    metrics::Metrics,
    server::{self, AppState},
    tls::ReloadingCert,
};
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The Braid admission webhook: injects the braid-proxy sidecar into meshed pods.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter, RUST_LOG syntax. Logs go to stderr.
    #[arg(long, global = true, env = "BRAID_LOG", default_value = "info")]
    log: String,

    /// Log line format.
    #[arg(long, global = true, env = "BRAID_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the admission webhook (HTTPS) and the admin endpoints (HTTP).
    /// Connects with the in-cluster config, or KUBECONFIG / ~/.kube/config outside a cluster.
    Serve(ServeArgs),
    /// Inject the proxy into the pod templates of the YAML manifests on stdin (Pods, Deployments,
    /// StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs) and write them to stdout, as if
    /// their namespace were meshed. Other objects pass through unchanged.
    Inject(InjectArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address of the HTTPS admission server (POST /inject, /healthz, /readyz).
    #[arg(long, env = "BRAID_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    addr: SocketAddr,

    /// Address of the plain-HTTP admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "BRAID_ADMIN_ADDR", default_value = "0.0.0.0:9991")]
    admin_addr: SocketAddr,

    /// PEM certificate chain the webhook serves; re-read when it changes.
    #[arg(long, env = "BRAID_TLS_CERT", default_value = "/var/run/braid/webhook-tls/tls.crt")]
    tls_cert: PathBuf,

    /// PEM private key of the certificate; re-read when it changes.
    #[arg(long, env = "BRAID_TLS_KEY", default_value = "/var/run/braid/webhook-tls/tls.key")]
    tls_key: PathBuf,

    /// How often to check the certificate files for changes, in seconds.
    #[arg(long, env = "BRAID_TLS_RELOAD_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    tls_reload_seconds: u64,

    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// A Mesh manifest (YAML) whose proxy settings to use instead of the defaults.
    #[arg(long)]
    mesh: Option<PathBuf>,

    #[command(flatten)]
    proxy: ProxyArgs,
}

/// What the injected proxy is told about itself and the control plane.
#[derive(Debug, Args)]
struct ProxyArgs {
    /// Version written to the braid.dev/injected annotation.
    #[arg(long, env = "BRAID_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    proxy_version: String,

    /// host:port of the identity service, given to proxies.
    #[arg(long, env = "BRAID_IDENTITY_ADDR", default_value_t = ControlPlane::default().identity_addr)]
    identity_addr: String,

    /// host:port of the discovery service, given to proxies.
    #[arg(long, env = "BRAID_DISCOVERY_ADDR", default_value_t = ControlPlane::default().discovery_addr)]
    discovery_addr: String,
}

impl ProxyArgs {
    fn control_plane(&self) -> ControlPlane {
        ControlPlane {
            identity_addr: self.identity_addr.clone(),
            discovery_addr: self.discovery_addr.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log, cli.log_format).context("invalid --log filter")?;
    // One process-wide provider (kube's client and our server both use ring); Err only means one
    // is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Inject(args) => inject(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(serve(args)),
    }
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let config = match &args.mesh {
        None => InjectConfig::defaults(&args.proxy.proxy_version, &args.proxy.control_plane()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --mesh {}", path.display()))?;
            let mesh: Mesh = serde_saphyr::from_str(&text)
                .with_context(|| format!("--mesh {} is not a Mesh manifest", path.display()))?;
            InjectConfig::from_mesh(&mesh.spec, &args.proxy.proxy_version, &args.proxy.control_plane())
        }
    };
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("cannot read the manifests from stdin")?;
    let (output, reports) = manifest::inject_manifests(&input, &config)?;
    for report in &reports {
        match report.skipped {
            None => eprintln!("document {}: {} injected", report.document, report.object),
            Some(reason) => {
                eprintln!("document {}: {} skipped: {}", report.document, report.object, reason.message())
            }
        }
    }
    if reports.is_empty() {
        eprintln!("no pod templates found; the manifests are unchanged");
    }
    std::io::stdout().write_all(output.as_bytes()).context("cannot write to stdout")?;
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key)
        .context("cannot load the serving certificate (--tls-cert, --tls-key)")?;
    let tls_config = cert.server_config().context("cannot build the TLS configuration")?;
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client: set KUBECONFIG or run inside a cluster")?;

    let (cluster, reflectors) =
        Cluster::watch(client, args.proxy.proxy_version.clone(), args.proxy.control_plane());
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let state = Arc::new(AppState { cluster, metrics, registry });

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", args.addr))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));
    let reflectors = tokio::spawn(reflectors);
    let reload_state = state.clone();
    let reloads = tokio::spawn(cert.watch(
        Duration::from_secs(args.tls_reload_seconds),
        shutdown.clone(),
        move |result| {
            let result = match result {
                Ok(false) => return,
                Ok(true) => "ok",
                Err(_) => "error",
            };
            reload_state
                .metrics
                .cert_reloads
                .get_or_create(&braid_webhook::metrics::ResultLabels { result })
                .inc();
        },
    ));
    let admin = tokio::spawn(braid_runtime::admin::serve(admin_listener, state.clone(), shutdown.clone()));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "braid-webhook starting");
    server::serve_tls(listener, tls_config, server::admission_router(state), shutdown.clone()).await;

    shutdown.cancel();
    reflectors.abort();
    reloads.await.context("certificate reload task failed")?;
    admin.await.context("admin server task failed")?;
    tracing::info!("braid-webhook stopped");
    Ok(())
}
