//! The load generators (oha, wrk) pinned to CPU 0, and one measured run of a scenario.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use braid_bench::pods::{self, Pods};
use braid_bench::report::{Run, RunMeta};
use braid_bench::settings::Peer;
use braid_bench::{load, report};
use tracing::info;

use super::Bench;
use super::usage::{cpu1, loadavg};

pub const CONNECTIONS: u32 = 16;

impl Bench {
    /// The oha command of an open-loop run at `rate` for `duration`, pinned to CPU 0.
    pub fn oha_paced(&self, url: &str, rate: u32, duration: &str) -> Command {
        self.oha_paced_in(None, url, rate, duration)
    }

    /// `oha_paced` inside a network namespace (the client pod of the redirect path), or here.
    pub fn oha_paced_in(&self, netns: Option<&str>, url: &str, rate: u32, duration: &str) -> Command {
        let mut command = self.oha_in(netns, CONNECTIONS, duration);
        command.args(["-q", &rate.to_string(), "--latency-correction", url]);
        command
    }

    /// oha over `connections` for `duration`, pinned to CPU 0, its JSON report on stdout; the
    /// caller adds the pace, the request and the URL.
    pub(super) fn oha_in(&self, netns: Option<&str>, connections: u32, duration: &str) -> Command {
        let mut command = self.on_cpu0_in(netns, &self.tools.oha);
        // -w: requests still in flight at the end are waited for, not counted as errors.
        command.args([
            "-c",
            &connections.to_string(),
            "-z",
            duration,
            "-w",
            "--no-tui",
            "--output-format",
            "json",
        ]);
        command
    }

    pub fn wrk(&self, url: &str, duration: &str) -> Command {
        self.wrk_in(None, url, duration)
    }

    pub fn wrk_in(&self, netns: Option<&str>, url: &str, duration: &str) -> Command {
        let mut command = self.on_cpu0_in(netns, Path::new("wrk"));
        command.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{duration}"), url]);
        command
    }

    pub(super) fn on_cpu0(&self, program: &Path) -> Command {
        self.on_cpu0_in(None, program)
    }

    pub(super) fn on_cpu0_in(&self, netns: Option<&str>, program: &Path) -> Command {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", "nice", "-n", &self.knobs.nice.to_string()]);
        if let Some(netns) = netns {
            command.args(["ip", "netns", "exec", netns]);
        }
        command.arg(program).stdin(Stdio::null()).stderr(Stdio::inherit());
        command
    }

    /// The oha command of `requests` requests in the closed loop, pinned to CPU 0.
    pub fn oha_closed(&self, url: &str, requests: u64, json: bool) -> Command {
        let mut command = self.on_cpu0(&self.tools.oha);
        command.args(["-c", &CONNECTIONS.to_string(), "-n", &requests.to_string(), "--no-tui"]);
        if json {
            command.args(["--output-format", "json"]);
        }
        command.arg(url);
        command
    }

    /// Runs a load generator to its end, its stdout into `out` (or dropped).
    pub fn load_command(&mut self, command: &mut Command, out: Option<&Path>) -> Result<()> {
        let pid = self.spawn_load(command, out)?;
        self.finish_load(pid, "the load generator")
    }

    /// One measured run of `scenario` ("direct", "direct-redirect" or a peer) at `point` (a
    /// rate, or "max").
    pub fn measure(&mut self, scenario: &str, point: &str, run: u32) -> Result<Run> {
        let target = self.target(scenario)?;
        // On the redirect path the load generator runs in the client pod.
        let netns = target.pods.as_ref().map(|p| p.client_ns.clone());
        let netns = netns.as_deref();
        let url = match &target.pods {
            Some(pods) => pods.url(target.peer.is_some()),
            None => format!("http://127.0.0.1:{}/1k", target.entry),
        };
        let k = &self.knobs;
        let warm_rate = if point == "max" { *k.rates.last().context("no rate")? } else { point.parse()? };
        let (warmup, duration, wrk_duration) = (k.warmup.clone(), k.duration.clone(), k.wrk_duration.clone());
        let mut warm = self.oha_paced_in(netns, &url, warm_rate, &warmup);
        self.load_command(&mut warm, None)?;
        let prefix = self.work.join(format!("runs/{point}-{scenario}-{run}"));
        let (mut command, out) = if point == "max" {
            (self.wrk_in(netns, &url, &wrk_duration), PathBuf::from(format!("{}.wrk.txt", prefix.display())))
        } else {
            (
                self.oha_paced_in(netns, &url, warm_rate, &duration),
                PathBuf::from(format!("{}.oha.json", prefix.display())),
            )
        };
        let meta = self.sample(&target, scenario, point, run, &mut command, &out)?;
        fs::write(format!("{}.meta.json", prefix.display()), serde_json::to_string(&meta)?)?;
        let text = fs::read_to_string(&out)?;
        let what = out.display().to_string();
        let load =
            if point == "max" { load::parse_wrk(&text, &what)? } else { load::parse_oha(&text, &what)? };
        let run = report::load_run(&meta, &load)?;
        info!("  {}", report::line(&run));
        Ok(run)
    }

    /// Where a scenario's load goes and which processes carry it.
    pub(super) fn target(&self, scenario: &str) -> Result<Target> {
        let peer = if report::is_direct(scenario) { None } else { Some(Peer::parse(scenario)?) };
        Ok(match peer {
            None if scenario == pods::DIRECT => Target {
                peer,
                entry: 0,
                pids_a: vec![],
                pids_b: vec![],
                port_b: 0,
                pods: Some(Pods::new(0)?),
            },
            None => Target {
                peer,
                entry: self.origin_port,
                pids_a: vec![],
                pids_b: vec![],
                port_b: 0,
                pods: None,
            },
            Some(peer) => {
                let pair = self.pair(peer)?;
                Target {
                    peer: Some(peer),
                    entry: pair.entry,
                    pids_a: pair.a.pids.clone(),
                    pids_b: pair.b.pids.clone(),
                    port_b: pair.port_b,
                    pods: pair.pods.clone(),
                }
            }
        })
    }

    /// Runs the load generator `command` (its stdout into `out`) and samples, while it runs, the
    /// pair's CPU, memory and connections from A to B; what the run's .meta.json holds.
    pub(super) fn sample(
        &mut self,
        target: &Target,
        scenario: &str,
        point: &str,
        run: u32,
        command: &mut Command,
        out: &Path,
    ) -> Result<RunMeta> {
        let netns = target.pods.as_ref().map(|p| p.client_ns.clone());
        let netns = netns.as_deref();
        let (pids_a, pids_b) = (&target.pids_a, &target.pids_b);
        let cpu_a = self.cpu_ticks(pids_a)?;
        let cpu_b = self.cpu_ticks(pids_b)?;
        let cpu1_before = cpu1()?;
        let t0 = Instant::now();
        let pid = self.spawn_load(command, Some(out))?;
        let (mut peak_a, mut peak_b, mut conns) = ((0, 0), (0, 0), 0);
        while self.load_running(pid) {
            if !pids_a.is_empty() {
                let m = self.mem_kib(pids_a)?;
                peak_a = (peak_a.0.max(m.0), peak_a.1.max(m.1));
                let m = self.mem_kib(pids_b)?;
                peak_b = (peak_b.0.max(m.0), peak_b.1.max(m.1));
                // Connections from A to B: 1 when A multiplexes everything over one HTTP/2 connection.
                conns = conns.max(self.established_in(netns, &format!("( dport = :{} )", target.port_b))?);
            }
            sleep(Duration::from_millis(500));
        }
        self.finish_load(pid, &format!("the load generator ({scenario}, {point}, run {run})"))?;
        let ms = t0.elapsed().as_millis() as u64;
        if let Some(peer) = target.peer {
            self.alive(peer)?;
        }
        Ok(RunMeta {
            scenario: scenario.into(),
            point: point.into(),
            run,
            ms,
            clk_tck: self.clk_tck,
            cpu_ticks: [self.cpu_ticks(pids_a)? - cpu_a, self.cpu_ticks(pids_b)? - cpu_b],
            peak_kib: [[peak_a.0, peak_a.1], [peak_b.0, peak_b.1]],
            cpu1_before,
            // CPU 1 as a whole too: what else ran there shows as noise.
            cpu1_after: cpu1()?,
            loadavg: loadavg()?,
            a_to_b_connections: conns as u32,
        })
    }
}

/// Where a scenario's load goes: the pair's entry (or the origin's port for `direct`), and the
/// processes measured.
pub(super) struct Target {
    pub peer: Option<Peer>,
    pub entry: u16,
    pub pids_a: Vec<u32>,
    pub pids_b: Vec<u32>,
    pub port_b: u16,
    pub pods: Option<Pods>,
}
