//! The proxy's configuration: the model the operator's discovery server streams to each proxy
//! (per destination service: routes, weighted backends, endpoints, timeouts, retries, faults,
//! mirroring; and the inbound policy) and the one a proxy may also read from a YAML or JSON file.
//! Both arrive as these types and pass the same check, [`Config::validate`] (validate.rs), so a
//! bad configuration is refused whole, with the field that is wrong, and the proxy keeps the last
//! good one. Durations are written as in the mesh API ("2s", "500ms"; duration_text.rs).

mod duration_text;
pub mod egress;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract;

/// The whole configuration of one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The admin server: /live, /ready, /metrics, /config.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub limits: Limits,
    /// One line per request at INFO on target `braid_proxy::access`; off by default (it costs).
    #[serde(default)]
    pub access_log: bool,
    /// The destinations the proxy knows. Connections to anything else are forwarded unchanged.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// The workload identity: where the proxy gets its certificate. Without it the proxy
    /// speaks plaintext only (docs/identity.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// The operator's discovery server: destinations and the inbound policy streamed to the
    /// proxy on top of this file (docs/proxy.md, Discovery). Needs `identity` (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    /// Spans of the requests the proxy forwards, exported to an OpenTelemetry collector
    /// (docs/observability.md, Tracing). Discovery sends the Mesh's; a file's wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

/// Where the proxy sends its spans, and which requests it traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP endpoint, `http://HOST[:PORT][/PATH]` (port 4318 when left
    /// out): spans are POSTed as protobuf to `PATH/v1/traces`, as OTEL_EXPORTER_OTLP_ENDPOINT.
    pub collector: String,
    /// The share of requests that arrive without a trace context which start a sampled trace,
    /// in percent (0 to 100). A request with a `traceparent` follows its sampled flag.
    #[serde(default = "default_sampling_percent")]
    pub sampling_percent: f64,
}

/// Istio's default: one request in a hundred.
pub fn default_sampling_percent() -> f64 {
    1.0
}

/// How the rule of a default inbound policy is named: `default:all-authenticated`.
pub const DEFAULT_RULE_PREFIX: &str = "default:";

/// A collector address taken apart: what the exporter connects to and the path it posts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorEndpoint {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Where spans are POSTed: the given path with `/v1/traces` appended.
    pub traces_path: String,
}

impl TracingConfig {
    /// The collector address in parts, or why it is not one the proxy can send to.
    pub fn endpoint(&self) -> Result<CollectorEndpoint, String> {
        let address = self.collector.trim();
        let Some(rest) = address.strip_prefix("http://") else {
            return Err(format!(
                "{address:?} is not an http:// URL: the proxy sends OTLP over plain HTTP/1.1 (http://HOST:4318)"
            ));
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |slash| rest.split_at(slash));
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| format!("{address:?}: unclosed [ in the host"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
            return Err(format!("{address:?} has no valid host"));
        }
        let port = match port {
            None => 4318,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("{address:?}: the port must be a number from 1 to 65535"))?,
        };
        if path.contains(['?', '#', ' ']) {
            return Err(format!("{address:?}: the path may hold no query, fragment or space"));
        }
        Ok(CollectorEndpoint {
            host: host.to_owned(),
            port,
            traces_path: format!("{}/v1/traces", path.trim_end_matches('/')),
        })
    }
}

/// Where the proxy subscribes to its destinations and inbound policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The discovery server, `host:port` (`braid-discovery.braid-system.svc:8086`).
    pub endpoint: String,
    /// The DNS name the server's certificate must carry; the endpoint's host when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The pod this proxy runs in, sent in the hello (the server checks it against the client
    /// certificate's service account).
    pub pod_namespace: String,
    pub pod_name: String,
    /// How long the first connection to an unknown destination waits for its snapshot before
    /// it is forwarded unchanged (Linkerd's initialTimeout).
    #[serde(default = "default_initial_timeout", with = "duration_text")]
    pub initial_timeout: Duration,
    /// How long a discovered destination stays held with no connection open to it before the
    /// proxy lets it go (unsubscribes, and drops it from its table); the next connection asks
    /// again. Bounds what a proxy holds for an app that calls many short-lived pods.
    #[serde(default = "default_destination_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// This pod's IPs (the webhook passes `status.podIP`): a discovered endpoint at one of them
    /// is this pod itself, reached directly (`EndpointConfig::local`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<std::net::IpAddr>,
    /// The inbound policy until the discovery server sends the pod's (the webhook writes the
    /// pod's default inbound policy here). Without it, and without `inbound.policy`, inbound
    /// connections are refused until then: a proxy never admits more than its policy would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_policy: Option<PolicyConfig>,
}

impl DiscoveryConfig {
    /// The name the server's certificate is checked against.
    pub fn server_name(&self) -> &str {
        match &self.server_name {
            Some(name) => name,
            None => {
                let host = self.endpoint.rsplit_once(':').map_or(self.endpoint.as_str(), |(host, _)| host);
                host.trim_start_matches('[').trim_end_matches(']')
            }
        }
    }
}

/// How long a first connection waits for discovery, when no `initialTimeout` is given.
pub fn default_initial_timeout() -> Duration {
    Duration::from_secs(3)
}

/// How long an unused discovered destination is held, when no `idleTimeout` is given.
pub fn default_destination_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

/// How the proxy obtains and renews its workload certificate (docs/identity.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity to ask for: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    pub identity: String,
    /// The operator's identity endpoint, `host:port`.
    pub endpoint: String,
    /// The DNS name the endpoint's certificate must carry; the endpoint's host when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The projected ServiceAccount token (audience braid), re-read for every request.
    pub token_file: std::path::PathBuf,
    /// The roots the mesh trusts (PEM), re-read when it changes.
    pub trust_bundle_file: std::path::PathBuf,
    /// Renew when this share of the certificate's lifetime has passed.
    #[serde(default = "default_renew_at_percent")]
    pub renew_at_percent: u8,
}

/// The share of a certificate's lifetime after which it is renewed, when none is given.
pub fn default_renew_at_percent() -> u8 {
    70
}

/// Who may connect to the app (a MeshPolicy, as the proxy applies it). With a policy, every
/// request no rule allows is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default)]
    pub rules: Vec<AuthorizationRuleConfig>,
    /// The kubelet's HTTP probes of the pod's containers. The kubelet cannot speak mTLS, so a
    /// plaintext GET of exactly one of these paths on its port is admitted even under STRICT
    /// and whatever the rules say, as Linkerd authorizes probes; nothing else plaintext is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeConfig>,
    /// What the policy was made from, which the proxy's metrics name as Linkerd names the server
    /// a request reached (`srv_kind`, `srv_name`). `None` for a policy written by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PolicySource>,
}

/// Where a pod's inbound policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PolicySource {
    /// No MeshPolicy selects the pod: its default inbound policy applies.
    Default(DefaultInboundPolicy),
    /// The MeshPolicies that select the pod, by name, in the order their rules are listed.
    MeshPolicies(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeConfig {
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mTLS connections from meshed clients.
    #[default]
    Strict,
    /// mTLS and plaintext.
    Permissive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRuleConfig {
    /// The rule's name in metrics and deny reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Clients allowed; any one may match. Empty: any client the mTLS mode admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<SourceConfig>,
    /// Operations allowed; any one may match. Empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<OperationConfig>,
}

/// What a meshed pod admits when no MeshPolicy selects it, as Linkerd's default inbound policies
/// (`config.linkerd.io/default-inbound-policy`) name them. Set mesh-wide in the Mesh, per
/// pod by the annotation `braid.dev/default-inbound-policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DefaultInboundPolicy {
    /// Every client, meshed (mTLS) or not: the mesh does not change who may connect.
    #[default]
    AllUnauthenticated,
    /// Only meshed clients, over mTLS.
    AllAuthenticated,
    /// Nobody but the kubelet's probes: every client needs a MeshPolicy that allows it.
    Deny,
}

impl DefaultInboundPolicy {
    pub const ALL: [Self; 3] = [Self::AllUnauthenticated, Self::AllAuthenticated, Self::Deny];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::Deny => "deny",
        }
    }

    /// The policy a proxy applies for it, admitting the pod's HTTP probes. Its rule is named
    /// `default:NAME`, which the proxy's metrics show as Linkerd's default authorizations.
    pub fn policy(self, probes: Vec<ProbeConfig>) -> PolicyConfig {
        let anyone = || AuthorizationRuleConfig {
            name: Some(format!("{DEFAULT_RULE_PREFIX}{}", self.as_str())),
            ..AuthorizationRuleConfig::anyone()
        };
        let (mtls, rules) = match self {
            Self::AllUnauthenticated => (MtlsMode::Permissive, vec![anyone()]),
            Self::AllAuthenticated => (MtlsMode::Strict, vec![anyone()]),
            Self::Deny => (MtlsMode::Strict, Vec::new()),
        };
        PolicyConfig { mtls, rules, probes, source: Some(PolicySource::Default(self)) }
    }
}

impl std::fmt::Display for DefaultInboundPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown default inbound policy {0:?}: use all-unauthenticated, all-authenticated or deny")]
pub struct UnknownDefaultPolicy(pub String);

impl std::str::FromStr for DefaultInboundPolicy {
    type Err = UnknownDefaultPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|policy| policy.as_str() == text)
            .ok_or_else(|| UnknownDefaultPolicy(text.to_owned()))
    }
}

impl AuthorizationRuleConfig {
    /// A rule that admits every client the mTLS mode admits.
    pub fn anyone() -> Self {
        Self { name: None, from: Vec::new(), to: Vec::new() }
    }
}

/// One of: a service account, every service account of a namespace, or a SPIFFE id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountConfig {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationConfig {
    /// Exact paths, or prefixes ending in `*` (`/api/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The app ports (original destination ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], contract::ADMIN_PORT))
}

/// The listener that iptables redirects the app's outgoing connections to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundConfig {
    #[serde(default = "default_outbound_listen")]
    pub listen: SocketAddr,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self { listen: default_outbound_listen() }
    }
}

fn default_outbound_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], contract::OUTBOUND_PORT))
}

/// The listener that iptables redirects connections to the app to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundConfig {
    #[serde(default = "default_inbound_listen")]
    pub listen: SocketAddr,
    /// Where a connection goes that reached the inbound listener without an iptables redirect
    /// (no original destination): a fixed app address. Without it such connections are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SocketAddr>,
    /// Who may connect to the app; without a policy every client may, plaintext or mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self { listen: default_inbound_listen(), target: None, policy: None }
    }
}

fn default_inbound_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], contract::INBOUND_PORT))
}

/// Bounds that keep one client from taking the proxy down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Open client connections per listener; more wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open inbound connections from one client IP address. A connection beyond it is closed as
    /// soon as it is accepted (and counted in tcp_refused_client_limit), so that one client cannot
    /// take every slot of `maxConnections`. A tenth of `maxConnections` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<usize>,
    /// The request head (request line and headers); larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per client connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Request bodies up to this size are kept to replay them on a retry; larger ones are sent
    /// once, never buffered.
    #[serde(default = "default_max_retry_body_bytes")]
    pub max_retry_body_bytes: usize,
    /// How long to wait for a client's first bytes before treating the connection as opaque TCP
    /// (server-speaks-first protocols send nothing).
    #[serde(default = "default_detect_timeout", with = "duration_text")]
    pub detect_timeout: Duration,
    /// How long a client other than the pod's own app may take to send a request head, counted
    /// from when the proxy starts waiting for it (slowloris): a partial head then gets 408, an
    /// idle keep-alive connection is closed.
    #[serde(default = "default_head_timeout", with = "duration_text")]
    pub head_timeout: Duration,
    /// How long an inbound HTTP/2 connection with no open stream, or an inbound opaque TCP
    /// connection with no byte either way, is kept before the proxy closes it (an HTTP/2 one with
    /// GOAWAY). One hour, as Envoy's HTTP and TCP idle timeouts. (Inbound HTTP/1.1 connections
    /// are bounded by `headTimeout`; the pod's own app is trusted to close what it opens.)
    #[serde(default = "default_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// Mirrored copies of requests in flight at once, over the whole proxy; a copy beyond it is
    /// not sent (counted in mirror_dropped).
    #[serde(default = "default_max_mirrors_in_flight")]
    pub max_mirrors_in_flight: usize,
    /// How long a mirrored copy may take, its whole answer included; then it is abandoned.
    #[serde(default = "default_mirror_timeout", with = "duration_text")]
    pub mirror_timeout: Duration,
}

impl Limits {
    /// The inbound connections one client IP address may hold open.
    pub fn connections_per_client(&self) -> usize {
        self.max_connections_per_client
            .unwrap_or(self.max_connections / 10)
            .clamp(1, self.max_connections.max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_client: None,
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_retry_body_bytes: default_max_retry_body_bytes(),
            detect_timeout: default_detect_timeout(),
            head_timeout: default_head_timeout(),
            idle_timeout: default_idle_timeout(),
            max_mirrors_in_flight: default_max_mirrors_in_flight(),
            mirror_timeout: default_mirror_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_max_retry_body_bytes() -> usize {
    64 * 1024
}
fn default_detect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_head_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_mirrors_in_flight() -> usize {
    100
}

fn default_mirror_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How the proxy treats a destination's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1.1 and HTTP/2 from the first bytes; anything else is opaque TCP.
    #[default]
    Auto,
    /// Never parse: forward bytes (databases, server-speaks-first protocols).
    Opaque,
}

/// One destination service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    /// Its name, also matched against the Host / :authority of requests that were not
    /// redirected (port ignored): `reviews.default.svc.cluster.local`.
    pub name: String,
    /// Other host names requests may use for it (`reviews`, `reviews.default`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The addresses (cluster IP and port) whose redirected connections belong to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// An extra listener whose every connection goes to this service (a port-forward: for
    /// clients outside the iptables redirect, and benchmarks). Bound at start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    pub backends: Vec<BackendConfig>,
    /// Tried in order; the first rule that matches a request routes it. Opaque TCP uses the first
    /// rule's backends.
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// At most this many requests to the service in flight from this proxy (until their
    /// response headers, retries included); more get 503 at once. Unbounded when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Requests (HTTP/2: streams) each connection to an endpoint of the service carries before
    /// the proxy closes it after its last answer and opens another. Unbounded when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/1.1 and opaque TCP connections this proxy opens to each endpoint of the service;
    /// a request that finds them all busy waits for one. Not HTTP/2, which multiplexes every
    /// request to an endpoint on one connection. Unbounded when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection under `maxConnections`, per endpoint (1024 when
    /// not given); more are answered 503 `overloaded` at once. Needs `maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// A destination outside the cluster: the external services registered for it and what
    /// happens to the rest. Such a service has no backends or routes: its connections go on to
    /// the address the app connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<egress::EgressConfig>,
}

/// A named set of endpoints (a Kubernetes Service, or a subset of its pods like `v2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    /// The endpoint runs a braid-proxy: requests go to it over one multiplexed HTTP/2
    /// connection, whatever protocol the app spoke (mTLS once identities exist).
    #[serde(default)]
    pub meshed: bool,
    /// The endpoint itself speaks HTTP/2 (prior knowledge, gRPC). Irrelevant when meshed.
    #[serde(default)]
    pub http2: bool,
    /// The SPIFFE id the endpoint's proxy must prove: connections to it are mTLS, and fail
    /// when its certificate names anyone else. Needs `identity` and `meshed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The endpoint is this pod itself (its own pod IP): a request the balancer gives it goes
    /// straight to the app, in the protocol the request came in, as the app calling itself by
    /// pod IP would. Through mTLS it would reach the app's port directly (the proxy's own
    /// connections are not redirected), which does not speak TLS. Not with `meshed`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// The pod behind the endpoint, which the proxy's metrics name its answers by (Linkerd's
    /// `dst_*` labels). Only for proxies that name the `endpoint-pod` feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<EndpointPod>,
}

/// The pod behind an endpoint: `dst_namespace`, `dst_pod`, `dst_serviceaccount`,
/// `dst_<workload kind>` and `dst_pod_template_hash` on the answers it gives, as linkerd2-proxy
/// labels its endpoints, so that queries grouping outbound traffic by `dst_deployment` work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// The workload that controls the pod; none for a pod without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The pod's `pod-template-hash` label (pods of a Deployment's ReplicaSet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_template_hash: String,
}

/// A workload by kind and name, as Linkerd's labels name it (`deployment`, `statefulset`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// The pods of a Deployment: their ReplicaSet is named after it and their template hash.
    Deployment,
    /// A ReplicaSet no Deployment made.
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
}

impl WorkloadKind {
    /// The kind as Linkerd's labels spell it (`dst_deployment`, `deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::ReplicaSet => "replicaset",
            Self::StatefulSet => "statefulset",
            Self::DaemonSet => "daemonset",
            Self::Job => "job",
        }
    }

    /// The label Linkerd's proxy names an endpoint's workload with (`dst_deployment`, ...).
    pub fn dst_label(self) -> &'static str {
        match self {
            Self::Deployment => "dst_deployment",
            Self::ReplicaSet => "dst_replicaset",
            Self::StatefulSet => "dst_statefulset",
            Self::DaemonSet => "dst_daemonset",
            Self::Job => "dst_job",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's label in metrics; `rule-N` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of these matches the request; none means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchConfig>,
    pub backends: Vec<WeightedBackend>,
    /// The whole request, retries included; on expiry the client gets 504.
    #[serde(default, with = "duration_text::optional", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Header edits on the request before it goes to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEditsConfig>,
    /// Header edits on the response before it goes back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEditsConfig>,
    /// Answers with a redirect instead of sending the request on (the backends are not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// Rewrites the host and path of the request before it goes to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteConfig>,
    /// At most this many of the route's requests per second from this proxy; the rest get 429
    /// with `retry-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// This route's own retry budget; routes without one share the service's `retryBudget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetConfig>,
}

/// A token bucket: `requestsPerSecond` sustained, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Where a redirect points: each part not given is the request's own. A scheme given without a
/// port means that scheme's well-known port, which the Location leaves out, as it does 80 for
/// http and 443 for https.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewriteConfig>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteConfig {
    /// The Host (`:authority`) the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewriteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathRewriteConfig {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The part of the path that `prefix` matches (whole segments) becomes `with`.
    ReplacePrefixMatch { prefix: String, with: String },
}

impl PathRewriteConfig {
    /// `path` rewritten: `/foo/bar` with the prefix `/foo` replaced by `/xyz` is `/xyz/bar`, and by
    /// `/` is `/bar`; a path the prefix does not start is left as it is.
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewriteConfig::ReplaceFullPath(full) => full.clone(),
            PathRewriteConfig::ReplacePrefixMatch { prefix, with } => {
                let prefix = prefix.trim_end_matches('/');
                let Some(rest) = path.strip_prefix(prefix) else { return path.to_owned() };
                let joined = format!("{}{rest}", with.trim_end_matches('/'));
                if joined.starts_with('/') { joined } else { format!("/{joined}") }
            }
        }
    }
}

/// Edits of a request's or a response's headers, applied in this order: set, add, remove.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEditsConfig {
    /// Replaces every value of the header (adds it when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValueConfig>,
    /// Appends to the header's values, comma-separated (adds it when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValueConfig>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub name: String,
    pub value: String,
}

/// All conditions given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters by name (case-sensitive, the first of a name counts) and raw value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole segments: `/v1` matches `/v1` and `/v1/x`, not `/v10`.
    Prefix(String),
    /// Must match the whole path.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderValueMatch {
    Exact(String),
    /// Must match the whole value.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Retries are off unless a route asks for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetriesConfig {
    /// Total tries, the first one included.
    pub attempts: u32,
    #[serde(default, with = "duration_text::optional", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::GatewayError, RetryOn::ConnectFailure, RetryOn::Reset]
}

/// Envoy's and Istio's names for what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response, and the failures of gateway-error.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504, and a per-try timeout.
    GatewayError,
    /// The upstream connection could not be made.
    ConnectFailure,
    /// The upstream connection broke before a response.
    Reset,
    /// A gRPC answer without a body (trailers-only) whose `grpc-status` is CANCELLED (1).
    Cancelled,
    /// ... DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// ... RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// ... UNAVAILABLE (14).
    Unavailable,
}

impl RetryOn {
    /// The gRPC status code a gRPC condition retries, or None for the HTTP ones.
    pub fn grpc_status(self) -> Option<u8> {
        match self {
            Self::Cancelled => Some(1),
            Self::DeadlineExceeded => Some(4),
            Self::ResourceExhausted => Some(8),
            Self::Unavailable => Some(14),
            Self::FiveXx | Self::GatewayError | Self::ConnectFailure | Self::Reset => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(with = "duration_text")]
    pub fixed: Duration,
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub status: u16,
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
}

/// A copy of matching requests goes to another backend; its answer is dropped. Only requests
/// whose body is small enough to keep (limits.maxRetryBodyBytes) are mirrored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    pub backend: String,
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

/// How an endpoint is chosen for each request, and outlier ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Session affinity: requests with the same key go to the same endpoint while it is
    /// available (rendezvous hashing: when endpoints come and go, only their keys move). Requests
    /// without the key are balanced by `algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// How fast the latency average forgets: the time constant of its decay.
    #[serde(default = "default_ewma_decay", with = "duration_text")]
    pub ewma_decay: Duration,
    /// Consecutive failures (5xx or connection errors) that eject an endpoint; 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it, up to maxEjectionTime.
    #[serde(default = "default_base_ejection", with = "duration_text")]
    pub base_ejection_time: Duration,
    #[serde(default = "default_max_ejection", with = "duration_text")]
    pub max_ejection_time: Duration,
    /// At most this share of a backend's endpoints is ejected at once (at least one may be).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

/// How the balancer picks among available endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Power of two choices over a peak-sensitive EWMA of latency times outstanding requests.
    #[default]
    Ewma,
    /// Power of two choices over outstanding requests alone.
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
}

/// What a session-affinity key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HashOn {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            hash_on: None,
            ewma_decay: default_ewma_decay(),
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

fn default_max_ejected_percent() -> u32 {
    100
}

fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

/// Retries may add at most `percent` of the requests plus `minPerSecond`, over `ttl`: Linkerd's
/// defaults, so retries cannot turn a partial outage into a full one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_budget_percent")]
    pub percent: f32,
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
    #[serde(default = "default_budget_ttl", with = "duration_text")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_per_second: default_budget_min(),
            ttl: default_budget_ttl(),
        }
    }
}

fn default_budget_percent() -> f32 {
    20.0
}
fn default_budget_min() -> u32 {
    10
}
fn default_budget_ttl() -> Duration {
    Duration::from_secs(10)
}

/// Why a configuration was refused. The path names the field, like `services[0].routes[1]`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the configuration is not valid YAML or JSON of the expected shape: {0}")]
    Syntax(String),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Config {
    /// Parses and checks a configuration (YAML; JSON is YAML too).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration with no services: the proxy forwards everything unchanged.
    pub fn empty() -> Self {
        // Cannot fail: every field has a default.
        Self {
            admin: default_admin(),
            outbound: OutboundConfig::default(),
            inbound: InboundConfig::default(),
            limits: Limits::default(),
            access_log: false,
            services: Vec::new(),
            identity: None,
            discovery: None,
            tracing: None,
        }
    }
}
