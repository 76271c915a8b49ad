//! Prometheus beside the local cluster scrapes the meshed pods' proxies with the scrape job that
//! docs/observability.md gives (Kubernetes pod discovery and its relabelling, read from the doc itself),
//! while a meshed load client sends 20 requests a second to a Deployment whose app fails 20 % of
//! them and delays another share by 25 ms. Flagger's Linkerd queries (request success rate and
//! request duration, as Flagger's source writes them) and the main queries of Linkerd's
//! Grafana dashboards then answer with the figures the load client measured itself.
//!
//! Tolerances: Flagger's queries run over a window that holds the whole load, so the success
//! rate is the load's own ratio up to the kubelet's readiness probes (a few, always 200), within
//! 1 percentage point; latency quantiles come from histogram buckets (Linkerd's bounds: … 10,
//! 20, 30, 40 ms …), so a p99 agrees when it lies in the same bucket as the client's or its
//! neighbour: the client's is 25 ms plus the mesh, at the 30 ms bound on a loaded machine. The dashboards' `irate(…[30s])` rates read the last two scrapes (2 s apart)
//! and agree within 25 %.
//!
//! Every query of the chart's Grafana dashboards (helm/braid/dashboards) is then run inside the
//! load, its variables given the test's own values, and must answer with at least one series.
//! For the panels that need more than `web` and its client, the test also runs: a canary
//! rollout of `web` (MeshRoute `web`, between two Services of web's own pods, so the figures
//! above do not move), with the operator scraped as docs/dashboards.md says; and Deployment
//! `caller`, a load client calling Deployment `api` through a route that retries and times out,
//! for a workload with destinations and a route with retries and timeouts.
//!
//! Needs the node (`make cluster-up`; the test builds Prometheus from its Go module if needed) and the
//! images (`make images`). A test binary of its own: it installs the chart, which owns the
//! cluster's single Mesh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_e2e::dashboards::{dashboards, substitute};
use braid_e2e::mesh::{apply, check_prerequisites, count, install, load};
use braid_e2e::{Cluster, eventually, free_local_addr, http_get, repo_root, setup};
use serde_json::Value;

/// Replicas of the Deployment under load.
const REPLICAS: u32 = 2;
/// What the load client sends, per second, and for how long.
const RATE: f64 = 20.0;
const LOAD_SECS: u64 = 90;

/// One series of a query's answer: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A Prometheus server on loopback with its own data directory, stopped and removed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts the Prometheus that `make tools` builds, scraping every 2 s with `scrape_job`.
    fn start(cluster: &Cluster, scrape_job: &str) -> Prometheus {
        let binary = cluster.tool("prometheus");
        let dir = std::env::temp_dir().join(format!("braid-e2e-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let config = format!(
            "global: {{ scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s }}\nscrape_configs:\n{scrape_job}"
        );
        eprintln!("prometheus configuration:\n{config}");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap_or_else(|err| panic!("cannot write the config: {err}"));
        let addr = free_local_addr();
        let log = std::fs::File::create(dir.join("prometheus.log"))
            .unwrap_or_else(|err| panic!("cannot create the log: {err}"));
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut prometheus = Prometheus { child, addr, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while http_get(addr, "/-/ready").is_none_or(|(status, _)| status != 200) {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("Prometheus exited ({status}); its log:\n{}", prometheus.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus not ready in 60 s; its log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query at `at` (Unix seconds): each result's labels and value. Panics with
    /// Prometheus' error for a query it refuses.
    fn query(&self, promql: &str, at: f64) -> Vec<Sample> {
        self.try_query(promql, at).unwrap_or_else(|err| panic!("{promql}: {err}"))
    }

    /// `query`, with Prometheus' answer as the error when it refuses the query.
    fn try_query(&self, promql: &str, at: f64) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}&time={at:.3}", percent_encode(promql));
        let (status, body) = http_get(self.addr, &path)
            .unwrap_or_else(|| panic!("Prometheus did not answer {promql}; its log:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body).map_err(|err| format!("{err}: {body}"))?;
        if (status, &answer["status"]) != (200, &Value::from("success")) {
            return Err(format!("HTTP {status}: {body}"));
        }
        let results = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(results
            .iter()
            .map(|result| {
                let labels = result["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = result["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The one value a query must return (one series, a number).
    fn value(&self, promql: &str, at: f64) -> f64 {
        let results = self.query(promql, at);
        assert_eq!(results.len(), 1, "{promql} returned {} series: {results:?}", results.len());
        let value = results[0].1;
        assert!(value.is_finite(), "{promql} returned {value}");
        eprintln!("{value:>10.3}  {}", promql.split_whitespace().collect::<Vec<_>>().join(" "));
        value
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything but unreserved characters percent-encoded, for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scrape job docs/observability.md shows users (its first YAML block under "## Scraping"), limited
/// to namespace `ns` and given the kubeconfig, since this Prometheus runs outside the cluster.
fn documented_scrape_job(cluster: &Cluster, ns: &str) -> String {
    let job = documented_yaml("docs/observability.md", "## Scraping");
    let discovery = "kubernetes_sd_configs: [{role: pod}]";
    assert!(job.contains(discovery), "the documented job discovers pods with `{discovery}`: {job}");
    let here = format!(
        "kubernetes_sd_configs: [{{role: pod, kubeconfig_file: \"{}\", namespaces: {{names: [{ns}]}}}}]",
        cluster.kubeconfig.display()
    );
    job.replace(discovery, &here)
}

/// The operator's scrape job docs/dashboards.md shows users, given the kubeconfig.
fn documented_operator_scrape_job(cluster: &Cluster) -> String {
    let job = documented_yaml("docs/dashboards.md", "### Scraping the operator");
    let discovery = "kubernetes_sd_configs: [{role: pod, namespaces: {names: [braid-system]}}]";
    assert!(job.contains(discovery), "the documented job discovers pods with `{discovery}`: {job}");
    let here = format!(
        "kubernetes_sd_configs: [{{role: pod, kubeconfig_file: \"{}\", namespaces: {{names: [braid-system]}}}}]",
        cluster.kubeconfig.display()
    );
    job.replace(discovery, &here)
}

/// The first ```yaml block under `heading` in `doc`.
fn documented_yaml(doc: &str, heading: &str) -> String {
    let doc_path = repo_root().join(doc);
    let text =
        std::fs::read_to_string(&doc_path).unwrap_or_else(|err| panic!("{}: {err}", doc_path.display()));
    let section =
        text.split_once(heading).map(|(_, rest)| rest).unwrap_or_else(|| panic!("{doc} has {heading}"));
    section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(job, _)| job.to_owned())
        .unwrap_or_else(|| panic!("a ```yaml block under {heading} in {doc}"))
}

/// Deployment `web` (SA `web`): its app fails 20 % of requests with 500 and delays 20 % of them
/// by 25 ms; readiness probed every 30 s, so the probes (through the proxy, as every probe of a
/// meshed pod) hardly weigh in the figures.
fn web(ns: &str) -> String {
    failing_echo(ns, "web", REPLICAS, "0.2", "25ms")
}

/// ServiceAccount, Deployment (`replicas` pods) and Service `name` of the echo app, which fails
/// `fail_rate` of requests with 500 and delays 20 % of them by `delay`; readiness probed every
/// 30 s.
fn failing_echo(ns: &str, name: &str, replicas: u32, fail_rate: &str, delay: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: {name}, namespace: {ns} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  replicas: {replicas}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      serviceAccountName: {name}
      containers:
        - name: {name}
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [echo, --name, {name}, --app-version, v1]
          env:
            - {{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}
            - {{ name: FAIL_RATE, value: "{fail_rate}" }}
            - {{ name: DELAY, value: {delay} }}
            - {{ name: DELAY_RATE, value: "0.2" }}
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 30 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  selector: {{ app: {name} }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
"#
    )
}

/// A canary rollout of `web` between two Services of web's own pods: the rollout dashboard has
/// backends, weights, a phase and checks to show, while every request still reaches the same
/// pods (the figures the test compares with the client's do not move). Checks every 10 s; web
/// fails 20 %, so the threshold lets it pass.
fn web_rollout(ns: &str) -> String {
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: {ns} }}\n\
             spec: {{ selector: {{ app: web }}, ports: [{{ name: http, port: 8080, targetPort: http }}] }}\n---\n"
        )
    };
    format!(
        r#"{}{}
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: web, namespace: {ns} }}
spec:
  service: web
  rules:
    - name: pages
      backends: [{{ service: web-stable, weight: 100 }}, {{ service: web-canary, weight: 0 }}]
  canary:
    stable: web-stable
    canary: web-canary
    steps: [20, 50]
    interval: 10s
    minSuccessRate: 50
    failureThreshold: 3
    minRequests: 10
"#,
        service("web-stable"),
        service("web-canary")
    )
}

/// Deployment `caller`: a load client (5 requests a second until stopped) calling Deployment
/// `api`, whose app fails 30 % of requests and delays 20 % by 300 ms, through route `retried`:
/// 5xx retried under a small budget (so that it runs out too), 100 ms per try (so that tries
/// time out). A workload with a destination, and a route with retries and timeouts.
fn caller_and_api(ns: &str) -> String {
    let api = failing_echo(ns, "api", 1, "0.3", "300ms");
    format!(
        r#"{api}---
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: api, namespace: {ns} }}
spec:
  service: api
  rules:
    - name: retried
      backends: [{{ service: api }}]
      timeout: 2s
      retries: {{ attempts: 3, perTryTimeout: 100ms, retryOn: ["5xx"], budget: {{ percent: 5, minRetriesPerSecond: 0 }} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: caller, namespace: {ns} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: caller, namespace: {ns} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: caller }} }}
  template:
    metadata: {{ labels: {{ app: caller }} }}
    spec:
      serviceAccountName: caller
      containers:
        - name: load
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [load, --url, "http://api.{ns}.svc.cluster.local:8080/", --rate, "5", --serve, "0.0.0.0:9090"]
"#
    )
}

/// Runs every query of every dashboard at `at` with each of `values` (one set of variable
/// values per workload the test runs): a query Prometheus refuses fails; one that answers no
/// series for any of the sets fails unless `allowed_empty` names its panel. Returns the number
/// of queries run.
fn check_dashboards(
    prometheus: &Prometheus,
    at: f64,
    values: &[(&str, BTreeMap<&str, &str>)],
    allowed_empty: &[(&str, &str)],
) -> usize {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dashboard in dashboards() {
        for query in dashboard.queries() {
            checked += 1;
            let mut answered_by = Vec::new();
            for (set, values) in values {
                let promql = substitute(&query.expr, values);
                if promql.contains('$') {
                    failures.push(format!(
                        "{} / {} ({}): a variable the test gives no value: {promql}",
                        query.dashboard, query.panel, query.ref_id
                    ));
                    continue;
                }
                match prometheus.try_query(&promql, at) {
                    Ok(results) if !results.is_empty() => {
                        answered_by.push(format!("{set}: {}", results.len()))
                    }
                    Ok(_) => {}
                    Err(err) => failures.push(format!(
                        "{} / {} ({}): Prometheus refused\n{promql}\n{err}",
                        query.dashboard, query.panel, query.ref_id
                    )),
                }
            }
            let allowed = allowed_empty.contains(&(query.dashboard.as_str(), query.panel.as_str()));
            eprintln!(
                "{:<24} {:<48} {} {}",
                query.dashboard,
                format!("{} ({})", query.panel, query.ref_id),
                if answered_by.is_empty() { "no series" } else { "series" },
                answered_by.join(", ")
            );
            if answered_by.is_empty() && !allowed {
                failures.push(format!(
                    "{} / {} ({}): no series for any of the test's workloads\n{}",
                    query.dashboard, query.panel, query.ref_id, query.expr
                ));
            }
        }
    }
    if !failures.is_empty() {
        // What was scraped then, and which operator led: an empty panel is most often a target
        // that was down, or a rollout's metrics on a replica that no longer leads.
        let context: Vec<String> = ["up", "braid_operator_leader", "braid_operator_canary_phase == 1"]
            .iter()
            .map(|query| format!("{query}: {:?}", prometheus.try_query(query, at)))
            .collect();
        panic!(
            "{} dashboard queries failed:\n\n{}\n\nat {at}:\n{}",
            failures.len(),
            failures.join("\n\n"),
            context.join("\n")
        );
    }
    checked
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// The upper bounds of response_latency_ms's buckets (Linkerd's), in ms.
const LATENCY_BOUNDS: [u64; 16] = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000];

#[tokio::test]
async fn flagger_and_linkerd_dashboard_queries_read_the_proxies_as_the_client_measured() {
    let (cluster, client, apps) = setup("e2e-prom").await;
    check_prerequisites(cluster);
    let _release = install(cluster, &[]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &web(ns));
    cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout=300s"]);

    let jobs = format!("{}{}", documented_scrape_job(cluster, ns), documented_operator_scrape_job(cluster));
    let prometheus = Prometheus::start(cluster, &jobs);
    eventually(Duration::from_secs(60), "every web pod's proxy to be scraped", || async {
        let up = prometheus.query(&format!("up{{namespace=\"{ns}\", deployment=\"web\"}} == 1"), unix_now());
        (up.len() == REPLICAS as usize).then_some(())
    })
    .await;
    let targets = prometheus.query(&format!("up{{namespace=\"{ns}\"}}"), unix_now());
    for (labels, _) in &targets {
        assert_eq!(labels.get("job").map(String::as_str), Some("braid-proxies"), "{labels:?}");
        assert!(labels.get("instance").is_some_and(|i| i.ends_with(":4191")), "the admin port: {labels:?}");
        assert!(labels.get("pod").is_some_and(|pod| pod.starts_with("web-")), "{labels:?}");
    }

    // For the dashboards: the rollout of web, and caller calling api, running before the load.
    apply(cluster, &web_rollout(ns));
    apply(cluster, &caller_and_api(ns));
    for deployment in ["deployment/api", "deployment/caller"] {
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, deployment, "--timeout=300s"]);
    }

    let started = unix_now();
    let url = format!("http://web.{ns}.svc.cluster.local:8080/");
    let (rate, duration) = (RATE.to_string(), format!("{LOAD_SECS}s"));
    let report =
        load(cluster, &client, ns, "load", "web", &["--url", &url, "--rate", &rate, "--duration", &duration])
            .await;
    // The client's own clock, as the scrapes': its last answer, not when the test saw the pod end.
    let ended = report["last_done_unix_ms"].as_f64().unwrap_or_default() / 1000.0;
    let (total, ok) = (count(&report, "total"), count(&report, "ok"));
    let client_success = 100.0 * ok as f64 / total as f64;
    let client_p99 = report["latency_ms"]["p99"].as_f64().unwrap_or_default();
    eprintln!("load client: {total} sent, {ok} 2xx ({client_success:.2} %), p99 {client_p99} ms: {report}");
    assert!(total >= (RATE as u64) * LOAD_SECS * 95 / 100, "the load client sent {total}");
    assert!((70.0..=90.0).contains(&client_success), "the app fails 20 %: {client_success}");
    // Two more scrapes, so the last answers are in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = unix_now();

    // Flagger's Linkerd queries, as its source (pkg/metrics/observers/linkerd.go) writes them,
    // with the interval covering the whole load.
    let interval = format!("{}s", (now - started).ceil() as u64 + 10);
    let flagger = |query: &str| {
        query
            .replace("{{ namespace }}", ns)
            .replace("{{ target }}", "web")
            .replace("{{ interval }}", &interval)
    };
    let success_rate = prometheus.value(
        &flagger(
            r#"
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				classification!="failure",
				direction="inbound"
			}[{{ interval }}]
		)
	) 
	/ 
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				direction="inbound"
			}[{{ interval }}]
		)
	) 
	* 100"#,
        ),
        now,
    );
    let duration_p99 = prometheus.value(
        &flagger(
            r#"
	histogram_quantile(
		0.99,
		sum(
			rate(
				response_latency_ms_bucket{
					namespace="{{ namespace }}",
					deployment=~"{{ target }}",
					direction="inbound"
				}[{{ interval }}]
			)
		) by (le)
	)"#,
        ),
        now,
    );
    eprintln!(
        "Flagger request-success-rate {success_rate:.2} % (client {client_success:.2} %), \
         request-duration p99 {duration_p99:.1} ms (client {client_p99} ms)"
    );
    assert!(
        (success_rate - client_success).abs() <= 1.0,
        "Flagger's success rate {success_rate:.2} % against the client's {client_success:.2} %"
    );
    // The delayed fifth of the requests sets the p99: 25 ms plus both proxies and the client's own
    // hop, a few ms more on a loaded machine.
    assert!(
        (25.0..=40.0).contains(&client_p99),
        "the client's p99 {client_p99} ms is a 25 ms delay plus the mesh"
    );
    // A quantile read from a histogram is as precise as its buckets: Prometheus interpolates within
    // the bucket that holds it, and web's proxy does not see the client's side of the path. So the
    // two agree to a bucket: the same one, or its neighbour (30.2 ms measured by the client against
    // 29.5 ms from the buckets 25-30 lies across the 30 ms bound).
    let bucket_index = |ms: f64| LATENCY_BOUNDS.iter().position(|&bound| ms <= bound as f64);
    let (flagger_bucket, client_bucket) = (bucket_index(duration_p99), bucket_index(client_p99));
    assert!(
        matches!((flagger_bucket, client_bucket), (Some(a), Some(b)) if a.abs_diff(b) <= 1),
        "Flagger's p99 {duration_p99} ms and the client's {client_p99} ms lie in one latency bucket or neighbours"
    );

    // Linkerd's `tls` label: every request of the meshed client reached web over mTLS. Within
    // 5 %: `increase` does not count a series' first scraped value (up to 2 s of load).
    let secured = prometheus.value(
        &format!(
            "sum(increase(response_total{{namespace=\"{ns}\", deployment=\"web\", direction=\"inbound\", tls=\"true\"}}[{interval}]))"
        ),
        now,
    );
    eprintln!("inbound responses over mTLS (tls=\"true\"): {secured:.0} (client sent {total})");
    assert!(
        (secured - total as f64).abs() <= total as f64 * 0.05,
        "{secured:.0} inbound responses with tls=\"true\", the meshed client sent {total}"
    );

    // Linkerd's target labels name the app's port, and a request that came over mTLS has no
    // `no_tls_reason`.
    let by_port = prometheus.query(
        &format!(
            "sum(response_total{{namespace=\"{ns}\", deployment=\"web\", direction=\"inbound\", tls=\"true\"}}) by (target_port, no_tls_reason)"
        ),
        now,
    );
    let ports: Vec<_> = by_port.iter().map(|(labels, _)| labels.clone()).collect();
    assert_eq!(ports.len(), 1, "web's inbound mTLS answers are one target port, no reason: {ports:?}");
    assert_eq!(ports[0].get("target_port").map(String::as_str), Some("8080"), "{ports:?}");
    assert_eq!(ports[0].get("no_tls_reason"), None, "{ports:?}");

    // The main panels of Linkerd's Grafana deployment dashboard, read inside the load.
    let during = ended - 5.0;
    let selector = format!("namespace=\"{ns}\", deployment=~\"web\", direction=\"inbound\"");
    let per_deployment = |query: &str| {
        let results = prometheus.query(query, during);
        assert_eq!(results.len(), 1, "{query}: {results:?}");
        assert_eq!(results[0].0.get("deployment").map(String::as_str), Some("web"), "{query}: {results:?}");
        eprintln!("{:>10.3}  {query}", results[0].1);
        results[0].1
    };
    let rps = per_deployment(&format!("sum(irate(request_total{{{selector}}}[30s])) by (deployment)"));
    assert!((RATE * 0.75..=RATE * 1.25).contains(&rps), "request rate {rps}/s, the load sends {RATE}/s");
    let success = per_deployment(&format!(
        "sum(irate(response_total{{classification=\"success\", {selector}}}[30s])) by (deployment) \
         / sum(irate(response_total{{{selector}}}[30s])) by (deployment)"
    ));
    assert!((0.55..=1.0).contains(&success), "success ratio {success} over the last 2 s, the app fails 20 %");
    let p99 = per_deployment(&format!(
        "histogram_quantile(0.99, sum(irate(response_latency_ms_bucket{{{selector}}}[30s])) by (le, deployment))"
    ));
    assert!(
        p99 > 10.0 && p99 <= 40.0,
        "p99 {p99} ms over the last 2 s: the 25 ms delay's bucket or a neighbour"
    );
    let connections = per_deployment(&format!("sum(tcp_open_connections{{{selector}}}) by (deployment)"));
    assert!(
        (1.0..=f64::from(REPLICAS) * 4.0).contains(&connections),
        "{connections} inbound connections held open to web's pods by one meshed client"
    );

    // Linkerd's authorization view of a workload (`linkerd viz authz`): requests let in, by
    // server, route and authorization. No MeshPolicy selects web, so its default inbound policy
    // is the server and let the load in; the kubelet's probes came in on their own route.
    let authz = prometheus.query(
        &format!(
            "sum(irate(inbound_http_authz_allow_total{{namespace=\"{ns}\", deployment=\"web\"}}[30s])) \
             by (srv_kind, srv_name, srv_port, route_kind, route_name, authz_kind, authz_name)"
        ),
        during,
    );
    eprintln!("web's requests let in, by server, route and authorization: {authz:?}");
    let label = |labels: &BTreeMap<String, String>, name: &str| labels.get(name).cloned().unwrap_or_default();
    let (load, probes): (Vec<_>, Vec<_>) =
        authz.iter().partition(|(labels, _)| label(labels, "route_name") == "default");
    assert_eq!(load.len(), 1, "one server, route and authorization let the load in: {authz:?}");
    let (labels, allowed) = load[0];
    let default = label(labels, "srv_name");
    assert!(default.starts_with("all-"), "a default that lets clients in names the server: {authz:?}");
    assert_eq!(
        [
            label(labels, "srv_kind"),
            label(labels, "srv_port"),
            label(labels, "route_kind"),
            label(labels, "authz_kind"),
            label(labels, "authz_name")
        ],
        ["default".to_owned(), "8080".to_owned(), "default".to_owned(), "default".to_owned(), default],
        "{authz:?}"
    );
    assert!((RATE * 0.75..=RATE * 1.25).contains(allowed), "{allowed}/s let in, the load sends {RATE}/s");
    for (labels, _) in probes {
        assert_eq!(
            (label(labels, "route_name"), label(labels, "authz_name")),
            ("probe".to_owned(), "probe".to_owned()),
            "{authz:?}"
        );
    }

    // Linkerd's outbound panels group the answers by the pod behind the endpoint: the load
    // client's requests to web, answered by web's pods, whichever of the rollout's Services led
    // there.
    let outbound =
        format!("namespace=\"{ns}\", direction=\"outbound\", dst_namespace=\"{ns}\", dst_deployment=\"web\"");
    let by_destination = prometheus.query(
        &format!("sum(irate(response_total{{{outbound}}}[30s])) by (dst_namespace, dst_deployment)"),
        during,
    );
    eprintln!("outbound responses by dst_deployment: {by_destination:?}");
    assert_eq!(by_destination.len(), 1, "one destination workload, web: {by_destination:?}");
    let answered = by_destination[0].1;
    assert!(
        (RATE * 0.75..=RATE * 1.25).contains(&answered),
        "{answered}/s answered by web, the load sends {RATE}/s"
    );
    // And the requests, as Linkerd's outbound request-rate panel reads them.
    let requested = prometheus.query(
        &format!("sum(irate(request_total{{{outbound}}}[30s])) by (dst_namespace, dst_deployment)"),
        during,
    );
    eprintln!("outbound requests by dst_deployment: {requested:?}");
    assert_eq!(requested.len(), 1, "one destination workload, web: {requested:?}");
    assert!(
        (RATE * 0.75..=RATE * 1.25).contains(&requested[0].1),
        "{}/s requests answered by web, the load sends {RATE}/s",
        requested[0].1
    );
    let pods = prometheus.value(&format!("count(count(response_total{{{outbound}}}) by (dst_pod))"), during);
    assert_eq!(pods, f64::from(REPLICAS), "each of web's pods answered, under its own dst_pod");
    let service_account =
        prometheus.value(&format!("count(response_total{{{outbound}, dst_serviceaccount=\"web\"}})"), during);
    assert!(service_account >= 1.0, "dst_serviceaccount names web's service account");

    // Every query of the chart's dashboards, inside the load. Grafana's $__rate_interval would
    // be 8 s here (four 2 s scrapes); 30 s, as the queries above, holds more of them.
    let common = [("__rate_interval", "30s"), ("__interval", "2s"), ("__range", "5m"), ("namespace", ns)];
    // The proxies name a destination by the Service's name, namespace, cluster domain and port.
    let (web_service, api_service) =
        (format!("web.{ns}.svc.cluster.local:8080"), format!("api.{ns}.svc.cluster.local:8080"));
    let web_values = BTreeMap::from_iter(common.into_iter().chain([
        ("client_namespace", ns),
        ("deployment", "web"),
        ("dst_service", web_service.as_str()),
        ("route", "pages"),
        ("meshroute", "web"),
    ]));
    let caller_values = BTreeMap::from_iter(common.into_iter().chain([
        ("client_namespace", ns),
        ("deployment", "caller"),
        ("dst_service", api_service.as_str()),
        ("route", "retried"),
        ("meshroute", "web"),
    ]));
    // Allowed empty: none. Every panel has data here: web's inbound panels from web, the
    // outbound and retry/timeout panels from caller and its route to api, the rollout's from the
    // canary of web and the operator.
    let allowed_empty: [(&str, &str); 0] = [];
    let checked = check_dashboards(
        &prometheus,
        during,
        &[("web", web_values), ("caller", caller_values)],
        &allowed_empty,
    );
    eprintln!("{checked} dashboard queries answered");
}
