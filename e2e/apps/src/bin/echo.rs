//! `echo`: an HTTP/1.1 and h2c server that answers every request with its name, version and pod
//! as JSON, and fails or delays a fraction of requests when told to (flags, env or `x-echo-*`
//! request headers). /healthz answers 200, and 503 once SIGTERM has arrived; GET /stats counts
//! the requests echoed. With --call URL it GETs URL for each request before answering (passing
//! the trace context on), and with OTEL_EXPORTER_OTLP_ENDPOINT set it reports a server span for
//! each request that arrives with a sampled `traceparent`.

use std::net::SocketAddr;

use anyhow::Context as _;
use braid_testapps::cli::{FaultArgs, IdentityArgs, LogArgs, ShutdownArgs};
use braid_testapps::echo::{Echo, EchoConfig, EchoTracing};
use braid_testapps::trace::Exporter;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "echo", version, about = "HTTP echo server for the Braid end-to-end tests")]
struct Cli {
    /// Address to listen on (HTTP/1.1 and HTTP/2 with prior knowledge on the same port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Before answering each request, GET this URL (http:// only) with the request's trace
    /// context, and answer with its status; the answer's `call` field says what it answered.
    #[arg(long, env = "ECHO_CALL", value_parser = braid_testapps::load::parse_url)]
    call: Option<http::Uri>,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log.log, cli.log.log_format).context("invalid --log filter")?;
    let config = EchoConfig {
        name: cli.identity.name.clone(),
        version: cli.identity.app_version.clone(),
        pod: cli.identity.pod(),
        faults: cli.faults.faults(),
    };
    let listener =
        TcpListener::bind(cli.listen).await.with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, name = config.name, version = config.version, pod = config.pod,
        faults = ?config.faults, "echo listening");
    // The standard OpenTelemetry variables, so the pod spec reads as any instrumented app's.
    let exporter = Exporter::from_env(&config.name, &config.pod).map_err(anyhow::Error::msg)?;
    if let Some(exporter) = &exporter {
        tracing::info!(url = %exporter.url(), "reporting spans");
    }
    if let Some(call) = &cli.call {
        tracing::info!(%call, "calling the next hop for each request");
    }
    let echo = Echo::with_tracing(config, EchoTracing { exporter, call: cli.call });
    let signal = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(signal.clone()));
    let stop = CancellationToken::new();
    let server = tokio::spawn(braid_testapps::serve::serve(
        listener,
        echo.handler(),
        stop.clone(),
        cli.shutdown.drain_timeout,
    ));
    signal.cancelled().await;
    echo.set_shutting_down();
    if !cli.shutdown.shutdown_delay.is_zero() {
        tracing::info!(delay = ?cli.shutdown.shutdown_delay, "still serving before closing the listener");
        tokio::time::sleep(cli.shutdown.shutdown_delay).await;
    }
    stop.cancel();
    server.await.context("the server task failed")?;
    tracing::info!("stopped");
    Ok(())
}
