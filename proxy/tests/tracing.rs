//! Spans on real sockets: two sidecars (the client's outbound, the server's inbound) export to a
//! collector that decodes OTLP/HTTP with OpenTelemetry's own message types, and the app sees the
//! trace context that names the last proxy's span as its parent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message as _;
use support::{Proxy, Upstream, eventually, full, http1_client, metric, send, serve_http};
use tokio::net::TcpListener;

/// An OTLP/HTTP receiver: every span of every export request, with its resource's pod name.
struct Collector {
    addr: SocketAddr,
    spans: Mutex<Vec<(String, Span)>>,
    /// Answer nothing, ever: a collector that hangs.
    hang: bool,
}

impl Collector {
    async fn start(hang: bool) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector =
            Arc::new(Self { addr: listener.local_addr().unwrap(), spans: Mutex::default(), hang });
        let this = collector.clone();
        serve_http(listener, move |request: Request<hyper::body::Incoming>| {
            let this = this.clone();
            async move {
                if this.hang {
                    std::future::pending::<()>().await;
                }
                assert_eq!(request.uri().path(), "/v1/traces");
                assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource_spans in export.resource_spans {
                    let pod = resource_spans
                        .resource
                        .iter()
                        .flat_map(|resource| &resource.attributes)
                        .find(|kv| kv.key == "k8s.pod.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(pod) => Some(pod.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        this.spans
                            .lock()
                            .unwrap()
                            .extend(scope.spans.into_iter().map(|span| (pod.clone(), span)));
                    }
                }
                Ok::<_, std::convert::Infallible>(Response::new(full("")))
            }
        });
        collector
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().iter().map(|(_, span)| span.clone()).collect()
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.clone()
}

fn string(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Value::StringValue(text) => Some(text),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn two_traced_sidecars(app: SocketAddr, collector: SocketAddr, percent: u32) -> (Proxy, Proxy) {
    let tracing = format!("tracing: {{ collector: \"http://{collector}\", samplingPercent: {percent} }}\n");
    let server_side = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0, target: \"{app}\" }}\n{tracing}"
    ))
    .await;
    let client_side = Proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{tracing}\
         services:\n  - name: web.shop.svc.cluster.local\n    hosts: [web]\n    listen: 127.0.0.1:0\n\
         \x20   backends:\n      - {{ name: app, endpoints: [{{ address: \"{}\", meshed: true }}] }}\n\
         \x20   routes:\n      - name: hello\n        backends: [{{ name: app }}]\n",
        server_side.inbound()
    ))
    .await;
    (client_side, server_side)
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{path}", proxy.service("web.shop.svc.cluster.local"))
}

async fn get_traced(proxy: &Proxy, traceparent: Option<&str>) -> StatusCode {
    let mut request = Request::get(url(proxy, "/hello")).header("host", "web.shop.svc.cluster.local");
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let (status, _, body) = send(&http1_client(), request.body(full("")).unwrap()).await;
    assert_eq!(body, "app");
    status
}

#[tokio::test]
async fn each_proxy_reports_a_span_and_the_app_gets_the_last_one_as_parent() {
    let (app, collector) = (Upstream::start("app").await, Collector::start(false).await);
    // 0 %: only the caller's sampled flag decides.
    let (client_side, server_side) = two_traced_sidecars(app.addr, collector.addr, 0).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let status = get_traced(&client_side, Some(&format!("00-{trace_id}-{caller_span}-01"))).await;
    assert_eq!(status, StatusCode::OK);

    eventually("both proxies' spans at the collector", || async { collector.spans().len() >= 2 }).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "one span per proxy: {spans:#?}");
    let client = spans.iter().find(|span| span.kind == SpanKind::Client as i32).expect("the outbound span");
    let server = spans.iter().find(|span| span.kind == SpanKind::Server as i32).expect("the inbound span");
    for span in [client, server] {
        assert_eq!(hex(&span.trace_id), trace_id, "one trace");
        assert_eq!(attribute(span, "http.response.status_code"), Some(Value::IntValue(200)));
        assert_eq!(attribute(span, "http.response.body.size"), Some(Value::IntValue(3)), "\"app\"");
        assert_eq!(string(span, "url.path").as_deref(), Some("/hello"));
        assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    }
    assert_eq!(hex(&client.parent_span_id), caller_span, "the caller's span is the outbound span's parent");
    assert_eq!(server.parent_span_id, client.span_id, "the outbound span is the inbound span's parent");
    assert_eq!(client.name, "GET web.shop.svc.cluster.local");
    assert_eq!(string(client, "braid.route").as_deref(), Some("hello"));
    assert_eq!(string(client, "braid.direction").as_deref(), Some("outbound"));
    assert_eq!(string(server, "braid.direction").as_deref(), Some("inbound"));
    assert!(client.start_time_unix_nano <= server.start_time_unix_nano);

    let seen = app.last_headers.lock().unwrap().clone().unwrap();
    let expected = format!("00-{trace_id}-{}-01", hex(&server.span_id));
    assert_eq!(seen["traceparent"], expected.as_str(), "the app's span becomes the inbound span's child");

    // Not sampled by the caller: passed on as it came, no spans.
    let unsampled = format!("00-{trace_id}-{caller_span}-00");
    get_traced(&client_side, Some(&unsampled)).await;
    let seen = app.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["traceparent"], unsampled.as_str());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(collector.spans().len(), 2, "no spans for an unsampled request");
    let metrics = client_side.metrics().await;
    assert_eq!(metric(&metrics, "trace_spans_total", &[("result", "exported")]), Some(1.0), "{metrics}");
    drop(server_side);
}

#[tokio::test]
async fn a_request_without_context_is_sampled_at_the_rate_and_the_decision_travels() {
    let (app, collector) = (Upstream::start("app").await, Collector::start(false).await);
    let (client_side, _server_side) = two_traced_sidecars(app.addr, collector.addr, 100).await;
    get_traced(&client_side, None).await;
    eventually("two spans", || async { collector.spans().len() >= 2 }).await;
    let spans = collector.spans();
    let client = spans.iter().find(|span| span.kind == SpanKind::Client as i32).expect("the outbound span");
    let server = spans.iter().find(|span| span.kind == SpanKind::Server as i32).expect("the inbound span");
    assert!(client.parent_span_id.is_empty(), "the first proxy starts the trace");
    assert_eq!(
        (server.trace_id.clone(), server.parent_span_id.clone()),
        (client.trace_id.clone(), client.span_id.clone())
    );
}

#[tokio::test]
async fn a_collector_that_hangs_or_is_gone_costs_the_requests_nothing() {
    let app = Upstream::start("app").await;
    let hanging = Collector::start(true).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    for collector in [hanging.addr, gone] {
        let (client_side, _server_side) = two_traced_sidecars(app.addr, collector, 100).await;
        let started = Instant::now();
        for _ in 0..200 {
            assert_eq!(get_traced(&client_side, None).await, StatusCode::OK);
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "200 requests took {elapsed:?} with collector {collector}");
        if collector == gone {
            eventually("the failed export counted", || async {
                let metrics = client_side.metrics().await;
                metric(&metrics, "trace_spans_total", &[("result", "failed")]).unwrap_or(0.0) >= 1.0
            })
            .await;
        }
        let metrics = client_side.metrics().await;
        assert_eq!(metric(&metrics, "trace_spans_total", &[("result", "exported")]), Some(0.0), "{metrics}");
    }
}

#[tokio::test]
async fn a_bad_collector_address_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, "tracing: { collector: \"https://jaeger:4318\" }\n").unwrap();
    let error = braid_proxy::app::start(braid_proxy::app::Options {
        config: Some(path),
        config_poll: Duration::from_millis(100),
        admin: None,
        default_identity: None,
        default_discovery: None,
        fixed_destinations: Vec::new(),
    })
    .await
    .err()
    .expect("refused");
    let error = format!("{error:#}");
    assert!(error.contains("tracing.collector") && error.contains("not an http:// URL"), "{error}");
}
