//! Discovery against the real cluster: the real operator (--identity --discovery) streams a
//! Service's routes and endpoints to a braid-proxy that holds a certificate the operator issued
//! for a real ServiceAccount token. The EndpointSlices come from the real endpointslice
//! controller, for pods whose status the test sets (they never run: a scheduling gate keeps them
//! off the node). The apps listen on addresses the test adds to `lo`, which are the pods' IPs.
//! The proxy runs in-process (the library the binary wraps), with a listener standing in for
//! the iptables redirect to the Service's cluster IP.
//! A test binary of its own: it owns the cluster's single Mesh.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use braid_crds::MeshRoute;
use braid_e2e::{
    Cluster, Component, TestNamespace, eventually, free_local_addr, http_get, metric, own_mesh, setup,
};
use braid_proxy::app::{self, Options, Running};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_DOMAIN: &str = "e2e-discovery.braid.test";
/// Pod IPs: from the benchmarking range (RFC 2544), never routed, added to `lo` for the test.
const POD_IPS: [&str; 2] = ["198.18.250.1", "198.18.250.2"];

/// Adds the pod IPs to `lo` and removes them when dropped.
struct PodAddresses;

impl PodAddresses {
    fn add() -> Self {
        for ip in POD_IPS {
            let _ = Command::new("ip").args(["addr", "del", &format!("{ip}/32"), "dev", "lo"]).output();
            let output = Command::new("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .output()
                .unwrap_or_else(|err| panic!("cannot run `ip` (apt-get install iproute2): {err}"));
            assert!(
                output.status.success(),
                "cannot add {ip} to lo (this test needs root, as the proxy's netns tests do): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        PodAddresses
    }
}

impl Drop for PodAddresses {
    fn drop(&mut self) {
        for ip in POD_IPS {
            let _ = Command::new("ip").args(["addr", "del", &format!("{ip}/32"), "dev", "lo"]).output();
        }
    }
}

/// An app on `ip`:`port` that answers every request with `name`.
async fn app(ip: &str, port: u16, name: &'static str) {
    let addr = SocketAddr::new(ip.parse().expect("pod IP"), port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|err| panic!("bind {addr}: {err}"));
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
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-e2e-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A pod that never runs (scheduling gate), with labels; and, when `ip` is given, the status
/// the kubelet would write for a ready pod with that IP.
async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    account: &str,
    labels: serde_json::Value,
    ip: Option<&str>,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"serviceAccountName": account, "schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .expect("pod object");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|err| panic!("create pod {name}: {err}"));
    if let Some(ip) = ip {
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|err| panic!("set the status of pod {name}: {err}"));
    }
    pod
}

async fn service_account(client: &Client, ns: &str, account: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": account}})).expect("sa object");
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|err| panic!("create sa {account}: {err}"));
}

/// The token the projected volume of `pod` would hold: audience braid, bound to the pod.
async fn token(client: &Client, ns: &str, account: &str, pod: &Pod) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
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
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("token request");
    answer.status.expect("token status").token
}

/// A Service selecting `selector`, port 80 to `target_port`; published even when its pods are
/// not ready, because the endpointslice controller otherwise skips pods without a node.
async fn service(
    client: &Client,
    ns: &str,
    name: &str,
    selector: serde_json::Value,
    target_port: u16,
    annotations: serde_json::Value,
) -> IpAddr {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"selector": selector, "publishNotReadyAddresses": true,
                 "ports": [{"name": "http", "port": 80, "targetPort": target_port}]},
    }))
    .expect("service object");
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|err| panic!("create service {name}: {err}"));
    created.spec.and_then(|s| s.cluster_ip).and_then(|ip| ip.parse().ok()).expect("a cluster IP")
}

async fn route(client: &Client, ns: &str, backend: &str) {
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), ns);
    let route = json!({"apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
        "metadata": {"name": "api-split"},
        "spec": {"service": "api", "rules": [{"backends": [{"service": backend, "weight": 100}]}]}});
    routes
        .patch("api-split", &PatchParams::apply("braid-e2e").force(), &Patch::Apply(&route))
        .await
        .unwrap_or_else(|err| panic!("apply MeshRoute api-split: {err}"));
}

/// What the proxy's /config says about its discovered services, for failure messages.
fn discovered(admin: SocketAddr) -> String {
    let Some((_, text)) = http_get(admin, "/config") else { return "no /config".to_owned() };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else { return text };
    let services: Vec<_> = config["config"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| json!({"name": s["name"], "routes": s["routes"], "backends": s["backends"]}))
        .collect();
    json!({"services": services, "discovery": config["discovery"]}).to_string()
}

/// Waits until every one of 10 requests through `listener` is answered by `expected`.
async fn answered_by(listener: SocketAddr, expected: &str, proxy: &Running) {
    let what = format!("requests to the api Service to be answered by {expected}");
    let admin = proxy.admin;
    eventually(Duration::from_secs(30), &what, || async move {
        let answers: Vec<_> = (0..10).map(|_| http_get(listener, "/")).collect();
        let all =
            answers.iter().all(|a| a.as_ref().is_some_and(|(code, body)| *code == 200 && body == expected));
        if !all {
            eprintln!("answers {answers:?}; proxy: {}", discovered(admin));
        }
        all.then_some(())
    })
    .await;
}

/// Waits for the route's Programmed condition and PROXIES column to read `proxies` at `generation`.
async fn programmed(client: &Client, ns: &str, proxies: &str, generation: i64) {
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), ns);
    let what = format!("MeshRoute api-split Programmed with {proxies} proxies at generation {generation}");
    eventually(Duration::from_secs(30), &what, || {
        let routes = routes.clone();
        async move {
            let route = routes.get("api-split").await.ok()?;
            let status = route.status?;
            let condition = status.conditions.iter().find(|c| c.type_ == "Programmed")?;
            let expected = format!("{proxies} proxies run generation {generation}");
            (status.proxies.as_deref() == Some(proxies)
                && condition.status == "True"
                && condition.message == expected)
                .then_some(())
        }
    })
    .await;
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    cluster_ip: IpAddr,
    private_ip: IpAddr,
}

async fn start_proxy(setup: &Setup) -> Running {
    let options = Options {
        config: Some(setup.config.clone()),
        config_poll: Duration::from_secs(1),
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        default_identity: None,
        default_discovery: None,
        fixed_destinations: vec![
            SocketAddr::new(setup.cluster_ip, 80),
            SocketAddr::new(setup.private_ip, 80),
        ],
    };
    let proxy = app::start(options).await.unwrap_or_else(|err| panic!("the proxy did not start: {err}"));
    let admin = proxy.admin;
    eventually(Duration::from_secs(30), "the proxy to hold its certificate and be ready", || async move {
        (http_get(admin, "/ready").map(|(code, _)| code) == Some(200)).then_some(())
    })
    .await;
    proxy
}

fn operator(
    cluster: &Cluster,
    mesh_ns: &str,
    apps_ns: &str,
    identity_addr: &str,
    discovery_addr: &str,
) -> Component {
    #[rustfmt::skip]
    let args = [
        "--namespace", apps_ns,
        "--mesh-namespace", mesh_ns,
        "--skip-webhook",
        "--identity", "--identity-addr", identity_addr, "--identity-ip-sans", "127.0.0.1",
        "--discovery", "--discovery-addr", discovery_addr, "--discovery-ip-sans", "127.0.0.1",
    ];
    Component::operator(cluster, "discovery", &args)
}

// Multi-threaded: the apps and the proxy run on the runtime while the test blocks in http_get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_proxies_through_discovery_and_status_counts_them() {
    let (cluster, client, mesh_ns) = setup("e2e-discovery-mesh").await;
    let _mesh = own_mesh(cluster, &client, json!({"trustDomain": TRUST_DOMAIN})).await;
    let apps = TestNamespace::create(cluster, &client, "e2e-discovery-apps").await;
    let ns = apps.name.as_str();
    let _addresses = PodAddresses::add();
    let app_port = free_local_addr().port();
    app(POD_IPS[0], app_port, "v1").await;
    app(POD_IPS[1], app_port, "v2").await;

    let (identity_addr, discovery_addr) = (free_local_addr().to_string(), free_local_addr().to_string());
    let operator_process = operator(cluster, &mesh_ns.name, ns, &identity_addr, &discovery_addr);

    // The workloads: api v1 and v2 (not meshed: plaintext endpoints), and the client's pod.
    for account in ["api", "client"] {
        service_account(&client, ns, account).await;
    }
    pod(&client, ns, "api-v1-0", "api", json!({"app": "api", "version": "v1"}), Some(POD_IPS[0])).await;
    pod(&client, ns, "api-v2-0", "api", json!({"app": "api", "version": "v2"}), Some(POD_IPS[1])).await;
    let client_pod = pod(&client, ns, "client-0", "client", json!({"app": "client"}), None).await;
    let cluster_ip = service(&client, ns, "api", json!({"app": "api"}), app_port, json!({})).await;
    service(&client, ns, "api-v1", json!({"app": "api", "version": "v1"}), app_port, json!({})).await;
    service(&client, ns, "api-v2", json!({"app": "api", "version": "v2"}), app_port, json!({})).await;
    let private_ip = service(
        &client,
        ns,
        "private",
        json!({"app": "api"}),
        app_port,
        json!({"braid.dev/export-to": "somewhere-else"}),
    )
    .await;

    // The namespace is not labelled for injection (no webhook runs here): the bundle is read
    // where the CA always publishes it, in the mesh namespace.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &mesh_ns.name);
    let bundle =
        eventually(Duration::from_secs(30), "the trust bundle in the mesh namespace", || {
            let config_maps = config_maps.clone();
            async move {
                config_maps.get_opt("braid-trust-anchors").await.ok()??.data?.get("ca-bundle.crt").cloned()
            }
        })
        .await;
    let dir = tempdir();
    std::fs::write(dir.join("ca-bundle.crt"), &bundle).expect("write bundle");
    std::fs::write(dir.join("client.token"), token(&client, ns, "client", &client_pod).await)
        .expect("write token");
    let config = dir.join("client.yaml");
    std::fs::write(
        &config,
        format!(
            "outbound: {{ listen: \"127.0.0.1:0\" }}\ninbound: {{ listen: \"127.0.0.1:0\" }}\n\
             identity:\n  identity: spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/client\n  endpoint: \"{identity_addr}\"\n  serverName: \"127.0.0.1\"\n  tokenFile: {}\n  trustBundleFile: {}\n\
             discovery:\n  endpoint: \"{discovery_addr}\"\n  serverName: \"127.0.0.1\"\n  podNamespace: {ns}\n  podName: client-0\n",
            dir.join("client.token").display(),
            dir.join("ca-bundle.crt").display()
        ),
    )
    .expect("write proxy config");
    let setup = Setup { dir, config, cluster_ip, private_ip };

    // No route yet: the first connection to the cluster IP subscribes, and requests go to the
    // Service's own endpoints (both versions), found by the real endpointslice controller.
    // Which of the two answers is the balancer's choice (peak-EWMA sends sequential requests to
    // the faster one), so the test checks that the proxy holds both and that every answer is
    // one of them; the routes below then reach each version alone.
    let proxy = start_proxy(&setup).await;
    let listener = proxy.fixed_destinations[&SocketAddr::new(cluster_ip, 80)];
    let what = "the proxy to hold both versions' endpoints and requests to be answered by them";
    let admin = proxy.admin;
    let endpoints = POD_IPS.map(|ip| format!("{ip}:{app_port}"));
    let endpoints = &endpoints;
    eventually(Duration::from_secs(30), what, || async move {
        let state = discovered(admin);
        let answers: Vec<_> = (0..10).map(|_| http_get(listener, "/")).collect();
        let answered = answers
            .iter()
            .all(|a| a.as_ref().is_some_and(|(code, body)| *code == 200 && (body == "v1" || body == "v2")));
        let held = endpoints.iter().all(|endpoint| state.contains(&format!("\"{endpoint}\"")));
        if !(answered && held) {
            eprintln!("answers {answers:?}; proxy: {state}");
        }
        (answered && held).then_some(())
    })
    .await;

    // A route sends everything to v2; the proxy gets it and the status counts it.
    route(&client, ns, "api-v2").await;
    answered_by(listener, "v2", &proxy).await;
    programmed(&client, ns, "1/1", 1).await;
    route(&client, ns, "api-v1").await;
    answered_by(listener, "v1", &proxy).await;
    programmed(&client, ns, "1/1", 2).await;

    // The Mesh counts the connected proxy.
    let meshes: Api<braid_crds::Mesh> = Api::all(client.clone());
    eventually(Duration::from_secs(30), "Mesh default status.proxies.connected = 1", || {
        let meshes = meshes.clone();
        async move { (meshes.get("default").await.ok()?.status?.proxies?.connected == 1).then_some(()) }
    })
    .await;

    // A Service not exported to this namespace is refused, and its connections are forwarded
    // unchanged (to a cluster IP nothing routes here: no answer).
    let private = proxy.fixed_destinations[&SocketAddr::new(private_ip, 80)];
    let _ = http_get(private, "/");
    let admin = proxy.admin;
    let refusal = eventually(Duration::from_secs(30), "the private Service to be refused", || async move {
        let (_, config) = http_get(admin, "/config")?;
        let status: serde_json::Value = serde_json::from_str(&config).ok()?;
        let destinations = status["discovery"]["destinations"].as_array()?.clone();
        destinations
            .into_iter()
            .find(|d| d["destination"] == format!("{private_ip}:80") && d["state"] == "refused")
    })
    .await;
    let reason = refusal["error"].as_str().unwrap_or_default();
    assert!(reason.contains("exported only to namespace(s) somewhere-else"), "refusal: {refusal}");

    // The operator goes away: the proxy keeps routing with its last configuration.
    let (_, log) = operator_process.terminate(Duration::from_secs(20));
    assert!(log.contains("discovery endpoint listening"), "operator log:\n{log}");
    answered_by(listener, "v1", &proxy).await;
    route(&client, ns, "api-v2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    answered_by(listener, "v1", &proxy).await;
    // It comes back: the proxy resubscribes and gets the change made meanwhile.
    let operator_process = operator(cluster, &mesh_ns.name, ns, &identity_addr, &discovery_addr);
    answered_by(listener, "v2", &proxy).await;
    programmed(&client, ns, "1/1", 3).await;
    let metrics = operator_process.metrics();
    assert_eq!(metric(&metrics, "braid_discovery_proxies"), 1.0, "operator metrics:\n{metrics}");
    assert!(metric(&metrics, "braid_discovery_acks_total") >= 1.0, "operator metrics:\n{metrics}");

    // A proxy restart: the new proxy subscribes again on its first connection.
    assert!(proxy.drain(Duration::from_secs(5)).await, "the proxy drained");
    let proxy = start_proxy(&setup).await;
    let listener = proxy.fixed_destinations[&SocketAddr::new(cluster_ip, 80)];
    answered_by(listener, "v2", &proxy).await;
    programmed(&client, ns, "1/1", 3).await;
    proxy.drain(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&setup.dir);
}
