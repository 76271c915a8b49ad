//! The server child: this same binary in `server` mode, commanded over its stdin, its stdout
//! read as lines.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::Args;
use crate::procfs::ProcStats;
use crate::server::Phases;
use crate::world::World;

pub struct ServerChild {
    child: tokio::process::Child,
    pub pid: String,
    /// Its stdin: one command a line.
    pub commands: tokio::process::ChildStdin,
    /// Its stdout, a line at a time.
    pub lines: mpsc::UnboundedReceiver<String>,
}

impl ServerChild {
    /// Starts it (on `--server-cpus` when given) with the CA in `ca_dir`, and waits for its
    /// "ready" line: where it listens, and what building its index took.
    pub async fn start(
        args: &Args,
        world: &World,
        ca_dir: &Path,
    ) -> anyhow::Result<(Self, SocketAddr, Phases)> {
        let exe = std::env::current_exe()?;
        let mut command = match &args.server_cpus {
            Some(cpus) => {
                let mut command = tokio::process::Command::new("taskset");
                command.args(["-c", cpus]).arg(exe);
                command
            }
            None => tokio::process::Command::new(exe),
        };
        let mut child = command
            .arg("server")
            .args(["--pods", &world.pods.to_string(), "--services", &world.services.to_string()])
            .args(["--routes", &world.routes.to_string(), "--namespaces", &world.namespaces.to_string()])
            .args(["--proxies", &world.proxies.to_string()])
            .arg("--ca-dir")
            .arg(ca_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the server process")?;
        let server_pid = child.id().context("the server exited at once")?.to_string();
        let commands = child.stdin.take().context("server stdin")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = expect_line(&mut lines, "ready ", Duration::from_secs(120)).await?;
        let (addr, phases) = ready.split_once(' ').context("ready ADDR JSON")?;
        let addr: SocketAddr = addr.parse()?;
        let phases: Phases = serde_json::from_str(phases)?;
        Ok((Self { child, pid: server_pid, commands, lines }, addr, phases))
    }

    /// What it uses now (its `stats` line).
    pub async fn stats(&mut self) -> anyhow::Result<ProcStats> {
        self.commands.write_all(b"stats\n").await?;
        self.commands.flush().await?;
        Ok(serde_json::from_str(&expect_line(&mut self.lines, "stats ", Duration::from_secs(30)).await?)?)
    }

    /// Closes its stdin, which ends it, and kills it if it has not exited within 10 s.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { mut child, commands, .. } = self;
        drop(commands);
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            child.kill().await?;
        }
        Ok(())
    }
}

async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    prefix: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .with_context(|| format!("no {prefix:?} line from the server in {wait:?}"))?
            .context("the server exited")?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
    }
}
