//! The running benchmark: its scratch folder, the processes it started (all stopped when it
//! ends), free ports, the origin, the pairs of proxies and one measured run.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use braid_bench::report::{Run, RunMeta};
use braid_bench::settings::Peer;
use braid_bench::{load, report, system, template};
use tracing::info;

use crate::Knobs;
use crate::tools::Tools;

/// How the proxies run: plainly, or under callgrind (instructions, link-order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recorder {
    None,
    /// Names as people read them.
    Callgrind,
    /// Symbol names as the linker sees them.
    CallgrindMangled,
}

pub const CONNECTIONS: u32 = 16;

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
}

struct Proc {
    pid: u32,
    child: Option<Child>,
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
    pub pki: Option<PathBuf>,
    pub identity_port: Option<u16>,
    pub tools: Tools,
    pub clk_tck: u64,
    pub ready_seconds: u64,
    pub recorder: Recorder,
    /// Set for the braid proxies of `pgo`: where the instrumented build writes its counts.
    pub llvm_profile_file: Option<String>,
}

/// Runs a command to its end; its stdout, or an error with its stderr.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command succeeds (its output dropped).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Established TCP connections matching an `ss` filter such as "( dport = :8080 )".
pub fn established(filter: &str) -> Result<usize> {
    let text = output("ss", &["-Htn", "state", "established", filter])?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
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
            pki: None,
            identity_port: None,
            tools,
            clk_tck,
            ready_seconds,
            recorder,
            llvm_profile_file: None,
        })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Starts `program` pinned to `cpu` in the background, its output in `log`; its pid.
    pub fn start(
        &mut self,
        cpu: u32,
        log: &Path,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<u32> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", &cpu.to_string(), "nice", "-n", &self.knobs.nice.to_string()])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .current_dir(&self.root);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        self.procs.push(Proc { pid, child: Some(child) });
        Ok(pid)
    }

    /// A process this run did not start itself but must stop (nginx workers).
    pub fn adopt(&mut self, pid: u32) {
        self.procs.push(Proc { pid, child: None });
    }

    /// Whether a process this run started is still running.
    pub fn alive_pid(&mut self, pid: u32) -> bool {
        match self.procs.iter_mut().find(|p| p.pid == pid) {
            Some(Proc { child: Some(child), .. }) => matches!(child.try_wait(), Ok(None)),
            _ => process_alive(pid),
        }
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

    /// `n` ports free now, none handed out before in this run, below the ephemeral range, so no
    /// client connection (ours or anyone's) can take one meanwhile.
    pub fn free_ports(&mut self, n: usize) -> Result<Vec<u16>> {
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
        let high = system::parse_port_range_start(&range)?;
        let low = if high > 22_000 { 20_000 } else { 1024 };
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..100_000 {
            if ports.len() == n {
                break;
            }
            let port = fastrand::u16(low..high);
            if self.used_ports.contains(&port) || ports.contains(&port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(listener);
                ports.push(port);
            }
        }
        if ports.len() < n {
            bail!("found only {} free ports between {low} and {high}", ports.len());
        }
        self.used_ports.extend(&ports);
        Ok(ports)
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

    /// Waits until `url` answers 2xx; else shows the logs in `dir` and fails.
    pub fn wait_http(&self, url: &str, dir: &Path) -> Result<()> {
        for _ in 0..self.ready_seconds * 10 {
            if succeeds("curl", &["-fs", "-o", "/dev/null", url]) {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        bail!("no answer from {url}; logs in {}:\n{}", dir.display(), tail_logs(dir))
    }

    pub fn children(&self, pid: u32) -> Vec<u32> {
        output("pgrep", &["-P", &pid.to_string()])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The origin: nginx, one worker on CPU 0, a static 1 KiB body at /1k.
    pub fn start_origin(&mut self) -> Result<()> {
        let dir = self.work.join("origin");
        fs::create_dir_all(dir.join("www"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        fs::write(dir.join("www/1k"), [b'x'; 1024])?;
        let port = self.free_ports(1)?[0];
        let conf = dir.join("nginx.conf");
        self.render(
            "origin-nginx.conf",
            &conf,
            &[("DIR", dir.display().to_string()), ("PORT", port.to_string())],
        )?;
        let args = nginx_args(&dir, &conf);
        let master = self.start(0, &dir.join("stderr.log"), Path::new("nginx"), &args, &[])?;
        self.wait_http(&format!("http://127.0.0.1:{port}/1k"), &dir)?;
        for worker in self.children(master) {
            self.adopt(worker);
        }
        self.origin_port = port;
        Ok(())
    }

    /// The scratch folder of one proxy of a pair, e.g. WORK/haproxy-mtls-a.
    pub fn hop_dir(&self, peer: Peer, side: Side) -> Result<PathBuf> {
        let dir = self.work.join(format!("{peer}-{}", side.name()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Starts B (inbound, to the origin), then A (outbound, to B), sends one request through
    /// both, and checks while a keep-alive request is held open that the path is the one claimed.
    pub fn start_pair(&mut self, peer: Peer) -> Result<()> {
        let ports = self.free_ports(2)?;
        let (port_a, port_b) = (ports[0], ports[1]);
        let origin = self.origin_port;
        let b = crate::peers::start_hop(self, peer, Side::B, port_b, origin)?;
        let a = crate::peers::start_hop(self, peer, Side::A, port_a, port_b)?;
        let (dir_a, dir_b) = (self.hop_dir(peer, Side::A)?, self.hop_dir(peer, Side::B)?);
        if let Some(ready) = &b.ready {
            self.wait_http(ready, &dir_b)?;
        }
        if let Some(ready) = &a.ready {
            self.wait_http(ready, &dir_a)?;
        }
        let url = format!("http://127.0.0.1:{port_a}/1k");
        self.wait_http(&url, &dir_a)?;
        let body = Command::new("curl").args(["-fs", &url]).output()?.stdout;
        if body.len() != 1024 {
            bail!("{peer} pair answered {} bytes instead of 1024", body.len());
        }
        // The links are checked while a keep-alive request is held open: a pooling peer keeps
        // its connection to B anyway, a TCP relay (floor) holds one only while its client does.
        let mut held = TcpStream::connect(("127.0.0.1", port_a))?;
        held.set_read_timeout(Some(Duration::from_secs(3)))?;
        held.write_all(b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut head = [0u8; 12];
        let read = held.read(&mut head).unwrap_or(0);
        let head = String::from_utf8_lossy(&head[..read]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{peer} answered {head:?} to a keep-alive request");
        }
        if established(&format!("( sport = :{port_b} )"))? == 0 {
            bail!("{peer} A holds no connection to B");
        }
        let idle = [self.mem_kib(&a.pids)?, self.mem_kib(&b.pids)?];
        let pair =
            Pair { entry: port_a, port_b, a, b, idle: [[idle[0].0, idle[0].1], [idle[1].0, idle[1].1]] };
        crate::peers::verify(self, peer, &pair)?;
        drop(held);
        info!(
            "{peer} pair up: A :{port_a} (pids {:?}) → B :{port_b} (pids {:?}) → origin :{origin}",
            pair.a.pids, pair.b.pids
        );
        self.pairs.insert(peer, pair);
        Ok(())
    }

    pub fn pair(&self, peer: Peer) -> Result<&Pair> {
        self.pairs.get(&peer).with_context(|| format!("the {peer} pair is not up"))
    }

    /// Fails when one of the proxies of `peer` has exited.
    pub fn alive(&mut self, peer: Peer) -> Result<()> {
        let pids: Vec<u32> = {
            let pair = self.pair(peer)?;
            pair.a.pids.iter().chain(&pair.b.pids).copied().collect()
        };
        for pid in pids {
            if !self.alive_pid(pid) {
                let mut logs = String::new();
                for side in [Side::A, Side::B] {
                    logs += &tail_logs(&self.hop_dir(peer, side)?);
                }
                bail!("{peer}: proxy process {pid} exited; its logs:\n{logs}");
            }
        }
        Ok(())
    }

    /// (VmRSS, RssAnon) of `pids` summed, KiB.
    pub fn mem_kib(&self, pids: &[u32]) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for pid in pids {
            let path = format!("/proc/{pid}/status");
            let text = fs::read_to_string(&path).with_context(|| format!("process {pid} is gone"))?;
            let (rss, anon) = system::parse_status_memory(&text, &path)?;
            sum = (sum.0 + rss, sum.1 + anon);
        }
        Ok(sum)
    }

    /// (utime, stime) ticks of `pids` summed.
    pub fn cpu_split(&self, pids: &[u32]) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for pid in pids {
            let path = format!("/proc/{pid}/stat");
            let text = fs::read_to_string(&path).with_context(|| format!("process {pid} is gone"))?;
            let (user, system) = system::parse_stat_cpu(&text, &path)?;
            sum = (sum.0 + user, sum.1 + system);
        }
        Ok(sum)
    }

    pub fn cpu_ticks(&self, pids: &[u32]) -> Result<u64> {
        let (user, system) = self.cpu_split(pids)?;
        Ok(user + system)
    }

    /// The oha command of an open-loop run at `rate` for `duration`, pinned to CPU 0.
    pub fn oha_paced(&self, url: &str, rate: u32, duration: &str) -> Command {
        let mut command = self.on_cpu0(&self.tools.oha);
        command.args([
            "-c",
            &CONNECTIONS.to_string(),
            "-q",
            &rate.to_string(),
            "--latency-correction",
            "-z",
            duration,
            "-w",
            "--no-tui",
            "--output-format",
            "json",
            url,
        ]);
        command
    }

    pub fn wrk(&self, url: &str, duration: &str) -> Command {
        let mut command = self.on_cpu0(Path::new("wrk"));
        command.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{duration}"), url]);
        command
    }

    fn on_cpu0(&self, program: &Path) -> Command {
        let mut command = Command::new("taskset");
        command
            .args(["-c", "0", "nice", "-n", &self.knobs.nice.to_string()])
            .arg(program)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
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

    pub fn spawn_load(&mut self, command: &mut Command, out: Option<&Path>) -> Result<u32> {
        let stdout = match out {
            Some(path) => Stdio::from(File::create(path)?),
            None => Stdio::null(),
        };
        let child = command.stdout(stdout).spawn().context("cannot start the load generator")?;
        let pid = child.id();
        self.procs.push(Proc { pid, child: Some(child) });
        Ok(pid)
    }

    /// Waits for a load generator started with spawn_load; fails when it failed.
    pub fn finish_load(&mut self, pid: u32, what: &str) -> Result<()> {
        let at = self.procs.iter().position(|p| p.pid == pid).context("no such load generator")?;
        let mut proc = self.procs.remove(at);
        let status = match proc.child.as_mut() {
            Some(child) => child.wait()?,
            None => bail!("{what} is not a child of this run"),
        };
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    }

    pub fn load_running(&mut self, pid: u32) -> bool {
        self.alive_pid(pid)
    }

    /// One measured run of `scenario` ("direct" or a peer) at `point` (a rate, or "max").
    pub fn measure(&mut self, scenario: &str, point: &str, run: u32) -> Result<Run> {
        let peer = if scenario == "direct" { None } else { Some(Peer::parse(scenario)?) };
        let (entry, pids_a, pids_b, port_b) = match peer {
            None => (self.origin_port, vec![], vec![], 0),
            Some(peer) => {
                let pair = self.pair(peer)?;
                (pair.entry, pair.a.pids.clone(), pair.b.pids.clone(), pair.port_b)
            }
        };
        let url = format!("http://127.0.0.1:{entry}/1k");
        let k = &self.knobs;
        let warm_rate = if point == "max" { *k.rates.last().context("no rate")? } else { point.parse()? };
        let (warmup, duration, wrk_duration) = (k.warmup.clone(), k.duration.clone(), k.wrk_duration.clone());
        let mut warm = self.oha_paced(&url, warm_rate, &warmup);
        self.load_command(&mut warm, None)?;
        let prefix = self.work.join(format!("runs/{point}-{scenario}-{run}"));
        let cpu_a = self.cpu_ticks(&pids_a)?;
        let cpu_b = self.cpu_ticks(&pids_b)?;
        let cpu1_before = cpu1()?;
        let t0 = Instant::now();
        let (mut command, out) = if point == "max" {
            (self.wrk(&url, &wrk_duration), PathBuf::from(format!("{}.wrk.txt", prefix.display())))
        } else {
            (
                self.oha_paced(&url, warm_rate, &duration),
                PathBuf::from(format!("{}.oha.json", prefix.display())),
            )
        };
        let pid = self.spawn_load(&mut command, Some(&out))?;
        let (mut peak_a, mut peak_b, mut conns) = ((0, 0), (0, 0), 0);
        while self.load_running(pid) {
            if !pids_a.is_empty() {
                let m = self.mem_kib(&pids_a)?;
                peak_a = (peak_a.0.max(m.0), peak_a.1.max(m.1));
                let m = self.mem_kib(&pids_b)?;
                peak_b = (peak_b.0.max(m.0), peak_b.1.max(m.1));
                // Connections from A to B: 1 when A multiplexes everything over one HTTP/2 connection.
                conns = conns.max(established(&format!("( dport = :{port_b} )"))?);
            }
            sleep(Duration::from_millis(500));
        }
        self.finish_load(pid, &format!("the load generator ({scenario}, {point}, run {run})"))?;
        let ms = t0.elapsed().as_millis() as u64;
        if let Some(peer) = peer {
            self.alive(peer)?;
        }
        let meta = RunMeta {
            scenario: scenario.into(),
            point: point.into(),
            run,
            ms,
            clk_tck: self.clk_tck,
            cpu_ticks: [self.cpu_ticks(&pids_a)? - cpu_a, self.cpu_ticks(&pids_b)? - cpu_b],
            peak_kib: [[peak_a.0, peak_a.1], [peak_b.0, peak_b.1]],
            cpu1_before,
            // CPU 1 as a whole too: what else ran there shows as noise.
            cpu1_after: cpu1()?,
            loadavg: loadavg()?,
            a_to_b_connections: conns as u32,
        };
        fs::write(format!("{}.meta.json", prefix.display()), serde_json::to_string(&meta)?)?;
        let text = fs::read_to_string(&out)?;
        let what = out.display().to_string();
        let load =
            if point == "max" { load::parse_wrk(&text, &what)? } else { load::parse_oha(&text, &what)? };
        let run = report::load_run(&meta, &load)?;
        info!("  {}", report::line(&run));
        Ok(run)
    }

    /// SIGTERM to `pids`, then waits for each to exit (drained; its records written).
    pub fn stop_proxies(&mut self, pids: &[u32]) -> Result<()> {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args = vec!["-TERM"];
        args.extend(list.iter().map(String::as_str));
        output("kill", &args)?;
        for &pid in pids {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.alive_pid(pid) {
                if Instant::now() > deadline {
                    bail!("proxy {pid} did not exit within 30 s of SIGTERM");
                }
                sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let pids: Vec<String> =
            self.procs.iter().filter(|p| process_alive(p.pid)).map(|p| p.pid.to_string()).collect();
        if !pids.is_empty() {
            let mut args = vec!["-TERM"];
            args.extend(pids.iter().map(String::as_str));
            let _ = output("kill", &args);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.procs.iter().any(|p| process_alive(p.pid)) {
            for proc in &mut self.procs {
                if let Some(child) = proc.child.as_mut() {
                    let _ = child.try_wait();
                }
            }
            sleep(Duration::from_millis(100));
        }
        for proc in &mut self.procs {
            match proc.child.as_mut() {
                Some(child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                None if process_alive(proc.pid) => {
                    let _ = output("kill", &["-KILL", &proc.pid.to_string()]);
                }
                None => {}
            }
        }
        if self._scratch.is_none() {
            info!("kept {}", self.work.display());
        }
    }
}

pub fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).map(|_| ())
}

pub fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
    ]
}

/// The last lines of every .log file in `dir`.
pub fn tail_logs(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let content = fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = content.lines().collect();
                let from = lines.len().saturating_sub(20);
                text += &format!("==> {} <==\n{}\n", path.display(), lines[from..].join("\n"));
            }
        }
    }
    text
}

pub fn cpu1() -> Result<[u64; 8]> {
    Ok(system::parse_cpu_line(&fs::read_to_string("/proc/stat")?, 1)?)
}

pub fn loadavg() -> Result<String> {
    let text = fs::read_to_string("/proc/loadavg")?;
    Ok(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
