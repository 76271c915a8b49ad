//! Every metric the proxy registers is documented in docs/proxy.md's metrics table, and the
//! table names no metric the proxy does not register: the table is what users build queries and
//! dashboards from.

#![allow(clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::BTreeSet;
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

/// The backticked metric names (snake case: the camelCase ones are settings) in the first column
/// of the metrics table.
fn documented() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/proxy.md"))
        .expect("docs/proxy.md is readable");
    let table = docs
        .split("## Metrics")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("docs/proxy.md has a Metrics section");
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
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
    assert!(undocumented.is_empty(), "registered but not in docs/proxy.md's metrics table: {undocumented:?}");
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|name| {
            !registered.contains(*name)
                && !name.strip_suffix("_total").is_some_and(|base| registered.contains(base))
        })
        .collect();
    assert!(unknown.is_empty(), "in docs/proxy.md's metrics table but not registered: {unknown:?}");
}
