//! braid-proxy: `braid-proxy [run]` is the sidecar; `braid-proxy init` installs the iptables
//! redirect of the pod (the webhook's init container).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use braid_api::contract;
use braid_runtime::LogFormat;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "braid-proxy", version, about = "The Braid sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Install (or with --remove, remove) the iptables redirect in this network namespace.
    Init(braid_proxy::init::InitArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file (YAML or JSON); polled for changes.
    #[arg(long, env = "BRAID_PROXY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// How often the configuration file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration, global = true)]
    config_poll: Duration,
    /// Admin address (/live, /ready, /metrics, /config); overrides the file's.
    #[arg(long, env = "BRAID_PROXY_ADMIN", global = true)]
    admin: Option<std::net::SocketAddr>,
    /// Worker threads; 1 runs everything on one thread, as a one-core sidecar should.
    #[arg(long, env = "BRAID_PROXY_THREADS", default_value_t = 1, global = true)]
    threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "20s", value_parser = duration, global = true)]
    drain_timeout: Duration,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = contract::env::LOG, default_value = "info", global = true)]
    log: String,
    #[arg(long, env = "BRAID_LOG_FORMAT", value_enum, default_value = "plain", global = true)]
    log_format: LogFormat,
}

fn duration(text: &str) -> Result<Duration, String> {
    braid_runtime::duration::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.run.log, cli.run.log_format).context("invalid --log filter")?;
    match cli.command {
        Some(Command::Init(args)) => braid_proxy::init::run(&args).context("braid-proxy init failed"),
        Some(Command::Run) | None => run(cli.run),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let options = braid_proxy::app::Options {
            config: args.config,
            config_poll: args.config_poll,
            admin: args.admin,
            default_identity: braid_proxy::app::identity_from_env(|name| std::env::var(name).ok()),
            default_discovery: braid_proxy::app::discovery_from_env(|name| std::env::var(name).ok())
                .context("the environment the webhook set is not usable")?,
            fixed_destinations: Vec::new(),
        };
        let running = braid_proxy::app::start(options).await?;
        let shutdown = CancellationToken::new();
        braid_runtime::cancel_on_signal(shutdown.clone()).await;
        running.drain(args.drain_timeout).await;
        Ok(())
    })
}
