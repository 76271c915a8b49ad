//! The HTTPS admission server and the plain admin server.
//!
//! The admission port (TLS) serves POST /inject, and /healthz and /readyz so the kubelet probes
//! the very listener and certificate the API server uses. /metrics lives on a separate plain-HTTP
//! admin port like the operator's: Prometheus scrapes it without TLS configuration, and a scrape
//! never queues behind admissions.
//!
//! TLS is braid-runtime's accept loop (tokio-rustls over hyper-util) rather than axum-server: the
//! certificate resolver (tls.rs) makes reloads a pointer swap, and we keep control of the
//! handshake timeout and of graceful shutdown.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use braid_runtime::{
    admin,
    serve::{self, Protocol, Settings},
};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    admission::{self, Answer, Outcome, PodReview, Review},
    cluster::{Cluster, LookupError},
    metrics::Metrics,
};

/// The API server sends at most a 3 MiB object (etcd's request limit is 1.5 MiB, and an
/// AdmissionReview carries the object plus its envelope); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A client that has not finished its TLS handshake or request headers by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight admissions get this long to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the handlers share.
pub struct AppState {
    pub cluster: Cluster,
    pub metrics: Metrics,
    pub registry: Registry,
}

/// The admission router (served over TLS).
pub fn admission_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(braid_api::contract::INJECT_PATH, post(inject))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone())
        .merge(admin::probes(state))
}

/// The admin router (plain HTTP): /metrics, /healthz and /readyz.
pub fn admin_router(state: Arc<AppState>) -> Router {
    admin::router(state)
}

impl admin::Status for AppState {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ready(&self) -> Result<(), &str> {
        if self.cluster.is_synced() {
            Ok(())
        } else {
            Err("not ready: namespaces and the Mesh have not been listed from the API server yet")
        }
    }
}

async fn inject(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // 413 for a body over the limit; the rejection's text says so.
            state.metrics.invalid("body", started.elapsed());
            tracing::warn!(status = %rejection.status(), reason = %rejection.body_text(), "admission request rejected");
            return (rejection.status(), format!("{}\n", rejection.body_text())).into_response();
        }
    };
    let review = match admission::parse(&body) {
        Ok(review) => review,
        Err(err) => {
            state.metrics.invalid(err.metric_label(), started.elapsed());
            tracing::warn!(%err, "bad admission request");
            return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response();
        }
    };
    let answer = match review {
        Review::Ignored { request, why } => admission::answer_ignored(&request, why),
        Review::Pod(review) => {
            let span = tracing::info_span!(
                "admission",
                uid = %review.request.uid,
                namespace = %review.namespace,
                pod = %pod_name(&review.pod),
            );
            match answer_pod(&state, &review).instrument(span).await {
                Ok(answer) => answer,
                Err(err) => {
                    // Answered as a failure of the webhook (503), not as a denial, so the API
                    // server applies the configured failurePolicy, as if we were unreachable.
                    tracing::warn!(%err, "cannot decide on the pod");
                    state.metrics.error("namespace_lookup", started.elapsed());
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response();
                }
            }
        }
    };
    state.metrics.admission(answer.outcome, started.elapsed());
    match serde_json::to_vec(&answer.review) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {err}\n")).into_response()
        }
    }
}

async fn answer_pod(state: &AppState, review: &PodReview) -> Result<Answer, LookupError> {
    let labels = state.cluster.namespaces.labels(&review.namespace).await?;
    let answer = admission::answer_pod(review, &labels, &state.cluster.inject_config());
    match answer.outcome {
        Outcome::Denied(reason) => tracing::warn!(
            reason,
            message = %answer.review["response"]["status"]["message"],
            "pod denied"
        ),
        outcome => tracing::info!(result = outcome.result(), reason = outcome.reason(), "pod admitted"),
    }
    Ok(answer)
}

fn pod_name(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|prefix| format!("{prefix}*")))
        .unwrap_or_default()
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open connections finish
/// their requests (up to 15 s).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    tracing::info!(addr = ?listener.local_addr().ok(), "admission server listening (HTTPS)");
    let settings = Settings {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        header_read_timeout: Some(HANDSHAKE_TIMEOUT),
        drain_timeout: DRAIN_TIMEOUT,
        ..Settings::new("admission server", Protocol::Http1)
    };
    let service = move |_: &serve::Connection<'_>| Some(TowerToHyperService::new(router.clone()));
    serve::serve(listener, Some(Arc::new(tls)), service, settings, shutdown).await;
}
