//! Every metric the proxy registers is documented in docs/observability.md's metrics table with
//! exactly the labels it writes, and the table names no metric the proxy does not register: the
//! table is what users build queries and dashboards from.

#![allow(clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The names passed to `registry.register(` in the proxy's metrics module.
fn registered() -> BTreeSet<String> {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
        .expect("proxy/src/metrics.rs is readable");
    source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.trim_start().strip_prefix('"')?.split('"').next().map(str::to_owned))
        .collect()
}

/// The metrics table: each backticked metric name (snake case: the camelCase ones are settings)
/// in the first column, with the label names of its row's second column (explanations in
/// parentheses left out).
fn documented_labels() -> BTreeMap<String, BTreeSet<String>> {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md"))
            .expect("docs/observability.md is readable");
    let table = docs
        .split("## Metrics")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("docs/observability.md has a Metrics section");
    let mut documented = BTreeMap::new();
    for line in table.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').collect();
        let (Some(names), Some(labels)) = (cells.get(1), cells.get(2)) else { continue };
        let labels: BTreeSet<String> = without_parentheses(labels)
            .split(',')
            .map(|label| label.trim().to_owned())
            .filter(|label| !label.is_empty())
            .collect();
        for name in names.split('`').skip(1).step_by(2) {
            if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                documented.insert(name.to_owned(), labels.clone());
            }
        }
    }
    documented
}

fn without_parentheses(text: &str) -> String {
    let mut depth = 0usize;
    text.chars()
        .filter(|&c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

fn documented() -> BTreeSet<String> {
    documented_labels().into_keys().collect()
}

/// A counter is exposed as NAME_total; other kinds under their own name.
fn exposed_as(registered: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(registered) || documented.contains(&format!("{registered}_total"))
}

#[test]
fn every_registered_metric_is_in_the_docs_table_and_no_other() {
    let registered = registered();
    let documented = documented();
    assert!(registered.len() >= 25, "the parse found too few metrics: {registered:?}");
    let undocumented: Vec<&String> =
        registered.iter().filter(|name| !exposed_as(name, &documented)).collect();
    assert!(
        undocumented.is_empty(),
        "registered but not in docs/observability.md's metrics table: {undocumented:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|name| {
            !registered.contains(*name)
                && !name.strip_suffix("_total").is_some_and(|base| registered.contains(base))
        })
        .collect();
    assert!(unknown.is_empty(), "in docs/observability.md's metrics table but not registered: {unknown:?}");
}

/// Every family given a series, as the proxy writes them: what a user's query sees.
fn exposition() -> String {
    use braid_proxy::metrics::*;
    let metrics = Metrics::new();
    let some = || Label::new("x");
    let target = || TargetAddr::new(std::net::SocketAddr::from(([10, 0, 0, 1], 8080)));
    let plaintext = Tls::NoIdentity(NoTlsReason::no_tls_from_remote);
    let request = RequestLabels {
        direction: Direction::inbound,
        authority: some(),
        target_addr: target(),
        dst_service: some(),
        route: some(),
        client_id: some(),
        tls: plaintext,
    };
    let series = metrics.request_metrics(&request);
    series.requests.inc();
    let pod = braid_api::config::EndpointPod {
        namespace: "x".into(),
        name: "x".into(),
        service_account: "x".into(),
        workload: Some(braid_api::config::Workload {
            kind: braid_api::config::WorkloadKind::Deployment,
            name: "x".into(),
        }),
        pod_template_hash: "x".into(),
    };
    let answerer = Answerer { server_id: some(), pod: DstPod::new(Some(&pod)) };
    series.answered(
        200,
        Classification::success,
        GrpcStatus(Some(0)),
        &answerer,
        std::time::Duration::from_millis(3),
    );
    series.count_when_answered().answered_by(&answerer);
    let route = RetryLabels { direction: Direction::outbound, dst_service: some(), route: some() };
    for family in
        [&metrics.retries, &metrics.retry_budget_exhausted, &metrics.rate_limited, &metrics.overloaded]
    {
        family.get_or_create(&route).inc();
    }
    let timeout = TimeoutLabels {
        direction: Direction::outbound,
        dst_service: some(),
        route: some(),
        kind: TimeoutKind::total,
    };
    metrics.timeouts.get_or_create(&timeout).inc();
    metrics.mirror_dropped.get_or_create(&MirrorLabels { dst_service: some(), route: some() }).inc();
    let tcp = TcpLabels { direction: Direction::inbound };
    metrics.tcp_open_connections.get_or_create(&tcp).inc();
    for family in [
        &metrics.tcp_open_total,
        &metrics.tcp_read_bytes,
        &metrics.tcp_write_bytes,
        &metrics.tcp_refused,
        &metrics.tcp_refused_client_limit,
        &metrics.tcp_idle_timeout,
    ] {
        family.get_or_create(&tcp).inc();
    }
    metrics.teardowns(Direction::inbound, Peer::client).count(TeardownReason::closed);
    metrics.config_reloads.get_or_create(&ReloadLabels { result: ReloadResult::applied }).inc();
    let server = ServerLabels { kind: ServerKind::meshpolicy, name: some(), port: 8080 };
    for (route, denied, allowed) in [
        (InboundRoute::Default, &metrics.http_authz_denied, &metrics.http_authz_allowed),
        (InboundRoute::Opaque, &metrics.tcp_authz_denied, &metrics.tcp_authz_allowed),
    ] {
        let deny = DenyLabels {
            target_addr: target(),
            server: server.clone(),
            route,
            tls: plaintext,
            client_id: some(),
        };
        denied.get_or_create(&deny).inc();
        let allow = AllowLabels {
            target_addr: target(),
            server: server.clone(),
            route,
            authz: Authz { kind: AuthzKind::meshpolicy, name: some() },
            tls: plaintext,
            client_id: some(),
        };
        allowed.get_or_create(&allow).inc();
    }
    let egress = EgressLabels {
        external_service: some(),
        protocol: EgressProtocol::tls,
        decision: EgressDecision::allowed,
    };
    metrics.egress.get_or_create(&egress).inc();
    let refused = IdentityRefusedLabels { reason: IdentityRefusal::foreign_trust_domain };
    metrics.identity_refused.get_or_create(&refused).inc();
    metrics.discovery_connected.set(1);
    metrics.discovery_updates.get_or_create(&DiscoveryUpdateLabels { result: ReloadResult::applied }).inc();
    metrics.discovery_reconnects.inc();
    metrics.discovery_lookup_timeouts.inc();
    metrics.discovery_evictions.inc();
    let backend = metrics.backend_metrics(&some(), &some());
    backend.requests.inc();
    backend.failures.inc();
    backend.latency.observe(std::time::Duration::from_millis(3));
    metrics.span_counters().exported.inc();
    metrics.encode()
}

/// The family a sample line belongs to, as registered (without `_total`, `_bucket`, …).
fn family_of<'a>(sample: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    [sample]
        .into_iter()
        .chain(
            ["_total", "_bucket", "_sum", "_count"].iter().filter_map(|suffix| sample.strip_suffix(suffix)),
        )
        .find(|name| families.contains(*name))
}

#[test]
fn every_metric_has_exactly_the_labels_the_docs_table_gives() {
    let registered = registered();
    let documented = documented_labels();
    let text = exposition();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family =
            family_of(name, &registered).unwrap_or_else(|| panic!("{name} is of no registered family"));
        let labels: BTreeSet<String> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|pair| pair.split_once('=').map(|(key, _)| key.trim().to_owned()))
            .filter(|key| key != "le")
            .collect();
        seen.entry(family.to_owned()).or_default().extend(labels);
    }
    let unexercised: Vec<&String> = registered.iter().filter(|family| !seen.contains_key(*family)).collect();
    assert!(unexercised.is_empty(), "give these families a series in exposition(): {unexercised:?}");
    for (family, labels) in &seen {
        let table = documented
            .get(family)
            .or_else(|| documented.get(&format!("{family}_total")))
            .unwrap_or_else(|| panic!("{family} is not in docs/observability.md's metrics table"));
        assert_eq!(
            labels, table,
            "{family}: the labels the proxy writes (left) and the docs table's (right)"
        );
    }
}
