//! MeshRoutes on the real local Kubernetes: the API server validates them with the generated
//! schema, the operator binary reports their status, and `kubectl get meshroutes` shows it.

use std::time::Duration;

use braid_crds::MeshRoute;
use braid_e2e::{Component, eventually, metric, repo_root, setup};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// (status, reason, message) of condition `type_` once the operator has seen generation `gen`.
async fn condition(
    routes: &Api<MeshRoute>,
    name: &str,
    type_: &str,
    want_status: &str,
) -> (String, String, String) {
    eventually(WAIT, &format!("{name} to have {type_}={want_status}"), || async {
        let route = routes.get(name).await.ok()?;
        let generation = route.metadata.generation;
        let status = route.status?;
        let c = status.conditions.into_iter().find(|c| c.type_ == type_)?;
        (c.status == want_status && c.observed_generation == generation)
            .then_some((c.status, c.reason, c.message))
    })
    .await
}

async fn create_service(client: &Client, ns: &str, name: &str) {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &service).await.unwrap();
}

fn route(name: &str, spec: serde_json::Value) -> MeshRoute {
    serde_json::from_value(json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

#[tokio::test]
async fn the_examples_are_accepted_resolved_and_shown_by_kubectl() {
    let (cluster, client, ns) = setup("e2e-examples").await;
    let operator = Component::start(cluster, &ns.name);
    for example in ["canary-split.yaml", "retries-timeout.yaml"] {
        let path = repo_root().join("examples").join(example);
        cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path.to_string_lossy()]);
    }
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), &ns.name);
    for name in ["reviews-split", "ratings-retries"] {
        condition(&routes, name, "Accepted", "True").await;
        let (_, reason, _) = condition(&routes, name, "ResolvedRefs", "True").await;
        assert_eq!(reason, "ResolvedRefs");
        let (_, reason, _) = condition(&routes, name, "Programmed", "Unknown").await;
        assert_eq!(reason, "DiscoveryPending");
    }

    // The default columns show a rollout at a glance (no canary here: <none>); the conditions
    // are in -o wide.
    let narrow = cluster.kubectl_ok(&["get", "meshroutes", "-n", &ns.name]);
    let header: Vec<&str> = narrow.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SERVICE", "CANARY", "WEIGHT", "PHASE", "SUCCESS", "P99", "PROXIES", "AGE"],
        "{narrow}"
    );
    let table = cluster.kubectl_ok(&["get", "meshroutes", "-n", &ns.name, "-o", "wide"]);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SERVICE",
            "CANARY",
            "WEIGHT",
            "PHASE",
            "SUCCESS",
            "P99",
            "PROXIES",
            "ACCEPTED",
            "RESOLVED",
            "PROGRAMMED",
            "HEALTHY",
            "REASON",
            "MESSAGE",
            "AGE"
        ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        let line =
            lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing:\n{table}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    // ACCEPTED RESOLVED PROGRAMMED in a row. The canary and discovery columns before them are
    // empty here, and kubectl prints an empty cell as blanks (or <none>), so count no positions.
    let conditions = |row: &[String]| row.windows(3).any(|w| w == ["True", "True", "Unknown"]);
    assert!(conditions(&row("reviews-split")), "{table}");
    assert_eq!(row("reviews-split")[1], "reviews", "{table}");
    assert!(conditions(&row("ratings-retries")), "{table}");
    // The short name works too.
    assert!(
        cluster
            .kubectl_ok(&["get", "mr", "-n", &ns.name, "-o", "name"])
            .contains("meshroute.braid.dev/reviews-split")
    );
    println!("kubectl get meshroutes -n {}:\n{table}", ns.name);

    let metrics = operator.metrics();
    assert!(
        metric(&metrics, "braid_operator_reconciles_total{controller=\"meshroute\"}") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn kubectl_explain_documents_the_api() {
    let (cluster, _client, _ns) = setup("e2e-explain").await;
    let retries = cluster.kubectl_ok(&["explain", "meshroute.spec.rules.retries"]);
    assert!(retries.contains("Retry failed requests"), "{retries}");
    for field in ["attempts", "perTryTimeout", "retryOn", "budget"] {
        assert!(retries.contains(field), "explain lacks {field}:\n{retries}");
    }
    let attempts = cluster.kubectl_ok(&["explain", "meshroute.spec.rules.retries.attempts"]);
    assert!(attempts.contains("Total number of tries, the first one included"), "{attempts}");
    let policy = cluster.kubectl_ok(&["explain", "meshpolicy.spec.mtls"]);
    assert!(policy.contains("STRICT accepts only mTLS"), "{policy}");
    let mesh = cluster.kubectl_ok(&["explain", "mesh.spec.trustDomain"]);
    assert!(mesh.contains("SPIFFE trust domain"), "{mesh}");
}

#[tokio::test]
async fn a_missing_backend_is_reported_and_resolved_when_its_service_appears() {
    let (cluster, client, ns) = setup("e2e-refs").await;
    let _operator = Component::start(cluster, &ns.name);
    create_service(&client, &ns.name, "shop").await;
    create_service(&client, &ns.name, "shop-v1").await;
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({"service": "shop", "rules": [{"backends": [
        {"service": "shop-v1", "weight": 90}, {"service": "shop-v2", "weight": 10}]}]});
    routes.create(&PostParams::default(), &route("shop", spec)).await.unwrap();

    let (_, reason, message) = condition(&routes, "shop", "ResolvedRefs", "False").await;
    assert_eq!(reason, "BackendNotFound");
    assert_eq!(message, format!("not found: Service {}/shop-v2 (spec.rules[0].backends[1])", ns.name));
    // A missing Service does not make the route invalid.
    condition(&routes, "shop", "Accepted", "True").await;

    create_service(&client, &ns.name, "shop-v2").await;
    condition(&routes, "shop", "ResolvedRefs", "True").await;

    Api::<Service>::namespaced(client.clone(), &ns.name)
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let (_, reason, message) = condition(&routes, "shop", "ResolvedRefs", "False").await;
    assert_eq!(reason, "TargetNotFound");
    assert!(message.contains("(spec.service)"), "{message}");
}

#[tokio::test]
async fn what_the_schema_cannot_check_is_reported_in_status_without_a_retry_loop() {
    let (cluster, client, ns) = setup("e2e-invalid").await;
    let operator = Component::start(cluster, &ns.name);
    create_service(&client, &ns.name, "api").await;
    let routes: Api<MeshRoute> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({"service": "api", "rules": [{
        "backends": [{"service": "api", "weight": 50}, {"service": "api", "weight": 50}],
        "timeout": "1s", "retries": {"attempts": 3, "perTryTimeout": "2s"},
        "matches": [{"path": {"type": "RegularExpression", "value": "/v1/(unclosed"}}]}]});
    routes.create(&PostParams::default(), &route("api", spec)).await.unwrap();

    let (_, reason, message) = condition(&routes, "api", "Accepted", "False").await;
    assert_eq!(reason, "Invalid");
    for expected in [
        "spec.rules[0].matches[0].path.value: not a valid regular expression",
        "spec.rules[0].backends[1]: same destination as backends[0]",
        "spec.rules[0].retries.perTryTimeout: 2s is longer than the rule's total timeout 1s",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in {message:?}");
    }
    let (_, reason, _) = condition(&routes, "api", "Programmed", "False").await;
    assert_eq!(reason, "NotAccepted");

    // An invalid spec is a result, not an error: the operator does not retry it in a loop.
    let series = "braid_operator_reconciles_total{controller=\"meshroute\"}";
    let before = metric(&operator.metrics(), series);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = metric(&operator.metrics(), series);
    assert!(after - before <= 1.0, "reconciled {} times in 3 s with no change", after - before);
    // No reconcile failed, of any cause: each failure series is exposed, at 0.
    let metrics = operator.metrics();
    for error in braid_operator::Error::METRIC_LABELS {
        let series =
            format!("braid_operator_reconcile_failures_total{{controller=\"meshroute\",error=\"{error}\"}}");
        assert_eq!(metric(&metrics, &series), 0.0, "an invalid spec is no reconcile failure:\n{metrics}");
    }

    // Fixing the spec makes it Accepted again, with the new generation observed.
    let fixed = json!({"spec": {"rules": [{"backends": [{"service": "api"}], "timeout": "5s",
        "retries": {"attempts": 3, "perTryTimeout": "2s"}}]}});
    routes.patch("api", &PatchParams::default(), &Patch::Merge(&fixed)).await.unwrap();
    condition(&routes, "api", "Accepted", "True").await;
}

/// Each invalid spec the API server itself must refuse, with the words the user sees.
#[tokio::test]
async fn the_api_server_rejects_invalid_routes_with_a_clear_message() {
    let (cluster, client, ns) = setup("e2e-reject").await;
    // Untyped, so the test can send what the Rust types cannot even express.
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<MeshRoute>(&()));
    let cases = [
        (
            "weights all zero",
            json!({"service": "a", "rules": [{"backends": [{"service": "b", "weight": 0}, {"service": "c", "weight": 0}]}]}),
            "at least one backend needs a weight above 0",
        ),
        (
            "weight above 100",
            json!({"service": "a", "rules": [{"backends": [{"service": "b", "weight": 101}]}]}),
            "should be less than or equal to 100",
        ),
        ("no backend", json!({"service": "a", "rules": [{"backends": []}]}), "should have at least 1 items"),
        ("no rule", json!({"service": "a", "rules": []}), "should have at least 1 items"),
        (
            "malformed duration",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "timeout": "2 seconds"}]}),
            "spec.rules[0].timeout: Invalid value: \"2 seconds\"",
        ),
        (
            "malformed per-try duration",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "retries": {"attempts": 2, "perTryTimeout": "1.5s"}}]}),
            "spec.rules[0].retries.perTryTimeout",
        ),
        (
            "missing service",
            json!({"rules": [{"backends": [{"service": "b"}]}]}),
            "spec.service: Required value",
        ),
        (
            "service and subset in one backend",
            json!({"service": "a", "rules": [{"backends": [{"service": "b", "subset": {"version": "v2"}}]}]}),
            "a backend names either a service or a subset",
        ),
        (
            "unknown retry condition",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "retries": {"attempts": 2, "retryOn": ["sometimes"]}}]}),
            "Unsupported value: \"sometimes\"",
        ),
        (
            "relative path prefix",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "matches": [{"path": {"value": "v1"}}]}]}),
            "an Exact or PathPrefix path must start with '/'",
        ),
        (
            "service name with capitals",
            json!({"service": "Reviews", "rules": [{"backends": [{"service": "b"}]}]}),
            "spec.service: Invalid value",
        ),
        (
            "too many attempts",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "retries": {"attempts": 50}}]}),
            "should be less than or equal to 10",
        ),
        (
            "rate limit of zero",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "rateLimit": {"requestsPerSecond": 0}}]}),
            "spec.rules[0].rateLimit.requestsPerSecond: Invalid value: 0: spec.rules[0].rateLimit.requestsPerSecond in body should be greater than or equal to 1",
        ),
        (
            "rate limit without a rate",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}], "rateLimit": {"burst": 5}}]}),
            "spec.rules[0].rateLimit.requestsPerSecond: Required value",
        ),
        (
            "session affinity on a header without a name",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "loadBalancer": {"hashOn": {"type": "Header"}}}),
            "a Header or Cookie key needs a name; a SourceIP key has none",
        ),
        (
            "more than all endpoints ejected",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "loadBalancer": {"outlierDetection": {"maxEjectedPercent": 150}}}),
            "should be less than or equal to 100",
        ),
        (
            "no request at all in flight",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "connectionPool": {"maxRequests": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            "a queue with no connection limit to wait for",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "connectionPool": {"maxPendingRequests": 5}}),
            "maxPendingRequests is how many requests wait for a connection under maxConnections",
        ),
        (
            "unknown algorithm",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "loadBalancer": {"algorithm": "Random"}}),
            "Unsupported value: \"Random\"",
        ),
        (
            "canary onto itself",
            json!({"service": "a", "rules": [{"backends": [{"service": "b"}]}], "canary": {"stable": "b", "canary": "b", "steps": [10]}}),
            "stable and canary must be different Services",
        ),
    ];
    for (i, (what, spec, expected)) in cases.into_iter().enumerate() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": format!("bad-{i}")}, "spec": spec
        }))
        .unwrap();
        let result = routes.create(&PostParams::default(), &object).await;
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(
                    status.message.contains(expected),
                    "{what}: expected {expected:?} in {:?}",
                    status.message
                );
            }
            other => panic!("{what}: the API server accepted it: {other:?}"),
        }
    }
    // kubectl shows the same message to a user applying a file.
    let output = cluster.kubectl_with_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some("apiVersion: braid.dev/v1alpha1\nkind: MeshRoute\nmetadata: {name: zero}\nspec:\n  service: a\n  rules:\n  - backends: [{service: b, weight: 0}]\n"),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least one backend needs a weight above 0"), "{stderr}");
}

#[tokio::test]
async fn only_one_mesh_named_default_is_allowed() {
    let (cluster, _client, _ns) = setup("e2e-mesh").await;
    let output = cluster.kubectl_with_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        Some("apiVersion: braid.dev/v1alpha1\nkind: Mesh\nmetadata: {name: other}\nspec: {}\n"),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("there is one Mesh and it is named default"));
    let applied = cluster.kubectl_with_stdin(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        Some("apiVersion: braid.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {}\n"),
    );
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let mesh: serde_json::Value = serde_json::from_slice(&applied.stdout).unwrap();
    // The API server fills the documented defaults in.
    assert_eq!(mesh["spec"]["trustDomain"], "cluster.local");
    assert_eq!(mesh["spec"]["identity"]["workloadLifetime"], "24h");
    assert_eq!(mesh["spec"]["injection"]["failurePolicy"], "Fail");
}

#[tokio::test]
async fn the_operator_stops_cleanly_on_sigterm() {
    let (cluster, _client, ns) = setup("e2e-sigterm").await;
    let operator = Component::start(cluster, &ns.name);
    let (status, log) = operator.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status after SIGTERM: {status}\n{log}");
    assert!(log.contains("SIGTERM received, shutting down"), "{log}");
    assert!(log.contains("braid-operator stopped"), "{log}");
}

#[tokio::test]
async fn the_trust_domain_of_a_mesh_cannot_change() {
    let (cluster, client, _ns) = setup("e2e-mesh-domain").await;
    let meshes: Api<DynamicObject> = Api::all_with(client, &mesh_resource());
    // Another suite's Helm release may own the Mesh; this test borrows it, or makes one.
    let created = meshes.get_opt("default").await.expect("read the Mesh").is_none();
    if created {
        let applied = cluster.kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some("apiVersion: braid.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: cluster.local}\n"),
        );
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    }
    let patch = |spec: &str| {
        cluster.kubectl(&["patch", "mesh", "default", "--type", "merge", "--dry-run=server", "-p", spec])
    };
    let changed = patch(r#"{"spec":{"trustDomain":"other.example"}}"#);
    let other = patch(r#"{"spec":{"identity":{"workloadLifetime":"12h"}}}"#);
    if created {
        meshes.delete("default", &DeleteParams::default()).await.expect("remove the Mesh this test made");
    }
    assert!(!changed.status.success(), "the API server accepted a new trust domain");
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(stderr.contains("trustDomain cannot change while the Mesh exists"), "{stderr}");
    assert!(
        stderr.contains("docs/identity.md"),
        "the refusal says where the migration is described: {stderr}"
    );
    assert!(other.status.success(), "other fields stay editable: {}", String::from_utf8_lossy(&other.stderr));
}

fn mesh_resource() -> ApiResource {
    ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("braid.dev", "v1alpha1", "Mesh"))
}
