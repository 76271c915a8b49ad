//! Mesh identity on the real API server (docs/identity.md): the operator generates the CA,
//! publishes the trust bundle, reports on the Mesh, and its endpoint POST /v1/certify issues a
//! workload certificate for a projected ServiceAccount token bound to a pod, and refuses every
//! request the contract says it must. With short lifetimes, the issuer and the trust anchor
//! rotate while every certificate issued stays verifiable.
//!
//! The pods never run (a scheduling gate keeps them off the cluster's node), but they exist, and
//! existing is what a bound token proves. A test binary of its own: it owns the cluster's single Mesh.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use braid_crds::Mesh;
use braid_e2e::{Cluster, Component, TestNamespace, eventually, free_local_addr, metric, own_mesh, setup};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SanType};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::{extensions::GeneralName, pem::Pem, prelude::FromDer};

/// Both tests replace the cluster's single Mesh, so they take turns.
static MESH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TRUST_DOMAIN: &str = "e2e.braid.test";

/// Starts the operator with the CA and the identity endpoint on a free loopback port; Secrets and
/// the bundle live in `mesh_ns`.
fn start_operator(cluster: &Cluster, mesh_ns: &str, propagation: &str) -> (Component, SocketAddr) {
    let addr = free_local_addr();
    let addr_text = addr.to_string();
    #[rustfmt::skip]
    let args = [
        "--namespace", mesh_ns,
        "--mesh-namespace", mesh_ns,
        "--skip-webhook",
        "--identity",
        "--identity-addr", &addr_text,
        "--identity-ip-sans", "127.0.0.1",
        "--identity-propagation", propagation,
    ];
    (Component::operator(cluster, &format!("{mesh_ns}-identity"), &args), addr)
}

/// The trust bundle published in `namespace`, once it exists.
async fn published_bundle(client: &Client, namespace: &str) -> Option<String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = config_maps.get_opt("braid-trust-anchors").await.ok()??;
    config_map.data?.get("ca-bundle.crt").cloned().filter(|b| !b.is_empty())
}

async fn wait_for_bundle(client: &Client, namespace: &str, operator: &Component) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(bundle) = published_bundle(client, namespace).await {
            return bundle;
        }
        assert!(
            Instant::now() < deadline,
            "no ConfigMap braid-trust-anchors in {namespace} after 30 s; operator log:\n{}",
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A ServiceAccount and a pod running as it (Pending forever: its scheduling gate keeps it off the
/// cluster's node); the pod's UID.
async fn workload(client: &Client, namespace: &str, account: &str, pod: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
    match accounts.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => panic!("cannot create ServiceAccount {namespace}/{account}: {err}"),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod},
        "spec": {
            "serviceAccountName": account,
            "schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    }))
    .unwrap();
    let created = pods
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("cannot create pod {namespace}/{pod}: {err}"));
    created.metadata.uid.unwrap()
}

/// A token of `account` bound to `pod`, as the projected volume the webhook adds would hold.
async fn token(client: &Client, namespace: &str, account: &str, pod: &str, audience: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let pod_uid = Api::<Pod>::namespaced(client.clone(), namespace).get(pod).await.unwrap().metadata.uid;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.to_owned()),
                uid: pod_uid,
            }),
        },
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|err| panic!("TokenRequest for {namespace}/{account} failed: {err}"));
    answer.status.unwrap().token
}

fn csr_with(key: &KeyPair, names: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn csr(uri: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    csr_with(&key, vec![SanType::URI(uri.try_into().unwrap())])
}

fn spiffe(namespace: &str, account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// POSTs `body` to /v1/certify over TLS, trusting only `bundle` (as a proxy does), on a new
/// connection each time, as a proxy renewing once a day would.
async fn post(addr: SocketAddr, bundle: &str, body: &[u8]) -> Answer {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Before its first issuer is loaded the endpoint refuses handshakes (it has no certificate),
    // and a proxy retries: status 0 with the reason, for `wait_for_issuer` to retry too.
    let no_answer = |stage: &str, err: std::io::Error| Answer {
        status: 0,
        body: json!({"error": "no-connection", "message": format!("{stage} with {addr}: {err}")}),
        retry_after: None,
    };
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(err) => return no_answer("TCP connect", err),
    };
    // Without it, Nagle's algorithm and the server's delayed ACK can add 40 ms to a request that
    // spans segments, which the latency figure would measure instead of the server.
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::from(addr.ip());
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(err) => return no_answer("TLS handshake (trusting the bundle)", err),
    };
    let head = format!(
        "POST /v1/certify HTTP/1.1\r\nHost: braid-identity\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // One write: one TLS record where it fits. The server may answer (413) and close before it
    // read all of an oversized body.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let _ = tls.write_all(&request).await;
    let _ = tls.flush().await;
    let mut raw = Vec::new();
    if let Err(err) = tls.read_to_end(&mut raw).await {
        assert!(!raw.is_empty(), "no answer from the identity endpoint: {err}");
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        retry_after: header("retry-after"),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

async fn certify(addr: SocketAddr, bundle: &str, token: &str, csr: &str) -> Answer {
    post(addr, bundle, &serde_json::to_vec(&json!({"token": token, "csr": csr})).unwrap()).await
}

fn assert_refused(answer: &Answer, status: u16, code: &str, case: &str) {
    assert_eq!(
        (answer.status, answer.error()),
        (status, code),
        "{case}: expected {status} {code}, got {answer:?}"
    );
    assert!(!answer.message().is_empty(), "{case}: the refusal should say why: {answer:?}");
    eprintln!("{case}: {status} {code}: {}", answer.message());
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes()).map(|block| block.unwrap().contents).collect()
}

/// Whether `leaf` with intermediates `chain` verifies against `bundle` for TLS client and server
/// use, as checked by an implementation other than ours (openssl verify).
fn verify(leaf: &str, chain: &str, bundle: &str) -> Result<(), String> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "braid-identity-verify-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    let mut result = Ok(());
    for purpose in ["sslclient", "sslserver"] {
        let output = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(dir.join("bundle.pem"))
            .arg("-untrusted")
            .arg(dir.join("chain.pem"))
            .arg(dir.join("leaf.pem"))
            .output()
            .unwrap_or_else(|err| panic!("cannot run openssl (apt-get install openssl): {err}"));
        if !output.status.success() {
            result = Err(format!(
                "{purpose}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The same token with its claims changed and re-signed with the cluster's service-account key:
/// a genuine signature, so only the claims decide.
fn resigned(cluster: &Cluster, token: &str, edit: impl Fn(&mut Value)) -> String {
    let key = cluster.kubeconfig.parent().map(|d| d.join("pki/sa.key")).unwrap_or_default();
    assert!(
        key.is_file(),
        "{} not found: the local cluster keeps its service-account key there (make cluster-up)",
        key.display()
    );
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    edit(&mut claims);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()));
    let file: PathBuf = std::env::temp_dir().join(format!("braid-jwt-{}", std::process::id()));
    std::fs::write(&file, &input).unwrap();
    let output =
        Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(&key).arg(&file).output().unwrap();
    assert!(output.status.success(), "openssl dgst: {}", String::from_utf8_lossy(&output.stderr));
    let _ = std::fs::remove_file(&file);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(&output.stdout))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A namespace of workloads (pods and ServiceAccounts) apart from the mesh namespace. Not
/// labelled for injection: a webhook another test left behind must not get between us and the
/// pods; the bundle's publication is checked in a labelled namespace of its own.
async fn workload_namespace(cluster: &Cluster, client: &Client, prefix: &str) -> TestNamespace {
    TestNamespace::create(cluster, client, prefix).await
}

/// The endpoint loads the issuer from its Secret on its own schedule; waits until it has one.
async fn wait_for_issuer(addr: SocketAddr, bundle: &str, namespace: &str) {
    eventually(Duration::from_secs(30), "the identity endpoint to have an issuer", || async {
        let answer = certify(addr, bundle, "x", &csr(&spiffe(namespace, "web"))).await;
        (answer.status != 0 && answer.error() != "unavailable").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_endpoint_issues_for_a_bound_token_and_refuses_everything_else() {
    let _turn = MESH.lock().await;
    let (cluster, client, mesh_ns) = setup("e2e-identity").await;
    let _mesh = own_mesh(cluster, &client, json!({"trustDomain": TRUST_DOMAIN})).await;
    let (operator, addr) = start_operator(cluster, &mesh_ns.name, "3s");
    let bundle = wait_for_bundle(&client, &mesh_ns.name, &operator).await;
    assert_eq!(pem_certs(&bundle).len(), 1, "one trust anchor at first");
    let apps = workload_namespace(cluster, &client, "e2e-identity-apps").await;
    let ns = apps.name.as_str();
    workload(&client, ns, "web", "web-0").await;
    let web = token(&client, ns, "web", "web-0", "braid").await;
    wait_for_issuer(addr, &bundle, ns).await;

    // A valid issuance: the URI SAN only, 24 h (the default) from a minute ago, and a chain that
    // verifies against the bundle.
    let id = spiffe(ns, "web");
    let answer = certify(addr, &bundle, &web, &csr(&id)).await;
    assert_eq!(answer.status, 200, "{answer:?}\noperator log:\n{}", operator.log_text());
    assert_eq!(answer.body["identity"], id.as_str());
    assert_eq!(answer.body["trustBundle"].as_str(), Some(bundle.as_str()));
    let leaf_pem = answer.body["certificate"].as_str().unwrap();
    let chain_pem = answer.body["chain"].as_str().unwrap();
    verify(leaf_pem, chain_pem, &bundle)
        .unwrap_or_else(|err| panic!("the certificate does not verify: {err}"));
    let leaf_der = pem_certs(leaf_pem).remove(0);
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&leaf_der).unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert_eq!(sans, vec![GeneralName::URI(id.as_str())]);
    let validity = leaf.validity();
    assert_eq!(validity.not_after.timestamp() - validity.not_before.timestamp(), 24 * 3600 + 60);
    assert!((validity.not_before.timestamp() - (now() - 60)).abs() <= 5, "notBefore is a minute ago");
    let not_after: k8s_openapi::jiff::Timestamp = answer.body["notAfter"].as_str().unwrap().parse().unwrap();
    assert_eq!(not_after.as_second(), validity.not_after.timestamp(), "notAfter in the answer");
    assert!(leaf.extended_key_usage().unwrap().unwrap().value.client_auth);

    // Refusals by the request itself.
    let id_csr = csr(&id);
    assert_refused(&post(addr, &bundle, b"{not json").await, 400, "malformed-request", "not JSON");
    assert_refused(&post(addr, &bundle, br#"{"token": "x"}"#).await, 400, "malformed-request", "no csr");
    assert_refused(
        &certify(
            addr,
            &bundle,
            &web,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )
        .await,
        400,
        "malformed-csr",
        "garbage CSR",
    );
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    assert_refused(
        &certify(addr, &bundle, &web, &csr_with(&p384, vec![SanType::URI(id.as_str().try_into().unwrap())]))
            .await,
        400,
        "malformed-csr",
        "P-384 key",
    );
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let two = csr_with(
        &key,
        vec![SanType::URI(id.as_str().try_into().unwrap()), SanType::DnsName("web".try_into().unwrap())],
    );
    assert_refused(&certify(addr, &bundle, &web, &two).await, 400, "malformed-csr", "two SANs");
    let big =
        serde_json::to_vec(&json!({"token": web, "csr": id_csr, "pad": "x".repeat(17 * 1024)})).unwrap();
    assert_refused(&post(addr, &bundle, &big).await, 413, "request-too-large", "17 KiB body");

    // Refusals by TokenReview: forged, tampered, another audience, expired.
    assert_refused(
        &certify(addr, &bundle, "not-a-token", &id_csr).await,
        401,
        "unauthenticated",
        "garbage token",
    );
    let mut parts: Vec<String> = web.split('.').map(str::to_owned).collect();
    let signature = parts[2].clone().into_bytes();
    let mut flipped = signature.clone();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(flipped).unwrap();
    assert_refused(
        &certify(addr, &bundle, &parts.join("."), &id_csr).await,
        401,
        "unauthenticated",
        "modified signature",
    );
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(web.split('.').nth(1).unwrap()).unwrap()).unwrap();
    claims["sub"] = json!(format!("system:serviceaccount:{ns}:admin"));
    let tampered = format!(
        "{}.{}.{}",
        web.split('.').next().unwrap(),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        web.split('.').nth(2).unwrap()
    );
    assert_refused(
        &certify(addr, &bundle, &tampered, &id_csr).await,
        401,
        "unauthenticated",
        "claims changed, signature kept",
    );
    let other = token(&client, ns, "web", "web-0", "vault").await;
    assert_refused(
        &certify(addr, &bundle, &other, &id_csr).await,
        401,
        "unauthenticated",
        "token for audience vault",
    );
    let expired = resigned(cluster, &web, |claims| {
        let t = now();
        claims["iat"] = json!(t - 1200);
        claims["nbf"] = json!(t - 1200);
        claims["exp"] = json!(t - 600);
    });
    let answer = certify(addr, &bundle, &expired, &id_csr).await;
    assert_refused(&answer, 401, "unauthenticated", "expired token (genuine signature)");
    assert!(answer.message().contains("expired"), "{answer:?}");
    // The re-signing itself is sound: the same token re-signed unchanged is accepted.
    let unchanged = resigned(cluster, &web, |_| {});
    assert_eq!(
        certify(addr, &bundle, &unchanged, &csr(&id)).await.status,
        200,
        "a re-signed, unchanged token"
    );

    // Another identity than the token's.
    let mismatch = certify(addr, &bundle, &web, &csr(&spiffe(ns, "admin"))).await;
    assert_refused(&mismatch, 403, "identity-mismatch", "CSR for another service account");
    let other_domain =
        certify(addr, &bundle, &web, &csr(&format!("spiffe://cluster.local/ns/{ns}/sa/web"))).await;
    assert_refused(&other_domain, 403, "identity-mismatch", "CSR for another trust domain");

    // A deleted pod: TokenReview still answers from its 10 s cache, the operator's own check
    // does not.
    workload(&client, ns, "web", "web-gone").await;
    let gone = token(&client, ns, "web", "web-gone", "braid").await;
    assert_eq!(certify(addr, &bundle, &gone, &csr(&id)).await.status, 200, "before the pod is deleted");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete("web-gone", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "pod web-gone to be gone", || async {
        pods.get_opt("web-gone").await.ok()?.is_none().then_some(())
    })
    .await;
    let answer = certify(addr, &bundle, &gone, &csr(&id)).await;
    assert_refused(&answer, 403, "identity-gone", "token of a deleted pod, within TokenReview's cache");
    let later =
        eventually(Duration::from_secs(25), "TokenReview to refuse the deleted pod's token", || async {
            let answer = certify(addr, &bundle, &gone, &csr(&id)).await;
            (answer.error() != "identity-gone").then_some(answer)
        })
        .await;
    assert_refused(&later, 401, "unauthenticated", "token of a deleted pod, after the cache");

    // A deleted ServiceAccount (its pod remains).
    workload(&client, ns, "ephemeral", "ephemeral-0").await;
    let ephemeral = token(&client, ns, "ephemeral", "ephemeral-0", "braid").await;
    let ephemeral_id = spiffe(ns, "ephemeral");
    assert_eq!(certify(addr, &bundle, &ephemeral, &csr(&ephemeral_id)).await.status, 200);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts.delete("ephemeral", &DeleteParams::default()).await.unwrap();
    let answer = certify(addr, &bundle, &ephemeral, &csr(&ephemeral_id)).await;
    assert_refused(&answer, 403, "identity-gone", "token of a deleted service account");

    // The rate limit: 10 at once per identity, then 429 with Retry-After.
    workload(&client, ns, "busy", "busy-0").await;
    let busy = token(&client, ns, "busy", "busy-0", "braid").await;
    let busy_id = spiffe(ns, "busy");
    for i in 0..10 {
        let answer = certify(addr, &bundle, &busy, &csr(&busy_id)).await;
        assert_eq!(answer.status, 200, "issuance {i} of the burst: {answer:?}");
    }
    let limited = certify(addr, &bundle, &busy, &csr(&busy_id)).await;
    assert_refused(&limited, 429, "rate-limited", "11th issuance within a minute");
    let retry: u64 = limited.retry_after.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=6).contains(&retry), "Retry-After {retry}");
    // Another identity is not affected.
    assert_eq!(certify(addr, &bundle, &web, &csr(&id)).await.status, 200);

    // Latency: 50 issuances (5 identities x 10, under the rate limit), each on a new TLS
    // connection, TokenReview and lookups included.
    let mut tokens = Vec::new();
    for i in 0..5 {
        let (account, pod) = (format!("bench-{i}"), format!("bench-{i}-0"));
        workload(&client, ns, &account, &pod).await;
        tokens.push((token(&client, ns, &account, &pod, "braid").await, spiffe(ns, &account)));
    }
    let mut took = Vec::new();
    for round in 0..10 {
        for (token, id) in &tokens {
            let csr = csr(id);
            let started = Instant::now();
            let answer = certify(addr, &bundle, token, &csr).await;
            took.push(started.elapsed());
            assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        }
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "issuance latency over {} requests (new TLS connection each): median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        took.len(),
        ms(took[took.len() / 2]),
        ms(took[took.len() * 9 / 10]),
        ms(took[took.len() - 1])
    );

    // The metrics count what happened.
    let metrics = operator.metrics();
    let issued = metric(&metrics, "braid_identity_issued_total");
    assert!(issued >= 65.0, "braid_identity_issued_total {issued}:\n{metrics}");
    for (reason, at_least) in [
        ("malformed-request", 2.0),
        ("malformed-csr", 3.0),
        ("request-too-large", 1.0),
        ("unauthenticated", 6.0),
        ("identity-mismatch", 2.0),
        ("identity-gone", 2.0),
        ("rate-limited", 1.0),
    ] {
        let count = metric(&metrics, &format!("braid_identity_rejections_total{{reason=\"{reason}\"}}"));
        assert!(count >= at_least, "rejections {reason}: {count} < {at_least}:\n{metrics}");
    }

    // The CA as the cluster sees it: Secrets, the Mesh's status, the bundle in a meshed namespace.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh_ns.name);
    let anchor = secrets.get("braid-trust-anchor").await.unwrap().data.unwrap();
    assert!(anchor.contains_key("ca.crt") && anchor.contains_key("ca.key"));
    let issuer = secrets.get("braid-issuer").await.unwrap().data.unwrap();
    assert_eq!(issuer.keys().map(String::as_str).collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
    let meshes: Api<Mesh> = Api::all(client.clone());
    let status = eventually(Duration::from_secs(20), "Mesh CAReady=True with status.identity", || async {
        let status = meshes.get("default").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "CAReady")?;
        (ready.status == "True").then(|| (ready.clone(), status.identity.clone()))
    })
    .await;
    let (ready, identity) = (status.0, status.1.expect("status.identity"));
    assert_eq!(ready.reason, "IssuerReady", "{}", ready.message);
    let anchor_left = identity.trust_anchor_not_after.0.as_second() - now();
    let issuer_left = identity.issuer_not_after.0.as_second() - now();
    assert!((8759 * 3600..=8760 * 3600).contains(&anchor_left), "trust anchor expires in {anchor_left} s");
    assert!((719 * 3600..=720 * 3600).contains(&issuer_left), "issuer expires in {issuer_left} s");
    assert_eq!(identity.trust_bundle_roots, 1);
    eprintln!("CAReady: {}", ready.message);

    let meshed = TestNamespace::create(cluster, &client, "e2e-identity-meshed").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"braid.dev/inject": "enabled"}}});
    namespaces.patch(&meshed.name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let published =
        eventually(Duration::from_secs(15), "the trust bundle in a namespace labelled for injection", || {
            published_bundle(&client, &meshed.name)
        })
        .await;
    assert_eq!(published, bundle);
    // Deleted by someone: put back.
    Api::<ConfigMap>::namespaced(client.clone(), &meshed.name)
        .delete("braid-trust-anchors", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(15), "the deleted trust bundle to be published again", || {
        published_bundle(&client, &meshed.name)
    })
    .await;

    // A pod meshed by its own annotation in a namespace nobody labelled: the webhook labels it,
    // and the bundle its proxy mounts is published there too.
    let unlabelled = TestNamespace::create(cluster, &client, "e2e-identity-annotated").await;
    assert_eq!(published_bundle(&client, &unlabelled.name).await, None, "not published before a pod asks");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "asks", "labels": {"braid.dev/needs-trust-bundle": "true"}},
        // Never scheduled: only its labels matter here.
        "spec": {"nodeName": "no-such-node", "containers": [{"name": "app", "image": "none"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &unlabelled.name)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let published = eventually(Duration::from_secs(15), "the trust bundle where a pod asks for it", || {
        published_bundle(&client, &unlabelled.name)
    })
    .await;
    assert_eq!(published, bundle);
    drop(operator);
}

#[tokio::test]
async fn issuer_and_trust_anchor_rotations_keep_every_certificate_verifiable() {
    let _turn = MESH.lock().await;
    let (cluster, client, mesh_ns) = setup("e2e-identity-rotation").await;
    // The issuer renews about every 20 s; the trust anchor after about a minute, and its
    // successor signs an issuer 8 s after both roots are published.
    let _mesh = own_mesh(
        cluster,
        &client,
        json!({"trustDomain": TRUST_DOMAIN, "identity": {"trustAnchorLifetime": "90s", "issuerLifetime": "30s", "workloadLifetime": "20s"}}),
    )
    .await;
    let (operator, addr) = start_operator(cluster, &mesh_ns.name, "8s");
    let first_bundle = wait_for_bundle(&client, &mesh_ns.name, &operator).await;
    let apps = workload_namespace(cluster, &client, "e2e-identity-rotation-apps").await;
    let ns = apps.name.as_str();
    let mut identities = Vec::new();
    for i in 0..3 {
        let (account, pod) = (format!("app-{i}"), format!("app-{i}-0"));
        workload(&client, ns, &account, &pod).await;
        identities.push((token(&client, ns, &account, &pod, "braid").await, spiffe(ns, &account)));
    }
    wait_for_issuer(addr, &first_bundle, ns).await;
    let meshes: Api<Mesh> = Api::all(client.clone());

    // Every second: the bundle a proxy reads from the ConfigMap. Every two seconds: a new
    // certificate (identities in turn, under the rate limit). Each valid certificate must verify
    // against the current bundle, and each new one against the bundle of 5 s ago too (a proxy
    // whose mounted ConfigMap lags; the operator waits 8 s before a new root signs).
    let mut history: Vec<(Instant, String)> = vec![(Instant::now(), first_bundle)];
    let mut held: Vec<(String, String, i64)> = Vec::new();
    let (mut issuers, mut max_roots, mut rotating_seen, mut checks) = (Vec::<String>::new(), 1, false, 0);
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut tick = 0usize;
    while Instant::now() < deadline {
        let current = published_bundle(&client, &mesh_ns.name).await.unwrap();
        if history.last().is_none_or(|(_, b)| *b != current) {
            history.push((Instant::now(), current.clone()));
        }
        max_roots = max_roots.max(pem_certs(&current).len());
        if tick.is_multiple_of(2) {
            let (token, id) = &identities[(tick / 2) % identities.len()];
            let answer = certify(addr, &current, token, &csr(id)).await;
            assert_eq!(answer.status, 200, "{answer:?}\noperator log:\n{}", operator.log_text());
            let leaf = answer.body["certificate"].as_str().unwrap().to_owned();
            let chain = answer.body["chain"].as_str().unwrap().to_owned();
            let lagging = history
                .iter()
                .rev()
                .find(|(at, _)| at.elapsed() >= Duration::from_secs(5))
                .unwrap_or(&history[0]);
            verify(&leaf, &chain, &lagging.1).unwrap_or_else(|err| {
                panic!(
                    "a new certificate fails a 5 s old bundle: {err}\noperator log:\n{}",
                    operator.log_text()
                )
            });
            if !issuers.contains(&chain) {
                issuers.push(chain.clone());
            }
            let not_after = pem_certs(&leaf).first().map(|der| {
                x509_parser::certificate::X509Certificate::from_der(der)
                    .unwrap()
                    .1
                    .validity()
                    .not_after
                    .timestamp()
            });
            held.push((leaf, chain, not_after.unwrap()));
        }
        // Certificates that stay valid for the next second must verify against today's bundle.
        held.retain(|(_, _, not_after)| *not_after > now() + 1);
        for (leaf, chain, _) in &held {
            verify(leaf, chain, &current).unwrap_or_else(|err| {
                panic!(
                    "a valid certificate fails the current bundle: {err}\noperator log:\n{}",
                    operator.log_text()
                )
            });
            checks += 1;
        }
        if let Ok(mesh) = meshes.get("default").await {
            let reason = mesh
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "CAReady"))
                .map(|c| c.reason);
            rotating_seen |= reason.as_deref() == Some("TrustAnchorRotating");
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let roots_seen: Vec<Vec<u8>> = {
        let mut all: Vec<Vec<u8>> = history.iter().flat_map(|(_, b)| pem_certs(b)).collect();
        all.sort();
        all.dedup();
        all
    };
    eprintln!(
        "over 100 s: {} issuers, {} trust anchors, bundles of up to {max_roots} roots, {checks} verifications of held certificates",
        issuers.len(),
        roots_seen.len()
    );
    assert!(issuers.len() >= 4, "expected the issuer to rotate every ~20 s, saw {} issuers", issuers.len());
    assert!(roots_seen.len() >= 2, "expected a trust-anchor rotation within 100 s");
    assert_eq!(max_roots, 2, "during the rotation the bundle trusts the old and the new root");
    assert!(rotating_seen, "Mesh CAReady should say TrustAnchorRotating during the overlap");
    // The old root leaves once the old issuer's certificates expired (20 s after the switch).
    eventually(Duration::from_secs(40), "the previous trust anchor to leave the bundle", || async {
        let current = published_bundle(&client, &mesh_ns.name).await?;
        (pem_certs(&current).len() == 1).then_some(())
    })
    .await;
    let log = operator.log_text();
    assert!(log.contains("NewRoot(\"the trust anchor reached its renewal time\")"), "{log}");
    assert!(log.contains("DropPrevious"), "{log}");
}

/// Installed by the Helm chart, the CA's Secrets and the mesh namespace's bundle belong to the
/// chart's identity Service: nothing is written before it exists, and deleting it (uninstalling)
/// removes them.
#[tokio::test]
async fn with_an_owner_service_the_ca_is_removed_with_it() {
    let _turn = MESH.lock().await;
    let (cluster, client, mesh_ns) = setup("e2e-identity-owner").await;
    let _mesh = own_mesh(cluster, &client, json!({"trustDomain": TRUST_DOMAIN})).await;
    let addr = free_local_addr().to_string();
    #[rustfmt::skip]
    let args = [
        "--namespace", &mesh_ns.name,
        "--mesh-namespace", &mesh_ns.name,
        "--skip-webhook",
        "--identity",
        "--identity-addr", &addr,
        "--identity-owner-service", "braid-identity",
    ];
    let operator = Component::operator(cluster, &format!("{}-identity", mesh_ns.name), &args);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh_ns.name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        secrets.get_opt("braid-trust-anchor").await.unwrap().is_none(),
        "written before the Service exists"
    );
    assert!(operator.log_text().contains("the identity Service does not exist"), "{}", operator.log_text());

    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &mesh_ns.name);
    let service = serde_json::from_value(json!({
        "metadata": {"name": "braid-identity"},
        "spec": {"ports": [{"name": "https", "port": 8080}]},
    }))
    .unwrap();
    let uid = services.create(&PostParams::default(), &service).await.unwrap().metadata.uid.unwrap();
    let owners = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.iter().flatten().map(|o| (o.kind.clone(), o.uid.clone())).collect::<Vec<_>>()
    };
    let expected = vec![("Service".to_owned(), uid)];
    for name in ["braid-trust-anchor", "braid-issuer"] {
        let secret = eventually(Duration::from_secs(20), &format!("Secret {name}"), || async {
            secrets.get_opt(name).await.ok()?
        })
        .await;
        assert_eq!(owners(&secret.metadata), expected, "owner of {name}");
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &mesh_ns.name);
    let bundle = eventually(Duration::from_secs(20), "the bundle ConfigMap", || async {
        config_maps.get_opt("braid-trust-anchors").await.ok()?
    })
    .await;
    assert_eq!(owners(&bundle.metadata), expected);

    // Stop the operator first (uninstall stops it too), then "uninstall" the Service.
    drop(operator);
    services.delete("braid-identity", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "the garbage collector to remove the CA", || async {
        let left = secrets.get_opt("braid-trust-anchor").await.ok()?.is_some()
            || secrets.get_opt("braid-issuer").await.ok()?.is_some()
            || config_maps.get_opt("braid-trust-anchors").await.ok()?.is_some();
        (!left).then_some(())
    })
    .await;
}

/// An external CA (the layout cert-manager writes, PKCS#8 key) replaces the generated one: its
/// root becomes the trust bundle and workload certificates chain to it.
#[tokio::test]
async fn an_external_ca_secret_is_used_instead_of_a_generated_one() {
    let _turn = MESH.lock().await;
    let (cluster, client, mesh_ns) = setup("e2e-identity-byoca").await;
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name.push(rcgen::DnType::CommonName, "my root CA");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name.push(rcgen::DnType::CommonName, "my braid issuer");
    issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    issuer_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    issuer_params.use_authority_key_identifier_extension = true;
    let issuer = issuer_params.signed_by(&issuer_key, &rcgen::Issuer::new(root_params, &root_key)).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh_ns.name);
    let external = serde_json::from_value(json!({
        "metadata": {"name": "my-ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": issuer.pem(), "tls.key": issuer_key.serialize_pem(), "ca.crt": root.pem()},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &external).await.unwrap();
    let _mesh = own_mesh(
        cluster,
        &client,
        json!({"trustDomain": TRUST_DOMAIN, "identity": {"externalCaSecret": "my-ca"}}),
    )
    .await;
    let (operator, addr) = start_operator(cluster, &mesh_ns.name, "3s");
    let bundle = wait_for_bundle(&client, &mesh_ns.name, &operator).await;
    assert_eq!(pem_certs(&bundle), pem_certs(&root.pem()), "the bundle is the external ca.crt");
    let anchor = secrets.get("braid-trust-anchor").await.unwrap().data.unwrap();
    assert!(!anchor.contains_key("ca.key"), "no generated root with an external CA");

    let apps = workload_namespace(cluster, &client, "e2e-identity-byoca-apps").await;
    workload(&client, &apps.name, "web", "web-0").await;
    let web = token(&client, &apps.name, "web", "web-0", "braid").await;
    wait_for_issuer(addr, &bundle, &apps.name).await;
    let answer = certify(addr, &bundle, &web, &csr(&spiffe(&apps.name, "web"))).await;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", operator.log_text());
    assert_eq!(pem_certs(answer.body["chain"].as_str().unwrap()), pem_certs(&issuer.pem()));
    let leaf = answer.body["certificate"].as_str().unwrap();
    verify(leaf, answer.body["chain"].as_str().unwrap(), &root.pem())
        .unwrap_or_else(|err| panic!("the certificate does not chain to the external root: {err}"));

    let meshes: Api<Mesh> = Api::all(client.clone());
    let identity = eventually(Duration::from_secs(20), "status.identity of the external CA", || async {
        meshes.get("default").await.ok()?.status?.identity.filter(|i| i.external)
    })
    .await;
    assert!(identity.issuer_renew_at.is_none(), "the external CA's owner renews it");

    // A broken external Secret is reported, and the CA in use stays.
    let broken = json!({"stringData": {"tls.key": KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()}});
    secrets.patch("my-ca", &PatchParams::default(), &Patch::Merge(&broken)).await.unwrap();
    let condition = eventually(Duration::from_secs(20), "CAReady=False ExternalCAInvalid", || async {
        let status = meshes.get("default").await.ok()?.status?;
        status.conditions.into_iter().find(|c| c.type_ == "CAReady" && c.reason == "ExternalCAInvalid")
    })
    .await;
    eprintln!("CAReady {}: {}", condition.status, condition.message);
    assert!(condition.message.contains("tls.key is not the private key of tls.crt"), "{}", condition.message);
    let answer = certify(addr, &bundle, &web, &csr(&spiffe(&apps.name, "web"))).await;
    assert_eq!(answer.status, 200, "the stored issuer keeps issuing: {answer:?}");
}

/// A replica that lost the Lease in the middle of a pass writes over what it read, or not at all:
/// its write of a Secret that changed since fails, and so does creating one that appeared since.
#[tokio::test]
async fn a_certificate_write_over_a_stale_read_is_refused() {
    use braid_operator::certs::secret::OwnedSecrets;
    let (_cluster, client, ns) = setup("e2e-identity-fence").await;
    let secrets = OwnedSecrets::new(&client, &ns.name, None);
    let data = |value: &str| std::collections::BTreeMap::from([("ca.crt".to_owned(), value.to_owned())]);
    let first = secrets.object("braid-issuer", "Opaque", data("one"));
    secrets.write(&first, None).await.expect("created when nothing was read");
    let read = secrets.get("braid-issuer").await.unwrap().expect("there");

    // The next leader writes meanwhile.
    secrets.write(&secrets.object("braid-issuer", "Opaque", data("newer")), Some(&read)).await.unwrap();
    // The old leader's write, over its stale read, is refused, and the newer value stays.
    let stale = secrets.write(&secrets.object("braid-issuer", "Opaque", data("stale")), Some(&read)).await;
    match stale {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a write over a stale read went through: {other:?}"),
    }
    let kept = secrets.get("braid-issuer").await.unwrap().unwrap();
    assert_eq!(kept.data.unwrap()["ca.crt"].0, b"newer");
    // Creating over a read that found nothing is refused too when the Secret exists now.
    let late = secrets.write(&secrets.object("braid-issuer", "Opaque", data("late")), None).await;
    assert!(matches!(late, Err(kube::Error::Api(ref status)) if status.code == 409), "{late:?}");
}
