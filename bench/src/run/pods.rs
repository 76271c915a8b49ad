//! The redirect path (`PEER-redirect`, `direct-redirect`): the pods' network namespaces, the
//! init container's rules, an origin in each server pod, the pairs started in them, and the
//! namespaces' removal when the run ends (bench/src/pods.rs has the address plan).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use braid_bench::pods::{self, APP_PORT, DIRECT, Pods};
use braid_bench::settings::Peer;
use tracing::{info, warn};

use super::{Bench, Pair, Side};
use crate::commands::{output, tail_logs};
use crate::tools::which;

/// Fails unless this run can build pods: root, iproute2, iptables (with ip6tables: the rules
/// cover IPv6 too) and setpriv.
pub fn requirements() -> Result<()> {
    let mut missing = Vec::new();
    for (command, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("ip6tables-save", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if which(command).is_none() {
            missing.push(format!("{command} (Debian package {package})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the redirect scenarios (PEER-redirect) need {}: run `make deps`, or apt-get install them",
            missing.join(", ")
        );
    }
    if output("id", &["-u"])?.trim() != "0" {
        bail!(
            "the redirect scenarios (PEER-redirect) build network namespaces and iptables rules: run as root"
        );
    }
    Ok(())
}

impl Bench {
    /// `program args` inside `netns` (as the proxy uid when `as_proxy`), to its end; its stdout.
    pub fn output_in(&self, netns: &str, as_proxy: bool, program: &str, args: &[&str]) -> Result<String> {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let argv = pods::netns_exec(netns, as_proxy, program, &args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        output("ip", &argv)
    }

    /// Starts `program args` inside `netns` pinned to `cpu` (as the proxy uid when `as_proxy`).
    pub fn start_in(
        &mut self,
        netns: &str,
        as_proxy: bool,
        cpu: u32,
        log: &Path,
        program: &Path,
        args: &[String],
    ) -> Result<u32> {
        let argv = pods::netns_exec(netns, as_proxy, &program.display().to_string(), args);
        self.start(cpu, log, Path::new("ip"), &argv, &[])
    }

    /// Waits until `url` answers 2xx from inside `netns`; else shows the logs in `dir` and fails.
    pub fn wait_http_in(&self, netns: &str, url: &str, dir: &Path) -> Result<()> {
        for _ in 0..self.ready_seconds * 10 {
            if self.output_in(netns, false, "curl", &["-fs", "-o", "/dev/null", url]).is_ok() {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        bail!(
            "no answer from {url} in network namespace {netns}; logs in {}:\n{}",
            dir.display(),
            tail_logs(dir)
        )
    }

    /// Established TCP connections matching an `ss` filter inside `netns`, or here.
    pub fn established_in(&self, netns: Option<&str>, filter: &str) -> Result<usize> {
        let text = match netns {
            Some(netns) => self.output_in(netns, false, "ss", &["-Htn", "state", "established", filter])?,
            None => output("ss", &["-Htn", "state", "established", filter])?,
        };
        Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// Builds the two pods of `pods` (a namespace of the same name left by an earlier run is
    /// deleted first); they are deleted when the run ends.
    fn pods_up(&mut self, pods: &Pods) -> Result<()> {
        for netns in pods.namespaces() {
            if Path::new("/run/netns").join(netns).exists() {
                warn!("deleting network namespace {netns}, left by an earlier run");
                output("ip", &["netns", "delete", netns])?;
            }
            self.netns.push(netns.to_string());
        }
        for command in pods.setup() {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            output("ip", &args).context("cannot build the redirect scenario's pods")?;
        }
        Ok(())
    }

    /// Deletes the pods' namespaces (their veth pairs go with them); after the processes stopped.
    pub(super) fn delete_netns(&mut self) {
        for netns in std::mem::take(&mut self.netns) {
            if let Err(error) = output("ip", &["netns", "delete", &netns]) {
                warn!("could not delete network namespace {netns} (`ip netns delete {netns}`): {error}");
            }
        }
    }

    /// The braid-proxy whose `init` installs the rules: the measured one, or (no braid peer in
    /// this run) a release build of this checkout.
    fn init_binary(&mut self) -> Result<PathBuf> {
        if self.tools.braid.is_file() {
            return Ok(self.tools.braid.clone());
        }
        let release = self.root.join("target/release/braid-proxy");
        info!("building braid-proxy (release) for its init subcommand");
        crate::tools::run(
            Command::new("cargo")
                .args(["build", "--release", "-p", "braid-proxy", "--bin", "braid-proxy", "--locked", "-q"])
                .current_dir(&self.root),
        )?;
        Ok(release)
    }

    /// `braid-proxy init` in `netns`, as the webhook's init container runs it.
    fn init_rules(&mut self, netns: &str, skip: &[u16]) -> Result<()> {
        let binary = self.init_binary()?;
        let args: Vec<String> = pods::init_args(skip);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.output_in(netns, false, &binary.display().to_string(), &args)
            .with_context(|| format!("braid-proxy init failed in network namespace {netns}"))?;
        Ok(())
    }

    /// The origin of a server pod: nginx as for `direct` (one worker, CPU 0), on the pod's app
    /// address.
    fn origin_in(&mut self, pods: &Pods, name: &str) -> Result<()> {
        let (dir, conf) = self.origin_files(&format!("{name}-origin"), APP_PORT)?;
        let moved = pods::origin_in_pod(&fs::read_to_string(&conf)?, APP_PORT, pods.server_ip)?;
        fs::write(&conf, moved)?;
        let args = crate::commands::nginx_args(&dir, &conf);
        let master =
            self.start_in(&pods.server_ns, false, 0, &dir.join("stderr.log"), Path::new("nginx"), &args)?;
        self.wait_http_in(&pods.server_ns, &pods.url(false), &dir)?;
        for worker in self.children(master) {
            self.adopt(worker);
        }
        Ok(())
    }

    /// `direct-redirect`: the first pair of pods, no rules, no proxies; the client reaches the
    /// origin in the server pod over the veth pair.
    pub fn start_direct_redirect(&mut self) -> Result<()> {
        let pods = Pods::new(0)?;
        self.pods_up(&pods)?;
        self.origin_in(&pods, DIRECT)?;
        let body = self.output_in(&pods.client_ns, false, "curl", &["-fs", &pods.url(false)])?;
        if body.len() != 1024 {
            bail!("{DIRECT} answered {} bytes instead of 1024", body.len());
        }
        info!("{DIRECT} up: client pod {} → origin {}", pods.client_ns, pods.app());
        Ok(())
    }

    /// A pair on the redirect path (`index` ≥ 1: its pods): the rules in both pods, the origin
    /// in the server pod, B then A as sidecars; one request to the Service address through the
    /// redirect, and checks, while a client holds a connection, that the path is the one claimed.
    pub fn start_redirect_pair(&mut self, peer: Peer, index: usize) -> Result<()> {
        let pods = Pods::new(index)?;
        self.pods_up(&pods)?;
        let skip: &[u16] = if peer.mtls && peer.kind.is_braid() { &[pods::IDENTITY_PORT] } else { &[] };
        self.init_rules(&pods.client_ns, &[])?;
        self.init_rules(&pods.server_ns, skip)?;
        self.origin_in(&pods, &peer.to_string())?;
        let b = crate::peers::redirect::start(self, peer, &pods, Side::B)?;
        let a = crate::peers::redirect::start(self, peer, &pods, Side::A)?;
        let (dir_a, dir_b) = (self.hop_dir(peer, Side::A)?, self.hop_dir(peer, Side::B)?);
        if let Some(ready) = &b.ready {
            self.wait_http_in(&pods.server_ns, ready, &dir_b)?;
        }
        if let Some(ready) = &a.ready {
            self.wait_http_in(&pods.client_ns, ready, &dir_a)?;
        }
        let url = pods.url(true);
        self.wait_http_in(&pods.client_ns, &url, &dir_a)?;
        let body = self.output_in(&pods.client_ns, false, "curl", &["-fs", &url])?;
        if body.len() != 1024 {
            bail!("{peer} pair answered {} bytes instead of 1024", body.len());
        }
        let idle = [self.mem_kib(&a.pids)?, self.mem_kib(&b.pids)?];
        let pair = Pair {
            entry: pods::SERVICE_PORT,
            port_b: APP_PORT,
            a,
            b,
            idle: [[idle[0].0, idle[0].1], [idle[1].0, idle[1].1]],
            pods: Some(pods.clone()),
        };
        // A client that holds its connections open meanwhile: oha at a low rate, in the client pod.
        let mut holder = self.oha_paced_in(Some(&pods.client_ns), &url, 20, "3s");
        let holder = self.spawn_load(&mut holder, None)?;
        sleep(Duration::from_millis(1500));
        let checked = crate::peers::redirect::verify(self, peer, &pair);
        self.finish_load(holder, &format!("the {peer} pair's path check (oha in {})", pods.client_ns))?;
        checked?;
        info!(
            "{peer} pair up: client in {} → Service {} → redirected to A (pids {:?}) → B at {} (pids {:?}) → origin",
            pods.client_ns,
            pods.service(),
            pair.a.pids,
            pods.app(),
            pair.b.pids
        );
        self.pairs.insert(peer, pair);
        Ok(())
    }
}
