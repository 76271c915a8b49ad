//! The admin listener: /metrics, /healthz and /readyz, never on a data path.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    pub registry: Registry,
    /// Set once the controllers have their first full view of the cluster.
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "admin server listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {err}\n"),
        ),
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the controllers have not synced with the API server yet\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(state: Arc<AdminState>, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).expect("request builds");
        let response = router(state).oneshot(request).await.expect("router answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body reads").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readiness_follows_the_sync_and_metrics_are_exposed() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::register(&mut registry);
        metrics.observe("meshroute", std::time::Duration::from_millis(3));
        metrics.failed("meshroute", "kube");
        let state = Arc::new(AdminState { registry, ready: AtomicBool::new(false) });

        assert_eq!(get(state.clone(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(state.clone(), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(state.clone(), "/healthz").await, (StatusCode::OK, "ok\n".to_owned()));

        let (status, body) = get(state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("braid_operator_reconciles_total{controller=\"meshroute\"} 1"), "{body}");
        assert!(
            body.contains(
                "braid_operator_reconcile_failures_total{controller=\"meshroute\",error=\"kube\"} 1"
            ),
            "{body}"
        );
        assert!(
            body.contains("braid_operator_reconcile_duration_seconds_count{controller=\"meshroute\"} 1"),
            "{body}"
        );
    }
}
