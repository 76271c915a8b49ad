//! `make pgo`: the instrumented braid-proxy (tools::install built it) in the braid and braid-mtls
//! pairs, each carrying the training mix (braid_bench::training: traffic the benchmark does not
//! measure), DURATION per phase. On SIGTERM each proxy drains, exits and writes its counts
//! (LLVM_PROFILE_FILE); they are merged into proxy/pgo/braid-proxy.profdata.gz with the LLVM major
//! version that can read them (proxy/pgo/llvm-version).

use std::fs::{self, File};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use tracing::info;

use crate::run::{Bench, output};
use crate::tools;

pub fn run(b: &mut Bench) -> Result<()> {
    let peers = b.knobs.peers.clone();
    let raw = b.work.join("pgo-counts");
    fs::create_dir_all(&raw)?;
    b.llvm_profile_file = Some(raw.join("braid-proxy-%p.profraw").display().to_string());
    let mut pids = Vec::new();
    for &peer in &peers {
        b.start_pair(peer)?;
        let pair = b.pair(peer)?;
        pids.extend(pair.a.pids.iter().chain(&pair.b.pids).copied());
    }
    b.llvm_profile_file = None;
    for &peer in &peers {
        b.carry_training_mix(peer, &b.knobs.duration.clone())?;
    }
    b.stop_proxies(&pids)?;
    let mut counts: Vec<_> = fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    counts.sort();
    let complete =
        counts.len() == pids.len() && counts.iter().all(|c| fs::metadata(c).is_ok_and(|m| m.len() > 0));
    if !complete {
        bail!(
            "expected {} count files from the proxies in {}, found {:?}",
            pids.len(),
            raw.display(),
            counts
        );
    }
    let merged = b.work.join("braid-proxy.profdata");
    let profdata = b.tools.profdata.clone().context("llvm-profdata was not found")?;
    tools::run(Command::new(profdata).args(["merge", "--sparse", "-o"]).arg(&merged).args(&counts))?;
    let target = b.path("proxy/pgo/braid-proxy.profdata.gz");
    let status = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(&merged)
        .stdout(Stdio::from(File::create(&target)?))
        .status()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    let llvm = output("rustc", &["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: ").map(|v| v.split('.').next().unwrap_or("").to_string()))
        .context("rustc -vV names no LLVM version")?;
    fs::write(b.path("proxy/pgo/llvm-version"), format!("{llvm}\n"))?;
    // What it was recorded from: proxy/pgo/rustflags.sh warns once the sources differ.
    let sources = output("bash", &[&b.path("proxy/pgo/sources.sh").display().to_string()])?;
    fs::write(b.path("proxy/pgo/sources.sha256"), format!("{}\n", sources.trim()))?;
    info!(
        "wrote proxy/pgo/braid-proxy.profdata.gz ({} bytes) from {} proxies: rebuild braid-proxy, check it with \
         'braid-bench instructions', then 'make link-order', and commit",
        fs::metadata(&target)?.len(),
        counts.len()
    );
    Ok(())
}
