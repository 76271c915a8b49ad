//! The pair benchmark's report: each run from its raw figures, the medians per rate and
//! scenario, and the Markdown tables (bench/results/proxy-<timestamp>.md and .json).
//!
//! Here: the runs, their medians and the [`Report`]; `markdown` renders it, `handshakes` adds
//! the section on new mTLS connections.

mod floor;
mod handshakes;
mod markdown;
mod workloads;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::load::Load;
use crate::pods;
use crate::stats::Stat;

pub use floor::{floor_markdown, floors_of};
pub use handshakes::{handshake_rate, handshakes_markdown};
pub use markdown::{markdown, ratio_rows};
pub use workloads::{WorkloadReport, WorkloadResult, workloads_markdown};

/// What the driver records around one load generator run (its .meta.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub scenario: String,
    /// A rate in req/s, or "max" (the closed loop).
    pub point: String,
    pub run: u32,
    pub ms: u64,
    pub clk_tck: u64,
    /// CPU ticks of proxy A and B (all their processes) over the run.
    pub cpu_ticks: [u64; 2],
    /// Highest (VmRSS, RssAnon) KiB sampled of A and of B.
    pub peak_kib: [[u64; 2]; 2],
    /// CPU 1's counters (user nice system idle iowait irq softirq steal) before and after.
    pub cpu1_before: [u64; 8],
    pub cpu1_after: [u64; 8],
    pub loadavg: String,
    pub a_to_b_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cpu1Pct {
    pub other_processes: f64,
    pub irq_softirq: f64,
    pub steal: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeakKib {
    pub vmrss: u64,
    pub rss_anon: u64,
}

/// One run as the report keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub scenario: String,
    pub point: String,
    pub run: u32,
    /// "paced" or "closed".
    pub kind: String,
    pub seconds: f64,
    pub ok: u64,
    pub non2xx: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kinds: Option<BTreeMap<String, u64>>,
    pub rps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    pub valid: bool,
    pub invalid_because: Vec<String>,
    pub saturated: bool,
    pub cpu1_pct: Cpu1Pct,
    pub loadavg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_10k: Option<[Option<f64>; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_kib: Option<[PeakKib; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_to_b_connections: Option<u32>,
}

/// One run from what the driver recorded and what the load generator said.
pub fn load_run(meta: &RunMeta, load: &Load) -> Result<Run, Error> {
    let what = format!("run {} {} {}", meta.run, meta.point, meta.scenario);
    let paced = meta.point != "max";
    let rate: Option<f64> = if paced {
        Some(meta.point.parse().map_err(|_| {
            Error::parse(&what, format!("point {:?} is neither a rate nor \"max\"", meta.point))
        })?)
    } else {
        None
    };
    if meta.clk_tck == 0 || meta.ms == 0 {
        return Err(Error::parse(&what, "no clock ticks per second or no duration recorded"));
    }
    let mut reasons = Vec::new();
    if load.errors > 0 {
        reasons.push(format!("{} errors", load.errors));
    }
    if load.non2xx > 0 {
        reasons.push(format!("{} non-2xx", load.non2xx));
    }
    if load.ok == 0 {
        reasons.push("no successful request".to_string());
    }
    let tck = meta.clk_tck as f64;
    let delta: Vec<f64> = (0..8).map(|i| meta.cpu1_after[i] as f64 - meta.cpu1_before[i] as f64).collect();
    let (user, nice, system, irq, softirq, steal) =
        (delta[0], delta[1], delta[2], delta[5], delta[6], delta[7]);
    let elapsed = meta.ms as f64 / 1000.0 * tck;
    let pair_ticks = (meta.cpu_ticks[0] + meta.cpu_ticks[1]) as f64;
    let latency = load.latency.unwrap_or_default();
    let direct = is_direct(&meta.scenario);
    let ok = load.ok as f64;
    Ok(Run {
        scenario: meta.scenario.clone(),
        point: meta.point.clone(),
        run: meta.run,
        kind: if paced { "paced" } else { "closed" }.into(),
        seconds: meta.ms as f64 / 1000.0,
        ok: load.ok,
        non2xx: load.non2xx,
        errors: load.errors,
        error_kinds: paced.then(|| load.error_kinds.clone()),
        rps: load.rps,
        p50_ms: latency.p50_ms,
        p90_ms: latency.p90_ms,
        p99_ms: latency.p99_ms,
        p999_ms: latency.p999_ms,
        max_ms: latency.max_ms,
        valid: reasons.is_empty(),
        invalid_because: reasons,
        // Paced load the path could not keep up with: latency is then queueing, still reported.
        saturated: rate.is_some_and(|r| load.rps < 0.95 * r),
        // CPU 1 runs only the proxies: time of other processes there and hypervisor steal tell
        // how noisy the run was.
        cpu1_pct: Cpu1Pct {
            other_processes: (100.0 * (user + nice + system - pair_ticks) / elapsed).max(0.0),
            irq_softirq: 100.0 * (irq + softirq) / elapsed,
            steal: 100.0 * steal / elapsed,
        },
        loadavg: meta.loadavg.clone(),
        cpu_s_per_10k: (!direct)
            .then(|| meta.cpu_ticks.map(|t| (load.ok > 0).then(|| t as f64 / tck / ok * 10_000.0))),
        cpu_s: (!direct).then(|| meta.cpu_ticks.map(|t| t as f64 / tck)),
        peak_kib: (!direct).then(|| meta.peak_kib.map(|[vmrss, rss_anon]| PeakKib { vmrss, rss_anon })),
        a_to_b_connections: (!direct).then_some(meta.a_to_b_connections),
    })
}

/// The progress line of one run.
pub fn line(r: &Run) -> String {
    let mut what = format!("run {} {:>5} {:<8}", r.run, r.point, r.scenario);
    if r.kind == "paced" {
        let f = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        what += &format!(" p50 {} p99 {} p99.9 {} ms", f(r.p50_ms), f(r.p99_ms), f(r.p999_ms));
    } else {
        what += &format!(" {:8.0} req/s", r.rps);
    }
    if let Some([Some(a), Some(b)]) = r.cpu_s_per_10k {
        what += &format!(" cpu/10k A {a:.2} B {b:.2} s");
    }
    what += &format!(" (CPU 1 other {:.0}%, steal {:.0}%)", r.cpu1_pct.other_processes, r.cpu1_pct.steal);
    if r.saturated {
        what += &format!(" SATURATED ({:.0} req/s)", r.rps);
    }
    if !r.valid {
        what += &format!(" INVALID: {}", r.invalid_because.join(", "));
    }
    what
}

/// The medians of one scenario at one point.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Entry {
    pub runs: usize,
    pub valid: usize,
    pub saturated_runs: usize,
    pub rps: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<Stat>,
    pub cpu1_other_pct: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_cpu_pct: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_to_b_connections_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_10k_a: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_10k_b: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_vmrss_kib_a: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_vmrss_kib_b: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_anon_kib_a: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_anon_kib_b: Option<u64>,
}

/// The scenarios measured beside `peers`: `direct`, and `direct-redirect` when a peer runs on
/// the redirect path (its baseline: the same veth hop between the pods, no proxy), then the peers.
pub fn scenarios_of(peers: &[String]) -> Vec<String> {
    let redirect = peers.iter().any(|p| pods::on_redirect_path(p));
    let mut scenarios = vec!["direct".to_string()];
    if redirect {
        scenarios.push(pods::DIRECT.to_string());
    }
    scenarios.extend(peers.iter().cloned());
    scenarios
}

/// `direct` or `direct-redirect`: no proxy, the client straight to the origin.
pub fn is_direct(scenario: &str) -> bool {
    scenario == "direct" || scenario == pods::DIRECT
}

/// point → scenario → medians.
pub type Summary = BTreeMap<String, BTreeMap<String, Entry>>;

pub fn summarize(runs: &[Run], scenarios: &[String], points: &[String]) -> Summary {
    let mut out = Summary::new();
    for point in points {
        for s in scenarios {
            let rs: Vec<&Run> = runs.iter().filter(|r| &r.point == point && &r.scenario == s).collect();
            let ok: Vec<&Run> = rs.iter().copied().filter(|r| r.valid).collect();
            let stat = |f: fn(&Run) -> Option<f64>| Stat::of(ok.iter().map(|r| f(r)));
            let paced = point != "max";
            let mut e = Entry {
                runs: rs.len(),
                valid: ok.len(),
                saturated_runs: ok.iter().filter(|r| r.saturated).count(),
                rps: stat(|r| Some(r.rps)),
                cpu1_other_pct: Stat::of(rs.iter().map(|r| Some(r.cpu1_pct.other_processes))),
                ..Entry::default()
            };
            if paced {
                e.p50_ms = stat(|r| r.p50_ms);
                e.p90_ms = stat(|r| r.p90_ms);
                e.p99_ms = stat(|r| r.p99_ms);
                e.p999_ms = stat(|r| r.p999_ms);
                e.max_ms = stat(|r| r.max_ms);
            }
            if !is_direct(s) {
                e.pair_cpu_pct = stat(|r| r.cpu_s.map(|c| 100.0 * (c[0] + c[1]) / r.seconds));
                e.a_to_b_connections_max = rs.iter().filter_map(|r| r.a_to_b_connections).max();
                e.cpu_s_per_10k_a = stat(|r| r.cpu_s_per_10k.and_then(|c| c[0]));
                e.cpu_s_per_10k_b = stat(|r| r.cpu_s_per_10k.and_then(|c| c[1]));
                let peak =
                    |f: fn(&[PeakKib; 2]) -> u64| rs.iter().filter_map(|r| r.peak_kib.as_ref().map(f)).max();
                e.peak_vmrss_kib_a = peak(|p| p[0].vmrss);
                e.peak_vmrss_kib_b = peak(|p| p[1].vmrss);
                e.peak_rss_anon_kib_a = peak(|p| p[0].rss_anon);
                e.peak_rss_anon_kib_b = peak(|p| p[1].rss_anon);
            }
            out.entry(point.clone()).or_default().insert(s.clone(), e);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub knobs: String,
    pub runs: u32,
    pub duration: String,
    pub wrk_duration: String,
    pub connections: u32,
}

/// The whole report (the .json); the .md is rendered from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub timestamp: String,
    pub machine: String,
    pub versions: String,
    pub took_seconds: u64,
    pub settings: Settings,
    pub peers: Vec<String>,
    pub rates: Vec<String>,
    /// peer → [[VmRSS, RssAnon] of A, [VmRSS, RssAnon] of B], KiB, after one request.
    pub idle_kib: BTreeMap<String, [[u64; 2]; 2]>,
    pub summary: Summary,
    pub runs: Vec<Run>,
}

impl Report {
    pub fn points(&self) -> Vec<String> {
        self.rates.iter().cloned().chain(["max".to_string()]).collect()
    }

    pub fn scenarios(&self) -> Vec<String> {
        scenarios_of(&self.peers)
    }

    /// Recomputes the summary from the runs (after a change to how it is computed).
    pub fn resummarize(&mut self) {
        self.summary = summarize(&self.runs, &self.scenarios(), &self.points());
    }

    /// Reads a stored .json report.
    pub fn from_json(text: &str, what: &str) -> Result<Report, Error> {
        serde_json::from_str(text)
            .map_err(|e| Error::parse(what, format!("not a pair benchmark report: {e}")))
    }
}

/// Runs and reports the tests of the report's modules are made of.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::load::{Latency, Load};

    pub fn meta(scenario: &str, point: &str, run: u32) -> RunMeta {
        RunMeta {
            scenario: scenario.into(),
            point: point.into(),
            run,
            ms: 10_000,
            clk_tck: 100,
            cpu_ticks: [300, 200],
            peak_kib: [[5000, 700], [6000, 900]],
            cpu1_before: [0; 8],
            // user 400 + system 200 ticks over 1,000 elapsed: 60 %, the pair took 50 %: others 10 %.
            cpu1_after: [400, 0, 200, 400, 0, 0, 0, 10],
            loadavg: "0.50 0.40 0.30".into(),
            a_to_b_connections: 1,
        }
    }

    pub fn paced(ok: u64, p50: f64, p99: f64) -> Load {
        Load {
            ok,
            non2xx: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            rps: ok as f64 / 10.0,
            latency: Some(Latency {
                p50_ms: Some(p50),
                p90_ms: Some(p50),
                p99_ms: Some(p99),
                p999_ms: Some(p99),
                max_ms: Some(p99),
            }),
        }
    }

    pub fn closed(rps: f64) -> Load {
        Load {
            ok: (rps * 10.0) as u64,
            non2xx: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            rps,
            latency: None,
        }
    }

    pub fn report() -> Report {
        let peers = vec!["braid".to_string(), "haproxy".to_string()];
        let mut runs = Vec::new();
        for run in 1..=3 {
            for (s, p50, rps) in
                [("direct", 0.05, 60_000.0), ("braid", 0.25, 35_000.0), ("haproxy", 0.30, 30_000.0)]
            {
                let p50 = p50 + 0.001 * run as f64;
                runs.push(load_run(&meta(s, "1000", run), &paced(10_000, p50, 2.0 * p50)).expect("loads"));
                runs.push(load_run(&meta(s, "max", run), &closed(rps + run as f64)).expect("loads"));
            }
        }
        let mut bad = paced(10_000, 9.0, 9.0);
        bad.errors = 1;
        bad.error_kinds.insert("connection reset".into(), 1);
        runs.push(load_run(&meta("braid", "1000", 4), &bad).expect("loads"));
        let mut report = Report {
            timestamp: "20261204T170000Z".into(),
            machine: "AMD EPYC, 2 CPUs".into(),
            versions: "oha 1.8".into(),
            took_seconds: 90,
            settings: Settings {
                knobs: "RUNS=3".into(),
                runs: 3,
                duration: "15s".into(),
                wrk_duration: "10s".into(),
                connections: 16,
            },
            peers: peers.clone(),
            rates: vec!["1000".into()],
            idle_kib: [
                ("braid".to_string(), [[5120, 700], [5120, 700]]),
                ("haproxy".to_string(), [[14336, 3600], [14336, 3600]]),
            ]
            .into_iter()
            .collect(),
            summary: Summary::new(),
            runs,
        };
        report.resummarize();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{meta, paced, report};
    use super::*;

    #[test]
    fn a_run_gives_cpu_per_request_noise_and_validity() {
        let run = load_run(&meta("braid", "1000", 1), &paced(10_000, 0.2, 0.5)).expect("loads");
        assert!(run.valid);
        assert!(!run.saturated);
        let [Some(a), Some(b)] = run.cpu_s_per_10k.expect("a pair") else { panic!("no CPU per request") };
        assert!((a - 3.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9, "{a} {b}");
        assert!((run.cpu1_pct.other_processes - 10.0).abs() < 1e-9);
        assert!((run.cpu1_pct.steal - 1.0).abs() < 1e-9);
        let mut bad = paced(9000, 0.2, 0.5);
        bad.errors = 3;
        bad.non2xx = 1;
        let run = load_run(&meta("braid", "1000", 1), &bad).expect("loads");
        assert!(!run.valid);
        assert!(run.saturated, "900 req/s of 1,000");
        assert_eq!(run.invalid_because, ["3 errors", "1 non-2xx"]);
        assert!(line(&run).ends_with("SATURATED (900 req/s) INVALID: 3 errors, 1 non-2xx"), "{}", line(&run));
        let error = load_run(&meta("braid", "fast", 1), &paced(1, 0.1, 0.1)).expect_err("bad point");
        assert!(error.to_string().contains("neither a rate nor \"max\""), "{error}");
    }

    #[test]
    fn the_summary_takes_medians_of_valid_runs_only() {
        let report = report();
        let braid = &report.summary["1000"]["braid"];
        assert_eq!((braid.runs, braid.valid), (4, 3));
        let p50 = braid.p50_ms.expect("p50");
        assert!((p50.median - 0.252).abs() < 1e-9 && (p50.max - 0.253).abs() < 1e-9);
        assert_eq!(braid.peak_vmrss_kib_b, Some(6000));
        assert!((braid.cpu_s_per_10k_a.expect("cpu").median - 3.0).abs() < 1e-9);
        assert!(report.summary["1000"]["direct"].cpu_s_per_10k_a.is_none());
        assert_eq!(report.summary["max"]["haproxy"].rps.map(|s| s.median), Some(30_002.0));
    }

    #[test]
    fn a_report_survives_json_and_a_broken_one_is_refused() {
        let report = report();
        let text = serde_json::to_string(&report).expect("serializes");
        let back = Report::from_json(&text, "r.json").expect("reads");
        assert_eq!(markdown(&back).expect("renders"), markdown(&report).expect("renders"));
        let error = Report::from_json(&text[..text.len() / 3], "r.json").expect_err("cut");
        assert!(error.to_string().starts_with("r.json: not a pair benchmark report"), "{error}");
        let mut missing = report.clone();
        missing.summary.remove("max");
        assert!(markdown(&missing).expect_err("no max").to_string().contains("no summary for direct at max"));
    }
}
