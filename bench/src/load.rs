//! What the load generators report: oha's JSON (paced runs, `--output-format json`), wrk's
//! text (the closed loop) and ghz's JSON (gRPC calls, `--format json`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Error;

/// Latency percentiles of a paced run, in milliseconds (oha gives none when no request finished;
/// ghz gives no p99.9).
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
    /// 2xx answers (gRPC: calls that ended OK).
    pub ok: u64,
    /// gRPC: calls that ended with another status.
    pub non2xx: u64,
    /// Requests without an answer (connection errors, timeouts).
    pub errors: u64,
    /// oha's errors by message; wrk gives none.
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub rps: f64,
    /// oha and ghz only.
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

/// Reads ghz's `--format json` (durations in nanoseconds). `what` names the file in errors.
///
/// ghz records a failed call both under its status (statusCodeDistribution, counted in `non2xx`)
/// and under its error message (errorDistribution, counted in `errors`): a failure counts in both.
/// Its percentiles cover successful calls only, and the first million calls of a run at most.
pub fn parse_ghz(text: &str, what: &str) -> Result<Load, Error> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        Error::parse(what, format!("not ghz's complete JSON output ({e}); did ghz stop early?"))
    })?;
    let field = |name: &str| {
        doc.get(name).ok_or_else(|| Error::parse(what, format!("no \"{name}\" in ghz's output")))
    };
    let total_ns = number(field("total")?, what, "total")?;
    let codes = field("statusCodeDistribution")?;
    if !codes.is_object() {
        return Err(Error::parse(what, "statusCodeDistribution is not an object"));
    }
    let codes = counts(Some(codes), what, "statusCodeDistribution")?;
    let error_kinds = match doc.get("errorDistribution") {
        Some(Value::Null) | None => BTreeMap::new(),
        errors => counts(errors, what, "errorDistribution")?,
    };
    let ok = codes.get("OK").copied().unwrap_or(0);
    let non2xx = codes.iter().filter(|(code, _)| code.as_str() != "OK").map(|(_, count)| count).sum();
    // Null when no call succeeded; an entry ghz could not compute is all zeros.
    let mut percentiles = BTreeMap::new();
    if let Some(list) = doc.get("latencyDistribution").filter(|list| !list.is_null()) {
        let list = list.as_array().ok_or_else(|| Error::parse(what, "latencyDistribution is not a list"))?;
        for entry in list {
            let percentage = entry.get("percentage").and_then(Value::as_u64);
            let latency = entry.get("latency").and_then(Value::as_f64);
            match (percentage, latency) {
                (Some(0), _) => {}
                (Some(percentage), Some(ns)) => {
                    percentiles.insert(percentage, ns / 1e6);
                }
                _ => {
                    return Err(Error::parse(
                        what,
                        format!("latencyDistribution entry {entry} has no percentage and latency"),
                    ));
                }
            }
        }
    }
    let slowest = match doc.get("slowest") {
        Some(slowest) => number(slowest, what, "slowest")?,
        None => 0.0,
    };
    let seconds = total_ns / 1e9;
    Ok(Load {
        ok,
        non2xx,
        errors: error_kinds.values().sum(),
        error_kinds,
        rps: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
        latency: Some(Latency {
            p50_ms: percentiles.get(&50).copied(),
            p90_ms: percentiles.get(&90).copied(),
            p99_ms: percentiles.get(&99).copied(),
            p999_ms: None,
            // 0 when no call succeeded.
            max_ms: (slowest > 0.0).then_some(slowest / 1e6),
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

    /// A real ghz 0.121.0 run against grpc-echo, as `Bench::ghz_in` starts it (unary Echo, 1000/s
    /// for 3 s, 16 workers, one connection), its data, histogram and details trimmed.
    pub const GHZ: &str = r#"
      {"date":"2026-12-07T22:35:49Z","endReason":"timeout","options":{"call":"braid.echo.v1.Echo/Echo",
      "host":"127.0.0.1:29090","proto":"/work/main/e2e/apps/proto/echo.proto",
      "import-paths":["/work/main/e2e/apps/proto","."],"insecure":true,"rps":1000,
      "load-schedule":"const","load-start":0,"load-end":0,"load-step":0,"load-step-duration":0,
      "load-max-duration":0,"concurrency":16,"concurrency-schedule":"const","concurrency-start":0,
      "concurrency-end":0,"concurrency-step":1,"concurrency-step-duration":0,
      "concurrency-max-duration":0,"total":2147483647,"connections":1,"duration":3000000000,
      "timeout":20000000000,"dial-timeout":10000000000,"data":{"message":"xxxxxxxx"},"binary":false,
      "CPUs":1},"count":2999,"total":3001418086,"average":2727235,"fastest":116908,"slowest":84882320,
      "rps":999.1943521593079,"errorDistribution":{},"statusCodeDistribution":{"OK":2999},
      "latencyDistribution":[{"percentage":10,"latency":184234},{"percentage":25,"latency":262139},
      {"percentage":50,"latency":536700},{"percentage":75,"latency":1637161},{"percentage":90,
      "latency":6998673},{"percentage":95,"latency":11749336},{"percentage":99,"latency":38631174}],
      "histogram":[{"mark":0.000116908,"count":1,"frequency":0.00033344448149383126},
      {"mark":0.0085934492,"count":2765,"frequency":0.9219739913304434}],
      "details":[{"timestamp":"2026-12-07T22:35:46.655904953Z","latency":2831788,"error":"",
      "status":"OK"}]}"#;

    /// A real ghz run of EchoRepeat (10 replies, closed loop, 16 workers) with ghz's default
    /// `--duration-stop close`: the calls in flight at the end failed (Canceled). Trimmed.
    pub const GHZ_FAILURES: &str = concat!(
        r#"{"date":"2026-12-07T22:35:30Z","endReason":"timeout","#,
        r#""options":{"call":"braid.echo.v1.Echo/EchoRepeat","host":"127.0.0.1:29090","insecure":true,"#,
        r#""concurrency":16,"connections":1,"duration":3000000000,"data":{"count":10,"message":"xxxxxxxx"},"#,
        r#""binary":false,"CPUs":1},"count":5017,"total":3001307100,"average":7384181,"fastest":703992,"#,
        r#""slowest":30773100,"rps":1671.6050150282856,"#,
        r#""errorDistribution":{"rpc error: code = Canceled desc = grpc: the client connection is closing":"#,
        r#"16},"#,
        r#""statusCodeDistribution":{"Canceled":16,"OK":5001},"latencyDistribution":[{"percentage":10,"#,
        r#""latency":3026611},{"percentage":25,"latency":4404579},{"percentage":50,"latency":7063323},"#,
        r#"{"percentage":75,"latency":9258194},{"percentage":90,"latency":11850796},{"percentage":95,"#,
        r#""latency":14683304},{"percentage":99,"latency":24928478}],"histogram":[{"mark":0.000703992,"#,
        r#""count":1,"frequency":0.0001999600079984003}],"#,
        r#""details":[{"timestamp":"2026-12-07T22:35:30.475789106Z","latency":3645744,"#,
        r#""error":"rpc error: code = Canceled desc = grpc: the client connection is closing","#,
        r#""status":"Canceled"}]}"#,
    );

    /// A real ghz run in which no call succeeded (EchoRepeat with count 0). Trimmed.
    pub const GHZ_NONE_OK: &str = concat!(
        r#"{"date":"2026-12-07T22:36:05Z","endReason":"normal","#,
        r#""options":{"call":"braid.echo.v1.Echo/EchoRepeat","insecure":true,"concurrency":1,"total":5,"#,
        r#""connections":1,"data":{"count":0,"message":"x"}},"count":5,"total":5717866,"average":969653,"#,
        r#""fastest":0,"slowest":0,"rps":874.452112029208,"#,
        r#""errorDistribution":{"rpc error: code = InvalidArgument desc = count 0 is out of range: EchoRepe"#,
        r#"at answers 1 to 100000 times":5},"#,
        r#""statusCodeDistribution":{"InvalidArgument":5},"latencyDistribution":null,"histogram":null,"#,
        r#""details":[{"timestamp":"2026-12-07T22:36:05.754749702Z","latency":744628,"#,
        r#""error":"rpc error: code = InvalidArgument desc = count 0 is out of range: EchoRepeat answers 1 "#,
        r#"to 100000 times","#,
        r#""status":"InvalidArgument"}]}"#,
    );

    fn about(value: Option<f64>, expected: f64) -> bool {
        value.is_some_and(|value| (value - expected).abs() < 1e-9)
    }

    #[test]
    fn ghz_json_gives_calls_rate_and_latency_in_ms() {
        let load = parse_ghz(GHZ, "run.ghz.json").expect("parses");
        assert_eq!((load.ok, load.non2xx, load.errors), (2999, 0, 0));
        // ghz's durations are nanoseconds.
        assert!((load.rps - 2999.0 / 3.001418086).abs() < 1e-9, "{}", load.rps);
        let latency = load.latency.expect("ghz gives percentiles");
        assert!(about(latency.p50_ms, 0.5367), "{latency:?}");
        assert!(about(latency.p90_ms, 6.998673), "{latency:?}");
        assert!(about(latency.p99_ms, 38.631174), "{latency:?}");
        assert_eq!(latency.p999_ms, None);
        assert!(about(latency.max_ms, 84.88232), "{latency:?}");
        assert!(load.error_kinds.is_empty());
    }

    #[test]
    fn ghz_counts_a_failed_call_by_status_and_by_error() {
        let load = parse_ghz(GHZ_FAILURES, "run.ghz.json").expect("parses");
        assert_eq!((load.ok, load.non2xx, load.errors), (5001, 16, 16));
        assert!((load.rps - 5001.0 / 3.0013071).abs() < 1e-9, "{}", load.rps);
        let closing = "rpc error: code = Canceled desc = grpc: the client connection is closing";
        assert_eq!(load.error_kinds.get(closing), Some(&16));
        assert!(about(load.latency.expect("some succeeded").p50_ms, 7.063323));

        let load = parse_ghz(GHZ_NONE_OK, "run.ghz.json").expect("parses");
        assert_eq!((load.ok, load.non2xx, load.errors, load.rps), (0, 5, 5, 0.0));
        assert_eq!(load.latency, Some(Latency::default()), "no percentiles without a successful call");
    }

    #[test]
    fn truncated_or_foreign_ghz_output_is_a_clear_error() {
        let error = parse_ghz(&GHZ[..GHZ.len() / 2], "x.ghz.json").expect_err("truncated");
        let text = error.to_string();
        assert!(text.starts_with("x.ghz.json: not ghz's complete JSON output"), "{text}");
        assert!(text.contains("did ghz stop early"), "{text}");
        assert!(parse_ghz("", "g").is_err());
        assert!(parse_ghz("Summary:\n  Count: 5", "g").expect_err("text").to_string().contains("not ghz's"));
        // oha's JSON has its total under "summary".
        let error = parse_ghz(OHA, "g").expect_err("oha's");
        assert_eq!(error.to_string(), "g: no \"total\" in ghz's output");
        let error = parse_ghz(r#"{"total":"3s","statusCodeDistribution":{}}"#, "g").expect_err("text total");
        assert!(error.to_string().contains("total is not a number"), "{error}");
        let error = parse_ghz(r#"{"total":1}"#, "g").expect_err("no codes");
        assert_eq!(error.to_string(), "g: no \"statusCodeDistribution\" in ghz's output");
        let error =
            parse_ghz(r#"{"total":1,"statusCodeDistribution":{"OK":"many"}}"#, "g").expect_err("count");
        assert!(error.to_string().contains("statusCodeDistribution.OK is not a count"), "{error}");
        let bad =
            r#"{"total":1,"statusCodeDistribution":{"OK":1},"latencyDistribution":[{"percentage":50}]}"#;
        let error = parse_ghz(bad, "g").expect_err("no latency");
        assert!(error.to_string().contains("has no percentage and latency"), "{error}");
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
