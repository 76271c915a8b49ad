//! The report's comparison with the floor, run by run: each scenario's latency against the floor
//! relay's in the same interleaved run, so that a tail claim rests on every run and its spread,
//! not on medians taken from different runs.

use super::{Report, Run};
use crate::pods::{baseline_of, on_redirect_path};

/// The relays that parse nothing, cheapest first: two splice(2) relays, and HAProxy in TCP mode;
/// then the floor on the redirect path, the floor of the `-redirect` scenarios.
const FLOORS: [&str; 3] = ["splice", "floor", "floor-redirect"];

/// The floors a report measured.
pub fn floors_of(report: &Report) -> Vec<&'static str> {
    FLOORS.into_iter().filter(|floor| report.peers.iter().any(|p| p == floor)).collect()
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

/// What a run measured that the floor is compared on.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50: Option<f64>,
    p99: Option<f64>,
    rps: f64,
}

fn figures(runs: &[Run], point: &str, scenario: &str, run: u32) -> Option<Figures> {
    runs.iter()
        .find(|r| r.point == point && r.scenario == scenario && r.run == run && r.valid)
        .map(|r| Figures { p50: r.p50_ms, p99: r.p99_ms, rps: r.rps })
}

/// The floor of one run: the best any relay that parses nothing did in it, figure by figure
/// (the lowest latency, the highest throughput), so no proxy is set against a worse relay than
/// the machine allowed in that run.
fn floor_figures(runs: &[Run], point: &str, floors: &[&str], run: u32) -> Option<Figures> {
    let measured: Vec<Figures> = floors.iter().filter_map(|floor| figures(runs, point, floor, run)).collect();
    let least = |f: fn(&Figures) -> Option<f64>| measured.iter().filter_map(f).reduce(f64::min);
    (!measured.is_empty()).then(|| Figures {
        p50: least(|f| f.p50),
        p99: least(|f| f.p99),
        rps: measured.iter().map(|f| f.rps).fold(0.0, f64::max),
    })
}

/// `f(scenario, base)` for each scenario and each run index in which both are valid; the base is
/// the floor of the run, or `direct` with `against_direct`.
fn per_run(
    report: &Report,
    point: &str,
    floors: &[&str],
    against_direct: bool,
    f: fn(&Figures, &Figures) -> Option<f64>,
) -> Vec<PerRun> {
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
                    let base = if against_direct {
                        figures(&report.runs, point, baseline_of(scenario), i)?
                    } else {
                        // The redirect path's scenarios against its own floor, the others against theirs.
                        let same: Vec<&str> = floors
                            .iter()
                            .copied()
                            .filter(|f| on_redirect_path(f) == on_redirect_path(scenario))
                            .collect();
                        floor_figures(&report.runs, point, &same, i)?
                    };
                    f(&figures(&report.runs, point, scenario, i)?, &base)
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
    let floors = floors_of(report);
    if floors.is_empty() {
        return Vec::new();
    }
    let named: Vec<String> = floors.iter().map(|f| format!("`{f}`")).collect();
    let mut lines = vec![
        "## Against the floor, run by run".to_string(),
        String::new(),
        format!(
            "The floor of a run is the best that {} did in it, figure by figure: the lower p50, the lower p99, \
             the higher closed-loop throughput. Each cell lists one value per interleaved run, in run order \
             (min…max after): the scenario minus that run's floor, so `direct` cancels out (a `-redirect` \
             scenario against `floor-redirect`, the floor of its own path). The floors' own rows \
             give their added latency over `direct` (`floor-redirect`: over `direct-redirect`) in each run: what two hops that copy bytes cost on this \
             machine, with its run-to-run spread. Aims: added p99 within {P99_ABOVE_FLOOR_MS} ms of the floor's \
             in every run; closed-loop throughput at least {THROUGHPUT_OF_FLOOR}× the floor's in every run.",
            named.join(" and ")
        ),
        String::new(),
    ];
    let p50 = |a: &Figures, b: &Figures| Some(a.p50? - b.p50?);
    let p99 = |a: &Figures, b: &Figures| Some(a.p99? - b.p99?);
    let rps = |a: &Figures, b: &Figures| (b.rps > 0.0).then(|| a.rps / b.rps);
    for rate in &report.rates {
        lines.extend([
            format!("### Paced {rate} req/s"),
            String::new(),
            "| scenario | p50 − floor's, ms | p99 − floor's, ms | p99 aim, every run |".into(),
            "|---|---|---|---|".into(),
        ]);
        let own50 = per_run(report, rate, &floors, true, p50);
        let own99 = per_run(report, rate, &floors, true, p99);
        let rows = per_run(report, rate, &floors, false, p50)
            .into_iter()
            .zip(per_run(report, rate, &floors, false, p99));
        for (((d50, d99), own50), own99) in rows.zip(&own50).zip(&own99) {
            if floors.contains(&d99.scenario.as_str()) {
                lines.push(format!(
                    "| **{}** (added over {}) | {} | {} | — |",
                    d99.scenario,
                    baseline_of(&d99.scenario),
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
    for row in per_run(report, "max", &floors, false, rps) {
        let verdict = match row.values.iter().copied().reduce(f64::min) {
            _ if floors.contains(&row.scenario.as_str()) => "—",
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
    fn each_scenario_is_set_against_the_best_floor_of_the_same_run() {
        let mut report = report();
        // Two floors made from the fixture's braid runs, shifted by known amounts: splice has the
        // better p50 and throughput, HAProxy's TCP relay the better p99.
        for (name, p50, p99, rps) in [("splice", -0.01, -0.1, 2.0), ("floor", 0.05, -0.2, 1.5)] {
            let mut runs: Vec<Run> = report.runs.iter().filter(|r| r.scenario == "braid").cloned().collect();
            for run in &mut runs {
                run.scenario = name.into();
                run.p50_ms = run.p50_ms.map(|v| v + p50);
                run.p99_ms = run.p99_ms.map(|v| v + p99);
                run.rps *= rps;
            }
            report.runs.extend(runs);
            report.peers.push(name.into());
        }
        assert_eq!(floors_of(&report), ["splice", "floor"]);
        let md = floor_markdown(&report).join("\n");
        assert!(md.contains("## Against the floor, run by run"), "{md}");
        assert!(md.contains("the best that `splice` and `floor` did in it"), "{md}");
        assert!(
            md.contains("| braid | +0.010, +0.010, +0.010 (+0.010…+0.010) | +0.200, +0.200, +0.200"),
            "p50 against splice's, p99 against HAProxy's: {md}"
        );
        assert!(md.contains("| not met |"), "0.2 ms above the floor misses the 0.05 ms aim: {md}");
        assert!(md.contains("| braid | 0.50, 0.50, 0.50 (0.50…0.50) | not met |"), "{md}");
        assert!(md.contains("| **splice** (added over direct) |"), "{md}");
        assert!(md.contains("| **floor** (added over direct) |"), "{md}");
    }

    #[test]
    fn without_a_floor_there_is_no_section() {
        assert!(floor_markdown(&report()).is_empty());
    }
}
