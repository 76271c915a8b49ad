//! The running benchmark: its scratch folder, the processes it started (all stopped when it
//! ends), free ports, the origin, the pairs of proxies and one measured run.
//!
//! Here: [`Bench`] and what a pair is made of; `processes` (starting and stopping them),
//! `pairs` (the origin and the pairs of proxies), `measure` (load generators and one measured
//! run), `training` (the mix `pgo` and `link-order` record under) and `usage` (memory and CPU
//! from /proc); commands run to their end are in `crate::commands`.

mod grpc;
mod measure;
mod pairs;
mod pods;
mod processes;
mod training;
mod usage;
mod workloads;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use braid_bench::pods::Pods;
use braid_bench::settings::Peer;
use braid_bench::template;
use braid_bench::workloads::{Origin, Workload};

use crate::Knobs;
pub use crate::commands::{established, nginx_args, output, run_ok, succeeds, tail_logs};
use crate::tools::Tools;
pub use measure::CONNECTIONS;
pub use pods::requirements as redirect_requirements;
use processes::Proc;

/// How the proxies run: plainly, or under callgrind (instructions, link-order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recorder {
    None,
    /// Names as people read them.
    Callgrind,
    /// Symbol names as the linker sees them.
    CallgrindMangled,
}

/// One side of a pair: A (outbound, where the client connects) or B (inbound, to the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// What a peer's module says about a proxy it started.
pub struct Hop {
    /// Every process of the proxy (nginx: master and worker).
    pub pids: Vec<u32>,
    /// A URL that answers 2xx once the proxy is ready, when it has one.
    pub ready: Option<String>,
    /// Its admin port (Envoy, braid): stats, metrics.
    pub admin: Option<u16>,
}

/// A pair of proxies that carries requests: client → A → B → origin.
pub struct Pair {
    pub entry: u16,
    pub port_b: u16,
    pub a: Hop,
    pub b: Hop,
    /// [[VmRSS, RssAnon] of A, of B], KiB, after one request.
    pub idle: [[u64; 2]; 2],
    /// On the redirect path: the pods the pair runs in (`entry` is then the Service's port).
    pub pods: Option<Pods>,
}

pub struct Bench {
    pub knobs: Knobs,
    pub root: PathBuf,
    pub work: PathBuf,
    _scratch: Option<tempfile::TempDir>,
    procs: Vec<Proc>,
    used_ports: HashSet<u16>,
    pub origin_port: u16,
    pub pairs: HashMap<Peer, Pair>,
    /// The redirect path's network namespaces, deleted when the run ends.
    netns: Vec<String>,
    pub pki: Option<PathBuf>,
    pub identity_port: Option<u16>,
    pub otlp_sink_port: Option<u16>,
    pub tools: Tools,
    pub clk_tck: u64,
    pub ready_seconds: u64,
    pub recorder: Recorder,
    /// Set for the braid proxies of `pgo`: where the instrumented build writes its counts.
    pub llvm_profile_file: Option<String>,
    /// The workload the pairs being started are for (`workloads`): its origin's protocol, the
    /// large table.
    pub workload: Option<&'static Workload>,
}

impl Bench {
    pub fn new(knobs: Knobs, root: PathBuf, tools: Tools, recorder: Recorder) -> Result<Bench> {
        let scratch = tempfile::Builder::new().prefix("braid-bench.").tempdir()?;
        // Like the shell knobs it replaces: set and not empty.
        let keep = knobs.keep_work.as_deref().is_some_and(|v| !v.is_empty());
        let (work, scratch) =
            if keep { (scratch.keep(), None) } else { (scratch.path().to_path_buf(), Some(scratch)) };
        // nginx workers run as nobody and read the origin's file.
        run_ok("chmod", &["755", &work.to_string_lossy()])?;
        fs::create_dir_all(work.join("runs"))?;
        let clk_tck =
            output("getconf", &["CLK_TCK"])?.trim().parse().context("getconf CLK_TCK printed no number")?;
        let ready_seconds = if recorder == Recorder::None { 10 } else { 60 };
        Ok(Bench {
            knobs,
            root,
            work,
            _scratch: scratch,
            procs: Vec::new(),
            used_ports: HashSet::new(),
            origin_port: 0,
            pairs: HashMap::new(),
            netns: Vec::new(),
            pki: None,
            identity_port: None,
            otlp_sink_port: None,
            tools,
            clk_tck,
            ready_seconds,
            recorder,
            llvm_profile_file: None,
            workload: None,
        })
    }

    /// Whether B's origin speaks HTTP/2 only (grpc-echo), so B must too.
    pub fn origin_is_h2(&self) -> bool {
        self.workload.is_some_and(|w| w.origin() == Origin::Grpc)
    }

    /// Whether A is to hold the large route table.
    pub fn with_table(&self) -> bool {
        self.workload.is_some_and(|w| w.table)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The command line of a proxy: under callgrind in the modes that record one.
    pub fn recorded(&self, dir: &Path, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut wrapped = vec![
            "--tool=callgrind".to_string(),
            format!("--callgrind-out-file={}", dir.join("callgrind.out").display()),
        ];
        match self.recorder {
            Recorder::None => return (program.to_path_buf(), args),
            Recorder::Callgrind => {}
            Recorder::CallgrindMangled => wrapped.push("--demangle=no".into()),
        }
        wrapped.push(program.display().to_string());
        wrapped.extend(args);
        (PathBuf::from("valgrind"), wrapped)
    }

    /// Renders bench/proxy/`template` into `out`.
    pub fn render(&self, template_name: &str, out: &Path, vars: &[(&str, String)]) -> Result<()> {
        let source = self.path("bench/proxy").join(template_name);
        let text =
            fs::read_to_string(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let rendered = template::render(&text, vars, &format!("bench/proxy/{template_name}"))?;
        fs::write(out, rendered)?;
        Ok(())
    }

    /// The scratch folder of one proxy of a pair, e.g. WORK/haproxy-mtls-a.
    pub fn hop_dir(&self, peer: Peer, side: Side) -> Result<PathBuf> {
        let dir = self.work.join(format!("{peer}-{}", side.name()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
