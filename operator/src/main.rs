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
    telemetry::{self, LogFormat},
};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log, args.log_format).context("invalid --log filter")?;

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
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let ctx = Arc::new(Context {
        client,
        metrics,
        backoff: FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(300)),
    });
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

/// Cancels `token` on SIGTERM or Ctrl-C, so in-flight reconciles finish before exit.
async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the operator gracefully");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, shutting down"),
    }
    token.cancel();
}
