//! What /proc says about a process and the machine: memory, CPU time, load.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Linux reports utime/stime in USER_HZ ticks, 100 per second on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcStats {
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
    pub rss_anon_kib: u64,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    pub threads: u64,
}

pub fn process(pid: &str) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        vm_rss_kib: field("VmRSS:"),
        vm_hwm_kib: field("VmHWM:"),
        rss_anon_kib: field("RssAnon:"),
        cpu_seconds: cpu_seconds(pid),
        threads: field("Threads:"),
    }
}

/// utime + stime of a whole process (all threads), seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let tick = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(14) + tick(15)) as f64 / TICKS_PER_SECOND
}

/// A process's CPU time per thread, nanoseconds (the first field of each thread's schedstat:
/// the scheduler's runtime, the same total utime+stime is split from, but not rounded to ticks).
/// A thread's figure is exact while it sleeps; while it runs it lags by up to one scheduler tick.
#[derive(Debug, Clone, Default)]
pub struct ThreadTimes {
    threads: HashMap<u32, u64>,
    /// utime + stime of the whole process, seconds: the fallback when schedstat is missing.
    ticks: f64,
}

pub fn thread_times(pid: &str) -> ThreadTimes {
    let mut threads = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.filter_map(Result::ok) {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Some(ns) = schedstat_ns(&entry.path().join("schedstat")) {
                threads.insert(tid, ns);
            }
        }
    }
    ThreadTimes { threads, ticks: cpu_seconds(pid) }
}

impl ThreadTimes {
    /// CPU seconds from `before` to `self`. A thread that ended in between loses what it ran in
    /// the interval; one that started counts whole.
    pub fn since(&self, before: &ThreadTimes) -> f64 {
        if self.threads.is_empty() || before.threads.is_empty() {
            return self.ticks - before.ticks;
        }
        let ns: u64 = self
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(before.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }

    /// utime + stime from `before` to `self` (10 ms ticks).
    pub fn ticks_since(&self, before: &ThreadTimes) -> f64 {
        self.ticks - before.ticks
    }
}

fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// The machine's CPU time so far, seconds summed over cores: (busy, steal).
pub fn machine() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0.0, 0.0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    (busy as f64 / TICKS_PER_SECOND, get(7) as f64 / TICKS_PER_SECOND)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How many processes named `name` run now (rustc: someone is compiling).
pub fn count_named(name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
