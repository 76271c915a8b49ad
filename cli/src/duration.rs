//! Durations as Istio and Linkerd write them (Go's `1m30s`, `1.5s`, `300ms`) into the API's
//! spelling (GEP-2257: `1m30s`, `1s500ms`; whole milliseconds, units h, m, s, ms).

use std::time::Duration;

/// Parses a Go duration: a sequence of decimal numbers each with a unit (h, m, s, ms, us, µs,
/// ns).
pub fn parse_go(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like \"5s\", \"1.5s\" or \"300ms\"");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += number * scale;
    }
    if !total_ns.is_finite() || total_ns > 1e18 {
        return Err(bad());
    }
    // Rounded to the nanosecond: "1.1s" is 1100 ms, not 1099.999... ms.
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Writes a duration the API's way; a duration that is not whole milliseconds is refused.
pub fn render(duration: Duration) -> Result<String, String> {
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "{duration:?} is not a whole number of milliseconds, the finest unit Braid takes"
        ));
    }
    let ms = duration.as_millis();
    if ms == 0 {
        return Ok("0s".to_owned());
    }
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 99_999 {
        return Err(format!("{duration:?} is too long"));
    }
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    Ok(out)
}

/// A Go duration in the API's spelling.
pub fn to_braid(text: &str) -> Result<String, String> {
    render(parse_go(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_become_api_durations() {
        assert_eq!(to_braid("5s").as_deref(), Ok("5s"));
        assert_eq!(to_braid("1.5s").as_deref(), Ok("1s500ms"));
        assert_eq!(to_braid("300ms").as_deref(), Ok("300ms"));
        assert_eq!(to_braid("90s").as_deref(), Ok("1m30s"));
        assert_eq!(to_braid("1h0m0s").as_deref(), Ok("1h"));
        assert_eq!(to_braid("0.1s").as_deref(), Ok("100ms"));
        assert_eq!(to_braid("0s").as_deref(), Ok("0s"));
    }

    #[test]
    fn bad_durations_are_refused_with_the_text() {
        for text in ["", "5", "5 s", "fast", "1d", "s"] {
            let err = to_braid(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
        assert!(to_braid("1500us").unwrap_err().contains("milliseconds"));
    }
}
