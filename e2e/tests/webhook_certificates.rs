//! The operator owns the webhook's certificates on the real API server: it issues them, keeps
//! the MutatingWebhookConfiguration's caBundle in sync, renews, rolls the CA over with both CAs
//! trusted, repairs a caBundle someone else overwrote, and reports it all on the Mesh.
//! A test binary of its own: it owns the cluster's single Mesh.

use std::{process::Command, time::Duration};

use braid_crds::Mesh;
use braid_e2e::{Component, eventually, own_mesh, setup};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// (tls.crt of the webhook's Secret, the caBundle the API server has), once both exist.
async fn published(
    secrets: &Api<Secret>,
    configs: &Api<MutatingWebhookConfiguration>,
    name: &str,
) -> Option<(String, String)> {
    let secret = secrets.get_opt("braid-webhook-tls").await.ok()??;
    let cert = String::from_utf8(secret.data?.get("tls.crt")?.0.clone()).ok()?;
    let config = configs.get_opt(name).await.ok()??;
    let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
    Some((cert, String::from_utf8(bundle.0).ok()?))
}

/// Whether `cert` verifies against `bundle`, as the API server would check it (openssl verify).
fn verifies(cert: &str, bundle: &str) -> bool {
    let dir = std::env::temp_dir().join(format!("braid-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    let status = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run openssl (apt-get install openssl): {err}"));
    status.status.success()
}

#[tokio::test]
async fn the_operator_issues_renews_and_rolls_over_the_webhook_certificates() {
    let (cluster, client, ns) = setup("e2e-webhook-certs").await;
    let config_name = format!("{}-inject", ns.name);

    // Short lifetimes so the test sees a renewal and a CA rollover: the serving certificate is
    // renewed every 10 s, the CA after 20 s, and a new CA is trusted 3 s before it signs.
    let _mesh = own_mesh(
        cluster,
        &client,
        json!({"injection": {"certificateLifetime": "20s", "caLifetime": "40s", "renewAtPercent": 50}}),
    )
    .await;
    let (_config, operator) =
        Component::webhook_owner(cluster, &ns.name, &config_name, "https://127.0.0.1:9443/inject");
    let meshes: Api<Mesh> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());

    let (first_cert, first_bundle) =
        eventually(Duration::from_secs(30), "the webhook's Secret and configuration", || {
            published(&secrets, &configs, &config_name)
        })
        .await;
    assert!(verifies(&first_cert, &first_bundle), "the first certificate does not verify against the bundle");
    let config = configs.get(&config_name).await.unwrap();
    let hooks = config.webhooks.unwrap();
    assert_eq!(hooks[0].failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hooks[1].failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hooks[0].client_config.url.as_deref(), Some("https://127.0.0.1:9443/inject"));
    // The Secret the webhook mounts never carries the CA's key.
    let tls = secrets.get("braid-webhook-tls").await.unwrap().data.unwrap();
    assert_eq!(tls.keys().map(String::as_str).collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);

    let ready = eventually(Duration::from_secs(30), "Mesh WebhookCertificateReady=True", || async {
        let status = meshes.get("default").await.ok()?.status?;
        let condition = status.conditions.iter().find(|c| c.type_ == "WebhookCertificateReady")?.clone();
        (condition.status == "True" && status.webhook_certificate.is_some()).then_some(condition)
    })
    .await;
    assert_eq!(ready.reason, "CertificateIssued");
    assert!(ready.message.starts_with("serving certificate valid until"), "{}", ready.message);

    // For 30 s, through serving renewals and a CA rollover, the webhook's certificate always
    // verifies against the bundle the API server has: no admission could fail.
    let mut certs_seen = vec![first_cert];
    let mut max_bundle = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let (cert, bundle) = published(&secrets, &configs, &config_name).await.unwrap();
        assert!(
            verifies(&cert, &bundle),
            "the webhook's certificate does not verify against the caBundle mid-rotation"
        );
        max_bundle = max_bundle.max(bundle.matches("BEGIN CERTIFICATE").count());
        if !certs_seen.contains(&cert) {
            certs_seen.push(cert);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(certs_seen.len() >= 3, "expected renewals every 10 s, saw {} certificates", certs_seen.len());
    assert_eq!(max_bundle, 2, "the CA rollover should trust the old and the new CA together");
    let final_bundle = published(&secrets, &configs, &config_name).await.unwrap().1;
    assert!(!verifies(&certs_seen[0], &final_bundle) || final_bundle != first_bundle, "the CA rolled over");

    // Someone (a Helm upgrade, say) overwrites the caBundle: the operator puts it back.
    let broken =
        json!({"webhooks": [{"name": "namespace.inject.braid.dev", "clientConfig": {"caBundle": ""}}]});
    let patched = configs
        .patch(&config_name, &PatchParams::default(), &Patch::Strategic(&broken))
        .await
        .unwrap_or_else(|err| panic!("the API server refused the patch that empties the caBundle: {err}"));
    // The patch took: the entry that `published` reads (the first) has no caBundle now, so the
    // repair below is the operator's work and not a patch that never applied.
    let hooks = patched.webhooks.unwrap_or_default();
    let first = hooks.first().map(|hook| {
        let bundle = hook.client_config.ca_bundle.as_ref().map_or(0, |bundle| bundle.0.len());
        (hook.name.as_str(), bundle)
    });
    assert_eq!(first, Some(("namespace.inject.braid.dev", 0)), "the caBundle after the patch");
    eventually(Duration::from_secs(15), "the caBundle to be repaired", || async {
        let (cert, bundle) = published(&secrets, &configs, &config_name).await?;
        verifies(&cert, &bundle).then_some(())
    })
    .await;

    let log = operator.log_text();
    assert!(log.contains("webhook certificate change"), "{log}");
}
