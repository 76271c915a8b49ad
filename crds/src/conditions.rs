//! Condition types and reasons, as constants so the operator, tests and docs agree.
//! Conventions: positive polarity, CamelCase reasons, observedGeneration always set.

/// The spec is valid enough to be programmed into proxies.
pub const ACCEPTED: &str = "Accepted";
/// Every Service the route refers to exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// The proxies that route to the Service run this generation.
pub const PROGRAMMED: &str = "Programmed";

/// Mesh: the admission webhook serves with a valid certificate the API server trusts.
pub const WEBHOOK_CERTIFICATE_READY: &str = "WebhookCertificateReady";

pub mod reasons {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// Accepted=False: a field is invalid in a way the schema cannot express.
    pub const INVALID: &str = "Invalid";
    /// ResolvedRefs=True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// ResolvedRefs=False: the target Service does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// ResolvedRefs=False: a backend or mirror Service does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// Programmed=Unknown: no discovery server hands routes to proxies yet.
    pub const DISCOVERY_PENDING: &str = "DiscoveryPending";
    /// Programmed=False: the route is not accepted, so nothing is programmed.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// WebhookCertificateReady=True: issued and published.
    pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
    /// WebhookCertificateReady=False: issuing or publishing failed.
    pub const CERTIFICATE_FAILED: &str = "CertificateFailed";
}
