//! What the load generators report: oha's JSON (paced runs, `--output-format json`) and wrk's
//! text (the closed loop).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Error;

/// Latency percentiles of a paced run, in milliseconds (oha gives none when no request finished).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One load generator run: answers, failures, successful requests per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// 2xx answers.
    pub ok: u64,
    pub non2xx: u64,
    /// Requests without an answer (connection errors, timeouts).
    pub errors: u64,
    /// oha's errors by message; wrk gives none.
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub rps: f64,
    /// Paced runs only (oha).
    pub latency: Option<Latency>,
}

fn number(value: &Value, what: &str, field: &str) -> Result<f64, Error> {
    value.as_f64().ok_or_else(|| Error::parse(what, format!("{field} is not a number: {value}")))
}

fn counts(map: Option<&Value>, what: &str, field: &str) -> Result<BTreeMap<String, u64>, Error> {
    let Some(map) = map else { return Ok(BTreeMap::new()) };
    let object = map.as_object().ok_or_else(|| Error::parse(what, format!("{field} is not an object")))?;
    object
        .iter()
        .map(|(key, count)| {
            count
                .as_u64()
                .map(|n| (key.clone(), n))
                .ok_or_else(|| Error::parse(what, format!("{field}.{key} is not a count: {count}")))
        })
        .collect()
}

/// Reads oha's `--output-format json`. `what` names the file in errors.
pub fn parse_oha(text: &str, what: &str) -> Result<Load, Error> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        Error::parse(what, format!("not oha's complete JSON output ({e}); did oha stop early?"))
    })?;
    let summary = doc.get("summary").ok_or_else(|| Error::parse(what, "no \"summary\" in oha's output"))?;
    let total = number(
        summary.get("total").ok_or_else(|| Error::parse(what, "no summary.total in oha's output"))?,
        what,
        "summary.total",
    )?;
    let percentiles = doc
        .get("latencyPercentiles")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::parse(what, "no \"latencyPercentiles\" in oha's output"))?;
    let ms = |v: Option<&Value>| v.and_then(Value::as_f64).map(|s| s * 1000.0);
    let codes = counts(doc.get("statusCodeDistribution"), what, "statusCodeDistribution")?;
    let error_kinds = counts(doc.get("errorDistribution"), what, "errorDistribution")?;
    let (mut ok, mut non2xx) = (0, 0);
    for (code, count) in &codes {
        let code: u16 =
            code.parse().map_err(|_| Error::parse(what, format!("status code {code:?} is not a number")))?;
        if (200..300).contains(&code) {
            ok += count;
        } else {
            non2xx += count;
        }
    }
    Ok(Load {
        ok,
        non2xx,
        errors: error_kinds.values().sum(),
        error_kinds,
        rps: if total > 0.0 { ok as f64 / total } else { 0.0 },
        latency: Some(Latency {
            p50_ms: ms(percentiles.get("p50")),
            p90_ms: ms(percentiles.get("p90")),
            p99_ms: ms(percentiles.get("p99")),
            p999_ms: ms(percentiles.get("p99.9")),
            max_ms: ms(summary.get("slowest")),
        }),
    })
}

/// The numbers right after `label` on the first line holding it, split at commas and spaces.
fn after<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines().find_map(|line| line.split_once(label).map(|(_, rest)| rest.trim()))
}

fn int(text: &str, what: &str) -> Result<u64, Error> {
    text.parse().map_err(|_| Error::parse(what, format!("{text:?} is not a count in wrk's output")))
}

/// Reads wrk's text output. `what` names the file in errors.
pub fn parse_wrk(text: &str, what: &str) -> Result<Load, Error> {
    let truncated =
        || Error::parse(what, "no \"N requests in\" line: wrk's output is incomplete (did wrk stop early?)");
    let total = text
        .lines()
        .find_map(|line| line.split_once(" requests in ").map(|(n, _)| n.trim()))
        .ok_or_else(truncated)?;
    let total = int(total, what)?;
    let rps = after(text, "Requests/sec:")
        .ok_or_else(|| Error::parse(what, "no \"Requests/sec:\" line: wrk's output is incomplete"))?;
    let rps: f64 =
        rps.parse().map_err(|_| Error::parse(what, format!("Requests/sec {rps:?} is not a number")))?;
    let non2xx = match after(text, "Non-2xx or 3xx responses:") {
        Some(n) => int(n, what)?,
        None => 0,
    };
    // "Socket errors: connect 0, read 1, write 0, timeout 2"
    let errors = match after(text, "Socket errors:") {
        Some(list) => {
            let mut sum = 0;
            for part in list.split(',') {
                let count = part
                    .split_whitespace()
                    .nth(1)
                    .ok_or_else(|| Error::parse(what, format!("socket error {part:?} has no count")))?;
                sum += int(count, what)?;
            }
            sum
        }
        None => 0,
    };
    let ok = total.saturating_sub(non2xx);
    Ok(Load {
        ok,
        non2xx,
        errors,
        error_kinds: BTreeMap::new(),
        rps: if total > 0 { rps * ok as f64 / total as f64 } else { 0.0 },
        latency: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const OHA: &str = r#"{"summary":{"successRate":1.0,"total":15.001,"slowest":0.0042,"fastest":0.0001,
      "average":0.0003,"requestsPerSec":999.9},"latencyPercentiles":{"p10":0.0001,"p50":0.00025,
      "p90":0.0004,"p99":0.0009,"p99.9":0.002,"p99.99":0.003},
      "statusCodeDistribution":{"200":14990,"503":10},"errorDistribution":{"connection closed":2}}"#;

    pub const WRK: &str = "Running 10s test @ http://127.0.0.1:1234/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   470.12us  100.00us   5.00ms   90.00%
    Req/Sec    34.00k     1.00k   36.00k    70.00%
  340000 requests in 10.00s, 400.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 40
Requests/sec:  34000.00
Transfer/sec:     40.00MB
";

    #[test]
    fn oha_json_gives_answers_errors_rate_and_latency_in_ms() {
        let load = parse_oha(OHA, "run.oha.json").expect("parses");
        assert_eq!((load.ok, load.non2xx, load.errors), (14990, 10, 2));
        assert!((load.rps - 14990.0 / 15.001).abs() < 1e-9);
        let latency = load.latency.expect("paced");
        assert_eq!(latency.p50_ms, Some(0.25));
        assert_eq!(latency.p999_ms, Some(2.0));
        assert_eq!(latency.max_ms, Some(4.2));
        assert_eq!(load.error_kinds.get("connection closed"), Some(&2));
    }

    #[test]
    fn truncated_oha_output_is_a_clear_error() {
        let error = parse_oha(&OHA[..OHA.len() / 2], "x.oha.json").expect_err("truncated");
        let text = error.to_string();
        assert!(text.starts_with("x.oha.json: not oha's complete JSON output"), "{text}");
        assert!(text.contains("did oha stop early"), "{text}");
    }

    #[test]
    fn oha_output_without_a_summary_or_with_bad_codes_is_refused() {
        let error = parse_oha(r#"{"latencyPercentiles":{}}"#, "o").expect_err("no summary");
        assert_eq!(error.to_string(), "o: no \"summary\" in oha's output");
        let bad = r#"{"summary":{"total":1.0},"latencyPercentiles":{},"statusCodeDistribution":{"abc":1}}"#;
        let error = parse_oha(bad, "o").expect_err("bad code");
        assert!(error.to_string().contains("\"abc\" is not a number"), "{error}");
    }

    #[test]
    fn wrk_text_gives_answers_errors_and_the_successful_rate() {
        let load = parse_wrk(WRK, "run.wrk.txt").expect("parses");
        assert_eq!((load.ok, load.non2xx, load.errors), (339960, 40, 3));
        assert!((load.rps - 34000.0 * 339960.0 / 340000.0).abs() < 1e-6);
        assert!(load.latency.is_none());
    }

    #[test]
    fn truncated_wrk_output_is_a_clear_error() {
        let cut = &WRK[..WRK.find("  340000").expect("there")];
        let error = parse_wrk(cut, "max.wrk.txt").expect_err("truncated");
        assert!(error.to_string().contains("wrk's output is incomplete"), "{error}");
        let no_rate = &WRK[..WRK.find("Requests/sec").expect("there")];
        let error = parse_wrk(no_rate, "max.wrk.txt").expect_err("no rate");
        assert!(error.to_string().contains("Requests/sec"), "{error}");
        assert!(parse_wrk("", "empty").is_err());
    }
}
