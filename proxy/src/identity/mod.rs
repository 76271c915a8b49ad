//! The workload identity: a certificate for `spiffe://TD/ns/NS/sa/SA` from the operator, kept
//! in memory, renewed before expiry, and the TLS configurations made from it (docs/identity.md).

pub mod client;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;

/// ALPN of an HTTP/2 connection between proxies.
pub const ALPN_H2: &[u8] = b"braid/h2";
/// ALPN of an opaque TCP connection between proxies.
pub const ALPN_OPAQUE: &[u8] = b"braid/opaque";

/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (trust_domain, ns, namespace, sa, service_account) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let segment_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if parts.next().is_some()
            || ns != "ns"
            || sa != "sa"
            || !segment_ok(trust_domain)
            || !segment_ok(namespace)
            || !segment_ok(service_account)
        {
            return None;
        }
        Some(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// What the proxy holds while it has a certificate.
pub struct Credentials {
    pub identity: String,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The inbound TLS configuration, built once per certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// Bumped on every new certificate or bundle, so cached client configurations are rebuilt.
    pub generation: u64,
}

/// The current credentials, swapped whole on renewal; readers never wait.
#[derive(Default)]
pub struct IdentityStore {
    current: ArcSwapOption<Credentials>,
}

impl IdentityStore {
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    pub fn set(&self, credentials: Credentials) {
        self.current.store(Some(Arc::new(credentials)));
    }
}

/// The SPIFFE id in a certificate: its one URI SAN that is a SPIFFE id.
pub fn spiffe_id_of(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some((*uri).to_owned())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spiffe_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!((id.namespace.as_str(), id.service_account.as_str()), ("shop", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        for bad in [
            "",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/web/x",
            "spiffe://cluster.local/namespace/shop/sa/web",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe:///ns/shop/sa/web",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/ns/sh op/sa/web",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad:?}");
        }
    }
}
