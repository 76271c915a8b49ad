//! The admission webhook benchmark's report: each oha run, and per mode (closed loop, paced) the
//! medians of throughput and latency and the SUM of errors over the runs (a single failed
//! admission in any run must show).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::load::Load;
use crate::stats::median;

/// One oha run against the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRun {
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub ok: u64,
    /// Answers other than 2xx plus requests without an answer.
    pub errors: u64,
}

impl WebhookRun {
    pub fn from_load(load: &Load) -> WebhookRun {
        let latency = load.latency.unwrap_or_default();
        WebhookRun {
            rps: load.rps,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
            ok: load.ok,
            errors: load.non2xx + load.errors,
        }
    }
}

/// The runs of one mode summed up: medians, and every error of every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSummary {
    pub runs: usize,
    pub rps_median: f64,
    pub p50_ms_median: Option<f64>,
    pub p99_ms_median: Option<f64>,
    pub p999_ms_median: Option<f64>,
    pub ok_median: f64,
    pub errors_total: u64,
}

pub fn summarize(runs: &[WebhookRun]) -> WebhookSummary {
    let med = |f: fn(&WebhookRun) -> Option<f64>| median(&runs.iter().filter_map(f).collect::<Vec<_>>());
    WebhookSummary {
        runs: runs.len(),
        rps_median: med(|r| Some(r.rps)).unwrap_or(0.0),
        p50_ms_median: med(|r| r.p50_ms),
        p99_ms_median: med(|r| r.p99_ms),
        p999_ms_median: med(|r| r.p999_ms),
        ok_median: med(|r| Some(r.ok as f64)).unwrap_or(0.0),
        errors_total: runs.iter().map(|r| r.errors).sum(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReport {
    /// The commit measured (`+dirty` when webhook/ had uncommitted changes).
    pub commit: String,
    pub clients: u32,
    pub paced_rate: u32,
    pub idle_vmrss_kib: u64,
    pub peak_vmrss_kib: u64,
    /// "closed" and "paced".
    pub summary: BTreeMap<String, WebhookSummary>,
    pub runs: BTreeMap<String, Vec<WebhookRun>>,
}

/// The lines printed after a run.
pub fn text(report: &WebhookReport, out: &str) -> String {
    let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}"));
    let mut lines = vec![format!(
        "braid-webhook admission at commit {}, {} TLS clients ({out})",
        report.commit, report.clients
    )];
    if let Some(c) = report.summary.get("closed") {
        lines.push(format!(
            "  closed loop : {:8.0} req/s   p50 {} ms   p99 {} ms   errors {} (all {} runs; the rest are medians)",
            c.rps_median,
            ms(c.p50_ms_median),
            ms(c.p99_ms_median),
            c.errors_total,
            c.runs
        ));
    }
    if let Some(q) = report.summary.get("paced") {
        lines.push(format!(
            "  {}/s paced: p50 {} ms   p99 {} ms   p99.9 {} ms   errors {} (all {} runs)",
            report.paced_rate,
            ms(q.p50_ms_median),
            ms(q.p99_ms_median),
            ms(q.p999_ms_median),
            q.errors_total,
            q.runs
        ));
    }
    lines.push(format!(
        "  VmRSS idle {:.1} MiB, peak under load {:.1} MiB",
        report.idle_vmrss_kib as f64 / 1024.0,
        report.peak_vmrss_kib as f64 / 1024.0
    ));
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(errors: u64) -> WebhookRun {
        WebhookRun {
            rps: 1000.0,
            p50_ms: Some(0.5),
            p99_ms: Some(4.0),
            p999_ms: Some(60.0),
            ok: 15_000,
            errors,
        }
    }

    #[test]
    fn errors_are_summed_over_the_runs_not_their_median() {
        // A median would say 0: one run in five failing must not disappear.
        let summary = summarize(&[run(0), run(0), run(7), run(0), run(1)]);
        assert_eq!(summary.errors_total, 8);
        assert_eq!(summary.rps_median, 1000.0);
        assert_eq!(summary.p99_ms_median, Some(4.0));
    }

    #[test]
    fn the_printed_summary_names_the_commit_and_the_errors() {
        let report = WebhookReport {
            commit: "abc1234".into(),
            clients: 50,
            paced_rate: 1000,
            idle_vmrss_kib: 12_390,
            peak_vmrss_kib: 14_746,
            summary: [("paced".to_string(), summarize(&[run(0), run(3)]))].into_iter().collect(),
            runs: BTreeMap::new(),
        };
        let text = text(&report, "bench/results/webhook-x.json");
        assert!(text.starts_with("braid-webhook admission at commit abc1234, 50 TLS clients"), "{text}");
        assert!(text.contains("errors 3 (all 2 runs)"), "{text}");
        assert!(text.contains("VmRSS idle 12.1 MiB, peak under load 14.4 MiB"), "{text}");
    }
}
