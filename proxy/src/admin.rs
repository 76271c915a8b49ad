//! The admin server: /live, /ready, /metrics (Prometheus text), /config (the running
//! configuration as JSON, and the state of the configuration file), /identity (the workload
//! certificate the proxy serves). The port is reachable from the pod network, for the kubelet's
//! probes and Prometheus; /config names every destination, endpoint and identity the proxy knows
//! (what export-to hides from other namespaces too), so it is answered on loopback only:
//! `kubectl port-forward POD 4191` reaches it. /identity is answered to anyone: it is the chain
//! every mTLS peer is sent in the handshake, and no key.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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
        "/identity" => identity(&admin),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics, /config or /identity\n".to_owned(),
        ),
    };
    Ok(response)
}

/// The workload certificate and its chain as the proxy presents them in a handshake (PEM, leaf
/// first), with the fields a reader wants without an X.509 tool. Times are seconds since the
/// epoch, as /config's `appliedAt`; `renewAt` is when the proxy will ask for the next one.
fn identity(admin: &Admin) -> Response<ProxyBody> {
    let Some(store) = &admin.state.identity else {
        return text(
            StatusCode::NOT_FOUND,
            "this proxy has no workload identity (no `identity` in its configuration): it speaks plaintext only\n"
                .to_owned(),
        );
    };
    let Some(credentials) = store.current() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no workload certificate yet: the proxy is still asking the operator's identity endpoint for one (see its log)\n"
                .to_owned(),
        );
    };
    let chain = &credentials.key.cert;
    let leaf = chain.first().and_then(|der| x509_parser::parse_x509_certificate(der).ok()).map(|(_, c)| c);
    let seconds = |time: SystemTime| time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let percent = admin.state.table.load().config.identity.as_ref().map(|config| config.renew_at_percent);
    let renew_at = percent.and_then(|percent| {
        let lifetime = credentials.not_after.duration_since(credentials.not_before).ok()?;
        Some(seconds(credentials.not_before + lifetime.mul_f64(f64::from(percent) / 100.0)))
    });
    let body = serde_json::json!({
        "identity": credentials.identity,
        "issuer": leaf.as_ref().map(|leaf| leaf.issuer().to_string()),
        "serialNumber": leaf.as_ref().map(|leaf| leaf.raw_serial_as_string()),
        "notBefore": seconds(credentials.not_before),
        "notAfter": seconds(credentials.not_after),
        "renewAt": renew_at,
        "chain": chain.iter().map(|der| certificate_pem(der)).collect::<String>(),
    });
    let mut response = text(StatusCode::OK, format!("{body:#}\n"));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// DER as a PEM block, with the line endings the rest of the mesh's PEM has.
fn certificate_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(body));
    *response.status_mut() = status;
    response
}
