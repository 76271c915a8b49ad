//! The report's comparison with the floor, run by run: each scenario's latency against the floor
//! relay's in the same interleaved run, so that a tail claim rests on every run and its spread,
//! not on medians taken from different runs.

use super::{Report, Run};

/// The floor a report measures against: the splice relays when they ran, else HAProxy in TCP mode.
pub fn floor_of(report: &Report) -> Option<&str> {
    ["splice", "floor"].into_iter().find(|floor| report.peers.iter().any(|p| p == floor))
}

/// How far above the floor's p99 a scenario's may be in every run (ms), and the share of the
/// floor's closed-loop throughput it must reach in every run.
pub const P99_ABOVE_FLOOR_MS: f64 = 0.05;
pub const THROUGHPUT_OF_FLOOR: f64 = 0.9;

/// One scenario against the floor at one point: the difference (or ratio) in each run that both
/// completed validly, in run order.
#[derive(Debug, Clone, PartialEq)]
pub struct PerRun {
    pub scenario: String,
    pub values: Vec<f64>,
}

fn run_of<'a>(runs: &'a [Run], point: &str, scenario: &str, run: u32) -> Option<&'a Run> {
    runs.iter().find(|r| r.point == point && r.scenario == scenario && r.run == run && r.valid)
}

/// `f(scenario's run, floor's run)` for each run index in which both are valid.
fn per_run(report: &Report, point: &str, floor: &str, f: fn(&Run, &Run) -> Option<f64>) -> Vec<PerRun> {
    let mut indices: Vec<u32> = report.runs.iter().filter(|r| r.point == point).map(|r| r.run).collect();
    indices.sort_unstable();
    indices.dedup();
    report
        .peers
        .iter()
        .map(|scenario| PerRun {
            scenario: scenario.clone(),
            values: indices
                .iter()
                .filter_map(|&i| {
                    f(run_of(&report.runs, point, scenario, i)?, run_of(&report.runs, point, floor, i)?)
                })
                .collect(),
        })
        .collect()
}

fn spread(values: &[f64], digits: usize, signed: bool) -> String {
    let f = |v: f64| if signed { format!("{v:+.digits$}") } else { format!("{v:.digits$}") };
    let list: Vec<String> = values.iter().map(|v| f(*v)).collect();
    match (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max)) {
        (Some(min), Some(max)) => format!("{} ({}…{})", list.join(", "), f(min), f(max)),
        _ => "—".into(),
    }
}

/// The section, or nothing when no floor ran.
pub fn floor_markdown(report: &Report) -> Vec<String> {
    let Some(floor) = floor_of(report) else { return Vec::new() };
    let mut lines = vec![
        format!("## Against the floor (`{floor}`), run by run"),
        String::new(),
        format!(
            "Each cell lists one value per interleaved run, in run order (min…max after): the scenario minus the \
             floor in the same run, so `direct` cancels out. The floor's own row is its added latency over `direct` \
             in that run: what two hops that copy bytes cost on this machine, with its run-to-run spread. Aims: \
             added p99 within {P99_ABOVE_FLOOR_MS} ms of the floor's in every run; closed-loop throughput at least \
             {THROUGHPUT_OF_FLOOR}× the floor's in every run."
        ),
        String::new(),
    ];
    let p50 = |a: &Run, b: &Run| Some(a.p50_ms? - b.p50_ms?);
    let p99 = |a: &Run, b: &Run| Some(a.p99_ms? - b.p99_ms?);
    let rps = |a: &Run, b: &Run| (b.rps > 0.0).then(|| a.rps / b.rps);
    for rate in &report.rates {
        lines.extend([
            format!("### Paced {rate} req/s"),
            String::new(),
            "| scenario | p50 − floor's, ms | p99 − floor's, ms | p99 aim, every run |".into(),
            "|---|---|---|---|".into(),
        ]);
        let own = per_run(report, rate, "direct", p99);
        let own50 = per_run(report, rate, "direct", p50);
        for ((d50, d99), (own50, own99)) in per_run(report, rate, floor, p50)
            .iter()
            .zip(per_run(report, rate, floor, p99))
            .zip(own50.iter().zip(&own))
        {
            if d99.scenario == floor {
                lines.push(format!(
                    "| **{floor}** (added over direct) | {} | {} | — |",
                    spread(&own50.values, 3, true),
                    spread(&own99.values, 3, true)
                ));
                continue;
            }
            let verdict = match d99.values.iter().copied().reduce(f64::max) {
                None => "—",
                Some(worst) if worst <= P99_ABOVE_FLOOR_MS => "met",
                Some(_) => "not met",
            };
            lines.push(format!(
                "| {} | {} | {} | {verdict} |",
                d50.scenario,
                spread(&d50.values, 3, true),
                spread(&d99.values, 3, true)
            ));
        }
        lines.push(String::new());
    }
    lines.extend([
        "### Closed loop".into(),
        String::new(),
        "| scenario | req/s ÷ floor's | aim, every run |".into(),
        "|---|---|---|".into(),
    ]);
    for row in per_run(report, "max", floor, rps) {
        if row.scenario == floor {
            continue;
        }
        let verdict = match row.values.iter().copied().reduce(f64::min) {
            None => "—",
            Some(worst) if worst >= THROUGHPUT_OF_FLOOR => "met",
            Some(_) => "not met",
        };
        lines.push(format!("| {} | {} | {verdict} |", row.scenario, spread(&row.values, 2, false)));
    }
    lines.push(String::new());
    lines
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::report;
    use super::*;

    #[test]
    fn each_scenario_is_set_against_the_floor_of_the_same_run() {
        let mut report = report();
        // The fixture's braid as the floor too: braid's runs shifted by a known amount.
        let mut floor_runs: Vec<Run> =
            report.runs.iter().filter(|r| r.scenario == "braid").cloned().collect();
        for run in &mut floor_runs {
            run.scenario = "splice".into();
            run.p50_ms = run.p50_ms.map(|v| v - 0.01);
            run.p99_ms = run.p99_ms.map(|v| v - 0.1);
            run.rps *= 2.0;
        }
        report.runs.extend(floor_runs);
        report.peers.push("splice".into());
        assert_eq!(floor_of(&report), Some("splice"));
        let md = floor_markdown(&report).join("\n");
        assert!(md.contains("## Against the floor (`splice`), run by run"), "{md}");
        assert!(
            md.contains("| braid | +0.010, +0.010, +0.010 (+0.010…+0.010) | +0.100, +0.100, +0.100"),
            "{md}"
        );
        assert!(md.contains("| not met |"), "0.1 ms above the floor misses the 0.05 ms aim: {md}");
        assert!(md.contains("| braid | 0.50, 0.50, 0.50 (0.50…0.50) | not met |"), "{md}");
        assert!(md.contains("| **splice** (added over direct) |"), "{md}");
    }

    #[test]
    fn without_a_floor_there_is_no_section() {
        assert!(floor_markdown(&report()).is_empty());
    }
}
