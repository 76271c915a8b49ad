//! Condition types and reasons, as constants so the operator, tests and docs agree.
//! Conventions: positive polarity, CamelCase reasons, observedGeneration always set.

/// The spec is valid enough to be programmed into proxies.
pub const ACCEPTED: &str = "Accepted";
/// Every Service the route refers to exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// The proxies that route to the Service run this generation.
pub const PROGRAMMED: &str = "Programmed";

/// Canary: a rollout is under way and moving (False when paused or finished).
pub const PROGRESSING: &str = "Progressing";
/// Canary: the last judged interval met the success-rate and latency thresholds.
pub const CANARY_HEALTHY: &str = "CanaryHealthy";
/// Canary: the run ended with the canary taking all of its rule's traffic.
pub const PROMOTED: &str = "Promoted";
/// Canary: the run ended with the canary taking none of it.
pub const ROLLED_BACK: &str = "RolledBack";

/// The annotation that steers a canary: `pause`, `resume`, `promote` or `abort`. An annotation
/// rather than a spec field, so that the GitOps tool that owns the spec sees no drift and does
/// not undo it.
pub const CANARY_ANNOTATION: &str = "braid.dev/canary";

/// Mesh: the admission webhook serves with a valid certificate the API server trusts.
pub const WEBHOOK_CERTIFICATE_READY: &str = "WebhookCertificateReady";
/// Mesh: the certificate authority has a valid issuer and publishes the trust bundle.
pub const CA_READY: &str = "CAReady";

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
    /// Programmed=True: every proxy that routes to the Service runs this generation.
    pub const PROGRAMMED: &str = "Programmed";
    /// Programmed=True: no proxy routes to the Service yet; each gets the route when it first does.
    pub const NO_PROXIES: &str = "NoProxies";
    /// Programmed=False: some proxies do not run this generation yet (or refused it).
    pub const PENDING: &str = "Pending";
    /// Programmed=False: the route uses a feature the proxy does not apply.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// Progressing=True: at a step, checked every interval.
    pub const STEP_PROGRESSING: &str = "StepProgressing";
    /// Progressing=True and CanaryHealthy=Unknown: too few requests to the canary to judge.
    pub const NOT_ENOUGH_REQUESTS: &str = "NotEnoughRequests";
    /// Progressing=False: held by the braid.dev/canary annotation.
    pub const PAUSED: &str = "Paused";
    /// Progressing=False, Promoted=True: every step passed.
    pub const PROMOTED: &str = "Promoted";
    /// Progressing=False, Promoted=True: promoted by the braid.dev/canary annotation.
    pub const PROMOTED_BY_USER: &str = "PromotedByUser";
    /// Progressing=False, RolledBack=True: failureThreshold failed checks in a row.
    pub const FAILED_CHECKS: &str = "FailedChecks";
    /// Progressing=False, RolledBack=True: aborted by the braid.dev/canary annotation.
    pub const ABORTED: &str = "Aborted";
    /// Promoted=False or RolledBack=False while a run goes on.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Promoted=False: the run was rolled back; RolledBack=False: it was promoted.
    pub const OTHER_OUTCOME: &str = "OtherOutcome";
    /// CanaryHealthy=True: the last judged interval met the thresholds.
    pub const CHECK_PASSED: &str = "CheckPassed";
    /// CanaryHealthy=False: the last judged interval missed a threshold.
    pub const CHECK_FAILED: &str = "CheckFailed";
    /// CanaryHealthy=Unknown: no interval judged yet in this run.
    pub const NOT_CHECKED: &str = "NotChecked";
    /// Progressing=False: the route is not accepted, so no rollout runs.
    pub const ROUTE_NOT_ACCEPTED: &str = "RouteNotAccepted";
    /// WebhookCertificateReady=True: issued and published.
    pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
    /// WebhookCertificateReady=False: issuing or publishing failed.
    pub const CERTIFICATE_FAILED: &str = "CertificateFailed";
    /// CAReady=True: the issuer is valid and the trust bundle is published.
    pub const ISSUER_READY: &str = "IssuerReady";
    /// CAReady=True: a trust-anchor rotation is under way; the bundle trusts old and new roots.
    pub const TRUST_ANCHOR_ROTATING: &str = "TrustAnchorRotating";
    /// CAReady=False: the lifetimes in spec.identity are inconsistent.
    pub const INVALID_SETTINGS: &str = "InvalidSettings";
    /// CAReady=False: the Secret named by spec.identity.externalCaSecret is missing or unusable.
    pub const EXTERNAL_CA_INVALID: &str = "ExternalCAInvalid";
    /// CAReady=False: issuing, storing or publishing failed.
    pub const CA_FAILED: &str = "CAFailed";
}
