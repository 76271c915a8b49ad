//! Egress end to end: meshed pods calling servers outside the cluster. With the Mesh's
//! `egress.mode: RegistryOnly`, a request to a host a MeshExternalService registers goes through
//! the sidecar to the external server, one to an unregistered host is answered 403 by the
//! sidecar and never reaches the server, and a plaintext request to a service registered with
//! TLS origination reaches the server over TLS checked against the registered CA. Switching the
//! Mesh to AllowAny lets the unregistered host through.
//!
//! The "outside" servers run in this test process on 198.18.251.1 (RFC 2544's benchmarking
//! range, never routed), added to the host's `lo`: the node shares the host's network, so pods
//! reach it through their default route, as they would reach a server on the internet, and it is
//! outside the Mesh's cluster networks. Needs the node (`make cluster-up`), the images
//! (`make images`) and root (to add the address). A test binary of its own: it installs the
//! chart, which owns the cluster's single Mesh.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use braid_e2e::mesh::{apply, check_prerequisites, count, install, load};
use braid_e2e::{Cluster, eventually, setup};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const EXTERNAL_IP: &str = "198.18.251.1";
const HTTP_PORT: u16 = 18080;
/// The port apps call for the TLS-originated service; nothing listens there.
const ORIGINATED_PORT: u16 = 18081;
const HTTPS_PORT: u16 = 18443;
const REGISTERED: &str = "api.external.test";
const UNREGISTERED: &str = "elsewhere.external.test";
const SECURE: &str = "secure.external.test";
/// Requests per load run: 20 a second for 2 s.
const RATE: &str = "20";
const DURATION: &str = "2s";

/// The external address on `lo`, removed when dropped.
struct ExternalAddress;

impl ExternalAddress {
    fn add() -> Self {
        let cidr = format!("{EXTERNAL_IP}/32");
        let _ = Command::new("ip").args(["addr", "del", &cidr, "dev", "lo"]).output();
        let output = Command::new("ip")
            .args(["addr", "add", &cidr, "dev", "lo"])
            .output()
            .unwrap_or_else(|err| panic!("cannot run `ip` (apt-get install iproute2): {err}"));
        assert!(
            output.status.success(),
            "cannot add {cidr} to lo (this test needs root, as the cluster does): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        ExternalAddress
    }
}

impl Drop for ExternalAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &format!("{EXTERNAL_IP}/32"), "dev", "lo"]).output();
    }
}

/// What the external servers received, by Host.
#[derive(Default)]
struct Received {
    registered: AtomicU64,
    unregistered: AtomicU64,
    secure_over_tls: AtomicU64,
}

/// Answers HTTP/1.1 requests on one connection until it closes: 200 with the Host it got.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, received: &Received, tls: bool) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        buffer.drain(..end + 4);
        let host = head
            .lines()
            .find_map(|line| line.strip_prefix("host:"))
            .map(|h| h.trim().split(':').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        match (host.as_str(), tls) {
            (SECURE, true) => received.secure_over_tls.fetch_add(1, Ordering::Relaxed),
            (REGISTERED, false) => received.registered.fetch_add(1, Ordering::Relaxed),
            _ => received.unregistered.fetch_add(1, Ordering::Relaxed),
        };
        let body = format!("external host={host} tls={tls}");
        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The plaintext server and the TLS one (a certificate for SECURE under a CA of its own, whose
/// PEM is returned).
async fn external_servers(received: Arc<Received>) -> String {
    let plain = tokio::net::TcpListener::bind(SocketAddr::new(EXTERNAL_IP.parse().unwrap(), HTTP_PORT))
        .await
        .unwrap_or_else(|err| panic!("bind {EXTERNAL_IP}:{HTTP_PORT}: {err}"));
    let counts = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = plain.accept().await else { return };
            let counts = counts.clone();
            tokio::spawn(async move { answer(stream, &counts, false).await });
        }
    });

    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = rcgen::KeyPair::generate().expect("server key");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = rcgen::CertificateParams::new(vec![SECURE.to_owned()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let secure = tokio::net::TcpListener::bind(SocketAddr::new(EXTERNAL_IP.parse().unwrap(), HTTPS_PORT))
        .await
        .unwrap_or_else(|err| panic!("bind {EXTERNAL_IP}:{HTTPS_PORT}: {err}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = secure.accept().await else { return };
            let (acceptor, counts) = (acceptor.clone(), received.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    answer(stream, &counts, true).await;
                }
            });
        }
    });
    ca.pem()
}

fn external_services(ns: &str, ca_pem: &str) -> String {
    let ca = serde_json::to_string(ca_pem).expect("PEM as a JSON string");
    format!(
        r#"
apiVersion: braid.dev/v1alpha1
kind: MeshExternalService
metadata: {{ name: api, namespace: {ns} }}
spec:
  hosts: [{REGISTERED}]
  ports: [{{ port: {HTTP_PORT}, protocol: HTTP }}]
---
apiVersion: braid.dev/v1alpha1
kind: MeshExternalService
metadata: {{ name: secure, namespace: {ns} }}
spec:
  hosts: [{SECURE}]
  ports:
    - port: {ORIGINATED_PORT}
      protocol: HTTP
      tls: {{ port: {HTTPS_PORT}, caBundle: {ca} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: {ns} }}
"#
    )
}

/// A meshed load run of RATE × DURATION requests to `port` of the external address with `host`.
async fn run(cluster: &Cluster, client: &kube::Client, ns: &str, name: &str, port: u16, host: &str) -> Value {
    let url = format!("http://{EXTERNAL_IP}:{port}/");
    let header = format!("host: {host}");
    let args = ["--url", &url, "--rate", RATE, "--duration", DURATION, "--header", &header];
    let report = load(cluster, client, ns, name, "client", &args).await;
    eprintln!("{name}: {host} on port {port}: statuses {} errors {}", report["statuses"], report["errors"]);
    report
}

fn status_count(report: &Value, status: &str) -> u64 {
    report["statuses"][status].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_lets_registered_external_services_through_and_refuses_the_rest() {
    let (cluster, client, apps) = setup("e2e-egress").await;
    check_prerequisites(cluster);
    let _address = ExternalAddress::add();
    let received = Arc::new(Received::default());
    let ca_pem = external_servers(received.clone()).await;
    let _release = install(cluster, &["mesh.spec.egress.mode=RegistryOnly"]);
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled", "--overwrite"]);
    apply(cluster, &external_services(ns, &ca_pem));
    let listed = cluster.kubectl_ok(&["get", "meshexternalservices", "-n", ns]);
    eprintln!("{listed}");
    assert!(listed.contains(REGISTERED) && listed.contains(&HTTP_PORT.to_string()), "{listed}");

    // Registered: every request answered by the external server.
    let report = run(cluster, &client, ns, "registered", HTTP_PORT, REGISTERED).await;
    let total = count(&report, "total");
    assert!(total >= 20, "{report}");
    assert_eq!(status_count(&report, "200"), total, "every request to the registered host: {report}");
    assert!(received.registered.load(Ordering::Relaxed) >= total, "the external server got them");

    // Unregistered, same address and port: 403 from the sidecar, nothing reaches the server.
    let report = run(cluster, &client, ns, "unregistered", HTTP_PORT, UNREGISTERED).await;
    let total = count(&report, "total");
    assert!(total >= 20, "{report}");
    assert_eq!(status_count(&report, "403"), total, "every request to the unregistered host: {report}");
    assert_eq!(received.unregistered.load(Ordering::Relaxed), 0, "an unregistered request got out");

    // TLS originated by the sidecar: plaintext from the app, TLS to the server, checked against
    // the registered CA.
    let report = run(cluster, &client, ns, "originated", ORIGINATED_PORT, SECURE).await;
    let total = count(&report, "total");
    assert_eq!(status_count(&report, "200"), total, "every request over originated TLS: {report}");
    assert!(received.secure_over_tls.load(Ordering::Relaxed) >= total, "the TLS server got them");

    // AllowAny: the same unregistered host now goes through (the proxies get the change through
    // discovery; a few requests may still meet the old answer while it spreads).
    cluster.kubectl_ok(&[
        "patch",
        "mesh",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"egress":{"mode":"AllowAny"}}}"#,
    ]);
    let mut attempt = 0;
    eventually(Duration::from_secs(60), "AllowAny to let the unregistered host through", || {
        attempt += 1;
        let name = format!("allow-any-{attempt}");
        let client = client.clone();
        async move {
            let report = run(cluster, &client, ns, &name, HTTP_PORT, UNREGISTERED).await;
            let total = count(&report, "total");
            (total > 0 && status_count(&report, "200") == total).then_some(())
        }
    })
    .await;
    assert!(received.unregistered.load(Ordering::Relaxed) > 0);
}
