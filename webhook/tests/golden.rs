//! Golden-file tests: an AdmissionReview in (tests/golden/CASE.review.json), the AdmissionReview
//! the webhook answers (CASE.response.json) and, when it patches, the decoded JSON patch
//! (CASE.patch.json) out. The review goes through the real axum handler.
//!
//! `BLESS=1 cargo test -p braid-webhook --test golden` rewrites the expected files; without it a
//! difference fails the test. Beyond the files, each case asserts what a user would check on the
//! pod the API server ends up storing: the patch is applied with json_patch to the request's
//! object, read back as a Pod, and sent through the webhook again (which must not patch twice).

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// both a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, sync::Arc};

use axum::body::Body;
use base64::Engine as _;
use braid_webhook::server::{AppState, admission_router};
use common::{PROXY_VERSION, golden_dir};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use tower::ServiceExt as _;

fn state() -> Arc<AppState> {
    common::state(true)
}

async fn post(state: Arc<AppState>, body: Vec<u8>) -> (u16, Value) {
    let request = axum::http::Request::post("/inject")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = admission_router(state).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        panic!("status {status}, body is not JSON ({err}): {}", String::from_utf8_lossy(&bytes))
    });
    (status, value)
}

/// Compares `actual` with the golden file, or writes it under BLESS=1.
fn check_golden(file: &str, actual: &Value) {
    let path = golden_dir().join(file);
    let rendered = format!("{}\n", serde_json::to_string_pretty(actual).unwrap());
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}; run with BLESS=1 to create it", path.display()));
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert!(
        expected == *actual,
        "{file} differs from the webhook's answer (BLESS=1 rewrites it after review).\nexpected:\n{}\nactual:\n{rendered}",
        serde_json::to_string_pretty(&expected).unwrap()
    );
}

/// What one case produced, for its own assertions.
struct Outcome {
    response: Value,
    /// The request's object with the patch applied, as the API server would store it.
    patched: Option<Pod>,
    patch: Option<Value>,
}

/// Runs one case through the handler, checks the golden files and the second pass.
async fn run(case: &str) -> Outcome {
    let input = std::fs::read(golden_dir().join(format!("{case}.review.json"))).unwrap();
    let review: Value = serde_json::from_slice(&input).unwrap();
    let (status, answer) = post(state(), input).await;
    assert_eq!(status, 200, "{answer}");
    check_golden(&format!("{case}.response.json"), &answer);

    let response = answer["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"], "the answer must carry the request's uid");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");

    let Some(encoded) = response["patch"].as_str() else {
        assert!(response.get("patchType").is_none(), "patchType without a patch: {response}");
        let unpatched = golden_dir().join(format!("{case}.patch.json"));
        assert!(
            !unpatched.exists() || std::env::var_os("BLESS").is_some(),
            "{} is stale",
            unpatched.display()
        );
        return Outcome { response, patched: None, patch: None };
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let patch_bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("the patch is base64");
    let patch_value: Value = serde_json::from_slice(&patch_bytes).expect("the patch is JSON");
    check_golden(&format!("{case}.patch.json"), &patch_value);

    // What the API server does with it.
    let patch: json_patch::Patch = serde_json::from_value(patch_value.clone()).expect("an RFC 6902 patch");
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch.0).expect("the patch applies to the pod the API server sent");
    let pod: Pod = serde_json::from_value(object.clone()).expect("the patched object is a Pod");

    // A second pass (reinvocation, or the same pod sent again) must not patch again.
    let mut again = review.clone();
    again["request"]["object"] = object;
    let (status, second) = post(state(), serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(second["response"]["allowed"], true);
    assert!(second["response"].get("patch").is_none(), "the second pass patched again: {second}");

    Outcome { response, patched: Some(pod), patch: Some(patch_value) }
}

fn init_names(pod: &Pod) -> Vec<&str> {
    pod.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| c.name.as_str()).collect()
}

fn init(pod: &Pod, name: &str) -> Container {
    pod.spec.as_ref().unwrap().init_containers.iter().flatten().find(|c| c.name == name).unwrap().clone()
}

fn env(container: &Container, name: &str) -> Option<String> {
    container.env.iter().flatten().find(|var| var.name == name).and_then(|var| var.value.clone())
}

fn quantity(container: &Container, kind: &str, resource: &str) -> Option<String> {
    let resources = container.resources.as_ref()?;
    let map = if kind == "requests" { resources.requests.as_ref() } else { resources.limits.as_ref() }?;
    map.get(resource).map(|q| q.0.clone())
}

fn volume_names(pod: &Pod) -> Vec<&str> {
    pod.spec.as_ref().unwrap().volumes.iter().flatten().map(|v| v.name.as_str()).collect()
}

fn op_paths(patch: &Value) -> Vec<&str> {
    patch.as_array().unwrap().iter().map(|op| op["path"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn plain_pod_gets_the_init_step_and_the_native_sidecar() {
    let outcome = run("plain-pod").await;
    assert_eq!(outcome.response["allowed"], true);
    let pod = outcome.patched.unwrap();
    // No initContainers, volumes or annotations before: each is added whole.
    assert_eq!(
        op_paths(outcome.patch.as_ref().unwrap()),
        ["/spec/initContainers", "/spec/volumes", "/metadata/annotations"]
    );
    assert_eq!(init_names(&pod), ["braid-init", "braid-proxy"]);
    assert_eq!(pod.spec.as_ref().unwrap().containers.len(), 1, "the app containers are untouched");
    assert_eq!(pod.spec.as_ref().unwrap().containers[0].name, "web");
    assert_eq!(volume_names(&pod), ["braid-identity-token", "braid-trust-anchors", "braid-xtables-lock"]);
    assert_eq!(pod.metadata.annotations.as_ref().unwrap()["braid.dev/injected"], PROXY_VERSION);

    let proxy = init(&pod, "braid-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(proxy.image.as_deref(), Some("braid.dev/braid-proxy:dev"), "the Mesh CRD's default image");
    let security = proxy.security_context.as_ref().unwrap();
    assert_eq!((security.run_as_user, security.run_as_non_root), (Some(2102), Some(true)));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let startup = proxy.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(
        (startup.path.as_deref(), &startup.port),
        (Some("/ready"), &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(4191))
    );
    assert_eq!(
        proxy.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/live")
    );
    let ports: Vec<_> =
        proxy.ports.iter().flatten().map(|p| (p.name.as_deref().unwrap(), p.container_port)).collect();
    assert_eq!(ports, [("braid-inbound", 4143), ("braid-admin", 4191)]);
    let field_refs: BTreeMap<_, _> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|var| {
            Some((var.name.as_str(), var.value_from.as_ref()?.field_ref.as_ref()?.field_path.as_str()))
        })
        .collect();
    assert_eq!(
        field_refs,
        BTreeMap::from([
            ("BRAID_POD_IP", "status.podIP"),
            ("BRAID_POD_NAME", "metadata.name"),
            ("BRAID_POD_NAMESPACE", "metadata.namespace"),
            ("BRAID_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ])
    );
    assert_eq!(env(&proxy, "BRAID_TRUST_DOMAIN").as_deref(), Some("cluster.local"));
    assert_eq!(env(&proxy, "BRAID_LOG").as_deref(), Some("info"));
    assert_eq!(env(&proxy, "BRAID_INBOUND_SKIP_PORTS").as_deref(), Some("4191"));
    assert_eq!(quantity(&proxy, "requests", "cpu").as_deref(), Some("10m"));
    assert_eq!(quantity(&proxy, "limits", "memory").as_deref(), Some("128Mi"));
    let mounts: Vec<_> =
        proxy.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
    assert_eq!(
        mounts,
        [
            ("braid-identity-token", "/var/run/braid/identity"),
            ("braid-trust-anchors", "/var/run/braid/trust")
        ]
    );

    let token = &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
    let projection =
        token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0].service_account_token.clone().unwrap();
    assert_eq!(
        (projection.audience.as_deref(), projection.expiration_seconds, projection.path.as_str()),
        (Some("braid"), Some(3600), "token")
    );

    let init_step = init(&pod, "braid-init");
    assert_eq!(init_step.command.as_deref(), Some(&["braid-proxy".to_owned(), "init".to_owned()][..]));
    assert_eq!(
        init_step.args.as_deref().unwrap(),
        ["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", "--skip-inbound-ports=4191"]
    );
    let security = init_step.security_context.as_ref().unwrap();
    assert_eq!((security.run_as_user, security.run_as_non_root), (Some(0), Some(false)));
    assert_eq!(
        security.capabilities.as_ref().unwrap().add.as_deref(),
        Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
    );
}

#[tokio::test]
async fn existing_init_containers_volumes_and_annotations_are_extended() {
    let outcome = run("existing-init-containers").await;
    let pod = outcome.patched.unwrap();
    let paths = op_paths(outcome.patch.as_ref().unwrap());
    assert_eq!(
        paths,
        [
            "/spec/initContainers/0",
            "/spec/initContainers/1",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/metadata/labels/braid.dev~1proxy-deployment",
            "/metadata/annotations/braid.dev~1injected",
            "/metadata/annotations/braid.dev~1default-inbound-policy",
            "/metadata/annotations/prometheus.io~1scrape",
            "/metadata/annotations/prometheus.io~1port",
            "/metadata/annotations/prometheus.io~1path",
        ]
    );
    // The Deployment that owns the pod (through its ReplicaSet) names it for metrics queries,
    // and a standard scrape job finds the proxy's admin port.
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["braid.dev/proxy-deployment"], "web");
    assert_eq!(pod.metadata.annotations.as_ref().unwrap()["prometheus.io/port"], "4191");
    // The redirect and the proxy come before the pod's own init containers, which therefore run
    // inside the mesh.
    assert_eq!(init_names(&pod), ["braid-init", "braid-proxy", "migrate"]);
    assert_eq!(
        volume_names(&pod),
        [
            "kube-api-access-x7k2p",
            "data",
            "braid-identity-token",
            "braid-trust-anchors",
            "braid-xtables-lock"
        ]
    );
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "payments", "existing annotations are kept");
    assert_eq!(annotations["braid.dev/injected"], PROXY_VERSION);
}

#[tokio::test]
async fn port_exclusions_reach_the_init_step_and_the_proxy() {
    let outcome = run("port-exclusions").await;
    let pod = outcome
        .patched
        .expect("a pod annotated braid.dev/inject: enabled is injected in an unlabelled namespace");
    let args = init(&pod, "braid-init").args.unwrap();
    assert!(args.contains(&"--skip-inbound-ports=4191,8080,9000-9100".to_owned()), "{args:?}");
    assert!(args.contains(&"--skip-outbound-ports=5432,6379".to_owned()), "{args:?}");
    let proxy = init(&pod, "braid-proxy");
    assert_eq!(env(&proxy, "BRAID_INBOUND_SKIP_PORTS").as_deref(), Some("4191,8080,9000-9100"));
    assert_eq!(env(&proxy, "BRAID_OUTBOUND_SKIP_PORTS").as_deref(), Some("5432,6379"));
}

#[tokio::test]
async fn resource_log_level_and_image_annotations_override_the_mesh() {
    let outcome = run("resource-overrides").await;
    let pod = outcome.patched.unwrap();
    let proxy = init(&pod, "braid-proxy");
    assert_eq!(quantity(&proxy, "requests", "cpu").as_deref(), Some("50m"));
    assert_eq!(quantity(&proxy, "requests", "memory").as_deref(), Some("64Mi"));
    assert_eq!(quantity(&proxy, "limits", "cpu").as_deref(), Some("1"));
    assert_eq!(quantity(&proxy, "limits", "memory").as_deref(), Some("256Mi"));
    assert_eq!(env(&proxy, "BRAID_LOG").as_deref(), Some("debug,braid=trace"));
    assert_eq!(proxy.image.as_deref(), Some("registry.local/braid-proxy:v2"));
    // braid-init runs as root with NET_ADMIN: its image is the Mesh's whatever the pod says.
    assert_eq!(init(&pod, "braid-init").image.as_deref(), Some("braid.dev/braid-proxy:dev"));
}

async fn assert_left_alone(case: &str) {
    let outcome = run(case).await;
    assert_eq!(outcome.response["allowed"], true, "{case}: {}", outcome.response);
    assert!(outcome.patch.is_none(), "{case} must not be patched");
}

#[tokio::test]
async fn already_injected_opted_out_host_network_and_unlabelled_pods_are_left_alone() {
    for case in ["already-injected", "opt-out", "host-network", "not-enabled"] {
        assert_left_alone(case).await;
    }
}

#[tokio::test]
async fn another_kind_is_allowed_unchanged() {
    assert_left_alone("wrong-kind").await;
}

async fn assert_denied(case: &str, needles: &[&str]) {
    let outcome = run(case).await;
    assert_eq!(outcome.response["allowed"], false, "{case}: {}", outcome.response);
    assert_eq!(outcome.response["status"]["code"], 400);
    let message = outcome.response["status"]["message"].as_str().unwrap();
    for needle in needles {
        assert!(message.contains(needle), "{case}: {message:?} should mention {needle:?}");
    }
}

#[tokio::test]
async fn malformed_annotations_deny_the_pod_with_the_reason() {
    assert_denied("port-exclusions-invalid", &["braid.dev/skip-inbound-ports", "\"http\" is not a port"])
        .await;
    assert_denied("resource-overrides-invalid", &["braid.dev/proxy-memory-request", "unknown unit \"MB\""])
        .await;
}

#[tokio::test]
async fn metrics_count_admissions_by_result_and_reason() {
    let state = state();
    for case in ["plain-pod", "opt-out", "port-exclusions-invalid"] {
        let input = std::fs::read(golden_dir().join(format!("{case}.review.json"))).unwrap();
        post(state.clone(), input).await;
    }
    let request = axum::http::Request::get("/metrics").body(Body::empty()).unwrap();
    let response = braid_webhook::server::admin_router(state).oneshot(request).await.unwrap();
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for line in [
        "braid_webhook_admissions_total{result=\"injected\",reason=\"\"} 1",
        "braid_webhook_admissions_total{result=\"skipped\",reason=\"opted_out\"} 1",
        "braid_webhook_admissions_total{result=\"denied\",reason=\"invalid_ports\"} 1",
        "braid_webhook_admission_duration_seconds_count{result=\"injected\"} 1",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
}

/// The same pure function through the CLI: a Deployment's pod template is injected, a ConfigMap
/// passes through byte for byte, and injecting the output again changes nothing.
#[test]
fn inject_command_meshes_a_deployment_and_leaves_other_documents_alone() {
    let input = std::fs::read_to_string(golden_dir().join("deployment.yaml")).unwrap();
    let (stdout, stderr) = run_cli(&input, true);
    assert!(stderr.contains("document 1: Deployment/web injected"), "{stderr}");
    assert!(stderr.contains("document 2: CronJob/report injected"), "{stderr}");
    let golden = golden_dir().join("deployment.injected.yaml");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&golden, &stdout).unwrap();
    } else {
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|err| panic!("{}: {err}; run with BLESS=1", golden.display()));
        assert!(expected == stdout, "deployment.injected.yaml differs (BLESS=1 rewrites it):\n{stdout}");
    }

    let documents: Vec<Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    assert_eq!(documents.len(), 3);
    let template = &documents[0]["spec"]["template"];
    let names: Vec<_> = template["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["braid-init", "braid-proxy"]);
    assert_eq!(template["metadata"]["annotations"]["braid.dev/injected"], PROXY_VERSION);
    assert_eq!(template["metadata"]["labels"]["app"], "web", "the template's labels are kept");
    assert_eq!(documents[0]["spec"]["replicas"], 2);
    let cron = &documents[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        cron["initContainers"][1]["restartPolicy"], "Always",
        "a Job's proxy must not keep it running"
    );
    // The ConfigMap, its comment included, is what was written.
    let config_map = input.split("---\n").nth(3).unwrap();
    assert!(stdout.ends_with(config_map), "the ConfigMap document changed:\n{stdout}");

    let (again, stderr) = run_cli(&stdout, true);
    assert_eq!(again, stdout, "injecting twice changed the output");
    assert!(stderr.contains("Deployment/web skipped: the pod has the braid proxy already"), "{stderr}");
}

#[test]
fn inject_command_names_the_malformed_document() {
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: [unclosed\n";
    let (_, stderr) = run_cli(input, false);
    assert!(stderr.contains("document 2 (line 5): malformed YAML"), "{stderr}");
    let invalid = "kind: Pod\nmetadata:\n  name: p\n  annotations: {braid.dev/skip-outbound-ports: \"99999\"}\nspec:\n  containers: [{name: a, image: a}]\n";
    let (_, stderr) = run_cli(invalid, false);
    assert!(
        stderr.contains("document 1 (line 1), Pod/p: annotation braid.dev/skip-outbound-ports"),
        "{stderr}"
    );
}

fn run_cli(input: &str, expect_success: bool) -> (String, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_braid-webhook"))
        .args(["inject", "--proxy-version", PROXY_VERSION])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.success(), expect_success, "exit {:?}: {stderr}", output.status);
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

#[test]
fn golden_inputs_are_the_cases_the_issue_lists() {
    // A renamed or deleted input would silently drop a case; list them.
    let mut inputs: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".review.json").map(str::to_owned))
        .collect();
    inputs.sort();
    assert_eq!(
        inputs,
        [
            "already-injected",
            "existing-init-containers",
            "host-network",
            "not-enabled",
            "opt-out",
            "plain-pod",
            "port-exclusions",
            "port-exclusions-invalid",
            "resource-overrides",
            "resource-overrides-invalid",
            "wrong-kind",
        ]
    );
}
