//! `braid routes POD`: what a pod's proxy has been told, from its `/config` (read through a
//! port-forward, see proxy_admin.rs): each service with its routes (matches, weighted backends,
//! timeout, retries), the endpoints of each backend, and what discovery sent (the version each
//! destination runs, whether the newest was acked or nacked and why), like `istioctl
//! proxy-config routes`.
//!
//! `parse` reads the proxy's JSON leniently (only the fields shown, so a newer proxy's additions
//! do not break an older CLI); `report` (pure) makes the rows; `render_text` prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error(
        "the proxy's /config is not the JSON braid routes reads ({0}); a braid CLI of the proxy's version reads it, \
         and `-o json` prints it as it is"
    )]
    Malformed(String),
}

/// The parts of the proxy's /config answer the table shows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub config: ConfigView,
    #[serde(default)]
    pub discovery: Option<DiscoveryView>,
    #[serde(default)]
    pub file: Option<FileView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    #[serde(default)]
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendView>,
    #[serde(default)]
    pub routes: Vec<RouteView>,
    #[serde(default)]
    pub egress: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub address: String,
    #[serde(default)]
    pub meshed: bool,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub local: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<MatchView>,
    #[serde(default)]
    pub backends: Vec<WeightedView>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<RetriesView>,
    #[serde(default)]
    pub fault: Option<Value>,
    #[serde(default)]
    pub mirror: Option<MirrorView>,
    #[serde(default)]
    pub redirect: Option<Value>,
    #[serde(default)]
    pub rewrite: Option<Value>,
    #[serde(default)]
    pub rate_limit: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchView {
    /// One of `exact`, `prefix`, `regex`, to the path.
    #[serde(default)]
    pub path: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<ValueMatchView>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatchView {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedView {
    pub name: String,
    #[serde(default = "one")]
    pub weight: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetriesView {
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorView {
    pub backend: String,
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryView {
    pub endpoint: String,
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub inbound: SnapshotView,
    #[serde(default)]
    pub destinations: Vec<DestinationView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub last_version: Option<u64>,
    #[serde(default)]
    pub acked: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationView {
    pub destination: String,
    pub state: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(flatten)]
    pub snapshot: SnapshotView,
}

/// Reads the proxy's /config answer.
pub fn parse(json: &str) -> Result<ProxyConfig, RoutesError> {
    serde_json::from_str(json).map_err(|e| RoutesError::Malformed(e.to_string()))
}

/// What discovery says of one snapshot, and whether it is a problem (a nack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLine {
    pub text: String,
    pub nacked: bool,
}

pub fn snapshot_line(snapshot: &SnapshotView) -> SnapshotLine {
    let running = snapshot.version.map_or("none".to_owned(), |v| v.to_string());
    match (snapshot.last_version, &snapshot.error) {
        (None, None) => SnapshotLine { text: "no answer yet".into(), nacked: false },
        (Some(last), None) if snapshot.acked => {
            SnapshotLine { text: format!("version {last}, acked"), nacked: false }
        }
        (last, error) => SnapshotLine {
            text: format!(
                "{} nacked: {}; running version {running}",
                last.map_or("the newest version".to_owned(), |v| format!("version {v}")),
                error.as_deref().unwrap_or("no reason given")
            ),
            nacked: true,
        },
    }
}

/// The whole report: the pod, its discovery stream, one block per service, and the
/// destinations that are no mesh service (passthrough, pending, refused).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub pod: String,
    pub discovery: Vec<(String, SnapshotLine)>,
    pub services: Vec<ServiceBlock>,
    pub destinations: Vec<[String; 3]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBlock {
    pub name: String,
    /// Where it comes from and, from discovery, the version and ack.
    pub source: SnapshotLine,
    pub addresses: String,
    /// ROUTE, MATCH, BACKENDS, TIMEOUT, RETRIES, OTHER.
    pub routes: Vec<[String; 6]>,
    /// BACKEND, ENDPOINTS (one line each).
    pub backends: Vec<(String, Vec<String>)>,
}

/// The rows of the report, from the proxy's configuration.
pub fn report(pod: &str, proxy: &ProxyConfig) -> Report {
    let mut discovery = Vec::new();
    if let Some(d) = &proxy.discovery {
        let stream = if d.connected {
            "connected".to_owned()
        } else {
            format!(
                "not connected{}; the proxy routes with what it last received",
                d.last_error.as_ref().map_or(String::new(), |e| format!(" ({e})"))
            )
        };
        discovery.push((
            "discovery".to_owned(),
            SnapshotLine { text: format!("{} {stream}", d.endpoint), nacked: !d.connected },
        ));
        discovery.push(("inbound policy".to_owned(), snapshot_line(&d.inbound)));
    }
    if let Some(error) = proxy.file.as_ref().and_then(|f| f.last_error.as_ref()) {
        discovery.push((
            "configuration file".to_owned(),
            SnapshotLine { text: format!("last change refused: {error}"), nacked: true },
        ));
    }
    let destinations = proxy.discovery.as_ref().map_or(&[][..], |d| &d.destinations[..]);
    let services = proxy
        .config
        .services
        .iter()
        .map(|service| {
            let from = destinations
                .iter()
                .filter(|d| d.service.as_deref() == Some(&service.name))
                .collect::<Vec<_>>();
            let source = match from.as_slice() {
                [] => SnapshotLine { text: "from the configuration file".into(), nacked: false },
                [one] => snapshot_line(&one.snapshot),
                many => {
                    let lines: Vec<SnapshotLine> = many.iter().map(|d| snapshot_line(&d.snapshot)).collect();
                    SnapshotLine {
                        nacked: lines.iter().any(|l| l.nacked),
                        text: many
                            .iter()
                            .zip(&lines)
                            .map(|(d, l)| format!("{}: {}", d.destination, l.text))
                            .collect::<Vec<_>>()
                            .join("; "),
                    }
                }
            };
            ServiceBlock {
                name: service.name.clone(),
                source,
                addresses: service.addresses.join(", "),
                routes: service.routes.iter().enumerate().map(|(i, route)| route_row(i, route)).collect(),
                backends: service
                    .backends
                    .iter()
                    .map(|backend| {
                        (backend.name.clone(), backend.endpoints.iter().map(endpoint_text).collect())
                    })
                    .chain(service.egress.as_ref().map(|_| {
                        ("(egress)".to_owned(), vec!["to the address the app connected to".to_owned()])
                    }))
                    .collect(),
            }
        })
        .collect();
    let others = destinations
        .iter()
        .filter(|d| d.state != "service")
        .map(|d| {
            let line = snapshot_line(&d.snapshot);
            let detail = match (&d.snapshot.error, d.state.as_str()) {
                (Some(error), _) => error.clone(),
                (None, "passthrough") => "not a mesh Service: forwarded unchanged".to_owned(),
                (None, "pending") => "waiting for discovery's first answer".to_owned(),
                (None, "timed-out") => {
                    "no answer within initialTimeout: forwarded unchanged until one comes".to_owned()
                }
                (None, _) => line.text,
            };
            [d.destination.clone(), d.state.clone(), detail]
        })
        .collect();
    Report { pod: pod.to_owned(), discovery, services, destinations: others }
}

fn route_row(index: usize, route: &RouteView) -> [String; 6] {
    let name = route.name.clone().unwrap_or_else(|| format!("rule-{index}"));
    let matches = if route.matches.is_empty() {
        "*".to_owned()
    } else {
        route.matches.iter().map(match_text).collect::<Vec<_>>().join(" | ")
    };
    let total: u64 = route.backends.iter().map(|b| b.weight).sum();
    let backends = if route.redirect.is_some() {
        "(redirect)".to_owned()
    } else {
        route
            .backends
            .iter()
            .map(|b| {
                if route.backends.len() == 1 {
                    b.name.clone()
                } else {
                    let share = (b.weight * 100 + total / 2).checked_div(total).unwrap_or(0);
                    if b.weight == share {
                        format!("{} {share}%", b.name)
                    } else {
                        format!("{} w{} ({share}%)", b.name, b.weight)
                    }
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let retries = route.retries.as_ref().map_or("-".to_owned(), |r| {
        let mut text = format!("{} tries", r.attempts);
        if let Some(per_try) = &r.per_try_timeout {
            let _ = write!(text, ", {per_try} each");
        }
        if !r.retry_on.is_empty() {
            let _ = write!(text, ", on {}", r.retry_on.join(","));
        }
        text
    });
    let mut other = Vec::new();
    if let Some(fault) = &route.fault {
        other.push(format!("fault {}", compact(fault)));
    }
    if let Some(mirror) = &route.mirror {
        other.push(format!("mirror {} {}%", mirror.backend, mirror.percent.unwrap_or(100.0)));
    }
    if let Some(redirect) = &route.redirect {
        other.push(format!("redirect {}", compact(redirect)));
    }
    if let Some(rewrite) = &route.rewrite {
        other.push(format!("rewrite {}", compact(rewrite)));
    }
    if let Some(limit) = &route.rate_limit {
        other.push(format!("rate limit {}", compact(limit)));
    }
    [
        name,
        matches,
        backends,
        route.timeout.clone().unwrap_or_else(|| "-".to_owned()),
        retries,
        if other.is_empty() { "-".to_owned() } else { other.join("; ") },
    ]
}

/// `GET prefix /v1 header x-user=alice query q~^a`: one match's conditions, all of which hold.
fn match_text(m: &MatchView) -> String {
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(method.clone());
    }
    if let Some((kind, path)) = m.path.as_ref().and_then(|p| p.iter().next()) {
        parts.push(match kind.as_str() {
            "exact" => path.clone(),
            "prefix" => format!("{path}*"),
            _ => format!("~{path}"),
        });
    }
    let value = |v: &ValueMatchView| match (&v.exact, &v.regex) {
        (Some(exact), _) => format!("{}={exact}", v.name),
        (None, Some(regex)) => format!("{}~{regex}", v.name),
        (None, None) => v.name.clone(),
    };
    parts.extend(m.headers.iter().map(|h| format!("header {}", value(h))));
    parts.extend(m.query_params.iter().map(|q| format!("query {}", value(q))));
    if parts.is_empty() { "*".to_owned() } else { parts.join(" ") }
}

fn endpoint_text(endpoint: &EndpointView) -> String {
    match (&endpoint.identity, endpoint.meshed, endpoint.local) {
        (_, _, true) => format!("{} (this pod)", endpoint.address),
        (Some(identity), _, _) => format!("{} mTLS {identity}", endpoint.address),
        (None, true, _) => format!("{} meshed", endpoint.address),
        (None, false, _) => format!("{} plaintext", endpoint.address),
    }
}

/// A JSON value on one line, without quotes around keys and strings: `{abort: {status: 503}}`.
fn compact(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let inner: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {}", compact(v))).collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(compact).collect::<Vec<_>>().join(", ")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The report as text: the discovery lines, then per service its header, its routes table and
/// its backends table, then the other destinations. With `color`, nacks in red.
pub fn render_text(report: &Report, color: bool) -> String {
    let paint = |line: &SnapshotLine| {
        if color && line.nacked { format!("\x1b[31m{}\x1b[0m", line.text) } else { line.text.clone() }
    };
    let mut out = String::new();
    let _ = writeln!(out, "pod {}", report.pod);
    for (what, line) in &report.discovery {
        let _ = writeln!(out, "{what}: {}", paint(line));
    }
    if report.services.is_empty() {
        let _ = writeln!(out, "\nno services: every connection of this pod is forwarded unchanged");
    }
    for service in &report.services {
        let addresses =
            if service.addresses.is_empty() { String::new() } else { format!(" ({})", service.addresses) };
        let _ = writeln!(out, "\nSERVICE {}{addresses}: {}", service.name, paint(&service.source));
        let mut rows = vec![["ROUTE", "MATCH", "BACKENDS", "TIMEOUT", "RETRIES", "OTHER"].map(str::to_owned)];
        rows.extend(service.routes.iter().cloned());
        table(&mut out, &rows);
        let mut rows = vec![["BACKEND".to_owned(), "ENDPOINTS".to_owned()]];
        for (backend, endpoints) in &service.backends {
            if endpoints.is_empty() {
                rows.push([backend.clone(), "none ready".to_owned()]);
            }
            for (i, endpoint) in endpoints.iter().enumerate() {
                rows.push([if i == 0 { backend.clone() } else { String::new() }, endpoint.clone()]);
            }
        }
        table(&mut out, &rows);
    }
    if !report.destinations.is_empty() {
        let _ = writeln!(out, "\nOTHER DESTINATIONS");
        let mut rows = vec![["DESTINATION", "STATE", "DETAIL"].map(str::to_owned)];
        rows.extend(report.destinations.iter().cloned());
        table(&mut out, &rows);
    }
    out
}

/// Columns padded to their widest cell, indented two spaces.
fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> =
        (0..N).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "  {}", cells.join("   ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy's /config, shortened: a discovered service with an 80/20 split and a retried
    /// GET /v1 route, a nacked destination, a passthrough one.
    const CONFIG: &str = r#"{
  "config": {
    "admin": "0.0.0.0:4191",
    "futureField": {"a proxy newer than this CLI": true},
    "services": [
      {
        "name": "reviews.shop.svc.cluster.local:8080",
        "addresses": ["10.96.4.2:8080"],
        "protocol": "auto",
        "backends": [
          {"name": "reviews-v1", "endpoints": [
            {"address": "10.244.0.5:8080", "meshed": true, "identity": "spiffe://cluster.local/ns/shop/sa/reviews"},
            {"address": "10.244.0.6:8080", "meshed": true, "identity": "spiffe://cluster.local/ns/shop/sa/reviews"}]},
          {"name": "reviews-v2", "endpoints": []}
        ],
        "routes": [
          {"name": "get-v1", "matches": [{"path": {"prefix": "/v1"}, "method": "GET"},
                                         {"headers": [{"name": "x-canary", "exact": "yes"}]}],
           "backends": [{"name": "reviews-v1", "weight": 1}],
           "timeout": "5s", "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": ["gateway-error", "connect-failure"]}},
          {"backends": [{"name": "reviews-v1", "weight": 80}, {"name": "reviews-v2", "weight": 20}],
           "fault": {"abort": {"status": 503, "percent": 5.0}}}
        ]
      },
      {"name": "db", "listen": "127.0.0.1:5432", "protocol": "opaque",
       "backends": [{"name": "db", "endpoints": [{"address": "10.0.0.9:5432"}]}],
       "routes": [{"backends": [{"name": "db"}]}]}
    ]
  },
  "file": {"path": "/etc/braid/proxy.yaml", "appliedAt": 1800000000, "lastError": null},
  "discovery": {
    "endpoint": "braid-discovery.braid-system.svc:8086", "serverName": "braid-discovery.braid-system.svc",
    "connected": true, "lastError": null,
    "inbound": {"version": 4, "lastVersion": 4, "acked": true, "error": null},
    "destinations": [
      {"destination": "10.96.4.2:8080", "state": "service", "service": "reviews.shop.svc.cluster.local:8080",
       "version": 12, "lastVersion": 12, "acked": true, "error": null},
      {"destination": "10.96.9.9:80", "state": "refused", "service": null,
       "version": null, "lastVersion": 3, "acked": false, "error": "service ratings: routes[0].backends[0]: no backend named x"},
      {"destination": "10.96.0.1:443", "state": "passthrough", "service": null,
       "version": 2, "lastVersion": 2, "acked": true, "error": null}
    ]
  }
}"#;

    #[test]
    fn the_report_shows_routes_weights_endpoints_and_acks() {
        let proxy = parse(CONFIG).unwrap();
        let text = render_text(&report("shop/web-1", &proxy), false);
        let expected = "\
pod shop/web-1
discovery: braid-discovery.braid-system.svc:8086 connected
inbound policy: version 4, acked

SERVICE reviews.shop.svc.cluster.local:8080 (10.96.4.2:8080): version 12, acked
  ROUTE    MATCH                            BACKENDS                         TIMEOUT   RETRIES                                              OTHER
  get-v1   GET /v1* | header x-canary=yes   reviews-v1                       5s        3 tries, 2s each, on gateway-error,connect-failure   -
  rule-1   *                                reviews-v1 80%, reviews-v2 20%   -         -                                                    fault {abort: {percent: 5.0, status: 503}}
  BACKEND      ENDPOINTS
  reviews-v1   10.244.0.5:8080 mTLS spiffe://cluster.local/ns/shop/sa/reviews
               10.244.0.6:8080 mTLS spiffe://cluster.local/ns/shop/sa/reviews
  reviews-v2   none ready

SERVICE db: from the configuration file
  ROUTE    MATCH   BACKENDS   TIMEOUT   RETRIES   OTHER
  rule-0   *       db         -         -         -
  BACKEND   ENDPOINTS
  db        10.0.0.9:5432 plaintext

OTHER DESTINATIONS
  DESTINATION     STATE         DETAIL
  10.96.9.9:80    refused       service ratings: routes[0].backends[0]: no backend named x
  10.96.0.1:443   passthrough   not a mesh Service: forwarded unchanged
";
        insta_like(&text, expected);
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn weights_that_are_not_percentages_show_both() {
        let route = RouteView {
            backends: vec![
                WeightedView { name: "a".into(), weight: 3 },
                WeightedView { name: "b".into(), weight: 1 },
            ],
            ..RouteView::default()
        };
        assert_eq!(route_row(0, &route)[2], "a w3 (75%), b w1 (25%)");
        let zero = RouteView {
            backends: vec![
                WeightedView { name: "a".into(), weight: 0 },
                WeightedView { name: "b".into(), weight: 0 },
            ],
            ..RouteView::default()
        };
        assert_eq!(route_row(0, &zero)[2], "a 0%, b 0%");
    }

    #[test]
    fn a_nack_says_which_version_why_and_what_runs_and_is_red_on_a_terminal() {
        let nacked =
            SnapshotView { version: Some(6), last_version: Some(7), acked: false, error: Some("bad".into()) };
        let line = snapshot_line(&nacked);
        assert_eq!(
            line,
            SnapshotLine { text: "version 7 nacked: bad; running version 6".into(), nacked: true }
        );
        assert_eq!(snapshot_line(&SnapshotView::default()).text, "no answer yet");

        let mut proxy = parse(CONFIG).unwrap();
        let discovery = proxy.discovery.as_mut().unwrap();
        discovery.destinations[0].snapshot = nacked;
        discovery.connected = false;
        discovery.last_error = Some("stream reset".into());
        let report = report("shop/web-1", &proxy);
        let text = render_text(&report, true);
        assert!(
            text.contains("\x1b[31mbraid-discovery.braid-system.svc:8086 not connected (stream reset); the proxy routes with what it last received\x1b[0m"),
            "{text}"
        );
        assert!(
            text.contains("(10.96.4.2:8080): \x1b[31mversion 7 nacked: bad; running version 6\x1b[0m"),
            "{text}"
        );
    }

    #[test]
    fn a_proxy_without_discovery_or_services_says_so() {
        let proxy = parse(r#"{"config": {}, "file": {"path": null}, "discovery": null}"#).unwrap();
        let text = render_text(&report("shop/web-1", &proxy), false);
        assert_eq!(
            text,
            "pod shop/web-1\n\nno services: every connection of this pod is forwarded unchanged\n"
        );
    }

    #[test]
    fn what_is_not_the_proxy_json_is_an_error_that_says_what_to_do() {
        for bad in
            ["", "not json", "[]", r#"{"config": {"services": [{"name": 3}]}}"#, r#"{"discovery": null}"#]
        {
            let error = parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("is not the JSON braid routes reads") && error.contains("-o json"),
                "{error}"
            );
        }
    }

    fn insta_like(actual: &str, expected: &str) {
        for (n, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "line {} of:\n{actual}", n + 1);
        }
        assert_eq!(actual.lines().count(), expected.lines().count(), "{actual}");
    }
}
