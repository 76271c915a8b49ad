//! Durations as the API spells them: Gateway API's GEP-2257 format ("500ms", "2s", "1h30m").
//!
//! The schema enforces the same pattern, so the API server rejects a malformed value before the
//! operator sees it; parsing here is for the operator and the proxy (which reads the same
//! spelling in its config file) to use the value.

use std::time::Duration;

/// The pattern the CRD schema enforces: one to four number+unit pairs, units h, m, s, ms.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration: write a number and a unit (h, m, s, ms), like \"2s\" or \"500ms\"")]
    Malformed(String),
    #[error("{0:?} repeats a unit or lists units out of order: write them largest first, like \"1m30s\"")]
    UnitOrder(String),
}

/// Parses a GEP-2257 duration. Units must appear largest first, each at most once.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_owned());
    if text.is_empty() {
        return Err(malformed());
    }
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut pos = 0;
    let mut pairs = 0;
    // Rank of the last unit seen (h=4 .. ms=1), so "1s1h" and "1s1s" are refused.
    let mut last_rank = u8::MAX;
    while pos < bytes.len() {
        let digits_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let digits = &text[digits_start..pos];
        if digits.is_empty() || digits.len() > 5 {
            return Err(malformed());
        }
        let value: u64 = digits.parse().map_err(|_| malformed())?;
        let rest = &text[pos..];
        let (unit, rank, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 1, 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 4, 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 3, 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 2, 1)
        } else {
            return Err(malformed());
        };
        if rank >= last_rank {
            return Err(DurationError::UnitOrder(text.to_owned()));
        }
        last_rank = rank;
        pos += len;
        pairs += 1;
        total += unit * u32::try_from(value).map_err(|_| malformed())?;
    }
    if pairs > 4 {
        return Err(malformed());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m1s1ms"), Ok(Duration::from_millis(61_001)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_malformed_values_with_a_reason() {
        for bad in ["", "2", "s", "2 s", "-1s", "1.5s", "2sec", "1d", "123456s", "ms"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("not a duration"), "{bad}: {err}");
        }
        for bad in ["1s1h", "1s1s", "500ms2s"] {
            assert!(matches!(parse_duration(bad), Err(DurationError::UnitOrder(_))), "{bad}");
        }
    }

    #[test]
    fn anything_parsed_passes_the_schema_pattern() {
        let pattern = regex::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        for text in ["2s", "500ms", "1h30m", "99999ms", "1h1m1s1ms", "0s"] {
            assert!(parse_duration(text).is_ok(), "{text}");
            assert!(pattern.is_match(text), "{text} parses but fails the schema pattern");
        }
        for text in ["", "2", "1d", "1.5s", "1h1m1s1ms1ms"] {
            assert!(!pattern.is_match(text), "{text} passes the schema pattern");
        }
    }
}
