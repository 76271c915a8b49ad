//! The identity endpoint's wire format (docs/identity.md): what a proxy POSTs to the operator's
//! `/v1/certify` and what it gets back, linked by both so neither side can drift.

use serde::{Deserialize, Serialize};

/// The request path.
pub const PATH: &str = "/v1/certify";

/// The request body: the pod's projected ServiceAccount token and a PEM CSR for its SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifyRequest {
    pub token: String,
    pub csr: String,
}

/// The answer to a request that was granted (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertifyResponse {
    /// The SPIFFE id the certificate was issued for.
    pub identity: String,
    /// The workload certificate (PEM).
    pub certificate: String,
    /// The issuer's chain up to, not including, the trust anchor (PEM).
    #[serde(default)]
    pub chain: String,
    /// The trust anchors (PEM); during a rotation, newer than the ConfigMap the pod mounts.
    #[serde(default)]
    pub trust_bundle: String,
    /// When the certificate expires (RFC 3339), for logs and people.
    #[serde(default)]
    pub not_after: String,
}

/// The body of a refusal (4xx, 5xx): a stable code and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifyRefusal {
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_uses_the_documented_field_names_and_older_answers_still_parse() {
        let answer = CertifyResponse {
            identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            certificate: "LEAF".into(),
            chain: "ISSUER".into(),
            trust_bundle: "ROOTS".into(),
            not_after: "2026-01-01T00:00:00Z".into(),
        };
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"identity": "spiffe://cluster.local/ns/shop/sa/web", "certificate": "LEAF",
                "chain": "ISSUER", "trustBundle": "ROOTS", "notAfter": "2026-01-01T00:00:00Z"})
        );
        let bare: CertifyResponse =
            serde_json::from_str(r#"{"identity": "spiffe://x/ns/a/sa/b", "certificate": "LEAF"}"#).unwrap();
        assert_eq!((bare.chain.as_str(), bare.trust_bundle.as_str()), ("", ""));
    }

    #[test]
    fn a_request_without_its_csr_is_refused_naming_the_field() {
        let err = serde_json::from_str::<CertifyRequest>(r#"{"token": "t"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `csr`"), "{err}");
        let request: CertifyRequest = serde_json::from_str(r#"{"token": "t", "csr": "c"}"#).unwrap();
        assert_eq!(request, CertifyRequest { token: "t".into(), csr: "c".into() });
    }
}
