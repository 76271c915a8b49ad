//! Faults the echo servers inject on purpose: fail a fraction of requests, delay a fraction.
//! Set per process (flags, env) and overridable per request with `x-echo-*` headers, so one
//! deployment serves both the healthy and the misbehaving cases of a test.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Fraction of requests (0 to 1) that fail.
pub const FAIL_RATE_HEADER: &str = "x-echo-fail-rate";
/// The HTTP status a failed request gets (400-599).
pub const FAIL_STATUS_HEADER: &str = "x-echo-fail-status";
/// How long a delayed request waits before it is answered ("500ms", "6s").
pub const DELAY_HEADER: &str = "x-echo-delay";
/// Fraction of requests (0 to 1) that are delayed.
pub const DELAY_RATE_HEADER: &str = "x-echo-delay-rate";

#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub fail_rate: f64,
    pub fail_status: StatusCode,
    pub delay: Duration,
    pub delay_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            fail_status: StatusCode::INTERNAL_SERVER_ERROR,
            delay: Duration::ZERO,
            delay_rate: 1.0,
        }
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub delay: Duration,
    pub fail: Option<StatusCode>,
}

impl Faults {
    /// These faults with the request's `x-echo-*` headers applied; a malformed header is an error
    /// (the caller answers 400), not silently ignored, so a test cannot pass by accident.
    pub fn with_headers(&self, headers: &HeaderMap) -> Result<Faults, String> {
        let mut faults = self.clone();
        let header = |name: &str| -> Result<Option<&str>, String> {
            headers
                .get(name)
                .map(|value| value.to_str().map_err(|_| format!("header {name} is not ASCII")))
                .transpose()
        };
        if let Some(value) = header(FAIL_RATE_HEADER)? {
            faults.fail_rate = prefixed(FAIL_RATE_HEADER, parse_rate(value))?;
        }
        if let Some(value) = header(FAIL_STATUS_HEADER)? {
            faults.fail_status = prefixed(FAIL_STATUS_HEADER, parse_fail_status(value))?;
        }
        if let Some(value) = header(DELAY_HEADER)? {
            faults.delay = prefixed(DELAY_HEADER, parse_duration(value))?;
        }
        if let Some(value) = header(DELAY_RATE_HEADER)? {
            faults.delay_rate = prefixed(DELAY_RATE_HEADER, parse_rate(value))?;
        }
        Ok(faults)
    }

    /// Rolls the dice for one request.
    pub fn roll(&self) -> Outcome {
        // fastrand::f64() is in [0, 1): a rate of 0 never fires, a rate of 1 always does.
        let delay = if !self.delay.is_zero() && fastrand::f64() < self.delay_rate {
            self.delay
        } else {
            Duration::ZERO
        };
        let fail = (fastrand::f64() < self.fail_rate).then_some(self.fail_status);
        Outcome { delay, fail }
    }
}

fn prefixed<T>(name: &str, result: Result<T, String>) -> Result<T, String> {
    result.map_err(|err| format!("header {name}: {err}"))
}

/// A fraction from 0 to 1 ("0.3").
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        Ok(_) => Err(format!("{text:?} is out of range: a rate is a fraction from 0 to 1, like 0.3")),
        Err(_) => Err(format!("{text:?} is not a number: a rate is a fraction from 0 to 1, like 0.3")),
    }
}

/// An HTTP status a failing request can get: 400 to 599.
pub fn parse_fail_status(text: &str) -> Result<StatusCode, String> {
    match text.trim().parse::<u16>() {
        Ok(code @ 400..=599) => StatusCode::from_u16(code).map_err(|err| err.to_string()),
        _ => Err(format!("{text:?} is not an error status: give one from 400 to 599")),
    }
}

/// A duration as the mesh API spells it: "500ms", "6s", "1m30s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    braid_runtime::duration::parse_duration(text.trim()).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_fractions() {
        assert_eq!(parse_rate("0.3"), Ok(0.3));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").unwrap_err().contains("out of range"));
        assert!(parse_rate("-0.1").unwrap_err().contains("out of range"));
        assert!(parse_rate("NaN").unwrap_err().contains("out of range"));
        assert!(parse_rate("lots").unwrap_err().contains("not a number"));
    }

    #[test]
    fn headers_override_the_defaults_and_bad_ones_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(FAIL_RATE_HEADER, "1".parse().unwrap());
        headers.insert(FAIL_STATUS_HEADER, "503".parse().unwrap());
        headers.insert(DELAY_HEADER, "20ms".parse().unwrap());
        let faults = Faults::default().with_headers(&headers).unwrap();
        assert_eq!(faults.fail_rate, 1.0);
        assert_eq!(faults.fail_status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            faults.roll(),
            Outcome { delay: Duration::from_millis(20), fail: Some(StatusCode::SERVICE_UNAVAILABLE) }
        );

        headers.insert(FAIL_STATUS_HEADER, "200".parse().unwrap());
        let err = Faults::default().with_headers(&headers).unwrap_err();
        assert!(err.contains("x-echo-fail-status") && err.contains("400 to 599"), "{err}");
        headers.remove(FAIL_STATUS_HEADER);
        headers.insert(DELAY_HEADER, "6".parse().unwrap());
        let err = Faults::default().with_headers(&headers).unwrap_err();
        assert!(err.contains("x-echo-delay") && err.contains("not a duration"), "{err}");
    }

    #[test]
    fn no_faults_by_default() {
        let faults = Faults::default();
        for _ in 0..1000 {
            assert_eq!(faults.roll(), Outcome { delay: Duration::ZERO, fail: None });
        }
    }
}
