//! The proxy's configuration: the model the control plane will send (per destination service:
//! routes, weighted backends, endpoints, timeouts, retries, faults, mirroring), read for now from
//! a YAML or JSON file. `Config::parse` checks everything it can, so a bad file is refused whole,
//! with the field that is wrong, and the proxy keeps the last good one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

pub fn default_initial_timeout() -> Duration {
    Duration::from_secs(3)
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

fn default_renew_at_percent() -> u8 {
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
    SocketAddr::from(([0, 0, 0, 0], 4191))
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
    SocketAddr::from(([127, 0, 0, 1], 4140))
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
    SocketAddr::from(([0, 0, 0, 0], 4143))
}

/// Bounds that keep one client from taking the proxy down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Open client connections per listener; more wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_retry_body_bytes: default_max_retry_body_bytes(),
            detect_timeout: default_detect_timeout(),
            head_timeout: default_head_timeout(),
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default, with = "optional_duration_text", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
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
    #[serde(default, with = "optional_duration_text", skip_serializing_if = "Option::is_none")]
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

/// Power of two choices over EWMA latency, and outlier ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerConfig {
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
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            ewma_decay: default_ewma_decay(),
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
        }
    }
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
        }
    }

    /// Discovery is mTLS with the workload certificate: without an identity there is none.
    /// Checked once the identity from the environment is known (`app::start`).
    pub fn check_discovery_identity(&self) -> Result<(), ConfigError> {
        if self.discovery.is_some() && self.identity.is_none() {
            return Err(ConfigError::Invalid {
                path: "discovery".into(),
                reason:
                    "discovery needs this proxy's identity for mTLS to the discovery server: add identity: \
                         to the file, or run with the BRAID_TRUST_DOMAIN, BRAID_POD_NAMESPACE, \
                         BRAID_SERVICE_ACCOUNT and BRAID_IDENTITY_ADDR environment"
                        .into(),
            });
        }
        Ok(())
    }

    /// What `parse` checks; also run on configurations composed from discovered parts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |path: String, reason: &str| Err(ConfigError::Invalid { path, reason: reason.to_owned() });
        if self.limits.max_connections == 0 {
            return invalid("limits.maxConnections".into(), "must be at least 1");
        }
        if self.limits.max_header_bytes < 1024 {
            return invalid("limits.maxHeaderBytes".into(), "must be at least 1024");
        }
        if self.limits.max_concurrent_streams == 0 {
            return invalid("limits.maxConcurrentStreams".into(), "must be at least 1");
        }
        if self.limits.head_timeout < Duration::from_millis(100) {
            return invalid("limits.headTimeout".into(), "must be at least 100ms");
        }
        if let Some(identity) = &self.identity {
            if crate::identity::SpiffeId::parse(&identity.identity).is_none() {
                return invalid(
                    "identity.identity".into(),
                    "must be spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
                );
            }
            if !(10..=95).contains(&identity.renew_at_percent) {
                return invalid("identity.renewAtPercent".into(), "must be between 10 and 95");
            }
            if identity.endpoint.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
                return invalid("identity.endpoint".into(), "must be host:port");
            }
        }
        if let Some(discovery) = &self.discovery {
            if discovery
                .endpoint
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return invalid("discovery.endpoint".into(), "must be host:port");
            }
            if rustls_pki_types::ServerName::try_from(discovery.server_name()).is_err() {
                return invalid("discovery.serverName".into(), "must be a DNS name or an IP address");
            }
            if discovery.pod_namespace.is_empty() {
                return invalid("discovery.podNamespace".into(), "must not be empty");
            }
            if discovery.pod_name.is_empty() {
                return invalid("discovery.podName".into(), "must not be empty");
            }
            if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&discovery.initial_timeout) {
                return invalid("discovery.initialTimeout".into(), "must be between 1ms and 60s");
            }
        }
        if let Some(policy) = &self.inbound.policy {
            validate_policy(policy)?;
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (s, service) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{s}]{field}");
            if service.name.is_empty() {
                return invalid(at(".name"), "must not be empty");
            }
            for host in std::iter::once(&service.name).chain(&service.hosts) {
                if !names.insert(host.to_ascii_lowercase()) {
                    return invalid(at(""), &format!("the host name {host:?} is used by two services"));
                }
            }
            for address in &service.addresses {
                if !addresses.insert(*address) {
                    return invalid(at(".addresses"), &format!("{address} belongs to two services"));
                }
            }
            if service.backends.is_empty() {
                return invalid(at(".backends"), "a service needs at least one backend");
            }
            let mut backend_names = HashSet::new();
            for (b, backend) in service.backends.iter().enumerate() {
                if !backend_names.insert(backend.name.as_str()) {
                    return invalid(at(&format!(".backends[{b}].name")), "two backends have this name");
                }
                for (e, endpoint) in backend.endpoints.iter().enumerate() {
                    let Some(identity) = &endpoint.identity else { continue };
                    let at = at(&format!(".backends[{b}].endpoints[{e}].identity"));
                    if crate::identity::SpiffeId::parse(identity).is_none() {
                        return invalid(at, "must be spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT");
                    }
                    if self.identity.is_none() {
                        return invalid(
                            at,
                            "mTLS to an endpoint needs this proxy's own identity (identity:)",
                        );
                    }
                    if !endpoint.meshed {
                        return invalid(at, "only a meshed endpoint (a braid proxy) can prove an identity");
                    }
                }
            }
            if service.routes.is_empty() {
                return invalid(at(".routes"), "a service needs at least one route");
            }
            for (r, route) in service.routes.iter().enumerate() {
                let at = |field: &str| format!("services[{s}].routes[{r}]{field}");
                validate_route(route, &backend_names, &at)?;
            }
            let lb = &service.load_balancer;
            if lb.base_ejection_time > lb.max_ejection_time {
                return invalid(at(".loadBalancer"), "baseEjectionTime must not exceed maxEjectionTime");
            }
            if !(0.0..=1000.0).contains(&service.retry_budget.percent) {
                return invalid(at(".retryBudget.percent"), "must be between 0 and 1000");
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&service.retry_budget.ttl) {
                return invalid(at(".retryBudget.ttl"), "must be between 1s and 60s");
            }
        }
        Ok(())
    }
}

fn validate_policy(policy: &PolicyConfig) -> Result<(), ConfigError> {
    let invalid = |path: String, reason: String| Err(ConfigError::Invalid { path, reason });
    for (r, rule) in policy.rules.iter().enumerate() {
        for (f, source) in rule.from.iter().enumerate() {
            let given =
                [source.service_account.is_some(), source.namespace.is_some(), source.identity.is_some()];
            if given.iter().filter(|&&g| g).count() != 1 {
                return invalid(
                    format!("inbound.policy.rules[{r}].from[{f}]"),
                    "name exactly one of serviceAccount, namespace or identity".into(),
                );
            }
            if let Some(identity) = &source.identity
                && crate::identity::SpiffeId::parse(identity).is_none()
            {
                return invalid(
                    format!("inbound.policy.rules[{r}].from[{f}].identity"),
                    "must be spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT".into(),
                );
            }
        }
        for (t, operation) in rule.to.iter().enumerate() {
            for path in &operation.paths {
                if !path.starts_with('/') {
                    return invalid(
                        format!("inbound.policy.rules[{r}].to[{t}].paths"),
                        format!("{path:?} must start with /"),
                    );
                }
            }
            for method in &operation.methods {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    return invalid(
                        format!("inbound.policy.rules[{r}].to[{t}].methods"),
                        format!("{method:?} is not an HTTP method"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn validate_route(
    route: &RouteConfig,
    backend_names: &HashSet<&str>,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let invalid = |path: String, reason: String| Err(ConfigError::Invalid { path, reason });
    if route.backends.is_empty() {
        return invalid(at(".backends"), "a route needs at least one backend".into());
    }
    for (i, backend) in route.backends.iter().enumerate() {
        if !backend_names.contains(backend.name.as_str()) {
            return invalid(
                at(&format!(".backends[{i}].name")),
                format!("no backend named {:?} in this service", backend.name),
            );
        }
        if backend.weight > 1_000_000 {
            return invalid(at(&format!(".backends[{i}].weight")), "must be at most 1000000".into());
        }
    }
    if route.backends.iter().all(|b| b.weight == 0) {
        return invalid(at(".backends"), "the weights are all 0: give at least one backend a weight".into());
    }
    for (m, matching) in route.matches.iter().enumerate() {
        let at = |field: &str| at(&format!(".matches[{m}]{field}"));
        match &matching.path {
            Some(PathMatch::Exact(path) | PathMatch::Prefix(path)) if !path.starts_with('/') => {
                return invalid(at(".path"), format!("{path:?} must start with /"));
            }
            Some(PathMatch::Regex(pattern)) => {
                if let Err(error) = regex::Regex::new(pattern) {
                    return invalid(at(".path.regex"), format!("not a regular expression: {error}"));
                }
            }
            _ => {}
        }
        if let Some(method) = &matching.method
            && http::Method::from_bytes(method.as_bytes()).is_err()
        {
            return invalid(at(".method"), format!("{method:?} is not an HTTP method"));
        }
        for (h, header) in matching.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                return invalid(at(&format!(".headers[{h}].name")), "not a header name".into());
            }
            if let HeaderValueMatch::Regex(pattern) = &header.value
                && let Err(error) = regex::Regex::new(pattern)
            {
                return invalid(
                    at(&format!(".headers[{h}].regex")),
                    format!("not a regular expression: {error}"),
                );
            }
        }
    }
    if let Some(retries) = &route.retries {
        if !(1..=10).contains(&retries.attempts) {
            return invalid(at(".retries.attempts"), "must be between 1 and 10".into());
        }
        if retries.per_try_timeout == Some(Duration::ZERO) {
            return invalid(at(".retries.perTryTimeout"), "must be more than 0".into());
        }
    }
    if route.timeout == Some(Duration::ZERO) {
        return invalid(at(".timeout"), "must be more than 0 (leave it out for no timeout)".into());
    }
    if let Some(fault) = &route.fault {
        if let Some(delay) = &fault.delay
            && !(0.0..=100.0).contains(&delay.percent)
        {
            return invalid(at(".fault.delay.percent"), "must be between 0 and 100".into());
        }
        if let Some(abort) = &fault.abort {
            if !(0.0..=100.0).contains(&abort.percent) {
                return invalid(at(".fault.abort.percent"), "must be between 0 and 100".into());
            }
            if !(200..=599).contains(&abort.status) {
                return invalid(
                    at(".fault.abort.status"),
                    "must be an HTTP status between 200 and 599".into(),
                );
            }
        }
    }
    if let Some(mirror) = &route.mirror {
        if !backend_names.contains(mirror.backend.as_str()) {
            return invalid(
                at(".mirror.backend"),
                format!("no backend named {:?} in this service", mirror.backend),
            );
        }
        if !(0.0..=100.0).contains(&mirror.percent) {
            return invalid(at(".mirror.percent"), "must be between 0 and 100".into());
        }
    }
    Ok(())
}

/// Durations spelled as in the mesh API ("2s", "500ms").
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        // Largest units first, so the text parses back (GEP-2257 allows five digits per unit).
        let millis = value.as_millis();
        let (hours, minutes, seconds, millis) =
            (millis / 3_600_000, millis / 60_000 % 60, millis / 1000 % 60, millis % 1000);
        let mut text = String::new();
        for (amount, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
            if amount > 0 {
                text.push_str(&format!("{amount}{unit}"));
            }
        }
        if text.is_empty() {
            text.push_str("0s");
        }
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        braid_runtime::duration::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::duration_text::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| braid_runtime::duration::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
admin: 127.0.0.1:9000
services:
  - name: reviews.default.svc.cluster.local
    hosts: [reviews]
    addresses: ["10.96.0.10:80"]
    backends:
      - name: v1
        endpoints: [{ address: "10.0.0.1:8080", meshed: true }]
      - name: v2
        endpoints: [{ address: "10.0.0.2:8080" }]
    routes:
      - name: get-v1
        matches: [{ path: { prefix: /v1 }, method: GET, headers: [{ name: x-user, regex: "a.*" }] }]
        backends: [{ name: v1 }]
        timeout: 5s
        retries: { attempts: 3, perTryTimeout: 2s, retryOn: [5xx, connect-failure] }
      - backends: [{ name: v1, weight: 80 }, { name: v2, weight: 20 }]
"#;

    #[test]
    fn parses_the_seed_routes() {
        let config = Config::parse(SEED).unwrap();
        let service = &config.services[0];
        assert_eq!(service.routes.len(), 2);
        let retries = service.routes[0].retries.as_ref().unwrap();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(retries.retry_on, vec![RetryOn::FiveXx, RetryOn::ConnectFailure]);
        assert_eq!(service.routes[0].timeout, Some(Duration::from_secs(5)));
        assert_eq!(service.routes[1].backends[1].weight, 20);
        assert!(service.backends[0].endpoints[0].meshed);
        assert_eq!(config.inbound, InboundConfig::default());
        assert_eq!(service.retry_budget.percent, 20.0);
    }

    #[test]
    fn serializes_back_to_the_same_config() {
        let config = Config::parse(SEED).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(Config::parse(&json).unwrap(), config);
    }

    fn refused(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_files_with_the_field_and_the_reason() {
        let cases = [
            ("services: [", "not valid YAML"),
            ("servics: []", "unknown field"),
            (&SEED.replace("weight: 80", "weight: -1"), "not valid"),
            (&SEED.replace("timeout: 5s", "timeout: 5 seconds"), "is not a duration"),
            (
                &SEED.replace("{ name: v1 }", "{ name: v3 }"),
                "services[0].routes[0].backends[0].name: no backend named \"v3\"",
            ),
            (&SEED.replace("prefix: /v1", "prefix: v1"), "must start with /"),
            (
                &SEED.replace("a.*", "a("),
                "services[0].routes[0].matches[0].headers[0].regex: not a regular expression",
            ),
            (&SEED.replace("method: GET", "method: \"G T\""), "is not an HTTP method"),
            (&SEED.replace("attempts: 3", "attempts: 0"), "retries.attempts: must be between 1 and 10"),
            (
                &SEED.replace("weight: 80", "weight: 0").replace("weight: 20", "weight: 0"),
                "weights are all 0",
            ),
            (
                &SEED.replace("hosts: [reviews]", "hosts: [reviews.default.svc.cluster.local]"),
                "used by two services",
            ),
            (
                &SEED.replace("    routes:\n      - name: get-v1", "    routez:\n      - name: get-v1"),
                "unknown field",
            ),
            (&SEED.replace("address: \"10.0.0.2:8080\"", "address: \"10.0.0.2\""), "not valid"),
            ("limits: { headTimeout: 0s }", "limits.headTimeout: must be at least 100ms"),
            ("limits: { headTimeout: soon }", "is not a duration"),
        ];
        for (text, expected) in cases {
            let error = refused(text);
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_config() {
        assert_eq!(Config::parse("{}").unwrap(), Config::empty());
    }

    #[test]
    fn the_discovery_section_is_checked() {
        let good = "discovery: { endpoint: \"braid-discovery.braid-system.svc:8086\", podNamespace: shop, podName: web-0 }";
        let config = Config::parse(good).unwrap();
        let discovery = config.discovery.as_ref().unwrap();
        assert_eq!(discovery.server_name(), "braid-discovery.braid-system.svc");
        assert_eq!(discovery.initial_timeout, Duration::from_secs(3));
        let error = config.check_discovery_identity().unwrap_err().to_string();
        assert!(error.contains("needs this proxy's identity"), "{error}");
        let cases = [
            (good.replace(":8086", ""), "discovery.endpoint: must be host:port"),
            (good.replace("podName: web-0", "podName: \"\""), "discovery.podName: must not be empty"),
            (
                good.replace("podName: web-0", "podName: web-0, initialTimeout: 0s"),
                "discovery.initialTimeout",
            ),
            (good.replace("podName: web-0", "podName: web-0, serverName: \"a b\""), "discovery.serverName"),
            (good.replace("podName: web-0", "podName: web-0, bogus: 1"), "unknown field"),
        ];
        for (text, expected) in cases {
            let error = refused(&text);
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }
}
