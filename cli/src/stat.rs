//! `braid stat`: success rate, requests per second and latency percentiles of each meshed
//! Deployment (or namespace), from its proxies' own counters, like `linkerd viz stat` but with no
//! Prometheus: each meshed pod's `/metrics` is read twice through the API server's pod proxy,
//! `window` apart, and the difference is what its proxy served in between. The figures are the
//! inbound side's: what the workload itself answered, whoever called it.
//!
//! `parse`, `Counts` and `quantile` are pure and tested without a cluster; `gather` reads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use braid_api::contract::INJECTED;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

/// The label the webhook puts on a meshed pod with the Deployment that owns it.
const DEPLOYMENT_LABEL: &str = "braid.dev/proxy-deployment";
/// The proxy's admin port, where /metrics is served.
const ADMIN_PORT: u16 = 4191;

#[derive(Debug, thiserror::Error)]
pub enum StatError {
    #[error("cannot list {what} in namespace {namespace}: {source}")]
    List { what: &'static str, namespace: String, source: kube::Error },
}

/// One sample of the Prometheus text format: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// The samples of a Prometheus text exposition; comments and lines that are not samples are
/// skipped (a proxy of another version may expose more).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `a="x",b="y"`, with `\"` and `\\` escapes in values.
fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    other => other,
                }),
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// What a set of proxies answered inbound: responses by outcome, and the latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub success: f64,
    pub failure: f64,
    /// Cancelled by the client, or the client's own malformed request: neither side's success.
    pub other: f64,
    /// Cumulative counts by upper bound in milliseconds (`le`), +Inf last.
    pub buckets: Vec<(f64, f64)>,
}

impl Counts {
    /// The inbound `response_total` and `response_latency_ms` of one proxy's samples.
    pub fn inbound(samples: &[Sample]) -> Self {
        let mut counts = Counts::default();
        for sample in samples.iter().filter(|s| s.label("direction") == Some("inbound")) {
            counts.count(sample);
        }
        counts.sort_buckets();
        counts
    }

    /// The outbound `response_total` and `response_latency_ms` of one proxy's samples, by the
    /// destination Service and the route of it that matched (empty: no route matched). Requests
    /// to addresses no Service claims have no `dst_service` and are left out.
    pub fn outbound_routes(samples: &[Sample]) -> BTreeMap<(String, String), Counts> {
        let mut routes: BTreeMap<(String, String), Counts> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.label("direction") == Some("outbound")) {
            let Some(service) = sample.label("dst_service").filter(|service| !service.is_empty()) else {
                continue;
            };
            let route = sample.label("route").unwrap_or_default();
            routes.entry((service.to_owned(), route.to_owned())).or_default().count(sample);
        }
        routes.values_mut().for_each(Counts::sort_buckets);
        routes
    }

    /// Adds one `response_total` or `response_latency_ms_bucket` sample (others are ignored).
    fn count(&mut self, sample: &Sample) {
        match sample.name.as_str() {
            "response_total" => match sample.label("classification") {
                Some("success") => self.success += sample.value,
                Some("failure") => self.failure += sample.value,
                _ => self.other += sample.value,
            },
            "response_latency_ms_bucket" => {
                let Some(le) = sample.label("le").and_then(|le| le.parse::<f64>().ok()) else { return };
                // One series per status code and server: the same bound summed over them.
                match self.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some(entry) => entry.1 += sample.value,
                    None => self.buckets.push((le, sample.value)),
                }
            }
            _ => {}
        }
    }

    fn sort_buckets(&mut self) {
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    pub fn add(&mut self, other: &Counts) {
        self.success += other.success;
        self.failure += other.failure;
        self.other += other.other;
        for &(le, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some(entry) => entry.1 += count,
                None => self.buckets.push((le, count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What happened between `before` and `self` (a pod that restarted in between counts from 0).
    pub fn since(&self, before: &Counts) -> Counts {
        let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
        Counts {
            success: delta(self.success, before.success),
            failure: delta(self.failure, before.failure),
            other: delta(self.other, before.other),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, now)| {
                    let then = before.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
                    (le, delta(now, then))
                })
                .collect(),
        }
    }

    pub fn responses(&self) -> f64 {
        self.success + self.failure + self.other
    }
}

/// The `q` quantile (0 to 1) of a cumulative histogram, interpolated within its bucket as
/// Prometheus's `histogram_quantile` does; `None` without observations. In the +Inf bucket it is
/// the largest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let fraction = if within > 0.0 { (rank - lower.1) / within } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// Pods with a proxy, of the pods the workload has.
    pub meshed: usize,
    pub pods: usize,
    #[serde(flatten)]
    pub figures: Figures,
    /// Pods whose proxy could not be read (named in the error output).
    pub unreadable: usize,
}

/// What a row says of the responses counted in a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Of the responses that were a success or a failure; `None` when there were none.
    pub success_rate: Option<f64>,
    pub requests_per_second: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

impl Figures {
    pub fn new(counts: &Counts, window: Duration) -> Self {
        let judged = counts.success + counts.failure;
        Figures {
            success_rate: (judged > 0.0).then(|| counts.success / judged),
            requests_per_second: counts.responses() / window.as_secs_f64().max(f64::EPSILON),
            latency_p50_ms: quantile(&counts.buckets, 0.5),
            latency_p95_ms: quantile(&counts.buckets, 0.95),
            latency_p99_ms: quantile(&counts.buckets, 0.99),
        }
    }

    /// SUCCESS, RPS, LATENCY_P50, LATENCY_P95, LATENCY_P99, as the tables show them.
    fn cells(&self) -> [String; 5] {
        [
            percent(self.success_rate),
            format!("{:.1}", self.requests_per_second),
            millis(self.latency_p50_ms),
            millis(self.latency_p95_ms),
            millis(self.latency_p99_ms),
        ]
    }
}

impl Row {
    pub fn new(
        namespace: &str,
        name: &str,
        pods: usize,
        meshed: usize,
        counts: &Counts,
        window: Duration,
    ) -> Self {
        Row {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            meshed,
            pods,
            figures: Figures::new(counts, window),
            unreadable: 0,
        }
    }
}

/// The table `linkerd viz stat` users know: one row per workload.
pub fn render_table(rows: &[Row]) -> String {
    let mut lines: Vec<Vec<String>> = vec![
        ["NAMESPACE", "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for row in rows {
        let mut line = vec![row.namespace.clone(), row.name.clone(), format!("{}/{}", row.meshed, row.pods)];
        line.extend(row.figures.cells());
        lines.push(line);
    }
    columns(&lines)
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.2}%", rate * 100.0))
}

/// Tenths below 10 ms: a mesh's hops are well under one.
fn millis(value: Option<f64>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |ms| if ms < 10.0 { format!("{ms:.1}ms") } else { format!("{ms:.0}ms") },
    )
}

/// Left-aligned columns, three spaces apart.
fn columns(lines: &[Vec<String>]) -> String {
    let count = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..count)
        .map(|c| lines.iter().map(|l| l.get(c).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("   ").trim_end());
    }
    out
}

/// What to group the pods by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Deployment,
    Namespace,
}

/// Reads every meshed pod's counters in `namespace`, waits `window`, reads them again, and
/// returns one row per Deployment or for the namespace. A pod whose proxy cannot be read is left
/// out of the figures, counted in `unreadable` and reported on stderr by the caller.
pub async fn gather(
    client: &Client,
    namespace: &str,
    by: By,
    window: Duration,
) -> Result<(Vec<Row>, Vec<String>), StatError> {
    let list_error = |what| {
        let namespace = namespace.to_owned();
        move |source| StatError::List { what, namespace, source }
    };
    let running = running_pods(client, namespace).await?;
    let meshed: Vec<(&Pod, String)> = running
        .iter()
        .filter_map(|pod| {
            let labels = pod.metadata.labels.as_ref()?;
            let group = match by {
                By::Deployment => labels.get(DEPLOYMENT_LABEL)?.clone(),
                By::Namespace => is_meshed(pod).then(|| namespace.to_owned())?,
            };
            Some((pod, group))
        })
        .collect();

    let mut problems = Vec::new();
    let pods: Vec<&Pod> = meshed.iter().map(|(pod, _)| *pod).collect();
    let (before, after) = read_twice(client, namespace, &pods, window, &mut problems).await;
    let inbound = |samples: Vec<Option<Vec<Sample>>>| -> Vec<Option<Counts>> {
        samples.into_iter().map(|samples| samples.map(|samples| Counts::inbound(&samples))).collect()
    };
    let (before, after) = (inbound(before), inbound(after));

    let mut groups: BTreeMap<String, (Counts, usize, usize)> = BTreeMap::new();
    for ((_, group), (then, now)) in meshed.iter().zip(before.iter().zip(&after)) {
        let entry = groups.entry(group.clone()).or_default();
        entry.1 += 1;
        match (then, now) {
            (Some(then), Some(now)) => entry.0.add(&now.since(then)),
            _ => entry.2 += 1,
        }
    }
    let totals: BTreeMap<String, usize> = match by {
        By::Deployment => {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let deployments =
                deployments.list(&ListParams::default()).await.map_err(list_error("deployments"))?;
            for deployment in &deployments.items {
                let name = deployment.metadata.name.clone().unwrap_or_default();
                groups.entry(name).or_default();
            }
            deployments
                .items
                .iter()
                .map(|d| {
                    let replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    (d.metadata.name.clone().unwrap_or_default(), usize::try_from(replicas).unwrap_or(0))
                })
                .collect()
        }
        By::Namespace => {
            groups.entry(namespace.to_owned()).or_default();
            [(namespace.to_owned(), running.len())].into_iter().collect()
        }
    };
    let rows = groups
        .into_iter()
        .map(|(name, (counts, meshed, unreadable))| {
            let pods = totals.get(&name).copied().unwrap_or(meshed).max(meshed);
            let mut row = Row::new(namespace, &name, pods, meshed, &counts, window);
            row.unreadable = unreadable;
            row
        })
        .collect();
    Ok((rows, problems))
}

/// One line of `braid stat route`: a route of a destination, as the callers in the namespace
/// sent to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRow {
    /// The namespace of the callers.
    pub namespace: String,
    /// The destination Service, as the proxies name it.
    pub service: String,
    /// The route's name; `[default]` for requests no route matched.
    pub route: String,
    #[serde(flatten)]
    pub figures: Figures,
}

impl RouteRow {
    pub fn new(namespace: &str, service: &str, route: &str, counts: &Counts, window: Duration) -> Self {
        RouteRow {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            route: if route.is_empty() { "[default]".to_owned() } else { route.to_owned() },
            figures: Figures::new(counts, window),
        }
    }
}

/// Whether `service` (a proxy's name for a destination, `web.shop.svc.cluster.local:8080`) is
/// the one `--to` names: the same name, or its first labels (`web`, `web.shop`, with or without
/// the rest of the domain), with or without the port.
pub fn names_service(to: &str, service: &str) -> bool {
    service == to || service.strip_prefix(to).is_some_and(|rest| rest.starts_with(['.', ':']))
}

/// Per-route figures of what the meshed pods' proxies sent in `window`, from the pods' own
/// counts read twice, one row per (destination, route), optionally only the destination `to`.
pub fn route_rows(
    namespace: &str,
    before: &[Option<Vec<Sample>>],
    after: &[Option<Vec<Sample>>],
    to: Option<&str>,
    window: Duration,
) -> Vec<RouteRow> {
    let mut totals: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for (then, now) in before.iter().zip(after) {
        let (Some(then), Some(now)) = (then, now) else { continue };
        let then = Counts::outbound_routes(then);
        for (key, now) in Counts::outbound_routes(now) {
            let delta = then.get(&key).map_or_else(|| now.clone(), |then| now.since(then));
            totals.entry(key).or_default().add(&delta);
        }
    }
    totals
        .into_iter()
        .filter(|((service, _), _)| to.is_none_or(|to| names_service(to, service)))
        .map(|((service, route), counts)| RouteRow::new(namespace, &service, &route, &counts, window))
        .collect()
}

/// Reads the outbound counters of every meshed pod in `namespace` twice, `window` apart: what
/// they sent to each route of each destination. Pods whose proxy cannot be read are reported on
/// stderr by the caller.
pub async fn gather_routes(
    client: &Client,
    namespace: &str,
    to: Option<&str>,
    window: Duration,
) -> Result<(Vec<RouteRow>, Vec<String>), StatError> {
    let running = running_pods(client, namespace).await?;
    let meshed: Vec<&Pod> = running.iter().filter(|pod| is_meshed(pod)).collect();
    let mut problems = Vec::new();
    let (before, after) = read_twice(client, namespace, &meshed, window, &mut problems).await;
    Ok((route_rows(namespace, &before, &after, to, window), problems))
}

/// The routes table, as `linkerd viz routes` shows it.
pub fn render_routes(rows: &[RouteRow]) -> String {
    let mut lines: Vec<Vec<String>> = vec![
        ["NAMESPACE", "SERVICE", "ROUTE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for row in rows {
        let mut line = vec![row.namespace.clone(), row.service.clone(), row.route.clone()];
        line.extend(row.figures.cells());
        lines.push(line);
    }
    columns(&lines)
}

/// Whether the webhook gave the pod a proxy (whatever owns the pod: a bare pod has no workload
/// label).
fn is_meshed(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|annotations| annotations.contains_key(INJECTED))
}

/// The pods of `namespace` that are running.
async fn running_pods(client: &Client, namespace: &str) -> Result<Vec<Pod>, StatError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods.list(&ListParams::default()).await.map_err(|source| StatError::List {
        what: "pods",
        namespace: namespace.to_owned(),
        source,
    })?;
    Ok(pods
        .items
        .into_iter()
        .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect())
}

/// Each pod's proxy metrics read, then read again `window` later: (before, after).
async fn read_twice(
    client: &Client,
    namespace: &str,
    pods: &[&Pod],
    window: Duration,
    problems: &mut Vec<String>,
) -> (Vec<Option<Vec<Sample>>>, Vec<Option<Vec<Sample>>>) {
    let before = read_all(client, namespace, pods, problems).await;
    tokio::time::sleep(window).await;
    let after = read_all(client, namespace, pods, problems).await;
    (before, after)
}

/// Each pod's proxy metrics, through the API server's proxy to its admin port.
async fn read_all(
    client: &Client,
    namespace: &str,
    pods: &[&Pod],
    problems: &mut Vec<String>,
) -> Vec<Option<Vec<Sample>>> {
    let mut all = Vec::with_capacity(pods.len());
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}:{ADMIN_PORT}/proxy/metrics");
        let request = http::Request::get(path).body(Vec::new());
        let text = match request {
            Ok(request) => client.request_text(request).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match text {
            Ok(text) => all.push(Some(parse(&text))),
            Err(error) => {
                problems.push(format!("pod {namespace}/{name}: cannot read its proxy's metrics: {error}"));
                all.push(None);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a proxy exposes, shortened: two response series, one outbound, and a histogram.
    const METRICS: &str = r#"# HELP response Responses.
# TYPE response counter
response_total{direction="inbound",authority="10.0.0.5:8080",dst_service="",route="",client_id="spiffe://cluster.local/ns/shop/sa/web",server_id="",status_code="200",classification="success"} 90
response_total{direction="inbound",authority="10.0.0.5:8080",dst_service="",route="",client_id="",server_id="",status_code="503",classification="failure"} 10
response_total{direction="inbound",authority="a \"quoted\" one",dst_service="",route="",client_id="",server_id="",status_code="200",classification="cancelled"} 2
response_total{direction="outbound",authority="db",dst_service="db",route="",client_id="",server_id="",status_code="200",classification="success"} 500
response_latency_ms_bucket{direction="inbound",authority="10.0.0.5:8080",target_addr="10.0.0.5:8080",dst_service="",route="",client_id="",server_id="",tls="no_identity",status_code="200",le="1.0"} 10
response_latency_ms_bucket{direction="inbound",authority="10.0.0.5:8080",target_addr="10.0.0.5:8080",dst_service="",route="",client_id="",server_id="",tls="no_identity",status_code="200",le="10.0"} 90
response_latency_ms_bucket{direction="inbound",authority="10.0.0.5:8080",target_addr="10.0.0.5:8080",dst_service="",route="",client_id="",server_id="",tls="no_identity",status_code="200",le="100.0"} 100
response_latency_ms_bucket{direction="inbound",authority="10.0.0.5:8080",target_addr="10.0.0.5:8080",dst_service="",route="",client_id="",server_id="",tls="no_identity",status_code="200",le="+Inf"} 102
response_latency_ms_count{direction="inbound"} 102
"#;

    #[test]
    fn parses_samples_with_escaped_labels_and_skips_comments() {
        let samples = parse(METRICS);
        assert_eq!(samples.len(), 9);
        assert_eq!(samples[2].label("authority"), Some("a \"quoted\" one"));
        assert_eq!(samples[2].value, 2.0);
        assert!(parse("not a sample\nname{broken 3\n").is_empty(), "malformed lines are skipped");
    }

    #[test]
    fn inbound_counts_leave_the_outbound_side_out() {
        let counts = Counts::inbound(&parse(METRICS));
        assert_eq!((counts.success, counts.failure, counts.other), (90.0, 10.0, 2.0));
        assert_eq!(counts.buckets, vec![(1.0, 10.0), (10.0, 90.0), (100.0, 100.0), (f64::INFINITY, 102.0)]);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let buckets = [(1.0, 10.0), (10.0, 90.0), (100.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 0.5), Some(1.0 + 9.0 * (40.0 / 80.0)));
        assert_eq!(quantile(&buckets, 0.95), Some(10.0 + 90.0 * 0.5));
        assert_eq!(quantile(&buckets, 0.05), Some(0.5));
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None, "no observations");
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(1.0),
            "all beyond the last bound"
        );
    }

    #[test]
    fn a_window_is_the_difference_of_two_reads_and_a_restart_counts_from_zero() {
        let before = Counts {
            success: 90.0,
            failure: 10.0,
            other: 0.0,
            buckets: vec![(10.0, 50.0), (f64::INFINITY, 100.0)],
        };
        let after = Counts {
            success: 190.0,
            failure: 10.0,
            other: 1.0,
            buckets: vec![(10.0, 140.0), (f64::INFINITY, 201.0)],
        };
        let window = after.since(&before);
        assert_eq!((window.success, window.failure, window.other), (100.0, 0.0, 1.0));
        assert_eq!(window.buckets, vec![(10.0, 90.0), (f64::INFINITY, 101.0)]);
        let restarted = Counts { success: 5.0, ..Counts::default() };
        assert_eq!(restarted.since(&before).success, 5.0);

        let row = Row::new("shop", "web", 2, 2, &window, Duration::from_secs(10));
        assert_eq!(row.figures.success_rate, Some(1.0));
        assert!((row.figures.requests_per_second - 10.1).abs() < 1e-9);
        let table =
            render_table(&[row, Row::new("shop", "idle", 1, 0, &Counts::default(), Duration::from_secs(10))]);
        assert_eq!(
            table,
            "NAMESPACE   NAME   MESHED   SUCCESS   RPS    LATENCY_P50   LATENCY_P95   LATENCY_P99\n\
             shop        web    2/2      100.00%   10.1   5.6ms         10ms          10ms\n\
             shop        idle   0/1      -         0.0    -             -             -\n"
        );
    }

    /// One caller's outbound series: two routes of `web`, one request no route matched, and
    /// a passthrough request (no dst_service), read at `scale` times the counts.
    fn caller(scale: f64) -> Vec<Sample> {
        let text = format!(
            r#"response_total{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",server_id="spiffe://x",tls="true",status_code="200",classification="success"}} {a}
response_total{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",server_id="spiffe://x",tls="true",status_code="503",classification="failure"}} {b}
response_latency_ms_bucket{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",status_code="200",le="10.0"}} {a}
response_latency_ms_bucket{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",status_code="200",le="+Inf"}} {a}
response_latency_ms_bucket{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",status_code="503",le="10.0"}} 0
response_latency_ms_bucket{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="api",status_code="503",le="+Inf"}} {b}
response_total{{direction="outbound",dst_service="web.shop.svc.cluster.local",route="",status_code="404",classification="success"}} {b}
response_total{{direction="outbound",dst_service="webhooks.shop.svc.cluster.local",route="",status_code="200",classification="success"}} {a}
response_total{{direction="outbound",dst_service="",route="",status_code="200",classification="success"}} {a}
response_total{{direction="inbound",dst_service="",route="",status_code="200",classification="success"}} {a}
"#,
            a = 90.0 * scale,
            b = 10.0 * scale
        );
        parse(&text)
    }

    #[test]
    fn route_rows_are_what_the_callers_sent_to_each_route_in_the_window() {
        let before = [Some(caller(1.0)), Some(caller(1.0)), None];
        let after = [Some(caller(2.0)), Some(caller(3.0)), Some(caller(5.0))];
        let rows = route_rows("shop", &before, &after, Some("web"), Duration::from_secs(10));
        // The unreadable pod is left out; `webhooks` is not `web`; passthrough has no route row.
        let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.service.as_str(), r.route.as_str())).collect();
        assert_eq!(
            names,
            [("web.shop.svc.cluster.local", "[default]"), ("web.shop.svc.cluster.local", "api")]
        );
        let api = &rows[1];
        // 90 + 180 successes and 10 + 20 failures in 10 s; the 503s' slower bucket is summed in.
        let api = &api.figures;
        assert_eq!(api.success_rate, Some(0.9));
        assert!((api.requests_per_second - 30.0).abs() < 1e-9, "{api:?}");
        assert_eq!(api.latency_p50_ms, Some(10.0 * (150.0 / 270.0)));
        assert_eq!(api.latency_p99_ms, Some(10.0), "in the +Inf bucket: the largest finite bound");
        assert_eq!(
            render_routes(&rows),
            "NAMESPACE   SERVICE                      ROUTE       SUCCESS   RPS    LATENCY_P50   LATENCY_P95   LATENCY_P99\n\
             shop        web.shop.svc.cluster.local   [default]   100.00%   3.0    -             -             -\n\
             shop        web.shop.svc.cluster.local   api         90.00%    30.0   5.6ms         10ms          10ms\n"
        );
        let json = serde_json::to_value(&rows[1]).unwrap_or_default();
        assert_eq!(json["success_rate"], 0.9, "-o json keeps the figures at the top level: {json}");
        assert_eq!(json["route"], "api", "{json}");
        let all = route_rows("shop", &before, &after, None, Duration::from_secs(10));
        assert_eq!(all.len(), 3, "with no --to, every destination: {all:?}");
    }

    #[test]
    fn to_names_a_service_by_its_full_name_or_its_first_labels() {
        assert!(names_service("web", "web.shop.svc.cluster.local"));
        assert!(names_service("web.shop", "web.shop.svc.cluster.local"));
        assert!(names_service("web.shop.svc.cluster.local", "web.shop.svc.cluster.local"));
        assert!(names_service("web.shop.svc.cluster.local", "web.shop.svc.cluster.local:8080"));
        assert!(names_service("web", "web.shop.svc.cluster.local:8080"));
        assert!(!names_service("web.shop.svc.cluster.local:80", "web.shop.svc.cluster.local:8080"));
        assert!(!names_service("we", "web.shop.svc.cluster.local"));
        assert!(!names_service("web.other", "web.shop.svc.cluster.local"));
    }
}
