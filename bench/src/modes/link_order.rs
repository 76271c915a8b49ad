//! `make link-order`: the functions braid-proxy runs, in the order the linker should lay them
//! out (proxy/build.rs): those of start-up and the first request through each pair, then those
//! that only load adds: the training mix (braid_bench::training), as for `make pgo`. Both pairs run under callgrind (exact: every function that ran, however
//! briefly); each proxy's record is dumped once after its pair is up and once more when SIGTERM
//! has drained and stopped it.

use std::fs;

use anyhow::{Context, Result};
use braid_bench::{callgrind, link_order};
use tracing::info;

use crate::run::{Bench, output, run_ok};

pub fn run(b: &mut Bench) -> Result<()> {
    let peers = b.knobs.peers.clone();
    let mut pids = Vec::new();
    for &peer in &peers {
        b.start_pair(peer)?;
        let pair = b.pair(peer)?;
        pids.extend(pair.a.pids.iter().chain(&pair.b.pids).copied());
    }
    for pid in &pids {
        run_ok("callgrind_control", &["--dump", &pid.to_string()])
            .with_context(|| format!("callgrind_control could not dump {pid}"))?;
    }
    for &peer in &peers {
        b.carry_training_mix(peer, "5s")?;
        let pair = b.pair(peer)?;
        let admins: Vec<u16> = [pair.a.admin, pair.b.admin].into_iter().flatten().collect();
        for admin in admins {
            for path in ["metrics", "live"] {
                run_ok("curl", &["-fs", "-o", "/dev/null", &format!("http://127.0.0.1:{admin}/{path}")])?;
            }
        }
        b.alive(peer)?;
    }
    b.stop_proxies(&pids)?; // each drains and exits, and callgrind writes its final record
    // The dumps after the first request (.1) first, then the final records.
    let mut records = Vec::new();
    for record in ["callgrind.out.1", "callgrind.out"] {
        for &peer in &peers {
            for side in ["a", "b"] {
                let path = b.work.join(format!("{peer}-{side}/{record}"));
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("no callgrind record {}", path.display()))?;
                records.push(callgrind::parse(&text, &path.display().to_string())?);
            }
        }
    }
    let binary = fs::canonicalize(&b.tools.braid)?;
    let binary_name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("braid-proxy").to_string();
    let code = link_order::code_symbols(&output("nm", &["--defined-only", &binary.display().to_string()])?);
    let order = link_order::order(&binary_name, &code, &records);
    let rustc = output("rustc", &["--version"])?;
    let commit = output("git", &["-C", &b.root.display().to_string(), "rev-parse", "--short", "HEAD"])?;
    let text = link_order::render(&order, &format!("{}, commit {}", rustc.trim(), commit.trim()))?;
    fs::write(b.path("proxy/link-order.txt"), text)?;
    let sources = output("bash", &[&b.path("proxy/pgo/sources.sh").display().to_string()])?;
    fs::write(b.path("proxy/link-order.sha256"), format!("{}\n", sources.trim()))?;
    info!(
        "wrote proxy/link-order.txt ({} functions): rebuild braid-proxy (cargo build --profile proxy -p braid-proxy) and commit it",
        order.len()
    );
    Ok(())
}
