//! The discovery endpoint: HTTP/2 over mTLS. A proxy proves its identity with its workload
//! certificate (issued by the mesh CA, identity/), and the stream logic (stream.rs) decides what
//! that identity may know. The serving certificate and the client roots follow the mesh issuer
//! and trust bundle as the identity endpoint publishes them.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use braid_api::discovery as api;
use braid_api::identity::{SpiffeId, spiffe_id_of};
use braid_runtime::serve::{self, Protocol, Settings, TlsSource};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, body::Incoming, header};
use k8s_openapi::jiff::Timestamp;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::budget::ConnectionBudget;
use super::stream::{Discovery, Peer, ProxyFeatures, serve as serve_stream};
use crate::identity::{authority::Authority, ca, server::ServingCert};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finds proxies that vanished without closing their connection (a node lost).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Streams end on shutdown; their last lines get this long to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A pod holds one stream on one connection; a few more streams cover a reconnect in flight.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Connections in all (a proxy each) and from one address (a pod, or a node's SNAT).
const MAX_CONNECTIONS: usize = 20_000;
/// Connections one client address may hold: a pod's proxy needs one.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// MAX_CONNECTIONS_PER_ADDRESS in a cluster; raised only where many simulated proxies share
    /// one address (the discovery benchmark).
    pub max_connections_per_address: usize,
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
    let id = spiffe_id_of(certificate)?;
    let id = SpiffeId::parse(&id)?;
    (id.trust_domain == trust_domain).then_some(Peer {
        namespace: id.namespace,
        service_account: id.service_account,
        features: ProxyFeatures::default(),
    })
}

/// The TLS configuration of the current issuer and the trust domain its clients must belong to.
#[derive(Default)]
struct Issued(RwLock<Option<(Arc<ServerConfig>, String)>>);

impl Issued {
    fn get(&self) -> Option<(Arc<ServerConfig>, String)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl TlsSource for Issued {
    // None before the first issuer: the connection is closed.
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.get().map(|(config, _)| config)
    }
}

/// Serves discovery on `listener` until `shutdown`; nothing is accepted before the first issuer.
pub async fn run(
    discovery: Arc<Discovery>,
    listener: TcpListener,
    settings: ServerSettings,
    mut authorities: watch::Receiver<Option<Arc<Authority>>>,
    shutdown: CancellationToken,
) {
    let current: Arc<Issued> = Arc::default();
    let serving = ServingCert::new();
    let per_address = settings.max_connections_per_address;
    let keeper = {
        let current = current.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                let authority = authorities.borrow_and_update().clone();
                if let Some(authority) = authority {
                    match tls_config(&authority, &settings, &serving) {
                        Ok(config) => {
                            *current.0.write().unwrap_or_else(|p| p.into_inner()) =
                                Some((config, authority.trust_domain().to_owned()));
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

    // Connections wait in the listen queue until the index is complete: a proxy told "no
    // policy" or "unknown Service" by a half-listed index would open what its policy closes.
    if !discovery.is_synced() {
        tracing::info!("discovery endpoint: waiting for every watch to list before answering");
        tokio::select! {
            () = discovery.synced() => {}
            () = shutdown.cancelled() => return,
        }
    }
    tracing::info!(addr = ?listener.local_addr().ok(), "discovery endpoint listening (HTTP/2, mTLS)");
    let issued = current.clone();
    let stop = shutdown.clone();
    let budget = ConnectionBudget::new(MAX_CONNECTIONS, per_address);
    let make_service = move |connection: &serve::Connection<'_>| {
        let slot = match budget.take(connection.peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                discovery.metrics.limited(refused.label());
                tracing::info!(peer_addr = %connection.peer, bound = refused.label(), "discovery: connection refused by a bound");
                return None;
            }
        };
        // The trust domain is read after the handshake: an issuer that changed trust domain
        // meanwhile refuses the client, which reconnects to the new one.
        let (_, trust_domain) = issued.get()?;
        let peer = connection
            .tls
            .and_then(|tls| tls.peer_certificates())
            .and_then(|certs| certs.first())
            .and_then(|leaf| peer_of(leaf, &trust_domain));
        let Some(peer) = peer else {
            tracing::info!(peer_addr = %connection.peer, "discovery: the client certificate names no workload of this mesh");
            return None;
        };
        let discovery = discovery.clone();
        let shutdown = stop.clone();
        Some(hyper::service::service_fn(move |request| {
            // The service lives as long as the connection: so does its slot.
            let _slot = &slot;
            let response = answer(discovery.clone(), peer.clone(), request, shutdown.clone());
            async move { Ok::<_, Infallible>(response) }
        }))
    };
    let settings = Settings {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        keep_alive_interval: Some(KEEPALIVE),
        drain_timeout: DRAIN_TIMEOUT,
        http2_max_concurrent_streams: Some(MAX_STREAMS_PER_CONNECTION),
        ..Settings::new("discovery endpoint", Protocol::Http2)
    };
    serve::serve(listener, Some(current), make_service, settings, shutdown).await;
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
    mut peer: Peer,
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
    peer.features =
        ProxyFeatures::parse(request.headers().get(api::PROXY_FEATURES_HEADER).map(|value| value.as_bytes()));
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
    // Proxies report their requests per backend only when asked (the canary checks use them).
    response.headers_mut().insert(
        api::REPORT_INTERVAL_HEADER,
        header::HeaderValue::from(super::stream::REPORT_INTERVAL.as_secs()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::index::{Index, PodInfo};
    use crate::identity::authority::AuthoritySource;
    use crate::identity::ca::{self, Stored};
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
    use rustls::ClientConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::net::SocketAddr;

    struct Ca {
        authority: Arc<Authority>,
        stored: Stored,
    }

    fn ca() -> Ca {
        let (_, stored) = ca::generated_for_tests();
        let source = AuthoritySource {
            issuer: stored.issuer.clone().expect("an issuer"),
            bundle_pem: ca::bundle(&stored),
            trust_domain: "cluster.local".to_owned(),
            workload_lifetime: Duration::from_secs(86400),
        };
        Ca { authority: Arc::new(Authority::new(source).expect("authority")), stored }
    }

    /// A client config presenting a certificate for `uri` from the mesh issuer (or none).
    fn client_config(ca: &Ca, uri: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in ca::certs(&ca::bundle(&ca.stored)).expect("bundle") {
            roots.add(CertificateDer::from(cert.der)).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let mut config = match uri {
            None => builder.with_no_client_auth(),
            Some(uri) => {
                let issuer_pem = ca.stored.issuer.clone().expect("issuer");
                let issuer_key = KeyPair::from_pem(&issuer_pem.key_pem).expect("issuer key");
                let issuer = Issuer::from_ca_cert_pem(&issuer_pem.cert_pem, issuer_key).expect("issuer");
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
                let cert = params.signed_by(&key, &issuer).expect("signed");
                let chain = vec![
                    cert.der().clone(),
                    CertificateDer::from(
                        ca::certs(&issuer_pem.cert_pem).expect("issuer cert")[0].der.clone(),
                    ),
                ];
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                builder.with_client_auth_cert(chain, key).expect("client cert")
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    async fn start(ca: &Ca) -> (SocketAddr, CancellationToken) {
        let (addr, discovery, shutdown) = start_unsynced(ca).await;
        discovery.mark_synced();
        (addr, shutdown)
    }

    /// The server over an index whose watches have not all listed yet.
    async fn start_unsynced(ca: &Ca) -> (SocketAddr, Arc<Discovery>, CancellationToken) {
        let mut index = Index::new("cluster.local", "cluster.local");
        index.upsert_pod(
            ("web".into(), "client-0".into()),
            PodInfo {
                service_account: "client".into(),
                labels: Default::default(),
                meshed: true,
                probes: Vec::new(),
                ..Default::default()
            },
        );
        let discovery = Discovery::new(index);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (authorities, changes) = watch::channel(Some(ca.authority.clone()));
        let shutdown = CancellationToken::new();
        let settings = ServerSettings {
            dns_names: vec!["discovery.test".into()],
            ip_addresses: vec![],
            max_connections_per_address: MAX_CONNECTIONS_PER_ADDRESS,
        };
        let stop = shutdown.clone();
        let served = discovery.clone();
        tokio::spawn(async move {
            run(served, listener, settings, changes, stop).await;
            drop(authorities);
        });
        (addr, discovery, shutdown)
    }

    type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Sender, String> {
        // The keeper loads the issuer right after start.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("discovery.test").expect("name");
        let tls =
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn call(
        sender: &mut Sender,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(StatusCode, String), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("https://discovery.test{path}"))
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let mut body = response.into_body();
        // The stream stays open: read the first frame only.
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .map_err(|_| "no frame within 5 s")?;
        let text = match first {
            Some(Ok(frame)) => {
                frame.into_data().map(|d| String::from_utf8_lossy(&d).into_owned()).unwrap_or_default()
            }
            _ => String::new(),
        };
        Ok((status, text))
    }

    #[tokio::test]
    async fn a_client_without_a_mesh_certificate_gets_nothing() {
        let ca = ca();
        let (addr, shutdown) = start(&ca).await;
        let anonymous = connect(addr, client_config(&ca, None)).await;
        let refused = match anonymous {
            Err(err) => err,
            Ok(mut sender) => {
                call(&mut sender, "POST", api::PATH, b"").await.expect_err("no answer without a certificate")
            }
        };
        assert!(!refused.is_empty());

        let foreign =
            connect(addr, client_config(&ca, Some("spiffe://elsewhere.test/ns/web/sa/client"))).await;
        let outcome = match foreign {
            Err(err) => Err(err),
            Ok(mut sender) => call(&mut sender, "POST", api::PATH, b"").await,
        };
        assert!(outcome.is_err(), "another trust domain is not served: {outcome:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn wrong_paths_methods_and_pods_are_answered_with_the_reason() {
        let ca = ca();
        let (addr, shutdown) = start(&ca).await;
        let mut sender = connect(addr, client_config(&ca, Some("spiffe://cluster.local/ns/web/sa/client")))
            .await
            .expect("mTLS");
        let (status, text) = call(&mut sender, "POST", "/v2/other", b"").await.expect("an answer");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(text.contains("POST /v1/discovery"), "{text}");
        let (status, _) = call(&mut sender, "GET", api::PATH, b"").await.expect("an answer");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

        let hello = |pod: &str| {
            api::encode(&api::ProxyMessage::Hello(api::Hello {
                pod_namespace: "web".into(),
                pod_name: pod.into(),
                proxy_version: "test".into(),
            }))
        };
        let (status, text) =
            call(&mut sender, "POST", api::PATH, &hello("someone-else")).await.expect("an answer");
        assert_eq!(status, StatusCode::OK);
        assert!(text.starts_with("{\"refused\":") && text.contains("does not exist"), "{text}");

        let mut ok = hello("client-0");
        ok.extend(api::encode(&api::ProxyMessage::Subscribe(api::Resource::Destination(
            "10.9.9.9:80".into(),
        ))));
        let (_, text) = call(&mut sender, "POST", api::PATH, &ok).await.expect("an answer");
        // No pod holds the IP: an answer without a service (forward unchanged).
        assert!(
            text.starts_with("{\"destination\":{\"destination\":\"10.9.9.9:80\",\"version\":")
                && !text.contains("service"),
            "{text}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn nothing_is_answered_from_an_index_that_has_not_listed_everything() {
        let ca = ca();
        let (addr, discovery, shutdown) = start_unsynced(&ca).await;
        let config = client_config(&ca, Some("spiffe://cluster.local/ns/web/sa/client"));
        let mut hello = api::encode(&api::ProxyMessage::Hello(api::Hello {
            pod_namespace: "web".into(),
            pod_name: "client-0".into(),
            proxy_version: "test".into(),
        }));
        hello.extend(api::encode(&api::ProxyMessage::Subscribe(api::Resource::Inbound)));
        let asked = tokio::spawn(async move {
            let mut sender = connect(addr, config).await?;
            call(&mut sender, "POST", api::PATH, &hello).await
        });
        // Held, not refused and not answered: the proxy keeps what it has until the index is whole.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!asked.is_finished(), "answered before the watches listed: {:?}", asked.await);

        discovery.mark_synced();
        let (status, text) = tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .expect("answered once synced")
            .expect("task")
            .expect("an answer");
        assert_eq!(status, StatusCode::OK);
        assert!(text.starts_with("{\"inbound\":"), "{text}");
        shutdown.cancel();
    }
}
