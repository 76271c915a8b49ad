//! What a workload may ask for: SPIFFE identities, and the checks on its certificate signing
//! request. Pure functions; the endpoint (server.rs) maps each error to its refusal.

use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
    pem::parse_x509_pem,
    prelude::FromDer,
};

/// The SPIFFE ID of a Kubernetes ServiceAccount.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The namespace and name of a ServiceAccount user, `system:serviceaccount:NS:SA`.
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

/// A CSR that passed every check: the one identity it asks for, and its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    pub uri: String,
    /// DER SubjectPublicKeyInfo, ECDSA P-256.
    pub public_key_der: Vec<u8>,
}

/// Why a CSR is refused as `malformed-csr`; the text goes back to the workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr is not one PEM block labelled CERTIFICATE REQUEST")]
    NotPem,
    #[error("csr does not parse as a PKCS#10 certificate signing request")]
    NotACsr,
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    #[error("the CSR's key must be ECDSA P-256 (uncompressed point); it is {0}")]
    NotP256(String),
    #[error("the CSR must ask for exactly one subject alternative name, a URI (the SPIFFE ID); {0}")]
    Names(String),
}

/// Checks a PEM CSR: one block, a valid self-signature, a P-256 key, and exactly one SAN, a URI.
pub fn check(pem: &str) -> Result<CheckedCsr, CsrError> {
    let (rest, block) = parse_x509_pem(pem.as_bytes()).map_err(|_| CsrError::NotPem)?;
    if !matches!(block.label.as_str(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST")
        || !rest.iter().all(u8::is_ascii_whitespace)
    {
        return Err(CsrError::NotPem);
    }
    let (trailing, csr) =
        X509CertificationRequest::from_der(&block.contents).map_err(|_| CsrError::NotACsr)?;
    if !trailing.is_empty() {
        return Err(CsrError::NotACsr);
    }

    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    let point = &spki.subject_public_key.data;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::NotP256(format!("algorithm {}", spki.algorithm.algorithm)));
    }
    if curve.as_ref() != Some(&OID_EC_P256) {
        let curve = curve.map_or_else(|| "missing".to_owned(), |c| c.to_id_string());
        return Err(CsrError::NotP256(format!("an EC key on curve {curve}")));
    }
    if point.len() != 65 || point.first() != Some(&4) {
        return Err(CsrError::NotP256("a compressed or malformed EC point".to_owned()));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut names = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => names.extend(san.general_names.iter()),
            ParsedExtension::ParseError { .. } => {
                return Err(CsrError::Names("an extension does not parse".to_owned()));
            }
            _ => {}
        }
    }
    let uri = match names.as_slice() {
        [GeneralName::URI(uri)] => (*uri).to_owned(),
        [] => return Err(CsrError::Names("it asks for none".to_owned())),
        [_] => return Err(CsrError::Names("it asks for a name that is not a URI".to_owned())),
        more => return Err(CsrError::Names(format!("it asks for {}", more.len()))),
    };
    Ok(CheckedCsr { uri, public_key_der: spki.raw.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
        SanType,
    };

    fn csr_with(key: &KeyPair, names: Vec<SanType>) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = names;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap())
    }

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn identities_and_service_account_users() {
        assert_eq!(spiffe_id("cluster.local", "shop", "web"), ID);
        assert_eq!(service_account_of("system:serviceaccount:shop:web"), Some(("shop", "web")));
        assert_eq!(service_account_of("system:serviceaccount:shop:web.v2"), Some(("shop", "web.v2")));
        for not_one in [
            "admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:web:extra",
            "system:serviceaccount:Shop:web",
            "system:serviceaccounts:shop:web",
        ] {
            assert_eq!(service_account_of(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn a_p256_csr_with_one_uri_passes() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let checked = check(&csr_with(&key, vec![uri(ID)])).unwrap();
        assert_eq!(checked.uri, ID);
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&checked.public_key_der).unwrap();
        assert_eq!(rcgen::PublicKeyData::der_bytes(&spki), key.public_key_raw());
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let good = csr_with(&key, vec![uri(ID)]);
        assert_eq!(check("hello"), Err(CsrError::NotPem));
        assert_eq!(check(""), Err(CsrError::NotPem));
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(check(&cert.pem()), Err(CsrError::NotPem), "a certificate is not a request");
        assert_eq!(check(&format!("{good}{good}")), Err(CsrError::NotPem), "two requests");
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(check(garbage), Err(CsrError::NotACsr));

        let none = check(&csr_with(&key, vec![])).unwrap_err();
        assert!(matches!(none, CsrError::Names(_)), "{none}");
        let dns = check(&csr_with(&key, vec![SanType::DnsName("web".try_into().unwrap())])).unwrap_err();
        assert!(dns.to_string().contains("not a URI"), "{dns}");
        let two =
            check(&csr_with(&key, vec![uri(ID), uri("spiffe://cluster.local/ns/shop/sa/db")])).unwrap_err();
        assert!(two.to_string().contains("asks for 2"), "{two}");
        let uri_and_dns =
            check(&csr_with(&key, vec![uri(ID), SanType::DnsName("web".try_into().unwrap())])).unwrap_err();
        assert!(matches!(uri_and_dns, CsrError::Names(_)));

        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let err = check(&csr_with(&p384, vec![uri(ID)])).unwrap_err();
        assert!(matches!(err, CsrError::NotP256(_)), "{err}");
        assert!(err.to_string().contains("1.3.132.0.34"), "{err}");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(check(&csr_with(&ed, vec![uri(ID)])), Err(CsrError::NotP256(_))));
    }

    #[test]
    fn a_tampered_csr_fails_its_signature() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let good = csr_with(&key, vec![uri("spiffe://cluster.local/ns/shop/sa/web")]);
        // Change the requested name after signing: same length, so the DER stays well formed.
        let (_, block) = parse_x509_pem(good.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        let at = der.windows(3).position(|w| w == b"web").unwrap();
        der[at..at + 3].copy_from_slice(b"adm");
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(check(&tampered), Err(CsrError::BadSignature));
    }
}
