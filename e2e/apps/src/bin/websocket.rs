//! `websocket`: a WebSocket server and client (tungstenite: the real handshake, masking and
//! framing) for the upgrade tests.
//!
//! `websocket serve` answers each text or binary message with the same message, a text one
//! prefixed with the pod's name (`POD: message`); `websocket call` opens connections to a URL,
//! sends messages on each, checks every echo and prints a JSON report; it exits non-zero when any
//! connection or message failed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use braid_testapps::cli::LogArgs;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

#[derive(Parser)]
#[command(
    name = "websocket",
    version,
    about = "WebSocket echo server and client for the Braid end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every message back, text ones prefixed with the pod's name.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "POD_NAME", default_value = "websocket")]
        pod: String,
    },
    /// Open --connections connections to --url and exchange --messages messages on each.
    Call {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Bytes of each binary message (every other message is binary).
        #[arg(long, default_value_t = 4096)]
        binary_size: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log.log, cli.log.log_format).context("invalid --log filter")?;
    match cli.command {
        Command::Serve { listen, pod } => serve(listen, pod).await,
        Command::Call { url, connections, messages, binary_size } => {
            call(&url, connections, messages, binary_size).await
        }
    }
}

async fn serve(listen: SocketAddr, pod: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    info!(%listen, "websocket echo server listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(shutdown.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accept failed")?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            if let Err(error) = echo_connection(stream, &pod).await {
                debug!(%peer, %error, "websocket connection ended with an error");
            }
        });
    }
}

async fn echo_connection(stream: TcpStream, pod: &str) -> anyhow::Result<()> {
    let mut socket = tokio_tungstenite::accept_async(stream).await.context("WebSocket handshake failed")?;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => socket.send(Message::text(format!("{pod}: {text}"))).await?,
            Message::Binary(bytes) => socket.send(Message::Binary(bytes)).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

async fn call(url: &str, connections: usize, messages: usize, binary_size: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let runs =
        futures_util::future::join_all((0..connections).map(|n| exchange(url, n, messages, binary_size)))
            .await;
    let mut pods = std::collections::BTreeMap::<String, u64>::new();
    let mut errors = Vec::new();
    let mut echoed = 0;
    let mut bytes = 0;
    for run in runs {
        match run {
            Ok(run) => {
                *pods.entry(run.pod).or_default() += 1;
                echoed += run.echoed;
                bytes += run.bytes;
            }
            Err(error) => errors.push(format!("{error:#}")),
        }
    }
    let report = json!({
        "connections": connections,
        "failed_connections": errors.len(),
        "messages_echoed": echoed,
        "bytes_echoed": bytes,
        "pods": pods,
        "errors": errors,
        "seconds": start.elapsed().as_secs_f64(),
    });
    // The report is the program's output, read by the test from the pod's log.
    serde_json::to_writer(std::io::stdout(), &report)?;
    if !errors.is_empty() || echoed != connections * messages {
        bail!("{} of {connections} connections failed, {echoed} messages echoed", errors.len());
    }
    Ok(())
}

struct Exchange {
    pod: String,
    echoed: usize,
    bytes: usize,
}

/// One connection: `messages` messages, alternately text and binary, each echo checked.
async fn exchange(url: &str, n: usize, messages: usize, binary_size: usize) -> anyhow::Result<Exchange> {
    let (mut socket, response) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
            .await
            .with_context(|| format!("connection {n}: no handshake with {url} within 10 s"))?
            .with_context(|| format!("connection {n}: WebSocket handshake with {url} failed"))?;
    debug!(status = %response.status(), "connected");
    let mut pod = String::new();
    let mut bytes = 0;
    for i in 0..messages {
        let sent = if i % 2 == 0 {
            Message::text(format!("connection {n} message {i}"))
        } else {
            Message::binary((0..binary_size).map(|b| (b + i) as u8).collect::<Vec<u8>>())
        };
        socket.send(sent.clone()).await.with_context(|| format!("connection {n}: sending message {i}"))?;
        let echo = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .with_context(|| format!("connection {n}: no echo of message {i} within 10 s"))?
            .with_context(|| format!("connection {n}: closed before the echo of message {i}"))?
            .with_context(|| format!("connection {n}: reading the echo of message {i}"))?;
        match (&sent, &echo) {
            (Message::Text(sent), Message::Text(echo)) => {
                let Some((from, text)) = echo.split_once(": ") else {
                    bail!("connection {n}: echo of message {i} has no pod prefix: {echo}");
                };
                if text != sent.as_str() || (!pod.is_empty() && from != pod) {
                    bail!("connection {n}: message {i} came back as {echo:?} (pod before: {pod})");
                }
                pod = from.to_owned();
            }
            (Message::Binary(sent), Message::Binary(echo)) if sent == echo => {}
            _ => bail!("connection {n}: message {i} came back as another message ({} bytes)", echo.len()),
        }
        bytes += sent.len();
    }
    socket.close(None).await.with_context(|| format!("connection {n}: closing"))?;
    Ok(Exchange { pod, echoed: messages, bytes })
}
