//! Sidecar injection on the real API server: the operator issues the webhook's certificate and
//! registers it (url form on loopback), braid-webhook serves with that certificate, and pods
//! come back from the API server injected: created directly, and by the real ReplicaSet
//! controller. Then the certificates rotate while pods are created in a loop, and the webhook
//! goes away to show what each failure policy does.
//! A test binary of its own: it owns the cluster's single Mesh.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use braid_e2e::{Component, TestNamespace, eventually, free_local_addr, own_mesh, setup};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Plays the kubelet's part for the webhook's Secret volume: copies tls.crt and tls.key to
/// files whenever the Secret changes (write + rename, as the kubelet swaps a symlink).
fn sync_secret_to_files(
    secrets: Api<Secret>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(secret)) = secrets.get_opt("braid-webhook-tls").await
                && let Some(data) = secret.data
                && let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key"))
                && last.as_ref() != Some(&cert.0)
            {
                for (file, bytes) in [("tls.key", &key.0), ("tls.crt", &cert.0)] {
                    let tmp = dir.join(format!(".{file}.tmp"));
                    std::fs::write(&tmp, bytes).unwrap();
                    std::fs::rename(&tmp, dir.join(file)).unwrap();
                }
                last = Some(cert.0.clone());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// A pod that only has to exist: its scheduling gate keeps it off the cluster's node (the
/// kubelet would try to run it), and no one ever removes the gate.
fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
                 "containers": [{"name": "app", "image": "registry.invalid/app:1", "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap()
}

fn is_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    let proxy = spec.init_containers.iter().flatten().find(|c| c.name == "braid-proxy");
    let annotated = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("braid.dev/injected"));
    if let Some(proxy) = proxy
        && init.first() == Some(&"braid-init")
        && annotated
    {
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "the proxy is a native sidecar");
        true
    } else {
        assert!(proxy.is_none() && !annotated, "half-injected pod: {init:?}");
        false
    }
}

async fn namespace_ready(client: &Client, name: &str) {
    // The ServiceAccount admission plugin refuses pods until the default account exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    eventually(Duration::from_secs(30), "the default ServiceAccount", || async {
        accounts.get_opt("default").await.ok()?.map(|_| ())
    })
    .await;
}

async fn label_namespace(client: &Client, name: &str) {
    let patch = json!({"metadata": {"labels": {"braid.dev/inject": "enabled"}}});
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn wait_for_files(dir: &Path) {
    eventually(Duration::from_secs(30), "the webhook certificate files", || async {
        (dir.join("tls.crt").exists() && dir.join("tls.key").exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pods_come_back_injected_through_certificate_rotation() {
    let (cluster, client, mesh_ns) = setup("e2e-inject-mesh").await;
    let meshed = TestNamespace::create(cluster, &client, "e2e-inject-app").await;
    let plain = TestNamespace::create(cluster, &client, "e2e-inject-plain").await;
    label_namespace(&client, &meshed.name).await;
    namespace_ready(&client, &meshed.name).await;
    namespace_ready(&client, &plain.name).await;
    let config_name = format!("{}-inject", mesh_ns.name);

    // Short lifetimes, so a serving renewal (every 10 s) and a CA rollover (after 20 s) happen
    // while pods are being created.
    let _mesh = own_mesh(
        cluster,
        &client,
        json!({"proxy": {"image": "braid.dev/braid-proxy:e2e"},
               "injection": {"certificateLifetime": "20s", "caLifetime": "40s", "renewAtPercent": 50}}),
    )
    .await;
    let webhook_addr = free_local_addr();
    let (_config, operator) = Component::webhook_owner(
        cluster,
        &mesh_ns.name,
        &config_name,
        &format!("https://{webhook_addr}/inject"),
    );
    let tls_dir = std::env::temp_dir().join(format!("braid-webhook-tls-{}", mesh_ns.name));
    std::fs::create_dir_all(&tls_dir).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let syncer =
        sync_secret_to_files(Api::namespaced(client.clone(), &mesh_ns.name), tls_dir.clone(), stop.clone());
    wait_for_files(&tls_dir).await;
    let cert = tls_dir.join("tls.crt").to_string_lossy().into_owned();
    let key = tls_dir.join("tls.key").to_string_lossy().into_owned();
    let webhook = Component::webhook(
        cluster,
        &mesh_ns.name,
        &[
            "--addr",
            &webhook_addr.to_string(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-reload-seconds",
            "1",
        ],
    );

    // A pod in a meshed namespace comes back injected, with the Mesh's proxy image.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &meshed.name);
    let created = eventually(Duration::from_secs(20), "the first injected pod", || async {
        let created = pods.create(&PostParams::default(), &pod("first", json!({}))).await.ok()?;
        if is_injected(&created) {
            Some(created)
        } else {
            pods.delete("first", &DeleteParams::default()).await.ok();
            None
        }
    })
    .await;
    let proxy =
        created.spec.unwrap().init_containers.unwrap().into_iter().find(|c| c.name == "braid-proxy").unwrap();
    assert_eq!(proxy.image.as_deref(), Some("braid.dev/braid-proxy:e2e"));

    // A Deployment: the real ReplicaSet controller creates the pods, and they are injected.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &meshed.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
                                       "containers": [{"name": "web", "image": "registry.invalid/web:1"}]}}}
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let replicas = eventually(Duration::from_secs(30), "2 pods from the ReplicaSet controller", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    assert!(replicas.iter().all(is_injected), "ReplicaSet pods not injected");

    // A namespace without the label gets nothing, unless the pod opts in by annotation; an
    // opt-out annotation wins in a meshed namespace.
    let plain_pods: Api<Pod> = Api::namespaced(client.clone(), &plain.name);
    let untouched = plain_pods.create(&PostParams::default(), &pod("plain", json!({}))).await.unwrap();
    assert!(!is_injected(&untouched));
    let opted_in = plain_pods
        .create(&PostParams::default(), &pod("opted-in", json!({"braid.dev/inject": "enabled"})))
        .await
        .unwrap();
    assert!(is_injected(&opted_in));
    let opted_out = pods
        .create(&PostParams::default(), &pod("opted-out", json!({"braid.dev/inject": "disabled"})))
        .await
        .unwrap();
    assert!(!is_injected(&opted_out));

    // Pods created in a loop while the serving certificate renews and the CA rolls over:
    // not one creation may fail.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh_ns.name);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut serving_certs = std::collections::BTreeSet::new();
    let mut max_cas_trusted = 0;
    let (mut created, mut failed) = (0, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
    while tokio::time::Instant::now() < deadline {
        match pods.create(&PostParams::default(), &pod(&format!("loop-{created}"), json!({}))).await {
            Ok(p) if is_injected(&p) => {}
            Ok(_) => failed.push(format!("loop-{created}: created without the proxy")),
            Err(err) => failed.push(format!("loop-{created}: {err}")),
        }
        created += 1;
        if let Ok(secret) = secrets.get("braid-webhook-tls").await {
            serving_certs.insert(secret.data.unwrap()["tls.crt"].0.clone());
        }
        if let Ok(config) = configs.get(&config_name).await {
            let bundle = &config.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap().0;
            max_cas_trusted =
                max_cas_trusted.max(String::from_utf8_lossy(bundle).matches("BEGIN CERTIFICATE").count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "created {created} pods during rotation, {} failed; {} serving certificates seen",
        failed.len(),
        serving_certs.len()
    );
    assert!(failed.is_empty(), "{} of {created} creations failed: {failed:?}", failed.len());
    assert!(
        serving_certs.len() >= 3,
        "the serving certificate should have renewed, saw {}",
        serving_certs.len()
    );
    assert_eq!(max_cas_trusted, 2, "the CA should have rolled over during the loop");
    let metrics = webhook.metrics();
    assert!(metrics.contains("braid_webhook_admissions_total"), "{metrics}");

    // Without the webhook, a meshed namespace refuses pods (failurePolicy Fail) and other
    // namespaces go on (Ignore): an outage blocks nothing the user did not mesh.
    drop(webhook);
    let refused = pods.create(&PostParams::default(), &pod("no-webhook", json!({}))).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains("failed calling webhook"), "{}", status.message)
        }
        other => panic!("a pod of a meshed namespace was admitted without the webhook: {other:?}"),
    }
    let elsewhere = plain_pods
        .create(&PostParams::default(), &pod("no-webhook", json!({"braid.dev/inject": "enabled"})))
        .await;
    assert!(elsewhere.is_ok_and(|p| !is_injected(&p)), "Ignore should admit the pod unchanged");

    stop.store(true, Ordering::Relaxed);
    syncer.await.unwrap();
    drop(operator);
}
