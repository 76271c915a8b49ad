//! A stand-in for the operator's identity endpoint (docs/identity.md) with its own in-memory
//! CA: the proxy's tests and the benchmark use it where no cluster exists. The token is a plain
//! string `token-for:SPIFFE_ID`; the operator's real endpoint (TokenReview and all) is tested on
//! the real cluster in e2e/tests/identity.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;

pub struct Authority {
    pub root_pem: String,
    root_key: KeyPair,
    root_params: CertificateParams,
    pub issuer_pem: String,
    issuer_key: KeyPair,
    issuer_params: CertificateParams,
}

impl Authority {
    pub fn new() -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = root_params.self_signed(&root_key).unwrap();
        let mut authority = Self {
            root_pem: root.pem(),
            root_key,
            root_params,
            issuer_pem: String::new(),
            issuer_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            issuer_params: CertificateParams::default(),
        };
        authority.rotate_issuer();
        authority
    }

    /// A new intermediate under the same root.
    pub fn rotate_issuer(&mut self) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = Issuer::from_params(&self.root_params, &self.root_key);
        self.issuer_pem = params.signed_by(&key, &root).unwrap().pem();
        self.issuer_key = key;
        self.issuer_params = params;
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.issuer_params, &self.issuer_key)
    }

    pub fn sign_csr(&self, csr_pem: &str, lifetime: Duration) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(1);
        csr.params.not_after = now + lifetime;
        csr.params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        Ok(csr.signed_by(&self.issuer()).map_err(|e| e.to_string())?.pem())
    }

    /// A serving certificate for the endpoint itself (DNS name `identity.test`).
    fn serving(&self) -> (String, KeyPair) {
        self.serving_for("identity.test")
    }

    /// A serving certificate for a control-plane server under this CA (PEM, and its key).
    pub fn serving_for(&self, dns_name: &str) -> (String, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
        (params.signed_by(&key, &self.issuer()).unwrap().pem(), key)
    }
}

/// The identity endpoint. `lifetime` and the authority can change while it runs.
pub struct IdentityServer {
    pub addr: SocketAddr,
    pub authority: Mutex<Authority>,
    /// The roots it returns as trustBundle.
    pub bundle: Mutex<String>,
    pub lifetime: Mutex<Duration>,
    pub issued: AtomicUsize,
}

impl IdentityServer {
    pub async fn start(authority: Authority) -> Arc<Self> {
        Self::start_on(authority, 0).await.unwrap()
    }

    pub async fn start_on(authority: Authority, port: u16) -> std::io::Result<Arc<Self>> {
        Self::start_at(authority, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    pub async fn start_at(authority: Authority, listen: SocketAddr) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(listen).await?;
        let bundle = authority.root_pem.clone();
        let server = Arc::new(Self {
            addr: listener.local_addr()?,
            authority: Mutex::new(authority),
            bundle: Mutex::new(bundle),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            issued: AtomicUsize::new(0),
        });
        let this = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let this = this.clone();
                tokio::spawn(async move {
                    let config = this.tls_config();
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request| this.clone().handle(request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(server)
    }

    fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        let (cert_pem, key) = self.authority.lock().unwrap().serving();
        let issuer_pem = self.authority.lock().unwrap().issuer_pem.clone();
        let mut chain = braid_proxy::identity::tls::parse_pem_certificates(cert_pem.as_bytes());
        chain.extend(braid_proxy::identity::tls::parse_pem_certificates(issuer_pem.as_bytes()));
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(braid_proxy::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let refuse = |status: StatusCode, code: &str, message: &str| {
            let body = serde_json::json!({ "error": code, "message": message }).to_string();
            Ok(Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap())
        };
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return refuse(StatusCode::BAD_REQUEST, "malformed-request", "not JSON");
        };
        let (Some(token), Some(csr)) = (json["token"].as_str(), json["csr"].as_str()) else {
            return refuse(StatusCode::BAD_REQUEST, "malformed-request", "token and csr are required");
        };
        // The stand-in for TokenReview: the token names the identity it proves.
        let Some(identity) = token.strip_prefix("token-for:") else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", "not a token");
        };
        let lifetime = *self.lifetime.lock().unwrap();
        let authority = self.authority.lock().unwrap();
        let certificate = match authority.sign_csr(csr, lifetime) {
            Ok(certificate) => certificate,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, "malformed-csr", &e),
        };
        if braid_api::identity::spiffe_id_of(
            &braid_proxy::identity::tls::parse_pem_certificates(certificate.as_bytes())[0],
        )
        .as_deref()
            != Some(identity)
        {
            return refuse(StatusCode::FORBIDDEN, "identity-mismatch", "the CSR asks for another identity");
        }
        self.issued.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({
            "identity": identity,
            "certificate": certificate,
            "chain": authority.issuer_pem,
            "trustBundle": *self.bundle.lock().unwrap(),
            "notAfter": "",
        });
        Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
    }
}
