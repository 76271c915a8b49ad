//! The admin endpoints every control-plane binary serves: /metrics (Prometheus text format),
//! /healthz (the process is alive) and /readyz (it can do its work), on plain HTTP.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve::{self, Protocol, Settings};

/// The content type of prometheus-client's text encoding.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report; implemented by each binary's shared state.
pub trait Status: Send + Sync + 'static {
    /// The metrics /metrics exposes.
    fn registry(&self) -> &Registry;
    /// `Err(reason)` while the binary is not ready: /readyz answers 503 with the reason.
    fn ready(&self) -> Result<(), &str>;
}

/// /metrics, /healthz and /readyz.
pub fn router<S: Status>(state: Arc<S>) -> Router {
    probes(state.clone()).merge(Router::new().route("/metrics", get(metrics::<S>)).with_state(state))
}

/// /healthz and /readyz alone, for a server that answers probes on its own port.
pub fn probes<S: Status>(state: Arc<S>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz::<S>)).with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: Status>(State(state): State<Arc<S>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics<S: Status>(State(state): State<Arc<S>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, state.registry()) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {err}\n"),
        )
            .into_response(),
    }
}

/// Serves [`router`] over HTTP/1.1 on `listener` until `shutdown`, then gives open scrapes and
/// probes 5 s to finish.
pub async fn serve<S: Status>(listener: TcpListener, state: Arc<S>, shutdown: CancellationToken) {
    let router = router(state);
    let settings = Settings {
        // A probe or scrape sends its headers at once; a client that does not is dropped.
        header_read_timeout: Some(Duration::from_secs(10)),
        drain_timeout: Duration::from_secs(5),
        ..Settings::new("admin server", Protocol::Http1)
    };
    tracing::info!(addr = ?listener.local_addr().ok(), "admin server listening (HTTP)");
    serve::serve(listener, None, move |_| Some(TowerToHyperService::new(router.clone())), settings, shutdown)
        .await;
}
