//! Istio `networking.istio.io` VirtualService (with the subsets of its DestinationRules) into
//! MeshRoutes: one per host of the VirtualService.

use std::collections::BTreeMap;

use braid_crds::{
    MeshRoute, MeshRouteSpec,
    meshroute::{
        Backend, ConnectionPool, FaultAbort, FaultDelay, FaultInjection, HashOn, HashOnType, HeaderMatch,
        HeaderModifier, HeaderValue, HttpMethod, LoadBalancer, LoadBalancerAlgorithm, Mirror,
        OutlierDetection, PathMatch, PathMatchType, QueryParamMatch, RetryOn, RetryPolicy, RouteMatch,
        RouteRule, ValueMatchType,
    },
};
use serde_json::{Map, Value};

use crate::{
    Body, ConvertError, Converted, Ctx, LeftOut, Source, duration,
    names::{RuleNames, ServiceHost, service_host},
    type_name,
};

/// The DestinationRules of the input, by the (namespace, Service) of their host.
#[derive(Default)]
pub struct DestinationRules {
    pub by_host: BTreeMap<(Option<String>, String), DestinationRule>,
}

pub struct DestinationRule {
    /// Subset name to pod labels.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// What of its `trafficPolicy` a MeshRoute's `loadBalancer` and `connectionPool` can say.
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub left_out: Vec<LeftOut>,
}

impl DestinationRules {
    fn rule(&self, host: &ServiceHost) -> Option<&DestinationRule> {
        self.by_host
            .iter()
            .find(|((ns, name), _)| {
                *name == host.name && same_namespace(ns.as_deref(), host.namespace.as_deref())
            })
            .map(|(_, rule)| rule)
    }

    fn subset(&self, host: &ServiceHost, subset: &str) -> Option<&BTreeMap<String, String>> {
        self.by_host
            .iter()
            .filter(|((ns, name), _)| {
                *name == host.name && same_namespace(ns.as_deref(), host.namespace.as_deref())
            })
            .find_map(|(_, rule)| rule.subsets.get(subset))
    }
}

/// Namespaces match when they are equal or one of them is not said (the object's own).
pub fn same_namespace(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn object_name(kind: &str, value: &Value) -> String {
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<no name>");
    match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn metadata(ctx: &Ctx, value: &Value) -> Result<(String, Option<String>), ConvertError> {
    let name = match value.pointer("/metadata/name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(other) => {
            return Err(ctx.invalid("metadata.name", format!("must be a string, not {}", type_name(other))));
        }
        None => return Err(ctx.invalid("metadata.name", "missing")),
    };
    let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
    Ok((name, namespace))
}

fn string<'a>(ctx: &Ctx, value: &'a Value, field: &str) -> Result<&'a str, ConvertError> {
    value.as_str().ok_or_else(|| ctx.invalid(field, format!("must be a string, not {}", type_name(value))))
}

fn list<'a>(ctx: &Ctx, value: Option<&'a Value>, field: &str) -> Result<&'a [Value], ConvertError> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ctx.invalid(field, format!("must be a list, not {}", type_name(other)))),
    }
}

fn mapping<'a>(ctx: &Ctx, value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ConvertError> {
    value
        .as_object()
        .ok_or_else(|| ctx.invalid(field, format!("must be a mapping, not {}", type_name(value))))
}

/// First pass: the subsets of every DestinationRule, and what their traffic policies lose.
pub fn destination_rules<'a>(
    sources: impl Iterator<Item = &'a Source>,
) -> Result<DestinationRules, ConvertError> {
    let mut rules = DestinationRules::default();
    for source in sources {
        let mut ctx = Ctx::new(source, object_name("DestinationRule", &source.value));
        let (_, namespace) = metadata(&ctx, &source.value)?;
        let spec = mapping(&ctx, source.value.get("spec").unwrap_or(&Value::Null), "spec")?;
        let host =
            string(&ctx, spec.get("host").ok_or_else(|| ctx.invalid("spec.host", "missing"))?, "spec.host")?;
        let host = service_host(host).map_err(|why| ctx.invalid("spec.host", why))?;
        let mut subsets = BTreeMap::new();
        for (i, subset) in list(&ctx, spec.get("subsets"), "spec.subsets")?.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            let subset = mapping(&ctx, subset, &at)?;
            let name = string(&ctx, subset.get("name").unwrap_or(&Value::Null), &format!("{at}.name"))?;
            let mut labels = BTreeMap::new();
            if let Some(given) = subset.get("labels") {
                for (key, value) in mapping(&ctx, given, &format!("{at}.labels"))? {
                    let value = string(&ctx, value, &format!("{at}.labels.{key}"))?;
                    labels.insert(key.clone(), value.to_owned());
                }
            }
            if subset.contains_key("trafficPolicy") {
                ctx.leave_out(
                    format!("{at}.trafficPolicy"),
                    "a MeshRoute's loadBalancer holds for the whole Service port, not for one subset",
                );
            }
            subsets.insert(name.to_owned(), labels);
        }
        let (load_balancer, connection_pool) = match spec.get("trafficPolicy") {
            Some(policy) => traffic_policy(&mut ctx, policy)?,
            None => (None, None),
        };
        for key in spec.keys() {
            match key.as_str() {
                "host" | "subsets" | "trafficPolicy" => {}
                "exportTo" => ctx.leave_out("spec.exportTo", EXPORT_TO),
                "workloadSelector" => ctx.leave_out(
                    "spec.workloadSelector",
                    "a MeshRoute applies to every meshed client of its Service, not to chosen workloads",
                ),
                other => ctx.leave_out(format!("spec.{other}"), "MeshRoute has no equivalent"),
            }
        }
        let namespace = host.namespace.clone().or(namespace);
        rules.by_host.insert(
            (namespace, host.name),
            DestinationRule { subsets, load_balancer, connection_pool, left_out: ctx.left_out },
        );
    }
    Ok(rules)
}

/// A DestinationRule's `trafficPolicy`: its load balancer and outlier detection become a
/// MeshRoute's `loadBalancer`, its HTTP/2 request limit `connectionPool.maxRequests`; the rest is
/// said to be left out.
fn traffic_policy(
    ctx: &mut Ctx,
    policy: &Value,
) -> Result<(Option<LoadBalancer>, Option<ConnectionPool>), ConvertError> {
    let at = "spec.trafficPolicy";
    let policy = mapping(ctx, policy, at)?;
    let mut out = LoadBalancer::default();
    let mut pool = ConnectionPool::default();
    for (key, value) in policy {
        match key.as_str() {
            "loadBalancer" => load_balancer(ctx, &format!("{at}.loadBalancer"), value, &mut out)?,
            "outlierDetection" => {
                out.outlier_detection =
                    Some(outlier_detection(ctx, &format!("{at}.outlierDetection"), value)?);
            }
            "tls" => ctx.leave_out(
                format!("{at}.tls"),
                "Braid always speaks mTLS between meshed pods with the mesh's own certificates",
            ),
            "connectionPool" => connection_pool(ctx, &format!("{at}.connectionPool"), value, &mut pool)?,
            other => ctx.leave_out(format!("{at}.{other}"), "MeshRoute has no equivalent"),
        }
    }
    Ok(((out != LoadBalancer::default()).then_some(out), (pool != ConnectionPool::default()).then_some(pool)))
}

/// `connectionPool.http.http2MaxRequests` (requests in flight, Envoy's max_requests) is
/// `maxRequests`; `tcp.maxConnections`, `http.http1MaxPendingRequests` and
/// `http.maxRequestsPerConnection` are themselves. The rest (timeouts, keepalive, idle timeout,
/// retries per connection) have no equivalent.
fn connection_pool(
    ctx: &mut Ctx,
    at: &str,
    value: &Value,
    pool: &mut ConnectionPool,
) -> Result<(), ConvertError> {
    let number = |ctx: &mut Ctx, field: &str, value: &Value, min: i64| {
        value
            .as_i64()
            .filter(|n| (min..=1_000_000).contains(n))
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ctx.invalid(field, format!("must be a whole number from {min} to 1000000")))
    };
    for (key, value) in mapping(ctx, value, at)? {
        let field = format!("{at}.{key}");
        if key != "http" && key != "tcp" {
            ctx.leave_out(field, "only the http and tcp connection pool settings have equivalents");
            continue;
        }
        for (inner_key, inner_value) in mapping(ctx, value, &field)? {
            let inner_field = format!("{field}.{inner_key}");
            match (key.as_str(), inner_key.as_str()) {
                ("http", "http2MaxRequests") => {
                    pool.max_requests = Some(number(ctx, &inner_field, inner_value, 1)?)
                }
                ("http", "maxRequestsPerConnection") => {
                    pool.max_requests_per_connection = Some(number(ctx, &inner_field, inner_value, 1)?);
                }
                ("http", "http1MaxPendingRequests") => {
                    pool.max_pending_requests = Some(number(ctx, &inner_field, inner_value, 0)?);
                }
                ("tcp", "maxConnections") => {
                    pool.max_connections = Some(number(ctx, &inner_field, inner_value, 1)?)
                }
                _ => ctx.leave_out(
                    inner_field,
                    "only tcp.maxConnections, http.http1MaxPendingRequests, http.http2MaxRequests and \
                     http.maxRequestsPerConnection have equivalents (connectionPool.maxConnections, \
                     maxPendingRequests, maxRequests, maxRequestsPerConnection)",
                ),
            }
        }
    }
    // Istio queues without maxConnections too (its default is unbounded connections); a
    // MeshRoute's queue is for requests waiting for one of maxConnections.
    if pool.max_pending_requests.is_some() && pool.max_connections.is_none() {
        pool.max_pending_requests = None;
        ctx.leave_out(
            format!("{at}.http.http1MaxPendingRequests"),
            "without tcp.maxConnections nothing waits for a connection: set maxConnections to use it",
        );
    }
    Ok(())
}

fn load_balancer(ctx: &mut Ctx, at: &str, value: &Value, out: &mut LoadBalancer) -> Result<(), ConvertError> {
    for (key, value) in mapping(ctx, value, at)? {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "simple" => match string(ctx, value, &field)? {
                "ROUND_ROBIN" => out.algorithm = Some(LoadBalancerAlgorithm::RoundRobin),
                "LEAST_REQUEST" | "LEAST_CONN" => out.algorithm = Some(LoadBalancerAlgorithm::LeastRequest),
                other => ctx.leave_out(
                    field,
                    format!("{other}: MeshRoute balances by EWMA (the default), LeastRequest or RoundRobin"),
                ),
            },
            "consistentHash" => {
                for (hash_key, hash_value) in mapping(ctx, value, &field)? {
                    let hash_field = format!("{field}.{hash_key}");
                    let hash = match hash_key.as_str() {
                        "httpHeaderName" => Some(HashOn {
                            key_type: HashOnType::Header,
                            name: Some(string(ctx, hash_value, &hash_field)?.to_owned()),
                        }),
                        "httpCookie" => {
                            let cookie = mapping(ctx, hash_value, &hash_field)?;
                            let name = string(
                                ctx,
                                cookie.get("name").unwrap_or(&Value::Null),
                                &format!("{hash_field}.name"),
                            )?;
                            if cookie.contains_key("ttl") || cookie.contains_key("path") {
                                ctx.leave_out(
                                    format!("{hash_field}.ttl"),
                                    "Braid hashes on a cookie the application sets; it does not set one itself",
                                );
                            }
                            Some(HashOn { key_type: HashOnType::Cookie, name: Some(name.to_owned()) })
                        }
                        "useSourceIp" if hash_value.as_bool() == Some(true) => {
                            Some(HashOn { key_type: HashOnType::SourceIp, name: None })
                        }
                        _ => {
                            ctx.leave_out(
                                hash_field,
                                "MeshRoute hashes on a header, a cookie or the source IP, with rendezvous hashing",
                            );
                            None
                        }
                    };
                    if hash.is_some() {
                        out.hash_on = hash;
                    }
                }
            }
            _ => ctx.leave_out(field, "MeshRoute has no equivalent"),
        }
    }
    Ok(())
}

fn outlier_detection(ctx: &mut Ctx, at: &str, value: &Value) -> Result<OutlierDetection, ConvertError> {
    let mut out = OutlierDetection::default();
    for (key, value) in mapping(ctx, value, at)? {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "consecutive5xxErrors" | "consecutiveGatewayErrors" | "consecutiveErrors" => {
                let count = value
                    .as_i64()
                    .filter(|n| (0..=1000).contains(n))
                    .ok_or_else(|| ctx.invalid(&field, "must be a whole number from 0 to 1000"))?;
                // Braid counts 5xx answers and connection errors alike: the strictest count wins.
                let count = i32::try_from(count).unwrap_or(1000);
                out.consecutive_failures = Some(out.consecutive_failures.map_or(count, |n| n.min(count)));
            }
            "baseEjectionTime" => {
                let text = string(ctx, value, &field)?;
                let parsed = duration::parse_go(text).map_err(|why| ctx.invalid(&field, why))?;
                let rendered = duration::render(parsed).map_err(|why| ctx.invalid(&field, why))?;
                // Envoy caps ejections at 5 minutes unless told otherwise, as Braid does; a longer
                // base needs the cap raised with it.
                if parsed > std::time::Duration::from_secs(300) {
                    out.max_ejection_time = Some(rendered.clone());
                }
                out.base_ejection_time = Some(rendered);
            }
            "maxEjectionPercent" => {
                let percent = value
                    .as_i64()
                    .filter(|n| (0..=100).contains(n))
                    .ok_or_else(|| ctx.invalid(&field, "must be a whole number from 0 to 100"))?;
                out.max_ejected_percent = i32::try_from(percent).ok();
            }
            "interval" => ctx.leave_out(
                field,
                "Braid ejects at the failure that completes the count, not at a periodic sweep",
            ),
            _ => ctx.leave_out(field, "MeshRoute has no equivalent"),
        }
    }
    Ok(out)
}

const EXPORT_TO: &str = "a MeshRoute applies to every meshed client in the cluster";

/// One VirtualService: a MeshRoute per host it routes.
pub fn virtual_service(
    source: &Source,
    rules: &DestinationRules,
) -> Result<(Vec<Converted>, Vec<LeftOut>), ConvertError> {
    let mut ctx = Ctx::new(source, object_name("VirtualService", &source.value));
    let (name, vs_namespace) = metadata(&ctx, &source.value)?;
    let spec =
        mapping(&ctx, source.value.get("spec").ok_or_else(|| ctx.invalid("spec", "missing"))?, "spec")?;
    let hosts = list(&ctx, spec.get("hosts"), "spec.hosts")?;
    if hosts.is_empty() {
        return Err(ctx.invalid("spec.hosts", "a VirtualService needs at least one host"));
    }
    let mut mesh = true;
    for key in spec.keys() {
        match key.as_str() {
            "hosts" | "http" => {}
            "gateways" => {
                let gateways = list(&ctx, spec.get("gateways"), "spec.gateways")?;
                let mut others = Vec::new();
                for (i, gateway) in gateways.iter().enumerate() {
                    let gateway = string(&ctx, gateway, &format!("spec.gateways[{i}]"))?;
                    if gateway != "mesh" {
                        others.push(gateway.to_owned());
                    }
                }
                mesh = others.len() < gateways.len() || gateways.is_empty();
                if !others.is_empty() {
                    ctx.leave_out(
                        "spec.gateways",
                        format!(
                            "routes of the gateways {others:?}: Braid routes traffic between meshed workloads (the \
                             `mesh` gateway) only; configure the ingress on its own"
                        ),
                    );
                }
            }
            "tcp" => ctx.leave_out(
                "spec.tcp",
                "TCP routes: a MeshRoute routes HTTP; TCP traffic goes to the Service as it is",
            ),
            "tls" => ctx.leave_out(
                "spec.tls",
                "TLS (SNI) routes: a MeshRoute routes HTTP; TLS traffic goes to the Service as it is",
            ),
            "exportTo" => ctx.leave_out("spec.exportTo", EXPORT_TO),
            other => ctx.leave_out(format!("spec.{other}"), "MeshRoute has no equivalent"),
        }
    }
    let http = list(&ctx, spec.get("http"), "spec.http")?;
    if !mesh {
        return Ok((Vec::new(), ctx.left_out));
    }
    if http.is_empty() {
        ctx.leave_out("spec.http", "no HTTP routes, so there is nothing to make a MeshRoute of");
        return Ok((Vec::new(), ctx.left_out));
    }

    let mut targets = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        let host = string(&ctx, host, &field)?;
        match service_host(host) {
            Ok(host) => targets.push(ServiceHost {
                namespace: host.namespace.or_else(|| vs_namespace.clone()),
                name: host.name,
            }),
            Err(why) => ctx.leave_out(field, why),
        }
    }
    let mut out = Vec::new();
    // What the VirtualService as a whole loses heads every MeshRoute; what a rule loses heads
    // the MeshRoute of the host it was converted for.
    let common = std::mem::take(&mut ctx.left_out);
    let mut all = common.clone();
    for target in &targets {
        ctx.left_out = common.clone();
        let mut names = RuleNames::default();
        let mut route_rules = Vec::new();
        for (r, rule) in http.iter().enumerate() {
            if let Some(rule) = http_rule(
                &mut ctx,
                &format!("spec.http[{r}]"),
                rule,
                target,
                &vs_namespace,
                rules,
                &mut names,
            )? {
                route_rules.push(rule);
            }
        }
        if route_rules.is_empty() {
            ctx.leave_out(
                "spec.http",
                format!("no rule for {} could be converted, so no MeshRoute is written for it", target.name),
            );
            merge(&mut all, &ctx.left_out);
            continue;
        }
        if route_rules.len() > 32 {
            ctx.leave_out("spec.http[32:]", "a MeshRoute has at most 32 rules; split the VirtualService");
            route_rules.truncate(32);
        }
        let route_name = if targets.len() == 1 { name.clone() } else { format!("{name}-{}", target.name) };
        let mut route = MeshRoute::new(
            &route_name,
            MeshRouteSpec {
                service: target.name.clone(),
                port: None,
                rules: route_rules,
                canary: None,
                load_balancer: rules.rule(target).and_then(|rule| rule.load_balancer.clone()),
                connection_pool: rules.rule(target).and_then(|rule| rule.connection_pool.clone()),
            },
        );
        route.metadata.namespace.clone_from(&target.namespace);
        merge(&mut all, &ctx.left_out);
        out.push(Converted {
            document: ctx.document,
            object: ctx.object.clone(),
            body: Body::MeshRoute(Box::new(route)),
            left_out: std::mem::take(&mut ctx.left_out),
        });
    }
    Ok((out, all))
}

fn merge(all: &mut Vec<LeftOut>, items: &[LeftOut]) {
    for item in items {
        if !all.contains(item) {
            all.push(item.clone());
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn http_rule(
    ctx: &mut Ctx,
    at: &str,
    rule: &Value,
    target: &ServiceHost,
    vs_namespace: &Option<String>,
    rules: &DestinationRules,
    names: &mut RuleNames,
) -> Result<Option<RouteRule>, ConvertError> {
    let rule = mapping(ctx, rule, at)?;
    let mut out = RouteRule {
        name: None,
        matches: Vec::new(),
        backends: Vec::new(),
        timeout: None,
        retries: None,
        fault: None,
        mirror: None,
        request_headers: None,
        response_headers: None,
        rate_limit: None,
    };
    for key in rule.keys() {
        let why = match key.as_str() {
            "name" | "match" | "route" | "timeout" | "retries" | "fault" | "mirror" | "mirrorPercentage"
            | "mirrorPercent" | "mirror_percent" | "mirrors" | "headers" => continue,
            "rewrite" => {
                "URL rewrites are not in MeshRoute; an HTTPRoute (gateway.networking.k8s.io) with a \
                          URLRewrite filter does them"
                    .to_owned()
            }
            "corsPolicy" => "Braid has no CORS policy; the application must answer CORS itself".to_owned(),
            "redirect" | "directResponse" | "delegate" => continue,
            other => format!("the VirtualService field {other} has no MeshRoute equivalent"),
        };
        ctx.leave_out(format!("{at}.{key}"), why);
    }
    let routes = list(ctx, rule.get("route"), &format!("{at}.route"))?;
    if routes.is_empty() {
        let what = ["redirect", "directResponse", "delegate"].into_iter().find(|k| rule.contains_key(*k));
        let why = match what {
            Some("redirect") => {
                "a redirect is not in MeshRoute; an HTTPRoute with a RequestRedirect filter does it"
                    .to_owned()
            }
            Some(other) => format!(
                "a rule that answers with {other} instead of a destination has no MeshRoute equivalent"
            ),
            None => "a rule without destinations".to_owned(),
        };
        ctx.leave_out(at.to_owned(), format!("the whole rule: {why}"));
        return Ok(None);
    }
    if let Some(name) = rule.get("name") {
        out.name = names.name(string(ctx, name, &format!("{at}.name"))?);
    }
    for (m, item) in list(ctx, rule.get("match"), &format!("{at}.match"))?.iter().enumerate() {
        out.matches.push(http_match(ctx, &format!("{at}.match[{m}]"), item)?);
    }
    if out.matches.len() > 16 {
        return Err(
            ctx.invalid(format!("{at}.match"), "more than 16 matches; a MeshRoute rule takes at most 16")
        );
    }

    let mut request_headers = HeaderModifier::default();
    let mut response_headers = HeaderModifier::default();
    if let Some(headers) = rule.get("headers") {
        header_edits(ctx, &format!("{at}.headers"), headers, &mut request_headers, &mut response_headers)?;
    }
    for (d, destination) in routes.iter().enumerate() {
        let field = format!("{at}.route[{d}]");
        let destination = mapping(ctx, destination, &field)?;
        let weight = match destination.get("weight") {
            None => {
                if routes.len() == 1 {
                    100
                } else {
                    0
                }
            }
            Some(value) => whole_number(ctx, value, &format!("{field}.weight"), 0, 100)?,
        };
        let Some(dest) = destination.get("destination") else {
            return Err(ctx.invalid(format!("{field}.destination"), "missing"));
        };
        if let Some(headers) = destination.get("headers") {
            if routes.len() == 1 {
                header_edits(
                    ctx,
                    &format!("{field}.headers"),
                    headers,
                    &mut request_headers,
                    &mut response_headers,
                )?;
            } else {
                ctx.leave_out(
                    format!("{field}.headers"),
                    "header edits for one destination of a split: MeshRoute edits headers per rule",
                );
            }
        }
        for key in destination.keys() {
            if !matches!(key.as_str(), "destination" | "weight" | "headers") {
                ctx.leave_out(format!("{field}.{key}"), "MeshRoute has no equivalent");
            }
        }
        let Some((service, subset, port)) =
            destination_of(ctx, &format!("{field}.destination"), dest, target, vs_namespace, rules)?
        else {
            continue;
        };
        let backend = match subset {
            Some(labels) => Backend { service: None, subset: Some(labels), port, weight },
            None => Backend { service: Some(service), subset: None, port, weight },
        };
        // Istio lets a split name one destination twice; the API wants one backend with the sum.
        match out
            .backends
            .iter_mut()
            .find(|b| b.service == backend.service && b.subset == backend.subset && b.port == backend.port)
        {
            Some(same) => same.weight = (same.weight + backend.weight).min(100),
            None => out.backends.push(backend),
        }
    }
    if out.backends.is_empty() {
        ctx.leave_out(at.to_owned(), "the whole rule: none of its destinations can be a backend (see above)");
        return Ok(None);
    }
    if out.backends.len() > 16 {
        return Err(ctx
            .invalid(format!("{at}.route"), "more than 16 destinations; a MeshRoute rule takes at most 16"));
    }
    if request_headers != HeaderModifier::default() {
        out.request_headers = Some(request_headers);
    }
    if response_headers != HeaderModifier::default() {
        out.response_headers = Some(response_headers);
    }

    if let Some(timeout) = rule.get("timeout") {
        let text = string(ctx, timeout, &format!("{at}.timeout"))?;
        let parsed = duration::parse_go(text).map_err(|why| ctx.invalid(format!("{at}.timeout"), why))?;
        // Istio's 0s turns the timeout off, as an absent one does in Braid.
        if !parsed.is_zero() {
            out.timeout =
                Some(duration::render(parsed).map_err(|why| ctx.invalid(format!("{at}.timeout"), why))?);
        }
    }
    if let Some(retries) = rule.get("retries") {
        out.retries = retry_policy(ctx, &format!("{at}.retries"), retries, out.timeout.as_deref())?;
    }
    if let Some(fault) = rule.get("fault") {
        out.fault = fault_injection(ctx, &format!("{at}.fault"), fault)?;
    }
    out.mirror = mirror(ctx, at, rule, target, vs_namespace, rules)?;
    Ok(Some(out))
}

/// Service, subset labels (of the route's own Service), port.
type Destination = (String, Option<BTreeMap<String, String>>, Option<i32>);

/// A destination as (Service, subset labels when the subset is of the route's own Service,
/// port); None when it cannot be a backend (the reason is left out).
fn destination_of(
    ctx: &mut Ctx,
    field: &str,
    dest: &Value,
    target: &ServiceHost,
    vs_namespace: &Option<String>,
    rules: &DestinationRules,
) -> Result<Option<Destination>, ConvertError> {
    let dest = mapping(ctx, dest, field)?;
    let host = string(
        ctx,
        dest.get("host").ok_or_else(|| ctx.invalid(format!("{field}.host"), "missing"))?,
        &format!("{field}.host"),
    )?;
    let host = match service_host(host) {
        Ok(host) => {
            ServiceHost { namespace: host.namespace.or_else(|| vs_namespace.clone()), name: host.name }
        }
        Err(why) => {
            ctx.leave_out(format!("{field}.host"), why);
            return Ok(None);
        }
    };
    if !same_namespace(host.namespace.as_deref(), target.namespace.as_deref()) {
        ctx.leave_out(
            format!("{field}.host"),
            format!(
                "{} is in namespace {}: a MeshRoute's backends are Services of its own namespace ({})",
                host.name,
                host.namespace.as_deref().unwrap_or("?"),
                target.namespace.as_deref().unwrap_or("?")
            ),
        );
        return Ok(None);
    }
    let port = match dest.get("port") {
        None => None,
        Some(port) => {
            let port = mapping(ctx, port, &format!("{field}.port"))?;
            match port.get("number") {
                Some(number) => Some(whole_number(ctx, number, &format!("{field}.port.number"), 1, 65535)?),
                None => return Err(ctx.invalid(format!("{field}.port.number"), "missing")),
            }
        }
    };
    let Some(subset) = dest.get("subset") else { return Ok(Some((host.name, None, port))) };
    let subset = string(ctx, subset, &format!("{field}.subset"))?;
    let Some(labels) = rules.subset(&host, subset) else {
        return Err(ctx.invalid(
            format!("{field}.subset"),
            format!(
                "subset {subset:?} of host {} is not defined by any DestinationRule in the input; convert the \
                 VirtualService together with its DestinationRules",
                host.name
            ),
        ));
    };
    if labels.is_empty() {
        return Ok(Some((host.name, None, port)));
    }
    if host.name == target.name {
        return Ok(Some((host.name, Some(labels.clone()), port)));
    }
    // A MeshRoute subset picks pods of the route's own Service; a subset of another Service
    // needs a Service of its own.
    let service = format!("{}-{subset}", host.name);
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ctx.leave_out(
        format!("{field}.subset"),
        format!(
            "a MeshRoute subset is a subset of the route's own Service ({}), not of {}: create a Service {service} \
             that selects the pods of {} with {}; the backend names it",
            target.name,
            host.name,
            host.name,
            selector.join(",")
        ),
    );
    Ok(Some((service, None, port)))
}

fn whole_number(ctx: &Ctx, value: &Value, field: &str, min: i64, max: i64) -> Result<i32, ConvertError> {
    let number = match value {
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| ctx.invalid(field, format!("{n} is not a whole number")))?
        }
        other => return Err(ctx.invalid(field, format!("must be a number, not {}", type_name(other)))),
    };
    if number < min || number > max {
        return Err(ctx.invalid(field, format!("{number} is not within {min}..={max}")));
    }
    i32::try_from(number).map_err(|_| ctx.invalid(field, format!("{number} is too large")))
}

/// A percentage (0 to 100, fractions allowed) as the whole percent the API takes; a fraction is
/// rounded and reported.
fn percent(ctx: &mut Ctx, value: &Value, field: &str) -> Result<i32, ConvertError> {
    let Some(number) = value.as_f64() else {
        return Err(ctx.invalid(field, format!("must be a number, not {}", type_name(value))));
    };
    if !(0.0..=100.0).contains(&number) {
        return Err(ctx.invalid(field, format!("{number} is not within 0..=100")));
    }
    let rounded = number.round();
    if rounded != number {
        ctx.leave_out(
            field.to_owned(),
            format!("{number}% is rounded to {rounded}%: MeshRoute takes whole percents"),
        );
    }
    Ok(rounded as i32)
}

/// Istio's `percentage: {value: 12.5}`, or the older whole-number `percent`; 0 when neither is
/// given (Istio injects nothing then).
fn percentage(
    ctx: &mut Ctx,
    object: &Map<String, Value>,
    at: &str,
    percentage_key: &str,
    percent_key: &str,
) -> Result<i32, ConvertError> {
    if let Some(percentage) = object.get(percentage_key) {
        let field = format!("{at}.{percentage_key}");
        let inner = mapping(ctx, percentage, &field)?;
        return match inner.get("value") {
            Some(value) => percent(ctx, value, &format!("{field}.value")),
            None => Ok(0),
        };
    }
    match object.get(percent_key) {
        Some(value) => percent(ctx, value, &format!("{at}.{percent_key}")),
        None => Ok(0),
    }
}

fn string_match(
    ctx: &mut Ctx,
    field: &str,
    value: &Value,
) -> Result<Option<(ValueMatchType, String)>, ConvertError> {
    let object = mapping(ctx, value, field)?;
    if object.is_empty() {
        // Istio's empty match means "present, any value".
        return Ok(Some((ValueMatchType::RegularExpression, ".*".to_owned())));
    }
    let Some((kind, text)) = object.iter().next() else { return Ok(None) };
    let text = string(ctx, text, &format!("{field}.{kind}"))?;
    match kind.as_str() {
        "exact" => Ok(Some((ValueMatchType::Exact, text.to_owned()))),
        "regex" => Ok(Some((ValueMatchType::RegularExpression, text.to_owned()))),
        // The API's regular expressions match the whole value.
        "prefix" => Ok(Some((ValueMatchType::RegularExpression, format!("{}.*", regex::escape(text))))),
        other => Err(ctx.invalid(format!("{field}.{other}"), "not a string match (exact, prefix or regex)")),
    }
}

fn http_match(ctx: &mut Ctx, at: &str, item: &Value) -> Result<RouteMatch, ConvertError> {
    let item = mapping(ctx, item, at)?;
    let mut out = RouteMatch::default();
    for (key, value) in item {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "uri" => {
                let uri = mapping(ctx, value, &field)?;
                let Some((kind, text)) = uri.iter().next() else { continue };
                let text = string(ctx, text, &format!("{field}.{kind}"))?.to_owned();
                let match_type = match kind.as_str() {
                    "exact" => PathMatchType::Exact,
                    // Istio's prefix is a string prefix, the API's a path-segment prefix: "/v1"
                    // no longer matches "/v10" (docs/convert.md).
                    "prefix" => PathMatchType::PathPrefix,
                    "regex" => PathMatchType::RegularExpression,
                    other => {
                        return Err(ctx.invalid(
                            format!("{field}.{other}"),
                            "not a string match (exact, prefix or regex)",
                        ));
                    }
                };
                if match_type != PathMatchType::RegularExpression && !text.starts_with('/') {
                    return Err(
                        ctx.invalid(format!("{field}.{kind}"), format!("{text:?} does not start with '/'"))
                    );
                }
                out.path = Some(PathMatch { match_type, value: text });
            }
            "method" => {
                let method = mapping(ctx, value, &field)?;
                match method.get("exact").map(|m| string(ctx, m, &format!("{field}.exact"))).transpose()? {
                    Some(name) => {
                        let parsed: HttpMethod = serde_json::from_value(Value::String(name.to_uppercase()))
                            .map_err(|_| {
                            ctx.invalid(format!("{field}.exact"), format!("{name:?} is not an HTTP method"))
                        })?;
                        out.method = Some(parsed);
                    }
                    None => ctx.leave_out(
                        field,
                        "MeshRoute matches one exact method, not a prefix or regular expression",
                    ),
                }
            }
            "headers" | "queryParams" => {
                for (name, matcher) in mapping(ctx, value, &field)? {
                    let Some((match_type, text)) = string_match(ctx, &format!("{field}.{name}"), matcher)?
                    else {
                        continue;
                    };
                    if key == "headers" {
                        out.headers.push(HeaderMatch { name: name.clone(), match_type, value: text });
                    } else {
                        out.query_params.push(QueryParamMatch {
                            name: name.clone(),
                            match_type,
                            value: text,
                        });
                    }
                }
            }
            "name" => {}
            "ignoreUriCase" => ctx.leave_out(field, "MeshRoute compares paths case-sensitively"),
            "withoutHeaders" => ctx.leave_out(field, "MeshRoute cannot match the absence of a header"),
            "sourceLabels" | "sourceNamespace" => {
                ctx.leave_out(field, "a MeshRoute applies to every client; it does not match on the caller")
            }
            "gateways" => ctx.leave_out(field, "Braid routes traffic between meshed workloads only"),
            "port" => ctx.leave_out(field, "a MeshRoute's port is per route (spec.port), not per match"),
            "authority" | "scheme" => ctx.leave_out(field, format!("MeshRoute does not match on the {key}")),
            other => ctx.leave_out(field, format!("MeshRoute does not match on {other}")),
        }
    }
    Ok(out)
}

fn header_edits(
    ctx: &mut Ctx,
    at: &str,
    headers: &Value,
    request: &mut HeaderModifier,
    response: &mut HeaderModifier,
) -> Result<(), ConvertError> {
    for (side, edits) in mapping(ctx, headers, at)? {
        let field = format!("{at}.{side}");
        let target = match side.as_str() {
            "request" => &mut *request,
            "response" => &mut *response,
            other => return Err(ctx.invalid(format!("{at}.{other}"), "not request or response")),
        };
        for (op, value) in mapping(ctx, edits, &field)? {
            let op_field = format!("{field}.{op}");
            match op.as_str() {
                "set" | "add" => {
                    for (name, text) in mapping(ctx, value, &op_field)? {
                        let text = string(ctx, text, &format!("{op_field}.{name}"))?;
                        let list = if op == "set" { &mut target.set } else { &mut target.add };
                        list.push(HeaderValue { name: name.clone(), value: text.to_owned() });
                    }
                }
                "remove" => {
                    for (i, name) in list(ctx, Some(value), &op_field)?.iter().enumerate() {
                        target.remove.push(string(ctx, name, &format!("{op_field}[{i}]"))?.to_owned());
                    }
                }
                other => return Err(ctx.invalid(format!("{field}.{other}"), "not set, add or remove")),
            }
        }
    }
    Ok(())
}

fn retry_policy(
    ctx: &mut Ctx,
    at: &str,
    retries: &Value,
    timeout: Option<&str>,
) -> Result<Option<RetryPolicy>, ConvertError> {
    let retries = mapping(ctx, retries, at)?;
    // Istio counts retries; the API counts tries, the first one included.
    let istio_attempts = match retries.get("attempts") {
        Some(value) => whole_number(ctx, value, &format!("{at}.attempts"), 0, i64::from(i32::MAX))?,
        None => 2,
    };
    if istio_attempts == 0 {
        return Ok(None);
    }
    let attempts = if istio_attempts > 9 {
        ctx.leave_out(
            format!("{at}.attempts"),
            format!(
                "{istio_attempts} retries are capped at 9 (10 tries): a MeshRoute allows at most 10 tries"
            ),
        );
        10
    } else {
        istio_attempts + 1
    };
    let mut per_try_timeout = None;
    if let Some(per_try) = retries.get("perTryTimeout") {
        let field = format!("{at}.perTryTimeout");
        let text = string(ctx, per_try, &field)?;
        let parsed = duration::parse_go(text).map_err(|why| ctx.invalid(&field, why))?;
        let total = timeout.map(duration::parse_go).transpose().map_err(|why| ctx.invalid(&field, why))?;
        if total.is_some_and(|total| parsed > total) {
            ctx.leave_out(
                field,
                "longer than the rule's timeout, which cuts every try short anyway; the API refuses it",
            );
        } else if !parsed.is_zero() {
            per_try_timeout = Some(duration::render(parsed).map_err(|why| ctx.invalid(&field, why))?);
        }
    }
    let mut retry_on = Vec::new();
    if let Some(on) = retries.get("retryOn") {
        let field = format!("{at}.retryOn");
        for condition in string(ctx, on, &field)?.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let mapped = match condition {
                "5xx" => RetryOn::ServerError,
                "gateway-error" => RetryOn::GatewayError,
                "connect-failure" => RetryOn::ConnectFailure,
                "reset" => RetryOn::Reset,
                "cancelled" => RetryOn::Cancelled,
                "deadline-exceeded" => RetryOn::DeadlineExceeded,
                "resource-exhausted" => RetryOn::ResourceExhausted,
                "unavailable" => RetryOn::Unavailable,
                other => {
                    ctx.leave_out(
                        format!("{field} ({other})"),
                        "MeshRoute retries 5xx, gateway-error, connect-failure, reset and the gRPC statuses \
                         cancelled, deadline-exceeded, resource-exhausted and unavailable only",
                    );
                    continue;
                }
            };
            if !retry_on.contains(&mapped) {
                retry_on.push(mapped);
            }
        }
    }
    if retry_on.is_empty() {
        // Istio's own default when retryOn is absent is closest to the API's default.
        retry_on = vec![RetryOn::GatewayError, RetryOn::ConnectFailure];
    }
    for key in retries.keys() {
        if !matches!(key.as_str(), "attempts" | "perTryTimeout" | "retryOn") {
            ctx.leave_out(format!("{at}.{key}"), "MeshRoute retries have no equivalent");
        }
    }
    Ok(Some(RetryPolicy { attempts, per_try_timeout, retry_on, budget: None }))
}

fn fault_injection(ctx: &mut Ctx, at: &str, fault: &Value) -> Result<Option<FaultInjection>, ConvertError> {
    let fault = mapping(ctx, fault, at)?;
    let mut out = FaultInjection { delay: None, abort: None };
    if let Some(delay) = fault.get("delay") {
        let field = format!("{at}.delay");
        let delay = mapping(ctx, delay, &field)?;
        match delay.get("fixedDelay") {
            Some(fixed) => {
                let text = string(ctx, fixed, &format!("{field}.fixedDelay"))?;
                let duration = duration::to_braid(text)
                    .map_err(|why| ctx.invalid(format!("{field}.fixedDelay"), why))?;
                let percent = percentage(ctx, delay, &field, "percentage", "percent")?;
                out.delay = Some(FaultDelay { duration, percent });
            }
            None => {
                ctx.leave_out(field.clone(), "only a fixed delay (fixedDelay) has a MeshRoute equivalent")
            }
        }
    }
    if let Some(abort) = fault.get("abort") {
        let field = format!("{at}.abort");
        let abort = mapping(ctx, abort, &field)?;
        match abort.get("httpStatus") {
            Some(status) => {
                let status = whole_number(ctx, status, &format!("{field}.httpStatus"), 100, 599)?;
                if status < 400 {
                    ctx.leave_out(
                        format!("{field}.httpStatus"),
                        format!("{status}: MeshRoute aborts with 400 to 599 only"),
                    );
                } else {
                    let percent = percentage(ctx, abort, &field, "percentage", "percent")?;
                    out.abort = Some(FaultAbort { status, percent });
                }
            }
            None => ctx.leave_out(
                field.clone(),
                "only an HTTP status (httpStatus) has a MeshRoute equivalent, not gRPC or HTTP/2 errors",
            ),
        }
    }
    Ok((out.delay.is_some() || out.abort.is_some()).then_some(out))
}

fn mirror(
    ctx: &mut Ctx,
    at: &str,
    rule: &Map<String, Value>,
    target: &ServiceHost,
    vs_namespace: &Option<String>,
    rules: &DestinationRules,
) -> Result<Option<Mirror>, ConvertError> {
    let (field, destination, percent) = if let Some(destination) = rule.get("mirror") {
        let percent = if rule.contains_key("mirrorPercentage") {
            percentage(ctx, rule, at, "mirrorPercentage", "")?
        } else if let Some(value) = rule.get("mirrorPercent").or_else(|| rule.get("mirror_percent")) {
            percent(ctx, value, &format!("{at}.mirrorPercent"))?
        } else {
            100
        };
        (format!("{at}.mirror"), destination, percent)
    } else if let Some(mirrors) = rule.get("mirrors") {
        let mirrors = list(ctx, Some(mirrors), &format!("{at}.mirrors"))?;
        let Some(first) = mirrors.first() else { return Ok(None) };
        if mirrors.len() > 1 {
            ctx.leave_out(format!("{at}.mirrors[1:]"), "a MeshRoute rule mirrors to one Service");
        }
        let field = format!("{at}.mirrors[0]");
        let first = mapping(ctx, first, &field)?;
        let percent = if first.contains_key("percentage") {
            percentage(ctx, first, &field, "percentage", "")?
        } else {
            100
        };
        let destination =
            first.get("destination").ok_or_else(|| ctx.invalid(format!("{field}.destination"), "missing"))?;
        (format!("{field}.destination"), destination, percent)
    } else {
        return Ok(None);
    };
    let Some((service, subset, port)) =
        destination_of(ctx, &field, destination, target, vs_namespace, rules)?
    else {
        return Ok(None);
    };
    if subset.is_some() {
        ctx.leave_out(
            format!("{field}.subset"),
            format!("a mirror goes to a whole Service: create a Service that selects the subset's pods and name it in mirror.service (now {service})"),
        );
    }
    Ok(Some(Mirror { service, port, percent }))
}
