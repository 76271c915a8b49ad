//! Instructions per request (third part of `make bench`): each pair under callgrind, warmed up,
//! its counters zeroed, then INSTRUCTION_REQUESTS requests in the closed loop (oha), then a dump;
//! bench/results/proxy-instructions-<timestamp>.md and .json.

use std::fs;
use std::io::Write;

use anyhow::{Result, bail};
use braid_bench::instructions::{self, Report};
use braid_bench::{callgrind, load};
use tracing::info;

use super::{result_prefix, with};
use crate::run::{Bench, run_ok};
use crate::tools;

fn callgrind_control(action: &str, pids: &[u32]) -> Result<()> {
    for pid in pids {
        run_ok("callgrind_control", &[action, &pid.to_string()])
            .map_err(|e| anyhow::anyhow!("callgrind_control {action} could not reach {pid}: {e}"))?;
    }
    Ok(())
}

pub fn run(b: &mut Bench) -> Result<()> {
    let peers = b.knobs.peers.clone();
    let requests = b.knobs.instruction_requests;
    for &peer in &peers {
        b.start_pair(peer)?;
    }
    for &peer in &peers {
        let pair = b.pair(peer)?;
        let url = format!("http://127.0.0.1:{}/1k", pair.entry);
        let pids: Vec<u32> = pair.a.pids.iter().chain(&pair.b.pids).copied().collect();
        let mut warm = b.oha_closed(&url, 500, false);
        b.load_command(&mut warm, None)?;
        callgrind_control("--zero", &pids)?;
        let out = b.work.join(format!("{peer}.oha.json"));
        let mut measured = b.oha_closed(&url, requests, true);
        b.load_command(&mut measured, Some(&out))?;
        callgrind_control("--dump", &pids)?;
        b.alive(peer)?;
    }
    let mut results = Vec::new();
    for &peer in &peers {
        let path = b.work.join(format!("{peer}.oha.json"));
        let load = load::parse_oha(&fs::read_to_string(&path)?, &path.display().to_string())?;
        if (load.ok, load.non2xx, load.errors) != (requests, 0, 0) {
            bail!(
                "no instructions report: {peer}: {} of {requests} requests answered 2xx ({} other answers, {} errors: {:?})",
                load.ok,
                load.non2xx,
                load.errors,
                load.error_kinds
            );
        }
        for side in ["a", "b"] {
            let record = b.work.join(format!("{peer}-{side}/callgrind.out.1"));
            let costs = callgrind::parse(&fs::read_to_string(&record)?, &record.display().to_string())?;
            results.push(instructions::summarize(&peer.to_string(), &side.to_uppercase(), &costs, requests));
        }
    }
    let ratios = instructions::ratios(&results);
    let report = Report { requests, versions: tools::versions(&b.root, &b.knobs, &b.tools), results, ratios };
    let prefix = result_prefix(b, "proxy-instructions")?;
    fs::write(with(&prefix, ".json"), serde_json::to_string_pretty(&report)?)?;
    let md = instructions::markdown(&report);
    fs::write(with(&prefix, ".md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    info!("wrote {} and .json", with(&prefix, ".md").display());
    Ok(())
}
