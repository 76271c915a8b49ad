//! `grpc-echo`: a gRPC server of proto/echo.proto (unary Echo, server-streaming EchoRepeat,
//! bidirectional EchoStream) and grpc.health.v1 Check; `grpc-echo call` is its client.

use std::net::SocketAddr;

use anyhow::Context as _;
use braid_testapps::cli::{FaultArgs, IdentityArgs, LogArgs, ShutdownArgs};
use braid_testapps::echo::EchoConfig;
use braid_testapps::grpc::client::GrpcClient;
use braid_testapps::grpc::server::GrpcEcho;
use clap::{Args, Parser, Subcommand};
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "grpc-echo",
    version,
    about = "gRPC echo server (and client) for the Braid end-to-end tests"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve(ServeArgs),
    /// Call a server and print the replies as JSON lines.
    Call(CallArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (HTTP/2 with prior knowledge).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
}

#[derive(Args)]
struct CallArgs {
    /// The server, host:port.
    target: String,
    /// The message to echo.
    #[arg(long, default_value = "hello")]
    message: String,
    /// Send this many messages over one EchoStream instead of one unary Echo.
    #[arg(long)]
    stream: Option<u64>,
    /// Request header "name: value" (x-echo-fail-rate: 1, say); repeatable.
    #[arg(long = "header", value_parser = braid_testapps::load::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log.log, cli.log.log_format).context("invalid --log filter")?;
    match cli.command {
        Some(Command::Call(args)) => call(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = EchoConfig {
        name: args.identity.name.clone(),
        version: args.identity.app_version.clone(),
        pod: args.identity.pod(),
        faults: args.faults.faults(),
    };
    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, name = config.name, version = config.version, pod = config.pod,
        faults = ?config.faults, "grpc-echo listening");
    let server = GrpcEcho::new(config);
    let signal = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(signal.clone()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(braid_testapps::serve::serve(
        listener,
        server.handler(),
        stop.clone(),
        args.shutdown.drain_timeout,
    ));
    signal.cancelled().await;
    server.set_shutting_down();
    if !args.shutdown.shutdown_delay.is_zero() {
        tracing::info!(delay = ?args.shutdown.shutdown_delay, "still serving before closing the listener");
        tokio::time::sleep(args.shutdown.shutdown_delay).await;
    }
    stop.cancel();
    task.await.context("the server task failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn call(args: CallArgs) -> anyhow::Result<()> {
    let mut client = GrpcClient::connect(&args.target).await?;
    let headers: HeaderMap = args.headers.into_iter().collect();
    match args.stream {
        None => {
            let reply = client.echo_with(&args.message, &headers).await.context("Echo failed")?;
            println!("{}", serde_json::to_string(&reply)?);
        }
        Some(count) => {
            let mut stream = client.echo_stream(&headers).await.context("EchoStream failed")?;
            for index in 1..=count {
                stream.send(&format!("{} {index}", args.message)).await.context("EchoStream failed")?;
                match stream.recv().await.context("EchoStream failed")? {
                    Some(reply) => println!("{}", serde_json::to_string(&reply)?),
                    None => anyhow::bail!("EchoStream ended after {} replies", index - 1),
                }
            }
            stream.close_send();
            if let Some(reply) = stream.recv().await.context("EchoStream failed")? {
                anyhow::bail!("EchoStream sent an extra reply: {reply:?}");
            }
        }
    }
    Ok(())
}
