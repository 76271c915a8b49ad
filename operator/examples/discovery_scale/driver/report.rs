//! The driver's report: the route changes' figures against the targets, as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use super::rollouts::Rollouts;
use crate::Args;
use crate::procfs::ProcStats;
use crate::server::Phases;
use crate::world::World;

/// The discovery server's targets at 1,000 proxies: p99 propagation under 1 s, RSS under 300 MiB.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_RSS_MIB: f64 = 300.0;

pub struct Change {
    pub route: usize,
    pub weight: u32,
    pub proxies: usize,
    /// Per proxy: from the command to the update's arrival.
    pub latencies: Vec<Duration>,
    /// From the command until the last subscribed proxy had the update.
    pub all_received: Option<Duration>,
    /// From the command until the driver read the server's "every proxy acked" line.
    pub all_acked: Option<Duration>,
    /// The same, on the server's clock (from reading the command).
    pub server_acked: Option<Duration>,
    pub server_total: usize,
}

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
    pub changes_seconds: f64,
    pub server_changes_cpu: f64,
    pub driver_changes_cpu: f64,
    pub changes_other: f64,
    pub changes_steal: f64,
    pub results: Vec<Change>,
    pub rollouts: Option<Rollouts>,
    pub rustc: (usize, usize),
    pub load: (String, String),
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let w = &self.world;
        let p = &self.phases;
        let mut all: Vec<Duration> = self.results.iter().flat_map(|c| c.latencies.iter().copied()).collect();
        all.sort();
        let missing: usize = self.results.iter().map(|c| c.proxies - c.latencies.len()).sum();
        let acked: Vec<Duration> = {
            let mut v: Vec<Duration> = self.results.iter().filter_map(|c| c.all_acked).collect();
            v.sort();
            v
        };
        let unacked = self.results.iter().filter(|c| c.server_acked.is_none()).count();
        let p99 = percentile(&all, 0.99);
        // The rollouts run last: their peak is the run's.
        let rss_peak = mib(self.rollouts.as_ref().map_or(&self.after, |r| &r.after).vm_hwm_kib);
        let pass = |ok: bool| if ok { "**PASS**" } else { "**MISS**" };
        let at_target = w.proxies >= 1000;
        let delta = |a: &ProcStats, b: &ProcStats| (a.rss_anon_kib as f64 - b.rss_anon_kib as f64) * 1024.0;

        let mut s = String::new();
        let _ = writeln!(s, "# Discovery at scale\n");
        let _ = writeln!(
            s,
            "{} proxies · {} pods · {} Services ({} MeshRoutes) · {} namespaces · {} changes, {} ms apart{}{}\n",
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
            self.changes_other.max(0.0),
            self.changes_seconds,
            self.connect_steal,
            self.changes_steal,
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target (at 1,000 proxies) | measured | |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| p99 propagation under 1 s (per proxy, every change) | {} | {} |",
            ms(p99),
            if at_target {
                pass(p99.is_some_and(|p| p < TARGET_P99) && missing == 0)
            } else {
                "(not at 1,000 proxies)"
            }
        );
        let _ = writeln!(
            s,
            "| every subscribed proxy acked, slowest change, under 1 s | {} | {} |",
            ms(acked.last().copied()),
            if at_target {
                pass(
                    acked.last().is_some_and(|a| *a < TARGET_P99)
                        && unacked == 0
                        && acked.len() == self.results.len(),
                )
            } else {
                "(not at 1,000 proxies)"
            }
        );
        let _ = writeln!(
            s,
            "| operator RSS under 300 MiB (peak, VmHWM) | {rss_peak:.1} MiB | {} |\n",
            if at_target { pass(rss_peak < TARGET_RSS_MIB) } else { "(not at 1,000 proxies)" }
        );

        let _ = writeln!(s, "## Propagation (MeshRoute change → proxies)\n");
        let _ = writeln!(
            s,
            "Over all changes, per proxy ({} updates{}): p50 {}, p90 {}, p99 {}, max {}. Every subscribed \
             proxy acked (the server's Programmed count reached total): median {}, max {}.\n",
            all.len(),
            if missing > 0 { format!(", **{missing} never arrived**") } else { String::new() },
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.9)),
            ms(p99),
            ms(all.last().copied()),
            ms(percentile(&acked, 0.5)),
            ms(acked.last().copied()),
        );
        let _ = writeln!(
            s,
            "| change | route | proxies | p50 | p99 | max (last received) | all acked (driver) | all acked (server clock) |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, c) in self.results.iter().enumerate() {
            let mut l = c.latencies.clone();
            l.sort();
            let _ = writeln!(
                s,
                "| {i} | route-{} → v1 {}% | {}{} | {} | {} | {} | {} | {} |",
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
            );
        }
        for fanout in [true, false] {
            let mut l: Vec<Duration> = self
                .results
                .iter()
                .filter(|c| (c.route == 0) == fanout)
                .flat_map(|c| c.latencies.iter().copied())
                .collect();
            l.sort();
            let mut a: Vec<Duration> = self
                .results
                .iter()
                .filter(|c| (c.route == 0) == fanout)
                .filter_map(|c| c.all_acked)
                .collect();
            a.sort();
            let _ = writeln!(
                s,
                "{}: per proxy p50 {}, p99 {}, max {}; all acked median {}, max {}.",
                if fanout {
                    "\nChanges to route-0 (every proxy subscribes)"
                } else {
                    "Changes to routes 1–9 (1/9 of the proxies each)"
                },
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.99)),
                ms(l.last().copied()),
                ms(percentile(&a, 0.5)),
                ms(a.last().copied()),
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
            (format!("after {} changes", self.results.len()), &self.after, Some(&self.connected)),
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

        let _ = writeln!(s, "## CPU (utime + stime)\n");
        let _ = writeln!(
            s,
            "| phase | wall | server | driver (simulated proxies) | other processes |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| connect {} proxies (TLS 1.3 handshakes, hello, 6 subscriptions each) | {:.1} s | {:.2} s ({:.2} ms per proxy) | {:.2} s | {:.1} s |",
            w.proxies,
            self.connect_seconds,
            self.server_connect_cpu,
            self.server_connect_cpu * 1000.0 / w.proxies as f64,
            self.driver_connect_cpu,
            self.connect_other.max(0.0),
        );
        let updates: usize = self.results.iter().map(|c| c.proxies).sum();
        let _ = writeln!(
            s,
            "| {} changes ({updates} proxy updates) | {:.1} s | {:.2} s ({:.1} ms per change, {:.0} µs per proxy update) | {:.2} s | {:.1} s |",
            self.results.len(),
            self.changes_seconds,
            self.server_changes_cpu,
            self.server_changes_cpu * 1000.0 / self.results.len().max(1) as f64,
            self.server_changes_cpu * 1e6 / updates.max(1) as f64,
            self.driver_changes_cpu,
            self.changes_other.max(0.0),
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
    let by_size = |fanout: bool| {
        let steps: Vec<&super::rollouts::Step> =
            r.steps.iter().filter(|step| (step.subscriptions >= 100) == fanout).collect();
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
        "\n| steps of routes with | steps | subscriptions per route | p50 | p99 | max |\n|---|---|---|---|---|---|"
    );
    for (name, fanout) in [("100 or more subscriptions", true), ("fewer", false)] {
        let (n, subscriptions, p50, p99, max) = by_size(fanout);
        let _ = writeln!(s, "| {name} | {n} | {subscriptions} | {} | {} | {} |", ms(p50), ms(p99), ms(max));
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
