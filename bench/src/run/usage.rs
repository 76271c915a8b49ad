//! What processes and CPU 1 use, read from /proc: memory, CPU ticks and the load average.

use std::fs;

use anyhow::{Context, Result};
use braid_bench::system;

use super::Bench;

impl Bench {
    /// (VmRSS, RssAnon) of `pids` summed, KiB.
    pub fn mem_kib(&self, pids: &[u32]) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for pid in pids {
            let path = format!("/proc/{pid}/status");
            let text = fs::read_to_string(&path).with_context(|| format!("process {pid} is gone"))?;
            let (rss, anon) = system::parse_status_memory(&text, &path)?;
            sum = (sum.0 + rss, sum.1 + anon);
        }
        Ok(sum)
    }

    /// (utime, stime) ticks of `pids` summed.
    pub fn cpu_split(&self, pids: &[u32]) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for pid in pids {
            let path = format!("/proc/{pid}/stat");
            let text = fs::read_to_string(&path).with_context(|| format!("process {pid} is gone"))?;
            let (user, system) = system::parse_stat_cpu(&text, &path)?;
            sum = (sum.0 + user, sum.1 + system);
        }
        Ok(sum)
    }

    pub fn cpu_ticks(&self, pids: &[u32]) -> Result<u64> {
        let (user, system) = self.cpu_split(pids)?;
        Ok(user + system)
    }
}

pub fn cpu1() -> Result<[u64; 8]> {
    Ok(system::parse_cpu_line(&fs::read_to_string("/proc/stat")?, 1)?)
}

pub fn loadavg() -> Result<String> {
    let text = fs::read_to_string("/proc/loadavg")?;
    Ok(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
