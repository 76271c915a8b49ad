//! The operator outlives an API server restart: its watches reconnect and it keeps reporting.
//! A test binary of its own, because the restart would disturb tests running beside it.

use std::time::Duration;

use braid_crds::MeshRoute;
use braid_e2e::{Component, eventually, setup};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn the_operator_resumes_after_the_api_server_restarts() {
    let (cluster, client, ns) = setup("e2e-restart").await;
    let operator = Component::start(cluster, &ns.name);

    let service: Service =
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}))
            .unwrap();
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), &ns.name);
    let route: MeshRoute = serde_json::from_value(json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": "web"},
        "spec": {"service": "web", "rules": [{"backends": [{"service": "web"}]}]}
    }))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.unwrap();
    resolved_refs(&routes, "True").await;

    cluster.restart_apiserver();

    // A change made after the restart must reach the status: the watch reconnected.
    let client = cluster.client().await;
    let routes: Api<MeshRoute> = Api::namespaced(client, &ns.name);
    let change = json!({"spec": {"rules": [{"backends": [{"service": "web", "weight": 1}, {"service": "web-next", "weight": 1}]}]}});
    routes.patch("web", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap();
    let message = resolved_refs(&routes, "False").await;
    assert!(message.contains("web-next"), "{message}");

    let log = operator.log_text();
    assert!(!log.contains("panicked"), "operator log:\n{log}");
}

/// Waits for ResolvedRefs=`want` at the route's current generation and returns its message.
async fn resolved_refs(routes: &Api<MeshRoute>, want: &str) -> String {
    eventually(Duration::from_secs(60), &format!("ResolvedRefs={want}"), || async {
        let route = routes.get("web").await.ok()?;
        let generation = route.metadata.generation;
        let condition = route.status?.conditions.into_iter().find(|c| c.type_ == "ResolvedRefs")?;
        (condition.status == want && condition.observed_generation == generation).then_some(condition.message)
    })
    .await
}
