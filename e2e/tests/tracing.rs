//! Traces through two meshed hops, stored by a real collector: Jaeger (v2, built from its Go module by
//! `e2e/cluster/build-tools.sh`), running as a pod in the test's namespace with its in-memory store, receives
//! OTLP/HTTP from the proxies and from the apps, and the test reads back what it stored through
//! Jaeger's query API, as a user looking at Jaeger would.
//!
//! Topology: a meshed load pod (ServiceAccount `client`) → Deployment `front` (the echo app, which
//! calls `back` for each request and passes the trace context on) → Deployment `back` (echo). The
//! Mesh names Jaeger as its collector, sampling 100 %. The apps report their own spans straight to
//! Jaeger (their pods skip the proxy for the collector's port, so exporting is not itself traced).
//!
//! - A request sent with a sampled `traceparent` of trace T makes one trace T of seven spans in one
//!   parent chain: the load client's root span → the load pod's proxy (CLIENT) → front's proxy
//!   (SERVER) → front's own span → front's proxy (CLIENT) → back's proxy (SERVER) → back's own
//!   span, with the pods, directions, peer SPIFFE identities, paths and status 200 on the proxies'
//!   spans.
//! - A request whose `traceparent` says "not sampled" makes no span at all.
//! - A request without `traceparent` is traced anyway (samplingPercent 100): the load pod's proxy
//!   starts the trace, found through Jaeger's search by service `braid-proxy` and path.
//!
//! Needs the node (`make cluster-up`; the test builds Jaeger from its Go module if needed) and the images
//! (`make images`); the test pushes Jaeger's image (one layer: the static binary) to the node's
//! registry itself. A test binary of its own: it installs the chart, which owns the cluster's
//! single Mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid_e2e::mesh::{LOAD_REPORT_PORT, addr, apply, check_prerequisites, count, install};
use braid_e2e::registry::Registry;
use braid_e2e::{Cluster, http_get, setup};
use serde_json::Value;

/// The image the test pushes Jaeger's binary in; the node pulls braid.dev/NAME from its registry.
const JAEGER_IMAGE: &str = "braid-jaeger:e2e";
const QUERY_PORT: u16 = 16686;
const OTLP_HTTP_PORT: u16 = 4318;
/// How long exported spans may take to be stored: the proxies and the apps batch them.
const SPANS_ARRIVE: Duration = Duration::from_secs(30);

/// Pushes an image of the Jaeger binary that `make tools` builds (one layer, the static binary
/// at /jaeger) to the node's registry; the pods name it braid.dev/braid-jaeger:e2e.
fn push_jaeger_image(cluster: &Cluster) {
    let binary = cluster.tool("jaeger");
    let dir = std::env::temp_dir().join(format!("braid-e2e-jaeger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
    let layer = dir.join("layer.tar");
    // Fixed owner and time: the same binary makes the same layer, which the registry then has.
    let tar = std::process::Command::new("tar")
        .args(["--create", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--file"])
        .arg(&layer)
        .arg("-C")
        .arg(binary.parent().unwrap_or(&cluster.bin_dir))
        .arg("--dereference")
        .arg("jaeger")
        .status()
        .unwrap_or_else(|err| panic!("cannot run tar: {err}"));
    assert!(tar.success(), "tar of {} failed: {tar}", binary.display());
    let registry = Registry::get();
    let reference = format!("{}/{JAEGER_IMAGE}", registry.address);
    let layer = layer.to_string_lossy();
    registry.crane_ok(&["append", "--oci-empty-base", "-f", &layer, "-t", &reference]);
    registry.crane_ok(&[
        "mutate",
        &reference,
        "--set-platform",
        "linux/amd64",
        "--entrypoint",
        "/jaeger",
        "-t",
        &reference,
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Jaeger with OTLP receivers, its in-memory store and its query API, not meshed; Service `jaeger`.
fn jaeger(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: jaeger, namespace: {ns} }}
data:
  config.yaml: |
    service:
      extensions: [jaeger_storage, jaeger_query, healthcheckv2]
      pipelines:
        traces:
          receivers: [otlp]
          processors: [batch]
          exporters: [jaeger_storage_exporter]
      telemetry:
        metrics: {{ level: none }}
    extensions:
      healthcheckv2:
        use_v2: true
        http: {{ endpoint: "0.0.0.0:13133" }}
      jaeger_storage:
        backends:
          memstore: {{ memory: {{ max_traces: 100000 }} }}
      jaeger_query:
        storage: {{ traces: memstore }}
        http: {{ endpoint: "0.0.0.0:{QUERY_PORT}" }}
        grpc: {{ endpoint: "0.0.0.0:16685" }}
    receivers:
      otlp:
        protocols:
          grpc: {{ endpoint: "0.0.0.0:4317" }}
          http: {{ endpoint: "0.0.0.0:{OTLP_HTTP_PORT}" }}
    processors:
      batch: {{ timeout: 200ms }}
    exporters:
      jaeger_storage_exporter: {{ trace_storage: memstore }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: jaeger, namespace: {ns} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: jaeger }} }}
  template:
    metadata:
      labels: {{ app: jaeger }}
      annotations: {{ braid.dev/inject: disabled }}
    spec:
      securityContext: {{ runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true }}
      containers:
        - name: jaeger
          image: braid.dev/{JAEGER_IMAGE}
          imagePullPolicy: Always
          args: [--config, /etc/jaeger/config.yaml]
          ports:
            - {{ name: otlp-http, containerPort: {OTLP_HTTP_PORT} }}
            - {{ name: otlp-grpc, containerPort: 4317 }}
            - {{ name: query, containerPort: {QUERY_PORT} }}
          readinessProbe: {{ httpGet: {{ path: /status, port: 13133 }}, periodSeconds: 1 }}
          volumeMounts: [{{ name: config, mountPath: /etc/jaeger }}]
      volumes: [{{ name: config, configMap: {{ name: jaeger }} }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: jaeger, namespace: {ns} }}
spec:
  selector: {{ app: jaeger }}
  ports:
    - {{ name: otlp-http, port: {OTLP_HTTP_PORT}, targetPort: otlp-http }}
    - {{ name: otlp-grpc, port: 4317, targetPort: otlp-grpc }}
    - {{ name: query, port: {QUERY_PORT}, targetPort: query }}
"#
    )
}

/// The environment that makes an app report its spans to Jaeger, as for any OpenTelemetry SDK.
fn otel_env(ns: &str, service: &str) -> String {
    format!(
        "{{ name: OTEL_EXPORTER_OTLP_ENDPOINT, value: \"http://jaeger.{ns}.svc.cluster.local:{OTLP_HTTP_PORT}\" }}, \
         {{ name: OTEL_SERVICE_NAME, value: {service} }}, \
         {{ name: POD_NAME, valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }} }}"
    )
}

/// ServiceAccount, Deployment (one pod) and Service `name` of the echo app, reporting its spans to
/// Jaeger, with `args` added to its command line. Its exports skip the proxy (port OTLP_HTTP_PORT).
fn traced_echo(ns: &str, name: &str, args: &[&str]) -> String {
    let env = otel_env(ns, name);
    let args: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
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
  replicas: 1
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata:
      labels: {{ app: {name} }}
      annotations: {{ braid.dev/skip-outbound-ports: "{OTLP_HTTP_PORT}" }}
    spec:
      serviceAccountName: {name}
      containers:
        - name: {name}
          image: braid.dev/braid-testapps:dev
          imagePullPolicy: Always
          command: [echo, --name, {name}{args}]
          env: [{env}]
          ports: [{{ name: http, containerPort: 8080 }}]
          readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 5 }}
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

/// A meshed pod (ServiceAccount `client`) that sends one request to `url` with `args` added
/// (the trace options) and reports its root span to Jaeger; returns its report once the request
/// is answered. The pod stays up (serving its report) until the namespace goes: its proxy sends
/// its spans in batches, which a stopping pod could cut short.
async fn one_request(cluster: &Cluster, ns: &str, name: &str, url: &str, args: &[&str]) -> Value {
    let serve = format!("0.0.0.0:{LOAD_REPORT_PORT}");
    let mut command = vec!["load", "--url", url, "--rate", "1", "--duration", "1s", "--serve", &serve];
    command.extend_from_slice(args);
    let command: Vec<String> = command.iter().map(|a| format!("\"{a}\"")).collect();
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{ app: load }}
  annotations: {{ braid.dev/skip-outbound-ports: "{OTLP_HTTP_PORT}" }}
spec:
  serviceAccountName: client
  restartPolicy: Never
  containers:
    - name: load
      image: braid.dev/braid-testapps:dev
      imagePullPolicy: Always
      command: [{}]
      env: [{}]
"#,
            command.join(", "),
            otel_env(ns, "load")
        ),
    );
    let what = format!("load pod {name} to send its request and get the answer");
    let report = braid_e2e::eventually(Duration::from_secs(180), &what, || async {
        let ip = cluster.kubectl(&["get", "pod", "-n", ns, name, "-o", "jsonpath={.status.podIP}"]);
        let ip = String::from_utf8_lossy(&ip.stdout).trim().to_owned();
        if ip.is_empty() {
            return None;
        }
        let (_, body) = http_get(addr(&ip, LOAD_REPORT_PORT), "/report").filter(|(code, _)| *code == 200)?;
        let report: Value = serde_json::from_str(&body).ok()?;
        // `running` is false before the first request too: done is a request finished and none open.
        let done = report["running"] == false && report["in_flight"] == 0 && count(&report, "total") >= 1;
        done.then_some(report)
    })
    .await;
    assert_eq!(
        (count(&report, "total"), count(&report, "ok")),
        (1, 1),
        "load pod {name} sent one request, answered 2xx: {report}"
    );
    report
}

/// A new random trace id (32 hex digits).
fn random_trace_id() -> String {
    let random = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:016x}{:016x}", random(), random())
}

/// One span as Jaeger's query API returns it, with its process (service and resource) resolved.
#[derive(Debug, Clone)]
struct StoredSpan {
    trace_id: String,
    span_id: String,
    /// The span ids of its CHILD_OF references.
    parents: Vec<String>,
    service: String,
    /// Span tags and process (resource) tags, the span's winning on a clash.
    tags: BTreeMap<String, Value>,
}

impl StoredSpan {
    fn tag(&self, key: &str) -> Option<&Value> {
        self.tags.get(key)
    }

    fn text(&self, key: &str) -> &str {
        self.tag(key).and_then(Value::as_str).unwrap_or_default()
    }

    fn summary(&self) -> String {
        format!(
            "{} {} parent {:?} service {} kind {} pod {} direction {} path {} status {} peer {}",
            self.trace_id,
            self.span_id,
            self.parents,
            self.service,
            self.text("span.kind"),
            self.text("k8s.pod.name"),
            self.text("braid.direction"),
            self.text("url.path"),
            self.tag("http.response.status_code").map(Value::to_string).unwrap_or_default(),
            self.text("braid.peer.identity"),
        )
    }
}

fn summaries(spans: &[StoredSpan]) -> String {
    spans.iter().map(StoredSpan::summary).collect::<Vec<_>>().join("\n  ")
}

/// Jaeger's query API on its pod's address.
struct Jaeger {
    query: SocketAddr,
}

impl Jaeger {
    /// The spans of every trace in a query answer (`data`: a list of traces).
    fn spans_of(answer: &Value) -> Vec<StoredSpan> {
        let mut spans = Vec::new();
        for trace in answer["data"].as_array().into_iter().flatten() {
            let processes = &trace["processes"];
            for span in trace["spans"].as_array().into_iter().flatten() {
                let process = &processes[span["processID"].as_str().unwrap_or_default()];
                let mut tags = BTreeMap::new();
                for tag in process["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(span["tags"].as_array().into_iter().flatten())
                {
                    tags.insert(tag["key"].as_str().unwrap_or_default().to_owned(), tag["value"].clone());
                }
                let parents = span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["refType"] == "CHILD_OF")
                    .map(|r| r["spanID"].as_str().unwrap_or_default().to_owned())
                    .collect();
                spans.push(StoredSpan {
                    trace_id: span["traceID"].as_str().unwrap_or_default().to_owned(),
                    span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    parents,
                    service: process["serviceName"].as_str().unwrap_or_default().to_owned(),
                    tags,
                });
            }
        }
        spans
    }

    /// GET `path` of the query API: its JSON, or None for "not found" (Jaeger answers 404 for a
    /// trace it does not have).
    fn get(&self, path: &str) -> Option<Value> {
        let (status, body) = http_get(self.query, path)
            .unwrap_or_else(|| panic!("Jaeger's query API at {} did not answer {path}", self.query));
        match status {
            200 => Some(serde_json::from_str(&body).unwrap_or_else(|err| panic!("{path}: {err}: {body}"))),
            404 => None,
            _ => panic!("Jaeger answered {path} with {status}: {body}"),
        }
    }

    /// The stored spans of trace `id` (none when Jaeger has no such trace).
    fn trace(&self, id: &str) -> Vec<StoredSpan> {
        self.get(&format!("/api/traces/{id}")).map(|answer| Self::spans_of(&answer)).unwrap_or_default()
    }

    /// Waits until trace `id` has at least `n` spans; then, after the batches that may still carry
    /// more of its spans, its spans. Panics with what it has when `n` do not arrive in time.
    async fn trace_of_at_least(&self, id: &str, n: usize) -> Vec<StoredSpan> {
        let deadline = Instant::now() + SPANS_ARRIVE;
        loop {
            let spans = self.trace(id);
            if spans.len() >= n {
                // A span too many would come in the next batches: give them time to come.
                tokio::time::sleep(Duration::from_secs(3)).await;
                return self.trace(id);
            }
            assert!(
                Instant::now() < deadline,
                "trace {id}: {} of {n} spans stored after {SPANS_ARRIVE:?}:\n  {}",
                spans.len(),
                summaries(&spans)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The traces of `service` whose spans have the tag `key`=`value` (Jaeger's search, the last hour).
    fn search(&self, service: &str, key: &str, value: &str) -> Vec<Vec<StoredSpan>> {
        let tags = percent_encode(&format!("{{\"{key}\":\"{value}\"}}"));
        let path = format!("/api/traces?service={service}&tags={tags}&lookback=1h&limit=100");
        let answer = self.get(&path).unwrap_or_default();
        answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|trace| Self::spans_of(&serde_json::json!({ "data": [trace] })))
            .collect()
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

/// One link of the expected chain.
struct Hop<'a> {
    what: &'a str,
    service: &'a str,
    kind: &'a str,
    /// The pod that made the span: exact, or a Deployment's name followed by '-'.
    pod: &'a str,
    /// Proxy spans only: direction, path and the peer's SPIFFE id.
    proxy: Option<(&'a str, &'a str, String)>,
}

/// Follows the parent chain of `spans` from its one root and checks each span against `hops`:
/// exactly these spans, each the only child of the one before.
fn assert_chain(trace: &str, spans: &[StoredSpan], hops: &[Hop<'_>], ns: &str) {
    let all = summaries(spans);
    assert_eq!(
        spans.len(),
        hops.len(),
        "trace {trace}: {} spans, expected {}:\n  {all}",
        spans.len(),
        hops.len()
    );
    for span in spans {
        assert_eq!(span.trace_id, trace, "one trace id:\n  {all}");
    }
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique:\n  {all}");
    let roots: Vec<&StoredSpan> =
        spans.iter().filter(|s| s.parents.iter().all(|p| !ids.contains(p.as_str()))).collect();
    assert_eq!(roots.len(), 1, "trace {trace} has one root:\n  {all}");
    let mut current = roots[0];
    assert!(current.parents.is_empty(), "the root has no parent:\n  {all}");
    let mut pods = BTreeMap::<&str, String>::new();
    for (i, hop) in hops.iter().enumerate() {
        let span = current;
        let context = format!("trace {trace}, span {} ({}):\n  {all}", i + 1, hop.what);
        assert_eq!(span.service, hop.service, "{context}");
        assert_eq!(span.text("span.kind"), hop.kind, "{context}");
        let pod = span.text("k8s.pod.name");
        if let Some(deployment) = hop.pod.strip_suffix('-') {
            assert!(
                pod.starts_with(hop.pod) && pod.len() > deployment.len() + 1,
                "a pod of {deployment}: {context}"
            );
            // Both spans of one pod (its proxy's and its app's) name the same pod.
            let first = pods.entry(hop.pod).or_insert_with(|| pod.to_owned());
            assert_eq!(first, pod, "one pod of {deployment}: {context}");
        } else {
            assert_eq!(pod, hop.pod, "{context}");
        }
        assert_eq!(span.tag("http.request.method"), Some(&Value::from("GET")), "{context}");
        assert_eq!(span.tag("http.response.status_code").and_then(Value::as_i64), Some(200), "{context}");
        if let Some((direction, path, peer)) = &hop.proxy {
            assert_eq!(span.text("k8s.namespace.name"), ns, "{context}");
            assert_eq!(span.text("braid.direction"), *direction, "{context}");
            assert_eq!(span.text("url.path"), *path, "{context}");
            assert_eq!(span.text("braid.peer.identity"), peer, "{context}");
            if *direction == "outbound" {
                let destination = if *path == "/next" { "back" } else { "front" };
                assert!(
                    span.text("server.address").starts_with(destination),
                    "server.address names the destination Service {destination}: {context}"
                );
            }
        }
        let children: Vec<&StoredSpan> = spans.iter().filter(|s| s.parents.contains(&span.span_id)).collect();
        if i + 1 == hops.len() {
            assert!(children.is_empty(), "the last span has no child: {context}");
        } else {
            assert_eq!(children.len(), 1, "one child: {context}");
            current = children[0];
        }
    }
}

/// Merge-patches the Mesh's tracing and checks that the API server kept the field (a CRD
/// without it prunes it silently).
fn configure_tracing(cluster: &Cluster, collector: &str) {
    let patch =
        serde_json::json!({ "spec": { "tracing": { "collector": collector, "samplingPercent": 100 } } });
    cluster.kubectl_ok(&["patch", "mesh", "default", "--type", "merge", "-p", &patch.to_string()]);
    let stored = cluster.kubectl_ok(&["get", "mesh", "default", "-o", "jsonpath={.spec.tracing.collector}"]);
    assert_eq!(
        stored.trim(),
        collector,
        "the Mesh kept no spec.tracing.collector: its CRD has no tracing field, so this build cannot export spans"
    );
}

#[tokio::test]
async fn a_traced_request_is_stored_as_one_trace_across_two_meshed_hops() {
    let (cluster, _client, apps) = setup("e2e-trace").await;
    check_prerequisites(cluster);
    push_jaeger_image(cluster);
    let ns = apps.name.as_str();
    let _release = install(cluster, &[]);
    let collector = format!("http://jaeger.{ns}.svc.cluster.local:{OTLP_HTTP_PORT}");
    configure_tracing(cluster, &collector);

    // The proxies of pods made from now on export to Jaeger.
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &jaeger(ns));
    let back = format!("http://back.{ns}.svc.cluster.local:8080/next");
    apply(
        cluster,
        &format!(
            "{}---{}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: {ns} }}\n",
            traced_echo(ns, "back", &[]),
            traced_echo(ns, "front", &["--call", &back])
        ),
    );
    for deployment in ["deployment/jaeger", "deployment/back", "deployment/front"] {
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, deployment, "--timeout=300s"]);
    }
    let ip = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app=jaeger",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let jaeger = Jaeger { query: addr(ip.trim(), QUERY_PORT) };

    let url = |path: &str| format!("http://front.{ns}.svc.cluster.local:8080{path}");
    // Not sampled first: its spans, were there any, would reach Jaeger before the sampled trace's.
    let unsampled = random_trace_id();
    let report = one_request(
        cluster,
        ns,
        "unsampled",
        &url("/unsampled"),
        &["--trace-id", &unsampled, "--trace-unsampled"],
    )
    .await;
    assert_eq!(report["trace_ids"], serde_json::json!([unsampled]));
    let sampled = random_trace_id();
    let (hello, untraced) = (url("/hello"), url("/untraced"));
    let sampled_args = ["--trace-id", sampled.as_str()];
    let (report, _) = tokio::join!(
        one_request(cluster, ns, "sampled", &hello, &sampled_args),
        one_request(cluster, ns, "untraced", &untraced, &[]),
    );
    assert_eq!(report["trace_ids"], serde_json::json!([sampled]));

    // The sampled request: seven spans in one chain.
    let spans = jaeger.trace_of_at_least(&sampled, 7).await;
    eprintln!("trace {sampled}:\n  {}", summaries(&spans));
    let spiffe = |sa: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let proxy = |what, kind, pod, direction, path, peer| Hop {
        what,
        service: "braid-proxy",
        kind,
        pod,
        proxy: Some((direction, path, spiffe(peer))),
    };
    let app = |what, service, pod| Hop {
        what,
        service,
        kind: if service == "load" { "client" } else { "server" },
        pod,
        proxy: None,
    };
    // What a request to `path` makes from front's proxy on, whoever started the trace.
    let front_and_back = |path| {
        [
            proxy("front's proxy, inbound", "server", "front-", "inbound", path, "client"),
            app("front's own span", "front", "front-"),
            proxy("front's proxy, outbound", "client", "front-", "outbound", "/next", "back"),
            proxy("back's proxy, inbound", "server", "back-", "inbound", "/next", "front"),
            app("back's own span", "back", "back-"),
        ]
    };
    let chain: Vec<Hop<'_>> = [
        app("the load client's root span", "load", "sampled"),
        proxy("the load pod's proxy", "client", "sampled", "outbound", "/hello", "front"),
    ]
    .into_iter()
    .chain(front_and_back("/hello"))
    .collect();
    assert_chain(&sampled, &spans, &chain, ns);
    // And no span of that request went into another trace.
    let traces = jaeger.search("braid-proxy", "url.path", "/hello");
    let ids: Vec<&str> = traces.iter().filter_map(|t| t.first()).map(|s| s.trace_id.as_str()).collect();
    assert_eq!(ids, [sampled.as_str()], "the proxies' spans of the sampled request are in its trace only");

    // Not sampled: no proxy nor app made a span of it.
    let stray = jaeger.trace(&unsampled);
    assert!(stray.is_empty(), "the unsampled trace {unsampled} has spans:\n  {}", summaries(&stray));
    // Nor did a proxy start a trace of its own for it.
    let traces = jaeger.search("braid-proxy", "url.path", "/unsampled");
    assert!(traces.is_empty(), "the unsampled request was traced anyway: {traces:#?}");

    // No traceparent: the load pod's proxy starts the trace (samplingPercent 100).
    let deadline = Instant::now() + SPANS_ARRIVE;
    let traces = loop {
        let traces = jaeger.search("braid-proxy", "url.path", "/untraced");
        if traces.first().is_some_and(|spans| spans.len() >= 6) || Instant::now() > deadline {
            break traces;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(traces.len(), 1, "one trace of the request without traceparent: {traces:#?}");
    let trace = traces[0].first().map(|s| s.trace_id.clone()).unwrap_or_default();
    let spans = jaeger.trace_of_at_least(&trace, 6).await;
    eprintln!("trace {trace} (no traceparent sent):\n  {}", summaries(&spans));
    let started_by = proxy(
        "the load pod's proxy, which started the trace",
        "client",
        "untraced",
        "outbound",
        "/untraced",
        "front",
    );
    let chain: Vec<Hop<'_>> = std::iter::once(started_by).chain(front_and_back("/untraced")).collect();
    assert_chain(&trace, &spans, &chain, ns);
    assert_ne!(trace, sampled);
}
