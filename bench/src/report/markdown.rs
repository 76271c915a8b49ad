//! The pair benchmark's Markdown: the tables per rate and in the closed loop, the ratios
//! between peers, memory and the noise of the machine.

use crate::Error;
use crate::pods::{self, baseline_of};
use crate::stats::{Stat, median};
use crate::thousands;

use super::{Entry, Report, Run};

fn med(e: Option<&Entry>, f: fn(&Entry) -> Option<Stat>) -> Option<f64> {
    e.and_then(f).map(|s| s.median)
}

fn f_ms(st: Option<Stat>, digits: usize) -> String {
    match st {
        None => "—".into(),
        Some(s) => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
    }
}

fn f_add(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a >= b => format!("+{:.3}", a - b),
        (Some(a), Some(b)) => format!("{:.3}", a - b),
        _ => "—".into(),
    }
}

fn f_cpu(e: &Entry) -> String {
    match (e.cpu_s_per_10k_a, e.cpu_s_per_10k_b) {
        (Some(a), Some(b)) => format!("{:.2} / {:.2}", a.median, b.median),
        _ => "—".into(),
    }
}

fn f_pct(st: Option<Stat>) -> String {
    st.map_or("—".into(), |s| format!("{:.0} % ({:.0}–{:.0})", s.median, s.min, s.max))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// The peer without its path: "braid-mtls-redirect" → "braid-mtls".
fn plain(peer: &str) -> &str {
    peer.strip_suffix("-redirect").unwrap_or(peer)
}

/// The peer without its link, on its path: "braid-mtls-redirect" → "braid-redirect".
fn base(peer: &str) -> String {
    let kind = plain(peer).strip_suffix("-mtls").unwrap_or(plain(peer));
    if pods::on_redirect_path(peer) { format!("{kind}-redirect") } else { kind.to_string() }
}

/// braid against each other peer (its baseline included) over the same kind of link and the same
/// path, then what mTLS costs each peer, then what the redirect path costs each peer; every pair
/// when no braid scenario ran.
pub fn ratio_rows(peers: &[String]) -> Vec<(String, String)> {
    let mtls = |p: &str| plain(p).ends_with("-mtls");
    let path = |p: &str| pods::on_redirect_path(p);
    let ours: Vec<&String> = peers.iter().filter(|p| plain(&base(p)) == "braid").collect();
    if ours.is_empty() {
        return peers
            .iter()
            .enumerate()
            .flat_map(|(i, a)| peers[i + 1..].iter().map(move |b| (a.clone(), b.clone())))
            .collect();
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    for a in &ours {
        for b in peers {
            if !ours.contains(&b) && mtls(a) == mtls(b) && path(a) == path(b) {
                rows.push(((*a).clone(), b.clone()));
            }
        }
    }
    rows.extend(
        peers.iter().filter(|p| mtls(p) && peers.iter().any(|q| *q == base(p))).map(|p| (p.clone(), base(p))),
    );
    rows.extend(
        peers
            .iter()
            .filter(|p| path(p) && peers.iter().any(|q| q == plain(p)))
            .map(|p| (p.clone(), plain(p).to_string())),
    );
    rows
}

fn noise(runs: &[Run]) -> String {
    let other: Vec<f64> = runs.iter().map(|r| r.cpu1_pct.other_processes).collect();
    let steal: Vec<f64> = runs.iter().map(|r| r.cpu1_pct.steal).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    format!(
        "Noise: processes other than the measured pair used CPU 1 for a median {:.1} % (max {:.1} %) of each run; \
         hypervisor steal on CPU 1 median {:.1} % (max {:.1} %); load average {} at the first run, {} at the last.",
        median(&other).unwrap_or(0.0),
        max(&other),
        median(&steal).unwrap_or(0.0),
        max(&steal),
        runs.first().map_or("?", |r| r.loadavg.as_str()),
        runs.last().map_or("?", |r| r.loadavg.as_str()),
    )
}

pub fn markdown(report: &Report) -> Result<String, Error> {
    let sm = &report.summary;
    let missing = |point: &str, s: &str| Error::parse("report", format!("no summary for {s} at {point}"));
    let entry = |point: &str, s: &str| -> Result<&Entry, Error> {
        sm.get(point).and_then(|p| p.get(s)).ok_or_else(|| missing(point, s))
    };
    let s = &report.settings;
    let mut lines = vec![
        format!("# Sidecar pair benchmark, {}", report.timestamp),
        String::new(),
        format!(
            "client ──HTTP/1.1──▶ proxy A ──(HTTP/2; nginx: HTTP/1.1 keep-alive)──▶ proxy B ──HTTP/1.1──▶ origin (nginx, \
             1 KiB body); `direct` = client ──▶ origin. Between A and B: plaintext, or mutual TLS 1.3 for the `-mtls` \
             scenarios. Load generator and origin on CPU 0, every proxy on CPU 1 with one worker. {} interleaved runs \
             per point; each cell: median (min–max) of the valid runs.",
            s.runs
        ),
        String::new(),
        format!(
            "Settings: `{}`. Versions: {}. Machine: {}. Took {:.1} min.",
            s.knobs,
            report.versions,
            report.machine,
            report.took_seconds as f64 / 60.0
        ),
        String::new(),
        noise(&report.runs),
        String::new(),
        "Added = median of the scenario minus median of `direct` at the same rate (for a `-redirect` scenario: \
         minus `direct-redirect`, never the loopback `direct`). CPU-s / 10k req: utime+stime of \
         each proxy process over the run ÷ successful requests × 10,000. Pair's CPU: A+B's CPU time over the run as \
         a share of one core; near 100 % minus what others take, the pair is saturated and its latency is queueing \
         (oha's correction keeps the rate, so latency shows it). CPU 1 other: share of CPU 1 used by processes other \
         than the measured pair during the run (other work on this shared machine, the idle peers), median \
         (min–max): high values mean a noisy run."
            .into(),
        String::new(),
    ];
    let scenarios = report.scenarios();
    if scenarios.iter().any(|s| s == pods::DIRECT) {
        lines.extend([
            "The redirect path (`PEER-redirect`), as in a pod: A and the load generator in a client network namespace, \
             B and an origin of its own in a server namespace, joined by a veth pair, each with the init container's \
             rules (`braid-proxy init`); each proxy runs as the proxy uid. The client connects to a Service address \
             (10.96.N.10:80) and is redirected to A's outbound port; A connects to B's pod address (10.250.N.2:8080), \
             which the server pod's rule redirects to B's inbound port; B forwards it to its original destination, \
             the origin. braid finds the service by the original destination; HAProxy and the floor have no service \
             table: their A forwards to B's pod address, static, and their B to the original destination \
             (`0.0.0.0:0`, SO_ORIGINAL_DST). Envoy, nginx and splice are not offered on this path. \
             `direct-redirect` = client ──▶ origin across the same veth pair, no rules, no proxy: the redirect \
             scenarios' added latency is over it."
                .to_string(),
            String::new(),
        ]);
    }
    for rate in &report.rates {
        entry(rate, "direct")?;
        let rate_n: f64 =
            rate.parse().map_err(|_| Error::parse("report", format!("rate {rate:?} is not a number")))?;
        lines.extend([
            format!(
                "## Paced {} req/s (oha -c 16 -q {rate} --latency-correction, {})",
                thousands(rate_n, 0),
                s.duration
            ),
            String::new(),
            "| scenario | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | CPU-s / 10k req, A / B | pair's CPU | valid runs | CPU 1 other |".into(),
            "|---|---|---|---|---|---|---|---|---|---|".into(),
        ]);
        for sc in &scenarios {
            let e = entry(rate, sc)?;
            let mut name = sc.clone();
            if e.saturated_runs > 0 {
                name += &format!(
                    " (saturated in {}: {:.0} req/s)",
                    e.saturated_runs,
                    med(Some(e), |e| e.rps).unwrap_or(0.0)
                );
            }
            let direct = super::is_direct(sc);
            let d = entry(rate, baseline_of(sc))?;
            let (add50, add99) = if direct {
                ("—".to_string(), "—".to_string())
            } else {
                (
                    f_add(med(Some(e), |e| e.p50_ms), med(Some(d), |e| e.p50_ms)),
                    f_add(med(Some(e), |e| e.p99_ms), med(Some(d), |e| e.p99_ms)),
                )
            };
            lines.push(format!(
                "| {name} | {} | {} | {} | {add50} | {add99} | {} | {} | {}/{} | {} |",
                f_ms(e.p50_ms, 3),
                f_ms(e.p99_ms, 3),
                f_ms(e.p999_ms, 3),
                if direct { "—".into() } else { f_cpu(e) },
                f_pct(e.pair_cpu_pct),
                e.valid,
                e.runs,
                f_pct(e.cpu1_other_pct)
            ));
        }
        lines.push(String::new());
    }
    entry("max", "direct")?;
    lines.extend([
        format!("## Closed loop, maximum throughput (wrk -t1 -c16, {})", s.wrk_duration),
        String::new(),
        "| scenario | req/s | × direct (-redirect: × direct-redirect) | CPU-s / 10k req, A / B | valid runs | CPU 1 other |".into(),
        "|---|---|---|---|---|---|".into(),
    ]);
    for sc in &scenarios {
        let e = entry("max", sc)?;
        let d = entry("max", baseline_of(sc))?;
        lines.push(format!(
            "| {sc} | {} | {} | {} | {}/{} | {} |",
            f_ms(e.rps, 0),
            ratio(med(Some(e), |e| e.rps), med(Some(d), |e| e.rps)),
            if super::is_direct(sc) { "—".into() } else { f_cpu(e) },
            e.valid,
            e.runs,
            f_pct(e.cpu1_other_pct)
        ));
    }
    lines.extend([
        String::new(),
        "## Memory per proxy (MiB), A / B".into(),
        String::new(),
        "Idle: after one request, before any load. Under load: highest sample (every 0.5 s) over all runs. nginx \
         counts master + worker. A→B connections: the most connections from A to B seen under load (sampled with the \
         memory; 1 = everything multiplexed over one HTTP/2 connection)."
            .into(),
        String::new(),
        "| peer | VmRSS idle | VmRSS under load | RssAnon idle | RssAnon under load | A→B connections |".into(),
        "|---|---|---|---|---|---|".into(),
    ]);
    let idle = |peer: &str| -> Result<[[u64; 2]; 2], Error> {
        report
            .idle_kib
            .get(peer)
            .copied()
            .ok_or_else(|| Error::parse("report", format!("no idle memory of {peer}")))
    };
    for peer in &report.peers {
        let [[ra, aa], [rb, ab]] = idle(peer)?;
        let pk = |f: fn(&Entry) -> Option<u64>| {
            Some(sm.values().filter_map(|p| p.get(peer)).map(|e| f(e).unwrap_or(0)).max().unwrap_or(0))
        };
        let conns = sm.values().filter_map(|p| p.get(peer)?.a_to_b_connections_max).max();
        lines.push(format!(
            "| {peer} | {} / {} | {} / {} | {} / {} | {} / {} | {} |",
            mib(Some(ra)),
            mib(Some(rb)),
            mib(pk(|e| e.peak_vmrss_kib_a)),
            mib(pk(|e| e.peak_vmrss_kib_b)),
            mib(Some(aa)),
            mib(Some(ab)),
            mib(pk(|e| e.peak_rss_anon_kib_a)),
            mib(pk(|e| e.peak_rss_anon_kib_b)),
            conns.map_or("—".into(), |c| c.to_string())
        ));
    }
    if report.peers.len() > 1 {
        type Column<'a> = (String, Box<dyn Fn(&str) -> Option<f64> + 'a>);
        let mut cols: Vec<Column> = Vec::new();
        let add_over = move |point: String, key: fn(&Entry) -> Option<Stat>| {
            move |peer: &str| {
                let p = sm.get(&point)?;
                Some(med(p.get(peer), key)? - med(p.get(baseline_of(peer)), key)?)
            }
        };
        for rate in &report.rates {
            cols.push((format!("added p50 @{rate}"), Box::new(add_over(rate.clone(), |e| e.p50_ms))));
            cols.push((format!("added p99 @{rate}"), Box::new(add_over(rate.clone(), |e| e.p99_ms))));
            let r = rate.clone();
            cols.push((
                format!("CPU A+B @{rate}"),
                Box::new(move |peer: &str| {
                    let e = sm.get(&r)?.get(peer)?;
                    Some(e.cpu_s_per_10k_a?.median + e.cpu_s_per_10k_b?.median)
                }),
            ));
        }
        cols.push(("max req/s".into(), Box::new(|peer: &str| med(sm.get("max")?.get(peer), |e| e.rps))));
        cols.push((
            "VmRSS idle A+B".into(),
            Box::new(|peer: &str| report.idle_kib.get(peer).map(|i| (i[0][0] + i[1][0]) as f64)),
        ));
        cols.push((
            "RssAnon idle A+B".into(),
            Box::new(|peer: &str| report.idle_kib.get(peer).map(|i| (i[0][1] + i[1][1]) as f64)),
        ));
        lines.extend([
            String::new(),
            "## Ratios between peers (row ÷ column; below 1× the row is cheaper, except max req/s)".into(),
            String::new(),
            format!("| | {} |", cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(" | ")),
            "|---".repeat(cols.len() + 1) + "|",
        ]);
        for (a, b) in ratio_rows(&report.peers) {
            let cells: Vec<String> = cols.iter().map(|c| ratio(c.1(&a), c.1(&b))).collect();
            lines.push(format!("| {a} ÷ {b} | {} |", cells.join(" | ")));
        }
    }
    lines.push(String::new());
    lines.extend(super::floor_markdown(report));
    let invalid: Vec<&Run> = report.runs.iter().filter(|r| !r.valid).collect();
    if !invalid.is_empty() {
        lines.extend([String::new(), "## Invalid runs (left out of the medians)".into(), String::new()]);
        for r in invalid {
            let kinds = match &r.error_kinds {
                Some(k) if !k.is_empty() => serde_json::to_string(k).unwrap_or_default(),
                _ => String::new(),
            };
            lines.push(format!(
                "- run {}, {}, {}: {} {kinds}",
                r.run,
                r.point,
                r.scenario,
                r.invalid_because.join(", ")
            ));
        }
    }
    Ok(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::report;
    use super::*;

    #[test]
    fn the_markdown_has_the_tables_the_figures_and_the_ratios() {
        let md = markdown(&report()).expect("renders");
        assert!(md.contains("## Paced 1,000 req/s (oha -c 16 -q 1000 --latency-correction, 15s)"), "{md}");
        assert!(md.contains("| braid | 0.252 (0.251–0.253) | 0.504 (0.502–0.506) |"), "{md}");
        assert!(md.contains("| +0.200 | +0.400 | 3.00 / 2.00 | 50 % (50–50) | 3/4 | 10 % (10–10) |"), "{md}");
        assert!(md.contains("| braid | 35002 (35001–35003) | 0.58× | 0.09 / 0.06 | 3/3 |"), "{md}");
        assert!(md.contains("| braid | 5.0 / 5.0 | 4.9 / 5.9 | 0.7 / 0.7 | 0.7 / 0.9 | 1 |"), "{md}");
        assert!(md.contains("| braid ÷ haproxy | 0.80× | 0.80× | 1.00× | 1.17× | 0.36× | 0.19× |"), "{md}");
        assert!(md.contains("- run 4, 1000, braid: 1 errors {\"connection reset\":1}"), "{md}");
        assert!(md.contains("Took 1.5 min."), "{md}");
    }

    #[test]
    fn redirect_scenarios_meet_their_own_path_and_their_loopback_twin() {
        let peers: Vec<String> = [
            "braid",
            "braid-redirect",
            "braid-mtls-redirect",
            "haproxy",
            "haproxy-redirect",
            "floor-redirect",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows: Vec<String> = ratio_rows(&peers).iter().map(|(a, b)| format!("{a}/{b}")).collect();
        assert_eq!(
            rows,
            [
                "braid/haproxy",
                "braid-redirect/haproxy-redirect",
                "braid-redirect/floor-redirect",
                "braid-mtls-redirect/braid-redirect",
                "braid-redirect/braid",
                "haproxy-redirect/haproxy"
            ]
        );
        assert_eq!(
            super::super::scenarios_of(&peers[..2]),
            ["direct", "direct-redirect", "braid", "braid-redirect"]
        );
        assert_eq!(super::super::scenarios_of(&peers[..1]), ["direct", "braid"]);
    }

    #[test]
    fn ratio_rows_put_braid_against_each_peer_and_its_baseline() {
        let peers: Vec<String> = ["braid", "braid-baseline", "braid-mtls", "braid-baseline-mtls", "haproxy"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = ratio_rows(&peers);
        let rows: Vec<String> = rows.iter().map(|(a, b)| format!("{a}/{b}")).collect();
        assert_eq!(
            rows,
            [
                "braid/braid-baseline",
                "braid/haproxy",
                "braid-mtls/braid-baseline-mtls",
                "braid-mtls/braid",
                "braid-baseline-mtls/braid-baseline"
            ]
        );
    }
}
