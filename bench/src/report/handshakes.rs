//! The report's section on new mTLS connections between braid proxies, from
//! `examples/mtls_handshakes`.

use crate::Error;

/// The handshake rate `examples/mtls_handshakes` prints: its "per_second_per_core" figure.
pub fn handshake_rate(text: &str) -> Result<u64, Error> {
    let what = "mtls_handshakes output";
    let rest = text
        .split_once("\"per_second_per_core\":")
        .map(|(_, rest)| rest.trim_start())
        .ok_or_else(|| Error::parse(what, format!("no \"per_second_per_core\" in {:?}", text.trim())))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map_err(|_| {
        Error::parse(what, format!("\"per_second_per_core\" is not a count in {:?}", text.trim()))
    })
}

/// The report's section on new connections between braid proxies.
pub fn handshakes_markdown(rates: &[u64]) -> String {
    // The lower middle for an even count (a rate that was measured), as the shell version took it.
    let mut sorted = rates.to_vec();
    sorted.sort_unstable();
    let middle = sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    format!(
        "\n## New connections between braid proxies (examples/mtls_handshakes)\n\n\
         Full TLS 1.3 mutual handshakes (ECDSA P-256 leaf + issuer, SPIFFE id checked, ring), client and server both \
         on CPU 1: median {middle} per second per core (runs: {}).\n",
        rates.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
    )
}

#[cfg(test)]
mod handshake_tests {
    use super::*;

    #[test]
    fn the_handshake_rate_is_read_and_reported_as_a_median() {
        let text = r#"{"handshakes": 7810, "seconds": 5.0, "per_second_per_core": 1562}"#;
        assert_eq!(handshake_rate(text).expect("there"), 1562);
        assert!(handshake_rate("{}").expect_err("none").to_string().contains("no \"per_second_per_core\""));
        assert!(handshake_rate(r#"{"per_second_per_core": null}"#).is_err());
        let md = handshakes_markdown(&[1500, 1562, 1530]);
        assert!(md.contains("median 1530 per second per core (runs: 1500 1562 1530)"), "{md}");
    }
}
