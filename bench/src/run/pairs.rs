//! The origin and the pairs of proxies: free ports, starting them, and checking that each pair
//! carries requests the way it claims.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use braid_bench::settings::Peer;
use braid_bench::{system, training, workloads};
use tracing::info;

use super::{Bench, Hop, Pair, Side};
use crate::commands::{established, nginx_args, output, succeeds, tail_logs};

impl Bench {
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

    /// An origin's folder `name` in the scratch folder: what it serves (the benchmark's /1k, the
    /// workloads' and the training mix's files) and its nginx.conf for `port`; the folder and the file.
    pub(super) fn origin_files(&mut self, name: &str, port: u16) -> Result<(PathBuf, PathBuf)> {
        let dir = self.work.join(name);
        fs::create_dir_all(dir.join("www"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        fs::write(dir.join("www/1k"), [b'x'; 1024])?;
        for (path, bytes) in workloads::files() {
            fs::write(dir.join("www").join(path), vec![b'x'; bytes])?;
        }
        for (file, bytes) in training::FILES {
            fs::write(dir.join("www").join(file), vec![b'x'; bytes])?;
        }
        let conf = dir.join("nginx.conf");
        self.render(
            "origin-nginx.conf",
            &conf,
            &[("DIR", dir.display().to_string()), ("PORT", port.to_string())],
        )?;
        Ok((dir, conf))
    }

    /// The origin: nginx, one worker on CPU 0, a static 1 KiB body at /1k and the training mix's
    /// files.
    pub fn start_origin(&mut self) -> Result<()> {
        let port = self.free_ports(1)?[0];
        let (dir, conf) = self.origin_files("origin", port)?;
        let args = nginx_args(&dir, &conf);
        let master = self.start(0, &dir.join("stderr.log"), Path::new("nginx"), &args, &[])?;
        self.wait_http(&format!("http://127.0.0.1:{port}/1k"), &dir)?;
        for worker in self.children(master) {
            self.adopt(worker);
        }
        self.origin_port = port;
        Ok(())
    }

    /// Starts B (inbound, to the origin), then A (outbound, to B), and waits until both are
    /// ready; A's and B's ports and processes.
    pub(super) fn launch_pair(&mut self, peer: Peer) -> Result<(u16, u16, Hop, Hop)> {
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
        Ok((port_a, port_b, a, b))
    }

    /// A pair that has carried requests: checks that A holds a connection to B (while the caller
    /// holds a request's connection open) and that the path is the one claimed; keeps it.
    pub(super) fn keep_pair(&mut self, peer: Peer, port_a: u16, port_b: u16, a: Hop, b: Hop) -> Result<()> {
        if established(&format!("( sport = :{port_b} )"))? == 0 {
            bail!("{peer} A holds no connection to B");
        }
        let idle = [self.mem_kib(&a.pids)?, self.mem_kib(&b.pids)?];
        let pair = Pair {
            entry: port_a,
            port_b,
            a,
            b,
            idle: [[idle[0].0, idle[0].1], [idle[1].0, idle[1].1]],
            pods: None,
        };
        crate::peers::verify(self, peer, &pair)?;
        info!(
            "{peer} pair up: A :{port_a} (pids {:?}) → B :{port_b} (pids {:?}) → origin :{}",
            pair.a.pids, pair.b.pids, self.origin_port
        );
        self.pairs.insert(peer, pair);
        Ok(())
    }

    /// Starts B (inbound, to the origin), then A (outbound, to B), sends one request through
    /// both, and checks while a keep-alive request is held open that the path is the one claimed.
    pub fn start_pair(&mut self, peer: Peer) -> Result<()> {
        let (port_a, port_b, a, b) = self.launch_pair(peer)?;
        let dir_a = self.hop_dir(peer, Side::A)?;
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
        self.keep_pair(peer, port_a, port_b, a, b)?;
        drop(held);
        Ok(())
    }

    /// Stops every pair (the origin and the identity stand-in stay) and moves their folders to
    /// WORK/`label`/, so that the next pairs of the same peers start afresh.
    pub fn stop_pairs(&mut self, label: &str) -> Result<()> {
        let peers: Vec<Peer> = self.pairs.keys().copied().collect();
        let pids: Vec<u32> =
            self.pairs.values().flat_map(|p| p.a.pids.iter().chain(&p.b.pids)).copied().collect();
        if !pids.is_empty() {
            self.stop_proxies(&pids)?;
        }
        self.pairs.clear();
        let to = self.work.join(label);
        fs::create_dir_all(&to)?;
        for peer in peers {
            for side in [Side::A, Side::B] {
                let dir = self.hop_dir(peer, side)?;
                if let Some(name) = dir.file_name() {
                    fs::rename(&dir, to.join(name))?;
                }
            }
        }
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
}
