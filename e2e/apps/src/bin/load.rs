//! `load`: requests at a fixed rate to one URL (GET, or the --method given), then a report of statuses, errors, latency and
//! answers per backend, as text or JSON. With --serve it runs until SIGTERM and serves its
//! current report over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use braid_testapps::cli::LogArgs;
use braid_testapps::faults::parse_duration;
use braid_testapps::load::{self, LoadConfig, Recorder};
use braid_testapps::trace::Exporter;
use clap::Parser;
use http::Uri;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "load", version, about = "Open-loop HTTP load client for the Braid end-to-end tests")]
struct Cli {
    /// The URL to send requests to (http:// only).
    #[arg(long, env = "LOAD_URL", value_parser = load::parse_url)]
    url: Uri,
    /// The method of every request, with an empty body: GET, HEAD, POST, PUT, PATCH, DELETE or
    /// OPTIONS.
    #[arg(long, default_value = "GET", value_parser = load::parse_method)]
    method: http::Method,
    /// Requests per second, sent on schedule whether or not earlier ones were answered.
    #[arg(long, env = "LOAD_RATE", default_value = "100", value_parser = load::parse_rate)]
    rate: f64,
    /// How long to send ("30s", "2m"). Default 10s, or until SIGTERM with --serve.
    #[arg(long, env = "LOAD_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests in flight at most; one due while this many are open is counted as "saturated".
    #[arg(long, default_value = "1000", value_parser = load::parse_positive)]
    concurrency: usize,
    /// Per request, from sending to the end of the answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// A new connection for every request.
    #[arg(long)]
    no_keepalive: bool,
    /// Request header "name: value" (x-echo-fail-rate: 0.3, say); repeatable.
    #[arg(long = "header", value_parser = load::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Give every request an x-request-id of its own, so that a server can tell a retry (the
    /// same id) from a new request (echo's x-echo-delay-tries needs it).
    #[arg(long)]
    request_ids: bool,
    /// Send a W3C traceparent with every request: this trace id (32 hex digits) for all of
    /// them, or "random" for a new trace each; a new parent id each time. The report lists the
    /// trace ids. With OTEL_EXPORTER_OTLP_ENDPOINT set, each sampled request is reported as a
    /// root client span.
    #[arg(long, value_parser = load::parse_trace_id)]
    trace_id: Option<load::TraceIdChoice>,
    /// With --trace-id: send the requests not sampled (flags 00).
    #[arg(long, requires = "trace_id")]
    trace_unsampled: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Serve the report on this address (GET /report, POST /reset, POST /stop) and run until
    /// SIGTERM.
    #[arg(long, env = "LOAD_SERVE")]
    serve: Option<SocketAddr>,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    braid_runtime::init_logging(&cli.log.log, cli.log.log_format).context("invalid --log filter")?;
    let mut config = LoadConfig::new(cli.url, cli.rate);
    config.duration = match (cli.duration, cli.serve) {
        (Some(duration), _) => Some(duration),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    if config.duration.is_some_and(|duration| duration.is_zero()) {
        anyhow::bail!("--duration must be longer than 0s");
    }
    config.concurrency = cli.concurrency;
    config.timeout = cli.timeout;
    config.http2 = cli.http2;
    config.keepalive = !cli.no_keepalive;
    config.headers = cli.headers.into_iter().collect();
    config.method = cli.method;
    config.request_ids = cli.request_ids;
    config.trace = cli.trace_id.map(|choice| load::TraceOptions {
        trace_id: match choice {
            load::TraceIdChoice::Random => None,
            load::TraceIdChoice::Fixed(id) => Some(id),
        },
        sampled: !cli.trace_unsampled,
    });
    config.exporter = Exporter::from_env("load", &std::env::var("POD_NAME").unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    let config = Arc::new(config);
    let recorder = Recorder::new(&config);

    let signal = CancellationToken::new();
    tokio::spawn(braid_runtime::cancel_on_signal(signal.clone()));
    // Stops the sending: on SIGTERM, or on POST /stop, after which the report stays served.
    let sending = signal.child_token();
    let stop_server = CancellationToken::new();
    let server = match cli.serve {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving the report on /report");
            let handler = load::report_handler(recorder.clone(), sending.clone());
            Some(tokio::spawn(braid_testapps::serve::serve(
                listener,
                handler,
                stop_server.clone(),
                Duration::from_secs(5),
            )))
        }
        None => None,
    };
    tracing::info!(url = %config.url, rate = config.rate, duration = ?config.duration, "sending");
    load::run(config.clone(), recorder.clone(), sending).await;
    if let Some(server) = server {
        // The report stays readable until the pod is stopped.
        signal.cancelled().await;
        stop_server.cancel();
        server.await.context("the report server failed")?;
    }
    let report = recorder.report();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
