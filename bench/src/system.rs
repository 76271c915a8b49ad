//! What /proc says about the measured processes and CPU 1: CPU ticks, resident memory.

use crate::Error;

/// utime and stime (clock ticks) from the text of /proc/PID/stat.
pub fn parse_stat_cpu(text: &str, what: &str) -> Result<(u64, u64), Error> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let (_, rest) =
        text.rsplit_once(") ").ok_or_else(|| Error::parse(what, "no ') ' after the command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let field = |i: usize| -> Result<u64, Error> {
        let value = fields.get(i).ok_or_else(|| {
            Error::parse(what, format!("only {} fields after the command name", fields.len()))
        })?;
        value
            .parse()
            .map_err(|_| Error::parse(what, format!("field {} is {value:?}, not a count of ticks", i + 3)))
    };
    Ok((field(11)?, field(12)?))
}

/// (VmRSS, RssAnon) in KiB from the text of /proc/PID/status; a kernel thread has neither (0).
pub fn parse_status_memory(text: &str, what: &str) -> Result<(u64, u64), Error> {
    let (mut rss, mut anon) = (0, 0);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let target = match parts.next() {
            Some("VmRSS:") => &mut rss,
            Some("RssAnon:") => &mut anon,
            _ => continue,
        };
        let value = parts.next().unwrap_or("");
        *target = value.parse().map_err(|_| Error::parse(what, format!("{line:?} holds no KiB count")))?;
    }
    Ok((rss, anon))
}

/// The eight first counters of CPU `cpu` in /proc/stat: user nice system idle iowait irq softirq steal.
pub fn parse_cpu_line(text: &str, cpu: usize) -> Result<[u64; 8], Error> {
    let name = format!("cpu{cpu}");
    let line =
        text.lines().find(|line| line.split_whitespace().next() == Some(name.as_str())).ok_or_else(|| {
            Error::parse("/proc/stat", format!("no {name} line: does this machine have CPU {cpu}?"))
        })?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().map_err(|_| Error::parse("/proc/stat", format!("{name}: {v:?} is not a count"))))
        .collect::<Result<_, _>>()?;
    values
        .try_into()
        .map_err(|v: Vec<u64>| Error::parse("/proc/stat", format!("{name} has {} counters, not 8", v.len())))
}

/// "MODEL, N CPUs" from the text of /proc/cpuinfo.
pub fn machine(cpuinfo: &str) -> String {
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?", |(_, m)| m.trim());
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cpus} CPUs")
}

/// The first port of the ephemeral range (net.ipv4.ip_local_port_range).
pub fn parse_port_range_start(text: &str) -> Result<u16, Error> {
    let first = text.split_whitespace().next().unwrap_or("");
    first.parse().map_err(|_| {
        Error::parse("/proc/sys/net/ipv4/ip_local_port_range", format!("{text:?} does not start with a port"))
    })
}

/// The soft limit on open files from /proc/self/limits ("Max open files  20000  20000  files");
/// None when unlimited.
pub fn parse_open_files_limit(text: &str) -> Result<Option<u64>, Error> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| Error::parse("/proc/self/limits", "no \"Max open files\" line"))?;
    match line.split_whitespace().next() {
        Some("unlimited") => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| {
            Error::parse("/proc/self/limits", format!("open files limit {n:?} is not a number"))
        }),
        None => Err(Error::parse("/proc/self/limits", "the open files line has no limit")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_come_after_the_command_name_even_with_spaces_in_it() {
        let stat = "1234 (nginx: worker) S 1 2 3 0 -1 4194560 100 0 0 0 37 12 0 0 20 0 1 0 500 1000 200";
        assert_eq!(parse_stat_cpu(stat, "stat").expect("parses"), (37, 12));
        let error = parse_stat_cpu("1234 (x) S 1 2", "/proc/1234/stat").expect_err("short");
        assert!(error.to_string().contains("only 3 fields"), "{error}");
        assert!(parse_stat_cpu("no name", "s").is_err());
    }

    #[test]
    fn memory_is_read_in_kib() {
        let status = "Name:\tbraid-proxy\nVmRSS:\t    5120 kB\nRssAnon:\t     700 kB\nRssFile:\t4420 kB\n";
        assert_eq!(parse_status_memory(status, "status").expect("parses"), (5120, 700));
        assert!(parse_status_memory("VmRSS:\tlots kB\n", "status").is_err());
    }

    #[test]
    fn the_counters_of_cpu_1() {
        let stat = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 10 0 5 100 0 0 1 0 0 0\ncpu1 20 1 6 200 2 3 4 5 0 0\n";
        assert_eq!(parse_cpu_line(stat, 1).expect("there"), [20, 1, 6, 200, 2, 3, 4, 5]);
        let error = parse_cpu_line(stat, 2).expect_err("no cpu2");
        assert!(error.to_string().contains("no cpu2 line"), "{error}");
    }

    #[test]
    fn machine_names_the_model_and_counts_the_cpus() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(machine(info), "AMD EPYC, 2 CPUs");
    }

    #[test]
    fn the_ephemeral_range_starts_at_its_first_port() {
        assert_eq!(parse_port_range_start("32768\t60999\n").expect("parses"), 32768);
        assert!(parse_port_range_start("").is_err());
    }

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files_limit(limits).expect("parses"), Some(1024));
        assert_eq!(parse_open_files_limit("Max open files  unlimited unlimited files\n").expect("ok"), None);
        assert!(parse_open_files_limit("Max processes 1 1\n").is_err());
        assert!(parse_open_files_limit("Max open files  many  files\n").is_err());
    }
}
