//! The `braid` command line's library. `check` tells whether the mesh in a cluster is healthy;
//! `stat` how its workloads are doing, from their proxies' counters; `routes` and `identity` what
//! one pod's proxy holds (its routing table, its certificate); `diagnose` which configuration
//! mistakes a namespace has.
//!
//! `braid convert`: the routing resources of Istio (VirtualService, DestinationRule) and Linkerd
//! (ServiceProfile, policy.linkerd.io HTTPRoute) turned into Braid's MeshRoute and the Gateway
//! API's HTTPRoute. A pure function from YAML text to YAML text plus the list of what could not
//! be carried over, so every mapping is covered by a golden test.

pub mod check;
pub mod diagnose;
pub mod duration;
pub mod identity;
mod istio;
mod linkerd;
mod names;
pub mod proxy_admin;
pub mod routes;
pub mod stat;

use std::fmt;

use braid_crds::MeshRoute;
use serde_json::Value;

/// What the sources do not say and the user may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Tries, the first included, of a retryable ServiceProfile route. Linkerd bounds retries
    /// by the budget only; a MeshRoute also needs a count.
    pub linkerd_attempts: i32,
    /// Time for each try of a retryable ServiceProfile route, like "2s"; ServiceProfiles have
    /// no per-try timeout, so none unless given.
    pub linkerd_per_try_timeout: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { linkerd_attempts: 3, linkerd_per_try_timeout: None }
    }
}

/// Input that cannot be converted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("document {document} (line {line}): not valid YAML: {reason}")]
    Yaml { document: usize, line: usize, reason: String },
    #[error("document {document} (line {line}){object}: {field}: {reason}")]
    Invalid { document: usize, line: usize, object: Object, field: String, reason: String },
    #[error("the input holds no YAML document")]
    Empty,
    #[error("the option {option}: {reason}")]
    Option { option: &'static str, reason: String },
}

/// The source object a message is about, like "VirtualService shop/reviews".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object(pub String);

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, ", {}", self.0) }
    }
}

/// One thing of a source object that the output does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// 1-based index of the source document (blank documents are not counted).
    pub document: usize,
    /// "VirtualService shop/reviews".
    pub object: String,
    /// Path of the field in the source object, like "spec.http[0].corsPolicy".
    pub field: String,
    /// Why, and what to do instead when there is something.
    pub why: String,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {}, {}: not carried over: {}: {}",
            self.document, self.object, self.field, self.why
        )
    }
}

/// A converted object.
#[derive(Debug, Clone)]
pub enum Body {
    MeshRoute(Box<MeshRoute>),
    /// A `gateway.networking.k8s.io/v1` HTTPRoute, in the operator's own type: what Braid reads.
    HttpRoute(Box<braid_operator::gateway::types::HTTPRoute>),
}

/// One output document and what its source lost on the way.
#[derive(Debug, Clone)]
pub struct Converted {
    pub document: usize,
    pub object: String,
    pub body: Body,
    pub left_out: Vec<LeftOut>,
}

/// The output documents, in input order, and everything not carried over (also the items that
/// concern no output document, like a VirtualService that only routes an ingress gateway).
#[derive(Debug, Clone, Default)]
pub struct Conversion {
    pub documents: Vec<Converted>,
    pub left_out: Vec<LeftOut>,
}

impl Conversion {
    /// The output: each document headed by comments naming its source and what was left out.
    pub fn to_yaml(&self) -> Result<String, ConvertError> {
        let mut out = String::new();
        for (i, doc) in self.documents.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&format!("# Converted from {} (document {}).\n", doc.object, doc.document));
            for item in &doc.left_out {
                let from =
                    if item.object == doc.object { String::new() } else { format!("{}: ", item.object) };
                out.push_str(&format!("# Not carried over: {from}{}: {}\n", item.field, item.why));
            }
            let rendered = match &doc.body {
                Body::MeshRoute(route) => serde_saphyr::to_string(route.as_ref()),
                Body::HttpRoute(route) => serde_saphyr::to_string(route.as_ref()),
            }
            .map_err(|err| invalid(doc.document, 0, &doc.object, "", format!("cannot write YAML: {err}")))?;
            out.push_str(&rendered);
            if !rendered.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// One document of the input, with the line it starts on.
pub(crate) struct Source {
    pub document: usize,
    pub line: usize,
    pub value: Value,
}

/// Accumulates what one source object loses.
pub(crate) struct Ctx {
    pub document: usize,
    pub line: usize,
    pub object: String,
    pub left_out: Vec<LeftOut>,
}

impl Ctx {
    fn new(source: &Source, object: String) -> Self {
        Self { document: source.document, line: source.line, object, left_out: Vec::new() }
    }

    pub fn leave_out(&mut self, field: impl Into<String>, why: impl Into<String>) {
        let item = LeftOut {
            document: self.document,
            object: self.object.clone(),
            field: field.into(),
            why: why.into(),
        };
        // The same rule converted for two hosts would report the same field twice.
        if !self.left_out.contains(&item) {
            self.left_out.push(item);
        }
    }

    pub fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
        invalid(self.document, self.line, &self.object, field, reason)
    }
}

fn invalid(
    document: usize,
    line: usize,
    object: &str,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> ConvertError {
    ConvertError::Invalid {
        document,
        line,
        object: Object(object.to_owned()),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Converts every document of a multi-document YAML stream.
pub fn convert(input: &str, options: &Options) -> Result<Conversion, ConvertError> {
    if options.linkerd_attempts < 1 || options.linkerd_attempts > 10 {
        return Err(ConvertError::Option {
            option: "--linkerd-attempts",
            reason: format!(
                "{} is not within 1..=10, the range of a MeshRoute's retries.attempts",
                options.linkerd_attempts
            ),
        });
    }
    if let Some(per_try) = &options.linkerd_per_try_timeout {
        duration::to_braid(per_try)
            .map_err(|reason| ConvertError::Option { option: "--linkerd-per-try-timeout", reason })?;
    }
    let sources = parse(input)?;
    if sources.is_empty() {
        // An empty file or a wrong pipe would otherwise look like a clean conversion.
        return Err(ConvertError::Empty);
    }
    let sources = expand_lists(sources);
    let mut kinds = Vec::with_capacity(sources.len());
    for source in &sources {
        kinds.push(kind_of(source)?);
    }
    let rules = istio::destination_rules(
        sources.iter().zip(&kinds).filter(|(_, k)| **k == Kind::DestinationRule).map(|(s, _)| s),
    )?;

    let mut conversion = Conversion::default();
    for (source, kind) in sources.iter().zip(&kinds) {
        let (documents, left_out) = match kind {
            Kind::VirtualService => istio::virtual_service(source, &rules)?,
            Kind::DestinationRule => continue,
            Kind::ServiceProfile => linkerd::service_profile(source, options)?,
            Kind::LinkerdHttpRoute => linkerd::http_route(source)?,
        };
        for doc in &documents {
            check(doc, source.line)?;
        }
        conversion.documents.extend(documents);
        conversion.left_out.extend(left_out);
    }
    // A DestinationRule's losses go with the MeshRoutes of its host, and to stderr either way.
    for (key, rule) in &rules.by_host {
        for doc in &mut conversion.documents {
            if let Body::MeshRoute(route) = &doc.body
                && route.spec.service == key.1
                && istio::same_namespace(route.metadata.namespace.as_deref(), key.0.as_deref())
            {
                doc.left_out.extend(rule.left_out.iter().cloned());
            }
        }
        conversion.left_out.extend(rule.left_out.iter().cloned());
    }
    conversion.left_out.sort_by_key(|item| item.document);
    Ok(conversion)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    VirtualService,
    DestinationRule,
    ServiceProfile,
    LinkerdHttpRoute,
}

fn kind_of(source: &Source) -> Result<Kind, ConvertError> {
    let err = |field: &str, reason: String| invalid(source.document, source.line, "", field, reason);
    let Some(object) = source.value.as_object() else {
        return Err(err(
            "",
            format!("a document must be a Kubernetes object (a mapping), not {}", type_name(&source.value)),
        ));
    };
    let api_version = match object.get("apiVersion") {
        Some(Value::String(v)) => v.as_str(),
        Some(other) => return Err(err("apiVersion", format!("must be a string, not {}", type_name(other)))),
        None => return Err(err("apiVersion", "missing; every Kubernetes object has one".to_owned())),
    };
    let kind = match object.get("kind") {
        Some(Value::String(v)) => v.as_str(),
        Some(other) => return Err(err("kind", format!("must be a string, not {}", type_name(other)))),
        None => return Err(err("kind", "missing; every Kubernetes object has one".to_owned())),
    };
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let version = api_version.rsplit_once('/').map_or(api_version, |(_, version)| version);
    match (group, kind) {
        ("networking.istio.io", "VirtualService") if ISTIO_VERSIONS.contains(&version) => {
            Ok(Kind::VirtualService)
        }
        ("networking.istio.io", "DestinationRule") if ISTIO_VERSIONS.contains(&version) => {
            Ok(Kind::DestinationRule)
        }
        ("linkerd.io", "ServiceProfile") if version == "v1alpha2" => Ok(Kind::ServiceProfile),
        ("policy.linkerd.io", "HTTPRoute") if LINKERD_ROUTE_VERSIONS.contains(&version) => {
            Ok(Kind::LinkerdHttpRoute)
        }
        _ => Err(err(
            "kind",
            format!(
                "{kind} ({api_version}) is not a kind braid convert reads; it reads VirtualService and DestinationRule \
                 (networking.istio.io/{}), ServiceProfile (linkerd.io/v1alpha2) and HTTPRoute (policy.linkerd.io/{})",
                ISTIO_VERSIONS.join(", "),
                LINKERD_ROUTE_VERSIONS.join(", ")
            ),
        )),
    }
}

const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
const LINKERD_ROUTE_VERSIONS: [&str; 3] = ["v1beta1", "v1beta2", "v1beta3"];

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Splits the stream on `---` lines and parses each document; blank documents are skipped and
/// not counted, so "document 2" is the second object a reader sees.
fn parse(input: &str) -> Result<Vec<Source>, ConvertError> {
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in input.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            chunks.push((i + 2, String::new()));
        } else if let Some((_, text)) = chunks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let mut sources = Vec::new();
    for (line, text) in chunks {
        let blank = text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if blank {
            continue;
        }
        let document = sources.len() + 1;
        let value: Value = serde_saphyr::from_str(&text).map_err(|err| {
            let at = err
                .location()
                .map_or(line, |l| line + usize::try_from(l.line()).unwrap_or(1).saturating_sub(1));
            ConvertError::Yaml { document, line: at, reason: yaml_reason(&err.to_string()) }
        })?;
        let first_content =
            text.lines().position(|l| !(l.trim().is_empty() || l.trim_start().starts_with('#')));
        sources.push(Source { document, line: line + first_content.unwrap_or(0), value });
    }
    Ok(sources)
}

/// The items of a `kind: List` (what `kubectl get -o yaml` writes) as documents of their own,
/// under the List's document number.
fn expand_lists(sources: Vec<Source>) -> Vec<Source> {
    let mut out = Vec::with_capacity(sources.len());
    for source in sources {
        let is_list = source.value.get("kind").and_then(Value::as_str) == Some("List")
            && source.value.get("apiVersion").and_then(Value::as_str) == Some("v1");
        match source.value.get("items").and_then(Value::as_array) {
            Some(items) if is_list => out.extend(items.iter().map(|item| Source {
                document: source.document,
                line: source.line,
                value: item.clone(),
            })),
            _ => out.push(source),
        }
    }
    out
}

/// The parser's message without its own position, which counts lines from the document's start
/// and would contradict the line of the whole stream given beside it.
fn yaml_reason(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let position = regex::Regex::new(r"^line \d+ column (\d+): (.*)$").ok();
    match position.and_then(|re| re.captures(first).map(|c| (c[1].to_owned(), c[2].to_owned()))) {
        Some((column, reason)) => format!("{reason} (column {column})"),
        None => first.to_owned(),
    }
}

/// What the cluster would do with a converted MeshRoute: read it back with the API type and run
/// the operator's validation, so the converter never writes a route Braid would refuse.
fn check(doc: &Converted, line: usize) -> Result<(), ConvertError> {
    let Body::MeshRoute(route) = &doc.body else { return Ok(()) };
    let fail = |field: String, reason: String| {
        invalid(
            doc.document,
            line,
            &doc.object,
            field,
            format!("the converted MeshRoute would be refused: {reason}"),
        )
    };
    let yaml = serde_saphyr::to_string(route.as_ref()).map_err(|err| fail(String::new(), err.to_string()))?;
    let back: MeshRoute =
        serde_saphyr::from_str(&yaml).map_err(|err| fail(String::new(), err.to_string()))?;
    if back.spec != route.spec {
        return Err(fail("spec".to_owned(), "it does not read back the same".to_owned()));
    }
    if let Some(problem) = braid_operator::meshroute::validate::validate(&back.spec).into_iter().next() {
        return Err(fail(problem.field, problem.reason));
    }
    if let Some((field, reason)) = schema_problems(&back) {
        return Err(fail(field, reason));
    }
    Ok(())
}

/// The bounds the CRD schema enforces that the operator's validation leaves to the API server.
fn schema_problems(route: &MeshRoute) -> Option<(String, String)> {
    let spec = &route.spec;
    let dns_label = regex::Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])?$").ok()?;
    if spec.service.len() > 63 || !dns_label.is_match(&spec.service) {
        return Some(("spec.service".into(), format!("{:?} is not a Service name", spec.service)));
    }
    if spec.rules.is_empty() || spec.rules.len() > 32 {
        return Some(("spec.rules".into(), format!("{} rules; a MeshRoute has 1 to 32", spec.rules.len())));
    }
    let percent = |v: i32| (0..=100).contains(&v);
    let header_name = regex::Regex::new(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$").ok()?;
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (m, matching) in rule.matches.iter().enumerate() {
            if let Some((h, header)) =
                matching.headers.iter().enumerate().find(|(_, h)| !header_name.is_match(&h.name))
            {
                return Some((
                    format!("{at}.matches[{m}].headers[{h}].name"),
                    format!("{:?} is not a header name", header.name),
                ));
            }
        }
        for (side, edits) in
            [("requestHeaders", &rule.request_headers), ("responseHeaders", &rule.response_headers)]
        {
            let names =
                edits.iter().flat_map(|e| e.set.iter().chain(&e.add).map(|v| &v.name).chain(&e.remove));
            if let Some(name) = names.into_iter().find(|n| !header_name.is_match(n)) {
                return Some((format!("{at}.{side}"), format!("{name:?} is not a header name")));
            }
        }
        if rule.matches.len() > 16 || rule.backends.is_empty() || rule.backends.len() > 16 {
            return Some((at, "a rule has at most 16 matches and 1 to 16 backends".into()));
        }
        for (b, backend) in rule.backends.iter().enumerate() {
            if let Some(service) = &backend.service
                && (service.len() > 63 || !dns_label.is_match(service))
            {
                return Some((
                    format!("{at}.backends[{b}].service"),
                    format!("{service:?} is not a Service name"),
                ));
            }
            if !percent(backend.weight) {
                return Some((
                    format!("{at}.backends[{b}].weight"),
                    format!("{} is not within 0..=100", backend.weight),
                ));
            }
            if backend.service.is_some() == backend.subset.is_some() {
                return Some((
                    format!("{at}.backends[{b}]"),
                    "names both or neither of service and subset".into(),
                ));
            }
        }
        if let Some(retries) = &rule.retries
            && !(1..=10).contains(&retries.attempts)
        {
            return Some((
                format!("{at}.retries.attempts"),
                format!("{} is not within 1..=10", retries.attempts),
            ));
        }
        if let Some(abort) = rule.fault.as_ref().and_then(|f| f.abort.as_ref())
            && !(400..=599).contains(&abort.status)
        {
            return Some((
                format!("{at}.fault.abort.status"),
                format!("{} is not within 400..=599", abort.status),
            ));
        }
    }
    None
}
