//! What a configuration must satisfy beyond its shape: [`Config::validate`], run on every file
//! the proxy reads and on every configuration it composes from discovered parts, so the proxy
//! never applies one it cannot serve.

use std::collections::HashSet;
use std::time::Duration;

use super::egress::{EgressConfig, ExternalProtocol, valid_host_pattern};
use super::{
    Config, ConfigError, EndpointPod, HashOn, HeaderValueMatch, PathMatch, PolicyConfig, PolicySource,
    RetryBudgetConfig, RouteConfig,
};
use crate::contract::env;
use crate::identity::SpiffeId;

impl Config {
    /// Discovery is mTLS with the workload certificate: without an identity there is none.
    /// The proxy checks it once the identity from the environment is known, at start-up.
    pub fn check_discovery_identity(&self) -> Result<(), ConfigError> {
        if self.discovery.is_some() && self.identity.is_none() {
            return Err(ConfigError::Invalid {
                path: "discovery".into(),
                reason: format!(
                    "discovery needs this proxy's identity for mTLS to the discovery server: add identity: \
                     to the file, or run with the {}, {}, {} and {} environment",
                    env::TRUST_DOMAIN,
                    env::POD_NAMESPACE,
                    env::SERVICE_ACCOUNT,
                    env::IDENTITY_ADDR,
                ),
            });
        }
        Ok(())
    }

    /// What `parse` checks; also run on configurations composed from discovered parts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |path: String, reason: &str| Err(ConfigError::Invalid { path, reason: reason.to_owned() });
        if let Some(tracing) = &self.tracing {
            if let Err(reason) = tracing.endpoint() {
                return invalid("tracing.collector".into(), &reason);
            }
            if !(0.0..=100.0).contains(&tracing.sampling_percent) {
                return invalid("tracing.samplingPercent".into(), "must be between 0 and 100");
            }
        }
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
        if let Some(per_client) = self.limits.max_connections_per_client
            && !(1..=self.limits.max_connections).contains(&per_client)
        {
            return invalid("limits.maxConnectionsPerClient".into(), "must be between 1 and maxConnections");
        }
        if self.limits.idle_timeout < Duration::from_millis(100) {
            return invalid("limits.idleTimeout".into(), "must be at least 100ms");
        }
        if self.limits.max_mirrors_in_flight == 0 {
            return invalid("limits.maxMirrorsInFlight".into(), "must be at least 1");
        }
        if self.limits.mirror_timeout < Duration::from_millis(1) {
            return invalid("limits.mirrorTimeout".into(), "must be at least 1ms");
        }
        if let Some(identity) = &self.identity {
            if SpiffeId::parse(&identity.identity).is_none() {
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
            if discovery.idle_timeout < Duration::from_secs(1) {
                return invalid("discovery.idleTimeout".into(), "must be at least 1s");
            }
            if let Some(policy) = &discovery.startup_policy {
                validate_policy("discovery.startupPolicy", policy)?;
            }
        }
        if let Some(policy) = &self.inbound.policy {
            validate_policy("inbound.policy", policy)?;
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
            if let Some(egress) = &service.egress {
                if !service.backends.is_empty() || !service.routes.is_empty() {
                    return invalid(
                        at(".egress"),
                        "an external destination has no backends or routes: its connections go to the address the app connected to",
                    );
                }
                validate_egress(egress, &|field| at(&format!(".egress{field}")))?;
                continue;
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
                    if endpoint.local && endpoint.meshed {
                        return invalid(
                            at(&format!(".backends[{b}].endpoints[{e}].local")),
                            "a local endpoint is this pod's own app, reached directly: it cannot be meshed too",
                        );
                    }
                    if let Some(pod) = &endpoint.pod {
                        validate_endpoint_pod(pod, &|field| {
                            at(&format!(".backends[{b}].endpoints[{e}].pod{field}"))
                        })?;
                    }
                    let Some(identity) = &endpoint.identity else { continue };
                    let at = at(&format!(".backends[{b}].endpoints[{e}].identity"));
                    if SpiffeId::parse(identity).is_none() {
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
            if service.max_requests.is_some_and(|max| !(1..=1_000_000).contains(&max)) {
                return invalid(at(".maxRequests"), "must be from 1 to 1000000");
            }
            if service.max_requests_per_connection.is_some_and(|max| !(1..=1_000_000).contains(&max)) {
                return invalid(at(".maxRequestsPerConnection"), "must be from 1 to 1000000");
            }
            if service.max_connections.is_some_and(|max| !(1..=1_000_000).contains(&max)) {
                return invalid(at(".maxConnections"), "must be from 1 to 1000000");
            }
            if service.max_pending_requests.is_some_and(|max| max > 1_000_000) {
                return invalid(at(".maxPendingRequests"), "must be from 0 to 1000000");
            }
            if service.max_pending_requests.is_some() && service.max_connections.is_none() {
                return invalid(
                    at(".maxPendingRequests"),
                    "requests wait for a connection only under maxConnections: set it too",
                );
            }
            if lb.max_ejected_percent > 100 {
                return invalid(at(".loadBalancer.maxEjectedPercent"), "must be between 0 and 100");
            }
            if let Some(HashOn::Header(name) | HashOn::Cookie(name)) = &lb.hash_on
                && (name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err())
            {
                return invalid(at(".loadBalancer.hashOn"), "the header or cookie name must be a token");
            }
            validate_budget(&service.retry_budget, &|field| at(&format!(".retryBudget{field}")))?;
        }
        Ok(())
    }
}

fn validate_egress(egress: &EgressConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let invalid = |path: String, reason: &str| Err(ConfigError::Invalid { path, reason: reason.to_owned() });
    let mut names = HashSet::new();
    for (i, service) in egress.services.iter().enumerate() {
        let at = |field: &str| at(&format!(".services[{i}]{field}"));
        if service.name.is_empty() || !names.insert(service.name.as_str()) {
            return invalid(at(".name"), "must be a name no other external service of this port has");
        }
        if let Some(h) = service.hosts.iter().position(|host| !valid_host_pattern(host)) {
            return invalid(
                at(&format!(".hosts[{h}]")),
                "must be a lower-case DNS name, or *. and one (like *.example.com)",
            );
        }
        let by_name = !service.hosts.is_empty();
        match service.protocol {
            ExternalProtocol::Tcp if by_name => {
                return invalid(
                    at(".hosts"),
                    "a tcp service is told by its addresses: a TCP connection names no host",
                );
            }
            ExternalProtocol::Tcp if service.addresses.is_empty() => {
                return invalid(at(".addresses"), "a tcp service needs addresses");
            }
            _ if !by_name && service.addresses.is_empty() => {
                return invalid(at(""), "needs hosts or addresses to be told apart");
            }
            _ => {}
        }
        let Some(tls) = &service.tls else { continue };
        if service.protocol != ExternalProtocol::Http {
            return invalid(
                at(".tls"),
                "TLS is originated for plaintext HTTP only; tls and tcp connections pass as they are",
            );
        }
        if tls.port == 0 {
            return invalid(at(".tls.port"), "must be between 1 and 65535");
        }
        if tls.server_name.as_deref().is_some_and(|name| name.starts_with("*.") || !valid_host_pattern(name))
        {
            return invalid(at(".tls.serverName"), "must be a lower-case DNS name");
        }
        if tls.ca_bundle.as_deref().is_some_and(|pem| !pem.contains("-----BEGIN CERTIFICATE-----")) {
            return invalid(at(".tls.caBundle"), "must hold PEM certificates (-----BEGIN CERTIFICATE-----)");
        }
    }
    Ok(())
}

/// The pod's names become metric label values: Kubernetes names (lowercase letters, digits, `-`,
/// `.`), which need no escaping and cannot be mistaken for anything else in the text format.
fn validate_endpoint_pod(pod: &EndpointPod, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let names = [
        (".namespace", pod.namespace.as_str(), true),
        (".name", pod.name.as_str(), true),
        (".serviceAccount", pod.service_account.as_str(), false),
        (".workload.name", pod.workload.as_ref().map_or("", |w| w.name.as_str()), pod.workload.is_some()),
        (".podTemplateHash", pod.pod_template_hash.as_str(), false),
    ];
    for (field, name, required) in names {
        if name.is_empty() && !required {
            continue;
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(ConfigError::Invalid {
                path: at(field),
                reason: "must be a Kubernetes name (lowercase letters, digits, '-' and '.', at most 253)"
                    .to_owned(),
            });
        }
    }
    Ok(())
}

fn validate_policy(at: &str, policy: &PolicyConfig) -> Result<(), ConfigError> {
    let invalid = |path: String, reason: String| Err(ConfigError::Invalid { path, reason });
    for (p, probe) in policy.probes.iter().enumerate() {
        if probe.port == 0 {
            return invalid(format!("{at}.probes[{p}].port"), "must be between 1 and 65535".into());
        }
        if !probe.path.starts_with('/') {
            return invalid(format!("{at}.probes[{p}].path"), format!("{:?} must start with /", probe.path));
        }
    }
    if let Some(PolicySource::MeshPolicies(names)) = &policy.source
        && let Some((n, name)) =
            names.iter().enumerate().find(|(_, name)| name.is_empty() || name.contains(','))
    {
        // The names are joined with commas into one label value.
        return invalid(
            format!("{at}.source.meshPolicies[{n}]"),
            format!("{name:?} is not a MeshPolicy name (one or more characters, no commas)"),
        );
    }
    for (r, rule) in policy.rules.iter().enumerate() {
        for (f, source) in rule.from.iter().enumerate() {
            let given =
                [source.service_account.is_some(), source.namespace.is_some(), source.identity.is_some()];
            if given.iter().filter(|&&g| g).count() != 1 {
                return invalid(
                    format!("{at}.rules[{r}].from[{f}]"),
                    "name exactly one of serviceAccount, namespace or identity".into(),
                );
            }
            if let Some(identity) = &source.identity
                && SpiffeId::parse(identity).is_none()
            {
                return invalid(
                    format!("{at}.rules[{r}].from[{f}].identity"),
                    "must be spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT".into(),
                );
            }
        }
        for (t, operation) in rule.to.iter().enumerate() {
            for path in &operation.paths {
                if !path.starts_with('/') {
                    return invalid(
                        format!("{at}.rules[{r}].to[{t}].paths"),
                        format!("{path:?} must start with /"),
                    );
                }
            }
            for method in &operation.methods {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    return invalid(
                        format!("{at}.rules[{r}].to[{t}].methods"),
                        format!("{method:?} is not an HTTP method"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn validate_budget(budget: &RetryBudgetConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let invalid = |path: String, reason: &str| Err(ConfigError::Invalid { path, reason: reason.to_owned() });
    if !(0.0..=1000.0).contains(&budget.percent) {
        return invalid(at(".percent"), "must be between 0 and 1000");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&budget.ttl) {
        return invalid(at(".ttl"), "must be between 1s and 60s");
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
    for (m, matching) in route.matches.iter().enumerate() {
        for (q, query) in matching.query_params.iter().enumerate() {
            let at = |field: &str| at(&format!(".matches[{m}].queryParams[{q}]{field}"));
            if query.name.is_empty() {
                return invalid(at(".name"), "must not be empty".into());
            }
            if let HeaderValueMatch::Regex(pattern) = &query.value
                && let Err(error) = regex::Regex::new(pattern)
            {
                return invalid(at(".regex"), format!("not a regular expression: {error}"));
            }
        }
    }
    for (field, edits) in
        [("requestHeaders", &route.request_headers), ("responseHeaders", &route.response_headers)]
    {
        let Some(edits) = edits else { continue };
        let pairs = edits.set.iter().map(|p| ("set", p)).chain(edits.add.iter().map(|p| ("add", p)));
        for (i, (kind, pair)) in pairs.enumerate() {
            if http::HeaderName::from_bytes(pair.name.as_bytes()).is_err() {
                return invalid(
                    at(&format!(".{field}.{kind}")),
                    format!("{:?} is not a header name", pair.name),
                );
            }
            if http::HeaderValue::from_str(&pair.value).is_err() {
                return invalid(
                    at(&format!(".{field}.{kind}")),
                    format!("the value of {:?} is not a header value (entry {i})", pair.name),
                );
            }
        }
        for name in &edits.remove {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return invalid(at(&format!(".{field}.remove")), format!("{name:?} is not a header name"));
            }
        }
    }
    if let Some(budget) = &route.retry_budget {
        validate_budget(budget, &|field| at(&format!(".retryBudget{field}")))?;
    }
    if let Some(limit) = &route.rate_limit {
        if !(1..=1_000_000).contains(&limit.requests_per_second) {
            return invalid(at(".rateLimit.requestsPerSecond"), "must be from 1 to 1000000".into());
        }
        if !(1..=1_000_000).contains(&limit.burst) {
            return invalid(at(".rateLimit.burst"), "must be from 1 to 1000000".into());
        }
    }
    if let Some(redirect) = &route.redirect {
        if !matches!(redirect.status, 301 | 302 | 303 | 307 | 308) {
            return invalid(
                at(".redirect.status"),
                format!("{} is not 301, 302, 303, 307 or 308", redirect.status),
            );
        }
        if let Some(scheme) = &redirect.scheme
            && !matches!(scheme.as_str(), "http" | "https")
        {
            return invalid(at(".redirect.scheme"), format!("{scheme:?} is not http or https"));
        }
    }
    let paths = [
        ("redirect", route.redirect.as_ref().and_then(|r| r.path.as_ref())),
        ("rewrite", route.rewrite.as_ref().and_then(|r| r.path.as_ref())),
    ];
    for (field, path) in paths {
        let text = match path {
            Some(super::PathRewriteConfig::ReplaceFullPath(p)) => p,
            Some(super::PathRewriteConfig::ReplacePrefixMatch { with, .. }) => with,
            None => continue,
        };
        if !text.starts_with('/') {
            return invalid(at(&format!(".{field}.path")), format!("{text:?} must start with /"));
        }
    }
    let hosts = [
        ("redirect", route.redirect.as_ref().and_then(|r| r.hostname.as_ref())),
        ("rewrite", route.rewrite.as_ref().and_then(|r| r.hostname.as_ref())),
    ];
    for (field, host) in hosts {
        if let Some(host) = host
            && (host.is_empty()
                || http::uri::Authority::try_from(host.as_str()).is_err()
                || host.contains(':'))
        {
            return invalid(at(&format!(".{field}.hostname")), format!("{host:?} is not a host name"));
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
