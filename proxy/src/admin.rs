//! The admin server: /live, /ready, /metrics (Prometheus text), /config (the running
//! configuration as JSON, and the state of the configuration file). The port is reachable from
//! the pod network, for the kubelet's probes and Prometheus; /config names every destination,
//! endpoint and identity the proxy knows (what export-to hides from other namespaces too), so it
//! is answered on loopback only: `kubectl port-forward POD 4191` reaches it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use braid_api::contract::{LIVE_PATH, READY_PATH};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::reload::ReloadStatus;
use crate::state::ProxyState;

pub struct Admin {
    pub state: Arc<ProxyState>,
    pub ready: Arc<AtomicBool>,
    pub reload: Arc<Mutex<ReloadStatus>>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(admin.clone(), request, peer));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                debug!(%error, "admin connection failed");
            }
        });
    }
}

async fn handle(
    admin: Arc<Admin>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned()));
    }
    let response = match request.uri().path() {
        LIVE_PATH => text(StatusCode::OK, "live\n".to_owned()),
        READY_PATH => {
            let has_certificate =
                admin.state.identity.as_ref().is_none_or(|identity| identity.current().is_some());
            let has_policy = admin.state.discovery.as_ref().is_none_or(|discovery| discovery.has_inbound_policy());
            if !admin.ready.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n".to_owned())
            } else if !has_certificate {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no workload certificate yet\n".to_owned())
            } else if !has_policy {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no inbound policy from discovery yet (inbound admits only the pod's default until then)\n"
                        .to_owned(),
                )
            } else {
                text(StatusCode::OK, "ready\n".to_owned())
            }
        }
        "/metrics" => {
            let mut response = text(StatusCode::OK, admin.state.metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        "/config" if !peer.ip().to_canonical().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "/config is served on loopback only: kubectl port-forward POD 4191, then GET localhost:4191/config\n"
                .to_owned(),
        ),
        "/config" => {
            let table = admin.state.table.load_full();
            let reload = admin.reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let discovery = admin.state.discovery.as_ref().map(|discovery| discovery.status());
            let body =
                serde_json::json!({ "config": &*table.config, "file": reload, "discovery": discovery });
            let mut response = text(StatusCode::OK, format!("{body:#}\n"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /live, /ready, /metrics or /config\n".to_owned()),
    };
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(body));
    *response.status_mut() = status;
    response
}
