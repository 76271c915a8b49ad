//! Braid's Grafana dashboards (helm/braid/dashboards/*.json, docs/dashboards.md): their panels'
//! queries and the template variables those use. The unit tests below check every dashboard
//! without a cluster; e2e/tests/prometheus.rs runs every query against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::repo_root;

/// Grafana's own variables, which no dashboard defines.
pub const BUILT_INS: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    // The value of "All" in a multi-value variable.
    "__all",
];

/// One dashboard file, parsed.
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// One target (query) of one panel.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

pub fn dashboards_dir() -> PathBuf {
    repo_root().join("helm/braid/dashboards")
}

/// Every dashboard of the chart, by file name. Panics naming a file that is not JSON.
pub fn dashboards() -> Vec<Dashboard> {
    let dir = dashboards_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let json = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            Dashboard { file, json }
        })
        .collect()
}

impl Dashboard {
    pub fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or_default()
    }

    /// Every panel but rows, those inside collapsed rows included.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                if panel["type"] == "row" {
                    walk(&panel["panels"], out);
                } else {
                    out.push(panel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// The template variables, in the order Grafana resolves them.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"].as_array().into_iter().flatten().collect()
    }

    pub fn queries(&self) -> Vec<Query> {
        self.panels()
            .into_iter()
            .flat_map(|panel| {
                panel["targets"].as_array().into_iter().flatten().map(|target| Query {
                    dashboard: self.title().to_owned(),
                    panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// What is wrong with the dashboard, one line each; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut say = |problem: String| problems.push(format!("{}: {problem}", self.file));
        for key in ["uid", "title"] {
            if self.json[key].as_str().is_none_or(str::is_empty) {
                say(format!("no {key}"));
            }
        }
        // A variable may use the ones defined before it (Grafana resolves them in order).
        let mut defined: BTreeSet<String> = BUILT_INS.iter().map(|name| (*name).to_owned()).collect();
        for variable in self.variables() {
            let name = variable["name"].as_str().unwrap_or_default();
            let text = serde_json::to_string(variable).unwrap_or_default();
            for used in variables_in(&text) {
                if !defined.contains(&used) {
                    say(format!("variable {name:?} uses ${used}, not defined before it"));
                }
            }
            if !defined.insert(name.to_owned()) || name.is_empty() {
                say(format!("variable {name:?} defined twice or without a name"));
            }
        }
        let (mut ids, mut titles) = (BTreeSet::new(), BTreeSet::new());
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            // A unique title, so that a failing query is named unambiguously.
            if title.is_empty() || !titles.insert(title) {
                say(format!("a panel without a title, or with another's: {panel}"));
            }
            if !ids.insert(panel["id"].as_u64()) {
                say(format!("panel {title:?}: its id {} is not unique", panel["id"]));
            }
            let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            if !targets.iter().any(|target| target["expr"].as_str().is_some_and(|e| !e.trim().is_empty())) {
                say(format!("panel {title:?} has no target with an expr"));
            }
            // Datasources and legends may use variables too.
            for used in variables_in(&serde_json::to_string(panel).unwrap_or_default()) {
                if !defined.contains(&used) {
                    say(format!("panel {title:?} uses ${used}, which the templating does not define"));
                }
            }
        }
        for query in self.queries() {
            if query.expr.trim().is_empty() {
                say(format!("panel {:?} target {}: an empty expr", query.panel, query.ref_id));
            }
        }
        problems
    }
}

/// The variables `text` uses: `$name`, `${name}`, `${name:format}` and `[[name]]`.
pub fn variables_in(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.strip_prefix('{');
        let name: String = braced.unwrap_or(rest).chars().take_while(|&c| is_name(c)).collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        let name: String = rest.chars().take_while(|&c| is_name(c)).collect();
        if !name.is_empty() && rest[name.len()..].starts_with([']', ':']) {
            found.insert(name);
        }
    }
    found
}

/// `expr` with its variables replaced by `values` (names without the `$`); the longest names
/// first, so that `$namespace` never eats the start of `$namespace_x`.
pub fn substitute(expr: &str, values: &BTreeMap<&str, &str>) -> String {
    let mut names: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, *v)).collect();
    names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_owned();
    for (name, value) in names {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    out
}

/// The metric names a PromQL expression reads: identifiers followed by `{` (every query of the
/// dashboards selects its series by label).
pub fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = expr.as_bytes();
    for (at, _) in expr.match_indices('{') {
        let start = bytes[..at]
            .iter()
            .rposition(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
            .map_or(0, |i| i + 1);
        if start < at {
            found.insert(expr[start..at].to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name between backquotes in the docs that list the proxy's and the operator's metrics.
    fn documented_metrics() -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for doc in ["docs/observability.md", "docs/canary.md"] {
            let text = std::fs::read_to_string(repo_root().join(doc)).expect("a doc");
            names.extend(text.split('`').skip(1).step_by(2).map(str::to_owned));
        }
        names
    }

    #[test]
    fn every_dashboard_parses_and_its_panels_query_defined_variables() {
        let dashboards = dashboards();
        let files: Vec<&str> = dashboards.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(
            files,
            ["braid-mesh-overview.json", "braid-rollout.json", "braid-route.json", "braid-workload.json"]
        );
        let problems: Vec<String> = dashboards.iter().flat_map(Dashboard::problems).collect();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let uids: BTreeSet<&str> = dashboards.iter().filter_map(|d| d.json["uid"].as_str()).collect();
        assert_eq!(uids.len(), dashboards.len(), "the uids are unique: {uids:?}");
        for dashboard in &dashboards {
            let datasource = dashboard.variables().into_iter().find(|v| v["type"] == "datasource");
            assert!(
                datasource.is_some_and(|v| v["query"] == "prometheus"),
                "{}: a Prometheus datasource variable, so that it imports on any Grafana",
                dashboard.file
            );
        }
    }

    #[test]
    fn every_metric_the_dashboards_read_is_documented() {
        let documented = documented_metrics();
        for dashboard in dashboards() {
            for query in dashboard.queries() {
                for metric in metrics_in(&query.expr) {
                    // Histograms are documented by their name, without the series suffix.
                    let base = metric.strip_suffix("_bucket").unwrap_or(&metric);
                    assert!(
                        documented.contains(&metric) || documented.contains(base),
                        "{} / {}: {metric} is in neither docs/observability.md nor docs/canary.md: {}",
                        dashboard.file,
                        query.panel,
                        query.expr
                    );
                }
            }
        }
    }

    #[test]
    fn the_checks_catch_undefined_variables_and_panels_without_a_query() {
        let json = serde_json::json!({
            "uid": "x", "title": "X",
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "pod", "type": "query", "query": "label_values(up{namespace=\"$namespace\"}, pod)"},
            ]},
            "panels": [
                {"id": 1, "type": "row", "title": "Row", "panels": [
                    {"id": 2, "type": "timeseries", "title": "Nested", "targets": [{"refId": "A", "expr": "up{pod=\"${pod}\"}[$__rate_interval]"}]},
                ]},
                {"id": 3, "type": "stat", "title": "Typo", "targets": [{"refId": "A", "expr": "rate(x{a=\"$deploymnet\"}[$__rate_interval])"}]},
                {"id": 4, "type": "stat", "title": "Empty", "targets": [{"refId": "A", "expr": " "}]},
            ],
        });
        let problems = Dashboard { file: "x.json".to_owned(), json }.problems();
        let text = problems.join("\n");
        assert!(text.contains("variable \"pod\" uses $namespace"), "{text}");
        assert!(text.contains("panel \"Typo\" uses $deploymnet"), "{text}");
        assert!(text.contains("panel \"Empty\" has no target with an expr"), "{text}");
        assert!(!text.contains("Nested"), "{text}");
        assert_eq!(problems.len(), 4, "{text}");
    }

    #[test]
    fn variables_are_found_and_substituted_in_every_syntax() {
        let expr = r#"sum(rate(x{ns=~"$namespace", a="${client_namespace}", b="[[deployment]]"}[$__rate_interval]))"#;
        let found: Vec<String> = variables_in(expr).into_iter().collect();
        assert_eq!(found, ["__rate_interval", "client_namespace", "deployment", "namespace"]);
        let values =
            BTreeMap::from([("namespace", "n1"), ("client_namespace", "n2"), ("__rate_interval", "30s")]);
        assert_eq!(substitute(expr, &values), r#"sum(rate(x{ns=~"n1", a="n2", b="[[deployment]]"}[30s]))"#);
        let metrics: Vec<String> =
            metrics_in("histogram_quantile(0.9, sum by (le) (rate(a_bucket{x=\"1\"}[1m]))) / b:c{y=\"\"}")
                .into_iter()
                .collect();
        assert_eq!(metrics, ["a_bucket", "b:c"]);
    }
}
