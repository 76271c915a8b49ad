//! The `profile` and `costs` modes' reports: perf's self time summed per crate, and per-request
//! costs (CPU, context switches, system calls) from `perf stat`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::stats::median;

/// Who a perf symbol ("[k] name" or "[.] name") belongs to: the kernel, a Rust crate (first path
/// segment), or a part of libc.
pub fn crate_of(symbol: &str) -> String {
    if symbol.starts_with("[k]") {
        return "kernel (syscalls, loopback TCP, scheduling)".into();
    }
    let mut name = symbol.strip_prefix("[.]").unwrap_or(symbol).trim();
    while let Some(rest) = ["<", "&mut ", "&", "dyn "].iter().find_map(|p| name.strip_prefix(p)) {
        name = rest;
    }
    if let Some((head, _)) = name.split_once("::") {
        return head.into();
    }
    let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
    if name.starts_with("0x") || name.starts_with("[unknown]") {
        "unresolved addresses".into()
    } else if has(&["malloc", "free", "realloc", "calloc", "_int_", "tcache", "arena"]) {
        "libc malloc/free".into()
    } else if has(&["memmove", "memcpy", "memset", "memcmp", "memchr", "strlen", "strcmp", "strchr"]) {
        "libc mem*/str*".into()
    } else if has(&[
        "epoll",
        "writev",
        "readv",
        "recv",
        "send",
        "clock_gettime",
        "vdso",
        "syscall",
        "accept",
        "futex",
    ]) || name.ends_with("read")
        || name.ends_with("write")
    {
        "libc syscall wrappers, vDSO clock".into()
    } else {
        "other C symbols".into()
    }
}

/// Self time summed per crate / area from `perf report --no-children --sort sym` rows, largest
/// first, those of at least 0.5 %.
pub fn profile_crates(report: &str) -> Vec<(String, f64)> {
    let mut share: BTreeMap<String, f64> = BTreeMap::new();
    for row in report.lines() {
        let row = row.trim_end();
        let Some((pct, rest)) = row.trim_start().split_once('%') else { continue };
        let (Ok(pct), symbol) = (pct.parse::<f64>(), rest.trim_start()) else { continue };
        if !row.starts_with(char::is_whitespace) || !(symbol.starts_with("[k]") || symbol.starts_with("[.]"))
        {
            continue;
        }
        *share.entry(crate_of(symbol)).or_default() += pct;
    }
    let mut list: Vec<(String, f64)> = share.into_iter().filter(|(_, p)| *p >= 0.5).collect();
    list.sort_by(|a, b| b.1.total_cmp(&a.1));
    list
}

/// `perf stat -x,` counts by event, syscall tracepoints by syscall name.
pub fn parse_perf_stat(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for row in text.lines() {
        let fields: Vec<&str> = row.trim().split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        let Ok(count) = fields[0].parse::<u64>() else { continue };
        let event = fields[2].strip_prefix("syscalls:sys_enter_").unwrap_or(fields[2]);
        *counts.entry(event.to_string()).or_default() += count;
    }
    counts
}

pub const GROUPS: [(&str, &[&str]); 3] = [
    ("reads", &["recvfrom", "read", "readv", "recvmsg"]),
    ("writes", &["writev", "write", "sendto", "sendmsg"]),
    ("epoll", &["epoll_wait", "epoll_pwait"]),
];

/// Per request, for one proxy in one run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Cost {
    pub rps: f64,
    pub user_us: f64,
    pub system_us: f64,
    pub context_switches: f64,
    pub syscalls: f64,
    pub reads: f64,
    pub writes: f64,
    pub epoll: f64,
}

impl Cost {
    /// From the (utime, stime) ticks over the run, `perf stat`'s counts and the requests answered.
    pub fn new(
        rps: f64,
        ticks: (u64, u64),
        clk_tck: u64,
        counts: &BTreeMap<String, u64>,
        requests: u64,
    ) -> Result<Cost, Error> {
        if requests == 0 || clk_tck == 0 {
            return Err(Error::parse("costs", "no successful request, or no clock ticks per second"));
        }
        let n = requests as f64;
        let get = |name: &str| counts.get(name).copied().unwrap_or(0) as f64;
        let group = |i: usize| GROUPS[i].1.iter().map(|name| get(name)).sum::<f64>() / n;
        Ok(Cost {
            rps,
            user_us: ticks.0 as f64 / clk_tck as f64 / n * 1e6,
            system_us: ticks.1 as f64 / clk_tck as f64 / n * 1e6,
            context_switches: get("context-switches") / n,
            syscalls: get("raw_syscalls:sys_enter") / n,
            reads: group(0),
            writes: group(1),
            epoll: group(2),
        })
    }
}

/// The medians of each (point, peer, side) and the Markdown table.
pub fn costs_markdown(
    versions: &str,
    machine: &str,
    rows: &BTreeMap<(String, String, String), Vec<Cost>>,
) -> (String, BTreeMap<String, Cost>) {
    let mut lines = vec![
        "# Where each request's CPU goes, per proxy (braid-bench costs)".to_string(),
        String::new(),
        format!("Versions: {versions}. Machine: {machine}."),
        String::new(),
        "Medians over the runs; per request that went through the pair, for each proxy of the pair.".into(),
        "CPU from /proc/PID/stat (utime, stime); context switches and system calls from `perf stat`".into(),
        "(reads: recvfrom/read/readv/recvmsg, writes: writev/write/sendto/sendmsg, epoll: epoll_wait/pwait).".into(),
        String::new(),
        "| load | proxy | side | req/s | user µs | system µs | CPU-s per 10k | context switches | syscalls | reads | writes | epoll waits | runs |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut keys: Vec<&(String, String, String)> = rows.keys().collect();
    keys.sort_by_key(|k| (k.0 == "max", (*k).clone()));
    let mut summary = BTreeMap::new();
    for key in keys {
        let samples = &rows[key];
        let m = |f: fn(&Cost) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        let c = Cost {
            rps: m(|c| c.rps),
            user_us: m(|c| c.user_us),
            system_us: m(|c| c.system_us),
            context_switches: m(|c| c.context_switches),
            syscalls: m(|c| c.syscalls),
            reads: m(|c| c.reads),
            writes: m(|c| c.writes),
            epoll: m(|c| c.epoll),
        };
        let (point, peer, side) = key;
        let load = if point == "max" { "closed loop (wrk)".to_string() } else { format!("{point} req/s") };
        lines.push(format!(
            "| {load} | {peer} | {side} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            c.rps,
            c.user_us,
            c.system_us,
            (c.user_us + c.system_us) / 100.0,
            c.context_switches,
            c.syscalls,
            c.reads,
            c.writes,
            c.epoll,
            samples.len()
        ));
        summary.insert(format!("{point}/{peer}/{side}"), c);
    }
    (lines.join("\n") + "\n", summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_charged_to_their_crate_or_libc_part() {
        assert_eq!(crate_of("[k] finish_task_switch"), "kernel (syscalls, loopback TCP, scheduling)");
        assert_eq!(crate_of("[.] <hyper::proto::h1::Conn as X>::poll"), "hyper");
        assert_eq!(crate_of("[.] &mut tokio::io::Foo"), "tokio");
        assert_eq!(crate_of("[.] _int_malloc"), "libc malloc/free");
        assert_eq!(crate_of("[.] __memmove_avx_unaligned_erms"), "libc mem*/str*");
        assert_eq!(crate_of("[.] __libc_recv"), "libc syscall wrappers, vDSO clock");
        assert_eq!(crate_of("[.] 0x00007f12"), "unresolved addresses");
        assert_eq!(crate_of("[.] main"), "other C symbols");
    }

    #[test]
    fn perf_report_rows_are_summed_per_crate() {
        let report = "# comment\n    30.00%  [k] finish_task_switch\n    20.50%  [.] hyper::a\n     9.50%  [.] hyper::b\n     0.20%  [.] h2::c\nnot a row\n";
        assert_eq!(
            profile_crates(report),
            [("hyper".to_string(), 30.0), ("kernel (syscalls, loopback TCP, scheduling)".to_string(), 30.0)]
        );
    }

    #[test]
    fn perf_stat_counts_by_event_and_costs_per_request() {
        let csv = "# started\n\n2000,,context-switches,1000,100.00,,\n9000,,raw_syscalls:sys_enter,1,100\n3000,,syscalls:sys_enter_recvfrom,1,100\n1000,,syscalls:sys_enter_writev,1,100\n<not counted>,,syscalls:sys_enter_read,0,0\n";
        let counts = parse_perf_stat(csv);
        assert_eq!(counts.get("recvfrom"), Some(&3000));
        assert_eq!(counts.get("read"), None);
        let cost = Cost::new(1000.0, (50, 30), 100, &counts, 1000).expect("a cost");
        assert_eq!((cost.user_us, cost.system_us), (500.0, 300.0));
        assert_eq!((cost.context_switches, cost.syscalls, cost.reads, cost.writes), (2.0, 9.0, 3.0, 1.0));
        assert!(Cost::new(0.0, (1, 1), 100, &counts, 0).is_err());
        let rows =
            [(("1000".to_string(), "braid".to_string(), "a".to_string()), vec![cost])].into_iter().collect();
        let (md, summary) = costs_markdown("v", "m", &rows);
        assert!(md.contains("| 1000 req/s | braid | a | 1000 | 500.0 | 300.0 | 8.00 | 2.00 | 9.00 | 3.00 | 1.00 | 0.00 | 1 |"), "{md}");
        assert!(summary.contains_key("1000/braid/a"));
    }
}

/// Frames that every sample passes through: they say nothing about where the time goes.
pub fn is_scaffolding(row: &str) -> bool {
    const ANYWHERE: [&str; 12] = [
        "0xffffffffffffffff",
        "tokio::runtime::scheduler",
        "tokio::runtime::runtime::Runtime::block_on",
        "tokio::runtime::task::core",
        "tokio::runtime::task::harness",
        "tokio::runtime::context",
        "std::rt::",
        "__rust_begin_short_backtrace",
        "__libc_start",
        "entry_SYSCALL_64_after_hwframe",
        "PollFn<F> as core::future",
        "TrackedFuture",
    ];
    let row = row.trim_end();
    ANYWHERE.iter().any(|s| row.contains(s))
        || row.ends_with("] _start")
        || row.ends_with("] main")
        || row.ends_with("braid_proxy::main")
}

/// The data rows of a `perf report --stdio` text, their trailing call-graph markers cut, at most
/// 150 characters, the first `n`.
pub fn report_rows(text: &str, n: usize) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(' ') && l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let mut row = l.trim_end();
            while let Some(rest) = row.strip_suffix('-') {
                row = rest.trim_end();
            }
            row.chars().take(150).collect()
        })
        .take(n)
        .collect()
}

#[cfg(test)]
mod scaffolding_tests {
    use super::*;

    #[test]
    fn scaffolding_frames_are_recognised_and_rows_cut() {
        assert!(is_scaffolding("    90.00%  [.] tokio::runtime::task::harness::poll"));
        assert!(is_scaffolding("    99.00%  [.] braid_proxy::main"));
        assert!(is_scaffolding("    99.00%  [.] main"));
        assert!(!is_scaffolding("    20.00%  [.] braid_proxy::http::forward"));
        let text = "# header\n    20.00%  [.] hyper::a  -  -  \n     5.00%  [k] tcp_sendmsg\n\n";
        assert_eq!(report_rows(text, 1), ["    20.00%  [.] hyper::a"]);
    }
}
