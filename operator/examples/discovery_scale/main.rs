//! Discovery at scale (`bench/discovery.sh`; docs/benchmarks.md "Discovery at scale").
//!
//! The driver (default) creates a mesh CA, starts this same binary as the server (`server`
//! mode: a synthetic index of PODS pods and SERVICES Services served by the real discovery
//! server over mTLS), connects PROXIES simulated proxies to it as real clients (each its own
//! HTTP/2 + TLS 1.3 connection with a workload certificate of that CA, hello as an existing pod,
//! five subscriptions plus its inbound policy, an ack for every update), then changes MeshRoutes
//! that 100%, 10% and 1% of the proxies call and measures how long each change takes to reach
//! every subscribed proxy and to be acked, and the server's CPU per change. Then
//! ROLLOUTS routes get a canary (rollouts.rs): the server runs the operator's rollout code on
//! what the proxies report, and the driver measures how long each weight step takes to reach
//! every proxy, the server's CPU per interval and its memory.
//!
//!   cargo run --release -p braid-operator --example discovery_scale -- \
//!       --proxies 10000 --pods 12000 --services 2000 --changes 30 --rollouts 100 --out FILE.md
//!
//! bench/discovery.sh runs it (and raises the open-files limit it needs: two sockets per proxy).

mod driver;
mod procfs;
mod rollouts;
mod server;
mod world;

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// `drive` (default): run the benchmark; `server`: the server process the driver starts.
    #[arg(default_value = "drive")]
    mode: String,
    /// Simulated proxies, all in the driver process.
    #[arg(long, default_value_t = 10_000)]
    proxies: usize,
    /// Meshed pods: at least one per proxy (each proxy speaks for its own pod).
    #[arg(long, default_value_t = 12_000)]
    pods: usize,
    #[arg(long, default_value_t = 2000)]
    services: usize,
    /// MeshRoutes, each splitting a Service across its v1 and v2 Services.
    #[arg(long, default_value_t = 300)]
    routes: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Route changes to measure, cycling over the fan-out classes: a route every proxy calls, one
    /// a tenth of them call, one a hundredth call (world.rs).
    #[arg(long, default_value_t = 30)]
    changes: usize,
    /// Time between the starts of two changes.
    #[arg(long, default_value_t = 1000)]
    spacing_ms: u64,
    /// Canary rollouts run at once after the changes (0: none), on the first routes some proxy calls.
    #[arg(long, default_value_t = 100)]
    rollouts: usize,
    /// Each rollout's spec.canary.interval (steps 10, 25, 50, then promoted).
    #[arg(long, default_value = "3s")]
    rollout_interval: String,
    /// Requests per second each proxy sends to each destination during the rollouts (reported).
    #[arg(long, default_value_t = 50)]
    rollout_rps: u64,
    /// Handshakes in flight at once while the proxies connect.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Markdown report to write (the driver).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Free text for the report's header (commit, machine).
    #[arg(long, default_value = "")]
    label: String,
    /// Pin the server process to these CPUs (taskset -c LIST), e.g. `1` while the driver runs on 0.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Where the driver left the CA for the server (server mode).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let world = world::World {
        pods: args.pods,
        services: args.services,
        routes: args.routes,
        namespaces: args.namespaces,
        proxies: args.proxies,
    };
    world.check().map_err(anyhow::Error::msg)?;
    if args.rollouts > 0 {
        check_rollout_interval(&args.rollout_interval).map_err(anyhow::Error::msg)?;
    }
    match args.mode.as_str() {
        "server" => {
            let dir = args.ca_dir.ok_or_else(|| anyhow::anyhow!("server mode needs --ca-dir"))?;
            server::main(world, &dir)
        }
        "drive" => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            // On the runtime's workers rather than this thread: the proxies' events then wake no
            // other thread, which on the driver's one pinned core is a context switch each.
            runtime.block_on(async { tokio::spawn(driver::main(world, args)).await? })
        }
        other => anyhow::bail!("unknown mode {other:?}: drive or server"),
    }
}

/// The interval goes into every canary's spec: refused here rather than by the server later.
fn check_rollout_interval(text: &str) -> Result<(), String> {
    let interval = braid_crds::duration::parse_duration(text)
        .map_err(|e| format!("--rollout-interval {text:?}: {e}"))?;
    if interval.is_zero() {
        return Err("--rollout-interval must be longer than 0".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rollout_interval_must_be_a_duration_longer_than_zero() {
        assert_eq!(super::check_rollout_interval("3s"), Ok(()));
        let bad = super::check_rollout_interval("3x").expect_err("not a duration");
        assert!(bad.starts_with("--rollout-interval \"3x\""), "{bad}");
        assert_eq!(
            super::check_rollout_interval("0s"),
            Err("--rollout-interval must be longer than 0".to_owned())
        );
    }
}
