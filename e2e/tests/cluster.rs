//! The local Kubernetes is the real thing: the pinned release, tokens for audience "braid" that
//! TokenReview accepts (the identity endpoint will rely on it), admission webhooks called by the
//! API server, and kubectl and Helm working against it.

use braid_e2e::{Cluster, TestNamespace};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenReview},
    core::v1::{ConfigMap, ServiceAccount},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn the_api_server_runs_the_pinned_release() {
    let cluster = Cluster::get();
    let version = cluster.client().await.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.34.3");
    let kubectl = cluster.kubectl_ok(&["version"]);
    assert!(kubectl.contains("Server Version: v1.34.3"), "{kubectl}");
}

#[tokio::test]
async fn tokens_for_audience_braid_pass_token_review() {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, &client, "e2e-token").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
    accounts.create(&PostParams::default(), &account).await.unwrap();

    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["braid"], "expirationSeconds": 600}})).unwrap();
    let token = accounts.create_token_request("web", &PostParams::default(), &request).await.unwrap();
    let token = token.status.unwrap().token;

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |audience: &str| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": [audience]}})).unwrap()
    };
    let status = reviews.create(&PostParams::default(), &review("braid")).await.unwrap().status.unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some(format!("system:serviceaccount:{}:web", ns.name).as_str())
    );

    // The same token is refused for another audience, and once its account is gone.
    let other =
        reviews.create(&PostParams::default(), &review("someone-else")).await.unwrap().status.unwrap();
    assert_ne!(other.authenticated, Some(true));
    accounts.delete("web", &DeleteParams::default()).await.unwrap();
    // kube-apiserver caches successful token authentications for 10 s, so TokenReview refuses a
    // deleted account's token only then: the identity endpoint must look the account up itself
    // to refuse it at once.
    let deleted_at = std::time::Instant::now();
    let deleted = braid_e2e::eventually(
        std::time::Duration::from_secs(30),
        "the deleted account's token to be refused",
        || {
            let reviews = reviews.clone();
            let review = review("braid");
            async move {
                let status = reviews.create(&PostParams::default(), &review).await.ok()?.status?;
                (status.authenticated != Some(true)).then_some(status)
            }
        },
    )
    .await;
    println!("a deleted service account's token was refused after {:?}", deleted_at.elapsed());
    assert!(deleted.error.unwrap_or_default().contains("web"), "the refusal names the account");
}

#[tokio::test]
async fn the_api_server_calls_mutating_webhooks() {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, &client, "e2e-webhook").await;
    // A webhook scoped to this namespace that points at a closed loopback port: the API server
    // must try to call it, and with failurePolicy Fail the create is refused.
    let closed = braid_e2e::free_local_addr();
    let name = format!("{}-probe", ns.name);
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "probe.braid.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail", "timeoutSeconds": 2,
            "clientConfig": {"url": format!("https://{closed}/inject")},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]
        }]
    });
    let applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&config.to_string()));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let mut refused = None;
    // The API server picks up a new webhook configuration within a moment.
    for _ in 0..50 {
        match maps.create(&PostParams::default(), &map).await {
            Err(kube::Error::Api(status)) => {
                refused = Some(status.message);
                break;
            }
            Ok(_) => {
                maps.delete("x", &DeleteParams::default()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    cluster.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &name]);
    let refused = refused.expect("the API server never called the webhook");
    assert!(refused.contains("failed calling webhook \"probe.braid.dev\""), "{refused}");
}

#[test]
fn helm_works_against_the_cluster() {
    let cluster = Cluster::get();
    let helm = |args: &[&str]| {
        let output = std::process::Command::new(cluster.bin_dir.join("helm"))
            .args(args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .unwrap();
        assert!(output.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(helm(&["version", "--short"]).starts_with("v3.22.0"));
    assert!(helm(&["list", "--all-namespaces"]).starts_with("NAME"));
}
