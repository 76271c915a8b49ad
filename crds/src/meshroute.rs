//! MeshRoute: how the mesh routes traffic addressed to one Service.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the mesh routes traffic addressed to one Service: ordered rules that match requests and
/// send them to weighted backends, with timeouts, retries, fault injection, mirroring and header
/// edits, and an optional canary that shifts weight step by step while the canary stays healthy.
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a copy-paste slip.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "MeshRoute",
    namespaced,
    shortname = "mr",
    category = "braid",
    status = "MeshRouteStatus",
    doc = "How the mesh routes traffic addressed to one Service.",
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.service",
        description = "The Service whose traffic this route governs"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".spec.canary.canary",
        description = "The canary backend Service, when the route has a canary"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canary.weight",
        description = "Percent of the canary rule's traffic the proxies send to the canary now"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.canary.phase",
        description = "Waiting, Progressing, Paused, Promoted or RolledBack"
    ),
    printcolumn(
        name = "Success",
        type_ = "string",
        json_path = ".status.canary.canaryMetrics.successRate",
        description = "The canary's success rate in the last check"
    ),
    printcolumn(
        name = "P99",
        type_ = "string",
        json_path = ".status.canary.canaryMetrics.p99",
        description = "The canary's p99 latency in the last check"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "string",
        json_path = ".status.proxies",
        description = "Proxies running this generation / proxies that route to the Service"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the route is valid",
        priority = 1
    ),
    printcolumn(
        name = "Resolved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ResolvedRefs\")].status",
        description = "Whether every referenced Service exists",
        priority = 1
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status",
        description = "Whether the proxies run this generation",
        priority = 1
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"CanaryHealthy\")].status",
        description = "Whether the canary passed its last check",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.status!=\"True\")].reason",
        description = "Why a condition is not True",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.canary.message",
        description = "What the rollout is doing, in words",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshRouteSpec {
    /// Name of the Service, in the route's namespace, whose traffic this route governs.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: String,

    /// Port of the Service this route applies to; all of the Service's ports when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Rules in order; the first rule whose matches fit a request routes it. A request that no
    /// rule matches goes to the Service as if there were no route.
    #[schemars(length(min = 1, max = 32))]
    pub rules: Vec<RouteRule>,

    /// How every client's proxy chooses among the Service's endpoints, and when it ejects one.
    /// Applies to the whole port; when several MeshRoutes of the port set it, the oldest's holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,

    /// Limits on what each client pod has in flight to the Service port; over them requests get
    /// 503 at once instead of queueing. When several MeshRoutes of the port set it, the oldest's
    /// holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,

    /// Progressive delivery: shift traffic from the stable to the canary backend in steps while
    /// the canary meets its success-rate and latency thresholds, and roll back when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// One routing rule: which requests it matches and where they go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Name of the rule, used as the `route` label in proxy metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: Option<String>,

    /// Conditions a request must meet; the rule applies when any one match fits (OR), and every
    /// field within a match must fit (AND). No matches means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,

    /// Where matching requests go, split by weight.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.exists(b, b.weight > 0)",
         "message": "at least one backend needs a weight above 0"}
    ]))]
    pub backends: Vec<Backend>,

    /// Total time allowed for a request, retries included, like "5s"; the proxy answers 504
    /// when it runs out. No timeout when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub timeout: Option<String>,

    /// Retry failed requests. Off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,

    /// Inject delays and errors into a share of requests, to test how clients cope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,

    /// Send a copy of a share of requests to another Service; its answers are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,

    /// Edits to request headers before they are forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,

    /// Edits to response headers before they reach the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,

    /// Limit the rule's requests from each client pod: a token bucket in every client's proxy.
    /// Requests over it get 429 with `retry-after`, and never reach the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Conditions on a request; every field given must fit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Match on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,

    /// Match on the HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,

    /// Match on request headers; all must fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,

    /// Match on query parameters; all must fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// A condition on the request path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'RegularExpression' || self.value.startsWith('/')",
     "message": "an Exact or PathPrefix path must start with '/'"}
]))]
pub struct PathMatch {
    /// How `value` is compared with the path: Exact, PathPrefix (whole segments: "/v1" matches
    /// "/v1" and "/v1/users" but not "/v10"), or RegularExpression (RE2 syntax, whole path).
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,

    /// The path, prefix or regular expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a path is compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PathMatchType {
    /// The path equals the value.
    Exact,
    /// The path starts with the value, on a segment boundary.
    #[default]
    PathPrefix,
    /// The whole path matches the regular expression.
    RegularExpression,
}

/// An HTTP method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

/// How a header or query value is compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ValueMatchType {
    /// The value equals the given one.
    #[default]
    Exact,
    /// The whole value matches the regular expression (RE2 syntax).
    RegularExpression,
}

/// A condition on one request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, compared case-insensitively.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,
    /// Exact (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub match_type: ValueMatchType,
    /// The value, or the regular expression.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A condition on one query parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// Parameter name, compared exactly.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Exact (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub match_type: ValueMatchType,
    /// The value, or the regular expression.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// A destination for requests: another Service, or a subset of the target Service's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.service) != has(self.subset)",
     "message": "a backend names either a service or a subset of the target's pods, exactly one of them"}
]))]
pub struct Backend {
    /// Name of a Service in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: Option<String>,

    /// Labels that pick a subset of the target Service's pods, like {"version": "v2"}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1))]
    pub subset: Option<BTreeMap<String, String>>,

    /// Port on the backend Service; the port the request was sent to when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Relative share of requests: a backend gets weight / (sum of weights). 0 sends it nothing.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

/// When and how often to retry a failed request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total number of tries, the first one included: 3 means one request and up to two retries.
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,

    /// Time allowed for each try, like "2s"; bounded by the rule's total timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub per_try_timeout: Option<String>,

    /// Which failures are retried. Defaults to gateway-error and connect-failure, which are safe
    /// for any method: the request did not reach the application or was refused before it.
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1, max = 8))]
    pub retry_on: Vec<RetryOn>,

    /// Limit on this rule's retries so that they cannot multiply an outage, counted over the
    /// rule's own requests. Rules without one share the Service's budget: 20% of requests plus
    /// 10 per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::GatewayError, RetryOn::ConnectFailure]
}

/// A class of failure that may be retried.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 and 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection to the backend could not be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The backend reset the connection or stream before answering.
    #[serde(rename = "reset")]
    Reset,
    /// A gRPC answer without a body whose grpc-status is CANCELLED.
    #[serde(rename = "cancelled")]
    Cancelled,
    /// ... DEADLINE_EXCEEDED.
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    /// ... RESOURCE_EXHAUSTED.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    /// ... UNAVAILABLE.
    #[serde(rename = "unavailable")]
    Unavailable,
}

/// A cap on retries relative to ordinary requests, as in Linkerd.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed, as a percentage of requests over the last 10 seconds.
    #[serde(default = "default_retry_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,

    /// Retries always allowed per second, whatever the percentage says.
    #[serde(default = "default_min_retries_per_second")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_retries_per_second: i32,
}

fn default_retry_percent() -> i32 {
    20
}

fn default_min_retries_per_second() -> i32 {
    10
}

/// Faults injected into a share of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.delay) || has(self.abort)", "message": "a fault needs a delay, an abort, or both"}
]))]
pub struct FaultInjection {
    /// Delay a share of requests before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay injected into a share of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long to wait, like "500ms".
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub duration: String,
    /// Percentage of requests delayed.
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
}

/// An error answered to a share of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// HTTP status answered, 400 to 599.
    #[schemars(range(min = 400, max = 599))]
    pub status: i32,
    /// Percentage of requests aborted.
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
}

/// Where to send copies of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Name of a Service in the route's namespace that receives the copies.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: String,
    /// Port on that Service; the port the request was sent to when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Percentage of requests copied.
    #[serde(default = "default_mirror_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
}

fn default_mirror_percent() -> i32 {
    100
}

/// Limits per client pod for a Service port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.maxPendingRequests) || has(self.maxConnections)",
     "message": "maxPendingRequests is how many requests wait for a connection under maxConnections: set maxConnections too"}
]))]
pub struct ConnectionPool {
    /// Requests in flight from one client pod (until their response headers, retries
    /// included); more are answered 503 with `braid-proxy-error: overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_requests: Option<i32>,
    /// Requests one upstream connection carries before the client's proxy closes it (after its
    /// last answer) and opens another, so that long-lived clients spread over new endpoints
    /// (Envoy's max_requests_per_connection; 1 turns keep-alive off). Between two proxies it
    /// counts the streams of their HTTP/2 connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_requests_per_connection: Option<i32>,
    /// HTTP/1.1 and opaque TCP connections one client pod opens to each endpoint (Istio's
    /// tcp.maxConnections); a request that finds them all busy waits for one. Between two
    /// proxies every request to an endpoint shares one HTTP/2 connection, so there it is
    /// maxRequests that bounds what is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: Option<i32>,
    /// Requests that may wait for one of the maxConnections connections, per endpoint (Istio's
    /// http.http1MaxPendingRequests; 1024 when not given); more are answered 503 with
    /// `braid-proxy-error: overloaded` at once. Needs maxConnections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_pending_requests: Option<i32>,
}

/// Endpoint choice and outlier ejection for a Service port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// EWMA (the default: power of two choices over latency times outstanding requests),
    /// LeastRequest (power of two choices over outstanding requests), or RoundRobin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<LoadBalancerAlgorithm>,
    /// Session affinity: requests with the same key go to the same endpoint while it is
    /// available; when endpoints come and go only their keys move. Requests without the key
    /// are balanced by `algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// When an endpoint is taken out of the balancing for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// How endpoints are picked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LoadBalancerAlgorithm {
    #[serde(rename = "EWMA")]
    Ewma,
    LeastRequest,
    RoundRobin,
}

/// Where the session-affinity key comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'SourceIP' ? !has(self.name) : has(self.name)",
     "message": "a Header or Cookie key needs a name; a SourceIP key has none"}
]))]
pub struct HashOn {
    /// Header (a request header's value), Cookie (a cookie's value) or SourceIP (the client
    /// pod's address).
    #[serde(rename = "type")]
    pub key_type: HashOnType,
    /// The header's or cookie's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub name: Option<String>,
}

/// The kinds of session-affinity key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HashOnType {
    Header,
    Cookie,
    #[serde(rename = "SourceIP")]
    SourceIp,
}

/// Ejection after consecutive failures (5xx answers or connection errors), for a time that
/// doubles each time the endpoint is ejected again.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint; 0 turns ejection off. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// The first ejection's length, like "30s" (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub base_ejection_time: Option<String>,
    /// The longest an ejection lasts, like "5m" (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub max_ejection_time: Option<String>,
    /// At most this percentage of the Service's endpoints is ejected at once (one always may
    /// be). Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejected_percent: Option<i32>,
}

/// A token bucket: a sustained rate, and a burst the bucket holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second each client pod may send on this rule, sustained.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_second: i32,
    /// Requests a client pod may send at once after a quiet spell; `requestsPerSecond` when
    /// omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<i32>,
}

/// Edits to a set of HTTP headers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers to set, replacing any value present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HeaderValue>,
    /// Headers to add, keeping any value present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HeaderValue>,
    /// Names of headers to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HeaderValue {
    /// Header name.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A metric-gated canary between two backend Services of this route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.stable != self.canary", "message": "stable and canary must be different Services"},
    {"rule": "self.steps.isSorted() && self.steps.all(s, self.steps.filter(t, t == s).size() == 1)",
     "message": "steps must increase, like [10, 25, 50]", "fieldPath": ".steps"}
]))]
pub struct Canary {
    /// The Service that serves production traffic now.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub stable: String,

    /// The Service with the new version.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub canary: String,

    /// Canary weights to move through, in percent and increasing, like [10, 25, 50]; after the
    /// last step the canary is promoted to 100.
    #[schemars(length(min = 1, max = 20))]
    #[schemars(inner(range(min = 1, max = 100)))]
    pub steps: Vec<i32>,

    /// Time spent at each step before the metrics are judged, like "1m".
    #[serde(default = "default_canary_interval")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub interval: String,

    /// Lowest success rate of the canary, in percent, that lets it advance.
    #[serde(default = "default_min_success_rate")]
    #[schemars(range(min = 0, max = 100))]
    pub min_success_rate: i32,

    /// Highest p99 latency of the canary, in milliseconds, that lets it advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub max_latency_ms: Option<i32>,

    /// Failed checks in a row that roll the canary back.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,

    /// Requests to the canary an interval needs before it is judged; an interval with fewer is
    /// neither a pass nor a failure, and the rollout waits at its step.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: i32,
}

fn default_min_requests() -> i32 {
    20
}

fn default_canary_interval() -> String {
    "1m".to_owned()
}

fn default_min_success_rate() -> i32 {
    99
}

fn default_failure_threshold() -> i32 {
    3
}

/// What the operator observed about a MeshRoute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshRouteStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Accepted (the spec is valid), ResolvedRefs (every referenced Service exists) and
    /// Programmed (the proxies run this generation).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Proxies running this generation over proxies routing to the Service, like "12/12".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<String>,

    /// The canary's rollout, when the route has a canary: where it is and what the last check
    /// measured. The rollout's whole state lives here, so an operator that restarts or takes
    /// over the lead carries on from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Where a canary rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CanaryPhase {
    /// At a step, but the last interval had fewer than minRequests to the canary to judge.
    #[default]
    Waiting,
    /// At a step, checked every interval, moving to the next step while the checks pass.
    Progressing,
    /// Held at its weight by the braid.dev/canary annotation; no checks run.
    Paused,
    /// Passed every step (or was promoted by hand): the canary takes all of the rule's traffic.
    Promoted,
    /// Failed failureThreshold checks in a row (or was aborted by hand): the canary gets nothing.
    RolledBack,
}

impl CanaryPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::Progressing => "Progressing",
            Self::Paused => "Paused",
            Self::Promoted => "Promoted",
            Self::RolledBack => "RolledBack",
        }
    }

    /// Promoted and RolledBack end a run: it stays so until the canary block changes.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Promoted | Self::RolledBack)
    }
}

/// The state of a canary rollout and what its last check measured.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Waiting, Progressing, Paused, Promoted or RolledBack.
    pub phase: CanaryPhase,
    /// Which canary block this run is for (a digest of spec.canary and the canary's backend):
    /// when the spec changes, a new run starts.
    pub revision: String,
    /// The current step, from 1 to the number of steps.
    pub step: i32,
    /// The canary's effective weight in percent: what the proxies use, whatever the spec's
    /// static weights say. The stable backend gets the rest.
    pub weight: i32,
    /// Failed checks in a row; failureThreshold of them roll the canary back.
    pub failed_checks: i32,
    /// When the rollout last moved to a new step or was last checked; the next check is one
    /// interval later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The canary backend in the last judged interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_metrics: Option<BackendMetrics>,
    /// The stable backend in the same interval, for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_metrics: Option<BackendMetrics>,
    /// The braid.dev/canary annotation value last acted on in this run (promote and abort act
    /// once per run, when the annotation takes that value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<String>,
    /// What the rollout is doing, in words.
    #[serde(default)]
    pub message: String,
}

/// What the proxies measured for one backend over one interval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendMetrics {
    /// Requests (tries) sent to the backend.
    pub requests: i64,
    /// Share of them that did not fail (no 5xx, gRPC OK, an answer came), like "99.50%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<String>,
    /// 99th percentile of the time to response headers, like "12ms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<String>,
}
