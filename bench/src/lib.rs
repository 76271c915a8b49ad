//! The pure parts of Braid's proxy benchmark: reading what the load generators, callgrind, `nm`
//! and /proc print, the statistics, the reports, and the peers' configuration templates. The
//! `braid-bench` binary starts the processes and measures; everything here is tested on text.

pub mod callgrind;
pub mod instructions;
pub mod link_order;
pub mod load;
pub mod perf;
pub mod pods;
pub mod relay;
pub mod report;
pub mod settings;
pub mod stats;
pub mod system;
pub mod template;
pub mod training;
pub mod webhook;
pub mod workloads;

/// What went wrong reading an outside input (a load generator's output, a callgrind record, a
/// template, a stored report, a knob).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `what` could not be understood: `detail` says why.
    #[error("{what}: {detail}")]
    Parse { what: String, detail: String },
}

impl Error {
    pub(crate) fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Parse { what: what.into(), detail: detail.into() }
    }
}

/// Formats `value` rounded to `decimals`, with a comma between thousands: 12345.6 → "12,346".
pub fn thousands(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (text.clone(), None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if value < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated_and_rounded() {
        assert_eq!(thousands(12345.6, 0), "12,346");
        assert_eq!(thousands(999.0, 0), "999");
        assert_eq!(thousands(1000.0, 0), "1,000");
        assert_eq!(thousands(1234567.891, 2), "1,234,567.89");
        assert_eq!(thousands(-4000.0, 0), "-4,000");
        assert_eq!(thousands(0.0, 0), "0");
    }
}

/// "YYYYMMDDTHHMMSSZ" of a time in seconds since the Unix epoch (UTC), as result files are named.
pub fn utc_stamp(unix_seconds: u64) -> String {
    let (days, secs) = (unix_seconds / 86_400, unix_seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod stamp_tests {
    use super::utc_stamp;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        // 2026-11-28 13:40:38 UTC, the stamp of a stored report.
        assert_eq!(utc_stamp(1_795_873_238), "20261128T134038Z");
    }
}
