//! Linkerd: a ServiceProfile (linkerd.io/v1alpha2) into a MeshRoute, and a policy.linkerd.io
//! HTTPRoute into the Gateway API's HTTPRoute, which Braid routes for a Service parent.

use braid_crds::{
    MeshRoute, MeshRouteSpec,
    meshroute::{
        Backend, HttpMethod, PathMatch, PathMatchType, RetryBudget, RetryOn, RetryPolicy, RouteMatch,
        RouteRule,
    },
};
use serde_json::{Map, Value};

use crate::{
    Body, ConvertError, Converted, Ctx, LeftOut, Options, Source, duration,
    names::{RuleNames, service_host},
    type_name,
};

/// Linkerd's timeout for a ServiceProfile route that names none.
const LINKERD_DEFAULT_TIMEOUT: &str = "10s";

fn object_name(kind: &str, value: &Value) -> String {
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<no name>");
    match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn mapping<'a>(ctx: &Ctx, value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ConvertError> {
    value
        .as_object()
        .ok_or_else(|| ctx.invalid(field, format!("must be a mapping, not {}", type_name(value))))
}

fn list<'a>(ctx: &Ctx, value: Option<&'a Value>, field: &str) -> Result<&'a [Value], ConvertError> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ctx.invalid(field, format!("must be a list, not {}", type_name(other)))),
    }
}

fn string<'a>(ctx: &Ctx, value: &'a Value, field: &str) -> Result<&'a str, ConvertError> {
    value.as_str().ok_or_else(|| ctx.invalid(field, format!("must be a string, not {}", type_name(value))))
}

/// One conjunction of a ServiceProfile condition: what a single MeshRoute match says.
#[derive(Clone, Default)]
struct Conjunct {
    method: Option<HttpMethod>,
    path_regex: Option<String>,
}

impl Conjunct {
    /// Both at once; None when they contradict (two methods), Err when the API cannot say it.
    fn and(&self, other: &Conjunct) -> Result<Option<Conjunct>, String> {
        let method = match (self.method, other.method) {
            (Some(a), Some(b)) if a != b => return Ok(None),
            (a, b) => a.or(b),
        };
        let path_regex = match (&self.path_regex, &other.path_regex) {
            (Some(a), Some(b)) if a != b => {
                return Err(
                    "two path regular expressions that must both match: a MeshRoute match has one path"
                        .into(),
                );
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        Ok(Some(Conjunct { method, path_regex }))
    }
}

/// A condition as an OR of ANDs (each AND a MeshRoute match); Err(why) when it cannot be said.
fn condition(
    ctx: &Ctx,
    at: &str,
    value: &Value,
) -> Result<Result<Vec<Conjunct>, (String, String)>, ConvertError> {
    let object = mapping(ctx, value, at)?;
    if object.is_empty() {
        return Err(
            ctx.invalid(at, "an empty condition; Linkerd needs one of method, pathRegex, all, any, not")
        );
    }
    let mut result = vec![Conjunct::default()];
    let and_all =
        |left: &[Conjunct], right: &[Conjunct], field: &str| -> Result<Vec<Conjunct>, (String, String)> {
            let mut out = Vec::new();
            for a in left {
                for b in right {
                    if let Some(both) = a.and(b).map_err(|why| (field.to_owned(), why))? {
                        out.push(both);
                    }
                }
            }
            Ok(out)
        };
    for (key, value) in object {
        let field = format!("{at}.{key}");
        let part: Vec<Conjunct> = match key.as_str() {
            "method" => {
                let name = string(ctx, value, &field)?;
                let method: HttpMethod = serde_json::from_value(Value::String(name.to_uppercase()))
                    .map_err(|_| ctx.invalid(&field, format!("{name:?} is not an HTTP method")))?;
                vec![Conjunct { method: Some(method), path_regex: None }]
            }
            "pathRegex" => {
                vec![Conjunct { method: None, path_regex: Some(string(ctx, value, &field)?.to_owned()) }]
            }
            "all" => {
                let mut all = vec![Conjunct::default()];
                for (i, item) in list(ctx, Some(value), &field)?.iter().enumerate() {
                    let sub = match condition(ctx, &format!("{field}[{i}]"), item)? {
                        Ok(sub) => sub,
                        Err(left) => return Ok(Err(left)),
                    };
                    all = match and_all(&all, &sub, &field) {
                        Ok(all) => all,
                        Err(left) => return Ok(Err(left)),
                    };
                }
                all
            }
            "any" => {
                let mut any = Vec::new();
                for (i, item) in list(ctx, Some(value), &field)?.iter().enumerate() {
                    match condition(ctx, &format!("{field}[{i}]"), item)? {
                        Ok(sub) => any.extend(sub),
                        Err(left) => return Ok(Err(left)),
                    }
                }
                any
            }
            "not" => {
                return Ok(Err((field, "MeshRoute matches cannot be negated".to_owned())));
            }
            other => {
                return Err(ctx.invalid(
                    format!("{at}.{other}"),
                    "not a request match (method, pathRegex, all, any, not)",
                ));
            }
        };
        result = match and_all(&result, &part, at) {
            Ok(result) => result,
            Err(left) => return Ok(Err(left)),
        };
    }
    Ok(Ok(result))
}

/// A ServiceProfile: one MeshRoute for the Service it is named after.
pub fn service_profile(
    source: &Source,
    options: &Options,
) -> Result<(Vec<Converted>, Vec<LeftOut>), ConvertError> {
    let mut ctx = Ctx::new(source, object_name("ServiceProfile", &source.value));
    let name = match source.value.pointer("/metadata/name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(ctx.invalid("metadata.name", format!("must be a string, not {}", type_name(other))));
        }
        None => return Err(ctx.invalid("metadata.name", "missing")),
    };
    let host = match service_host(&name) {
        Ok(host) => host,
        Err(why) => {
            ctx.leave_out("metadata.name", format!("the whole ServiceProfile: {why}"));
            return Ok((Vec::new(), ctx.left_out));
        }
    };
    let namespace = host
        .namespace
        .clone()
        .or_else(|| source.value.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned));
    let spec =
        mapping(&ctx, source.value.get("spec").ok_or_else(|| ctx.invalid("spec", "missing"))?, "spec")?;
    for key in spec.keys() {
        match key.as_str() {
            "routes" | "retryBudget" | "dstOverrides" => {}
            "opaquePorts" => ctx.leave_out(
                "spec.opaquePorts",
                "Braid's proxy detects the protocol itself; ports that must not be read as HTTP are skipped with the \
                 pod annotations braid.dev/skip-inbound-ports and braid.dev/skip-outbound-ports",
            ),
            other => ctx.leave_out(format!("spec.{other}"), "MeshRoute has no equivalent"),
        }
    }

    let budget = match spec.get("retryBudget") {
        None => None,
        Some(budget) => retry_budget(&mut ctx, budget)?,
    };
    let backends = dst_overrides(&mut ctx, spec.get("dstOverrides"), &host.name, namespace.as_deref())?;

    let mut names = RuleNames::default();
    let mut rules = Vec::new();
    for (r, route) in list(&ctx, spec.get("routes"), "spec.routes")?.iter().enumerate() {
        let at = format!("spec.routes[{r}]");
        let route = mapping(&ctx, route, &at)?;
        let route_name = string(
            &ctx,
            route.get("name").ok_or_else(|| ctx.invalid(format!("{at}.name"), "missing"))?,
            &format!("{at}.name"),
        )?;
        let Some(condition_value) = route.get("condition") else {
            return Err(ctx.invalid(format!("{at}.condition"), "missing; every ServiceProfile route has one"));
        };
        let conjuncts = match condition(&ctx, &format!("{at}.condition"), condition_value)? {
            Ok(conjuncts) => conjuncts,
            Err((field, why)) => {
                ctx.leave_out(field, format!("{why}; the whole route {route_name:?} is left out"));
                continue;
            }
        };
        if conjuncts.is_empty() {
            ctx.leave_out(
                format!("{at}.condition"),
                format!(
                    "no request can match it (two methods at once); the route {route_name:?} is left out"
                ),
            );
            continue;
        }
        if conjuncts.len() > 16 {
            ctx.leave_out(format!("{at}.condition"), format!("{} alternatives; a MeshRoute rule takes at most 16 matches, so the route {route_name:?} is left out", conjuncts.len()));
            continue;
        }
        let matches = conjuncts
            .into_iter()
            .map(|c| RouteMatch {
                path: c
                    .path_regex
                    .map(|value| PathMatch { match_type: PathMatchType::RegularExpression, value }),
                method: c.method,
                ..RouteMatch::default()
            })
            .collect();
        let timeout = match route.get("timeout") {
            Some(timeout) => {
                let field = format!("{at}.timeout");
                duration::to_braid(string(&ctx, timeout, &field)?).map_err(|why| ctx.invalid(&field, why))?
            }
            None => LINKERD_DEFAULT_TIMEOUT.to_owned(),
        };
        let retryable = match route.get("isRetryable") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ctx.invalid(
                    format!("{at}.isRetryable"),
                    format!("must be true or false, not {}", type_name(other)),
                ));
            }
        };
        let retries = retryable.then(|| RetryPolicy {
            attempts: options.linkerd_attempts,
            per_try_timeout: options
                .linkerd_per_try_timeout
                .as_deref()
                .and_then(|t| duration::to_braid(t).ok()),
            retry_on: vec![RetryOn::ServerError, RetryOn::ConnectFailure, RetryOn::Reset],
            budget: budget.clone(),
        });
        if route.contains_key("responseClasses") {
            ctx.leave_out(
                format!("{at}.responseClasses"),
                "Braid counts 5xx answers (and gRPC errors) as failures and retries 5xx; other response classes are not configurable",
            );
        }
        for key in route.keys() {
            if !matches!(key.as_str(), "name" | "condition" | "timeout" | "isRetryable" | "responseClasses") {
                ctx.leave_out(format!("{at}.{key}"), "MeshRoute has no equivalent");
            }
        }
        rules.push(RouteRule {
            name: names.name(route_name),
            matches,
            backends: backends.clone(),
            timeout: Some(timeout),
            retries,
            fault: None,
            mirror: None,
            request_headers: None,
            response_headers: None,
            rate_limit: None,
        });
    }
    // dstOverrides split all of the Service's traffic, not only the routes' requests.
    if spec.contains_key("dstOverrides") {
        rules.push(RouteRule {
            name: names.name("all"),
            matches: Vec::new(),
            backends: backends.clone(),
            timeout: None,
            retries: None,
            fault: None,
            mirror: None,
            request_headers: None,
            response_headers: None,
            rate_limit: None,
        });
    }
    if rules.is_empty() {
        ctx.leave_out("spec.routes", "no route could be converted, so no MeshRoute is written");
        return Ok((Vec::new(), ctx.left_out));
    }
    if rules.len() > 32 {
        ctx.leave_out("spec.routes[32:]", "a MeshRoute has at most 32 rules");
        rules.truncate(32);
    }
    let mut route = MeshRoute::new(
        &host.name,
        MeshRouteSpec {
            service: host.name.clone(),
            port: None,
            rules,
            canary: None,
            load_balancer: None,
            connection_pool: None,
        },
    );
    route.metadata.namespace = namespace;
    let converted = Converted {
        document: ctx.document,
        object: ctx.object.clone(),
        body: Body::MeshRoute(Box::new(route)),
        left_out: ctx.left_out.clone(),
    };
    Ok((vec![converted], ctx.left_out))
}

fn retry_budget(ctx: &mut Ctx, budget: &Value) -> Result<Option<RetryBudget>, ConvertError> {
    let budget = mapping(ctx, budget, "spec.retryBudget")?;
    let ratio = match budget.get("retryRatio") {
        Some(value) => value.as_f64().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
            ctx.invalid("spec.retryBudget.retryRatio", format!("{value} is not a number within 0..=1"))
        })?,
        None => 0.2,
    };
    let min = match budget.get("minRetriesPerSecond") {
        Some(value) => value.as_i64().filter(|m| (0..=10_000).contains(m)).ok_or_else(|| {
            ctx.invalid(
                "spec.retryBudget.minRetriesPerSecond",
                format!("{value} is not a whole number within 0..=10000"),
            )
        })?,
        None => 10,
    };
    let percent = ratio * 100.0;
    if percent.round() != percent {
        ctx.leave_out(
            "spec.retryBudget.retryRatio",
            format!("{ratio} is rounded to {}%: the budget takes whole percents", percent.round()),
        );
    }
    if let Some(ttl) = budget.get("ttl") {
        let text = string(ctx, ttl, "spec.retryBudget.ttl")?;
        let parsed = duration::parse_go(text).map_err(|why| ctx.invalid("spec.retryBudget.ttl", why))?;
        if parsed.as_millis() != 10_000 {
            ctx.leave_out(
                "spec.retryBudget.ttl",
                format!("{text}: Braid's budget counts requests over a fixed 10 s window"),
            );
        }
    }
    for key in budget.keys() {
        if !matches!(key.as_str(), "retryRatio" | "minRetriesPerSecond" | "ttl") {
            ctx.leave_out(format!("spec.retryBudget.{key}"), "MeshRoute has no equivalent");
        }
    }
    let budget = RetryBudget { percent: percent.round() as i32, min_retries_per_second: min as i32 };
    // Linkerd's default budget is the API's default: say nothing then.
    Ok((budget != RetryBudget { percent: 20, min_retries_per_second: 10 }).then_some(budget))
}

/// The backends every rule sends to: the Service itself, or the dstOverrides split.
fn dst_overrides(
    ctx: &mut Ctx,
    overrides: Option<&Value>,
    service: &str,
    namespace: Option<&str>,
) -> Result<Vec<Backend>, ConvertError> {
    let overrides = list(ctx, overrides, "spec.dstOverrides")?;
    if overrides.is_empty() {
        return Ok(vec![Backend { service: Some(service.to_owned()), subset: None, port: None, weight: 1 }]);
    }
    let mut weighted = Vec::new();
    for (i, item) in overrides.iter().enumerate() {
        let at = format!("spec.dstOverrides[{i}]");
        let item = mapping(ctx, item, &at)?;
        let authority = string(
            ctx,
            item.get("authority").ok_or_else(|| ctx.invalid(format!("{at}.authority"), "missing"))?,
            &format!("{at}.authority"),
        )?;
        let weight = quantity(item.get("weight").unwrap_or(&Value::Null)).ok_or_else(|| {
            ctx.invalid(
                format!("{at}.weight"),
                format!(
                    "{} is not a weight like 1, \"500m\" or \"50\"",
                    item.get("weight").unwrap_or(&Value::Null)
                ),
            )
        })?;
        // An authority may carry a port: "web-v2.shop.svc.cluster.local:8080".
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port: i32 = port.parse().ok().filter(|p| (1..=65535).contains(p)).ok_or_else(|| {
                    ctx.invalid(format!("{at}.authority"), format!("{port:?} is not a port"))
                })?;
                (host, Some(port))
            }
            None => (authority, None),
        };
        match service_host(host) {
            Ok(target) if crate::istio::same_namespace(target.namespace.as_deref(), namespace) => {
                weighted.push((target.name, port, weight))
            }
            Ok(target) => ctx.leave_out(
                format!("{at}.authority"),
                format!(
                    "{} is in namespace {}: a MeshRoute's backends are Services of its own namespace",
                    target.name,
                    target.namespace.unwrap_or_default()
                ),
            ),
            Err(why) => ctx.leave_out(format!("{at}.authority"), why),
        }
    }
    let total: f64 = weighted.iter().map(|(_, _, w)| w).sum();
    if weighted.is_empty() || total <= 0.0 {
        return Err(ctx.invalid(
            "spec.dstOverrides",
            "no override with a weight above 0 names a Service of this namespace",
        ));
    }
    // Weights are relative in both; the API's are whole numbers up to 100, so they become percents.
    Ok(weighted
        .into_iter()
        .map(|(name, port, weight)| Backend {
            service: Some(name),
            subset: None,
            port,
            weight: (weight / total * 100.0).round() as i32,
        })
        .collect())
}

/// A Kubernetes quantity as Linkerd writes weights: 1, "1", "500m", "0.5".
fn quantity(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
            None => s.parse().ok(),
        },
        _ => None,
    }
    .filter(|w| w.is_finite() && *w >= 0.0)
}

/// Annotations Linkerd reads on an HTTPRoute for retries and timeouts.
const LINKERD_ROUTE_ANNOTATIONS: [&str; 2] = ["retry.linkerd.io/", "timeout.linkerd.io/"];

/// Filters Braid applies on an HTTPRoute rule (docs/gateway-api.md).
const SUPPORTED_FILTERS: [&str; 5] =
    ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite"];

/// A policy.linkerd.io HTTPRoute: the same shape as the Gateway API's, kept to what Braid routes.
pub fn http_route(source: &Source) -> Result<(Vec<Converted>, Vec<LeftOut>), ConvertError> {
    let mut ctx = Ctx::new(source, object_name("HTTPRoute", &source.value));
    let object = mapping(&ctx, &source.value, "")?;
    let metadata =
        mapping(&ctx, object.get("metadata").ok_or_else(|| ctx.invalid("metadata", "missing"))?, "metadata")?;
    let name = string(
        &ctx,
        metadata.get("name").ok_or_else(|| ctx.invalid("metadata.name", "missing"))?,
        "metadata.name",
    )?;
    let route_namespace = metadata.get("namespace").and_then(Value::as_str);
    let mut out_meta = Map::new();
    out_meta.insert("name".into(), Value::String(name.to_owned()));
    if let Some(ns) = route_namespace {
        out_meta.insert("namespace".into(), Value::String(ns.to_owned()));
    }
    if let Some(labels) = metadata.get("labels") {
        out_meta.insert("labels".into(), labels.clone());
    }
    let mut annotations = Map::new();
    if let Some(given) = metadata.get("annotations") {
        for (key, value) in mapping(&ctx, given, "metadata.annotations")? {
            if LINKERD_ROUTE_ANNOTATIONS.iter().any(|prefix| key.starts_with(prefix)) {
                let why = if key.starts_with("retry.") {
                    "Linkerd's retry annotations have no Gateway API field in the standard channel; a MeshRoute for the \
                     Service carries retries (spec.rules[].retries)"
                } else {
                    "Linkerd's timeout annotations: set rules[].timeouts.request (the whole request) or \
                     rules[].timeouts.backendRequest (each try) on the route instead"
                };
                ctx.leave_out(format!("metadata.annotations[{key}]"), why);
            } else {
                annotations.insert(key.clone(), value.clone());
            }
        }
    }
    if !annotations.is_empty() {
        out_meta.insert("annotations".into(), Value::Object(annotations));
    }

    let spec = mapping(&ctx, object.get("spec").ok_or_else(|| ctx.invalid("spec", "missing"))?, "spec")?;
    let mut out_spec = Map::new();
    for (key, value) in spec {
        match key.as_str() {
            "parentRefs" => {
                let mut parents = Vec::new();
                for (i, parent) in list(&ctx, Some(value), "spec.parentRefs")?.iter().enumerate() {
                    let field = format!("spec.parentRefs[{i}]");
                    let parent = mapping(&ctx, parent, &field)?;
                    let group = parent.get("group").and_then(Value::as_str);
                    let kind = parent.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
                    let namespace = parent.get("namespace").and_then(Value::as_str);
                    if kind != "Service" || !matches!(group, Some("" | "core")) {
                        ctx.leave_out(
                            field,
                            format!(
                                "a {kind} parent ({}): Braid routes an HTTPRoute whose parent is a Service; Linkerd's \
                                 Server parents attach authorization, which is MeshPolicy in Braid",
                                group.unwrap_or("gateway.networking.k8s.io")
                            ),
                        );
                        continue;
                    }
                    if namespace.is_some_and(|ns| Some(ns) != route_namespace) {
                        ctx.leave_out(field, "a Service of another namespace: Braid routes producer routes only (the Service in the route's namespace)");
                        continue;
                    }
                    let mut parent = parent.clone();
                    if parent.remove("sectionName").is_some() {
                        ctx.leave_out(
                            format!("{field}.sectionName"),
                            "Braid refuses sectionName on a Service parent; use port",
                        );
                    }
                    parents.push(Value::Object(parent));
                }
                out_spec.insert(key.clone(), Value::Array(parents));
            }
            "hostnames" => {
                out_spec.insert(key.clone(), value.clone());
            }
            "rules" => {
                let mut rules = Vec::new();
                for (r, rule) in list(&ctx, Some(value), "spec.rules")?.iter().enumerate() {
                    rules.push(Value::Object(route_rule(&mut ctx, &format!("spec.rules[{r}]"), rule)?));
                }
                out_spec.insert(key.clone(), Value::Array(rules));
            }
            other => ctx.leave_out(format!("spec.{other}"), "Braid does not route on it"),
        }
    }
    if out_spec.get("parentRefs").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        ctx.leave_out(
            "spec.parentRefs",
            "the whole route: no parent is a Service, so Braid would not route it",
        );
        return Ok((Vec::new(), ctx.left_out));
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String("gateway.networking.k8s.io/v1".into()));
    out.insert("kind".into(), Value::String("HTTPRoute".into()));
    out.insert("metadata".into(), Value::Object(out_meta));
    out.insert("spec".into(), Value::Object(out_spec));
    let out = Value::Object(out);
    // What the operator reads: the route must parse into its type, with no field it would refuse.
    let parsed: braid_operator::gateway::types::HTTPRoute = serde_json::from_value(out.clone())
        .map_err(|err| ctx.invalid("spec", format!("the converted HTTPRoute does not read as one: {err}")))?;
    if let Some((r, rule)) = parsed.spec.rules.iter().enumerate().find(|(_, rule)| !rule.other.is_empty()) {
        return Err(ctx.invalid(
            format!("spec.rules[{r}]"),
            format!("fields Braid refuses remain: {:?}", rule.other.keys().collect::<Vec<_>>()),
        ));
    }
    let converted = Converted {
        document: ctx.document,
        object: ctx.object.clone(),
        body: Body::HttpRoute(Box::new(parsed)),
        left_out: ctx.left_out.clone(),
    };
    Ok((vec![converted], ctx.left_out))
}

fn route_rule(ctx: &mut Ctx, at: &str, rule: &Value) -> Result<Map<String, Value>, ConvertError> {
    let mut out = Map::new();
    for (key, value) in mapping(ctx, rule, at)? {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "name" | "matches" | "timeouts" => {
                out.insert(key.clone(), value.clone());
            }
            "filters" => {
                let mut kept = Vec::new();
                for (f, filter) in list(ctx, Some(value), &field)?.iter().enumerate() {
                    let kind = filter.get("type").and_then(Value::as_str).unwrap_or("");
                    if SUPPORTED_FILTERS.contains(&kind) {
                        kept.push(filter.clone());
                    } else {
                        ctx.leave_out(format!("{field}[{f}]"), format!("the {kind} filter: Braid's proxy does not apply it, and refuses a route that asks for it"));
                    }
                }
                if !kept.is_empty() {
                    out.insert(key.clone(), Value::Array(kept));
                }
            }
            "backendRefs" => {
                let mut kept = Vec::new();
                for (b, backend) in list(ctx, Some(value), &field)?.iter().enumerate() {
                    let mut backend = mapping(ctx, backend, &format!("{field}[{b}]"))?.clone();
                    if backend.remove("filters").is_some() {
                        ctx.leave_out(
                            format!("{field}[{b}].filters"),
                            "filters on a single backend: Braid's proxy does not apply them",
                        );
                    }
                    kept.push(Value::Object(backend));
                }
                out.insert(key.clone(), Value::Array(kept));
            }
            other => ctx.leave_out(
                field,
                format!(
                    "the rule field {other}: not in the Gateway API's standard channel that Braid routes"
                ),
            ),
        }
    }
    Ok(out)
}
