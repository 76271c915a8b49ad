//! HTTPRoutes and GRPCRoutes with a Service parent (GAMMA), in the proxy's configuration model:
//! pure functions, so what a proxy is told is tested without a cluster.
//!
//! Every match becomes one proxy route, and the routes of all the HTTPRoutes and GRPCRoutes of a
//! Service port are ordered as the Gateway API orders matches: an Exact path before a PathPrefix
//! (longer first) before a RegularExpression, then a method match, then more header matches, then
//! more query-parameter matches; ties go to the older route, then to `namespace/name`, then to
//! rule and match order. A GRPCRoute method match is the path `/service/method`, so both kinds
//! share one order.

use std::cmp::Reverse;
use std::time::Duration;

use braid_api::config::{
    FaultAbort, FaultConfig, HeaderEditsConfig, HeaderMatch, HeaderValueMatch, MatchConfig, MirrorConfig,
    PathMatch, PathRewriteConfig, RedirectConfig, RetriesConfig, RewriteConfig, RouteConfig, WeightedBackend,
};

use super::types::{
    BackendRef, Filter, GrpcRouteMatch, GrpcRouteSpec, HttpRouteMatch, HttpRouteSpec, NameValueMatch, Other,
    ParentReference,
};

/// Namespace and name.
pub type Key = (String, String);

/// The controller name in `status.parents[].controllerName` of the routes Braid handles.
pub const CONTROLLER_NAME: &str = "braid.dev/mesh";

/// Why a route, or one of its references, is not honoured: the status reason (as the Gateway API
/// names them), the field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

pub mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_KIND: &str = "InvalidKind";
    /// Braid's own: a MeshRoute routes the same Service port, and MeshRoutes win.
    pub const OVERRIDDEN: &str = "OverriddenByMeshRoute";
}

fn unsupported(field: String, message: impl Into<String>) -> Refusal {
    Refusal { reason: reasons::UNSUPPORTED_VALUE, field, message: message.into() }
}

/// Which kind of Gateway API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route as the discovery index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSpec {
    Http(HttpRouteSpec),
    Grpc(GrpcRouteSpec),
}

impl RouteSpec {
    pub fn kind(&self) -> RouteKind {
        match self {
            RouteSpec::Http(_) => RouteKind::Http,
            RouteSpec::Grpc(_) => RouteKind::Grpc,
        }
    }

    pub fn parent_refs(&self) -> &[ParentReference] {
        match self {
            RouteSpec::Http(spec) => &spec.parent_refs,
            RouteSpec::Grpc(spec) => &spec.parent_refs,
        }
    }
}

/// The Services of the route's namespace it attaches to, each with its port (`None`: every
/// port). A Service parent of another namespace (a consumer route) is not among them: see
/// `parent_refusal`.
pub fn service_parents(namespace: &str, spec: &RouteSpec) -> Vec<(Key, Option<u16>)> {
    spec.parent_refs()
        .iter()
        .filter(|p| p.is_service())
        .map(|p| {
            let target = (p.namespace.clone().unwrap_or_else(|| namespace.to_owned()), p.name.clone());
            (target, p.port.and_then(|port| u16::try_from(port).ok()))
        })
        .collect()
}

/// A route's view of what it may refer to: a consumer route (in another namespace than its
/// Service parent) may name that Service as a backend without a ReferenceGrant, since it names
/// it as its parent already (the Gateway API's mesh conformance does so); anything else needs
/// one, as for every route.
pub struct RouteLookup<'a> {
    inner: &'a dyn Lookup,
    parents: Vec<Key>,
}

impl<'a> RouteLookup<'a> {
    pub fn new(namespace: &str, spec: &RouteSpec, inner: &'a dyn Lookup) -> Self {
        let parents = service_parents(namespace, spec).into_iter().map(|(target, _)| target).collect();
        Self { inner, parents }
    }
}

impl Lookup for RouteLookup<'_> {
    fn service_exists(&self, key: &Key) -> bool {
        self.inner.service_exists(key)
    }

    fn ref_permitted(&self, kind: RouteKind, from: &str, to: &Key) -> bool {
        self.parents.contains(to) || self.inner.ref_permitted(kind, from, to)
    }
}

/// Why Braid does not take a Service parent, or `None` when it does.
pub fn parent_refusal(parent: &ParentReference) -> Option<Refusal> {
    if parent.section_name.is_some() {
        return Some(unsupported(
            "spec.parentRefs.sectionName".into(),
            "a Service parent is named by port, not sectionName",
        ));
    }
    None
}

/// The ordering key of one proxy route (smaller first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// 0 Exact, 1 PathPrefix (longer first), 2 RegularExpression.
    path_kind: u8,
    path_len: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// The route's creation time (RFC 3339), then `namespace/name`.
    created: String,
    route: String,
    rule: usize,
    matching: usize,
}

/// Where a backend name of the configuration points: namespace, Service, port.
pub type BackendSource = (String, String, u16);

/// One route translated for a Service port: its proxy routes, each with its ordering key, and
/// the backends they name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Translated {
    pub routes: Vec<(Precedence, RouteConfig)>,
    pub backends: Vec<(String, BackendSource)>,
}

/// What the translation asks about the cluster: whether a Service exists, and whether a route
/// of `from` namespace may refer to Service `to` (a ReferenceGrant).
pub trait Lookup {
    fn service_exists(&self, key: &Key) -> bool;
    fn ref_permitted(&self, kind: RouteKind, from: &str, to: &Key) -> bool;
}

/// The name a backend gets in the proxy's configuration: the Service's name when it is the
/// route's namespace and the parent's port, `name:port` on another port, `name.namespace:port`
/// in another namespace.
pub fn backend_name(route_namespace: &str, target_port: u16, source: &BackendSource) -> String {
    let (namespace, service, port) = source;
    if namespace != route_namespace {
        format!("{service}.{namespace}:{port}")
    } else if *port == target_port {
        service.clone()
    } else {
        format!("{service}:{port}")
    }
}

/// A backendRef resolved, or why it is not.
pub fn resolve_backend(
    kind: RouteKind,
    route_namespace: &str,
    backend: &BackendRef,
    field: &str,
    lookup: &dyn Lookup,
) -> Result<BackendSource, Refusal> {
    if !backend.is_service() {
        return Err(Refusal {
            reason: reasons::INVALID_KIND,
            field: field.to_owned(),
            message: format!(
                "{}/{} is not a Service: the mesh routes to Services only",
                backend.group.as_deref().unwrap_or("core"),
                backend.kind.as_deref().unwrap_or("Service")
            ),
        });
    }
    let namespace = backend.namespace.clone().unwrap_or_else(|| route_namespace.to_owned());
    let key = (namespace.clone(), backend.name.clone());
    if namespace != route_namespace && !lookup.ref_permitted(kind, route_namespace, &key) {
        return Err(Refusal {
            reason: reasons::REF_NOT_PERMITTED,
            field: field.to_owned(),
            message: format!(
                "Service {namespace}/{} is in another namespace and no ReferenceGrant there lets {}s of \
                 {route_namespace} refer to it",
                backend.name,
                kind.as_str()
            ),
        });
    }
    if !lookup.service_exists(&key) {
        return Err(Refusal {
            reason: reasons::BACKEND_NOT_FOUND,
            field: field.to_owned(),
            message: format!("Service {namespace}/{} does not exist", backend.name),
        });
    }
    let port = match backend.port {
        Some(port) => u16::try_from(port)
            .map_err(|_| unsupported(format!("{field}.port"), format!("{port} is not a port")))?,
        None => {
            return Err(unsupported(format!("{field}.port"), "a Service backend needs a port"));
        }
    };
    Ok((namespace, backend.name.clone(), port))
}

fn duration(text: &str, field: String) -> Result<Option<Duration>, Refusal> {
    let parsed = braid_crds::duration::parse_duration(text).map_err(|e| unsupported(field, e.to_string()))?;
    // "0s" turns the timeout off, as the API defines.
    Ok(Some(parsed).filter(|d| !d.is_zero()))
}

fn value_match(m: &NameValueMatch, field: &str) -> Result<HeaderValueMatch, Refusal> {
    match m.type_.as_deref() {
        None | Some("Exact") => Ok(HeaderValueMatch::Exact(m.value.clone())),
        Some("RegularExpression") => Ok(HeaderValueMatch::Regex(m.value.clone())),
        Some(other) => Err(unsupported(format!("{field}.type"), format!("{other:?} is not a match type"))),
    }
}

fn no_other(other: &Other, field: &str) -> Result<(), Refusal> {
    match other.keys().next() {
        None => Ok(()),
        Some(name) => Err(unsupported(format!("{field}.{name}"), "not supported by Braid")),
    }
}

/// What a rule's filters ask of the proxy.
#[derive(Default)]
struct Filters {
    mirror: Option<(MirrorConfig, BackendSource)>,
    request_headers: Option<HeaderEditsConfig>,
    response_headers: Option<HeaderEditsConfig>,
    redirect: Option<GatewayRedirect>,
    rewrite: Option<GatewayRewrite>,
}

/// A path modifier as the Gateway API spells it.
#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayPath {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayRedirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<GatewayPath>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayRewrite {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<GatewayPath>,
}

fn settings<T: serde::de::DeserializeOwned>(
    value: Option<&serde_json::Value>,
    field: &str,
) -> Result<T, Refusal> {
    let value = value.ok_or_else(|| unsupported(field.to_owned(), "the filter's settings are missing"))?;
    serde_json::from_value(value.clone()).map_err(|e| unsupported(field.to_owned(), e.to_string()))
}

/// A path modifier for a match whose path is `matched` (a prefix; `None`: every path).
fn path_rewrite(
    path: &GatewayPath,
    matched: Option<&PathMatch>,
    field: &str,
) -> Result<PathRewriteConfig, Refusal> {
    match (path.type_.as_str(), &path.replace_full_path, &path.replace_prefix_match) {
        ("ReplaceFullPath", Some(full), _) => Ok(PathRewriteConfig::ReplaceFullPath(full.clone())),
        ("ReplacePrefixMatch", _, Some(with)) => match matched {
            None => Ok(PathRewriteConfig::ReplacePrefixMatch { prefix: "/".into(), with: with.clone() }),
            Some(PathMatch::Prefix(prefix)) => {
                Ok(PathRewriteConfig::ReplacePrefixMatch { prefix: prefix.clone(), with: with.clone() })
            }
            Some(_) => {
                Err(unsupported(format!("{field}.path"), "ReplacePrefixMatch needs a PathPrefix match"))
            }
        },
        (other, _, _) => {
            Err(unsupported(format!("{field}.path.type"), format!("{other:?} without its value")))
        }
    }
}

/// The redirect and rewrite of a rule's filters for one of its matches.
fn redirect_and_rewrite(
    filters: &Filters,
    matched: Option<&PathMatch>,
    field: &str,
) -> Result<(Option<RedirectConfig>, Option<RewriteConfig>), Refusal> {
    let redirect = match &filters.redirect {
        None => None,
        Some(r) => Some(RedirectConfig {
            scheme: r.scheme.clone(),
            hostname: r.hostname.clone(),
            port: r.port,
            path: r
                .path
                .as_ref()
                .map(|p| path_rewrite(p, matched, &format!("{field}.requestRedirect")))
                .transpose()?,
            status: r.status_code.unwrap_or(302),
        }),
    };
    let rewrite = match &filters.rewrite {
        None => None,
        Some(r) => Some(RewriteConfig {
            hostname: r.hostname.clone(),
            path: r
                .path
                .as_ref()
                .map(|p| path_rewrite(p, matched, &format!("{field}.urlRewrite")))
                .transpose()?,
        }),
    };
    Ok((redirect, rewrite))
}

/// A RequestHeaderModifier or ResponseHeaderModifier as the proxy's header edits.
fn header_edits(value: Option<&serde_json::Value>, field: &str) -> Result<HeaderEditsConfig, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Modifier {
        #[serde(default)]
        set: Vec<braid_api::config::HeaderValueConfig>,
        #[serde(default)]
        add: Vec<braid_api::config::HeaderValueConfig>,
        #[serde(default)]
        remove: Vec<String>,
    }
    let value = value.ok_or_else(|| unsupported(field.to_owned(), "the filter's settings are missing"))?;
    let modifier: Modifier =
        serde_json::from_value(value.clone()).map_err(|e| unsupported(field.to_owned(), e.to_string()))?;
    Ok(HeaderEditsConfig { set: modifier.set, add: modifier.add, remove: modifier.remove })
}

/// What a rule's filters ask for, or the first filter the proxy cannot apply.
fn filters(
    kind: RouteKind,
    namespace: &str,
    list: &[Filter],
    field: &str,
    target_port: u16,
    lookup: &dyn Lookup,
) -> Result<Filters, Refusal> {
    let mut out = Filters::default();
    for (f, filter) in list.iter().enumerate() {
        let at = format!("{field}[{f}]");
        match (filter.type_.as_str(), &filter.request_mirror) {
            ("RequestHeaderModifier", _) if out.request_headers.is_none() => {
                let field = format!("{at}.requestHeaderModifier");
                out.request_headers = Some(header_edits(filter.other.get("requestHeaderModifier"), &field)?);
            }
            ("RequestRedirect", _) if out.redirect.is_none() => {
                out.redirect =
                    Some(settings(filter.other.get("requestRedirect"), &format!("{at}.requestRedirect"))?);
            }
            ("URLRewrite", _) if out.rewrite.is_none() => {
                out.rewrite = Some(settings(filter.other.get("urlRewrite"), &format!("{at}.urlRewrite"))?);
            }
            ("ResponseHeaderModifier", _) if out.response_headers.is_none() => {
                let field = format!("{at}.responseHeaderModifier");
                out.response_headers =
                    Some(header_edits(filter.other.get("responseHeaderModifier"), &field)?);
            }
            ("RequestMirror", Some(request)) if out.mirror.is_none() => {
                // An unresolvable mirror is reported in ResolvedRefs (status.rs); the rule routes
                // without it.
                let Ok(source) = resolve_backend(
                    kind,
                    namespace,
                    &request.backend_ref,
                    &format!("{at}.requestMirror.backendRef"),
                    lookup,
                ) else {
                    continue;
                };
                let percent = match (&request.percent, &request.fraction) {
                    (Some(percent), _) => f64::from(*percent),
                    (None, Some(fraction)) => {
                        let denominator = fraction.denominator.unwrap_or(100);
                        if denominator <= 0 {
                            return Err(unsupported(
                                format!("{at}.requestMirror.fraction.denominator"),
                                "must be more than 0",
                            ));
                        }
                        100.0 * f64::from(fraction.numerator) / f64::from(denominator)
                    }
                    (None, None) => 100.0,
                };
                let name = backend_name(namespace, target_port, &source);
                out.mirror = Some((MirrorConfig { backend: name, percent }, source));
            }
            ("RequestMirror", Some(_)) => {
                return Err(unsupported(at, "Braid mirrors to one backend per rule"));
            }
            (other, _) => {
                return Err(unsupported(
                    format!("{at}.type"),
                    format!("the {other} filter is not applied by this version of the proxy"),
                ));
            }
        }
    }
    Ok(out)
}

/// The weighted backends of a rule: the resolvable ones, and the refusal of each other one.
/// A rule whose backends are all unresolvable (or weigh 0, or that has none) answers 500, as the
/// API requires: the proxy aborts it.
#[allow(clippy::too_many_arguments)]
fn weighted(
    kind: RouteKind,
    namespace: &str,
    refs: &[BackendRef],
    field: &str,
    target: &str,
    target_port: u16,
    lookup: &dyn Lookup,
    backends: &mut Vec<(String, BackendSource)>,
) -> Result<(Vec<WeightedBackend>, Option<FaultConfig>), Refusal> {
    let mut list = Vec::new();
    for (b, backend) in refs.iter().enumerate() {
        let at = format!("{field}[{b}]");
        no_other(&backend.other, &at)?;
        if let Some((f, filter)) = backend.filters.iter().enumerate().next() {
            return Err(unsupported(
                format!("{at}.filters[{f}].type"),
                format!(
                    "{} filters on a single backend are not applied by this version of the proxy",
                    filter.type_
                ),
            ));
        }
        let weight = backend.weight.unwrap_or(1);
        let weight =
            u32::try_from(weight).map_err(|_| unsupported(format!("{at}.weight"), "must not be negative"))?;
        // An unresolvable backend is reported in ResolvedRefs (status.rs) and left out here.
        if let Ok(source) = resolve_backend(kind, namespace, backend, &at, lookup) {
            let name = backend_name(namespace, target_port, &source);
            backends.push((name.clone(), source));
            list.push(WeightedBackend { name, weight });
        }
    }
    if list.iter().any(|b| b.weight > 0) {
        return Ok((list, None));
    }
    let abort = FaultConfig { delay: None, abort: Some(FaultAbort { status: 500, percent: 100.0 }) };
    Ok((vec![WeightedBackend { name: target.to_owned(), weight: 1 }], Some(abort)))
}

/// The proxy routes of route `namespace/name` (created at `created`, RFC 3339) for Service
/// `target` (its namespace and name: another namespace for a consumer route) on `port`, or the
/// first field the proxy cannot apply.
pub fn translate(
    namespace: &str,
    name: &str,
    created: &str,
    spec: &RouteSpec,
    target: &Key,
    port: u16,
    lookup: &dyn Lookup,
) -> Result<Translated, Refusal> {
    let kind = spec.kind();
    let mut out = Translated::default();
    let lookup = &RouteLookup::new(namespace, spec, lookup);
    // The target itself, for the 500 of a rule without backends.
    let itself: BackendSource = (target.0.clone(), target.1.clone(), port);
    let target = &backend_name(namespace, port, &itself);
    out.backends.push((target.clone(), itself));
    let precedence = |path: &Option<PathMatch>, method: bool, headers: usize, query: usize, rule, m| {
        let (path_kind, path_len) = match path {
            Some(PathMatch::Exact(p)) => (0, p.len()),
            Some(PathMatch::Prefix(p)) => (1, p.len()),
            Some(PathMatch::Regex(p)) => (2, p.len()),
            None => (1, 1),
        };
        Precedence {
            path_kind,
            path_len: Reverse(path_len),
            method: Reverse(method),
            headers: Reverse(headers),
            query: Reverse(query),
            created: created.to_owned(),
            route: format!("{namespace}/{name}"),
            rule,
            matching: m,
        }
    };
    match spec {
        RouteSpec::Http(spec) => {
            for (r, rule) in spec.rules.iter().enumerate() {
                let at = format!("spec.rules[{r}]");
                no_other(&rule.other, &at)?;
                let mut rule_filters =
                    filters(kind, namespace, &rule.filters, &format!("{at}.filters"), port, lookup)?;
                let (mirror, request_headers, response_headers) = (
                    rule_filters.mirror.take(),
                    rule_filters.request_headers.take(),
                    rule_filters.response_headers.take(),
                );
                let (backends, fault) = weighted(
                    kind,
                    namespace,
                    &rule.backend_refs,
                    &format!("{at}.backendRefs"),
                    target,
                    port,
                    lookup,
                    &mut out.backends,
                )?;
                let (timeout, retries) = match &rule.timeouts {
                    None => (None, None),
                    Some(t) => {
                        let request = match &t.request {
                            Some(text) => duration(text, format!("{at}.timeouts.request"))?,
                            None => None,
                        };
                        let backend = match &t.backend_request {
                            Some(text) => duration(text, format!("{at}.timeouts.backendRequest"))?,
                            None => None,
                        };
                        // backendRequest bounds each request to a backend: one try, with its timeout.
                        let retries = backend.map(|per_try| RetriesConfig {
                            attempts: 1,
                            per_try_timeout: Some(per_try),
                            retry_on: Vec::new(),
                        });
                        (request, retries)
                    }
                };
                let mut mirror_config = None;
                if let Some((config, source)) = mirror {
                    out.backends.push((config.backend.clone(), source));
                    mirror_config = Some(config);
                }
                let default_match = [HttpRouteMatch::default()];
                let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
                for (m, matching) in matches.iter().enumerate() {
                    let config = http_match(matching, &format!("{at}.matches[{m}]"))?;
                    let key = precedence(
                        &config.path,
                        config.method.is_some(),
                        config.headers.len(),
                        matching.query_params.len(),
                        r,
                        m,
                    );
                    let (redirect, rewrite) =
                        redirect_and_rewrite(&rule_filters, config.path.as_ref(), &format!("{at}.filters"))?;
                    out.routes.push((
                        key,
                        RouteConfig {
                            name: Some(rule.name.clone().unwrap_or_else(|| format!("{name}-{r}"))),
                            matches: vec![config],
                            backends: backends.clone(),
                            timeout,
                            retries: retries.clone(),
                            // A redirect answers every request itself: a rule without backends is fine.
                            fault: if redirect.is_some() { None } else { fault.clone() },
                            mirror: mirror_config.clone(),
                            request_headers: request_headers.clone(),
                            response_headers: response_headers.clone(),
                            redirect,
                            rewrite,
                            // The Gateway API has no rate limit or retry budget field.
                            rate_limit: None,
                            retry_budget: None,
                        },
                    ));
                }
            }
        }
        RouteSpec::Grpc(spec) => {
            for (r, rule) in spec.rules.iter().enumerate() {
                let at = format!("spec.rules[{r}]");
                no_other(&rule.other, &at)?;
                let Filters { mirror, request_headers, response_headers, .. } =
                    filters(kind, namespace, &rule.filters, &format!("{at}.filters"), port, lookup)?;
                let (backends, fault) = weighted(
                    kind,
                    namespace,
                    &rule.backend_refs,
                    &format!("{at}.backendRefs"),
                    target,
                    port,
                    lookup,
                    &mut out.backends,
                )?;
                let mut mirror_config = None;
                if let Some((config, source)) = mirror {
                    out.backends.push((config.backend.clone(), source));
                    mirror_config = Some(config);
                }
                let default_match = [GrpcRouteMatch::default()];
                let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
                for (m, matching) in matches.iter().enumerate() {
                    let config = grpc_match(matching, &format!("{at}.matches[{m}]"))?;
                    let key = precedence(&config.path, false, config.headers.len(), 0, r, m);
                    out.routes.push((
                        key,
                        RouteConfig {
                            name: Some(rule.name.clone().unwrap_or_else(|| format!("{name}-{r}"))),
                            matches: vec![config],
                            backends: backends.clone(),
                            timeout: None,
                            retries: None,
                            fault: fault.clone(),
                            mirror: mirror_config.clone(),
                            request_headers: request_headers.clone(),
                            response_headers: response_headers.clone(),
                            ..RouteConfig::default()
                        },
                    ));
                }
            }
        }
    }
    out.backends.sort();
    out.backends.dedup();
    Ok(out)
}

fn headers(list: &[NameValueMatch], field: &str) -> Result<Vec<HeaderMatch>, Refusal> {
    list.iter()
        .enumerate()
        .map(|(h, header)| {
            Ok(HeaderMatch {
                // Header names are case-insensitive; the proxy compares them lower-cased.
                name: header.name.to_ascii_lowercase(),
                value: value_match(header, &format!("{field}.headers[{h}]"))?,
            })
        })
        .collect()
}

fn http_match(matching: &HttpRouteMatch, field: &str) -> Result<MatchConfig, Refusal> {
    let path = match &matching.path {
        None => None,
        Some(path) => {
            let value = path.value.clone().unwrap_or_else(|| "/".to_owned());
            Some(match path.type_.as_deref() {
                None | Some("PathPrefix") => PathMatch::Prefix(value),
                Some("Exact") => PathMatch::Exact(value),
                Some("RegularExpression") => PathMatch::Regex(value),
                Some(other) => {
                    return Err(unsupported(
                        format!("{field}.path.type"),
                        format!("{other:?} is not a path match"),
                    ));
                }
            })
        }
    };
    // PathPrefix "/" matches every path: the same as no path match, and cheaper for the proxy.
    let path = path.filter(|p| *p != PathMatch::Prefix("/".to_owned()));
    let query_params = matching
        .query_params
        .iter()
        .enumerate()
        .map(|(q, query)| {
            Ok(HeaderMatch {
                name: query.name.clone(),
                value: value_match(query, &format!("{field}.queryParams[{q}]"))?,
            })
        })
        .collect::<Result<_, Refusal>>()?;
    Ok(MatchConfig {
        path,
        method: matching.method.clone(),
        headers: headers(&matching.headers, field)?,
        query_params,
    })
}

fn grpc_match(matching: &GrpcRouteMatch, field: &str) -> Result<MatchConfig, Refusal> {
    let path = match &matching.method {
        None => None,
        Some(method) => {
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|m| !m.is_empty());
            Some(match (method.type_.as_deref(), service, name) {
                (None | Some("Exact"), Some(service), Some(name)) => {
                    PathMatch::Exact(format!("/{service}/{name}"))
                }
                (None | Some("Exact"), Some(service), None) => PathMatch::Prefix(format!("/{service}")),
                (None | Some("Exact"), None, Some(name)) => {
                    PathMatch::Regex(format!("/[^/]+/{}", regex_escape(name)))
                }
                (Some("RegularExpression"), service, name) => {
                    PathMatch::Regex(format!("/{}/{}", service.unwrap_or("[^/]+"), name.unwrap_or("[^/]+")))
                }
                (_, None, None) => {
                    return Err(unsupported(format!("{field}.method"), "name a service, a method or both"));
                }
                (Some(other), _, _) => {
                    return Err(unsupported(
                        format!("{field}.method.type"),
                        format!("{other:?} is not a match type"),
                    ));
                }
            })
        }
    };
    Ok(MatchConfig {
        path,
        method: None,
        headers: headers(&matching.headers, field)?,
        ..MatchConfig::default()
    })
}

/// gRPC method names are identifiers (`[A-Za-z_][A-Za-z_0-9]*`, the CRD checks): nothing to
/// escape but a stray dot.
fn regex_escape(text: &str) -> String {
    text.replace('.', "\\.")
}
