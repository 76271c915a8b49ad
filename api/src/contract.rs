//! The pod contract: the names and numbers the webhook writes into a meshed pod, the proxy reads
//! at start-up and the operator looks for. Each is defined once, here, so the three cannot drift
//! apart; what only one of them uses stays in that crate.

use std::path::PathBuf;

/// Namespace label and pod annotation that opt in (`enabled`) or out (`disabled`). The webhook
/// decides by it; the operator registers the webhook with it and publishes the trust anchors to
/// the namespaces labelled with it.
pub const INJECT: &str = "braid.dev/inject";
pub const INJECT_ENABLED: &str = "enabled";
pub const INJECT_DISABLED: &str = "disabled";
/// Set on injected pods, to the proxy version; its presence makes injection idempotent, and tells
/// the operator's discovery that the pod's endpoints are meshed.
pub const INJECTED: &str = "braid.dev/injected";

/// Namespace or pod annotation choosing what a pod admits when no MeshPolicy selects it
/// (`DefaultInboundPolicy`); the webhook writes the value it resolved (pod, else namespace, else
/// the Mesh) onto each injected pod, where the operator's discovery reads it.
pub const DEFAULT_INBOUND_POLICY: &str = "braid.dev/default-inbound-policy";

/// Pod label the webhook sets on a pod meshed by its own annotation in a namespace that is not
/// labelled for injection: the operator publishes the trust bundle in the namespaces of such
/// pods too, which their proxies mount.
pub const NEEDS_TRUST_BUNDLE: &str = "braid.dev/needs-trust-bundle";

/// The path the webhook serves AdmissionReviews on, and the operator registers.
pub const INJECT_PATH: &str = "/inject";

/// The proxy's container, a native sidecar; the operator also recognises a meshed pod by it.
pub const PROXY_CONTAINER: &str = "braid-proxy";
/// The proxy runs as this UID, and the iptables rules let its own traffic through untouched.
pub const PROXY_UID: u32 = 2102;

/// Where iptables redirects connections to the pod; the proxy's inbound listener.
pub const INBOUND_PORT: u16 = 4143;
/// Where iptables redirects the pod's outgoing connections; the proxy's outbound listener.
pub const OUTBOUND_PORT: u16 = 4140;
/// /live, /ready, /metrics; never redirected, so the kubelet's probes reach it.
pub const ADMIN_PORT: u16 = 4191;
/// The proxy's readiness and liveness on the admin port, which the webhook's probes ask.
pub const READY_PATH: &str = "/ready";
pub const LIVE_PATH: &str = "/live";

/// The projected ServiceAccount token the proxy trades for its workload certificate: mounted
/// at `TOKEN_MOUNT/TOKEN_FILE`, for an audience only the operator's identity endpoint accepts.
pub const TOKEN_MOUNT: &str = "/var/run/braid/identity";
pub const TOKEN_FILE: &str = "token";
pub const TOKEN_AUDIENCE: &str = "braid";

/// The trust bundle (PEM): the operator publishes it in this ConfigMap, under this key, in the
/// mesh namespace and in each meshed namespace (a ConfigMap volume can only name a ConfigMap of
/// the pod's own namespace); the webhook mounts it at `TRUST_MOUNT/TRUST_BUNDLE_KEY`.
pub const TRUST_CONFIG_MAP: &str = "braid-trust-anchors";
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.crt";
pub const TRUST_MOUNT: &str = "/var/run/braid/trust";

/// Where the proxy of an injected pod reads its ServiceAccount token.
pub fn token_path() -> PathBuf {
    [TOKEN_MOUNT, TOKEN_FILE].iter().collect()
}

/// Where the proxy of an injected pod reads the trust bundle.
pub fn trust_bundle_path() -> PathBuf {
    [TRUST_MOUNT, TRUST_BUNDLE_KEY].iter().collect()
}

/// The environment of the proxy container.
pub mod env {
    /// From the downward API.
    pub const POD_NAME: &str = "BRAID_POD_NAME";
    pub const POD_NAMESPACE: &str = "BRAID_POD_NAMESPACE";
    pub const POD_IP: &str = "BRAID_POD_IP";
    pub const SERVICE_ACCOUNT: &str = "BRAID_SERVICE_ACCOUNT";
    /// The operator's identity and discovery endpoints, `host:port`.
    pub const IDENTITY_ADDR: &str = "BRAID_IDENTITY_ADDR";
    pub const DISCOVERY_ADDR: &str = "BRAID_DISCOVERY_ADDR";
    /// The Mesh's trust domain: with the namespace and service account, the proxy's SPIFFE id.
    pub const TRUST_DOMAIN: &str = "BRAID_TRUST_DOMAIN";
    /// The log filter (RUST_LOG syntax).
    pub const LOG: &str = "BRAID_LOG";
    /// The pod's default inbound policy (`DefaultInboundPolicy`), applied until discovery sends
    /// the pod's policy.
    pub const DEFAULT_INBOUND_POLICY: &str = "BRAID_DEFAULT_INBOUND_POLICY";
    /// The pod's HTTP probes as JSON (`[{"port":8080,"path":"/healthz"}]`): the kubelet's
    /// plaintext probes pass before discovery has sent the pod's policy too.
    pub const INBOUND_PROBES: &str = "BRAID_INBOUND_PROBES";
    /// The ports the redirect skips, as the init container was given them.
    pub const INBOUND_SKIP_PORTS: &str = "BRAID_INBOUND_SKIP_PORTS";
    pub const OUTBOUND_SKIP_PORTS: &str = "BRAID_OUTBOUND_SKIP_PORTS";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_reads_what_the_webhook_mounts() {
        assert_eq!(token_path(), PathBuf::from("/var/run/braid/identity/token"));
        assert_eq!(trust_bundle_path(), PathBuf::from("/var/run/braid/trust/ca-bundle.crt"));
    }
}
