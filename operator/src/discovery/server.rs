//! The discovery endpoint: HTTP/2 over mTLS. A proxy proves its identity with its workload
//! certificate (issued by the mesh CA, identity/), and the stream logic (stream.rs) decides what
//! that identity may know. The serving certificate and the client roots follow the mesh issuer
//! and trust bundle as the identity endpoint publishes them.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use braid_proxy::discovery::api;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, body::Incoming, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::jiff::Timestamp;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::stream::{Discovery, Peer, serve as serve_stream};
use crate::identity::{authority::Authority, ca, server::ServingCert};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finds proxies that vanished without closing their connection (a node lost).
const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot issue the discovery serving certificate: {0}")]
    Authority(#[from] crate::identity::authority::AuthorityError),
    #[error("the trust bundle has no usable root: {0}")]
    Bundle(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The TLS configuration for an issuer: a serving certificate it signs, and client certificates
/// checked against the trust bundle.
pub fn tls_config(
    authority: &Authority,
    settings: &ServerSettings,
    serving: &Arc<ServingCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) =
        authority.serving_cert(Timestamp::now().as_second(), &settings.dns_names, &settings.ip_addresses)?;
    serving.set(chain, key)?;
    let mut roots = RootCertStore::empty();
    for cert in ca::certs(authority.bundle_pem()).map_err(TlsError::Bundle)? {
        roots.add(CertificateDer::from(cert.der)).map_err(|e| TlsError::Bundle(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Bundle(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The identity a verified client certificate carries, if it is a workload of `trust_domain`.
pub fn peer_of(certificate: &[u8], trust_domain: &str) -> Option<Peer> {
    let id = braid_proxy::identity::spiffe_id_of(certificate)?;
    let id = braid_proxy::identity::SpiffeId::parse(&id)?;
    (id.trust_domain == trust_domain)
        .then_some(Peer { namespace: id.namespace, service_account: id.service_account })
}

/// Serves discovery on `listener` until `shutdown`; nothing is accepted before the first issuer.
pub async fn run(
    discovery: Arc<Discovery>,
    listener: TcpListener,
    settings: ServerSettings,
    mut authorities: watch::Receiver<Option<Arc<Authority>>>,
    shutdown: CancellationToken,
) {
    let current: Arc<RwLock<Option<(TlsAcceptor, String)>>> = Arc::default();
    let serving = ServingCert::new();
    let keeper = {
        let current = current.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                let authority = authorities.borrow_and_update().clone();
                if let Some(authority) = authority {
                    match tls_config(&authority, &settings, &serving) {
                        Ok(config) => {
                            *current.write().unwrap_or_else(|p| p.into_inner()) =
                                Some((TlsAcceptor::from(config), authority.trust_domain().to_owned()));
                            tracing::info!(trust_domain = %authority.trust_domain(), "discovery endpoint: issuer loaded");
                        }
                        Err(err) => tracing::warn!(%err, "discovery endpoint: cannot use the mesh issuer"),
                    }
                }
                tokio::select! {
                    changed = authorities.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    tokio::spawn(keeper);

    let connections = TaskTracker::new();
    tracing::info!(addr = ?listener.local_addr().ok(), "discovery endpoint listening (HTTP/2, mTLS)");
    loop {
        let (tcp, peer_addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((acceptor, trust_domain)) = current.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            tracing::debug!(%peer_addr, "no issuer yet; closing the connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let discovery = discovery.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(discovery, acceptor, tcp, peer_addr, &trust_domain, shutdown).await;
        });
    }
    connections.close();
    // Streams end on shutdown; give their last lines a moment to leave.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}

async fn serve_connection(
    discovery: Arc<Discovery>,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer_addr: SocketAddr,
    trust_domain: &str,
    shutdown: CancellationToken,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return tracing::debug!(%peer_addr, %err, "discovery TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer_addr, "discovery TLS handshake timed out"),
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| peer_of(leaf, trust_domain));
    let Some(peer) = peer else {
        return tracing::info!(%peer_addr, "discovery: the client certificate names no workload of this mesh");
    };
    let service = hyper::service::service_fn(move |request| {
        let response = answer(discovery.clone(), peer.clone(), request, shutdown.clone());
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(err) = connection.await {
        tracing::debug!(%peer_addr, %err, "discovery connection ended with an error");
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}

fn answer(
    discovery: Arc<Discovery>,
    peer: Peer,
    request: Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<Body> {
    if request.uri().path() != api::PATH {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("not found: the discovery stream is POST {}", api::PATH),
        );
    }
    if request.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, &format!("{} takes POST", api::PATH));
    }
    let (out, lines) = mpsc::channel::<Bytes>(64);
    let incoming = Box::pin(request.into_body().into_data_stream());
    tokio::spawn(async move {
        let who = format!("{}/{}", peer.namespace, peer.service_account);
        if let Err(err) = serve_stream(discovery, peer, incoming, out, shutdown).await {
            tracing::info!(identity = %who, %err, "discovery stream ended");
        }
    });
    let frames = futures::stream::unfold(lines, |mut lines| async move {
        lines.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), lines))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(api::CONTENT_TYPE));
    response
}
