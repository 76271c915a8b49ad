//! `braid-bench costs`: where each request's CPU goes, per proxy, for COST_PEERS side by side:
//! user and system CPU per request (/proc/PID/stat), context switches and system calls per
//! request (perf stat: a software event and the syscall tracepoints, which count exactly), at
//! PROFILE_RATE req/s (oha, DURATION) and in the closed loop (wrk, WRK_DURATION); RUNS runs,
//! interleaved, medians: bench/results/proxy-costs-<timestamp>.md and .json.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;
use braid_bench::perf::{self, Cost};
use braid_bench::{load, system};
use tracing::{info, warn};

use super::{result_prefix, with};
use crate::run::{Bench, output};
use crate::tools;

const CALLS: [&str; 10] = [
    "epoll_wait",
    "epoll_pwait",
    "recvfrom",
    "read",
    "readv",
    "recvmsg",
    "writev",
    "write",
    "sendto",
    "sendmsg",
];

pub fn run(b: &mut Bench) -> Result<()> {
    let peers = b.knobs.peers.clone();
    for &peer in &peers {
        b.start_pair(peer)?;
    }
    let mut events = "context-switches,raw_syscalls:sys_enter".to_string();
    for call in CALLS {
        events += &format!(",syscalls:sys_enter_{call}");
    }
    let rate = b.knobs.profile_rate;
    let points = [rate.to_string(), "max".to_string()];
    info!("costs: {} × ({rate} req/s, closed loop) × {} runs, interleaved", peers.len(), b.knobs.runs);
    let mut rows: BTreeMap<(String, String, String), Vec<Cost>> = BTreeMap::new();
    for run in 1..=b.knobs.runs {
        for point in &points {
            for &peer in &peers {
                let (url, pids_a, pids_b) = {
                    let pair = b.pair(peer)?;
                    (format!("http://127.0.0.1:{}/1k", pair.entry), pair.a.pids.clone(), pair.b.pids.clone())
                };
                let prefix = b.work.join(format!("runs/costs-{point}-{peer}-{run}"));
                let warmup = b.knobs.warmup.clone();
                let mut warm = b.oha_paced(&url, rate, &warmup);
                b.load_command(&mut warm, None)?;
                let mut stats = Vec::new();
                for (side, pids) in [("a", &pids_a), ("b", &pids_b)] {
                    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                    let mut command = Command::new("taskset");
                    command
                        .args(["-c", "0", "perf", "stat", "-x,", "-e", &events, "-p", &list.join(","), "-o"])
                        .arg(with(&prefix, &format!(".perf-{side}.csv")))
                        .stderr(Stdio::from(File::create(with(&prefix, &format!(".perf-{side}.log")))?));
                    stats.push(b.spawn_load(&mut command, None)?);
                }
                sleep(Duration::from_millis(200)); // perf attached
                let before = (b.cpu_split(&pids_a)?, b.cpu_split(&pids_b)?);
                let (mut command, out) = if point == "max" {
                    (b.wrk(&url, &b.knobs.wrk_duration.clone()), with(&prefix, ".wrk.txt"))
                } else {
                    (b.oha_paced(&url, rate, &b.knobs.duration.clone()), with(&prefix, ".oha.json"))
                };
                b.load_command(&mut command, Some(&out))?;
                let after = (b.cpu_split(&pids_a)?, b.cpu_split(&pids_b)?);
                let list: Vec<String> = stats.iter().map(u32::to_string).collect();
                let mut args = vec!["-INT"];
                args.extend(list.iter().map(String::as_str));
                output("kill", &args)?;
                for pid in stats {
                    let _ = b.finish_load(pid, "perf stat");
                }
                b.alive(peer)?;
                let text = fs::read_to_string(&out)?;
                let what = out.display().to_string();
                let load = if point == "max" {
                    load::parse_wrk(&text, &what)?
                } else {
                    load::parse_oha(&text, &what)?
                };
                if load.ok == 0 || load.non2xx > 0 || load.errors > 0 {
                    warn!("costs: {what}: {} non-2xx, {} errors: left out", load.non2xx, load.errors);
                    continue;
                }
                for (side, t0, t1) in [("a", before.0, after.0), ("b", before.1, after.1)] {
                    let counts = perf::parse_perf_stat(&fs::read_to_string(with(
                        &prefix,
                        &format!(".perf-{side}.csv"),
                    ))?);
                    let cost = Cost::new(load.rps, (t1.0 - t0.0, t1.1 - t0.1), b.clk_tck, &counts, load.ok)?;
                    rows.entry((point.clone(), peer.to_string(), side.to_string())).or_default().push(cost);
                }
                info!("  run {run}  {point}  {peer} done");
            }
        }
    }
    let versions = tools::versions(&b.root, &b.knobs, &b.tools);
    let machine = system::machine(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let (md, summary) = perf::costs_markdown(&versions, &machine, &rows);
    let prefix = result_prefix(b, "proxy-costs")?;
    let raw: BTreeMap<String, &Vec<Cost>> =
        rows.iter().map(|((p, q, s), v)| (format!("{p}/{q}/{s}"), v)).collect();
    let json = serde_json::json!({"versions": versions, "summary": summary, "rows": raw});
    fs::write(with(&prefix, ".json"), serde_json::to_string_pretty(&json)?)?;
    fs::write(with(&prefix, ".md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    info!("wrote {} and .json", with(&prefix, ".md").display());
    Ok(())
}
