//! The driver's report: the route changes' figures against the targets, as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use super::changes::{Change, Changes};
use super::rollouts::Rollouts;
use crate::Args;
use crate::procfs::ProcStats;
use crate::server::Phases;
use crate::world::{Class, World};

/// The proxy count the targets are set for.
const TARGET_PROXIES: usize = 10_000;
/// p99 propagation of a change every proxy gets, and of one a hundredth of them get.
const TARGET_ALL_P99: Duration = Duration::from_secs(1);
const TARGET_NARROW_P99: Duration = Duration::from_millis(50);
/// The operator's CPU for a change reaching 1% of the proxies, as a share of one reaching all
/// of them: under this, the cost follows the fan-out (exactly proportional would be 0.01; the
/// rest allows a small fixed cost per change).
const TARGET_CPU_RATIO: f64 = 0.1;
const TARGET_RSS_MIB: f64 = 512.0;

pub struct Report<'a> {
    pub world: World,
    pub args: &'a Args,
    pub phases: Phases,
    pub before_connect: ProcStats,
    pub connected: ProcStats,
    pub after: ProcStats,
    pub driver: ProcStats,
    pub connect_seconds: f64,
    pub server_connect_cpu: f64,
    pub driver_connect_cpu: f64,
    pub connect_other: f64,
    pub connect_steal: f64,
    pub changes: Changes,
    pub rollouts: Option<Rollouts>,
    pub rustc: (usize, usize),
    pub load: (String, String),
}

/// One fan-out class's changes, summed up.
struct ClassFigures {
    class: Class,
    changes: usize,
    routes: usize,
    proxies: (usize, usize),
    /// Per proxy, every change of the class, sorted.
    latencies: Vec<Duration>,
    /// Updates that never arrived.
    missing: usize,
    /// Per change, sorted.
    acked: Vec<Duration>,
    unacked: usize,
    window: Option<f64>,
    server_cpu: Option<f64>,
    counting: Option<f64>,
    operator_cpu: Option<f64>,
    operator_cpu_range: (f64, f64),
    /// Mean utime+stime per change: ticks are too coarse for a median of one change.
    ticks_mean: Option<f64>,
    driver_cpu: Option<f64>,
    driver_busy: Option<f64>,
}

impl ClassFigures {
    fn of(class: Class, results: &[Change]) -> Self {
        let changes: Vec<&Change> = results.iter().filter(|c| c.class == class).collect();
        let mut latencies: Vec<Duration> = changes.iter().flat_map(|c| c.latencies.iter().copied()).collect();
        latencies.sort();
        let mut acked: Vec<Duration> = changes.iter().filter_map(|c| c.all_acked).collect();
        acked.sort();
        let mut routes: Vec<usize> = changes.iter().map(|c| c.route).collect();
        routes.sort_unstable();
        routes.dedup();
        let operator: Vec<f64> = changes.iter().map(|c| c.operator_cpu()).collect();
        let n = changes.len();
        Self {
            class,
            changes: n,
            routes: routes.len(),
            proxies: (
                changes.iter().map(|c| c.proxies).min().unwrap_or(0),
                changes.iter().map(|c| c.proxies).max().unwrap_or(0),
            ),
            latencies,
            missing: changes.iter().map(|c| c.proxies - c.latencies.len()).sum(),
            acked,
            unacked: changes.iter().filter(|c| c.server_acked.is_none()).count(),
            window: median(changes.iter().map(|c| c.window.as_secs_f64()).collect()),
            server_cpu: median(changes.iter().map(|c| c.server_cpu).collect()),
            counting: median(changes.iter().map(|c| c.counting.as_secs_f64()).collect()),
            operator_cpu: median(operator.clone()),
            operator_cpu_range: (
                operator.iter().copied().fold(f64::INFINITY, f64::min),
                operator.iter().copied().fold(0.0, f64::max),
            ),
            ticks_mean: (n > 0).then(|| changes.iter().map(|c| c.server_ticks).sum::<f64>() / n as f64),
            driver_cpu: median(changes.iter().map(|c| c.driver_cpu).collect()),
            driver_busy: median(changes.iter().filter_map(|c| c.driver_busy).collect()),
        }
    }

    fn proxies(&self) -> String {
        match self.proxies {
            (low, high) if low == high => low.to_string(),
            (low, high) => format!("{low}–{high}"),
        }
    }

    fn p99(&self) -> Option<Duration> {
        percentile(&self.latencies, 0.99)
    }
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let w = &self.world;
        let p = &self.phases;
        let c = &self.changes;
        let results = &c.results;
        let mut all: Vec<Duration> = results.iter().flat_map(|c| c.latencies.iter().copied()).collect();
        all.sort();
        let missing: usize = results.iter().map(|c| c.proxies - c.latencies.len()).sum();
        let acked: Vec<Duration> = {
            let mut v: Vec<Duration> = results.iter().filter_map(|c| c.all_acked).collect();
            v.sort();
            v
        };
        let classes: Vec<ClassFigures> =
            Class::ALL.iter().map(|&class| ClassFigures::of(class, results)).collect();
        let [every, wide, narrow] = [&classes[0], &classes[1], &classes[2]];
        // The rollouts run last: their peak is the run's.
        let rss_peak = mib(self.rollouts.as_ref().map_or(&self.after, |r| &r.after).vm_hwm_kib);
        let pass = |ok: bool| if ok { "**PASS**" } else { "**MISS**" };
        let delta = |a: &ProcStats, b: &ProcStats| (a.rss_anon_kib as f64 - b.rss_anon_kib as f64) * 1024.0;
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let narrow_ratio = ratio(narrow.operator_cpu, every.operator_cpu);
        let wide_ratio = ratio(wide.operator_cpu, every.operator_cpu);

        let mut s = String::new();
        let _ = writeln!(s, "# Discovery at scale\n");
        let _ = writeln!(
            s,
            "{} proxies (simulated in one process) · {} pods · {} Services ({} MeshRoutes) · {} namespaces · {} changes, {} ms apart{}{}\n",
            w.proxies,
            w.pods,
            w.services,
            w.routes,
            w.namespaces,
            self.args.changes,
            self.args.spacing_ms,
            match &self.rollouts {
                Some(r) => format!(" · {} rollouts, interval {}", r.started, r.interval),
                None => String::new(),
            },
            if self.args.label.is_empty() { String::new() } else { format!(" · {}", self.args.label) }
        );
        let _ = writeln!(
            s,
            "Machine: load average {} at the start, {} at the end; rustc processes running (other \
             builds) {} at the start, {} at the end. CPU of other processes while measuring: {:.1} \
             core-s during the connect phase ({:.1} s), {:.1} core-s during the changes ({:.1} s); \
             hypervisor steal {:.1} / {:.1} core-s.\n",
            self.load.0,
            self.load.1,
            self.rustc.0,
            self.rustc.1,
            self.connect_other.max(0.0),
            self.connect_seconds,
            c.other_cpu,
            c.seconds,
            self.connect_steal,
            c.steal,
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target (measured at {} proxies) | measured | |\n|---|---|---|", w.proxies);
        let latency_target = |figures: &ClassFigures, target: Duration| {
            pass(figures.p99().is_some_and(|p| p < target) && figures.missing == 0 && figures.changes > 0)
        };
        let _ = writeln!(
            s,
            "| a change every proxy gets (route-0): p99 propagation per proxy under 1 s | {}{} | {} |",
            ms(every.p99()),
            missing_note(every.missing),
            latency_target(every, TARGET_ALL_P99),
        );
        let _ = writeln!(
            s,
            "| a change 1% of the proxies get: p99 propagation per proxy under 50 ms | {}{} | {} |",
            ms(narrow.p99()),
            missing_note(narrow.missing),
            latency_target(narrow, TARGET_NARROW_P99),
        );
        let _ = writeln!(
            s,
            "| operator CPU per change follows the fan-out: median at 1% ÷ median at 100% under {TARGET_CPU_RATIO} | {} at 1%, {} at 10%, {} at 100%: 1% ÷ 100% = {}, 10% ÷ 100% = {} | {} |",
            cpu_ms(narrow.operator_cpu),
            cpu_ms(wide.operator_cpu),
            cpu_ms(every.operator_cpu),
            fraction(narrow_ratio),
            fraction(wide_ratio),
            pass(narrow_ratio.is_some_and(|r| r < TARGET_CPU_RATIO)),
        );
        let _ = writeln!(
            s,
            "| operator RSS under {TARGET_RSS_MIB:.0} MiB (peak, VmHWM) | {rss_peak:.1} MiB{} | {} |\n",
            if self.rollouts.is_some() {
                format!(" ({:.1} MiB before the rollouts)", mib(self.after.vm_hwm_kib))
            } else {
                String::new()
            },
            pass(rss_peak < TARGET_RSS_MIB)
        );
        if w.proxies != TARGET_PROXIES {
            let _ = writeln!(
                s,
                "The targets are set for {TARGET_PROXIES} proxies; this run had {}, so its PASS or MISS \
                 says less.\n",
                w.proxies
            );
        }
        let _ = writeln!(
            s,
            "The CPU rule: a change's cost should follow how many proxies it reaches. Exactly \
             proportional, a 1% change would cost 0.01 of a 100% change; under {TARGET_CPU_RATIO} \
             leaves room for a small fixed cost per change. A cost that follows the number of \
             connected proxies instead gives a ratio near 1. Operator CPU is the server's CPU time \
             from the change's command to the next change's, less the time the benchmark's own ack \
             counting took (see CPU per change below); work the server does while idle falls in that \
             window too, and is shown there.\n"
        );

        let _ = writeln!(s, "## Propagation (MeshRoute change → proxies)\n");
        let _ = writeln!(
            s,
            "Over all changes, per proxy ({} updates{}): p50 {}, p90 {}, p99 {}, max {}. Every subscribed \
             proxy acked (the server's Programmed count reached total): median {}, max {}.\n",
            all.len(),
            missing_note(missing),
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.9)),
            ms(percentile(&all, 0.99)),
            ms(all.last().copied()),
            ms(percentile(&acked, 0.5)),
            ms(acked.last().copied()),
        );
        let _ = writeln!(
            s,
            "| class | routes | changes (routes changed) | proxies per change | per proxy p50 | p99 | max | all acked: median | max |\n|---|---|---|---|---|---|---|---|---|"
        );
        for f in &classes {
            let _ = writeln!(
                s,
                "| {}% | {} | {} ({}) | {} | {} | {}{} | {} | {} | {}{} |",
                f.class.percent(),
                f.class.routes(),
                f.changes,
                f.routes,
                f.proxies(),
                ms(percentile(&f.latencies, 0.5)),
                ms(f.p99()),
                missing_note(f.missing),
                ms(f.latencies.last().copied()),
                ms(percentile(&f.acked, 0.5)),
                ms(f.acked.last().copied()),
                if f.unacked > 0 { format!(" ({} never fully acked)", f.unacked) } else { String::new() },
            );
        }

        let _ = writeln!(s, "\n## CPU per change (utime + stime)\n");
        let idle_in_window = every.window.map(|w| c.server_idle_rate * w);
        let _ = writeln!(
            s,
            "Each change's window runs from its command to the next change's command (at least \
             {} ms; longer when a change took longer to be acked). Server CPU is the runtime of the \
             server's threads in the window (their schedstat, in ns, off by at most a scheduler tick \
             when a thread runs at the sample; utime+stime, in 10 ms ticks, is given beside it as a \
             mean). Ack counting is the time the benchmark's own wait for \"every proxy acked\" \
             spent counting in the server (registry.programming after the registry changed, at most \
             every 2 ms, each count walking every connected proxy; the operator's status writer \
             counts at most every 200 ms); operator CPU is server CPU less that. Idle, with every \
             proxy connected and nothing changing, the server spent {:.2} ms per second ({:.2} ms in \
             a median window) and the driver {:.2} ms per second; that is inside every figure below.\n",
            self.args.spacing_ms,
            c.server_idle_rate * 1000.0,
            idle_in_window.unwrap_or(0.0) * 1000.0,
            c.driver_idle_rate * 1000.0,
        );
        let _ = writeln!(
            s,
            "| class | proxies per change | window (median) | server CPU per change (median) | ack counting (median) | operator CPU per change: median (min–max) | per proxy update | utime+stime per change (mean) | driver CPU per change (median) | driver busy until the last proxy had it (median) |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for f in &classes {
            let _ = writeln!(
                s,
                "| {}% | {} | {} | {} | {} | {} ({}–{}) | {} | {} | {} | {} |",
                f.class.percent(),
                f.proxies(),
                f.window.map_or_else(|| "—".to_owned(), |w| format!("{w:.2} s")),
                cpu_ms(f.server_cpu),
                cpu_ms(f.counting),
                cpu_ms(f.operator_cpu),
                cpu_ms(Some(f.operator_cpu_range.0).filter(|v| v.is_finite())),
                cpu_ms(Some(f.operator_cpu_range.1)),
                f.operator_cpu.map_or_else(
                    || "—".to_owned(),
                    |cpu| format!("{:.1} µs", cpu * 1e6 / f.proxies.1.max(1) as f64)
                ),
                cpu_ms(f.ticks_mean),
                cpu_ms(f.driver_cpu),
                f.driver_busy.map_or_else(|| "—".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            );
        }
        let _ = writeln!(
            s,
            "\nOperator CPU, 1% ÷ 100%: {} (the fan-out ratio is 0.01); 10% ÷ 100%: {} (0.1). One \
             driver process runs every simulated proxy (on one core when pinned): when it was busy \
             nearly all the time until the last proxy had a change, the proxies, not the server, \
             set that change's propagation time.",
            fraction(narrow_ratio),
            fraction(wide_ratio),
        );

        let _ = writeln!(s, "\n## Every change\n");
        let _ = writeln!(
            s,
            "| change | class | route | proxies | p50 | p99 | max (last received) | all acked (driver) | all acked (server clock) | server CPU | ack counting (counts) | driver CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (i, c) in results.iter().enumerate() {
            let mut l = c.latencies.clone();
            l.sort();
            let _ = writeln!(
                s,
                "| {i} | {}% | route-{} → v1 {}% | {}{} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                c.class.percent(),
                c.route,
                c.weight,
                c.proxies,
                if c.server_total != c.proxies {
                    format!(" (server counted {})", c.server_total)
                } else {
                    String::new()
                },
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.99)),
                ms(c.all_received),
                ms(c.all_acked),
                ms(c.server_acked),
                cpu_ms(Some(c.server_cpu)),
                cpu_ms(Some(c.counting.as_secs_f64())),
                c.counts,
                cpu_ms(Some(c.driver_cpu)),
            );
        }

        let _ = writeln!(s, "\n## Server memory (VmRSS / RssAnon)\n");
        let _ = writeln!(s, "| phase | VmRSS | RssAnon | step (RssAnon) |\n|---|---|---|---|");
        let policies = w.namespaces.min(w.services - 2 * w.routes);
        let rows: Vec<(String, &ProcStats, Option<&ProcStats>)> = vec![
            ("empty (process started)".into(), &p.empty, None),
            (format!("+ {} pods", w.pods), &p.pods, Some(&p.empty)),
            (format!("+ {} Services", w.services), &p.services, Some(&p.pods)),
            (format!("+ {} EndpointSlices", w.services), &p.slices, Some(&p.services)),
            (
                format!("+ {} MeshRoutes, {policies} MeshPolicies", w.routes),
                &p.routes_policies,
                Some(&p.slices),
            ),
            ("+ the watches' relist key sets".into(), &p.relist_keys, Some(&p.routes_policies)),
            ("serving (runtime, TLS), no proxy".into(), &p.serving, Some(&p.relist_keys)),
            ("just before connecting".into(), &self.before_connect, Some(&p.serving)),
            (
                format!("{} proxies connected and subscribed", w.proxies),
                &self.connected,
                Some(&self.before_connect),
            ),
            (format!("after {} changes", results.len()), &self.after, Some(&self.connected)),
        ];
        let rows: Vec<_> = match &self.rollouts {
            Some(r) => rows
                .into_iter()
                .chain([(format!("after {} rollouts", r.started), &r.after, Some(&self.after))])
                .collect(),
            None => rows,
        };
        for (name, stats, base) in rows {
            let _ = writeln!(
                s,
                "| {name} | {:.1} MiB | {:.1} MiB | {} |",
                mib(stats.vm_rss_kib),
                mib(stats.rss_anon_kib),
                base.map_or_else(String::new, |b| format!("{:+.1} MiB", delta(stats, b) / 1048576.0)),
            );
        }
        let _ = writeln!(s, "\nPeak (VmHWM) {rss_peak:.1} MiB. Threads: {}.\n", self.after.threads);
        let index_bytes = delta(&p.relist_keys, &p.empty);
        let _ = writeln!(
            s,
            "Per pod: the pods step is {:.0} bytes per pod (key, service account, labels); the whole \
             index with its relist keys is {:.0} bytes per pod ({:.1} MiB for {} pods, {} Services). \
             Per connected proxy: {:.1} KiB (connection, TLS and HTTP/2 buffers, stream task, \
             registry entry, its share of the memoized snapshots). RSS steps are upper bounds: \
             they include malloc's headers and free space.\n",
            delta(&p.pods, &p.empty) / w.pods as f64,
            index_bytes / w.pods as f64,
            index_bytes / 1048576.0,
            w.pods,
            w.services,
            delta(&self.connected, &self.before_connect) / 1024.0 / w.proxies as f64,
        );

        let _ = writeln!(s, "## CPU per phase (utime + stime)\n");
        let _ = writeln!(
            s,
            "| phase | wall | server | driver (simulated proxies) | other processes |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| connect {} proxies ({} handshakes in flight; TLS 1.3, hello, 6 subscriptions each) | {:.1} s | {:.2} s ({:.2} ms per proxy) | {:.2} s | {:.1} s |",
            w.proxies,
            self.args.connect_concurrency,
            self.connect_seconds,
            self.server_connect_cpu,
            self.server_connect_cpu * 1000.0 / w.proxies as f64,
            self.driver_connect_cpu,
            self.connect_other.max(0.0),
        );
        let updates: usize = results.iter().map(|c| c.proxies).sum();
        let _ = writeln!(
            s,
            "| {} changes ({updates} proxy updates) | {:.1} s | {:.2} s ({:.1} ms per change, {:.0} µs per proxy update) | {:.2} s | {:.1} s |",
            results.len(),
            c.seconds,
            c.server_cpu,
            c.server_cpu * 1000.0 / results.len().max(1) as f64,
            c.server_cpu * 1e6 / updates.max(1) as f64,
            c.driver_cpu,
            c.other_cpu,
        );
        let _ = writeln!(
            s,
            "\nThe driver process (all simulated proxies) peaked at {:.1} MiB VmRSS.",
            mib(self.driver.vm_hwm_kib)
        );
        if let Some(rollouts) = &self.rollouts {
            rollouts_section(&mut s, rollouts, w.proxies);
        }
        s
    }
}

fn missing_note(missing: usize) -> String {
    if missing > 0 { format!(", **{missing} never arrived**") } else { String::new() }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

fn cpu_ms(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "—".to_owned(), |s| format!("{:.1} ms", s * 1000.0))
}

fn fraction(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"))
}

/// The rollouts phase: steps' propagation, the server's CPU per interval and memory, outcomes.
fn rollouts_section(s: &mut String, r: &Rollouts, proxies: usize) {
    let mut all: Vec<Duration> = r.steps.iter().filter_map(|step| step.all_received).collect();
    all.sort();
    let mut each: Vec<Duration> = r.steps.iter().flat_map(|step| step.latencies.iter().copied()).collect();
    each.sort();
    let incomplete = r.steps.iter().filter(|step| step.all_received.is_none()).count();
    let mut cpu = r.interval_cpu.clone();
    cpu.sort_by(f64::total_cmp);
    let median_cpu = cpu.get(cpu.len() / 2).copied();
    let promoted: Vec<Duration> = {
        let mut v: Vec<Duration> =
            r.ended.iter().filter(|(_, phase, _)| phase == "Promoted").map(|(_, _, t)| *t).collect();
        v.sort();
        v
    };
    let others: Vec<String> = r
        .ended
        .iter()
        .filter(|(_, phase, _)| phase != "Promoted")
        .map(|(route, phase, _)| format!("route-{route} {phase}"))
        .collect();
    let secs =
        |d: Option<Duration>| d.map_or_else(|| "—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    let _ = writeln!(s, "\n## Rollouts\n");
    let _ = writeln!(
        s,
        "{} canary rollouts at once across {proxies} proxies (steps 10, 25, 50 then promoted; interval {}; \
         minRequests 5), run by the operator's rollout code in the server on what the proxies \
         reported: every proxy sent {} req/s to each of its destinations while they ran, split by \
         the weights it last received, and reported them every report interval the server asked \
         for ({} report messages in {:.1} s).\n",
        r.started, r.interval, r.per_second, r.reports, r.seconds,
    );
    let _ = writeln!(
        s,
        "- Promoted: {} of {} (from the start: first {}, median {}, last {}){}.",
        promoted.len(),
        r.started,
        secs(promoted.first().copied()),
        secs(percentile(&promoted, 0.5)),
        secs(promoted.last().copied()),
        if others.is_empty() { String::new() } else { format!("; not promoted: {}", others.join(", ")) },
    );
    let _ = writeln!(
        s,
        "- A weight step, from the server applying it to the index until every subscribed proxy \
         had it ({} steps{}): p50 {}, p99 {}, max {}. Per proxy subscription ({} updates): p50 {}, \
         p99 {}, max {}.",
        r.steps.len(),
        if incomplete > 0 { format!(", **{incomplete} never reached every proxy**") } else { String::new() },
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied()),
        each.len(),
        ms(percentile(&each, 0.5)),
        ms(percentile(&each, 0.99)),
        ms(each.last().copied()),
    );
    let _ = writeln!(
        s,
        "- Server CPU per interval ({} intervals of {}): median {}, max {}; {:.2} s over the phase \
         ({:.1}% of one core). The driver (the proxies) used {:.2} s; other processes on the \
         machine {:.1} core-s.",
        cpu.len(),
        r.interval,
        median_cpu.map_or_else(|| "—".to_owned(), |c| format!("{c:.2} s")),
        cpu.last().map_or_else(|| "—".to_owned(), |c| format!("{c:.2} s")),
        r.server_cpu,
        r.server_cpu * 100.0 / r.seconds.max(f64::EPSILON),
        r.driver_cpu,
        r.other_cpu,
    );
    let _ = writeln!(
        s,
        "- Server memory: VmRSS {:.1} MiB before, {:.1} MiB after (RssAnon {:.1} → {:.1} MiB); peak \
         (VmHWM) {:.1} MiB.",
        mib(r.before.vm_rss_kib),
        mib(r.after.vm_rss_kib),
        mib(r.before.rss_anon_kib),
        mib(r.after.rss_anon_kib),
        mib(r.after.vm_hwm_kib),
    );
    let by_class = |class: Option<Class>| {
        let steps: Vec<&super::rollouts::Step> =
            r.steps.iter().filter(|step| Class::of(step.route) == class).collect();
        let mut v: Vec<Duration> = steps.iter().filter_map(|step| step.all_received).collect();
        v.sort();
        let subscriptions = match (
            steps.iter().map(|step| step.subscriptions).min(),
            steps.iter().map(|step| step.subscriptions).max(),
        ) {
            (Some(low), Some(high)) => format!("{low}–{high}"),
            _ => "—".to_owned(),
        };
        (steps.len(), subscriptions, percentile(&v, 0.5), percentile(&v, 0.99), v.last().copied())
    };
    if let Some(slowest) =
        r.steps.iter().filter(|step| step.all_received.is_some()).max_by_key(|step| step.all_received)
    {
        let _ = writeln!(
            s,
            "- Slowest step: route-{} to canary {}%, {} subscriptions, {}.",
            slowest.route,
            slowest.weight,
            slowest.subscriptions,
            ms(slowest.all_received)
        );
    }
    let _ = writeln!(
        s,
        "\n| steps of | steps | subscriptions per route | p50 | p99 | max |\n|---|---|---|---|---|---|"
    );
    let classes = Class::ALL
        .map(|class| (format!("the {}% routes ({})", class.percent(), class.routes()), Some(class)));
    for (name, class) in classes.into_iter().chain([("the other routes".to_owned(), None)]) {
        let (n, subscriptions, p50, p99, max) = by_class(class);
        if n > 0 {
            let _ =
                writeln!(s, "| {name} | {n} | {subscriptions} | {} | {} | {} |", ms(p50), ms(p99), ms(max));
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
