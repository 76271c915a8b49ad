//! What the schema cannot check about a MeshRoute: regular expressions that compile, duration
//! units in order, per-try timeouts within the total, unique backends and rule names, canary
//! steps. A pure function, so every rule has a unit test.

use std::{collections::BTreeSet, fmt, time::Duration};

use braid_crds::{
    duration::parse_duration,
    meshroute::{Backend, MeshRouteSpec, PathMatchType, RouteRule, ValueMatchType},
};

/// Compiled size a route's regular expression may take; keeps a hostile pattern from costing
/// the proxies memory.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// One invalid field, with the path a user would look for in the YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found, in field order; empty when the route is valid.
pub fn validate(spec: &MeshRouteSpec) -> Vec<Invalid> {
    let mut problems = Vec::new();
    let mut rule_names = BTreeSet::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name
            && !rule_names.insert(name.as_str())
        {
            problems.push(invalid(format!("{at}.name"), format!("rule name {name:?} is used twice")));
        }
        validate_rule(&at, rule, &mut problems);
    }
    if let Some(outlier) = spec.load_balancer.as_ref().and_then(|lb| lb.outlier_detection.as_ref()) {
        let at = "spec.loadBalancer.outlierDetection";
        let parsed = |field: &str, text: &Option<String>, problems: &mut Vec<Invalid>| match text {
            None => None,
            Some(text) => parse_duration(text)
                .map_err(|err| problems.push(invalid(format!("{at}.{field}"), err.to_string())))
                .ok(),
        };
        let base = parsed("baseEjectionTime", &outlier.base_ejection_time, &mut problems);
        let max = parsed("maxEjectionTime", &outlier.max_ejection_time, &mut problems);
        let base = base.unwrap_or(Duration::from_secs(30));
        let max = max.unwrap_or(Duration::from_secs(300));
        if base > max {
            problems.push(invalid(
                format!("{at}.baseEjectionTime"),
                format!("{base:?} is longer than maxEjectionTime ({max:?})"),
            ));
        }
    }
    if let Some(canary) = &spec.canary {
        match parse_duration(&canary.interval) {
            Err(err) => problems.push(invalid("spec.canary.interval", err.to_string())),
            Ok(interval) if interval.is_zero() => {
                problems.push(invalid("spec.canary.interval", "must be longer than 0"))
            }
            Ok(_) => {}
        }
        if canary.steps.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(invalid("spec.canary.steps", "steps must increase, like [10, 25, 50]"));
        }
        let mut named_everywhere = true;
        for (field, service) in [("stable", &canary.stable), ("canary", &canary.canary)] {
            let named =
                spec.rules.iter().flat_map(|r| &r.backends).any(|b| b.service.as_ref() == Some(service));
            if !named {
                named_everywhere = false;
                problems.push(invalid(
                    format!("spec.canary.{field}"),
                    format!("Service {service:?} is not a backend of any rule; the canary moves weight between backends"),
                ));
            }
        }
        let names = |rule: &RouteRule, service: &str| {
            rule.backends.iter().any(|b| b.service.as_deref() == Some(service))
        };
        let carrying: Vec<usize> =
            spec.rules.iter().enumerate().filter(|(_, r)| names(r, &canary.canary)).map(|(i, _)| i).collect();
        if let [_, second, ..] = carrying[..] {
            problems.push(invalid(
                format!("spec.rules[{second}].backends"),
                format!(
                    "the canary Service {:?} is a backend of rules {carrying:?}; exactly one rule may carry the canary",
                    canary.canary
                ),
            ));
        } else if let [only] = carrying[..]
            && named_everywhere
            && !names(&spec.rules[only], &canary.stable)
        {
            problems.push(invalid(
                format!("spec.rules[{only}].backends"),
                format!(
                    "the rule that carries the canary {:?} must also have the stable Service {:?} as a backend",
                    canary.canary, canary.stable
                ),
            ));
        }
    }
    problems
}

fn validate_rule(at: &str, rule: &RouteRule, problems: &mut Vec<Invalid>) {
    for (m, route_match) in rule.matches.iter().enumerate() {
        if let Some(path) = &route_match.path
            && path.match_type == PathMatchType::RegularExpression
        {
            check_regex(format!("{at}.matches[{m}].path.value"), &path.value, problems);
        }
        for (h, header) in route_match.headers.iter().enumerate() {
            if header.match_type == ValueMatchType::RegularExpression {
                check_regex(format!("{at}.matches[{m}].headers[{h}].value"), &header.value, problems);
            }
        }
        for (q, param) in route_match.query_params.iter().enumerate() {
            if param.match_type == ValueMatchType::RegularExpression {
                check_regex(format!("{at}.matches[{m}].queryParams[{q}].value"), &param.value, problems);
            }
        }
    }

    if !rule.backends.iter().any(|b| b.weight > 0) {
        problems.push(invalid(format!("{at}.backends"), "at least one backend needs a weight above 0"));
    }
    for (b, backend) in rule.backends.iter().enumerate() {
        if let Some(first) = rule.backends[..b].iter().position(|earlier| same_destination(earlier, backend))
        {
            problems.push(invalid(
                format!("{at}.backends[{b}]"),
                format!("same destination as backends[{first}]; merge them into one backend with the summed weight"),
            ));
        }
    }

    let timeout = rule.timeout.as_deref().map(|t| (t, parse_duration(t)));
    if let Some((_, Err(err))) = &timeout {
        problems.push(invalid(format!("{at}.timeout"), err.to_string()));
    }
    if let Some(retries) = &rule.retries
        && let Some(per_try) = &retries.per_try_timeout
    {
        match parse_duration(per_try) {
            Err(err) => problems.push(invalid(format!("{at}.retries.perTryTimeout"), err.to_string())),
            Ok(per_try_duration) => {
                if let Some((total, Ok(total_duration))) = &timeout
                    && per_try_duration > *total_duration
                {
                    problems.push(invalid(
                        format!("{at}.retries.perTryTimeout"),
                        format!("{per_try} is longer than the rule's total timeout {total}, so no retry could ever run"),
                    ));
                }
                if per_try_duration == Duration::ZERO {
                    problems.push(invalid(format!("{at}.retries.perTryTimeout"), "must be longer than 0"));
                }
            }
        }
    }
    if let Some(retries) = &rule.retries {
        let mut seen = BTreeSet::new();
        for (r, on) in retries.retry_on.iter().enumerate() {
            if !seen.insert(format!("{on:?}")) {
                problems.push(invalid(format!("{at}.retries.retryOn[{r}]"), "listed twice"));
            }
        }
    }
    if let Some(delay) = rule.fault.as_ref().and_then(|f| f.delay.as_ref())
        && let Err(err) = parse_duration(&delay.duration)
    {
        problems.push(invalid(format!("{at}.fault.delay.duration"), err.to_string()));
    }
}

/// Two backends are the same destination when they name the same Service (or the same pod
/// subset) on the same port; weights do not matter.
fn same_destination(a: &Backend, b: &Backend) -> bool {
    a.service == b.service && a.subset == b.subset && a.port == b.port
}

fn check_regex(field: String, pattern: &str, problems: &mut Vec<Invalid>) {
    if let Err(err) = regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build() {
        let reason = match err {
            regex::Error::CompiledTooBig(_) => "regular expression is too large; simplify it".to_owned(),
            other => format!("not a valid regular expression: {}", first_line(&other.to_string())),
        };
        problems.push(invalid(field, reason));
    }
}

fn first_line(text: &str) -> &str {
    // regex errors draw a caret diagram over several lines; the last line holds the reason.
    text.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim).unwrap_or(text)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> MeshRouteSpec {
        serde_json::from_value(value).expect("test spec deserializes")
    }

    fn fields(spec: &MeshRouteSpec) -> Vec<String> {
        validate(spec).into_iter().map(|i| i.field).collect()
    }

    #[test]
    fn the_seed_examples_are_valid() {
        let split = spec(json!({"service": "reviews", "rules": [{"backends": [
            {"service": "reviews-v1", "weight": 80}, {"service": "reviews-v2", "weight": 20}]}]}));
        assert_eq!(validate(&split), []);
        let retries = spec(json!({"service": "ratings", "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}, "method": "GET"}],
            "backends": [{"service": "ratings"}], "timeout": "5s",
            "retries": {"attempts": 3, "perTryTimeout": "2s"}}]}));
        assert_eq!(validate(&retries), []);
    }

    #[test]
    fn weights_all_zero_are_refused() {
        let s = spec(json!({"service": "a", "rules": [{"backends": [
            {"service": "b", "weight": 0}, {"service": "c", "weight": 0}]}]}));
        assert_eq!(fields(&s), ["spec.rules[0].backends"]);
    }

    #[test]
    fn duplicate_backends_are_refused_whatever_their_weights() {
        let s = spec(json!({"service": "a", "rules": [{"backends": [
            {"service": "b", "weight": 10}, {"service": "c"}, {"service": "b", "weight": 90},
            {"subset": {"version": "v2"}}, {"subset": {"version": "v2"}, "port": 80}]}]}));
        let problems = validate(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[0].backends[2]");
        assert!(problems[0].reason.contains("backends[0]"), "{}", problems[0].reason);
    }

    #[test]
    fn per_try_timeout_longer_than_the_total_is_refused() {
        let s = spec(json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "timeout": "1s",
            "retries": {"attempts": 2, "perTryTimeout": "2s"}}]}));
        let problems = validate(&s);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.rules[0].retries.perTryTimeout");
        assert!(problems[0].reason.contains("longer than the rule's total timeout 1s"));
    }

    #[test]
    fn durations_the_schema_lets_through_but_we_cannot_read_are_refused() {
        let s = spec(json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "timeout": "1s1h",
            "fault": {"delay": {"duration": "5s5s", "percent": 10}}}]}));
        assert_eq!(fields(&s), ["spec.rules[0].timeout", "spec.rules[0].fault.delay.duration"]);
    }

    #[test]
    fn outlier_durations_that_cannot_be_read_or_are_out_of_order_are_refused() {
        let with = |outlier: serde_json::Value| {
            spec(json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}],
                "loadBalancer": {"outlierDetection": outlier}}))
        };
        assert_eq!(
            fields(&with(json!({"baseEjectionTime": "5s5s"}))),
            ["spec.loadBalancer.outlierDetection.baseEjectionTime"]
        );
        let problems = validate(&with(json!({"baseEjectionTime": "10m", "maxEjectionTime": "1m"})));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("longer than maxEjectionTime"), "{}", problems[0]);
        // Against the default maximum (5m) too.
        assert_eq!(fields(&with(json!({"baseEjectionTime": "10m"}))).len(), 1);
        assert!(validate(&with(json!({"baseEjectionTime": "10s", "maxEjectionTime": "1m"}))).is_empty());
    }

    #[test]
    fn bad_regular_expressions_are_refused_with_the_reason() {
        let s = spec(json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "matches": [{
            "path": {"type": "RegularExpression", "value": "/v1/(unclosed"},
            "headers": [{"name": "x-user", "type": "RegularExpression", "value": "a{99999}{99999}"}],
            "queryParams": [{"name": "q", "type": "Exact", "value": "(not a regex, fine)"}]}]}]}));
        let problems = validate(&s);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[0].matches[0].path.value");
        assert!(problems[0].reason.contains("unclosed group"), "{}", problems[0].reason);
        assert_eq!(problems[1].field, "spec.rules[0].matches[0].headers[0].value");
    }

    #[test]
    fn rule_names_are_unique() {
        let s = spec(json!({"service": "a", "rules": [
            {"name": "x", "backends": [{"service": "b"}]}, {"name": "x", "backends": [{"service": "c"}]}]}));
        assert_eq!(fields(&s), ["spec.rules[1].name"]);
    }

    #[test]
    fn canary_steps_increase_and_name_backends() {
        let s = spec(
            json!({"service": "a", "rules": [{"backends": [{"service": "a-stable"}, {"service": "a-canary", "weight": 0}]}],
            "canary": {"stable": "a-stable", "canary": "a-next", "steps": [10, 50, 50], "interval": "1m"}}),
        );
        assert_eq!(fields(&s), ["spec.canary.steps", "spec.canary.canary"]);
    }

    #[test]
    fn exactly_one_rule_carries_the_canary_with_the_stable_beside_it() {
        let canary = json!({"stable": "a-v1", "canary": "a-v2", "steps": [10, 50]});
        let two = spec(json!({"service": "a", "canary": canary, "rules": [
            {"matches": [{"path": {"value": "/api"}}], "backends": [{"service": "a-v1"}, {"service": "a-v2", "weight": 0}]},
            {"backends": [{"service": "a-v1"}, {"service": "a-v2", "weight": 0}]}]}));
        let problems = validate(&two);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[1].backends");
        assert!(
            problems[0].reason.contains("exactly one rule may carry the canary"),
            "{}",
            problems[0].reason
        );

        let apart = spec(json!({"service": "a", "canary": canary, "rules": [
            {"matches": [{"path": {"value": "/api"}}], "backends": [{"service": "a-v1"}]},
            {"backends": [{"service": "a-v2"}]}]}));
        let problems = validate(&apart);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[1].backends");
        assert!(problems[0].reason.contains("must also have the stable Service"), "{}", problems[0].reason);

        let good = spec(json!({"service": "a", "canary": canary, "rules": [
            {"matches": [{"path": {"value": "/admin"}}], "backends": [{"service": "a-v1"}]},
            {"backends": [{"service": "a-v1", "weight": 100}, {"service": "a-v2", "weight": 0}]}]}));
        assert_eq!(validate(&good), []);
    }
}
