//! The workloads' load generators (oha for HTTP/1.1, ghz for gRPC) and one measured run of a
//! workload, and the pairs of a gRPC origin, checked with a call through them.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, bail};
use braid_bench::load;
use braid_bench::report::{self, Run};
use braid_bench::settings::Peer;
use braid_bench::workloads::{Request, Workload};
use tracing::info;

use super::Bench;
use super::grpc::GrpcCall;

impl Bench {
    /// The load generator of `w` against 127.0.0.1:`entry`, paced at `rate` or in the closed
    /// loop, for `duration`, pinned to CPU 0.
    fn workload_command(
        &mut self,
        w: &Workload,
        entry: u16,
        rate: Option<u32>,
        duration: &str,
    ) -> Result<Command> {
        let target = format!("127.0.0.1:{entry}");
        // All of a client's calls over one HTTP/2 connection, as a gRPC channel makes them.
        let grpc = |call, bytes| self.ghz_in(None, &target, call, bytes, rate, duration, w.connections, 1);
        Ok(match w.request {
            Request::Unary { bytes } => grpc(GrpcCall::Unary, bytes),
            Request::ServerStream { bytes, replies } => grpc(GrpcCall::ServerStream { replies }, bytes),
            Request::Get { path, .. } => {
                self.oha_workload(w, &format!("http://{target}{path}"), rate, duration, None)
            }
            Request::Post { bytes } => {
                let body = self.work.join(format!("body-{bytes}"));
                if !body.is_file() {
                    fs::write(&body, vec![b'x'; bytes])?;
                }
                self.oha_workload(w, &format!("http://{target}/upload"), rate, duration, Some(body))
            }
        })
    }

    fn oha_workload(
        &self,
        w: &Workload,
        url: &str,
        rate: Option<u32>,
        duration: &str,
        body: Option<PathBuf>,
    ) -> Command {
        let mut command = self.oha_in(None, w.connections, duration);
        if let Some(rate) = rate {
            command.args(["-q", &rate.to_string(), "--latency-correction"]);
        }
        if !w.keepalive {
            command.arg("--disable-keepalive");
        }
        if let Some(body) = body {
            command.args(["-m", "POST", "-T", "application/octet-stream", "-D"]).arg(body);
        }
        command.arg(url);
        command
    }

    /// One measured run of workload `w` through `scenario` at `point` (its rate, or "max"),
    /// after a warm-up at its rate.
    pub fn measure_workload(&mut self, w: &Workload, scenario: &str, point: &str, run: u32) -> Result<Run> {
        let target = self.target(scenario)?;
        let rate = if point == "max" { None } else { Some(w.rate) };
        let (warmup, duration, closed) =
            (self.knobs.warmup.clone(), self.knobs.duration.clone(), self.knobs.wrk_duration.clone());
        let mut warm = self.workload_command(w, target.entry, Some(w.rate), &warmup)?;
        self.load_command(&mut warm, None)?;
        let prefix = self.work.join(format!("runs/{}-{point}-{scenario}-{run}", w.name));
        let out = PathBuf::from(format!("{}.json", prefix.display()));
        let mut command =
            self.workload_command(w, target.entry, rate, if rate.is_some() { &duration } else { &closed })?;
        let meta = self.sample(&target, scenario, point, run, &mut command, &out)?;
        fs::write(format!("{}.meta.json", prefix.display()), serde_json::to_string(&meta)?)?;
        let text = fs::read_to_string(&out)?;
        let what = out.display().to_string();
        let load = match w.request {
            Request::Unary { .. } | Request::ServerStream { .. } => load::parse_ghz(&text, &what)?,
            _ => load::parse_oha(&text, &what)?,
        };
        let run = report::load_run(&meta, &load)?;
        info!("  {} {}", w.name, report::line(&run));
        Ok(run)
    }

    fn wait_listening(&self, port: u16, dir: &std::path::Path) -> Result<()> {
        for _ in 0..self.ready_seconds * 10 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        bail!("nothing listens on :{port}; logs in {}:\n{}", dir.display(), super::tail_logs(dir))
    }

    /// A pair in front of the gRPC origin: started, then checked with calls through it (every
    /// one answered OK) and, while A still holds its HTTP/2 connection to B, as `start_pair`
    /// checks the others.
    pub fn start_grpc_pair(&mut self, peer: Peer, w: &Workload) -> Result<()> {
        let (port_a, port_b, a, b) = self.launch_pair(peer)?;
        let dir = self.hop_dir(peer, super::Side::A)?;
        // Not every peer has a readiness URL (HAProxy): its listener accepting is the sign.
        self.wait_listening(port_a, &dir)?;
        let out = dir.join("check.json");
        let mut command = self.workload_command(w, port_a, None, "1s")?;
        self.load_command(&mut command, Some(&out))?;
        let check = load::parse_ghz(&fs::read_to_string(&out)?, &out.display().to_string())?;
        if check.ok == 0 || check.non2xx > 0 || check.errors > 0 {
            bail!(
                "{peer}: gRPC calls through the pair failed ({} OK, {} other statuses, {} errors: {:?}); logs in {}",
                check.ok,
                check.non2xx,
                check.errors,
                check.error_kinds,
                dir.display()
            );
        }
        self.keep_pair(peer, port_a, port_b, a, b)
    }
}
