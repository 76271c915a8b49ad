//! The benchmark (`make bench`): every pair and `direct`, interleaved, RUNS runs at each rate
//! and in the closed loop; bench/results/proxy-<timestamp>.json and .md.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use braid_bench::report::{self, Report, Settings};
use braid_bench::settings::{Kind, Peer};
use braid_bench::system;
use tracing::info;

use super::{stamped_prefix, with};
use crate::run::{Bench, CONNECTIONS};
use crate::tools;

pub fn run(b: &mut Bench) -> Result<()> {
    let peers = b.knobs.peers.clone();
    // The redirect path: its baseline's pods first (index 0), then one pair of pods per peer.
    let mut pods = 0;
    if peers.iter().any(|p| p.redirect) {
        b.start_direct_redirect()?;
    }
    for &peer in &peers {
        if peer.redirect {
            pods += 1;
            b.start_redirect_pair(peer, pods)?;
        } else {
            b.start_pair(peer)?;
        }
    }
    let mut idle = BTreeMap::new();
    for &peer in &peers {
        idle.insert(peer.to_string(), b.pair(peer)?.idle);
    }
    let scenarios = report::scenarios_of(&peers.iter().map(Peer::to_string).collect::<Vec<_>>());
    let points: Vec<String> = b.knobs.rates.iter().map(u32::to_string).chain(["max".to_string()]).collect();
    info!(
        "{} scenarios × {} points × {} runs, interleaved: {}",
        scenarios.len(),
        points.len(),
        b.knobs.runs,
        scenarios.join(" ")
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for run in 1..=b.knobs.runs {
        for point in &points {
            for s in &scenarios {
                runs.push(b.measure(s, point, run)?);
            }
        }
    }
    let (prefix, timestamp) = stamped_prefix(&b.root, "proxy")?;
    let k = &b.knobs;
    let mut report = Report {
        timestamp,
        machine: system::machine(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        versions: tools::versions(&b.root, k, &b.tools),
        took_seconds: started.elapsed().as_secs(),
        settings: Settings {
            knobs: k.describe(),
            runs: k.runs,
            duration: k.duration.clone(),
            wrk_duration: k.wrk_duration.clone(),
            connections: CONNECTIONS,
        },
        peers: peers.iter().map(Peer::to_string).collect(),
        rates: k.rates.iter().map(u32::to_string).collect(),
        idle_kib: idle,
        summary: Default::default(),
        runs,
    };
    report.resummarize();
    fs::write(with(&prefix, ".json"), serde_json::to_string_pretty(&report)?)?;
    let mut md = report::markdown(&report)?;
    if peers.contains(&Peer { kind: Kind::Braid, mtls: true, redirect: false }) {
        md += &handshakes(b)?;
    }
    fs::write(with(&prefix, ".md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    info!("wrote {} and .md", with(&prefix, ".json").display());
    Ok(())
}

/// The cost of a new connection between proxies: full mutual TLS 1.3 handshakes with the proxy's
/// own configurations, both ends on CPU 1 (examples/mtls_handshakes), median of RUNS runs of 5 s.
fn handshakes(b: &Bench) -> Result<String> {
    let example = b.path("target/release/examples/mtls_handshakes");
    if !example.is_file() {
        tools::run(
            Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "-p",
                    "braid-proxy",
                    "--example",
                    "mtls_handshakes",
                    "--locked",
                    "-q",
                ])
                .current_dir(&b.root),
        )?;
    }
    let mut rates = Vec::new();
    for _ in 0..b.knobs.runs {
        let out = Command::new("taskset")
            .args(["-c", "1"])
            .arg(&example)
            .arg("5")
            .output()
            .context("cannot run examples/mtls_handshakes")?;
        rates.push(report::handshake_rate(&String::from_utf8_lossy(&out.stdout))?);
    }
    Ok(report::handshakes_markdown(&rates))
}
