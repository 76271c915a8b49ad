//! What every Braid binary shares, so they log and stop alike: tracing setup and graceful
//! shutdown on SIGTERM; behind features, the accept loop with graceful drain (`serve`) and the
//! admin endpoints (`admin`) the control plane serves with. Kept free of kube, for braid-proxy.

#[cfg(feature = "admin")]
pub mod admin;
pub mod duration;
pub mod ports;
#[cfg(feature = "serve")]
pub mod serve;

use std::io::IsTerminal as _;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the global subscriber, writing to stderr (so a command may write its output to
/// stdout); `filter` uses the RUST_LOG syntax ("info,kube=debug").
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(filter)?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colours only for a person at a terminal, not in `kubectl logs` or a CI log file.
        LogFormat::Plain => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C, so the binary finishes its in-flight work and exits.
pub async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM; only Ctrl-C stops this process gracefully");
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
