//! `braid-bench profile [PEER]`: samples the on-CPU stacks of proxy A and B of one pair (perf,
//! cpu-clock: a KVM guest may expose no hardware counters) while oha sends PROFILE_RATE req/s
//! for DURATION; bench/results/proxy-profile-PEER-<timestamp>.txt with the top functions.

use std::fs::{self, File};
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Result;
use braid_bench::settings::Peer;
use braid_bench::{load, perf};
use tracing::info;

use super::{result_prefix, with};
use crate::run::{Bench, CONNECTIONS, output};
use crate::tools;

/// Runs `perf report` on `data` (its text kept beside it) and gives its first `n` rows.
fn perf_top(data: &std::path::Path, n: usize, args: &[&str]) -> Result<Vec<String>> {
    let text = Command::new("perf")
        .args(["report", "-i"])
        .arg(data)
        .args(["--stdio", "-g", "none"])
        .args(args)
        .stderr(Stdio::null())
        .output()?
        .stdout;
    let text = String::from_utf8_lossy(&text).into_owned();
    fs::write(with(data, ".txt"), &text)?;
    Ok(perf::report_rows(&text, n))
}

pub fn run(b: &mut Bench, peer: Peer) -> Result<()> {
    b.start_pair(peer)?;
    let (url, pids_a, pids_b) = {
        let pair = b.pair(peer)?;
        (format!("http://127.0.0.1:{}/1k", pair.entry), pair.a.pids.clone(), pair.b.pids.clone())
    };
    let (rate, duration, warmup) = (b.knobs.profile_rate, b.knobs.duration.clone(), b.knobs.warmup.clone());
    let mut warm = b.oha_paced(&url, rate, &warmup);
    b.load_command(&mut warm, None)?;
    let mut recorders = Vec::new();
    for (side, pids) in [("a", &pids_a), ("b", &pids_b)] {
        // nginx: profile the worker (the master only waits); the others are one process.
        let pid = if pids.len() > 1 { pids[1] } else { pids[0] };
        let data = b.work.join(format!("perf-{side}.data"));
        let mut command = Command::new("taskset");
        command
            .args([
                "-c",
                "0",
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "1999",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .stderr(Stdio::from(File::create(b.work.join(format!("perf-{side}.log")))?));
        recorders.push(b.spawn_load(&mut command, None)?);
    }
    let before = (b.cpu_ticks(&pids_a)?, b.cpu_ticks(&pids_b)?);
    let oha_out = b.work.join("profile.oha.json");
    let mut paced = b.oha_paced(&url, rate, &duration);
    b.load_command(&mut paced, Some(&oha_out))?;
    let ticks = (b.cpu_ticks(&pids_a)? - before.0, b.cpu_ticks(&pids_b)? - before.1);
    let list: Vec<String> = recorders.iter().map(u32::to_string).collect();
    let mut args = vec!["-INT"];
    args.extend(list.iter().map(String::as_str));
    output("kill", &args)?;
    for pid in recorders {
        // perf exits non-zero when interrupted: what it wrote is what counts.
        let _ = b.finish_load(pid, "perf record");
    }
    let prefix = result_prefix(b, &format!("proxy-profile-{peer}"))?;
    let out = with(&prefix, ".txt");
    let versions = tools::versions(&b.root, &b.knobs, &b.tools);
    let r = load::parse_oha(&fs::read_to_string(&oha_out)?, &oha_out.display().to_string())?;
    let per = |t: u64| if r.ok > 0 { t as f64 / b.clk_tck as f64 / r.ok as f64 * 10_000.0 } else { f64::NAN };
    let latency = r.latency.unwrap_or_default();
    let mut text = vec![
        format!(
            "# {peer} pair, {rate} req/s for {duration} (oha -c {CONNECTIONS}, HTTP/1.1 → A → B → origin)"
        ),
        format!("# perf record -e cpu-clock -F 1999 --call-graph dwarf on each proxy; {versions}"),
        "# This KVM guest has no hardware counters: perf samples with a timer, and a sample that falls"
            .into(),
        "# while interrupts are off is charged where they are turned back on, so the kernel's".into(),
        "# finish_task_switch / _raw_spin_unlock_irq* rows stand for context switches, wake-ups and".into(),
        "# softirq (loopback TCP) work rather than for those functions.".into(),
        format!(
            "# {} ok at {:.0} req/s, {} non-2xx, {} errors; p50 {:.3} ms, p99 {:.3} ms (while profiled); CPU-s per 10k \
             requests A {:.2}, B {:.2} (perf's own overhead included)",
            r.ok,
            r.rps,
            r.non2xx,
            r.errors,
            latency.p50_ms.unwrap_or(f64::NAN),
            latency.p99_ms.unwrap_or(f64::NAN),
            per(ticks.0),
            per(ticks.1)
        ),
    ];
    for side in ["a", "b"] {
        let data = b.work.join(format!("perf-{side}.data"));
        let role = if side == "a" { "outbound" } else { "inbound" };
        text.push(String::new());
        text.push(format!("## proxy {side} ({role}): self time by crate / area"));
        perf_top(&data, 100_000, &["--no-children", "--sort", "sym", "--percent-limit", "0"])?;
        let all = fs::read_to_string(with(&data, ".txt"))?;
        for (name, pct) in perf::profile_crates(&all) {
            text.push(format!("  {pct:6.2}%  {name}"));
        }
        text.push(String::new());
        text.push(format!("## proxy {side}: self time by function (top 25)"));
        text.extend(perf_top(&data, 25, &["--no-children", "--sort", "sym", "--percent-limit", "0.2"])?);
        text.push(String::new());
        text.push(format!(
            "## proxy {side}: inclusive time (self + callees) by function (top 25; runtime and start-up frames left out)"
        ));
        let rows =
            perf_top(&data, 1000, &["--children", "--no-inline", "--sort", "sym", "--percent-limit", "3"])?;
        text.extend(rows.into_iter().filter(|r| !perf::is_scaffolding(r)).take(25));
    }
    let text = text.join("\n") + "\n";
    fs::write(&out, &text)?;
    std::io::stdout().write_all(text.as_bytes())?;
    info!("wrote {}", out.display());
    Ok(())
}
