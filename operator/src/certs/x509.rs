//! Certificates as the kit handles them: PEM in, parsed once, compared by validity, signature and
//! key; and the few ways the operator issues one. No I/O; times are Unix seconds.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use x509_parser::{
    certificate::X509Certificate,
    pem::Pem,
    prelude::{FromDer, X509Error},
};

/// A certificate (PEM; for an issuer, the issuer first, then any intermediates up to the root) and
/// its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why the kit could not issue a certificate. Each user maps `UnusableSigner` to its own message,
/// which names the Secret to delete to start over.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    UnusableSigner(String),
}

/// Validity of a certificate, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// When `percent` of the lifetime has passed: the time to replace the certificate.
    pub fn renew_at(self, percent: u32) -> i64 {
        self.not_before + (self.not_after - self.not_before) * i64::from(percent) / 100
    }

    pub fn valid_at(self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// One certificate, parsed once: its DER and what the plans compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub der: Vec<u8>,
    pub validity: Validity,
    pub is_ca: bool,
    /// The raw public key (the EC point, or the RSA key), to match a private key against.
    pub public_key: Vec<u8>,
}

impl Cert {
    pub fn from_der(der: Vec<u8>) -> Result<Cert, X509Error> {
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|_| X509Error::InvalidCertificate)?;
        if !rest.is_empty() {
            return Err(X509Error::InvalidCertificate);
        }
        let validity = Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        };
        let is_ca = cert.is_ca();
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        Ok(Cert { der, validity, is_ca, public_key })
    }

    pub fn pem(&self) -> String {
        let block = pem::Pem::new("CERTIFICATE", self.der.clone());
        pem::encode_config(&block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
    }

    /// Whether this certificate carries a valid signature by `issuer`'s key.
    pub fn signed_by(&self, issuer: &Cert) -> bool {
        let (Ok((_, cert)), Ok((_, issuer))) =
            (X509Certificate::from_der(&self.der), X509Certificate::from_der(&issuer.der))
        else {
            return false;
        };
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    }

    /// Whether `key_pem` is this certificate's private key.
    pub fn matches_key(&self, key_pem: &str) -> bool {
        KeyPair::from_pem(key_pem).is_ok_and(|key| key.public_key_raw() == self.public_key.as_slice())
    }
}

/// Every certificate in `pem`, in order; an error when any block is not a certificate.
pub fn certs(pem: &str) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| format!("malformed PEM: {err}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("expected CERTIFICATE blocks, found {}", block.label));
        }
        out.push(Cert::from_der(block.contents).map_err(|err| format!("not a certificate: {err}"))?);
    }
    Ok(out)
}

/// The certificates of `pem` that parse, ignoring the rest (for what is already stored: garbage
/// there is replaced, never an error).
pub fn lenient_certs(pem: &str) -> Vec<Cert> {
    certs(pem).unwrap_or_default()
}

/// Whether `chain` (leaf or issuer first, then its issuers) leads to one of `roots`.
pub fn chains_to(chain: &[Cert], roots: &[Cert]) -> bool {
    let Some(last) = chain.last() else { return false };
    chain.windows(2).all(|pair| pair[0].signed_by(&pair[1]))
        && roots.iter().any(|root| root.der == last.der || last.signed_by(root))
}

/// Whether `a` and `b` hold the same certificates, in any order.
pub fn same_set(a: &[Cert], b: &[Cert]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x.der == y.der))
}

/// The certificates as one PEM text, in order.
pub fn join(certs: &[Cert]) -> String {
    certs.iter().map(Cert::pem).collect()
}

/// A distinguished name of Braid's: the common name, organization braid.
pub fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "braid");
    dn
}

/// What a CA certificate the operator issues looks like; the rest (key type, validity) is the
/// kit's.
#[derive(Debug, Clone)]
pub struct CaSpec<'a> {
    pub common_name: &'a str,
    /// How many CAs may sit below this one.
    pub path_len: u8,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub lifetime: Duration,
    /// The latest notAfter: a certificate never outlives the one that signed it.
    pub cap: Option<i64>,
    /// A random serial instead of rcgen's default (a hash of the key).
    pub random_serial: bool,
    pub authority_key_identifier: bool,
}

/// A new key and a CA certificate for it, valid from `now`: self-signed without `signer`, else
/// signed by it (a CA certificate and its key).
pub fn issue_ca(now: i64, spec: &CaSpec<'_>, signer: Option<&KeyedCert>) -> Result<KeyedCert, IssueError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(spec.common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(spec.path_len));
    params.key_usages.clone_from(&spec.key_usages);
    params.use_authority_key_identifier_extension = spec.authority_key_identifier;
    if spec.random_serial {
        params.serial_number = Some(random_serial()?);
    }
    set_validity(&mut params, now, spec.lifetime, spec.cap)?;
    sign(params, signer)
}

/// A new ECDSA P-256 key and the certificate `params` describe for it, self-signed without
/// `signer`, else signed by it.
pub fn sign(params: CertificateParams, signer: Option<&KeyedCert>) -> Result<KeyedCert, IssueError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = match signer {
        None => params.self_signed(&key)?,
        Some(signer) => {
            let signer_key =
                KeyPair::from_pem(&signer.key_pem).map_err(|e| IssueError::UnusableSigner(e.to_string()))?;
            let issuer = Issuer::from_ca_cert_pem(&signer.cert_pem, signer_key)
                .map_err(|e| IssueError::UnusableSigner(e.to_string()))?;
            params.signed_by(&key, &issuer)?
        }
    };
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Sets notBefore (backdated for clocks behind ours: a minute, or a tenth of a short lifetime so
/// that the renewal time stays ahead) and notAfter (now + lifetime, at most `cap`).
pub fn set_validity(
    params: &mut CertificateParams,
    now: i64,
    lifetime: Duration,
    cap: Option<i64>,
) -> Result<(), IssueError> {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| IssueError::UnusableSigner(format!("time {t} out of range")))
    };
    let not_after = now.saturating_add(secs(lifetime));
    params.not_before = at(now - backdate(lifetime))?;
    params.not_after = at(cap.map_or(not_after, |cap| cap.min(not_after)))?;
    Ok(())
}

/// 16 random bytes, positive: RFC 5280 wants serials unique per issuer, and a workload's renewals
/// reuse its key (rcgen's default serial is a hash of the key).
pub fn random_serial() -> Result<SerialNumber, rcgen::Error> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A duration in whole seconds, saturating.
/// How far before its issuance a certificate of `lifetime` starts being valid: clocks of peers
/// that run a little behind accept it at once.
pub fn backdate(lifetime: Duration) -> i64 {
    secs(lifetime / 10).min(60)
}

pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn root() -> KeyedCert {
        let spec = CaSpec {
            common_name: "test root",
            path_len: 1,
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            lifetime: Duration::from_secs(3600),
            cap: None,
            random_serial: true,
            authority_key_identifier: false,
        };
        issue_ca(NOW, &spec, None).unwrap()
    }

    #[test]
    fn a_ca_signed_by_another_chains_to_it_and_never_outlives_it() {
        let root = root();
        let root_cert = certs(&root.cert_pem).unwrap().remove(0);
        let spec = CaSpec {
            common_name: "test issuer",
            path_len: 0,
            key_usages: vec![KeyUsagePurpose::KeyCertSign],
            lifetime: Duration::from_secs(7200),
            cap: Some(root_cert.validity.not_after),
            random_serial: true,
            authority_key_identifier: true,
        };
        let issuer = issue_ca(NOW, &spec, Some(&root)).unwrap();
        let chain = certs(&issuer.cert_pem).unwrap();
        assert!(chain[0].is_ca && chain[0].matches_key(&issuer.key_pem));
        assert!(chains_to(&chain, std::slice::from_ref(&root_cert)));
        assert_eq!(chain[0].validity, Validity { not_before: NOW - 60, not_after: NOW + 3600 });
    }

    #[test]
    fn an_unusable_signer_is_an_error_not_a_panic() {
        let mut root = root();
        root.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let params = CertificateParams::new(Vec::<String>::new()).unwrap();
        assert!(matches!(sign(params, Some(&root)), Err(IssueError::UnusableSigner(_))));
    }

    #[test]
    fn renewal_is_a_share_of_the_lifetime_and_validity_is_half_open() {
        let validity = Validity { not_before: 100, not_after: 200 };
        assert_eq!(validity.renew_at(66), 166);
        assert_eq!(validity.renew_at(50), 150);
        assert!(validity.valid_at(100) && validity.valid_at(199) && !validity.valid_at(200));
    }

    #[test]
    fn pem_round_trips_and_sets_compare_by_content() {
        let root = certs(&root().cert_pem).unwrap().remove(0);
        assert_eq!(certs(&root.pem()).unwrap(), std::slice::from_ref(&root));
        assert!(root.pem().starts_with("-----BEGIN CERTIFICATE-----\n") && !root.pem().contains('\r'));
        let other = certs(&self::root().cert_pem).unwrap().remove(0);
        assert!(same_set(&[root.clone(), other.clone()], &[other.clone(), root.clone()]));
        assert!(!same_set(std::slice::from_ref(&root), std::slice::from_ref(&other)));
        assert_eq!(lenient_certs(&join(&[root, other])).len(), 2);
        assert!(lenient_certs("not a certificate").is_empty());
        assert!(certs("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
