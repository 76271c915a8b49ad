//! `tcp-echo`: a TCP echo that is not HTTP, for the opaque-TCP tests.
//!
//! `tcp-echo serve` greets each connection first (`braid-tcp-echo POD`, a line: the server speaks
//! first, as MySQL's does) and then sends back every byte it reads; `tcp-echo call` opens
//! connections to a HOST:PORT, checks the greeting and that every byte it sends comes back
//! intact, prints a JSON report and exits non-zero when any connection failed.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use braid_testapps::cli::LogArgs;
use braid_testapps::load::parse_positive;
use braid_testapps::tcp_echo;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

#[derive(Parser)]
#[command(name = "tcp-echo", version, about = "TCP echo server and client for the Braid end-to-end tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Greet each connection with the pod's name, then echo every byte back.
    Serve {
        #[arg(long, default_value = "0.0.0.0:9000")]
        listen: SocketAddr,
        #[arg(long, env = "POD_NAME", default_value = "tcp-echo")]
        pod: String,
    },
    /// Open --connections connections to --target at once and send --bytes bytes on each.
    Call {
        /// HOST:PORT, the host a name or an address.
        #[arg(long, value_parser = tcp_echo::parse_target)]
        target: String,
        #[arg(long, default_value = "8", value_parser = parse_positive)]
        connections: usize,
        /// Bytes each connection sends and must get back.
        #[arg(long, default_value = "262144", value_parser = parse_positive)]
        bytes: usize,
        /// Bytes per write.
        #[arg(long, default_value = "16384", value_parser = parse_positive)]
        chunk: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log.log, cli.log.log_format).context("invalid --log filter")?;
    match cli.command {
        Command::Serve { listen, pod } => serve(listen, pod).await,
        Command::Call { target, connections, bytes, chunk } => {
            let report = tcp_echo::call(&target, connections as u64, bytes, chunk).await;
            // The report is the program's output, read by the test from the pod's log.
            println!("{}", serde_json::to_string(&report)?);
            if report.failed_connections > 0 {
                bail!("{} of {connections} connections failed", report.failed_connections);
            }
            Ok(())
        }
    }
}

async fn serve(listen: SocketAddr, pod: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    info!(%listen, "tcp echo server listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accept failed")?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            match tcp_echo::echo_connection(stream, &pod).await {
                Ok(bytes) => debug!(%peer, bytes, "connection echoed"),
                Err(error) => debug!(%peer, %error, "connection ended with an error"),
            }
        });
    }
}
