//! The routing table: a checked `Config` compiled into what the request path reads (compiled
//! regexes, backend indexes, cumulative weights, endpoints with their pools). Built whole on
//! every reload and swapped atomically; requests in flight keep the table they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use braid_api::config::{
    Config, FaultConfig, HeaderEditsConfig, HeaderValueConfig, HeaderValueMatch, LoadBalancerConfig,
    PathMatch, Protocol, RetryOn, ServiceConfig,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use tower::retry::budget::TpsBudget;
use tracing::info;

use crate::balance::Endpoint;
use crate::identity::IdentityStore;
use crate::metrics::{BackendMetrics, DstPod, Label, RequestMetrics, Teardowns};
use crate::outbound::egress::Egress;
use crate::outbound::rate_limit::RateLimiter;
use crate::spans::{ProxyResource, SpanCounters, Tracer};

pub struct Table {
    pub config: Arc<Config>,
    services: Vec<Arc<Service>>,
    by_name: HashMap<Arc<str>, usize>,
    by_host: HashMap<String, usize>,
    by_address: HashMap<SocketAddr, usize>,
}

pub struct Service {
    pub name: Label,
    pub protocol: Protocol,
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    pub load_balancer: LoadBalancerConfig,
    pub budget: TpsBudget,
    /// Requests in flight to the service (`maxRequests`); shared with the service of the same
    /// name in the next table, so a reload does not forget the requests under way.
    pub in_flight: Arc<AtomicU32>,
    pub max_requests: Option<u32>,
    /// A destination outside the cluster: its external services (no backends or routes).
    pub egress: Option<Arc<Egress>>,
}

/// Whether a request may go on to the service.
pub enum Admission {
    Unlimited,
    /// Counted until the guard, held only for its drop, goes.
    Counted(#[allow(dead_code)] Admitted),
    Refused,
}

/// A request counted in its service's `in_flight` until dropped.
pub struct Admitted(Arc<AtomicU32>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Backend {
    pub name: Label,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Where round robin goes next.
    pub cursor: std::sync::atomic::AtomicUsize,
    /// This backend's series (the canary checks' measurements), looked up on its first try.
    pub metrics: std::sync::OnceLock<BackendMetrics>,
}

pub struct Route {
    pub name: Label,
    matches: Vec<Match>,
    /// Backend indexes with cumulative weights, for one random draw per request.
    backends: Vec<(usize, u64)>,
    total_weight: u64,
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub fault: Option<FaultConfig>,
    pub mirror: Option<(usize, f64)>,
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<braid_api::config::RedirectConfig>,
    pub rewrite: Option<braid_api::config::RewriteConfig>,
    /// Kept across reloads while the route keeps its name and limit, so a reload refills nothing.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The route's own retry budget, when it has one; otherwise the service's applies.
    own_budget: Option<TpsBudget>,
    /// This route's request metrics, looked up on its first request.
    pub metrics: std::sync::OnceLock<RequestMetrics>,
}

pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<RetryOn>,
}

struct Match {
    path: Option<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

/// A route's header edits, names and values checked once: set, then add, then remove.
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(config: &HeaderEditsConfig) -> Result<Self, TableError> {
        let pair = |p: &HeaderValueConfig| {
            Ok((
                HeaderName::from_bytes(p.name.as_bytes()).map_err(|e| TableError(e.to_string()))?,
                HeaderValue::from_str(&p.value).map_err(|e| TableError(e.to_string()))?,
            ))
        };
        Ok(Self {
            set: config.set.iter().map(pair).collect::<Result<_, TableError>>()?,
            add: config.add.iter().map(pair).collect::<Result<_, TableError>>()?,
            remove: config
                .remove
                .iter()
                .map(|name| HeaderName::from_bytes(name.as_bytes()).map_err(|e| TableError(e.to_string())))
                .collect::<Result<_, TableError>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            // Appended to the values there as one comma-separated value, as the Gateway API
            // specifies (`foo` + `bar` is `foo,bar`).
            let mut joined: Vec<u8> = Vec::new();
            for existing in headers.get_all(name) {
                joined.extend_from_slice(existing.as_bytes());
                joined.push(b',');
            }
            if joined.is_empty() {
                headers.insert(name.clone(), value.clone());
            } else {
                joined.extend_from_slice(value.as_bytes());
                // Valid header values joined by a comma are a valid header value.
                if let Ok(joined) = HeaderValue::from_bytes(&joined) {
                    headers.insert(name.clone(), joined);
                }
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// Why a checked configuration still could not be compiled (a bug if it happens: `Config::parse`
/// checks the same things).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TableError(String);

/// The table requests read now (lock-free), and the one road to a new one: `rebuild` compiles
/// a checked configuration against the current table, so endpoints that stay keep their pools and
/// statistics, and swaps it in whole.
pub struct LiveTable {
    current: ArcSwap<Table>,
    identity: Option<Arc<IdentityStore>>,
    /// Where the endpoints' HTTP/2 connections count their ends.
    teardowns: Option<Teardowns>,
    /// The spans' maker under the table's `tracing`; replaced only when that changes, so a
    /// reload keeps the exporter and its connection.
    tracer: ArcSwapOption<Tracer>,
    spans: Option<(ProxyResource, SpanCounters)>,
}

impl LiveTable {
    pub fn new(table: Table, identity: Option<Arc<IdentityStore>>, teardowns: Option<Teardowns>) -> Self {
        let live = Self {
            current: ArcSwap::from_pointee(table),
            identity,
            teardowns,
            tracer: ArcSwapOption::empty(),
            spans: None,
        };
        live.count_teardowns(&live.current.load());
        live
    }

    /// Makes spans when the configuration names a collector, counted in `counters`.
    pub fn with_tracing(mut self, resource: ProxyResource, counters: SpanCounters) -> Self {
        self.spans = Some((resource, counters));
        self.follow_tracing(&self.current.load_full().config);
        self
    }

    fn follow_tracing(&self, config: &Config) {
        let Some((resource, counters)) = &self.spans else { return };
        let current = self.tracer.load();
        if current.as_ref().map(|tracer| &tracer.config) == config.tracing.as_ref() {
            return;
        }
        let tracer =
            config.tracing.clone().and_then(|tracing| Tracer::new(tracing, resource, counters.clone()));
        if let Some(tracer) = &tracer {
            info!(collector = %tracer.config.collector, sampling_percent = tracer.config.sampling_percent, "exporting spans");
        } else if current.is_some() {
            info!("span export is off");
        }
        self.tracer.store(tracer.map(Arc::new));
    }

    /// The spans' maker, when tracing is on (a guard: no reference count touched per request).
    #[inline]
    pub fn tracer(&self) -> Guard<Option<Arc<Tracer>>> {
        self.tracer.load()
    }

    /// Gives the endpoints new in `table` the teardown counter (once per endpoint and table).
    fn count_teardowns(&self, table: &Table) {
        let Some(teardowns) = &self.teardowns else { return };
        let endpoints =
            table.services.iter().flat_map(|service| &service.backends).flat_map(|b| &b.endpoints);
        for endpoint in endpoints {
            endpoint.pool.count_teardowns(|| teardowns.clone());
            // This pod's own endpoint has a second pool, for HTTP/2 requests.
            endpoint.pool_for(http::Version::HTTP_2).count_teardowns(|| teardowns.clone());
        }
    }

    #[inline]
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.current.load()
    }

    #[inline]
    pub fn load_full(&self) -> Arc<Table> {
        self.current.load_full()
    }

    pub fn rebuild(&self, config: Config) -> Result<(), TableError> {
        let current = self.current.load_full();
        let table = Table::build(config, Some(&current), self.identity.as_ref())?;
        self.count_teardowns(&table);
        self.follow_tracing(&table.config);
        self.current.store(Arc::new(table));
        Ok(())
    }
}

impl Table {
    /// Compiles `config`, reusing the endpoints of `previous` that are still there, so their
    /// connection pools and latency statistics survive a reload.
    pub fn build(
        config: Config,
        previous: Option<&Table>,
        identity: Option<&Arc<IdentityStore>>,
    ) -> Result<Self, TableError> {
        let mut reusable: HashMap<EndpointKey, Arc<Endpoint>> = HashMap::new();
        let mut limiters: HashMap<(String, String), Arc<RateLimiter>> = HashMap::new();
        let mut in_flight: HashMap<String, Arc<AtomicU32>> = HashMap::new();
        if let Some(previous) = previous {
            for service in &previous.services {
                for backend in &service.backends {
                    for endpoint in &backend.endpoints {
                        let key = (
                            service.name.as_str().to_owned(),
                            endpoint.addr,
                            endpoint.meshed || endpoint.is_local(),
                            endpoint.identity.as_str().to_owned(),
                        );
                        reusable.insert(key, endpoint.clone());
                    }
                }
                in_flight.insert(service.name.as_str().to_owned(), service.in_flight.clone());
                for route in &service.routes {
                    if let Some(limiter) = &route.rate_limit {
                        let key = (service.name.as_str().to_owned(), route.name.as_str().to_owned());
                        limiters.insert(key, limiter.clone());
                    }
                }
            }
        }
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_name = HashMap::new();
        let mut by_host = HashMap::new();
        let mut by_address = HashMap::new();
        for (index, service) in config.services.iter().enumerate() {
            let compiled =
                compile_service(service, &reusable, &limiters, in_flight.get(&service.name), identity)?;
            by_name.insert(compiled.name.arc(), index);
            by_host.insert(service.name.to_ascii_lowercase(), index);
            for host in &service.hosts {
                by_host.insert(host.to_ascii_lowercase(), index);
            }
            for address in &service.addresses {
                by_address.insert(*address, index);
            }
            services.push(Arc::new(compiled));
        }
        Ok(Self { config: Arc::new(config), services, by_name, by_host, by_address })
    }

    pub fn empty() -> Self {
        Self {
            config: Arc::new(Config::empty()),
            services: Vec::new(),
            by_name: HashMap::new(),
            by_host: HashMap::new(),
            by_address: HashMap::new(),
        }
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).map(|&index| &self.services[index])
    }

    pub fn service_by_address(&self, address: SocketAddr) -> Option<&Arc<Service>> {
        self.by_address.get(&address).map(|&index| &self.services[index])
    }

    /// The service a Host / :authority names (the port, if any, is ignored).
    pub fn service_by_host(&self, authority: &str) -> Option<&Arc<Service>> {
        let host = authority_host(authority);
        if let Some(&index) = self.by_host.get(host) {
            return Some(&self.services[index]);
        }
        // Host names are case-insensitive; allocate only for the rare mixed-case one.
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_host.get(&host.to_ascii_lowercase()).map(|&index| &self.services[index]);
        }
        None
    }

    /// The services that have a dedicated listener, with its address.
    pub fn listeners(&self) -> impl Iterator<Item = (SocketAddr, &Arc<Service>)> {
        self.config
            .services
            .iter()
            .zip(&self.services)
            .filter_map(|(config, service)| config.listen.map(|addr| (addr, service)))
    }
}

/// `host:port` or `[v6]:port` or `host` → host.
pub fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

/// What makes an endpoint the same across a reload: service, address, and how it is reached
/// (through a proxy or directly to this pod's app: either way, never plain HTTP to a remote).
type EndpointKey = (String, SocketAddr, bool, String);

fn compile_service(
    service: &ServiceConfig,
    reusable: &HashMap<EndpointKey, Arc<Endpoint>>,
    limiters: &HashMap<(String, String), Arc<RateLimiter>>,
    in_flight: Option<&Arc<AtomicU32>>,
    identity: Option<&Arc<IdentityStore>>,
) -> Result<Service, TableError> {
    let backends: Vec<Backend> = service
        .backends
        .iter()
        .map(|backend| Backend {
            name: Label::new(&backend.name),
            endpoints: backend
                .endpoints
                .iter()
                .map(|endpoint| {
                    let expected = endpoint.identity.as_deref();
                    let key = (
                        service.name.clone(),
                        endpoint.address,
                        endpoint.meshed || endpoint.local,
                        expected.unwrap_or("").to_owned(),
                    );
                    // Another pod behind the same address (reused) is another endpoint.
                    let compiled = reusable
                        .get(&key)
                        .filter(|reused| {
                            reused.is_local() == endpoint.local && reused.pod.is(endpoint.pod.as_ref())
                        })
                        .cloned()
                        .unwrap_or_else(|| {
                            let compiled = if endpoint.local {
                                Endpoint::local(endpoint.address)
                            } else {
                                Endpoint::new(
                                    endpoint.address,
                                    endpoint.meshed,
                                    endpoint.http2,
                                    expected,
                                    identity,
                                )
                            };
                            Arc::new(compiled.with_pod(DstPod::new(endpoint.pod.as_ref())))
                        });
                    // Set on kept endpoints too: a reload may change them.
                    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
                        let pool = compiled.pool_for(version);
                        pool.set_max_requests_per_connection(service.max_requests_per_connection);
                        pool.set_connection_limit(service.max_connections, service.max_pending_requests);
                    }
                    compiled
                })
                .collect(),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            metrics: std::sync::OnceLock::new(),
        })
        .collect();
    let backend_index = |name: &str| {
        service
            .backends
            .iter()
            .position(|backend| backend.name == name)
            .ok_or_else(|| TableError(format!("service {}: no backend named {name:?}", service.name)))
    };
    let mut routes = Vec::with_capacity(service.routes.len());
    for (r, route) in service.routes.iter().enumerate() {
        let mut cumulative = 0u64;
        let mut weighted = Vec::with_capacity(route.backends.len());
        for backend in &route.backends {
            cumulative += u64::from(backend.weight);
            weighted.push((backend_index(&backend.name)?, cumulative));
        }
        let matches = route
            .matches
            .iter()
            .map(|m| {
                Ok(Match {
                    path: match &m.path {
                        None => None,
                        Some(PathMatch::Exact(path)) => Some(PathMatcher::Exact(path.clone())),
                        Some(PathMatch::Prefix(path)) => {
                            Some(PathMatcher::Prefix(path.trim_end_matches('/').to_owned()))
                        }
                        Some(PathMatch::Regex(pattern)) => Some(PathMatcher::Regex(whole(pattern)?)),
                    },
                    method: m
                        .method
                        .as_ref()
                        .map(|method| Method::from_bytes(method.as_bytes()))
                        .transpose()
                        .map_err(|e| TableError(e.to_string()))?,
                    headers: m
                        .headers
                        .iter()
                        .map(|header| {
                            let name = HeaderName::from_bytes(header.name.as_bytes())
                                .map_err(|e| TableError(e.to_string()))?;
                            let value = match &header.value {
                                HeaderValueMatch::Exact(value) => ValueMatcher::Exact(value.clone()),
                                HeaderValueMatch::Regex(pattern) => ValueMatcher::Regex(whole(pattern)?),
                            };
                            Ok((name, value))
                        })
                        .collect::<Result<_, TableError>>()?,
                    query: m
                        .query_params
                        .iter()
                        .map(|query| {
                            let value = match &query.value {
                                HeaderValueMatch::Exact(value) => ValueMatcher::Exact(value.clone()),
                                HeaderValueMatch::Regex(pattern) => ValueMatcher::Regex(whole(pattern)?),
                            };
                            Ok((query.name.clone(), value))
                        })
                        .collect::<Result<_, TableError>>()?,
                })
            })
            .collect::<Result<_, TableError>>()?;
        let name = route.name.clone().unwrap_or_else(|| format!("rule-{r}"));
        let rate_limit = route.rate_limit.as_ref().map(|config| {
            limiters
                .get(&(service.name.clone(), name.clone()))
                .filter(|kept| kept.config() == config)
                .cloned()
                .unwrap_or_else(|| Arc::new(RateLimiter::new(config.clone(), std::time::Instant::now())))
        });
        routes.push(Route {
            name: Label::new(name),
            matches,
            backends: weighted,
            total_weight: cumulative,
            timeout: route.timeout,
            retries: route.retries.as_ref().map(|retries| Retries {
                attempts: retries.attempts,
                per_try_timeout: retries.per_try_timeout,
                retry_on: retries.retry_on.clone(),
            }),
            fault: route.fault.clone(),
            mirror: route
                .mirror
                .as_ref()
                .map(|mirror| Ok::<_, TableError>((backend_index(&mirror.backend)?, mirror.percent)))
                .transpose()?,
            request_headers: route.request_headers.as_ref().map(HeaderEdits::compile).transpose()?,
            response_headers: route.response_headers.as_ref().map(HeaderEdits::compile).transpose()?,
            redirect: route.redirect.clone(),
            rewrite: route.rewrite.clone(),
            rate_limit,
            own_budget: route.retry_budget.as_ref().map(tps_budget),
            metrics: std::sync::OnceLock::new(),
        });
    }
    Ok(Service {
        name: Label::new(&service.name),
        protocol: service.protocol,
        backends,
        routes,
        load_balancer: service.load_balancer.clone(),
        budget: tps_budget(&service.retry_budget),
        in_flight: in_flight.cloned().unwrap_or_default(),
        max_requests: service.max_requests,
        egress: service
            .egress
            .as_ref()
            .map(|egress| Egress::compile(egress).map(Arc::new).map_err(TableError))
            .transpose()?,
    })
}

fn tps_budget(budget: &braid_api::config::RetryBudgetConfig) -> TpsBudget {
    TpsBudget::new(budget.ttl, budget.min_per_second, budget.percent / 100.0)
}

/// Regexes in routes match the whole value, as in Gateway API and Istio.
fn whole(pattern: &str) -> Result<Regex, TableError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| TableError(e.to_string()))
}

impl Service {
    /// The first route that matches the request, in configuration order.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.routes.iter().find(|route| route.matches(method, path, query, headers))
    }

    /// Counts a request in flight, or refuses it when `maxRequests` are; costs nothing when the
    /// service has no `maxRequests`.
    pub fn admit(&self) -> Admission {
        let Some(max) = self.max_requests else { return Admission::Unlimited };
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let counted = Admitted(self.in_flight.clone());
        if before >= max { Admission::Refused } else { Admission::Counted(counted) }
    }

    /// How this service's backends choose endpoints.
    pub fn balancer<'a>(&'a self, backend: &'a Backend) -> crate::balance::Balancer<'a> {
        crate::balance::Balancer { config: &self.load_balancer, cursor: &backend.cursor }
    }

    /// The route opaque TCP connections use: the first one.
    pub fn default_route(&self) -> Option<&Route> {
        self.routes.first()
    }
}

impl Route {
    fn matches(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(method, path, query, headers))
    }

    /// The retry budget this route's retries draw on: its own, or its service's.
    pub fn budget<'a>(&'a self, service: &'a Service) -> &'a TpsBudget {
        self.own_budget.as_ref().unwrap_or(&service.budget)
    }

    /// The backend for one request: a weighted draw.
    pub fn pick_backend(&self) -> usize {
        pick_weighted(&self.backends, self.total_weight, fastrand::u64(..self.total_weight.max(1)))
    }

    /// The backends (indices into the service's) that get a share of the route's traffic, in
    /// the route's order: where a request may go when none of its backend's endpoints can be
    /// reached. A backend at weight 0 (a canary not yet started) is not among them.
    pub fn weighted_backends(&self) -> impl Iterator<Item = usize> + '_ {
        let mut below = 0;
        self.backends.iter().filter_map(move |&(index, cumulative)| {
            let weight = cumulative - below;
            below = cumulative;
            (weight > 0).then_some(index)
        })
    }
}

/// The backend whose cumulative-weight interval holds `draw` (0 <= draw < total).
fn pick_weighted(backends: &[(usize, u64)], total: u64, draw: u64) -> usize {
    debug_assert!(draw < total.max(1));
    let position = backends.partition_point(|&(_, cumulative)| cumulative <= draw);
    backends.get(position).or(backends.last()).map_or(0, |&(index, _)| index)
}

/// The raw value of the first parameter named `name` in query string `query` (`a=1&b`: `b` is
/// ""), without allocating.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

impl Match {
    fn matches(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        if let Some(expected) = &self.method
            && expected != method
        {
            return false;
        }
        let path_matches = match &self.path {
            None => true,
            Some(PathMatcher::Exact(expected)) => path == expected,
            // Whole segments: "/v1" matches "/v1" and "/v1/..." but not "/v10".
            Some(PathMatcher::Prefix(prefix)) => {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Some(PathMatcher::Regex(regex)) => regex.is_match(path),
        };
        path_matches
            && self.headers.iter().all(|(name, matcher)| {
                headers.get_all(name).iter().any(|value| {
                    let Ok(value) = value.to_str() else { return false };
                    match matcher {
                        ValueMatcher::Exact(expected) => value == expected,
                        ValueMatcher::Regex(regex) => regex.is_match(value),
                    }
                })
            })
            && self.query.iter().all(|(name, matcher)| {
                query_param(query, name).is_some_and(|value| match matcher {
                    ValueMatcher::Exact(expected) => value == expected,
                    ValueMatcher::Regex(regex) => regex.is_match(value),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        Table::build(Config::parse(text).unwrap(), None, None).unwrap()
    }

    const ROUTES: &str = r#"
services:
  - name: web.shop.svc.cluster.local
    hosts: [web]
    addresses: ["10.96.0.1:80"]
    backends:
      - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
      - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
    routes:
      - name: exact
        matches: [{ path: { exact: /login } }]
        backends: [{ name: a }]
      - name: prefix
        matches: [{ path: { prefix: /api/ } }]
        backends: [{ name: a }]
      - name: regex
        matches: [{ path: { regex: "/items/[0-9]+" } }]
        backends: [{ name: a }]
      - name: method
        matches: [{ method: DELETE }]
        backends: [{ name: a }]
      - name: header
        matches: [{ headers: [{ name: x-canary, exact: "yes" }] }, { headers: [{ name: x-user, regex: "test-.*" }] }]
        backends: [{ name: b }]
      - name: default
        backends: [{ name: a, weight: 3 }, { name: b, weight: 1 }]
"#;

    fn route_name(
        table: &Table,
        method: Method,
        path: &str,
        headers: &[(&'static str, &'static str)],
    ) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        let service = table.service_by_host("web:8080").unwrap();
        let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
        service.route(&method, path, query, &map).unwrap().name.as_str().to_owned()
    }

    const QUERIES: &str = r#"
services:
  - name: web.shop.svc.cluster.local
    hosts: [web]
    backends: [{ name: a, endpoints: [{ address: "127.0.0.1:1" }] }]
    routes:
      - name: exact
        matches: [{ queryParams: [{ name: animal, exact: whale }, { name: color, exact: blue }] }]
        backends: [{ name: a }]
      - name: regex
        matches: [{ queryParams: [{ name: animal, regex: "d.g" }] }]
        backends: [{ name: a }]
      - name: default
        backends: [{ name: a }]
"#;

    #[test]
    fn routes_by_query_parameters_the_first_of_a_name_counting() {
        let table = table(QUERIES);
        assert_eq!(route_name(&table, Method::GET, "/?animal=whale&color=blue", &[]), "exact");
        assert_eq!(route_name(&table, Method::GET, "/?color=blue&x&animal=whale", &[]), "exact");
        assert_eq!(route_name(&table, Method::GET, "/?animal=whale", &[]), "default", "all must hold");
        assert_eq!(route_name(&table, Method::GET, "/?animal=dog&animal=whale&color=blue", &[]), "regex");
        assert_eq!(route_name(&table, Method::GET, "/?animal=dogs", &[]), "default", "the whole value");
        assert_eq!(
            route_name(&table, Method::GET, "/?Animal=dog", &[]),
            "default",
            "names are case-sensitive"
        );
        assert_eq!(route_name(&table, Method::GET, "/", &[]), "default");
    }

    #[test]
    fn header_edits_set_then_append_then_remove() {
        let pair = |name: &str, value: &str| HeaderValueConfig { name: name.into(), value: value.into() };
        let edits = HeaderEdits::compile(&HeaderEditsConfig {
            set: vec![pair("X-Set", "new")],
            add: vec![pair("x-add", "added"), pair("x-fresh", "1")],
            remove: vec!["X-Remove".into()],
        })
        .expect("valid edits");
        let mut headers = HeaderMap::new();
        headers.append("x-set", HeaderValue::from_static("old"));
        headers.append("x-set", HeaderValue::from_static("older"));
        headers.append("x-add", HeaderValue::from_static("there"));
        headers.append("x-remove", HeaderValue::from_static("gone"));
        headers.append("x-keep", HeaderValue::from_static("kept"));
        edits.apply(&mut headers);
        let all = |name: &str| {
            headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(all("x-set"), ["new"], "set replaces every value");
        assert_eq!(all("x-add"), ["there,added"], "add appends, comma-separated");
        assert_eq!(all("x-fresh"), ["1"]);
        assert!(headers.get("x-remove").is_none());
        assert_eq!(all("x-keep"), ["kept"]);
        let bad = HeaderEditsConfig { set: vec![pair("bad name", "x")], ..HeaderEditsConfig::default() };
        assert!(HeaderEdits::compile(&bad).is_err());
    }

    #[test]
    fn routes_by_each_match_kind_in_order() {
        let table = table(ROUTES);
        assert_eq!(route_name(&table, Method::GET, "/login", &[]), "exact");
        assert_eq!(route_name(&table, Method::GET, "/login/x", &[]), "default");
        assert_eq!(route_name(&table, Method::GET, "/api", &[]), "prefix");
        assert_eq!(route_name(&table, Method::GET, "/api/v1", &[]), "prefix");
        assert_eq!(route_name(&table, Method::GET, "/apiv1", &[]), "default");
        assert_eq!(route_name(&table, Method::GET, "/items/42", &[]), "regex");
        assert_eq!(
            route_name(&table, Method::GET, "/items/42x", &[]),
            "default",
            "regex matches the whole path"
        );
        assert_eq!(route_name(&table, Method::DELETE, "/x", &[]), "method");
        assert_eq!(route_name(&table, Method::GET, "/x", &[("x-canary", "yes")]), "header");
        assert_eq!(route_name(&table, Method::GET, "/x", &[("x-canary", "no")]), "default");
        assert_eq!(route_name(&table, Method::GET, "/x", &[("x-user", "test-7")]), "header");
        assert_eq!(route_name(&table, Method::GET, "/x", &[("x-user", "prod-7")]), "default");
    }

    #[test]
    fn finds_services_by_host_and_address() {
        let table = table(ROUTES);
        assert!(table.service_by_host("WEB.shop.svc.cluster.local").is_some());
        assert!(table.service_by_host("web").is_some());
        assert!(table.service_by_host("other").is_none());
        assert!(table.service_by_address("10.96.0.1:80".parse().unwrap()).is_some());
        assert!(table.service_by_address("10.96.0.1:81".parse().unwrap()).is_none());
        assert_eq!(authority_host("[::1]:80"), "::1");
    }

    #[test]
    fn weighted_draws_follow_the_cumulative_weights() {
        let backends = [(0, 3), (1, 4)];
        assert_eq!(pick_weighted(&backends, 4, 0), 0);
        assert_eq!(pick_weighted(&backends, 4, 2), 0);
        assert_eq!(pick_weighted(&backends, 4, 3), 1);
        // A zero weight is never drawn.
        let backends = [(0, 0), (1, 5), (2, 5)];
        assert!((0..5).all(|draw| pick_weighted(&backends, 5, draw) == 1));
    }

    #[test]
    fn a_reload_keeps_the_endpoints_that_stay() {
        let first = table(ROUTES);
        let second = Table::build(Config::parse(ROUTES).unwrap(), Some(&first), None).unwrap();
        let before = &first.service_by_host("web").unwrap().backends[0].endpoints[0];
        let after = &second.service_by_host("web").unwrap().backends[0].endpoints[0];
        assert!(Arc::ptr_eq(before, after));
    }
}
