//! Egress: what a proxy does with a connection to a destination outside the cluster. Discovery
//! answers such a destination (`IP:PORT`) with the external services registered for its port and
//! what happens to the rest; the proxy tells which external service a connection or request is
//! for by the TLS server name (SNI), the HTTP Host, or the address, and lets it through, refuses
//! it, or originates TLS for it. Pure: the matching here is what the proxy and its tests use.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A destination outside the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressConfig {
    /// What happens to what no external service below matches.
    #[serde(default)]
    pub unregistered: EgressAction,
    /// The external services registered for this port, in the order they are tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ExternalServiceConfig>,
}

/// Let it through, or refuse it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    #[default]
    Allow,
    Deny,
}

/// One external service at one port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalServiceConfig {
    /// Its name in metrics: `NAMESPACE/NAME` of the MeshExternalService.
    pub name: String,
    /// Host names it answers to: exact (`api.example.com`) or a wildcard for one or more labels
    /// (`*.example.com`, which does not match `example.com` itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// How its connections are told apart: `http` by each request's Host, `tls` by the
    /// ClientHello's server name, `tcp` by the destination address only.
    pub protocol: ExternalProtocol,
    /// Networks (`203.0.113.0/24`, `198.51.100.7`) whose addresses belong to it, whatever the
    /// connection carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Network>,
    /// For `http`: the proxy sends the app's plaintext requests on over TLS it originates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsOrigination>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalProtocol {
    Http,
    Tls,
    Tcp,
}

/// TLS the proxy opens to the external service for plaintext requests from the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOrigination {
    /// The port TLS goes to (usually 443) at the address the app connected to.
    pub port: u16,
    /// The name sent as SNI and checked in the server's certificate; the request's host when
    /// not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM certificates the server's chain must lead to; the system's roots when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP address or a network like 10.0.0.0/8 or fd00::/8");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Self { address, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `host` (lower case, no port, no trailing dot) is one of `patterns`.
pub fn host_matches(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|pattern| match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    })
}

/// Whether `host` is a name an external service may list: DNS labels of letters, digits and
/// hyphens, lower case, optionally `*.` first.
pub fn valid_host_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl EgressConfig {
    /// The external service a TLS connection with server name `sni` (lower case) to `ip` is for.
    pub fn for_tls(&self, ip: IpAddr, sni: Option<&str>) -> Option<&ExternalServiceConfig> {
        self.by_address(ip).or_else(|| {
            let sni = sni?;
            self.services.iter().find(|service| {
                service.protocol == ExternalProtocol::Tls && host_matches(&service.hosts, sni)
            })
        })
    }

    /// The external service an HTTP request for `host` (lower case, no port) to `ip` is for.
    pub fn for_http(&self, ip: IpAddr, host: &str) -> Option<&ExternalServiceConfig> {
        self.services
            .iter()
            .find(|service| service.protocol == ExternalProtocol::Http && host_matches(&service.hosts, host))
            .or_else(|| self.by_address(ip))
    }

    /// The external service whose addresses hold `ip`.
    pub fn by_address(&self, ip: IpAddr) -> Option<&ExternalServiceConfig> {
        self.services.iter().find(|service| service.addresses.iter().any(|network| network.contains(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(
        name: &str,
        protocol: ExternalProtocol,
        hosts: &[&str],
        addresses: &[&str],
    ) -> ExternalServiceConfig {
        ExternalServiceConfig {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            protocol,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            tls: None,
        }
    }

    #[test]
    fn wildcards_match_one_or_more_labels_but_not_the_bare_domain() {
        let patterns = vec!["*.example.com".to_owned(), "api.stripe.com".to_owned()];
        assert!(host_matches(&patterns, "a.example.com"));
        assert!(host_matches(&patterns, "a.b.example.com"));
        assert!(!host_matches(&patterns, "example.com"));
        assert!(!host_matches(&patterns, "badexample.com"), "a suffix must start at a label");
        assert!(host_matches(&patterns, "api.stripe.com"));
        assert!(!host_matches(&patterns, "api.stripe.com.evil.test"));
        assert!(!host_matches(&patterns, "xapi.stripe.com"));
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Network = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.1.1".parse().unwrap()), "an IPv4-mapped address is IPv4");
        let host: Network = "198.51.100.7".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains("198.51.100.7".parse().unwrap()));
        assert!(!host.contains("198.51.100.8".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "example.com", "", "10.0.0.0/-1", "10.0.0.0/"] {
            let error = bad.parse::<Network>().unwrap_err();
            assert!(error.contains("is not an IP address or a network"), "{bad}: {error}");
        }
        assert_eq!(serde_json::to_string(&net).unwrap(), "\"10.0.0.0/8\"");
    }

    #[test]
    fn host_patterns_are_dns_names() {
        for good in ["api.example.com", "*.example.com", "localhost", "a-b.c9"] {
            assert!(valid_host_pattern(good), "{good}");
        }
        for bad in ["", "*", "*.", "API.example.com", "a..b", "-a.b", "a_b.c", "a.*.c", "**.a", "a b"] {
            assert!(!valid_host_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn a_connection_is_matched_by_address_first_then_by_name_of_its_protocol() {
        let egress = EgressConfig {
            unregistered: EgressAction::Deny,
            services: vec![
                service("shop/stripe", ExternalProtocol::Tls, &["api.stripe.com"], &[]),
                service("shop/web", ExternalProtocol::Http, &["*.example.com"], &[]),
                service("shop/db", ExternalProtocol::Tcp, &[], &["203.0.113.0/24"]),
            ],
        };
        let outside: IpAddr = "198.51.100.1".parse().unwrap();
        let db: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(egress.for_tls(outside, Some("api.stripe.com")).unwrap().name, "shop/stripe");
        assert!(egress.for_tls(outside, Some("www.example.com")).is_none(), "an HTTP service is not TLS");
        assert!(egress.for_tls(outside, None).is_none());
        assert_eq!(egress.for_tls(db, Some("anything")).unwrap().name, "shop/db");
        assert_eq!(egress.for_http(outside, "www.example.com").unwrap().name, "shop/web");
        assert!(egress.for_http(outside, "api.stripe.com").is_none(), "a TLS service is not HTTP");
        assert_eq!(egress.for_http(db, "unknown.test").unwrap().name, "shop/db");
    }
}
