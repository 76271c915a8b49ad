//! Two braid-proxy processes on loopback talking mTLS with certificates the real operator
//! issued for real ServiceAccount tokens (TokenRequest, checked with TokenReview), and a
//! MeshPolicy-style rule on the server side that admits one identity and denies another.
//! A test binary of its own: it owns the cluster's single Mesh.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use braid_e2e::{Component, TestNamespace, eventually, free_local_addr, http_get, own_mesh, setup};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_DOMAIN: &str = "e2e-proxy.braid.test";

/// A proxy process that is killed when dropped.
struct ProxyProcess {
    child: Child,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    fn start(dir: &Path, name: &str, config: &str) -> Self {
        let admin = free_local_addr();
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, format!("admin: \"{admin}\"\n{config}")).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(Component::binary("braid-proxy"))
            .arg("--config")
            .arg(&path)
            .env("BRAID_LOG", "info,braid_proxy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, admin, log }
    }

    async fn wait_ready(&self) {
        let admin = self.admin;
        let what = format!("{} to hold its certificate and be ready", self.log.display());
        eventually(Duration::from_secs(30), &what, || async move {
            (http_get(admin, "/ready").map(|(code, _)| code) == Some(200)).then_some(())
        })
        .await;
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").map(|(_, body)| body).unwrap_or_default()
    }
}

async fn service_account_with_pod(client: &Client, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{account}-0")},
        // Only has to exist (for the bound token): the gate keeps it off the cluster's node.
        "spec": {"serviceAccountName": account, "schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    // The token the projected volume would hold: audience braid, bound to the pod.
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["braid".to_owned()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap();
    answer.status.unwrap().token
}

/// The app behind the server-side proxy: answers every request with "web".
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nweb")
                    .await;
            });
        }
    });
    addr
}

// Multi-threaded: the app runs on the runtime while the test blocks in http_get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_talk_mtls_with_certificates_from_the_operator() {
    let (cluster, client, mesh_ns) = setup("e2e-proxy-mtls-mesh").await;
    let _mesh = own_mesh(cluster, &client, json!({"trustDomain": TRUST_DOMAIN})).await;
    let identity_addr = free_local_addr().to_string();
    #[rustfmt::skip]
    let operator = Component::operator(cluster, "proxy-mtls", &[
        "--namespace", &mesh_ns.name,
        "--mesh-namespace", &mesh_ns.name,
        "--skip-webhook",
        "--identity",
        "--identity-addr", &identity_addr,
        "--identity-ip-sans", "127.0.0.1",
    ]);
    let apps = TestNamespace::create(cluster, &client, "e2e-proxy-mtls-apps").await;
    let ns = apps.name.as_str();
    cluster.kubectl_ok(&["label", "namespace", ns, "braid.dev/inject=enabled"]);
    // The bundle the webhook would mount into every injected pod.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let bundle =
        eventually(Duration::from_secs(30), "the trust bundle in the app namespace", || {
            let config_maps = config_maps.clone();
            async move {
                config_maps.get_opt("braid-trust-anchors").await.ok()??.data?.get("ca-bundle.crt").cloned()
            }
        })
        .await;

    let dir = tempfile_dir();
    std::fs::write(dir.join("ca-bundle.crt"), &bundle).unwrap();
    let identity_of = |account: &str| format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{account}");
    let mut identity_blocks = Vec::new();
    for account in ["web", "frontend", "batch"] {
        let token = service_account_with_pod(&client, ns, account).await;
        std::fs::write(dir.join(format!("{account}.token")), token).unwrap();
        identity_blocks.push(format!(
            "identity:\n  identity: {}\n  endpoint: \"{identity_addr}\"\n  serverName: \"127.0.0.1\"\n  tokenFile: {}\n  trustBundleFile: {}\n",
            identity_of(account),
            dir.join(format!("{account}.token")).display(),
            dir.join("ca-bundle.crt").display()
        ));
    }

    let app = app().await;
    let web_inbound = free_local_addr();
    let server = ProxyProcess::start(
        &dir,
        "web",
        &format!(
            "outbound: {{ listen: \"127.0.0.1:0\" }}\ninbound:\n  listen: \"{web_inbound}\"\n  target: \"{app}\"\n  policy:\n    mtls: STRICT\n    rules:\n      - from: [{{ serviceAccount: {{ namespace: {ns}, name: frontend }} }}]\n{}",
            identity_blocks[0]
        ),
    );
    let client_config = |listen: SocketAddr, block: &str| {
        format!(
            "outbound: {{ listen: \"127.0.0.1:0\" }}\ninbound: {{ listen: \"127.0.0.1:0\" }}\n{block}services:\n  - name: web.{ns}.svc.cluster.local\n    listen: \"{listen}\"\n    backends:\n      - {{ name: web, endpoints: [{{ address: \"{web_inbound}\", meshed: true, identity: \"{}\" }}] }}\n    routes:\n      - backends: [{{ name: web }}]\n",
            identity_of("web")
        )
    };
    let (frontend_listen, batch_listen) = (free_local_addr(), free_local_addr());
    let frontend =
        ProxyProcess::start(&dir, "frontend", &client_config(frontend_listen, &identity_blocks[1]));
    let batch = ProxyProcess::start(&dir, "batch", &client_config(batch_listen, &identity_blocks[2]));
    for proxy in [&server, &frontend, &batch] {
        proxy.wait_ready().await;
    }

    // frontend → web over mTLS: allowed, and each side names the other in its metrics.
    for _ in 0..3 {
        let answer = http_get(frontend_listen, "/orders");
        assert_eq!(answer, Some((200, "web".to_owned())), "frontend log:\n{}", read(&frontend.log));
    }
    let server_metrics = server.metrics();
    let client_id = format!("client_id=\"{}\"", identity_of("frontend"));
    assert!(
        server_metrics.lines().any(|l| l.starts_with("response_total{")
            && l.contains(&client_id)
            && l.contains("status_code=\"200\"")),
        "{server_metrics}"
    );
    let server_id = format!("server_id=\"{}\"", identity_of("web"));
    assert!(frontend.metrics().lines().any(|l| l.starts_with("response_total{") && l.contains(&server_id)));

    // batch is authenticated too, but no rule admits it.
    let (code, body) = http_get(batch_listen, "/orders").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(&identity_of("batch")), "{body}");
    // Plaintext straight to the server's inbound port: STRICT closes it without an answer.
    assert_eq!(http_get(web_inbound, "/orders"), None);
    drop(operator);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-e2e-proxy-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
