//! Prometheus metrics with Linkerd's names and labels (request_total, response_total with
//! classification and status_code, response_latency_ms with status_code and timed to the first
//! byte of the response body, tls, tcp_*), so existing dashboards and Flagger's Linkerd queries
//! work on Braid. docs/observability.md lists them; a test keeps it in step with this module.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A label value shared by reference: cloning it costs a reference count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(Arc<str>);

impl Label {
    pub fn new(value: impl AsRef<str>) -> Self {
        Self(Arc::from(value.as_ref()))
    }

    /// The empty label, shared: no allocation per use.
    pub fn empty() -> Self {
        static EMPTY: std::sync::OnceLock<Label> = std::sync::OnceLock::new();
        EMPTY.get_or_init(|| Label::new("")).clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn arc(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write_escaped(encoder, &self.0)
    }
}

/// A label value as the text format needs it: `\`, `"` and line feeds escaped (the encoder
/// writes values as given). Values come from requests too (`authority`): one quote left as it
/// is would make Prometheus refuse the whole scrape.
fn write_escaped(out: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

/// Who answered an outbound request: the identity its endpoint proved (`server_id`) and the
/// pod discovery says is behind it (`dst_*`). Each endpoint holds one; an answer clones it
/// (reference counts, no allocation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Answerer {
    pub server_id: Label,
    pub pod: DstPod,
}

impl Answerer {
    /// No endpoint: inbound, or an answer of the proxy's own.
    pub fn nobody() -> Self {
        Self { server_id: Label::empty(), pod: DstPod::default() }
    }
}

/// The pod behind an outbound endpoint, as linkerd2-proxy labels its endpoints' answers:
/// `dst_namespace`, `dst_pod`, `dst_serviceaccount`, `dst_deployment` (or the pod's other
/// workload kind) and `dst_pod_template_hash`. Empty when discovery did not say (a file's
/// endpoint, an address outside the cluster); the labels are then left out.
#[derive(Clone, Debug, Default, Eq)]
pub struct DstPod(Option<Arc<braid_api::config::EndpointPod>>);

impl DstPod {
    pub fn new(pod: Option<&braid_api::config::EndpointPod>) -> Self {
        Self(pod.map(|pod| Arc::new(pod.clone())))
    }

    /// Whether this is `pod` (a reload keeps an endpoint only for the same pod).
    pub fn is(&self, pod: Option<&braid_api::config::EndpointPod>) -> bool {
        self.0.as_deref() == pod
    }
}

impl PartialEq for DstPod {
    /// The same endpoint's answers share one `Arc`: equal at the pointer, before any text.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        }
    }
}

impl std::hash::Hash for DstPod {
    /// By content, as equality: two `Arc`s of one pod are one series.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_deref().hash(state);
    }
}

impl EncodeLabelSet for DstPod {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(pod) = &self.0 else { return Ok(()) };
        let workload = pod.workload.as_ref();
        let workload_key = workload.map(|workload| workload.kind.dst_label());
        let labels = [
            ("dst_namespace", pod.namespace.as_str()),
            ("dst_pod", pod.name.as_str()),
            ("dst_serviceaccount", pod.service_account.as_str()),
            (workload_key.unwrap_or_default(), workload.map_or("", |workload| workload.name.as_str())),
            ("dst_pod_template_hash", pod.pod_template_hash.as_str()),
        ];
        // Checked names (Kubernetes names: no character to escape) from the configuration.
        for label in labels.into_iter().filter(|(key, value)| !key.is_empty() && !value.is_empty()) {
            label.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Classification {
    success,
    failure,
    /// The client's own error, which the proxy answered itself: a request body it broke
    /// (malformed chunked framing, or cut off). Held against no endpoint.
    client_error,
    /// The client gave the request up (reset its stream, closed its connection) before the
    /// response's end: neither a success nor the server's failure.
    cancelled,
}

/// How a response body ended (`PendingResponse::finish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Whole: counted as classified from its head.
    Complete,
    /// Broken off by the upstream, or gRPC trailers with a status other than OK: a failure.
    Failed,
    /// Dropped unfinished: the client went away.
    Cancelled,
}

/// Whether the connection a request came in on (inbound) or went out on (outbound) was mTLS,
/// as Linkerd labels it: `tls`, and `no_tls_reason` when it was not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tls {
    /// `tls="true"`: the peer proved a mesh identity.
    Mutual,
    /// `tls="no_identity"`: plaintext, or TLS the proxy does not terminate.
    NoIdentity(NoTlsReason),
    /// In an outbound route's labels: each answer's series has the endpoint's (`answered_tls`).
    NotYetKnown,
}

/// Why a connection carried no mesh identity (Linkerd's `no_tls_reason` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum NoTlsReason {
    /// Inbound: the client did not open mesh TLS (an unmeshed client, the kubelet, Prometheus).
    no_tls_from_remote,
    /// Outbound: discovery gave the endpoint no identity (an unmeshed pod, an address outside
    /// the mesh), or no endpoint answered.
    not_provided_by_service_discovery,
}

impl Tls {
    /// An inbound connection's: mutual when the client proved an identity.
    pub fn inbound(client_proved_identity: bool) -> Self {
        if client_proved_identity { Self::Mutual } else { Self::NoIdentity(NoTlsReason::no_tls_from_remote) }
    }
}

impl EncodeLabelSet for Tls {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Mutual => ("tls", "true").encode(encoder.encode_label()),
            Self::NoIdentity(reason) => {
                ("tls", "no_identity").encode(encoder.encode_label())?;
                ("no_tls_reason", *reason).encode(encoder.encode_label())
            }
            Self::NotYetKnown => Ok(()),
        }
    }
}

/// Where a request or connection goes, as Linkerd labels it: `target_addr`, `target_ip` and
/// `target_port` (the app's address on inbound). The text is made once per connection and
/// shared; no labels when there is no address (outbound, where each try picks its endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetAddr {
    addr: Option<std::net::SocketAddr>,
    text: Label,
}

impl TargetAddr {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self { addr: Some(addr), text: Label::new(addr.to_string()) }
    }

    pub fn none() -> Self {
        Self { addr: None, text: Label::empty() }
    }

    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The address as one label value, shared (inbound `authority` is the same text).
    pub fn label(&self) -> &Label {
        &self.text
    }
}

impl EncodeLabelSet for TargetAddr {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(addr) = self.addr else { return Ok(()) };
        ("target_addr", self.text.clone()).encode(encoder.encode_label())?;
        ("target_ip", addr.ip().to_string()).encode(encoder.encode_label())?;
        ("target_port", addr.port()).encode(encoder.encode_label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// The destination as the client named it: the service's name for outbound, the app's
    /// address for inbound.
    pub authority: Label,
    /// Where the request goes: the app's address (inbound); empty on outbound, where it is
    /// the endpoint a try picks, which the route's series do not split by.
    #[prometheus(flatten)]
    pub target_addr: TargetAddr,
    pub dst_service: Label,
    pub route: Label,
    /// The client's SPIFFE id, on inbound mTLS connections.
    pub client_id: Label,
    #[prometheus(flatten)]
    pub tls: Tls,
}

/// request_total's labels: the request's and, on outbound, those of the endpoint that answered
/// it (`server_id`, `dst_*`, and `tls` as the connection to it was), as Linkerd counts requests
/// at their endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestTotalLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub server_id: Label,
    #[prometheus(flatten)]
    pub dst: DstPod,
}

impl RequestTotalLabels {
    pub fn new(request: &RequestLabels, answerer: &Answerer) -> Self {
        let Answerer { server_id, pod } = answerer;
        Self {
            request: RequestLabels { tls: answered_tls(request, server_id), ..request.clone() },
            server_id: server_id.clone(),
            dst: pod.clone(),
        }
    }
}

/// The `tls` of an answer: the inbound connection's; on outbound, mutual when the endpoint
/// proved an identity.
fn answered_tls(request: &RequestLabels, server_id: &Label) -> Tls {
    match request.direction {
        Direction::inbound => request.tls,
        Direction::outbound if server_id.as_str().is_empty() => {
            Tls::NoIdentity(NoTlsReason::not_provided_by_service_discovery)
        }
        Direction::outbound => Tls::Mutual,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub answer: AnswerLabels,
    pub classification: Classification,
    pub grpc_status_code: GrpcStatus,
}

/// A gRPC response's status (its `grpc-status` trailer, or header in a trailers-only answer);
/// empty for other responses, which Prometheus reads as no label at all, as Linkerd writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrpcStatus(pub Option<u8>);

impl GrpcStatus {
    pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

    /// The status in `headers` (trailers or a trailers-only answer's headers); a value that is
    /// not a status code counts as none.
    pub fn of(headers: &http::HeaderMap) -> Self {
        Self(
            headers
                .get(Self::GRPC_STATUS)
                .and_then(|value| std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()),
        )
    }
}

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => Ok(()),
        }
    }
}

/// The labels of response_latency_ms: a request's, with who answered and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AnswerLabels {
    pub direction: Direction,
    pub authority: Label,
    #[prometheus(flatten)]
    pub target_addr: TargetAddr,
    pub dst_service: Label,
    pub route: Label,
    pub client_id: Label,
    /// The SPIFFE id the answering endpoint proved, on outbound mTLS.
    pub server_id: Label,
    /// The pod that answered, on outbound (`dst_*`).
    #[prometheus(flatten)]
    pub dst: DstPod,
    /// Inbound: the request's; outbound: `true` when the endpoint proved an identity.
    #[prometheus(flatten)]
    pub tls: Tls,
    pub status_code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub direction: Direction,
    pub dst_service: Label,
    pub route: Label,
    pub kind: TimeoutKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TimeoutKind {
    total,
    per_try,
    /// A mirrored copy abandoned after `limits.mirrorTimeout`.
    mirror,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub direction: Direction,
    pub dst_service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MirrorLabels {
    pub dst_service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TeardownLabels {
    pub direction: Direction,
    pub peer: Peer,
    pub reason: TeardownReason,
}

/// Which end of the proxy an HTTP/2 connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Peer {
    /// A client's connection to the proxy (the app's on outbound, another proxy's on inbound).
    client,
    /// The proxy's connection to an upstream (an endpoint on outbound, the app on inbound).
    upstream,
}

/// How an HTTP/2 connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TeardownReason {
    /// The proxy sent GOAWAY: a drain, the idle timeout (inbound clients), or an upstream
    /// connection no endpoint uses any more.
    goaway_sent,
    /// The peer sent GOAWAY with an error code, or (upstream) a request met the GOAWAY of a
    /// server that was draining.
    goaway_received,
    /// The connection failed: a protocol error (the proxy's GOAWAY for it included) or an I/O
    /// error.
    error,
    /// An upstream that did not answer the keep-alive ping in time.
    ping_timeout,
    /// The peer closed it without an error (h2 does not tell a GOAWAY without error from a
    /// plain close).
    closed,
}

/// The teardown counter of one kind of HTTP/2 connection (its direction and peer): cloned into
/// each connection, counted once when it ends.
#[derive(Clone, Debug)]
pub struct Teardowns {
    family: Family<TeardownLabels, Counter>,
    direction: Direction,
    peer: Peer,
}

impl Teardowns {
    pub fn count(&self, reason: TeardownReason) {
        self.family
            .get_or_create(&TeardownLabels { direction: self.direction, peer: self.peer, reason })
            .inc();
    }
}

/// An inbound request or connection the policy denied (Linkerd's `inbound_*_authz_deny_total`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DenyLabels {
    #[prometheus(flatten)]
    pub target_addr: TargetAddr,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub route: InboundRoute,
    #[prometheus(flatten)]
    pub tls: Tls,
    pub client_id: Label,
}

/// An inbound request or connection the policy allowed, and what allowed it (Linkerd's
/// `inbound_*_authz_allow_total`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AllowLabels {
    #[prometheus(flatten)]
    pub target_addr: TargetAddr,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub route: InboundRoute,
    #[prometheus(flatten)]
    pub authz: Authz,
    #[prometheus(flatten)]
    pub tls: Tls,
    pub client_id: Label,
}

/// The API group of Braid's resources, in the `*_group` labels of what they define.
const BRAID_GROUP: &str = "braid.dev";

/// The server a request or connection reached, in Linkerd's terms (`srv_group`, `srv_kind`,
/// `srv_name`, `srv_port`): the pod's port, under the policy that governs it. Braid has no
/// Server resource: `srv_kind` is `default` with the default inbound policy's name when no
/// MeshPolicy selects the pod, `meshpolicy` with the names of those that do otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerLabels {
    pub kind: ServerKind,
    pub name: Label,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ServerKind {
    default,
    meshpolicy,
}

impl EncodeLabelSet for ServerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let group = match self.kind {
            ServerKind::default => "",
            ServerKind::meshpolicy => BRAID_GROUP,
        };
        ("srv_group", group).encode(encoder.encode_label())?;
        ("srv_kind", self.kind).encode(encoder.encode_label())?;
        ("srv_name", self.name.clone()).encode(encoder.encode_label())?;
        ("srv_port", self.port).encode(encoder.encode_label())
    }
}

/// The route of an inbound HTTP request, as Linkerd names the routes of a server that no
/// HTTPRoute describes (`route_group`, `route_kind`, `route_name`): Braid's policies have no
/// inbound routes, so every request is on `default` but the kubelet's probes, on `probe`.
/// Opaque connections have no route labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InboundRoute {
    Opaque,
    Default,
    Probe,
}

impl EncodeLabelSet for InboundRoute {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            Self::Opaque => return Ok(()),
            Self::Default => "default",
            Self::Probe => "probe",
        };
        ("route_group", "").encode(encoder.encode_label())?;
        ("route_kind", "default").encode(encoder.encode_label())?;
        ("route_name", name).encode(encoder.encode_label())
    }
}

/// What let a request or connection through (`authz_group`, `authz_kind`, `authz_name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authz {
    pub kind: AuthzKind,
    /// The rule's name (`POLICY-N` for a MeshPolicy's), or the default's (`probe` for the
    /// kubelet's probes).
    pub name: Label,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AuthzKind {
    /// No MeshPolicy selects the pod (`authz_name` says which default admitted it), or the
    /// kubelet's probe of one of the pod's probe paths (`authz_name` `probe`), as Linkerd names
    /// them.
    default,
    /// A rule of a MeshPolicy.
    meshpolicy,
}

impl EncodeLabelSet for Authz {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let group = match self.kind {
            AuthzKind::default => "",
            AuthzKind::meshpolicy => BRAID_GROUP,
        };
        ("authz_group", group).encode(encoder.encode_label())?;
        ("authz_kind", self.kind).encode(encoder.encode_label())?;
        ("authz_name", self.name.clone()).encode(encoder.encode_label())
    }
}

/// Connections (tcp, tls) and requests (http) to destinations outside the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EgressLabels {
    /// `NAMESPACE/NAME` of the external service, or `unregistered`: one series per registered
    /// service at most, whatever hosts the apps call.
    pub external_service: Label,
    pub protocol: EgressProtocol,
    pub decision: EgressDecision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EgressProtocol {
    http,
    tls,
    tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EgressDecision {
    allowed,
    denied,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IdentityRefusedLabels {
    pub reason: IdentityRefusal,
}

/// Why an inbound mTLS client was refused after its certificate verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IdentityRefusal {
    /// A SPIFFE id of another trust domain, signed under a root the mesh trusts.
    foreign_trust_domain,
    /// No `spiffe://TD/ns/NS/sa/SA` id at all.
    no_workload_identity,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    applied,
    rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SpanLabels {
    pub result: SpanResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SpanResult {
    exported,
    /// The export queue was full.
    dropped,
    /// The collector could not be reached or refused them.
    failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DiscoveryUpdateLabels {
    pub result: ReloadResult,
}

/// Linkerd's latency buckets, in milliseconds (the discovery reports count in the same ones).
const LATENCY_BUCKETS_MS: [u64; 22] = braid_api::discovery::LATENCY_BUCKETS_MS;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS.map(|ms| ms as f64))
}

/// One outbound backend of one destination: the labels of the per-backend series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// The destination (the Service the client called).
    pub dst_service: Label,
    /// The backend the route sent the try to (a canary's stable or canary Service).
    pub backend: Label,
}

/// A latency histogram of atomic buckets: an observation is a handful of relaxed atomic adds,
/// no lock, no allocation; and the buckets can be read back for the discovery reports.
#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
pub struct HistogramCells {
    /// Per bucket (LATENCY_BUCKETS_MS, then slower), not cumulative.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, latency: std::time::Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = LATENCY_BUCKETS_MS.partition_point(|&bound| bound * 1000 < micros);
        self.0.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The count of each bucket.
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS_MS.len() + 1] {
        std::array::from_fn(|i| self.0.buckets[i].load(Ordering::Relaxed))
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut cumulative = 0;
        let mut buckets = [(0.0, 0); LATENCY_BUCKETS_MS.len() + 1];
        for (i, count) in self.buckets().into_iter().enumerate() {
            cumulative += count;
            buckets[i] = (LATENCY_BUCKETS_MS.get(i).map_or(f64::MAX, |&b| b as f64), cumulative);
        }
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, cumulative, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The series of one backend, looked up once per routing table rather than per request.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    pub requests: Counter,
    pub failures: Counter,
    pub latency: AtomicHistogram,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestTotalLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<AnswerLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted: Family<RetryLabels, Counter>,
    pub rate_limited: Family<RetryLabels, Counter>,
    pub overloaded: Family<RetryLabels, Counter>,
    pub timeouts: Family<TimeoutLabels, Counter>,
    pub mirror_dropped: Family<MirrorLabels, Counter>,
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    pub tcp_open_total: Family<TcpLabels, Counter>,
    pub tcp_read_bytes: Family<TcpLabels, Counter>,
    pub tcp_write_bytes: Family<TcpLabels, Counter>,
    pub tcp_refused: Family<TcpLabels, Counter>,
    pub tcp_refused_client_limit: Family<TcpLabels, Counter>,
    pub tcp_idle_timeout: Family<TcpLabels, Counter>,
    pub teardowns: Family<TeardownLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub http_authz_allowed: Family<AllowLabels, Counter>,
    pub http_authz_denied: Family<DenyLabels, Counter>,
    pub tcp_authz_allowed: Family<AllowLabels, Counter>,
    pub tcp_authz_denied: Family<DenyLabels, Counter>,
    pub egress: Family<EgressLabels, Counter>,
    pub identity_refused: Family<IdentityRefusedLabels, Counter>,
    /// 1 while the discovery stream is open.
    pub discovery_connected: Gauge,
    pub discovery_updates: Family<DiscoveryUpdateLabels, Counter>,
    pub discovery_reconnects: Counter,
    pub discovery_lookup_timeouts: Counter,
    pub discovery_evictions: Counter,
    pub backend_requests: Family<BackendLabels, Counter>,
    pub backend_failures: Family<BackendLabels, Counter>,
    pub backend_latency: Family<BackendLabels, AtomicHistogram>,
    pub trace_spans: Family<SpanLabels, Counter>,
    /// Every backend with series, for the discovery reports (which the families cannot list).
    backends: Mutex<HashMap<BackendLabels, BackendMetrics>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register("request", "HTTP requests received", requests.clone());
        let responses = Family::default();
        registry.register("response", "HTTP responses sent, by status and classification", responses.clone());
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "response_latency_ms",
            "Time to the first byte of the response body (its end when it has none), in milliseconds",
            latency.clone(),
        );
        let retries = Family::default();
        registry.register("retry", "Requests sent again after a retryable failure", retries.clone());
        let retry_budget_exhausted = Family::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests answered 429 because the route's rateLimit was reached",
            rate_limited.clone(),
        );
        let overloaded = Family::default();
        registry.register(
            "overloaded",
            "Requests answered 503 because the service's maxRequests were in flight",
            overloaded.clone(),
        );
        let timeouts = Family::default();
        registry.register("timeout", "Requests or tries that timed out", timeouts.clone());
        let mirror_dropped = Family::default();
        registry.register(
            "mirror_dropped",
            "Mirrored copies not sent because limits.maxMirrorsInFlight copies were in flight",
            mirror_dropped.clone(),
        );
        let tcp_open_connections = Family::default();
        registry.register(
            "tcp_open_connections",
            "Client connections open now",
            tcp_open_connections.clone(),
        );
        let tcp_open_total = Family::default();
        registry.register("tcp_open", "Client connections accepted", tcp_open_total.clone());
        let tcp_read_bytes = Family::default();
        registry.register("tcp_read_bytes", "Bytes read from client connections", tcp_read_bytes.clone());
        let tcp_write_bytes = Family::default();
        registry.register("tcp_write_bytes", "Bytes written to client connections", tcp_write_bytes.clone());
        let tcp_refused = Family::default();
        registry.register(
            "tcp_refused",
            "Client connections closed because no destination could take them",
            tcp_refused.clone(),
        );
        let tcp_refused_client_limit = Family::default();
        registry.register(
            "tcp_refused_client_limit",
            "Client connections closed at once because their client address held limits.maxConnectionsPerClient",
            tcp_refused_client_limit.clone(),
        );
        let tcp_idle_timeout = Family::default();
        registry.register(
            "tcp_idle_timeout",
            "Client connections closed after limits.idleTimeout without a byte (opaque) or an open stream (HTTP/2)",
            tcp_idle_timeout.clone(),
        );
        let teardowns = Family::default();
        registry.register(
            "http_connection_teardowns",
            "HTTP/2 connections ended, by the proxy's side (peer) and how (reason)",
            teardowns.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reload",
            "Configuration files read, applied or rejected",
            config_reloads.clone(),
        );
        let http_authz_allowed = Family::default();
        registry.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests the policy allowed, by what allowed them",
            http_authz_allowed.clone(),
        );
        let http_authz_denied = Family::default();
        registry.register(
            "inbound_http_authz_deny",
            "Inbound HTTP requests the policy denied (answered 403)",
            http_authz_denied.clone(),
        );
        let tcp_authz_allowed = Family::default();
        registry.register(
            "inbound_tcp_authz_allow",
            "Inbound opaque TCP connections the policy allowed, by what allowed them",
            tcp_authz_allowed.clone(),
        );
        let tcp_authz_denied = Family::default();
        registry.register(
            "inbound_tcp_authz_deny",
            "Inbound connections the policy denied (closed)",
            tcp_authz_denied.clone(),
        );
        let egress = Family::default();
        registry.register(
            "outbound_egress",
            "Connections (tcp, tls) and requests (http) to destinations outside the cluster, by external service and decision",
            egress.clone(),
        );
        let identity_refused = Family::default();
        registry.register(
            "inbound_identity_refused",
            "Inbound mTLS connections closed after the handshake: the client's certificate names no identity of this mesh's trust domain",
            identity_refused.clone(),
        );
        let discovery_connected = Gauge::default();
        registry.register(
            "discovery_connected",
            "1 while the stream to the discovery server is open",
            discovery_connected.clone(),
        );
        let discovery_updates = Family::default();
        registry.register(
            "discovery_updates",
            "Discovery snapshots applied (acked) or rejected (nacked)",
            discovery_updates.clone(),
        );
        let discovery_reconnects = Counter::default();
        registry.register(
            "discovery_reconnects",
            "Connections to the discovery server after the first",
            discovery_reconnects.clone(),
        );
        let discovery_lookup_timeouts = Counter::default();
        registry.register(
            "discovery_lookup_timeouts",
            "New destinations forwarded unchanged because no discovery answer came within initialTimeout",
            discovery_lookup_timeouts.clone(),
        );
        let discovery_evictions = Counter::default();
        registry.register(
            "discovery_evictions",
            "Discovered destinations let go after idleTimeout with no connection open (asked for again on next use)",
            discovery_evictions.clone(),
        );
        let backend_requests = Family::default();
        registry.register(
            "outbound_backend_requests",
            "Outbound tries sent to each backend of a destination (a retried request counts once per try)",
            backend_requests.clone(),
        );
        let backend_failures = Family::default();
        registry.register(
            "outbound_backend_failures",
            "Outbound tries to each backend that failed: a 5xx, a gRPC status other than OK, or no answer",
            backend_failures.clone(),
        );
        let backend_latency = Family::default();
        registry.register(
            "outbound_backend_response_latency_ms",
            "Time to response headers of the tries to each backend, in milliseconds",
            backend_latency.clone(),
        );
        let trace_spans = Family::default();
        registry.register(
            "trace_spans",
            "Spans of traced requests: exported to the collector, dropped (the export queue was full) or failed (the collector could not be reached or refused them)",
            trace_spans.clone(),
        );
        Self {
            trace_spans,
            backend_requests,
            backend_failures,
            backend_latency,
            backends: Mutex::default(),
            discovery_connected,
            discovery_updates,
            discovery_reconnects,
            discovery_lookup_timeouts,
            discovery_evictions,
            http_authz_allowed,
            http_authz_denied,
            tcp_authz_allowed,
            tcp_authz_denied,
            egress,
            identity_refused,
            registry,
            requests,
            responses,
            latency,
            retries,
            retry_budget_exhausted,
            rate_limited,
            overloaded,
            timeouts,
            mirror_dropped,
            tcp_open_connections,
            tcp_open_total,
            tcp_read_bytes,
            tcp_write_bytes,
            tcp_refused,
            tcp_refused_client_limit,
            tcp_idle_timeout,
            teardowns,
            config_reloads,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# encoding the metrics failed");
        }
        text
    }
}

/// The metrics of one label set (a route, or an inbound connection), looked up once rather than
/// hashed per request; the answers seen most often are remembered the same way.
#[derive(Clone)]
pub struct RequestMetrics {
    /// request_total of the requests no endpoint answered, and of every inbound request.
    pub requests: Counter,
    answers: Arc<AnswerSeries>,
}

/// The response_total and response_latency_ms series of one label set, and its request_total
/// series by the endpoint that answered.
struct AnswerSeries {
    requests: Family<RequestTotalLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<AnswerLabels, Histogram, fn() -> Histogram>,
    labels: RequestLabels,
    remembered: Mutex<Vec<Arc<StatusSeries>>>,
    remembered_requests: Mutex<Vec<(Answerer, Counter)>>,
}

/// An outbound request not yet in request_total: it is counted once, when it is answered, under
/// the endpoint that answered ([`Self::answered_by`]), or under none when it is dropped without
/// that (the proxy answered it itself, or the client gave up first).
pub struct UncountedRequest<'a> {
    metrics: &'a RequestMetrics,
    counted: bool,
}

impl UncountedRequest<'_> {
    pub fn answered_by(mut self, answerer: &Answerer) {
        self.counted = true;
        self.metrics.count_request(answerer);
    }
}

impl Drop for UncountedRequest<'_> {
    fn drop(&mut self) {
        if !self.counted {
            self.metrics.requests.inc();
        }
    }
}

/// The series of one answer (status code and server identity) of a label set: its latency
/// histogram, and its response_total counter per classification, created on first use.
struct StatusSeries {
    labels: AnswerLabels,
    latency: Histogram,
    responses: Family<ResponseLabels, Counter>,
    by_class: [OnceLock<Counter>; 4],
    /// gRPC answers' counters, by class and status (a lock, but only for gRPC responses).
    by_grpc_status: Mutex<Vec<(Classification, u8, Counter)>>,
}

impl StatusSeries {
    fn count(&self, classification: Classification, grpc_status: GrpcStatus) {
        let labels = |grpc_status_code| ResponseLabels {
            answer: self.labels.clone(),
            classification,
            grpc_status_code,
        };
        let Some(code) = grpc_status.0 else {
            let index = match classification {
                Classification::success => 0,
                Classification::failure => 1,
                Classification::client_error => 2,
                Classification::cancelled => 3,
            };
            let counter = self.by_class[index]
                .get_or_init(|| self.responses.get_or_create(&labels(GrpcStatus(None))).clone());
            counter.inc();
            return;
        };
        let mut known = self.by_grpc_status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((.., counter)) =
            known.iter().find(|(class, seen, _)| *class == classification && *seen == code)
        {
            counter.inc();
            return;
        }
        let counter = self.responses.get_or_create(&labels(grpc_status)).clone();
        counter.inc();
        known.push((classification, code, counter));
    }
}

/// Distinct (status, endpoint) answers remembered per label set, found without the family's
/// lock: a route to 10 pods that answer 200 and 503 has 20. Beyond, the family finds the rest.
const REMEMBERED_ANSWERS: usize = 32;

/// Distinct endpoints remembered per label set for request_total; beyond, the family finds them.
const REMEMBERED_ENDPOINTS: usize = 16;

impl RequestMetrics {
    /// An outbound request, to count in request_total when it is answered.
    pub fn count_when_answered(&self) -> UncountedRequest<'_> {
        UncountedRequest { metrics: self, counted: false }
    }

    /// Counts a request in request_total under the endpoint that answered it.
    fn count_request(&self, answerer: &Answerer) {
        if answerer.server_id.as_str().is_empty() && answerer.pod == DstPod::default() {
            self.requests.inc();
            return;
        }
        let answers = &self.answers;
        let mut remembered =
            answers.remembered_requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, counter)) = remembered.iter().find(|(seen, _)| seen == answerer) {
            counter.inc();
            return;
        }
        let counter =
            answers.requests.get_or_create(&RequestTotalLabels::new(&answers.labels, answerer)).clone();
        counter.inc();
        if remembered.len() < REMEMBERED_ENDPOINTS {
            remembered.push((answerer.clone(), counter));
        }
    }

    /// Counts an answer now: its latency is `elapsed`, its class final.
    pub fn answered(
        &self,
        status_code: u16,
        classification: Classification,
        grpc_status: GrpcStatus,
        answerer: &Answerer,
        elapsed: Duration,
    ) {
        let series = self.answers.series(status_code, answerer);
        series.latency.observe(millis(elapsed));
        series.count(classification, grpc_status);
    }

    /// An answer to count when its body has ended (`ProxyBody::count_at_end`), its latency
    /// at the body's first byte: a reference count, no allocation once the answer is known.
    pub fn pending(
        &self,
        status_code: u16,
        classification: Classification,
        grpc_status: GrpcStatus,
        answerer: &Answerer,
        started: Instant,
    ) -> PendingResponse {
        PendingResponse {
            series: self.answers.series(status_code, answerer),
            classification,
            grpc_status,
            started: Some(started),
        }
    }
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

impl AnswerSeries {
    fn series(&self, status_code: u16, answerer: &Answerer) -> Arc<StatusSeries> {
        let Answerer { server_id, pod } = answerer;
        let mut remembered = self.remembered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(series) = remembered.iter().find(|series| {
            series.labels.status_code == status_code
                && series.labels.server_id == *server_id
                && series.labels.dst == *pod
        }) {
            return series.clone();
        }
        let labels = &self.labels;
        let tls = answered_tls(labels, server_id);
        let answer = AnswerLabels {
            direction: labels.direction,
            authority: labels.authority.clone(),
            target_addr: labels.target_addr.clone(),
            dst_service: labels.dst_service.clone(),
            route: labels.route.clone(),
            client_id: labels.client_id.clone(),
            server_id: server_id.clone(),
            dst: pod.clone(),
            tls,
            status_code,
        };
        let series = Arc::new(StatusSeries {
            latency: self.latency.get_or_create(&answer).clone(),
            labels: answer,
            responses: self.responses.clone(),
            by_class: Default::default(),
            by_grpc_status: Mutex::default(),
        });
        if remembered.len() < REMEMBERED_ANSWERS {
            remembered.push(series.clone());
        }
        series
    }
}

/// An answer whose response_total entry waits for the end of its body, and whose latency waits
/// for the body's first byte.
pub struct PendingResponse {
    series: Arc<StatusSeries>,
    classification: Classification,
    /// From a trailers-only answer's headers, until trailers say otherwise.
    grpc_status: GrpcStatus,
    /// When the request came; taken when its latency is observed.
    started: Option<Instant>,
}

impl PendingResponse {
    /// The first byte of the body is here: the latency Linkerd reports (time to first byte).
    pub fn first_byte(&mut self) {
        if let Some(started) = self.started.take() {
            self.series.latency.observe(millis(started.elapsed()));
        }
    }

    /// The status gRPC trailers carried.
    pub fn trailers(&mut self, grpc_status: GrpcStatus) {
        if grpc_status.0.is_some() {
            self.grpc_status = grpc_status;
        }
    }

    pub fn finish(mut self, end: End) {
        let classification = match end {
            End::Complete => self.classification,
            End::Failed => Classification::failure,
            End::Cancelled => Classification::cancelled,
        };
        // A body with no data ends at its first byte; one the client gave up on before any
        // byte has no latency to tell.
        if end != End::Cancelled {
            self.first_byte();
        }
        self.series.count(classification, self.grpc_status);
    }
}

impl Metrics {
    pub fn request_metrics(&self, labels: &RequestLabels) -> RequestMetrics {
        RequestMetrics {
            requests: self
                .requests
                .get_or_create(&RequestTotalLabels::new(labels, &Answerer::nobody()))
                .clone(),
            answers: Arc::new(AnswerSeries {
                requests: self.requests.clone(),
                responses: self.responses.clone(),
                latency: self.latency.clone(),
                labels: labels.clone(),
                remembered: Mutex::default(),
                remembered_requests: Mutex::default(),
            }),
        }
    }

    /// The series of one backend of a destination (created on first use).
    pub fn backend_metrics(&self, dst_service: &Label, backend: &Label) -> BackendMetrics {
        let labels = BackendLabels { dst_service: dst_service.clone(), backend: backend.clone() };
        let mut backends = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        backends
            .entry(labels.clone())
            .or_insert_with(|| BackendMetrics {
                requests: self.backend_requests.get_or_create(&labels).clone(),
                failures: self.backend_failures.get_or_create(&labels).clone(),
                latency: self.backend_latency.get_or_create(&labels).clone(),
            })
            .clone()
    }

    /// Every backend with series: (destination, backend, series).
    pub fn backends(&self) -> Vec<(BackendLabels, BackendMetrics)> {
        let backends = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        backends.iter().map(|(labels, metrics)| (labels.clone(), metrics.clone())).collect()
    }

    /// The teardown counter of the HTTP/2 connections of one direction and peer.
    pub fn teardowns(&self, direction: Direction, peer: Peer) -> Teardowns {
        Teardowns { family: self.teardowns.clone(), direction, peer }
    }

    /// The counters an exporter of spans counts in.
    pub fn span_counters(&self) -> crate::spans::SpanCounters {
        let counter = |result| self.trace_spans.get_or_create(&SpanLabels { result }).clone();
        crate::spans::SpanCounters {
            exported: counter(SpanResult::exported),
            dropped: counter(SpanResult::dropped),
            failed: counter(SpanResult::failed),
        }
    }

    /// The byte counters of one client connection: (read, written).
    pub fn tcp_bytes(&self, labels: &TcpLabels) -> (Counter, Counter) {
        (
            self.tcp_read_bytes.get_or_create(labels).clone(),
            self.tcp_write_bytes.get_or_create(labels).clone(),
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::config::{EndpointPod, Workload, WorkloadKind};

    fn outbound() -> RequestLabels {
        RequestLabels {
            direction: Direction::outbound,
            authority: Label::new("reviews.shop.svc.cluster.local:80"),
            target_addr: TargetAddr::none(),
            dst_service: Label::new("reviews.shop.svc.cluster.local:80"),
            route: Label::new("default"),
            client_id: Label::empty(),
            tls: Tls::NotYetKnown,
        }
    }

    /// The lines of `text` for `metric` (samples, no comments).
    fn samples<'t>(text: &'t str, metric: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|line| line.starts_with(metric) && line[metric.len()..].starts_with('{'))
            .collect()
    }

    #[test]
    fn inbound_series_carry_linkerds_target_and_tls_labels() {
        let metrics = Metrics::new();
        let inbound = |addr: &str, tls| RequestLabels {
            direction: Direction::inbound,
            authority: Label::new(addr),
            target_addr: TargetAddr::new(addr.parse().unwrap()),
            dst_service: Label::empty(),
            route: Label::empty(),
            client_id: Label::empty(),
            tls,
        };
        metrics.request_metrics(&inbound("10.244.0.7:8080", Tls::inbound(false))).requests.inc();
        metrics.request_metrics(&inbound("[fd00::7]:9090", Tls::inbound(true))).requests.inc();
        metrics.request_metrics(&outbound()).requests.inc();
        let text = metrics.encode();
        let requests = samples(&text, "request_total");
        let plaintext = requests.iter().find(|line| line.contains("10.244.0.7")).unwrap();
        for label in [
            r#"target_addr="10.244.0.7:8080""#,
            r#"target_ip="10.244.0.7""#,
            r#"target_port="8080""#,
            r#"tls="no_identity""#,
            r#"no_tls_reason="no_tls_from_remote""#,
        ] {
            assert!(plaintext.contains(label), "{label} missing: {plaintext}");
        }
        let mutual = requests.iter().find(|line| line.contains("fd00::7")).unwrap();
        for label in [r#"target_addr="[fd00::7]:9090""#, r#"target_ip="fd00::7""#, r#"target_port="9090""#] {
            assert!(mutual.contains(label), "{label} missing: {mutual}");
        }
        assert!(mutual.contains(r#"tls="true""#) && !mutual.contains("no_tls_reason"), "{mutual}");
        // An outbound request no endpoint answered: no target, no endpoint, no identity.
        let outbound = requests.iter().find(|line| line.contains(r#"direction="outbound""#)).unwrap();
        assert!(!outbound.contains("target_") && !outbound.contains("dst_pod"), "{outbound}");
        assert!(outbound.contains(r#"no_tls_reason="not_provided_by_service_discovery""#), "{outbound}");
    }

    #[test]
    fn an_answer_names_the_pod_behind_its_endpoint_as_linkerd_does() {
        let metrics = Metrics::new();
        let route = metrics.request_metrics(&outbound());
        let pod = EndpointPod {
            namespace: "shop".into(),
            name: "reviews-v2-7d9f-x2x".into(),
            service_account: "reviews".into(),
            workload: Some(Workload { kind: WorkloadKind::Deployment, name: "reviews-v2".into() }),
            pod_template_hash: "7d9f".into(),
        };
        let endpoint = Answerer {
            server_id: Label::new("spiffe://cluster.local/ns/shop/sa/reviews"),
            pod: DstPod::new(Some(&pod)),
        };
        let statefulset = Answerer {
            server_id: Label::empty(),
            pod: DstPod::new(Some(&EndpointPod {
                namespace: "shop".into(),
                name: "db-0".into(),
                workload: Some(Workload { kind: WorkloadKind::StatefulSet, name: "db".into() }),
                ..EndpointPod::default()
            })),
        };
        for answerer in [&endpoint, &endpoint, &statefulset, &Answerer::nobody()] {
            route.answered(
                200,
                Classification::success,
                GrpcStatus(None),
                answerer,
                Duration::from_millis(3),
            );
        }
        let text = metrics.encode();
        let responses = samples(&text, "response_total");
        assert_eq!(
            responses.len(),
            3,
            "one series per pod that answered, one for the proxy's own: {responses:#?}"
        );
        let reviews = responses.iter().find(|line| line.contains("dst_pod=\"reviews-v2-7d9f-x2x\"")).unwrap();
        for label in [
            "dst_namespace=\"shop\"",
            "dst_serviceaccount=\"reviews\"",
            "dst_deployment=\"reviews-v2\"",
            "dst_pod_template_hash=\"7d9f\"",
            "server_id=\"spiffe://cluster.local/ns/shop/sa/reviews\"",
            "tls=\"true\"",
        ] {
            assert!(reviews.contains(label), "{label} in {reviews}");
        }
        assert!(reviews.ends_with(" 2"), "both answers of that pod in one series: {reviews}");
        let db = responses.iter().find(|line| line.contains("dst_pod=\"db-0\"")).unwrap();
        assert!(db.contains("dst_statefulset=\"db\"") && !db.contains("dst_serviceaccount"), "{db}");
        let own = responses.iter().find(|line| !line.contains("dst_pod")).unwrap();
        assert!(own.ends_with(" 1"), "{own}");
        // The latency histogram carries the same labels.
        let buckets = samples(&text, "response_latency_ms_bucket");
        assert!(buckets.iter().any(|line| line.contains("dst_deployment=\"reviews-v2\"")), "{buckets:#?}");

        // request_total counts each request once, under the endpoint that answered it, or under
        // none when the proxy answered itself or the client gave up.
        for answerer in [&endpoint, &endpoint, &statefulset] {
            route.count_when_answered().answered_by(answerer);
        }
        drop(route.count_when_answered());
        let text = metrics.encode();
        let requests = samples(&text, "request_total");
        assert_eq!(requests.len(), 3, "{requests:#?}");
        let reviews = requests.iter().find(|line| line.contains("dst_deployment=\"reviews-v2\"")).unwrap();
        assert!(reviews.contains("tls=\"true\"") && reviews.contains("server_id=\"spiffe://"), "{reviews}");
        assert!(reviews.ends_with(" 2"), "{reviews}");
        let db = requests.iter().find(|line| line.contains("dst_statefulset=\"db\"")).unwrap();
        assert!(db.contains("tls=\"no_identity\"") && db.ends_with(" 1"), "{db}");
        let nobody = requests.iter().find(|line| !line.contains("dst_pod")).unwrap();
        assert!(nobody.ends_with(" 1"), "the dropped one: {nobody}");
    }

    #[test]
    fn label_values_from_requests_are_escaped_for_the_text_format() {
        let metrics = Metrics::new();
        let labels = RequestLabels { authority: Label::new("a\"b\\c\nd"), ..outbound() };
        metrics.request_metrics(&labels).answered(
            200,
            Classification::success,
            GrpcStatus(None),
            &Answerer::nobody(),
            Duration::from_millis(1),
        );
        let text = metrics.encode();
        let line = samples(&text, "response_total").into_iter().next().expect("a response_total sample");
        assert!(line.contains(r#"authority="a\"b\\c\nd""#), "{line}");
        assert_eq!(
            text.lines().filter(|line| line.starts_with("d\"")).count(),
            0,
            "no line broken by the value"
        );
    }
}
