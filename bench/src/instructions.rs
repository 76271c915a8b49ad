//! The instructions report: user-space instructions each proxy executed per request (callgrind),
//! by crate (braid-proxy) or part (HAProxy) and by function, and braid ÷ HAProxy.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::callgrind::Costs;
use crate::thousands;

pub const TOP_FUNCTIONS: usize = 15;
pub const TOP_AREAS: usize = 10;

fn is_library(object: &str) -> bool {
    object.contains(".so")
}

fn starts_with_any(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

/// HAProxy's own functions by the prefix of their name.
fn haproxy_part(name: &str) -> &'static str {
    if starts_with_any(name, &["h2_", "hpack_"]) {
        "HTTP/2 + HPACK"
    } else if name.starts_with("h1_") {
        "HTTP/1"
    } else if name.starts_with("htx_") {
        "HTX"
    } else if name.starts_with("http_") {
        "HTTP analysers"
    } else if starts_with_any(name, &["process_stream", "stream_", "sc_", "cs_"]) {
        "streams"
    } else if starts_with_any(name, &["pool_", "__pool_"]) {
        "pools"
    } else if name.len() > 2 && name.starts_with("0x") && name[2..].bytes().all(|b| b.is_ascii_hexdigit()) {
        "unnamed (static functions; Debian strips their symbols)"
    } else {
        "HAProxy other"
    }
}

/// The crate, or part of HAProxy or of a C library, a function belongs to.
pub fn area(object: &str, name: &str) -> String {
    if is_library(object) {
        if starts_with_any(name, &["__mem", "__str"]) {
            return "libc mem*/str*".into();
        }
        if starts_with_any(
            name,
            &["_int_", "malloc", "free", "realloc", "calloc", "cfree", "unlink_chunk", "tcache"],
        ) {
            return "libc malloc/free".into();
        }
        return object.into();
    }
    if object == "haproxy" {
        return haproxy_part(name).into();
    }
    if !name.contains("::") {
        // A C or assembly symbol: in this binary, ring's crypto.
        let bare = name.strip_prefix('_').unwrap_or(name).to_ascii_lowercase();
        let ring = ["aes", "gcm", "chacha", "x25519", "ecp_", "p256", "sha", "ring_", "gfp"];
        return if starts_with_any(&bare, &ring) { "ring (C/asm)" } else { "other C/asm" }.into();
    }
    let mut rest = name;
    loop {
        if let Some(r) = rest.strip_prefix("core::ptr::drop_in_place<") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('<') {
            rest = r;
        } else {
            break;
        }
    }
    let head = rest.split("::").next().unwrap_or("");
    let is_crate = rest.contains("::")
        && head.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && head.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if is_crate { head.to_string() } else { "other".into() }
}

/// One proxy of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub peer: String,
    /// "A" or "B".
    pub side: String,
    pub per_request: f64,
    /// (area, instructions per request), largest first.
    pub areas: Vec<(String, f64)>,
    /// (function, instructions per request), largest first.
    pub top: Vec<(String, f64)>,
}

pub fn summarize(peer: &str, side: &str, costs: &Costs, requests: u64) -> Proxy {
    let n = requests as f64;
    let mut areas: Vec<(String, u64)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for ((object, name), ir) in &costs.functions {
        let key = area(object, name);
        let i = *at.entry(key.clone()).or_insert_with(|| {
            areas.push((key, 0));
            areas.len() - 1
        });
        areas[i].1 += ir;
    }
    let mut areas: Vec<(String, f64)> = areas.into_iter().map(|(k, v)| (k, v as f64 / n)).collect();
    areas.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut top: Vec<_> = costs.functions.iter().collect();
    top.sort_by_key(|f| std::cmp::Reverse(f.1));
    let top = top
        .into_iter()
        .take(TOP_FUNCTIONS)
        .map(|((object, name), ir)| {
            let label = if is_library(object) { format!("{name} ({object})") } else { name.clone() };
            (label, *ir as f64 / n)
        })
        .collect();
    Proxy { peer: peer.into(), side: side.into(), per_request: costs.total() as f64 / n, areas, top }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub pair: String,
    #[serde(rename = "A")]
    pub a: f64,
    #[serde(rename = "B")]
    pub b: f64,
}

/// braid ÷ HAProxy per side for each link both were measured over, and braid ÷ its baseline.
pub fn ratios(results: &[Proxy]) -> Vec<Ratio> {
    let per: HashMap<(&str, &str), f64> =
        results.iter().map(|r| ((r.peer.as_str(), r.side.as_str()), r.per_request)).collect();
    let pairs = [
        ("braid", "haproxy"),
        ("braid-mtls", "haproxy-mtls"),
        ("braid", "braid-baseline"),
        ("braid-mtls", "braid-baseline-mtls"),
    ];
    pairs
        .iter()
        .filter_map(|(ours, theirs)| {
            let a = per.get(&(ours, "A"))? / per.get(&(theirs, "A"))?;
            let b = per.get(&(ours, "B"))? / per.get(&(theirs, "B"))?;
            Some(Ratio { pair: format!("{ours} ÷ {theirs}"), a, b })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub requests: u64,
    pub versions: String,
    pub results: Vec<Proxy>,
    pub ratios: Vec<Ratio>,
}

pub fn markdown(report: &Report) -> String {
    let mut lines = vec![
        "# Instructions per request, per proxy (braid-bench instructions)".to_string(),
        String::new(),
        format!("Versions: {}.", report.versions),
        String::new(),
        format!(
            "Each pair ran under callgrind; counters zeroed after a warm-up, then {} requests (oha, closed loop, \
             16 connections, 1 KiB responses), then dumped. User-space instructions executed per request by each \
             proxy: exact and repeatable, unlike time, but blind to the kernel (about half of each proxy's CPU time \
             here) and to cache misses.",
            thousands(report.requests as f64, 0)
        ),
        String::new(),
        "| pair | proxy | instructions per request | largest shares |".into(),
        "|---|---|---|---|".into(),
    ];
    for r in &report.results {
        let shares: Vec<String> = r
            .areas
            .iter()
            .take(TOP_AREAS)
            .map(|(k, v)| format!("{k} {:.0} %", 100.0 * v / r.per_request))
            .collect();
        lines.push(format!(
            "| {} | {} | {} | {} |",
            r.peer,
            r.side,
            thousands(r.per_request, 0),
            shares.join(", ")
        ));
    }
    if !report.ratios.is_empty() {
        lines.extend([
            String::new(),
            "braid ÷ HAProxy (and ÷ its baseline), instructions per request over the same kind of link:"
                .into(),
            String::new(),
            "| pair | A | B |".into(),
            "|---|---|---|".into(),
        ]);
        for row in &report.ratios {
            lines.push(format!("| {} | {:.2}× | {:.2}× |", row.pair, row.a, row.b));
        }
    }
    for r in &report.results {
        lines.extend([
            String::new(),
            format!("## {} {}: own instructions per request, top {TOP_FUNCTIONS} functions", r.peer, r.side),
            String::new(),
        ]);
        for (name, ir) in &r.top {
            let name: String = name.chars().take(150).collect();
            lines.push(format!("    {:>8}  {:4.1} %  {name}", thousands(*ir, 0), 100.0 * ir / r.per_request));
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callgrind;

    #[test]
    fn areas_of_rust_haproxy_and_c_functions() {
        assert_eq!(area("braid-proxy", "hyper::proto::h1::role::parse"), "hyper");
        assert_eq!(area("braid-proxy", "core::ptr::drop_in_place<h2::frame::Frame>"), "h2");
        assert_eq!(area("braid-proxy", "<tokio::io::PollEvented as Drop>::drop"), "tokio");
        assert_eq!(area("braid-proxy", "_aes_gcm_enc_update_vaes_avx2"), "ring (C/asm)");
        assert_eq!(area("braid-proxy", "GFp_sha256_block"), "ring (C/asm)");
        assert_eq!(area("braid-proxy", "main"), "other C/asm");
        assert_eq!(area("libc.so.6", "__memcpy_avx_unaligned"), "libc mem*/str*");
        assert_eq!(area("libc.so.6", "_int_malloc"), "libc malloc/free");
        assert_eq!(area("libc.so.6", "epoll_wait"), "libc.so.6");
        assert_eq!(area("haproxy", "h2_process_demux"), "HTTP/2 + HPACK");
        assert_eq!(
            area("haproxy", "0x00000000004a1b2c"),
            "unnamed (static functions; Debian strips their symbols)"
        );
        assert_eq!(area("haproxy", "listener_accept"), "HAProxy other");
    }

    #[test]
    fn per_request_figures_ratios_and_the_markdown() {
        let costs = callgrind::parse(callgrind::tests::RECORD, "r").expect("parses");
        let a = summarize("braid", "A", &costs, 5);
        assert_eq!(a.per_request, 95.0);
        assert_eq!(a.top[0], ("memcpy (libc.so.6)".to_string(), 60.0));
        assert_eq!(a.areas[0].0, "libc.so.6");
        let mut haproxy = a.clone();
        haproxy.peer = "haproxy".into();
        haproxy.per_request = 190.0;
        let mut b = a.clone();
        b.side = "B".into();
        let mut hb = haproxy.clone();
        hb.side = "B".into();
        let results = vec![a, b, haproxy, hb];
        let ratios = ratios(&results);
        assert_eq!(ratios, [Ratio { pair: "braid ÷ haproxy".into(), a: 0.5, b: 0.5 }]);
        let report = Report { requests: 4000, versions: "v".into(), results, ratios };
        let md = markdown(&report);
        assert!(md.contains("then 4,000 requests"), "{md}");
        assert!(md.contains("| braid ÷ haproxy | 0.50× | 0.50× |"), "{md}");
        assert!(md.contains("| braid | A | 95 | libc.so.6 63 %"), "{md}");
        assert!(md.contains("          60  63.2 %  memcpy (libc.so.6)"), "{md}");
    }
}
