//! The real admission server on a loopback TLS socket, with a test CA from rcgen and a client
//! that trusts only that CA: what the API server sees of the webhook, bad requests included, and
//! the serving certificate reloaded from a Secret-style volume without a restart.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// both a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::body::Bytes;
use braid_webhook::{
    server::{self, AppState, MAX_BODY_BYTES},
    tls::ReloadingCert,
};
use common::golden_dir;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// A CA, and leaf certificates for 127.0.0.1 signed by it.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "braid test CA");
        Self { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// (certificate PEM, key PEM, certificate DER) for 127.0.0.1, with `name` as common name.
    fn leaf(&self, name: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "braid-webhook.braid-system.svc".to_owned()])
                .unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn client(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        // Full handshakes only: a resumed session reports the certificate of the session it
        // resumes, not the one the server would present now.
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// A directory laid out like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, with
/// `..data` a symlink to a timestamped directory that the kubelet swaps atomically.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(cert: &str, key: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "braid-webhook-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Self { dir, generation: 0 };
        volume.update(cert, key);
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(file), volume.dir.join(file)).unwrap();
        }
        volume
    }

    /// What the kubelet's AtomicWriter does: write a new directory, point a fresh symlink at it,
    /// rename that over `..data`.
    fn update(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let data = format!("..{}", self.generation);
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        std::fs::write(self.dir.join(&data).join("tls.crt"), cert).unwrap();
        std::fs::write(self.dir.join(&data).join("tls.key"), key).unwrap();
        let temporary = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &temporary).unwrap();
        std::fs::rename(&temporary, self.dir.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Webhook {
    addr: SocketAddr,
    connector: TlsConnector,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

async fn start(pki: &Pki, volume: &SecretVolume, synced: bool) -> Webhook {
    let cert = ReloadingCert::load(&volume.cert(), &volume.key()).unwrap();
    let tls = cert.server_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = common::state(synced);
    tokio::spawn(cert.watch(Duration::from_millis(50), shutdown.clone(), |_| {}));
    let server = tokio::spawn(server::serve_tls(
        listener,
        tls,
        server::admission_router(state.clone()),
        shutdown.clone(),
    ));
    Webhook { addr, connector: pki.client(), shutdown, server, state }
}

struct Reply {
    status: u16,
    body: String,
    /// The certificate the server presented in this connection's handshake.
    server_cert: CertificateDer<'static>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

impl Webhook {
    /// One request on a fresh connection (so each one makes a handshake).
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> Reply {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls =
            self.connector.connect(name, tcp).await.expect("the TLS handshake succeeds with the test CA");
        let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply { status, body: String::from_utf8_lossy(&bytes).into_owned(), server_cert }
    }

    async fn post(&self, body: impl Into<Vec<u8>>) -> Reply {
        self.request("POST", "/inject", body.into()).await
    }
}

fn review(case: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(format!("{case}.review.json"))).unwrap()
}

fn setup() -> (Pki, SecretVolume, CertificateDer<'static>) {
    let pki = Pki::new();
    let (cert, key, der) = pki.leaf("first");
    let volume = SecretVolume::new(&cert, &key);
    (pki, volume, der)
}

#[tokio::test]
async fn a_pod_review_over_tls_is_answered_with_a_base64_json_patch() {
    let (pki, volume, first) = setup();
    let webhook = start(&pki, &volume, true).await;
    let reply = webhook.post(review("plain-pod")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.server_cert, first);
    let answer = reply.json();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert!(answer["response"]["patch"].as_str().is_some_and(|patch| !patch.is_empty()));
}

#[tokio::test]
async fn an_empty_body_is_a_400_with_the_reason() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, true).await;
    let reply = webhook.post(Vec::new()).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("malformed AdmissionReview: EOF while parsing"), "{}", reply.body);
}

#[tokio::test]
async fn malformed_json_is_a_400_with_the_reason() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, true).await;
    let reply = webhook
        .post(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7"#)
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.starts_with("malformed AdmissionReview:"), "{}", reply.body);
    assert!(reply.body.contains("line 1 column"), "the reason says where: {}", reply.body);

    let reply = webhook.post(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, "the AdmissionReview has no request\n");

    let reply =
        webhook.post(r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("braid-webhook speaks admission.k8s.io/v1"), "{}", reply.body);
}

#[tokio::test]
async fn another_kind_is_allowed_unchanged() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, true).await;
    let reply = webhook.post(review("wrong-kind")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["uid"], "3b6e1f0c-0000-4000-8000-000000000011");
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}

#[tokio::test]
async fn a_body_over_3_mib_is_a_413() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, true).await;
    // Just over the limit: a real (if silly) review padded with an annotation.
    let mut review: Value = serde_json::from_slice(&review("plain-pod")).unwrap();
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({ "padding": "x".repeat(MAX_BODY_BYTES) });
    let body = serde_json::to_vec(&review).unwrap();
    assert!(body.len() > MAX_BODY_BYTES);
    let reply = webhook.post(body).await;
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A body just under the limit is still read and answered.
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({ "padding": "x".repeat(MAX_BODY_BYTES - 10_000) });
    let reply = webhook.post(serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn health_and_readiness_are_served_on_the_tls_port() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, false).await;
    assert_eq!(webhook.request("GET", "/healthz", Vec::new()).await.status, 200);
    let not_ready = webhook.request("GET", "/readyz", Vec::new()).await;
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.body.contains("not ready"), "{}", not_ready.body);
    webhook.state.cluster.synced.store(true, Ordering::Relaxed);
    assert_eq!(webhook.request("GET", "/readyz", Vec::new()).await.status, 200);
}

#[tokio::test]
async fn a_new_certificate_in_the_secret_volume_is_served_without_a_restart() {
    let (pki, mut volume, first) = setup();
    let webhook = start(&pki, &volume, true).await;
    assert_eq!(webhook.post(review("plain-pod")).await.server_cert, first);

    let (cert, key, second) = pki.leaf("second");
    assert_ne!(first, second);
    volume.update(&cert, &key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = webhook.post(review("plain-pod")).await;
        assert_eq!(reply.status, 200, "admissions keep working during the rotation: {}", reply.body);
        if reply.server_cert == second {
            break;
        }
        assert_eq!(reply.server_cert, first);
        assert!(Instant::now() < deadline, "the new certificate was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A half-written rotation (a key that is not the certificate's) is refused, and the last good
    // pair keeps serving.
    let (third_cert, _, _) = pki.leaf("third");
    volume.update(&third_cert, &key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(webhook.post(review("plain-pod")).await.server_cert, second);
    let mismatch = ReloadingCert::load(&volume.cert(), &volume.key()).unwrap_err();
    assert!(mismatch.to_string().contains("does not belong to the certificate"), "{mismatch}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_the_server_returns() {
    let (pki, volume, _) = setup();
    let webhook = start(&pki, &volume, true).await;
    assert_eq!(webhook.post(review("plain-pod")).await.status, 200);
    webhook.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), webhook.server).await.expect("drained in time").unwrap();
    assert!(TcpStream::connect(webhook.addr).await.is_err(), "the listener is closed after shutdown");
}
