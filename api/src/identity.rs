//! SPIFFE identities (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`): what a proxy
//! asks for and proves, what the operator's CA issues and its discovery server checks, and what
//! policies and endpoints name in the proxy's configuration.

use std::fmt;

/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn parse(text: &str) -> Option<Self> {
        let id = SpiffeIdRef::parse(text)?;
        Some(Self {
            trust_domain: id.trust_domain.to_owned(),
            namespace: id.namespace.to_owned(),
            service_account: id.service_account.to_owned(),
        })
    }
}

/// A SPIFFE id read in place: what the proxy checks on every request, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeIdRef<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl<'a> SpiffeIdRef<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
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
        Some(Self { trust_domain, namespace, service_account })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// The SPIFFE id in a certificate (DER): its one URI SAN that is a SPIFFE id.
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
        let borrowed = SpiffeIdRef::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(borrowed.trust_domain, "cluster.local");
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
            assert_eq!(SpiffeIdRef::parse(bad), None, "{bad:?}");
        }
    }
}
