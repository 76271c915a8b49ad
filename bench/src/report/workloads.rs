//! The workloads' report (bench/results/proxy-workloads-<timestamp>.json and .md): per workload
//! the runs and their medians, as the headline benchmark's; then braid against its targets in
//! every workload: CPU per request at or below HAProxy's, throughput at or above it, added p50
//! within 0.03 ms of the best peer's, and at most Linkerd's published proxy memory with the
//! large table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Entry, Run, Summary, is_direct, summarize};
use crate::Error;
use crate::stats::Stat;
use crate::thousands;

/// Linkerd's published proxy memory, the ceiling for braid A with the large table: 18 MB.
pub const MEMORY_TARGET_KIB: u64 = 18_000_000 / 1024;
/// How far braid's added p50 may be above the best peer's.
pub const P50_MARGIN_MS: f64 = 0.03;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub name: String,
    pub what: String,
    /// Of the paced runs.
    pub rate: u32,
    /// "direct", then the peers that carried it.
    pub scenarios: Vec<String>,
    /// Peer → why it did not carry this workload.
    pub not_offered: BTreeMap<String, String>,
    /// Peer → [[VmRSS, RssAnon] of A, of B], KiB, after one request.
    pub idle_kib: BTreeMap<String, [[u64; 2]; 2]>,
    pub summary: Summary,
    pub runs: Vec<Run>,
}

impl WorkloadResult {
    pub fn points(&self) -> [String; 2] {
        [self.rate.to_string(), "max".to_string()]
    }

    pub fn resummarize(&mut self) {
        self.summary = summarize(&self.runs, &self.scenarios, &self.points());
    }

    fn entry(&self, point: &str, scenario: &str) -> Option<&Entry> {
        self.summary.get(point).and_then(|p| p.get(scenario))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub timestamp: String,
    pub machine: String,
    pub versions: String,
    pub took_seconds: u64,
    pub knobs: String,
    pub runs: u32,
    pub workloads: Vec<WorkloadResult>,
}

impl WorkloadReport {
    pub fn from_json(text: &str, what: &str) -> Result<WorkloadReport, Error> {
        serde_json::from_str(text).map_err(|e| Error::parse(what, format!("not a workloads report: {e}")))
    }
}

fn stat(s: Option<Stat>, digits: usize) -> String {
    s.map_or("—".into(), |s| format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits))
}

fn added(e: Option<&Entry>, direct: Option<&Entry>, f: fn(&Entry) -> Option<Stat>) -> Option<f64> {
    Some(e.and_then(f)?.median - direct.and_then(f)?.median)
}

fn cpu_per_10k(e: Option<&Entry>) -> Option<f64> {
    let e = e?;
    Some(e.cpu_s_per_10k_a?.median + e.cpu_s_per_10k_b?.median)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn signed(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{v:.3}"),
        Some(v) => format!("{v:.3}"),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// How each peer kind's name reads: braid's own builds, and the peers it is held against.
fn is_braid(scenario: &str) -> bool {
    scenario == "braid" || scenario == "braid-mtls"
}

/// The peer braid is compared with over the same link: haproxy for braid, haproxy-mtls for
/// braid-mtls.
fn haproxy_for(braid: &str) -> String {
    braid.replacen("braid", "haproxy", 1)
}

/// One workload's table.
fn workload_markdown(w: &WorkloadResult) -> Vec<String> {
    let [rate, max] = w.points();
    let direct = w.entry(&rate, "direct");
    let mut lines = vec![
        format!("### `{}`: {}", w.name, w.what),
        String::new(),
        format!(
            "| scenario | added p50 / p99 at {rate}/s (ms) | CPU-s per 10k, A / B | closed loop, req/s (min–max) | \
             peak RSS A / B (MiB) | valid runs (paced, closed) |"
        ),
        "|---|---|---|---|---|---|".into(),
    ];
    for s in &w.scenarios {
        let paced = w.entry(&rate, s);
        let closed = w.entry(&max, s);
        let latency = if is_direct(s) {
            format!(
                "p50 {} / p99 {} (absolute)",
                stat(paced.and_then(|e| e.p50_ms), 3),
                stat(paced.and_then(|e| e.p99_ms), 3)
            )
        } else {
            format!(
                "{} / {}",
                signed(added(paced, direct, |e| e.p50_ms)),
                signed(added(paced, direct, |e| e.p99_ms))
            )
        };
        let cpu = match paced {
            Some(Entry { cpu_s_per_10k_a: Some(a), cpu_s_per_10k_b: Some(b), .. }) => {
                format!("{:.2} / {:.2}", a.median, b.median)
            }
            _ => "—".into(),
        };
        let rps = closed.and_then(|e| e.rps).map_or("—".into(), |s| {
            format!("{} ({}–{})", thousands(s.median, 0), thousands(s.min, 0), thousands(s.max, 0))
        });
        let peak =
            |e: Option<&Entry>| e.map(|e| (e.peak_vmrss_kib_a, e.peak_vmrss_kib_b)).unwrap_or((None, None));
        let (pa, pb) = peak(paced);
        let (ca, cb) = peak(closed);
        let memory =
            if is_direct(s) { "—".into() } else { format!("{} / {}", mib(pa.max(ca)), mib(pb.max(cb))) };
        let valid = |e: Option<&Entry>| e.map_or("0/0".into(), |e| format!("{}/{}", e.valid, e.runs));
        let saturated = paced.map_or(0, |e| e.saturated_runs);
        let note = if saturated > 0 { format!(", {saturated} saturated") } else { String::new() };
        lines.push(format!(
            "| {s} | {latency} | {cpu} | {rps} | {memory} | {}, {}{note} |",
            valid(paced),
            valid(closed)
        ));
    }
    for (peer, why) in &w.not_offered {
        lines.push(format!("| {peer} | not offered: {why} | | | | |"));
    }
    lines.push(String::new());
    lines
}

/// braid against its targets, per workload and link.
fn targets_markdown(report: &WorkloadReport) -> Vec<String> {
    let mut lines = vec![
        "## braid against the targets".into(),
        String::new(),
        format!(
            "CPU is A + B per request at the paced rate; throughput is the closed loop; both against HAProxy over \
             the same link. Added p50 is against the best peer's (lowest added p50 of HAProxy, Envoy, nginx over \
             the same link), aim ≤ {P50_MARGIN_MS} ms above it. Memory: braid A's peak VmRSS with the large table, \
             aim ≤ 18 MB. Medians of the valid runs."
        ),
        String::new(),
        "| workload | braid | CPU ÷ HAProxy | throughput ÷ HAProxy | added p50 − best peer's (ms) | verdict |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    for w in &report.workloads {
        let [rate, max] = w.points();
        let direct = w.entry(&rate, "direct");
        for braid in w.scenarios.iter().filter(|s| is_braid(s)) {
            let haproxy = haproxy_for(braid);
            let mtls = braid.ends_with("-mtls");
            let has_haproxy = w.scenarios.contains(&haproxy);
            let cpu = has_haproxy
                .then(|| ratio(cpu_per_10k(w.entry(&rate, braid)), cpu_per_10k(w.entry(&rate, &haproxy))))
                .flatten();
            let rps = |s: &str| w.entry(&max, s).and_then(|e| e.rps).map(|s| s.median);
            let tput = has_haproxy.then(|| ratio(rps(braid), rps(&haproxy))).flatten();
            let ours = added(w.entry(&rate, braid), direct, |e| e.p50_ms);
            let best = w
                .scenarios
                .iter()
                .filter(|s| !is_direct(s) && !s.starts_with("braid") && s.ends_with("-mtls") == mtls)
                .filter(|s| !matches!(s.as_str(), "floor" | "splice"))
                .filter_map(|s| added(w.entry(&rate, s), direct, |e| e.p50_ms).map(|v| (s.clone(), v)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let gap = ours.zip(best.as_ref().map(|b| b.1)).map(|(o, b)| o - b);
            let mut misses = Vec::new();
            let mut checks = Vec::new();
            if let Some(c) = cpu {
                checks.push(c <= 1.0);
                if c > 1.0 {
                    misses.push("CPU");
                }
            }
            if let Some(t) = tput {
                checks.push(t >= 1.0);
                if t < 1.0 {
                    misses.push("throughput");
                }
            }
            if let Some(g) = gap {
                checks.push(g <= P50_MARGIN_MS);
                if g > P50_MARGIN_MS {
                    misses.push("p50");
                }
            }
            let met = if checks.is_empty() { None } else { Some(checks.iter().all(|c| *c)) };
            let verdict = match met {
                Some(false) => format!("**missed**: {}", misses.join(", ")),
                other => verdict(other).to_string(),
            };
            let gap_text = match (&best, gap) {
                (Some((peer, _)), Some(g)) => format!("{} (best: {peer})", signed(Some(g))),
                _ => "—".into(),
            };
            let r = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2}×"));
            lines.push(format!(
                "| {} | {braid} | {} | {} | {gap_text} | {verdict} |",
                w.name,
                r(cpu),
                r(tput)
            ));
        }
    }
    lines.push(String::new());
    if let Some(table) = report.workloads.iter().find(|w| w.name == "table") {
        let peak = |s: &str| {
            table.points().iter().filter_map(|p| table.entry(p, s).and_then(|e| e.peak_vmrss_kib_a)).max()
        };
        let idle = |s: &str| table.idle_kib.get(s).map(|k| k[0][0]);
        lines.push(format!(
            "Memory with the large table: braid A {} MiB idle, {} MiB at its peak ({}); HAProxy A {} MiB idle, {} MiB \
             at its peak.",
            mib(idle("braid")),
            mib(peak("braid")),
            verdict(peak("braid").map(|k| k <= MEMORY_TARGET_KIB)),
            mib(idle("haproxy")),
            mib(peak("haproxy")),
        ));
        lines.push(String::new());
    }
    lines
}

pub fn workloads_markdown(report: &WorkloadReport) -> String {
    let mut lines = vec![
        format!("# Sidecar pair benchmark, more workloads, {}", report.timestamp),
        String::new(),
        format!(
            "client ──▶ proxy A ──HTTP/2──▶ proxy B ──▶ origin, as in the headline benchmark (one worker per proxy \
             on CPU 1; load generator and origin on CPU 0); the origin is nginx, or braid-testapps' grpc-echo for \
             the gRPC workloads (HTTP/2 from B). {} interleaved runs per point, in each workload the scenarios \
             one after another within a run; each cell: median (min–max) of the valid runs. Added latency is over \
             `direct` (the client straight to the origin) in the same workload.",
            report.runs
        ),
        String::new(),
        format!(
            "Settings: `{}`. Versions: {}. Machine: {}. Took {:.1} min.",
            report.knobs,
            report.versions,
            report.machine,
            report.took_seconds as f64 / 60.0
        ),
        String::new(),
    ];
    lines.extend(targets_markdown(report));
    lines.push("## The workloads".into());
    lines.push(String::new());
    for w in &report.workloads {
        lines.extend(workload_markdown(w));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{closed, meta, paced};
    use super::super::load_run;
    use super::*;

    fn result(name: &str, figures: &[(&str, f64, f64, u64)]) -> WorkloadResult {
        let mut runs = Vec::new();
        for run in 1..=3 {
            for (s, p50, rps, ticks) in figures {
                let mut m = meta(s, "1000", run);
                m.cpu_ticks = [*ticks, *ticks];
                runs.push(load_run(&m, &paced(10_000, *p50, 2.0 * p50)).expect("loads"));
                runs.push(load_run(&meta(s, "max", run), &closed(*rps)).expect("loads"));
            }
        }
        let mut w = WorkloadResult {
            name: name.into(),
            what: "w".into(),
            rate: 1000,
            scenarios: figures.iter().map(|f| f.0.to_string()).collect(),
            not_offered: [("nginx".to_string(), "no gRPC".to_string())].into_iter().collect(),
            idle_kib: [("braid".to_string(), [[9000, 3000], [9000, 3000]])].into_iter().collect(),
            summary: Summary::new(),
            runs,
        };
        w.resummarize();
        w
    }

    fn report(workloads: Vec<WorkloadResult>) -> WorkloadReport {
        WorkloadReport {
            timestamp: "20261207T230000Z".into(),
            machine: "m".into(),
            versions: "v".into(),
            took_seconds: 60,
            knobs: "RUNS=3".into(),
            runs: 3,
            workloads,
        }
    }

    #[test]
    fn braid_is_held_to_haproxys_cpu_and_throughput_and_the_best_peers_p50() {
        let met = result(
            "c1000",
            &[
                ("direct", 0.10, 60_000.0, 0),
                ("braid", 0.30, 40_000.0, 100),
                ("haproxy", 0.31, 35_000.0, 150),
                ("envoy", 0.28, 20_000.0, 300),
            ],
        );
        let missed = result(
            "1m-up",
            &[("direct", 0.10, 600.0, 0), ("braid", 0.50, 400.0, 200), ("haproxy", 0.30, 500.0, 150)],
        );
        let md = workloads_markdown(&report(vec![met, missed]));
        // braid +0.200 against envoy's +0.180: within 0.03 ms.
        assert!(md.contains("| c1000 | braid | 0.67× | 1.14× | +0.020 (best: envoy) | met |"), "{md}");
        assert!(md.contains("| 1m-up | braid | 1.33× | 0.80× | +0.200 (best: haproxy) | **missed**: CPU, throughput, p50 |"), "{md}");
        assert!(md.contains("| nginx | not offered: no gRPC |"), "{md}");
        assert!(md.contains("| direct | p50 0.100 (0.100–0.100) / p99 0.200"), "{md}");
    }

    #[test]
    fn the_table_workload_reports_braids_memory_against_the_aim() {
        let mut table =
            result("table", &[("direct", 0.1, 1.0, 0), ("braid", 0.2, 1.0, 10), ("haproxy", 0.2, 1.0, 10)]);
        let md = workloads_markdown(&report(vec![table.clone()]));
        // The fixture's peak VmRSS of A is 5,000 KiB.
        assert!(md.contains("braid A 8.8 MiB idle, 4.9 MiB at its peak (met)"), "{md}");
        for run in &mut table.runs {
            if let Some(peak) = run.peak_kib.as_mut() {
                peak[0].vmrss = 20_000;
            }
        }
        table.resummarize();
        let md = workloads_markdown(&report(vec![table]));
        assert!(md.contains("19.5 MiB at its peak (**missed**)"), "{md}");
    }

    #[test]
    fn a_report_survives_json_and_a_broken_one_is_refused() {
        let r = report(vec![result("64k-down", &[("direct", 0.1, 1.0, 0), ("braid", 0.2, 1.0, 10)])]);
        let text = serde_json::to_string(&r).expect("serializes");
        assert_eq!(WorkloadReport::from_json(&text, "w.json").expect("reads"), r);
        let error = WorkloadReport::from_json(&text[..text.len() / 2], "w.json").expect_err("cut");
        assert!(error.to_string().starts_with("w.json: not a workloads report"), "{error}");
        // Without HAProxy there is nothing to hold braid to: said, not guessed.
        assert!(workloads_markdown(&r).contains("| 64k-down | braid | — | — | — | not measured |"));
    }
}
