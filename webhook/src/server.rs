//! The HTTPS admission server and the plain admin server.
//!
//! The admission port (TLS) serves POST /inject, and /healthz and /readyz so the kubelet probes
//! the very listener and certificate the API server uses. /metrics lives on a separate plain-HTTP
//! admin port like the operator's: Prometheus scrapes it without TLS configuration, and a scrape
//! never queues behind admissions.
//!
//! TLS is tokio-rustls over hyper-util rather than axum-server: both are already in the tree
//! through kube, the certificate resolver (tls.rs) makes reloads a pointer swap, and we keep
//! control of the handshake timeout and of graceful shutdown.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
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
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The admin router (plain HTTP).
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
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

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.cluster.is_synced() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: namespaces and the Mesh have not been listed from the API server yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(err) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {err}\n")).into_response()
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open connections finish
/// their requests (up to 15 s).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tracing::info!(addr = ?listener.local_addr().ok(), "admission server listening (HTTPS)");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return tracing::debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("admission server drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("admission server: connections still open after {DRAIN_TIMEOUT:?}; closing them"),
    }
}

/// Serves the admin endpoints (plain HTTP) until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "admin server listening (HTTP)");
    axum::serve(listener, admin_router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
