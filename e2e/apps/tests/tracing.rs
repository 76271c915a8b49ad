//! The apps' own spans, exported to a fake OTLP/HTTP receiver on a real socket: the echo server's
//! server span for a sampled request, the trace context it passes to its next hop, and the load
//! client's traceparent and root spans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use braid_testapps::echo::{CALL_STATUS_HEADER, Echo, EchoResponse, EchoTracing};
use braid_testapps::load::{self, LoadConfig, Recorder, TraceOptions};
use braid_testapps::serve::Handler;
use braid_testapps::trace::{AttributeValue, Exporter};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One span as a receiver got it, with its resource's service.name.
#[derive(Debug)]
struct Received {
    service: String,
    span: Value,
}

impl Received {
    fn field(&self, name: &str) -> &str {
        self.span[name].as_str().unwrap_or_default()
    }

    fn attribute(&self, key: &str) -> Value {
        let attributes = self.span["attributes"].as_array().cloned().unwrap_or_default();
        attributes.into_iter().find(|a| a["key"] == key).map(|a| a["value"].clone()).unwrap_or(Value::Null)
    }
}

/// A fake OTLP/HTTP collector: every span POSTed to /v1/traces as JSON comes out of the channel.
struct Receiver {
    _server: Server,
    endpoint: String,
    spans: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (tx, spans) = mpsc::unbounded_channel();
        let handler: Handler = Arc::new(move |request, _peer| {
            let tx = tx.clone();
            Box::pin(async move {
                assert_eq!(request.uri().path(), "/v1/traces");
                assert_eq!(request.headers()["content-type"], "application/json");
                let bytes = request.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                for resource in body["resourceSpans"].as_array().unwrap() {
                    let attributes = resource["resource"]["attributes"].as_array().unwrap();
                    let service = attributes.iter().find(|a| a["key"] == "service.name").unwrap()["value"]
                        ["stringValue"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    for scope in resource["scopeSpans"].as_array().unwrap() {
                        for span in scope["spans"].as_array().unwrap() {
                            let _ = tx.send(Received { service: service.clone(), span: span.clone() });
                        }
                    }
                }
                Response::new(braid_testapps::body::full("{}"))
            })
        });
        let server = start(handler).await;
        Receiver { endpoint: format!("http://{}", server.addr), _server: server, spans }
    }

    fn exporter(&self, service: &str) -> Exporter {
        Exporter::start(&self.endpoint, vec![("service.name", AttributeValue::from(service))]).unwrap()
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.spans.recv())
            .await
            .expect("a span within 10 s")
            .expect("the receiver is running")
    }
}

async fn traced_echo(receiver: &Receiver, name: &str, call: Option<String>) -> Server {
    let tracing = EchoTracing {
        exporter: Some(receiver.exporter(name)),
        call: call.map(|url| load::parse_url(&url).unwrap()),
    };
    start(Echo::with_tracing(config(name, "v1"), tracing).handler()).await
}

#[tokio::test]
async fn echo_reports_a_server_span_for_a_sampled_request() {
    let mut receiver = Receiver::start().await;
    let server = traced_echo(&receiver, "front", None).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let (status, answer) =
        echo(&http1(), &format!("http://{}/items?x=1", server.addr), &[("traceparent", &traceparent)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.call, None, "no next hop without --call");
    let span = receiver.next().await;
    assert_eq!(span.service, "front");
    assert_eq!((span.field("traceId"), span.field("parentSpanId")), (TRACE, PARENT));
    let id = span.field("spanId");
    assert!(id.len() == 16 && id != PARENT && id != "0000000000000000", "a new span id: {id}");
    assert_eq!(span.span["kind"], 2, "SERVER");
    assert_eq!(span.attribute("http.request.method")["stringValue"], "GET");
    assert_eq!(span.attribute("url.path")["stringValue"], "/items");
    assert_eq!(span.attribute("http.response.status_code")["intValue"], "200");
    let (start, end) = (span.field("startTimeUnixNano"), span.field("endTimeUnixNano"));
    assert!(start.parse::<u128>().unwrap() <= end.parse::<u128>().unwrap(), "{start} .. {end}");
}

#[tokio::test]
async fn unsampled_malformed_and_absent_trace_contexts_make_no_span() {
    let mut receiver = Receiver::start().await;
    let server = traced_echo(&receiver, "front", None).await;
    let url = format!("http://{}/", server.addr);
    let client = http1();
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let bad = [
        unsampled.as_str(),
        "00-abc-def-01",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    ];
    for traceparent in bad {
        let (status, _) = echo(&client, &url, &[("traceparent", traceparent)]).await;
        assert_eq!(status, StatusCode::OK, "{traceparent}");
    }
    let (status, _) = echo(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Spans leave in order: the first to arrive must be this sampled request's.
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    echo(&client, &url, &[("traceparent", sampled)]).await;
    let span = receiver.next().await;
    assert_eq!(span.field("traceId"), "0af7651916cd43dd8448eb211c80319c");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans.try_recv().is_err(), "one span only");
}

#[tokio::test]
async fn echo_calls_its_next_hop_with_its_own_span_as_the_parent() {
    let mut receiver = Receiver::start().await;
    let back = traced_echo(&receiver, "back", None).await;
    let front = traced_echo(&receiver, "front", Some(format!("http://{}/next", back.addr))).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let (status, bytes) =
        get(&http1(), &format!("http://{}/first", front.addr), &[("traceparent", &traceparent)]).await;
    assert_eq!(status, StatusCode::OK);
    let answer: EchoResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer.name, "front");
    let call = answer.call.expect("front called back");
    assert_eq!((call.status, call.error.as_deref()), (Some(200), None));
    assert_eq!(call.body["name"], "back");
    assert_eq!(call.body["path"], "/next");
    let forwarded = call.traceparent.expect("front passed the trace on");
    assert_eq!(call.body["headers"]["traceparent"], forwarded.as_str());

    // back answers first, so its span leaves first.
    let mut spans = [receiver.next().await, receiver.next().await];
    spans.sort_by(|a, b| a.service.cmp(&b.service));
    let [back_span, front_span] = spans;
    assert_eq!((back_span.service.as_str(), front_span.service.as_str()), ("back", "front"));
    assert_eq!((front_span.field("traceId"), front_span.field("parentSpanId")), (TRACE, PARENT));
    assert_eq!(forwarded, format!("00-{TRACE}-{}-01", front_span.field("spanId")));
    assert_eq!(back_span.field("traceId"), TRACE);
    assert_eq!(back_span.field("parentSpanId"), front_span.field("spanId"), "back's parent is front's span");
    assert_eq!(back_span.attribute("url.path")["stringValue"], "/next");
}

#[tokio::test]
async fn echo_answers_with_its_next_hops_failure() {
    let failing = {
        let mut config = config("back", "v1");
        config.faults.fail_rate = 1.0;
        config.faults.fail_status = StatusCode::SERVICE_UNAVAILABLE;
        start_echo(config).await
    };
    let tracing = EchoTracing {
        exporter: None,
        call: Some(load::parse_url(&format!("http://{}/", failing.addr)).unwrap()),
    };
    let front = start(Echo::with_tracing(config("front", "v1"), tracing).handler()).await;
    let response = http1()
        .request(
            http::Request::get(format!("http://{}/", front.addr))
                .body(braid_testapps::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[CALL_STATUS_HEADER], "503");

    // Nothing listens: 502, and the answer says why.
    let tracing = EchoTracing {
        exporter: None,
        call: Some(load::parse_url(&format!("http://127.0.0.1:{}/", free_port())).unwrap()),
    };
    let front = start(Echo::with_tracing(config("front", "v1"), tracing).handler()).await;
    let (status, answer) = echo(&http1(), &format!("http://{}/", front.addr), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let call = answer.call.unwrap();
    assert_eq!(call.status, None);
    assert!(call.error.is_some_and(|e| !e.is_empty()));
    assert_eq!(call.traceparent, None, "no trace context came in, none goes out");
}

#[tokio::test]
async fn load_sends_traceparent_and_reports_root_spans() {
    let mut receiver = Receiver::start().await;
    let server = traced_echo(&receiver, "front", None).await;
    let mut config = LoadConfig::new(load::parse_url(&format!("http://{}/", server.addr)).unwrap(), 10.0);
    config.duration = Some(Duration::from_millis(250));
    let trace_id = braid_testapps::trace::hex_bytes::<16>(TRACE).unwrap();
    config.trace = Some(TraceOptions { trace_id: Some(trace_id), sampled: true });
    config.exporter = Some(receiver.exporter("load"));
    let config = Arc::new(config);
    let recorder = Recorder::new(&config);
    load::run(config, recorder.clone(), CancellationToken::new()).await;
    let report = recorder.report();
    assert_eq!((report.total, report.ok), (3, 3), "{report:#?}");
    assert_eq!(report.trace_ids, vec![TRACE.to_owned()]);

    let mut by_service = std::collections::BTreeMap::<String, Vec<Received>>::new();
    for _ in 0..6 {
        let span = receiver.next().await;
        by_service.entry(span.service.clone()).or_default().push(span);
    }
    let (roots, servers) = (&by_service["load"], &by_service["front"]);
    assert_eq!((roots.len(), servers.len()), (3, 3));
    for root in roots {
        assert_eq!(root.field("traceId"), TRACE);
        assert_eq!(root.span.get("parentSpanId"), None, "a root span");
        assert_eq!(root.span["kind"], 3, "CLIENT");
        assert_eq!(root.attribute("http.response.status_code")["intValue"], "200");
        let children: Vec<_> =
            servers.iter().filter(|s| s.field("parentSpanId") == root.field("spanId")).collect();
        assert_eq!(children.len(), 1, "each request's server span is the child of its root span");
    }
}

/// A server that answers 200 and hands over every traceparent it receives.
async fn recording_server() -> (Server, mpsc::UnboundedReceiver<Option<String>>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |request, _peer| {
        let header = request.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
        let _ = tx.send(header);
        Box::pin(async move { Response::new(braid_testapps::body::empty()) })
    });
    (start(handler).await, seen)
}

// Multi-threaded: the load binary runs to its end while this thread waits for it, and the
// server must answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sends_unsampled_and_random_trace_contexts_as_asked() {
    let (server, mut seen) = recording_server().await;
    let url = format!("http://{}/", server.addr);
    let args = ["--url", &url, "--rate", "10", "--duration", "300ms", "--json", "--trace-id"];
    let output = run("load", &[&args[..], &["random"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: load::Report = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.ok, 3, "{report:#?}");
    assert_eq!(report.trace_ids.len(), 3, "a new trace per request: {:?}", report.trace_ids);
    for _ in 0..3 {
        let header = seen.recv().await.unwrap().expect("a traceparent");
        let parsed = braid_testapps::trace::TraceParent::parse(&header).expect("well-formed");
        assert!(parsed.sampled(), "{header}");
        assert!(report.trace_ids.contains(&braid_testapps::trace::hex(&parsed.trace_id)), "{header}");
    }

    let output = run("load", &[&args[..], &[TRACE, "--trace-unsampled"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: load::Report = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.trace_ids, vec![TRACE.to_owned()]);
    let mut parents = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let header = seen.recv().await.unwrap().expect("a traceparent");
        assert!(header.starts_with(&format!("00-{TRACE}-")) && header.ends_with("-00"), "{header}");
        parents.insert(header);
    }
    assert_eq!(parents.len(), 3, "a new parent id per request");

    // Without the option, no trace context is sent.
    let output = run("load", &["--url", &url, "--rate", "10", "--duration", "100ms", "--json"]);
    assert!(output.status.success());
    assert_eq!(seen.recv().await.unwrap(), None);

    for bad in ["xyz", "00000000000000000000000000000000", &TRACE.to_uppercase()] {
        let output = run("load", &["--url", &url, "--trace-id", bad]);
        assert!(!output.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("is not a trace id"), "{bad}");
    }
    let output = run("load", &["--url", &url, "--trace-unsampled"]);
    assert!(!output.status.success(), "--trace-unsampled needs --trace-id");
}
