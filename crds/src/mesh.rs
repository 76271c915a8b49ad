//! Mesh: the mesh-wide settings, one cluster-scoped object named "default".

use std::collections::BTreeMap;

pub use braid_api::config::DefaultInboundPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mesh-wide settings: identity and certificate lifetimes, the proxy injected into pods, and
/// how injection behaves. There is one, named "default".
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a copy-paste slip.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    validation = Rule::new("self.metadata.name == 'default'").message("there is one Mesh and it is named default"),
    group = "braid.dev",
    version = "v1alpha1",
    kind = "Mesh",
    category = "braid",
    status = "MeshStatus",
    doc = "Mesh-wide settings; there is one, named default.",
    printcolumn(
        name = "Trust-Domain",
        type_ = "string",
        json_path = ".spec.trustDomain",
        description = "SPIFFE trust domain of workload identities"
    ),
    printcolumn(
        name = "CA",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"CAReady\")].status",
        description = "Whether the certificate authority is ready"
    ),
    printcolumn(
        name = "Webhook-Cert",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"WebhookCertificateReady\")].status",
        description = "Whether the webhook serves with a valid certificate"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        json_path = ".status.proxies.connected",
        description = "Proxies connected to discovery"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// SPIFFE trust domain: workloads are spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
    /// Fixed once the Mesh exists: every certificate, policy and proxy of the mesh is bound to it.
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "trustDomain cannot change while the Mesh exists: every workload certificate and policy is bound to it; to move to another trust domain, reinstall the mesh with it and restart the meshed workloads (docs/identity.md, Changing the trust domain)"
    }]))]
    pub trust_domain: String,

    /// Certificate lifetimes and rotation.
    #[serde(default)]
    pub identity: IdentitySettings,

    /// The sidecar proxy injected into meshed pods.
    #[serde(default)]
    pub proxy: ProxySettings,

    /// How the admission webhook injects pods.
    #[serde(default)]
    pub injection: InjectionSettings,

    /// What a meshed pod admits when no MeshPolicy selects it: all-unauthenticated (every
    /// client, plaintext or mTLS), all-authenticated (meshed clients over mTLS) or deny (only
    /// the kubelet's probes). A pod overrides it with the annotation
    /// braid.dev/default-inbound-policy. Proxies also apply it from their start until discovery
    /// sends the pod's policy.
    #[serde(default)]
    pub default_inbound_policy: DefaultInboundPolicy,

    /// Traffic from meshed apps to destinations outside the cluster.
    #[serde(default)]
    pub egress: EgressSettings,

    /// Spans of meshed requests, exported by every proxy to an OpenTelemetry collector.
    #[serde(default)]
    pub tracing: TracingSettings,
}

// By hand, so a MeshSpec built in code has the same defaults as one the API server filled in.
impl Default for MeshSpec {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            identity: IdentitySettings::default(),
            proxy: ProxySettings::default(),
            injection: InjectionSettings::default(),
            default_inbound_policy: DefaultInboundPolicy::default(),
            egress: EgressSettings::default(),
            tracing: TracingSettings::default(),
        }
    }
}

/// Where proxies send their spans and which requests they trace (docs/observability.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP endpoint, like http://jaeger-collector.tracing:4318 (port 4318
    /// when left out; spans go to PATH/v1/traces as protobuf). Unset: proxies make no spans and
    /// pass the trace context on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 512), regex(pattern = r"^http://[^/?#@ ]+(/[^?# ]*)?$"))]
    pub collector: Option<String>,

    /// The share of requests arriving without a trace context that start a sampled trace, in
    /// percent. A request with a W3C traceparent follows its sampled flag.
    #[serde(default = "braid_api::config::default_sampling_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub sampling_percent: f64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self { collector: None, sampling_percent: braid_api::config::default_sampling_percent() }
    }
}

impl TracingSettings {
    /// What proxies are sent: `None` when no collector is set.
    pub fn proxy_config(&self) -> Option<braid_api::config::TracingConfig> {
        self.collector.as_ref().map(|collector| braid_api::config::TracingConfig {
            collector: collector.clone(),
            sampling_percent: self.sampling_percent,
        })
    }
}

/// What meshed apps may call outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSettings {
    /// AllowAny lets every destination outside the cluster through; RegistryOnly refuses those
    /// no MeshExternalService registers (HTTP gets 403 with the reason, other connections are
    /// closed). Both count egress per external service.
    #[serde(default)]
    pub mode: EgressMode,

    /// The networks of the cluster (pods, Services, nodes): destinations in them are the
    /// mesh's, never egress. Linkerd's defaults: the private and carrier-grade NAT ranges.
    #[serde(default = "default_cluster_networks")]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 2, max = 43), regex(pattern = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"))
    )]
    pub cluster_networks: Vec<String>,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self { mode: EgressMode::default(), cluster_networks: default_cluster_networks() }
    }
}

fn default_cluster_networks() -> Vec<String> {
    ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"].map(str::to_owned).to_vec()
}

/// Whether unregistered destinations outside the cluster may be called.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EgressMode {
    #[default]
    AllowAny,
    RegistryOnly,
}

fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}

/// Certificate lifetimes and the CA the mesh uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySettings {
    /// Lifetime of the trust anchor (root) the operator generates, like "8760h".
    #[serde(default = "default_trust_anchor_lifetime")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub trust_anchor_lifetime: String,

    /// Lifetime of the issuer (intermediate) that signs workload certificates, like "720h".
    #[serde(default = "default_issuer_lifetime")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub issuer_lifetime: String,

    /// Lifetime of each proxy's workload certificate, like "24h".
    #[serde(default = "default_workload_lifetime")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub workload_lifetime: String,

    /// Name of a Secret in the mesh namespace holding a CA to use instead of a generated one
    /// (keys tls.crt, tls.key, ca.crt; the shape cert-manager writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub external_ca_secret: Option<String>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            trust_anchor_lifetime: default_trust_anchor_lifetime(),
            issuer_lifetime: default_issuer_lifetime(),
            workload_lifetime: default_workload_lifetime(),
            external_ca_secret: None,
        }
    }
}

fn default_trust_anchor_lifetime() -> String {
    "8760h".to_owned()
}

fn default_issuer_lifetime() -> String {
    "720h".to_owned()
}

fn default_workload_lifetime() -> String {
    "24h".to_owned()
}

/// The injected sidecar proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// Image of the proxy.
    #[serde(default = "default_proxy_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Log level of the proxy: error, warn, info or debug (a tracing filter also works). The proxy
    /// leaves trace-level events out of its build: they cost every request; it warns when asked.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256))]
    pub log_level: String,

    /// Resources of the proxy container, overridable per pod by annotations.
    #[serde(default)]
    pub resources: ProxyResources,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            image: default_proxy_image(),
            log_level: default_log_level(),
            resources: ProxyResources::default(),
        }
    }
}

fn default_proxy_image() -> String {
    "braid.dev/braid-proxy:dev".to_owned()
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Resource requests and limits as Kubernetes quantities ("100m", "64Mi").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyResources {
    /// CPU request.
    #[serde(default = "default_cpu_request")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu_request: String,
    /// Memory request.
    #[serde(default = "default_memory_request")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|k|M|G)?$"))]
    pub memory_request: String,
    /// CPU limit; none when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu_limit: Option<String>,
    /// Memory limit.
    #[serde(default = "default_memory_limit")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|k|M|G)?$"))]
    pub memory_limit: String,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: default_cpu_request(),
            memory_request: default_memory_request(),
            cpu_limit: None,
            memory_limit: default_memory_limit(),
        }
    }
}

fn default_cpu_request() -> String {
    "10m".to_owned()
}

fn default_memory_request() -> String {
    "20Mi".to_owned()
}

fn default_memory_limit() -> String {
    "128Mi".to_owned()
}

/// How the admission webhook behaves, and the certificate it serves with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSettings {
    /// What the API server does with a pod of a namespace labelled braid.dev/inject=enabled when
    /// the webhook cannot be reached: Fail refuses the pod (no pod of a meshed namespace escapes
    /// the mesh), Ignore creates it without a proxy (a webhook outage blocks no deployment). Pods
    /// that opt in by annotation elsewhere are always sent with Ignore, so an outage cannot block
    /// unmeshed namespaces; kube-system and the mesh's own namespace are never sent at all.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// Lifetime of the webhook's serving certificate, like "2160h" (90 days).
    #[serde(default = "default_webhook_cert_lifetime")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub certificate_lifetime: String,

    /// Lifetime of the CA that signs the webhook's serving certificate, like "8760h" (a year).
    /// During a CA rollover the API server trusts the old and the new CA.
    #[serde(default = "default_webhook_ca_lifetime")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub ca_lifetime: String,

    /// Share of a certificate's lifetime after which it is renewed, in percent.
    #[serde(default = "default_renew_at_percent")]
    #[schemars(range(min = 10, max = 90))]
    pub renew_at_percent: i32,
}

impl Default for InjectionSettings {
    fn default() -> Self {
        Self {
            failure_policy: FailurePolicy::default(),
            certificate_lifetime: default_webhook_cert_lifetime(),
            ca_lifetime: default_webhook_ca_lifetime(),
            renew_at_percent: default_renew_at_percent(),
        }
    }
}

fn default_webhook_cert_lifetime() -> String {
    "2160h".to_owned()
}

fn default_webhook_ca_lifetime() -> String {
    "8760h".to_owned()
}

fn default_renew_at_percent() -> i32 {
    66
}

/// The webhook's failure policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    /// Refuse pods the webhook could not see.
    #[default]
    Fail,
    /// Create them without a proxy.
    Ignore,
}

/// What the operator observed about the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// CAReady, WebhookCertificateReady and the like.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The admission webhook's serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_certificate: Option<CertificateStatus>,

    /// The mesh's certificate authority: trust anchor, issuer and trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityStatus>,

    /// The proxies connected to the discovery endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxiesStatus>,
}

/// The proxies connected to the discovery endpoint, by build version: shows an upgrade's progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxiesStatus {
    /// Proxies with an open discovery stream to the leading operator.
    pub connected: i32,
    /// Proxy build version -> how many run it.
    #[serde(default)]
    pub versions: BTreeMap<String, i32>,
}

/// Validity of the certificate authority that signs workload certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// When the trust anchor (root) that signed the current issuer expires.
    pub trust_anchor_not_after: Time,
    /// When the issuer (intermediate) that signs workload certificates expires.
    pub issuer_not_after: Time,
    /// When the operator replaces the issuer; absent with an external CA, whose owner renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_renew_at: Option<Time>,
    /// How many roots the published trust bundle holds: 1, or 2 during a trust-anchor rotation.
    pub trust_bundle_roots: i32,
    /// Whether the CA comes from spec.identity.externalCaSecret rather than the operator.
    #[serde(default)]
    pub external: bool,
}

/// Validity of a certificate the operator manages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// When the certificate expires.
    pub not_after: Time,
    /// When the operator renews it.
    pub renew_at: Time,
    /// When the CA that signed it expires.
    pub ca_not_after: Time,
}
