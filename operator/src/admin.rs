//! The admin listener: /metrics, /healthz and /readyz, never on a data path; served by
//! braid-runtime's admin server.

use std::sync::atomic::{AtomicBool, Ordering};

pub use braid_runtime::admin::{router, serve};
use prometheus_client::registry::Registry;

/// What the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    pub registry: Registry,
    /// Set once the controllers have their first full view of the cluster.
    pub ready: AtomicBool,
}

impl braid_runtime::admin::Status for AdminState {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ready(&self) -> Result<(), &str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not ready: the controllers have not synced with the API server yet")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::StatusCode};
    use http_body_util::BodyExt;
    use std::sync::Arc;
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
