//! Prometheus beside the local cluster scrapes the meshed pods' proxies with the scrape job that
//! docs/proxy.md gives (Kubernetes pod discovery and its relabelling, read from the doc itself),
//! while a meshed load client sends 20 requests a second to a Deployment whose app fails 20 % of
//! them and delays another share by 25 ms. Flagger's Linkerd queries (request success rate and
//! request duration, as Flagger's source writes them) and the main queries of Linkerd's
//! Grafana dashboards then answer with the figures the load client measured itself.
//!
//! Tolerances: Flagger's queries run over a window that holds the whole load, so the success
//! rate is the load's own ratio up to the kubelet's readiness probes (a few, always 200), within
//! 1 percentage point; latency quantiles come from histogram buckets (Linkerd's bounds: … 10,
//! 20, 30, 40 ms …), so a p99 agrees when it lies in the same bucket as the client's, which is
//! (20, 30] ms here. The dashboards' `irate(…[30s])` rates read the last two scrapes (2 s apart)
//! and agree within 25 %.
//!
//! Needs the node (`make cluster-up`, which also builds Prometheus from its Go module) and the
//! images (`make images`). A test binary of its own: it installs the chart, which owns the
//! cluster's single Mesh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_e2e::mesh::{apply, check_prerequisites, count, install, load};
use braid_e2e::{Cluster, eventually, free_local_addr, http_get, repo_root, setup};
use serde_json::Value;

/// Replicas of the Deployment under load.
const REPLICAS: u32 = 2;
/// What the load client sends, per second, and for how long.
const RATE: f64 = 20.0;
const LOAD_SECS: u64 = 90;

/// A Prometheus server on loopback with its own data directory, stopped and removed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts the Prometheus that `make cluster-up` built, scraping every 2 s with `scrape_job`.
    fn start(cluster: &Cluster, scrape_job: &str) -> Prometheus {
        let binary = cluster.bin_dir.join("prometheus");
        assert!(
            binary.is_file(),
            "{} is missing: `make cluster-up` (or `bash e2e/cluster/build-tools.sh prometheus`) builds it",
            binary.display()
        );
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
    fn query(&self, promql: &str, at: f64) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}&time={at:.3}", percent_encode(promql));
        let (status, body) = http_get(self.addr, &path)
            .unwrap_or_else(|| panic!("Prometheus did not answer {promql}; its log:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"));
        assert_eq!((status, &answer["status"]), (200, &Value::from("success")), "{promql}: {body}");
        let results = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        results
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
            .collect()
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

/// The scrape job docs/proxy.md shows users (its first YAML block under "### Scraping"), limited
/// to namespace `ns` and given the kubeconfig, since this Prometheus runs outside the cluster.
fn documented_scrape_job(cluster: &Cluster, ns: &str) -> String {
    let doc_path = repo_root().join("docs/proxy.md");
    let doc =
        std::fs::read_to_string(&doc_path).unwrap_or_else(|err| panic!("{}: {err}", doc_path.display()));
    let section =
        doc.split_once("### Scraping").map(|(_, rest)| rest).expect("docs/proxy.md has ### Scraping");
    let job = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(job, _)| job)
        .expect("a ```yaml block under ### Scraping");
    let discovery = "kubernetes_sd_configs: [{role: pod}]";
    assert!(job.contains(discovery), "the documented job discovers pods with `{discovery}`: {job}");
    let here = format!(
        "kubernetes_sd_configs: [{{role: pod, kubeconfig_file: \"{}\", namespaces: {{names: [{ns}]}}}}]",
        cluster.kubeconfig.display()
    );
    job.replace(discovery, &here)
}

/// Deployment `web` (SA `web`): its app fails 20 % of requests with 500 and delays 20 % of them
/// by 25 ms; readiness probed every 30 s, so the probes (through the proxy, as every probe of a
/// meshed pod) hardly weigh in the figures.
fn web(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: web, namespace: {ns} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: web, namespace: {ns} }}
spec:
  replicas: {REPLICAS}
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [echo, --name, web, --app-version, v1]
          env:
            - {{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}
            - {{ name: FAIL_RATE, value: "0.2" }}
            - {{ name: DELAY, value: 25ms }}
            - {{ name: DELAY_RATE, value: "0.2" }}
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 30 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: {ns} }}
spec:
  selector: {{ app: web }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
"#
    )
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// The upper bound of the histogram bucket (Linkerd's bounds) that holds `ms`.
fn bucket_of(ms: f64) -> u64 {
    let bounds = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000];
    bounds.into_iter().find(|&bound| ms <= bound as f64).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn flagger_and_linkerd_dashboard_queries_read_the_proxies_as_the_client_measured() {
    let (cluster, client, apps) = setup("e2e-prom").await;
    check_prerequisites(cluster);
    let _release = install(cluster, &[]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &web(ns));
    cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout=300s"]);

    let prometheus = Prometheus::start(cluster, &documented_scrape_job(cluster, ns));
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
    assert_eq!(bucket_of(client_p99), 30, "the client's p99 {client_p99} ms is a 25 ms delay plus the mesh");
    assert_eq!(
        bucket_of(duration_p99),
        bucket_of(client_p99),
        "Flagger's p99 {duration_p99} ms and the client's {client_p99} ms lie in one latency bucket"
    );

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
}
