//! The issuer as the identity endpoint holds it in memory: built from Secret braid-issuer and the
//! Mesh, it signs workload certificates and the endpoint's own serving certificate.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SubjectPublicKeyInfo,
};

use super::{
    ca::{self, CaError, KeyedCert},
    csr::{CheckedCsr, spiffe_id},
};
use crate::certs::x509::{random_serial, secs, set_validity};

/// The workload certificate's notBefore lies this far in the past, for clocks behind ours.
pub const CLOCK_SKEW: i64 = 60;

/// What an authority is built from; a reload that finds the same builds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthoritySource {
    /// tls.crt (the issuer, then any intermediates) and tls.key.
    pub issuer: KeyedCert,
    /// Every root proxies trust now.
    pub bundle_pem: String,
    pub trust_domain: String,
    pub workload_lifetime: Duration,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    issuer_not_after: i64,
    source: AuthoritySource,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("issuer_not_after", &self.issuer_not_after)
            .field("trust_domain", &self.source.trust_domain)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("Secret braid-issuer is unusable: {0}")]
    Unusable(String),
    #[error("the issuer expired; the CA controller (the leading operator) replaces it")]
    Expired,
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A signed workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub certificate_pem: String,
    pub not_after: i64,
}

impl Authority {
    pub fn new(source: AuthoritySource) -> Result<Self, AuthorityError> {
        let chain = ca::certs(&source.issuer.cert_pem).map_err(AuthorityError::Unusable)?;
        let first = chain.first().ok_or_else(|| AuthorityError::Unusable("tls.crt is empty".to_owned()))?;
        if !first.matches_key(&source.issuer.key_pem) {
            return Err(AuthorityError::Unusable("tls.key does not belong to tls.crt".to_owned()));
        }
        let key =
            KeyPair::from_pem(&source.issuer.key_pem).map_err(|e| AuthorityError::Unusable(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&source.issuer.cert_pem, key)
            .map_err(|e| AuthorityError::Unusable(e.to_string()))?;
        Ok(Self { issuer, issuer_not_after: first.validity.not_after, source })
    }

    pub fn source(&self) -> &AuthoritySource {
        &self.source
    }

    pub fn trust_domain(&self) -> &str {
        &self.source.trust_domain
    }

    /// The issuer and any intermediates, PEM: what a peer needs besides the leaf.
    pub fn chain_pem(&self) -> &str {
        &self.source.issuer.cert_pem
    }

    pub fn bundle_pem(&self) -> &str {
        &self.source.bundle_pem
    }

    pub fn issuer_not_after(&self) -> i64 {
        self.issuer_not_after
    }

    /// The SPIFFE ID of a ServiceAccount in this mesh.
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        spiffe_id(&self.source.trust_domain, namespace, service_account)
    }

    /// Signs a workload certificate for the checked CSR's key and identity: the URI SAN only,
    /// digitalSignature, serverAuth and clientAuth, notBefore a minute ago, and a lifetime of
    /// workloadLifetime, cut short by the issuer's own expiry.
    pub fn issue(&self, now: i64, csr: &CheckedCsr) -> Result<Issued, AuthorityError> {
        if now >= self.issuer_not_after {
            return Err(AuthorityError::Expired);
        }
        let public_key = SubjectPublicKeyInfo::from_der(&csr.public_key_der)?;
        let mut params = CertificateParams::default();
        // No subject: the SPIFFE ID is the name (rcgen then marks the SAN critical, as RFC 5280
        // requires for an empty subject).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(csr.uri.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_after = now.saturating_add(secs(self.source.workload_lifetime)).min(self.issuer_not_after);
        params.not_before = timestamp(now - CLOCK_SKEW)?;
        params.not_after = timestamp(not_after)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(Issued { certificate_pem: cert.pem(), not_after })
    }

    /// A serving certificate for the identity endpoint (DER chain, leaf first, and the PKCS#8 DER
    /// key), valid as long as the issuer.
    pub fn serving_cert(
        &self,
        now: i64,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>), AuthorityError> {
        if now >= self.issuer_not_after {
            return Err(AuthorityError::Expired);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.subject_alt_names.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, dns_names.first().map_or("braid-identity", String::as_str));
        name.push(DnType::OrganizationName, "braid");
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, now, Duration::MAX, Some(self.issuer_not_after))
            .map_err(|e| AuthorityError::Unusable(CaError::from(e).to_string()))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(
            ca::certs(self.chain_pem()).map_err(AuthorityError::Unusable)?.into_iter().map(|c| c.der),
        );
        Ok((chain, key.serialize_der()))
    }
}

fn timestamp(t: i64) -> Result<time::OffsetDateTime, AuthorityError> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|_| AuthorityError::Unusable(format!("time {t} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{
        ca::{Cert, Settings, Source, Stored, apply, bundle, plan},
        csr::check,
    };
    use x509_parser::{extensions::GeneralName, prelude::FromDer};

    pub(crate) fn authority(now: i64, workload: Duration) -> (Stored, Authority) {
        let settings = Settings {
            trust_anchor_lifetime: Duration::from_secs(365 * 86400),
            issuer_lifetime: Duration::from_secs(30 * 86400),
            workload_lifetime: workload,
            propagation: Duration::from_secs(60),
        };
        let changes = plan(now, &Stored::default(), &Source::Generate, &settings, None);
        let stored = apply(now, &Stored::default(), &changes, &Source::Generate, &settings).unwrap();
        let source = AuthoritySource {
            issuer: stored.issuer.clone().unwrap(),
            bundle_pem: bundle(&stored),
            trust_domain: "cluster.local".to_owned(),
            workload_lifetime: workload,
        };
        (stored, Authority::new(source).unwrap())
    }

    fn csr(id: &str) -> (KeyPair, CheckedCsr) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, check(&pem).unwrap())
    }

    #[test]
    fn a_workload_certificate_has_the_uri_only_and_chains_to_the_root() {
        let now = 1_800_000_000;
        let (stored, authority) = authority(now, Duration::from_secs(86400));
        let id = authority.identity("shop", "web");
        let (key, checked) = csr(&id);
        let issued = authority.issue(now, &checked).unwrap();
        assert_eq!(issued.not_after, now + 86400);

        let leaf = ca::certs(&issued.certificate_pem).unwrap().remove(0);
        let issuer = ca::certs(authority.chain_pem()).unwrap().remove(0);
        let root = ca::certs(&stored.roots_pem).unwrap().remove(0);
        assert!(ca::chains_to(&[leaf.clone(), issuer], &[root]));
        assert_eq!(leaf.public_key, key.public_key_raw());
        assert_eq!(leaf.validity, ca::Validity { not_before: now - 60, not_after: now + 86400 });
        assert!(!leaf.is_ca);

        let (_, x509) = x509_parser::certificate::X509Certificate::from_der(&leaf.der).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "an empty subject needs a critical SAN");
        assert_eq!(san.value.general_names, vec![GeneralName::URI(id.as_str())]);
        assert_eq!(x509.subject().iter().count(), 0);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
    }

    #[test]
    fn leaves_never_outlive_the_issuer_and_serials_differ() {
        let now = 1_800_000_000;
        let (_, authority) = authority(now, Duration::from_secs(90 * 86400));
        let (_, checked) = csr(&authority.identity("shop", "web"));
        let first = authority.issue(now, &checked).unwrap();
        assert_eq!(first.not_after, authority.issuer_not_after());
        let second = authority.issue(now, &checked).unwrap();
        let serial = |pem: &str| {
            let der = ca::certs(pem).unwrap().remove(0).der;
            x509_parser::certificate::X509Certificate::from_der(&der).unwrap().1.raw_serial().to_vec()
        };
        assert_ne!(serial(&first.certificate_pem), serial(&second.certificate_pem), "same key, new serial");
        assert!(matches!(
            authority.issue(authority.issuer_not_after(), &checked),
            Err(AuthorityError::Expired)
        ));
    }

    #[test]
    fn the_serving_certificate_names_the_service_and_chains_to_the_issuer() {
        let now = 1_800_000_000;
        let (_, authority) = authority(now, Duration::from_secs(86400));
        let names = vec!["braid-identity.braid-system.svc".to_owned()];
        let (chain, key) = authority.serving_cert(now, &names, &["127.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(chain.len(), 2);
        let leaf = Cert::from_der(chain[0].clone()).unwrap();
        let issuer = Cert::from_der(chain[1].clone()).unwrap();
        assert!(leaf.signed_by(&issuer));
        assert_eq!(leaf.validity.not_after, authority.issuer_not_after());
        assert!(KeyPair::try_from(key.as_slice()).is_ok());
    }

    #[test]
    fn a_key_that_is_not_the_issuers_is_refused() {
        let now = 1_800_000_000;
        let (stored, _) = authority(now, Duration::from_secs(86400));
        let mut issuer = stored.issuer.unwrap();
        issuer.key_pem = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let source = AuthoritySource {
            issuer,
            bundle_pem: String::new(),
            trust_domain: "cluster.local".to_owned(),
            workload_lifetime: Duration::from_secs(60),
        };
        let err = Authority::new(source).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
