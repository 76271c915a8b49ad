//! The benchmark's knobs as people type them (`DURATION=3`, `PEERS="braid haproxy-mtls"`).

use std::fmt;

use crate::Error;

/// A duration as oha and wrk take it: "15s", "2m"; a bare number is seconds.
pub fn duration(text: &str, knob: &str) -> Result<String, Error> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits != "0"
        && matches!(unit, "" | "s" | "m" | "h");
    if !ok {
        return Err(Error::parse(knob, format!("{text:?} is not a duration such as 15s, 2m or 15")));
    }
    Ok(if unit.is_empty() { format!("{digits}s") } else { text.to_string() })
}

/// Rates in requests per second, space-separated: "1000 4000".
pub fn rates(text: &str) -> Result<Vec<u32>, Error> {
    let rates: Vec<u32> =
        text.split_whitespace()
            .map(|r| {
                r.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(|| {
                    Error::parse("RATES", format!("{r:?} is not a rate in requests per second"))
                })
            })
            .collect::<Result<_, _>>()?;
    if rates.is_empty() {
        return Err(Error::parse("RATES", "no rate given"));
    }
    Ok(rates)
}

/// The proxies a pair can be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Braid,
    /// braid-proxy of another build (--braid-baseline), measured beside this one.
    BraidBaseline,
    /// This braid-proxy built without its recorded profile (no profile-guided optimisation), to
    /// show what the profile is worth on workloads it was not trained on.
    BraidNoPgo,
    /// braid-proxy with span export on, every request sampled, to a sink that answers at once.
    BraidTraced,
    Haproxy,
    Nginx,
    Envoy,
    /// HAProxy in TCP mode: two hops that parse nothing.
    Floor,
    /// Two splice(2) relays with a blocking thread per direction (`braid-bench relay`): the
    /// lowest CPU per request of any two hops here.
    Splice,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Braid => "braid",
            Kind::BraidBaseline => "braid-baseline",
            Kind::BraidNoPgo => "braid-nopgo",
            Kind::BraidTraced => "braid-traced",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Envoy => "envoy",
            Kind::Floor => "floor",
            Kind::Splice => "splice",
        }
    }

    pub fn is_braid(self) -> bool {
        matches!(self, Kind::Braid | Kind::BraidBaseline | Kind::BraidNoPgo | Kind::BraidTraced)
    }
}

/// A peer of the benchmark: a kind of proxy, with plaintext or mutual TLS between A and B, and
/// reached on a listener of its own or, as a sidecar is, through the pods' iptables redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub kind: Kind,
    pub mtls: bool,
    /// Each proxy in a network namespace of its own with `braid-proxy init`'s rules: the client
    /// connects to the server's Service address and is redirected, as in a pod.
    pub redirect: bool,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if self.mtls {
            f.write_str("-mtls")?;
        }
        if self.redirect {
            f.write_str("-redirect")?;
        }
        Ok(())
    }
}

const PEER_HELP: &str = "braid braid-nopgo braid-traced haproxy nginx envoy, each also as PEER-mtls, or floor, \
                         splice; any of them also as PEER-redirect";

impl Peer {
    pub fn parse(text: &str) -> Result<Peer, Error> {
        let (name, redirect) = match text.strip_suffix("-redirect") {
            Some(name) => (name, true),
            None => (text, false),
        };
        let (name, mtls) = match name.strip_suffix("-mtls") {
            Some(name) => (name, true),
            None => (name, false),
        };
        let kind = match name {
            "braid" => Kind::Braid,
            "braid-baseline" => Kind::BraidBaseline,
            "braid-nopgo" => Kind::BraidNoPgo,
            "braid-traced" => Kind::BraidTraced,
            "haproxy" => Kind::Haproxy,
            "nginx" => Kind::Nginx,
            "envoy" => Kind::Envoy,
            "floor" if !mtls => Kind::Floor,
            "splice" if !mtls => Kind::Splice,
            _ => return Err(Error::parse("PEERS", format!("unknown peer {text:?} ({PEER_HELP})"))),
        };
        Ok(Peer { kind, mtls, redirect })
    }

    /// A space-separated list; with a baseline, braid-baseline follows braid and
    /// braid-baseline-mtls follows braid-mtls, so that they are measured side by side.
    pub fn list(text: &str, baseline: bool) -> Result<Vec<Peer>, Error> {
        let mut peers = Vec::new();
        for word in text.split_whitespace() {
            let peer = Peer::parse(word)?;
            if peer.kind == Kind::BraidBaseline && !baseline {
                return Err(Error::parse("PEERS", format!("{word} needs --braid-baseline")));
            }
            if peers.contains(&peer) {
                continue;
            }
            peers.push(peer);
            if baseline && peer.kind == Kind::Braid {
                let twin = Peer { kind: Kind::BraidBaseline, ..peer };
                if !peers.contains(&twin) {
                    peers.push(twin);
                }
            }
        }
        if peers.is_empty() {
            return Err(Error::parse("PEERS", format!("no peer given ({PEER_HELP})")));
        }
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_oha_and_wrk_take_them() {
        assert_eq!(duration("3", "DURATION").expect("ok"), "3s");
        assert_eq!(duration("15s", "DURATION").expect("ok"), "15s");
        assert_eq!(duration("2m", "DURATION").expect("ok"), "2m");
        for bad in ["", "s", "0", "1.5s", "3 s", "-3", "10ms", "fast"] {
            let error = duration(bad, "WARMUP").expect_err(bad);
            assert!(error.to_string().starts_with("WARMUP: "), "{error}");
        }
    }

    #[test]
    fn rates_are_positive_counts() {
        assert_eq!(rates(" 1000  4000 ").expect("ok"), [1000, 4000]);
        assert!(rates("").is_err());
        assert!(rates("1000 fast").expect_err("bad").to_string().contains("\"fast\""));
        assert!(rates("0").is_err());
    }

    #[test]
    fn peers_parse_and_the_baseline_follows_braid() {
        let peers = Peer::list("braid braid-mtls haproxy floor", true).expect("ok");
        let names: Vec<String> = peers.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["braid", "braid-baseline", "braid-mtls", "braid-baseline-mtls", "haproxy", "floor"]
        );
        let names: Vec<String> =
            Peer::list("envoy-mtls envoy-mtls", false).expect("ok").iter().map(ToString::to_string).collect();
        assert_eq!(names, ["envoy-mtls"]);
        let error = Peer::list("braid linkerd", false).expect_err("unknown");
        assert!(error.to_string().contains("unknown peer \"linkerd\""), "{error}");
        assert!(Peer::list("floor-mtls", false).is_err());
        assert!(
            Peer::list("braid-baseline", false)
                .expect_err("no baseline")
                .to_string()
                .contains("--braid-baseline")
        );
        assert!(Peer::list("  ", false).is_err());
    }

    #[test]
    fn redirect_and_no_profile_peers_name_themselves_back() {
        for name in
            ["braid-nopgo", "braid-nopgo-mtls", "braid-mtls-redirect", "haproxy-redirect", "floor-redirect"]
        {
            assert_eq!(Peer::parse(name).expect(name).to_string(), name);
        }
        let peer = Peer::parse("braid-mtls-redirect").expect("ok");
        assert_eq!((peer.kind, peer.mtls, peer.redirect), (Kind::Braid, true, true));
        // The redirect is the last word: "braid-redirect-mtls" names no peer.
        assert!(Peer::parse("braid-redirect-mtls").is_err());
        assert!(Peer::parse("floor-mtls-redirect").is_err());
        let names: Vec<String> =
            Peer::list("braid-redirect", true).expect("ok").iter().map(ToString::to_string).collect();
        assert_eq!(names, ["braid-redirect", "braid-baseline-redirect"]);
    }
}
