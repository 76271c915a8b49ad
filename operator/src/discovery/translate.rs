//! MeshRoute rules and MeshPolicies in the proxy's configuration model: pure functions, so what a
//! proxy is told is tested without a cluster.

use std::collections::BTreeMap;

use braid_api::config::{
    Algorithm, AuthorizationRuleConfig, DefaultInboundPolicy, FaultAbort, FaultConfig, FaultDelay, HashOn,
    HeaderEditsConfig, HeaderMatch, HeaderValueConfig, HeaderValueMatch, LoadBalancerConfig, MatchConfig,
    MirrorConfig, MtlsMode as ProxyMtls, OperationConfig, PathMatch, PolicyConfig, PolicySource, ProbeConfig,
    RateLimitConfig, RetriesConfig, RetryBudgetConfig, RetryOn, RouteConfig, ServiceAccountConfig,
    SourceConfig, WeightedBackend,
};
use braid_crds::{
    MeshPolicySpec,
    meshpolicy::MtlsMode,
    meshroute::{self, PathMatchType, RouteRule, ValueMatchType},
};

/// A rule the proxy cannot apply as written. The route is then not programmed, and its status
/// says why, rather than the proxies routing differently from what the route asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Unsupported {
    pub field: String,
    pub reason: String,
}

/// The name of the backend a MeshRoute backend resolves to in the proxy's configuration.
pub fn backend_name(target: &str, backend: &meshroute::Backend, default_port: u16) -> String {
    let port = backend.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(default_port);
    match (&backend.service, &backend.subset) {
        (Some(service), _) if port == default_port => service.clone(),
        (Some(service), _) => format!("{service}:{port}"),
        (None, subset) => subset_name(target, subset.as_ref().unwrap_or(&BTreeMap::new())),
    }
}

/// `reviews[version=v2]`: a subset of the target's pods.
pub fn subset_name(target: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{target}[{}]", labels.join(","))
}

fn duration(text: &str, field: &str) -> Result<std::time::Duration, Unsupported> {
    braid_crds::duration::parse_duration(text)
        .map_err(|e| Unsupported { field: field.to_owned(), reason: e.to_string() })
}

/// One rule of route `route_name` (rule index `index`) for target Service `target` on `port`.
pub fn route_rule(
    route_name: &str,
    index: usize,
    rule: &RouteRule,
    target: &str,
    port: u16,
) -> Result<RouteConfig, Unsupported> {
    let at = |field: &str| format!("spec.rules[{index}]{field}");
    let mut matches = Vec::with_capacity(rule.matches.len());
    for matching in &rule.matches {
        let path = matching.path.as_ref().map(|path| match path.match_type {
            PathMatchType::Exact => PathMatch::Exact(path.value.clone()),
            PathMatchType::PathPrefix => PathMatch::Prefix(path.value.clone()),
            PathMatchType::RegularExpression => PathMatch::Regex(path.value.clone()),
        });
        let headers = matching
            .headers
            .iter()
            .map(|header| HeaderMatch {
                name: header.name.clone(),
                value: match header.match_type {
                    ValueMatchType::Exact => HeaderValueMatch::Exact(header.value.clone()),
                    ValueMatchType::RegularExpression => HeaderValueMatch::Regex(header.value.clone()),
                },
            })
            .collect();
        let method = matching.method.as_ref().map(|m| {
            serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        });
        let query_params = matching
            .query_params
            .iter()
            .map(|query| HeaderMatch {
                name: query.name.clone(),
                value: match query.match_type {
                    ValueMatchType::Exact => HeaderValueMatch::Exact(query.value.clone()),
                    ValueMatchType::RegularExpression => HeaderValueMatch::Regex(query.value.clone()),
                },
            })
            .collect();
        matches.push(MatchConfig { path, method, headers, query_params });
    }
    let backends = rule
        .backends
        .iter()
        .map(|backend| WeightedBackend {
            name: backend_name(target, backend, port),
            weight: u32::try_from(backend.weight).unwrap_or(0),
        })
        .collect();
    let timeout = rule.timeout.as_deref().map(|t| duration(t, &at(".timeout"))).transpose()?;
    let retries = match &rule.retries {
        None => None,
        Some(retries) => Some(RetriesConfig {
            attempts: u32::try_from(retries.attempts).unwrap_or(1),
            per_try_timeout: retries
                .per_try_timeout
                .as_deref()
                .map(|t| duration(t, &at(".retries.perTryTimeout")))
                .transpose()?,
            retry_on: retries
                .retry_on
                .iter()
                .map(|on| match on {
                    meshroute::RetryOn::ServerError => RetryOn::FiveXx,
                    meshroute::RetryOn::GatewayError => RetryOn::GatewayError,
                    meshroute::RetryOn::ConnectFailure => RetryOn::ConnectFailure,
                    meshroute::RetryOn::Reset => RetryOn::Reset,
                    meshroute::RetryOn::Cancelled => RetryOn::Cancelled,
                    meshroute::RetryOn::DeadlineExceeded => RetryOn::DeadlineExceeded,
                    meshroute::RetryOn::ResourceExhausted => RetryOn::ResourceExhausted,
                    meshroute::RetryOn::Unavailable => RetryOn::Unavailable,
                })
                .collect(),
        }),
    };
    let fault = match &rule.fault {
        None => None,
        Some(fault) => Some(FaultConfig {
            delay: fault
                .delay
                .as_ref()
                .map(|d| {
                    Ok::<_, Unsupported>(FaultDelay {
                        fixed: duration(&d.duration, &at(".fault.delay.duration"))?,
                        percent: f64::from(d.percent),
                    })
                })
                .transpose()?,
            abort: fault.abort.as_ref().map(|a| FaultAbort {
                status: u16::try_from(a.status).unwrap_or(500),
                percent: f64::from(a.percent),
            }),
        }),
    };
    let mirror = rule.mirror.as_ref().map(|mirror| {
        let backend = meshroute::Backend {
            service: Some(mirror.service.clone()),
            subset: None,
            port: mirror.port,
            weight: 0,
        };
        MirrorConfig { backend: backend_name(target, &backend, port), percent: f64::from(mirror.percent) }
    });
    Ok(RouteConfig {
        name: Some(rule.name.clone().unwrap_or_else(|| format!("{route_name}-{index}"))),
        matches,
        backends,
        timeout,
        retries,
        fault,
        mirror,
        request_headers: rule.request_headers.as_ref().map(header_edits),
        response_headers: rule.response_headers.as_ref().map(header_edits),
        retry_budget: rule.retries.as_ref().and_then(|retries| retries.budget.as_ref()).map(|budget| {
            RetryBudgetConfig {
                percent: budget.percent.clamp(0, 100) as f32,
                min_per_second: u32::try_from(budget.min_retries_per_second).unwrap_or(0),
                ..RetryBudgetConfig::default()
            }
        }),
        rate_limit: rule.rate_limit.as_ref().map(|limit| {
            // The CRD's schema keeps both from 1 to 1,000,000; out-of-range values from an
            // older schema are clamped rather than refused.
            let clamp = |n: i32| u32::try_from(n).unwrap_or(1).clamp(1, 1_000_000);
            let requests_per_second = clamp(limit.requests_per_second);
            RateLimitConfig { requests_per_second, burst: limit.burst.map_or(requests_per_second, clamp) }
        }),
        ..RouteConfig::default()
    })
}

/// A MeshRoute's `loadBalancer` in the proxies' model; what it leaves out keeps the default.
/// The schema and validation keep the fields in range; a value out of it falls back to the
/// default rather than reaching a proxy.
pub fn load_balancer(spec: &meshroute::LoadBalancer) -> LoadBalancerConfig {
    let defaults = LoadBalancerConfig::default();
    let outlier = spec.outlier_detection.clone().unwrap_or_default();
    let time = |text: &Option<String>, default| {
        text.as_deref().and_then(|t| braid_crds::duration::parse_duration(t).ok()).unwrap_or(default)
    };
    let (base_ejection_time, max_ejection_time) = match (
        time(&outlier.base_ejection_time, defaults.base_ejection_time),
        time(&outlier.max_ejection_time, defaults.max_ejection_time),
    ) {
        (base, max) if base <= max => (base, max),
        _ => (defaults.base_ejection_time, defaults.max_ejection_time),
    };
    LoadBalancerConfig {
        algorithm: match spec.algorithm {
            None | Some(meshroute::LoadBalancerAlgorithm::Ewma) => Algorithm::Ewma,
            Some(meshroute::LoadBalancerAlgorithm::LeastRequest) => Algorithm::LeastRequest,
            Some(meshroute::LoadBalancerAlgorithm::RoundRobin) => Algorithm::RoundRobin,
        },
        hash_on: spec.hash_on.as_ref().and_then(|hash| match (hash.key_type, &hash.name) {
            (meshroute::HashOnType::Header, Some(name)) => Some(HashOn::Header(name.to_ascii_lowercase())),
            (meshroute::HashOnType::Cookie, Some(name)) => Some(HashOn::Cookie(name.clone())),
            (meshroute::HashOnType::SourceIp, _) => Some(HashOn::SourceIp),
            _ => None,
        }),
        consecutive_failures: outlier
            .consecutive_failures
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.consecutive_failures),
        base_ejection_time,
        max_ejection_time,
        max_ejected_percent: outlier
            .max_ejected_percent
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n <= 100)
            .unwrap_or(defaults.max_ejected_percent),
        ..defaults
    }
}

fn header_edits(modifier: &meshroute::HeaderModifier) -> HeaderEditsConfig {
    let pairs = |list: &[meshroute::HeaderValue]| {
        list.iter().map(|h| HeaderValueConfig { name: h.name.clone(), value: h.value.clone() }).collect()
    };
    HeaderEditsConfig {
        set: pairs(&modifier.set),
        add: pairs(&modifier.add),
        remove: modifier.remove.clone(),
    }
}

/// Whether the proxy can apply every rule of a route; the first rule it cannot, otherwise.
pub fn check_route(route_name: &str, spec: &braid_crds::MeshRouteSpec) -> Result<(), Unsupported> {
    let port = spec.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(80);
    for (i, rule) in spec.rules.iter().enumerate() {
        route_rule(route_name, i, rule, &spec.service, port)?;
    }
    Ok(())
}

/// The inbound policy for a pod selected by `policies` (each `(name, spec)`), or its `default`
/// when no policy selects it. Several policies add up: the union of their rules, and STRICT when
/// any one asks for it.
pub fn inbound_policy(
    namespace: &str,
    policies: &[(&str, &MeshPolicySpec)],
    probes: &[ProbeConfig],
    default: DefaultInboundPolicy,
) -> PolicyConfig {
    if policies.is_empty() {
        return default.policy(probes.to_vec());
    }
    let mtls = if policies.iter().any(|(_, p)| p.mtls == MtlsMode::STRICT) {
        ProxyMtls::Strict
    } else {
        ProxyMtls::Permissive
    };
    let mut rules = Vec::new();
    for (name, policy) in policies {
        for (r, rule) in policy.rules.iter().enumerate() {
            let from = rule
                .from
                .iter()
                .map(|source| SourceConfig {
                    service_account: source.service_account.as_ref().map(|sa| ServiceAccountConfig {
                        namespace: sa.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                        name: sa.name.clone(),
                    }),
                    namespace: source.namespace.clone(),
                    identity: None,
                })
                .collect();
            let to = rule
                .to
                .iter()
                .map(|op| OperationConfig {
                    paths: op.paths.clone(),
                    methods: op
                        .methods
                        .iter()
                        .filter_map(|m| serde_json::to_value(m).ok()?.as_str().map(str::to_owned))
                        .collect(),
                    ports: op.ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
                })
                .collect();
            rules.push(AuthorizationRuleConfig { name: Some(format!("{name}-{r}")), from, to });
        }
    }
    let names = policies.iter().map(|(name, _)| (*name).to_owned()).collect();
    PolicyConfig { mtls, rules, probes: probes.to_vec(), source: Some(PolicySource::MeshPolicies(names)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(value: serde_json::Value) -> RouteRule {
        serde_json::from_value(value).expect("test rule deserializes")
    }

    #[test]
    fn a_weighted_rule_with_retries_and_timeout_translates_field_by_field() {
        let rule = rule(json!({
            "name": "split",
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                         "headers": [{"name": "x-canary", "value": "1"}]}],
            "backends": [{"service": "reviews-v1", "weight": 80}, {"service": "reviews-v2", "weight": 20},
                         {"subset": {"version": "v3"}, "weight": 0}],
            "timeout": "5s",
            "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": ["5xx", "reset"]},
            "fault": {"abort": {"status": 503, "percent": 10}},
            "mirror": {"service": "shadow", "percent": 50}
        }));
        let route = route_rule("reviews", 0, &rule, "reviews", 8080).expect("supported");
        assert_eq!(route.name.as_deref(), Some("split"));
        let names: Vec<_> = route.backends.iter().map(|b| (b.name.as_str(), b.weight)).collect();
        assert_eq!(names, [("reviews-v1", 80), ("reviews-v2", 20), ("reviews[version=v3]", 0)]);
        assert_eq!(route.matches[0].path, Some(PathMatch::Prefix("/api".into())));
        assert_eq!(route.matches[0].method.as_deref(), Some("GET"));
        assert_eq!(route.timeout, Some(std::time::Duration::from_secs(5)));
        let retries = route.retries.expect("retries");
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.retry_on, [RetryOn::FiveXx, RetryOn::Reset]);
        assert_eq!(route.fault.and_then(|f| f.abort).map(|a| a.status), Some(503));
        assert_eq!(route.mirror.map(|m| m.backend), Some("shadow".to_owned()));
    }

    #[test]
    fn load_balancing_translates_and_what_is_left_out_keeps_the_default() {
        let lb = |value: serde_json::Value| {
            load_balancer(&serde_json::from_value(value).expect("test load balancer deserializes"))
        };
        let config = lb(json!({"algorithm": "RoundRobin", "hashOn": {"type": "Header", "name": "X-Session"},
            "outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "10s", "maxEjectedPercent": 20}}));
        assert_eq!(config.algorithm, Algorithm::RoundRobin);
        assert_eq!(config.hash_on, Some(HashOn::Header("x-session".into())), "header names in lower case");
        assert_eq!(config.consecutive_failures, 3);
        assert_eq!(config.base_ejection_time, std::time::Duration::from_secs(10));
        assert_eq!(config.max_ejection_time, LoadBalancerConfig::default().max_ejection_time);
        assert_eq!(config.max_ejected_percent, 20);
        assert_eq!(lb(json!({})), LoadBalancerConfig::default());
        assert_eq!(lb(json!({"hashOn": {"type": "SourceIP"}})).hash_on, Some(HashOn::SourceIp));
        assert_eq!(
            lb(json!({"hashOn": {"type": "Cookie", "name": "sid"}})).hash_on,
            Some(HashOn::Cookie("sid".into()))
        );
        assert_eq!(lb(json!({"algorithm": "LeastRequest"})).algorithm, Algorithm::LeastRequest);
        // Out of order (validation refuses it): the defaults, never a proxy config it would refuse.
        let odd = lb(json!({"outlierDetection": {"baseEjectionTime": "1h", "maxEjectionTime": "1m"}}));
        assert_eq!(odd.base_ejection_time, LoadBalancerConfig::default().base_ejection_time);
    }

    #[test]
    fn a_retry_budget_belongs_to_its_rule_alone() {
        let with_budget = rule(json!({"backends": [{"service": "reviews-v1"}],
            "retries": {"attempts": 3, "budget": {"percent": 5, "minRetriesPerSecond": 1}}}));
        let budget = route_rule("reviews", 0, &with_budget, "reviews", 8080).expect("supported").retry_budget;
        assert_eq!(budget.as_ref().map(|b| (b.percent, b.min_per_second)), Some((5.0, 1)));
        let without = rule(json!({"backends": [{"service": "reviews-v1"}], "retries": {"attempts": 3}}));
        let route = route_rule("reviews", 1, &without, "reviews", 8080).expect("supported");
        assert_eq!(route.retry_budget, None, "a rule without a budget uses the service's default");
    }

    #[test]
    fn a_rate_limit_translates_and_its_burst_defaults_to_the_rate() {
        let limited = |limit: serde_json::Value| {
            let rule = rule(json!({"backends": [{"service": "reviews-v1"}], "rateLimit": limit}));
            route_rule("reviews", 0, &rule, "reviews", 8080).expect("supported").rate_limit
        };
        assert_eq!(
            limited(json!({"requestsPerSecond": 100, "burst": 20})),
            Some(RateLimitConfig { requests_per_second: 100, burst: 20 })
        );
        assert_eq!(
            limited(json!({"requestsPerSecond": 50})),
            Some(RateLimitConfig { requests_per_second: 50, burst: 50 })
        );
    }

    #[test]
    fn a_backend_on_another_port_gets_its_own_name() {
        let backend: meshroute::Backend =
            serde_json::from_value(json!({"service": "b", "port": 9090})).unwrap();
        assert_eq!(backend_name("a", &backend, 8080), "b:9090");
        let same: meshroute::Backend = serde_json::from_value(json!({"service": "b", "port": 8080})).unwrap();
        assert_eq!(backend_name("a", &same, 8080), "b");
    }

    #[test]
    fn query_parameter_matches_and_header_edits_translate() {
        let rule = rule(json!({"matches": [{"queryParams": [{"name": "a", "value": "b"},
                {"name": "c", "type": "RegularExpression", "value": "d.*"}]}],
            "backends": [{"service": "x"}],
            "requestHeaders": {"set": [{"name": "x-set", "value": "1"}], "remove": ["x-gone"]},
            "responseHeaders": {"add": [{"name": "x-by", "value": "x"}]}}));
        let route = route_rule("r", 2, &rule, "t", 80).expect("supported");
        let queries: Vec<_> =
            route.matches[0].query_params.iter().map(|q| (q.name.as_str(), &q.value)).collect();
        assert_eq!(
            queries,
            [("a", &HeaderValueMatch::Exact("b".into())), ("c", &HeaderValueMatch::Regex("d.*".into()))]
        );
        let request = route.request_headers.expect("request edits");
        assert_eq!(
            (request.set[0].name.as_str(), request.remove.as_slice()),
            ("x-set", &["x-gone".to_owned()][..])
        );
        assert_eq!(route.response_headers.expect("response edits").add[0].value, "x");
    }

    #[test]
    fn policies_add_up_and_strict_wins() {
        let strict: MeshPolicySpec = serde_json::from_value(json!({"mtls": "STRICT", "rules": [
            {"from": [{"serviceAccount": {"name": "web"}}], "to": [{"methods": ["GET"], "ports": [8080]}]}]}))
        .unwrap();
        let permissive: MeshPolicySpec = serde_json::from_value(json!({"mtls": "PERMISSIVE", "rules": [
            {"from": [{"namespace": "ops"}]}]}))
        .unwrap();
        let probes = [ProbeConfig { port: 8080, path: "/healthz".into() }];
        let policy = inbound_policy(
            "shop",
            &[("a", &strict), ("b", &permissive)],
            &probes,
            DefaultInboundPolicy::Deny,
        );
        assert_eq!(policy.mtls, ProxyMtls::Strict);
        assert_eq!(policy.rules.len(), 2);
        let web = policy.rules[0].from[0].service_account.as_ref().expect("service account");
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("shop", "web"),
            "defaults to the policy's namespace"
        );
        assert_eq!(policy.rules[0].to[0].methods, ["GET"]);
        assert_eq!(policy.rules[1].from[0].namespace.as_deref(), Some("ops"));
        assert_eq!(policy.probes, [ProbeConfig { port: 8080, path: "/healthz".into() }]);
        assert_eq!(
            policy.source,
            Some(PolicySource::MeshPolicies(vec!["a".into(), "b".into()])),
            "the metrics name the policies"
        );
    }

    #[test]
    fn a_pod_no_policy_selects_gets_its_default_with_its_probes() {
        let probes = [ProbeConfig { port: 8080, path: "/healthz".into() }];
        for default in DefaultInboundPolicy::ALL {
            let policy = inbound_policy("shop", &[], &probes, default);
            assert_eq!(policy, default.policy(probes.to_vec()));
            assert_eq!(policy.source, Some(PolicySource::Default(default)));
        }
    }
}
