//! The Helm chart (helm/braid) against the real API server: lint and the values schema, a
//! server-side dry run of everything it renders, then install, the operator and the webhook
//! doing their work under the chart's own ServiceAccounts, upgrade, and uninstall; and the
//! operator's leader election with two replicas that fail over.
//!
//! The local cluster has no node yet, so the chart's Deployments never start here. The tests
//! play their part: they run the same binaries (target/debug) with the flags of the Deployments
//! Helm installed (parsed from the release's manifest, so the chart and this test cannot drift)
//! and a token of the Deployment's ServiceAccount, so a missing RBAC rule fails the test.
//!
//! The chart installs the cluster's one Mesh (named default), so the tests that install it take
//! turns, and this binary replaces any Mesh another test left.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use braid_e2e::{
    Cluster, Component, TestNamespace, eventually, free_local_addr, metric, metric_value, repo_root, setup,
};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Pod, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

/// Held by every test that installs the chart: it owns the cluster's single Mesh while it runs.
static CHART_INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CA_SECRET: &str = "braid-webhook-ca";
const TLS_SECRET: &str = "braid-webhook-tls";
/// The mesh CA's Secrets and its trust bundle (docs/identity.md).
const ANCHOR_SECRET: &str = "braid-trust-anchor";
const ISSUER_SECRET: &str = "braid-issuer";
const TRUST_CONFIG_MAP: &str = "braid-trust-anchors";
const BUNDLE_KEY: &str = "ca-bundle.crt";
/// The chart's default; the failover test measures against it.
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn chart() -> String {
    repo_root().join("helm/braid").display().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn helm_ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.helm(args);
    assert!(output.status.success(), "helm {args:?} failed: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kubernetes YAML as JSON objects: kubectl converts it (this crate has no YAML parser), which
/// also checks that each document is a well-formed object of a kind the API server serves.
fn objects(cluster: &Cluster, yaml: &str) -> Vec<Value> {
    let output =
        cluster.kubectl_with_stdin(&["create", "--dry-run=client", "-o", "json", "-f", "-"], Some(yaml));
    assert!(output.status.success(), "kubectl cannot read the manifests: {}\n{yaml}", stderr(&output));
    // One JSON document per object, one after the other.
    let documents = serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Value>();
    let documents: Vec<Value> = documents.collect::<Result<_, _>>().unwrap();
    documents
        .into_iter()
        .flat_map(|value| match value["kind"].as_str() {
            Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![value],
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(deployment: &Value) -> Vec<String> {
    let args = container(deployment)["args"].as_array().cloned().unwrap_or_default();
    args.iter().map(|a| a.as_str().unwrap_or_default().to_owned()).collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// `args` without the flags the local run must set itself (listen addresses, log settings,
/// paths inside the pod), each of which the chart must set.
fn local_args(args: &[String], replaced: &[&str]) -> Vec<String> {
    for name in replaced {
        assert!(flag(args, name).is_some(), "the chart no longer sets {name}=...: {args:?}");
    }
    args.iter()
        .filter(|a| !replaced.iter().any(|name| flag(std::slice::from_ref(a), name).is_some()))
        .cloned()
        .collect()
}

/// A kubeconfig that authenticates with a fresh token of ServiceAccount `account`, as the
/// kubelet would mount it into the Deployment's pods (TokenRequest API).
fn service_account_kubeconfig(cluster: &Cluster, namespace: &str, account: &str) -> PathBuf {
    let token = cluster.kubectl_ok(&["create", "token", account, "-n", namespace, "--duration=1h"]);
    let view: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .unwrap();
    let server = &view["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "braid-e2e", "cluster": {
            "server": server["server"],
            "certificate-authority-data": server["certificate-authority-data"],
        }}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": account, "context": {"cluster": "braid-e2e", "user": account, "namespace": namespace}}],
        "current-context": account,
    });
    let path = std::env::temp_dir().join(format!("{namespace}-{account}.kubeconfig"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    file.write_all(config.to_string().as_bytes()).unwrap();
    path
}

/// `kubectl auth can-i ARGS` as the ServiceAccount.
fn can_i(cluster: &Cluster, namespace: &str, account: &str, args: &[&str]) -> bool {
    let user = format!("--as=system:serviceaccount:{namespace}:{account}");
    let mut command = vec!["auth", "can-i"];
    command.extend_from_slice(args);
    command.push(&user);
    let output = cluster.kubectl(&command);
    match String::from_utf8_lossy(&output.stdout).split_whitespace().next() {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!("kubectl {command:?}: {}", stderr(&output)),
    }
}

/// A release that is uninstalled when dropped (a failed test leaves nothing behind; the
/// cluster-scoped objects are deleted by name too, in case Helm cannot).
struct Release {
    cluster: Cluster,
    name: String,
    namespace: String,
}

impl Release {
    fn operator(&self) -> String {
        format!("{}-operator", self.name)
    }

    fn webhook(&self) -> String {
        format!("{}-webhook", self.name)
    }

    /// The identity endpoint's Service, which also owns the CA's Secrets.
    fn identity(&self) -> String {
        format!("{}-identity", self.name)
    }

    /// What Helm installed, as JSON objects.
    fn manifest(&self) -> Vec<Value> {
        objects(
            &self.cluster,
            &helm_ok(&self.cluster, &["get", "manifest", &self.name, "-n", &self.namespace]),
        )
    }

    /// Starts braid-operator as a replica of the installed operator Deployment would run: its
    /// flags, its ServiceAccount, plus `extra`. With the chart's `--identity`, the identity
    /// endpoint listens on a free loopback port instead of the chart's 0.0.0.0:8080 (two local
    /// replicas cannot both bind that), which is returned too.
    fn start_operator(&self, label: &str, extra: &[&str]) -> (Component, Option<SocketAddr>) {
        let manifest = self.manifest();
        let chart_args = args_of(find(&manifest, "Deployment", &self.operator()));
        let identity = chart_args.iter().any(|a| a == "--identity");
        let mut replaced = vec!["--admin-addr", "--log", "--log-format"];
        if identity {
            replaced.extend(["--identity-addr", "--discovery-addr"]);
        }
        let mut args = local_args(&chart_args, &replaced);
        let identity_addr = identity.then(free_local_addr);
        if let Some(addr) = identity_addr {
            args.extend([format!("--identity-addr={addr}"), "--identity-ip-sans=127.0.0.1".to_owned()]);
            // Discovery comes with the identity endpoint; the leader points the discovery Service
            // at the pod IP the downward API would give (a documentation address here).
            args.extend([
                format!("--discovery-addr={}", free_local_addr()),
                "--discovery-ip-sans=127.0.0.1".to_owned(),
                "--pod-ip=192.0.2.10".to_owned(),
            ]);
            if !extra.iter().any(|a| a.starts_with("--leader-election-identity")) {
                args.push(format!("--leader-election-identity={label}"));
            }
        }
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let kubeconfig = service_account_kubeconfig(&self.cluster, &self.namespace, &self.operator());
        let operator = Component::spawn_with_kubeconfig("braid-operator", &kubeconfig, label, &[], &args);
        (operator, identity_addr)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.cluster.helm(&["uninstall", &self.name, "-n", &self.namespace, "--ignore-not-found"]);
        for (kind, name) in [
            ("mutatingwebhookconfiguration", self.webhook()),
            ("clusterrole", self.operator()),
            ("clusterrole", self.webhook()),
            ("clusterrolebinding", self.operator()),
            ("clusterrolebinding", self.webhook()),
        ] {
            let _ = self.cluster.kubectl(&["delete", kind, &name, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// Node selectors that no node matches, for every install and upgrade: these tests run the
/// chart's operator as a host process under its ServiceAccount, so the chart's own pods must stay
/// Pending rather than run on the cluster's node.
const NO_NODE: &str =
    r#"operator.nodeSelector={"braid.dev/e2e":"no-node"},webhook.nodeSelector={"braid.dev/e2e":"no-node"}"#;

/// Installs the chart as release braid-SUFFIX of `ns` with `values`, after removing a Mesh that
/// another test left (the chart brings its own); returns the release and what helm printed.
async fn install(
    cluster: &Cluster,
    client: &Client,
    ns: &TestNamespace,
    values: &[&str],
) -> (Release, String) {
    let meshes: Api<braid_crds::Mesh> = Api::all(client.clone());
    if meshes.get_opt("default").await.unwrap().is_some() {
        eprintln!("deleting the Mesh another test left; the chart installs its own");
        let _ = meshes.delete("default", &DeleteParams::default()).await;
        eventually(Duration::from_secs(20), "the old Mesh to be gone", || async {
            meshes.get_opt("default").await.ok()?.is_none().then_some(())
        })
        .await;
    }
    let suffix = ns.name.rsplit('-').next().unwrap_or("x");
    let release =
        Release { cluster: cluster.clone(), name: format!("braid-{suffix}"), namespace: ns.name.clone() };
    let mut args = vec!["install", release.name.as_str(), "-n", ns.name.as_str(), "--set-json", NO_NODE];
    let chart = chart();
    args.push(&chart);
    args.extend_from_slice(values);
    let output = helm_ok(cluster, &args);
    (release, output)
}

/// The caBundle of each entry of the configuration (empty when unset).
async fn bundles(configs: &Api<MutatingWebhookConfiguration>, name: &str) -> Vec<String> {
    let Some(config) = configs.get_opt(name).await.unwrap() else { return Vec::new() };
    config
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            let bytes = w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

async fn failure_policy(configs: &Api<MutatingWebhookConfiguration>, name: &str, entry: usize) -> String {
    let config = configs.get(name).await.unwrap();
    config.webhooks.unwrap()[entry].failure_policy.clone().unwrap_or_default()
}

async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    let lease = leases.get_opt(name).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The owner references of an object, as (kind, name, uid).
fn owners(meta: &ObjectMeta) -> Vec<(String, String, String)> {
    let references = meta.owner_references.iter().flatten();
    references.map(|o| (o.kind.clone(), o.name.clone(), o.uid.clone())).collect()
}

/// ConfigMap braid-trust-anchors of `namespace` once it holds a trust bundle.
async fn published(client: &Client, namespace: &str) -> Option<(ConfigMap, String)> {
    let config_map =
        Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(TRUST_CONFIG_MAP).await.ok()??;
    let bundle = config_map.data.as_ref()?.get(BUNDLE_KEY).filter(|b| !b.is_empty())?.clone();
    Some((config_map, bundle))
}

/// A CSR (PEM, P-256) for `uri`, as a proxy makes one.
fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// POST /v1/certify as a proxy would: to `host:port` (the address the webhook gives proxies),
/// resolved to a local operator's endpoint at `local`, trusting only the trust bundle in
/// `bundle_file`. The status and JSON answer, or why curl failed (no TLS yet, a name mismatch).
fn certify(
    host_port: &str,
    local: SocketAddr,
    bundle_file: &str,
    token: &str,
    csr: &str,
) -> Result<(u16, Value), String> {
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let body = write_temp(
        &format!("{host}-{}-certify.json", local.port()),
        &json!({"token": token, "csr": csr}).to_string(),
    );
    let output = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--cacert", bundle_file, "-H", "content-type: application/json"])
        // The URL is the one proxies get; only the connection goes to the local replica.
        .arg("--connect-to")
        .arg(format!("{host}:{port}:{}:{}", local.ip(), local.port()))
        .args(["--data-binary", &format!("@{body}"), "-w", "\n%{http_code}"])
        .arg(format!("https://{host_port}/v1/certify"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run curl (apt-get install curl): {err}"));
    if !output.status.success() {
        return Err(stderr(&output));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), serde_json::from_str(answer).unwrap_or(Value::Null)))
}

/// Property names and checks (type, enum, pattern, bounds) of a JSON or OpenAPI schema, nested.
fn shape(schema: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["type", "enum", "pattern", "minLength", "maxLength"] {
        if let Some(value) = schema.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    // The CRD writes bounds as floats (90.0), the chart's schema as integers.
    for key in ["minimum", "maximum"] {
        if let Some(value) = schema.get(key).and_then(Value::as_f64) {
            out.insert(key.to_owned(), json!(value));
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        let nested: serde_json::Map<String, Value> =
            properties.iter().map(|(name, property)| (name.clone(), shape(property))).collect();
        out.insert("properties".to_owned(), Value::Object(nested));
    }
    Value::Object(out)
}

#[tokio::test]
async fn the_chart_lints_and_refuses_bad_values_with_the_schema_message() {
    let (cluster, _client, ns) = setup("e2e-helm-values").await;
    let chart = chart();
    let lint = helm_ok(cluster, &["lint", "--strict", &chart]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // A single operator without leader election or CA, no PDBs, no Mesh: the other branches
    // render too.
    let small = "operator.replicas=1,operator.leaderElection.enabled=false,operator.identity.enabled=false,podDisruptionBudget.enabled=false,mesh.create=false";
    helm_ok(cluster, &["lint", "--strict", &chart, "--set", small]);

    // Each bad value fails `helm install` before anything is applied, saying where and why.
    let cases = [
        ("operator.replicas=0", "at '/operator/replicas': minimum: got 0, want 1"),
        (
            "mesh.spec.injection.failurePolicy=Sometimes",
            "at '/mesh/spec/injection/failurePolicy': value must be one of 'Fail', 'Ignore'",
        ),
        ("operatr.replicas=2", "additional properties 'operatr' not allowed"),
        (
            "webhook.logLevel=verbose",
            "at '/webhook/logLevel': value must be one of 'error', 'warn', 'info', 'debug', 'trace'",
        ),
        (
            "operator.leaderElection.leaseDuration=15",
            "at '/operator/leaderElection/leaseDuration': got number, want string",
        ),
        ("mesh.spec.trustDomain=Not_A_Domain", "at '/mesh/spec/trustDomain'"),
        (
            "mesh.spec.injection.renewAtPercent=95",
            "at '/mesh/spec/injection/renewAtPercent': maximum: got 95, want 90",
        ),
        (
            "operator.leaderElection.enabled=false",
            "operator.replicas > 1 needs operator.leaderElection.enabled=true",
        ),
        ("operator.identity.propagation=60", "at '/operator/identity/propagation': got number, want string"),
        ("operator.identity.enable=true", "additional properties 'enable' not allowed"),
        (
            "mesh.spec.identity.externalCaSecret=braid-issuer",
            "mesh.spec.identity.externalCaSecret \"braid-issuer\" is a Secret the operator writes itself",
        ),
        (
            "metrics.podMonitor.interval=soon",
            "at '/metrics/podMonitor/interval': 'soon' does not match pattern",
        ),
        ("image.digests.proxy=latest", "at '/image/digests/proxy': 'latest' does not match pattern"),
        ("image.digests.operatr=sha256:00", "additional properties 'operatr' not allowed"),
        (
            "mesh.spec.egress.mode=Closed",
            "at '/mesh/spec/egress/mode': value must be one of 'AllowAny', 'RegistryOnly'",
        ),
        ("mesh.spec.egress.clusterNetworks={10.0.0.0/8,ten}", "at '/mesh/spec/egress/clusterNetworks/1'"),
        (
            "mesh.spec.tracing.collector=grpc://jaeger:4317",
            "at '/mesh/spec/tracing/collector': 'grpc://jaeger:4317' does not match pattern",
        ),
        ("mesh.spec.tracing.samplingPercent=150", "at '/mesh/spec/tracing/samplingPercent'"),
    ];
    let release = format!("braid-bad-{}", ns.name.rsplit('-').next().unwrap_or("x"));
    for (value, message) in cases {
        let output = cluster.helm(&["install", &release, &chart, "-n", &ns.name, "--set", value]);
        let err = stderr(&output);
        assert!(!output.status.success(), "helm install --set {value} succeeded");
        assert!(err.contains(message), "helm install --set {value}: expected {message:?} in:\n{err}");
        eprintln!("--set {value}:\n{}", err.trim());
    }
    // The PodMonitor is rendered only where its API exists: asked for on a cluster without the
    // prometheus-operator, it is left out rather than failing the install.
    let monitor = ["template", "t", &chart, "--set", "metrics.podMonitor.enabled=true"];
    assert!(!helm_ok(cluster, &monitor).contains("kind: PodMonitor"));
    let with_api = [&monitor[..], &["--api-versions", "monitoring.coreos.com/v1/PodMonitor"]].concat();
    let rendered = helm_ok(cluster, &with_api);
    assert!(rendered.contains("kind: PodMonitor") && rendered.contains("port: braid-admin"), "{rendered}");
    let releases = helm_ok(cluster, &["list", "-n", &ns.name, "-a", "-q"]);
    assert!(releases.trim().is_empty(), "a refused install left a release: {releases}");
    let roles = cluster.kubectl_ok(&["get", "clusterroles", "-o", "name"]);
    assert!(!roles.contains(&release), "a refused install created objects: {roles}");

    // The Mesh part of the schema checks what the CRD checks, field for field.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("helm/braid/values.schema.json")).unwrap(),
    )
    .unwrap();
    let (_, crd) = braid_crds::crds().into_iter().find(|(_, crd)| crd.spec.names.kind == "Mesh").unwrap();
    let crd = serde_json::to_value(&crd).unwrap();
    let crd_spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        shape(&schema["properties"]["mesh"]["properties"]["spec"]),
        shape(crd_spec),
        "values.schema.json's mesh.spec and the Mesh CRD disagree: update the chart's schema"
    );
}

/// The Grafana dashboards: off by default; asked for, one ConfigMap per dashboard file, labelled
/// for Grafana's sidecar, each holding the file's JSON unchanged; a label the chart already sets
/// or one that is not a label key fails with a message saying so.
#[tokio::test]
async fn the_grafana_dashboards_render_as_configmaps_for_the_sidecar_only_when_asked_for() {
    let (cluster, _client, _ns) = setup("e2e-helm-dashboards").await;
    let chart = chart();
    let configmaps = |sets: &[&str]| {
        let mut args = vec!["template", "t", &chart, "-n", "monitoring-test"];
        for set in sets {
            args.extend(["--set", set]);
        }
        let objects = objects(cluster, &helm_ok(cluster, &args));
        let configmaps: Vec<Value> = objects.into_iter().filter(|o| o["kind"] == "ConfigMap").collect();
        configmaps
    };
    assert!(configmaps(&[]).is_empty(), "the default values render no ConfigMap");

    let dashboards = braid_e2e::dashboards::dashboards();
    assert_eq!(dashboards.len(), 4);
    for (sets, label, value, namespace) in [
        (&["metrics.grafanaDashboards.enabled=true"][..], "grafana_dashboard", "1", "monitoring-test"),
        (
            &[
                "metrics.grafanaDashboards.enabled=true",
                "metrics.grafanaDashboards.label=example.com/dashboard",
                // As --set reads it: a number, which the label value holds as text.
                "metrics.grafanaDashboards.labelValue=7",
                "metrics.grafanaDashboards.namespace=grafana",
                "metrics.grafanaDashboards.annotations.grafana_folder=Braid",
            ][..],
            "example.com/dashboard",
            "7",
            "grafana",
        ),
    ] {
        let rendered = configmaps(sets);
        assert_eq!(rendered.len(), dashboards.len(), "{sets:?}: one ConfigMap per dashboard: {rendered:?}");
        for dashboard in &dashboards {
            let configmap = rendered
                .iter()
                .find(|c| c["data"].get(&dashboard.file).is_some())
                .unwrap_or_else(|| panic!("{sets:?}: no ConfigMap holds {}", dashboard.file));
            let metadata = &configmap["metadata"];
            assert_eq!(metadata["labels"][label], value, "{sets:?}: {metadata}");
            assert_eq!(metadata["namespace"], namespace, "{sets:?}: {metadata}");
            assert_eq!(metadata["labels"]["app.kubernetes.io/part-of"], "braid", "{metadata}");
            let held: Value =
                serde_json::from_str(configmap["data"][&dashboard.file].as_str().unwrap_or_default())
                    .unwrap_or_else(|err| panic!("{}: the ConfigMap's JSON: {err}", dashboard.file));
            assert_eq!(held, dashboard.json, "{}: the ConfigMap holds the file unchanged", dashboard.file);
            if sets.len() > 1 {
                assert_eq!(metadata["annotations"]["grafana_folder"], "Braid", "{metadata}");
            }
        }
    }

    for (value, message) in [
        (
            "metrics.grafanaDashboards.label=app.kubernetes.io/part-of",
            "metrics.grafanaDashboards.label \"app.kubernetes.io/part-of\" is one of the labels the chart sets itself",
        ),
        ("metrics.grafanaDashboards.label=grafana dashboard", "at '/metrics/grafanaDashboards/label'"),
        ("metrics.grafanaDashboards.labelValue=a b", "at '/metrics/grafanaDashboards/labelValue'"),
        ("metrics.grafanaDashboards.enable=true", "additional properties 'enable' not allowed"),
    ] {
        let output = cluster.helm(&[
            "template",
            "t",
            &chart,
            "--set",
            "metrics.grafanaDashboards.enabled=true",
            "--set",
            value,
        ]);
        let err = stderr(&output);
        assert!(!output.status.success(), "helm template --set {value} succeeded");
        assert!(err.contains(message), "helm template --set {value}: expected {message:?} in:\n{err}");
        eprintln!("--set {value}:\n{}", err.trim());
    }
}

#[tokio::test]
async fn the_rendered_chart_passes_a_server_side_dry_run_and_the_crds_apply_as_is() {
    let (cluster, _client, ns) = setup("e2e-helm-render").await;
    // The restricted Pod Security profile warns about any Deployment that would run privileged,
    // as root, with a writable root filesystem or with privilege escalation.
    cluster.kubectl_ok(&["label", "namespace", &ns.name, "pod-security.kubernetes.io/warn=restricted"]);

    // GitOps: the generated CRDs apply server-side exactly as committed, the chart's copy too.
    for dir in ["crds", "helm/braid/crds"] {
        let path = repo_root().join(dir).display().to_string();
        let output =
            cluster.kubectl(&["apply", "--server-side", "--field-manager=braid-e2e-gitops", "-f", &path]);
        assert!(output.status.success(), "kubectl apply --server-side -f {dir}/: {}", stderr(&output));
        assert!(!stderr(&output).contains("Warning"), "{dir}: {}", stderr(&output));
    }

    let chart = chart();
    let variants: [&[&str]; 2] = [
        &[],
        &[
            "--set",
            "operator.replicas=1,operator.leaderElection.enabled=false,operator.identity.enabled=false,podDisruptionBudget.enabled=false,mesh.create=false",
        ],
    ];
    for values in variants {
        let mut args = vec!["template", "braid", chart.as_str(), "-n", ns.name.as_str()];
        args.extend_from_slice(values);
        let rendered = helm_ok(cluster, &args);
        let output = cluster.kubectl_with_stdin(
            // --force-conflicts: the cluster's Mesh may be another release's (a concurrent test);
            // this checks what the API server accepts, not who owns it.
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager=braid-e2e",
                "-f",
                "-",
            ],
            Some(&rendered),
        );
        let err = stderr(&output);
        assert!(output.status.success(), "the API server refused the chart ({values:?}): {err}");
        assert!(!err.contains("Warning"), "the API server warned ({values:?}): {err}");
        eprintln!("{values:?}:\n{}", String::from_utf8_lossy(&output.stdout));
    }

    // The defaults run HA, least-privileged and observable.
    let render = |values: &[&str]| {
        let mut args = vec!["template", "braid", chart.as_str(), "-n", ns.name.as_str()];
        args.extend_from_slice(values);
        objects(cluster, &helm_ok(cluster, &args))
    };
    let objects = render(&[]);
    // Images: the registry's, tagged with the appVersion, the sidecars' too; a digest replaces
    // the tag of its image only.
    let image_of =
        |objects: &[Value], name: &str| container(find(objects, "Deployment", name))["image"].clone();
    let proxy_image = |objects: &[Value]| find(objects, "Mesh", "default")["spec"]["proxy"]["image"].clone();
    let version = braid_e2e::app_version();
    assert_eq!(image_of(&objects, "braid-operator"), format!("braid.dev/braid-operator:{version}").as_str());
    assert_eq!(proxy_image(&objects), format!("braid.dev/braid-proxy:{version}").as_str());
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned = format!("image.registry=registry.example.com/braid,image.digests.proxy={digest}");
    let pinned = render(&["--set", &pinned]);
    assert_eq!(
        image_of(&pinned, "braid-operator"),
        format!("registry.example.com/braid/braid-operator:{version}").as_str()
    );
    assert_eq!(proxy_image(&pinned), format!("registry.example.com/braid/braid-proxy@{digest}").as_str());
    let own = "mesh.spec.proxy.image=mirror.example.com/proxy:1";
    let own = render(&["--set", own]);
    assert_eq!(proxy_image(&own), "mirror.example.com/proxy:1", "the Mesh's own image wins");
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    #[rustfmt::skip]
    assert_eq!(kinds, [
        "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Deployment",
        "Lease", "Mesh", "MutatingWebhookConfiguration", "PodDisruptionBudget", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "Service", "Service", "Service", "ServiceAccount", "ServiceAccount",
    ]);
    for name in ["braid-operator", "braid-webhook"] {
        let deployment = find(&objects, "Deployment", name);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = container(deployment);
        assert_eq!(deployment["spec"]["replicas"], 2, "{name}");
        assert_eq!(pod["serviceAccountName"], name, "{name} runs under its own ServiceAccount");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
        assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{name}");
        assert!(container["resources"]["requests"]["cpu"].is_string(), "{name}");
        assert!(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "{name}");
        assert_eq!(find(&objects, "PodDisruptionBudget", name)["spec"]["maxUnavailable"], 1);
    }
    assert!(args_of(find(&objects, "Deployment", "braid-operator")).contains(&"--leader-elect".to_owned()));
    // The webhook is probed over TLS on the port the API server calls.
    let webhook = container(find(&objects, "Deployment", "braid-webhook"));
    assert_eq!(webhook["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    // The caBundle is the operator's: the chart never renders it, and says so.
    let config = find(&objects, "MutatingWebhookConfiguration", "braid-webhook");
    for hook in config["webhooks"].as_array().unwrap() {
        assert!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");
        assert_eq!(hook["clientConfig"]["service"]["name"], "braid-webhook");
    }
    assert!(
        config["metadata"]["annotations"]["braid.dev/managed-fields"].as_str().unwrap().contains("caBundle")
    );

    // The mesh CA: every operator replica serves the identity endpoint behind the Service whose
    // name its certificate carries, and the webhook sends injected proxies to exactly that.
    let operator = find(&objects, "Deployment", "braid-operator");
    let operator_args = args_of(operator);
    for expected in [
        "--identity",
        "--identity-addr=0.0.0.0:8080",
        "--identity-service=braid-identity",
        "--identity-owner-service=braid-identity",
        "--identity-propagation=2m",
    ] {
        assert!(operator_args.iter().any(|a| a == expected), "{expected} not in {operator_args:?}");
    }
    let ports = container(operator)["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["name"] == "identity" && p["containerPort"] == 8080), "{ports:?}");
    let identity = find(&objects, "Service", "braid-identity");
    assert_eq!(identity["spec"]["selector"], operator["spec"]["selector"]["matchLabels"], "all replicas");
    assert_eq!(identity["spec"]["ports"][0]["port"], 8080);
    assert_eq!(identity["spec"]["ports"][0]["targetPort"], "identity");
    let webhook_args = args_of(find(&objects, "Deployment", "braid-webhook"));
    let proxies_ask = format!("braid-identity.{}.svc:8080", ns.name);
    assert_eq!(flag(&webhook_args, "--identity-addr"), Some(proxies_ask.as_str()));
    let rules = |objects: &[Value], kind: &str| find(objects, kind, "braid-operator")["rules"].clone();
    assert!(rules(&objects, "ClusterRole").to_string().contains("tokenreviews"));

    // Without it: no flags, no Service, none of its rules.
    let values = ["template", "braid", &chart, "-n", &ns.name, "--set", "operator.identity.enabled=false"];
    let off = crate::objects(cluster, &helm_ok(cluster, &values));
    let off_args = args_of(find(&off, "Deployment", "braid-operator"));
    assert!(!off_args.iter().any(|a| a.starts_with("--identity")), "{off_args:?}");
    assert!(!off.iter().any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "braid-identity"));
    for kind in ["ClusterRole", "Role"] {
        let text = rules(&off, kind).to_string();
        for name in ["tokenreviews", "namespaces", "configmaps", ANCHOR_SECRET] {
            assert!(!text.contains(name), "{kind} grants {name} without identity: {text}");
        }
    }
    // An external CA's Secret, named in the Mesh, is readable by name, and only readable.
    let external = "mesh.spec.identity.externalCaSecret=braid-issuer-external";
    let values = ["template", "braid", &chart, "-n", &ns.name, "--set", external];
    let role = rules(&crate::objects(cluster, &helm_ok(cluster, &values)), "Role");
    let rule =
        role.as_array().unwrap().iter().find(|r| r["resourceNames"] == json!(["braid-issuer-external"]));
    assert_eq!(rule.map(|r| r["verbs"].clone()), Some(json!(["get", "list", "watch"])), "{role}");
}

/// The chart installed as release braid-SUFFIX of its own namespace, and the APIs that the steps
/// of the install test look at. Dropped in field order: the release is uninstalled, then its
/// namespace is deleted.
struct Installed {
    release: Release,
    ns: TestNamespace,
    cluster: &'static Cluster,
    client: Client,
    configs: Api<MutatingWebhookConfiguration>,
    secrets: Api<Secret>,
    leases: Api<Lease>,
    meshes: Api<braid_crds::Mesh>,
}

impl Installed {
    /// (the operator's ServiceAccount, the webhook's ServiceAccount, the webhook configuration).
    fn names(&self) -> (String, String, String) {
        (self.release.operator(), self.release.webhook(), self.release.webhook())
    }
}

/// What the mesh CA step saw, for the steps after it.
struct MeshCa {
    identity_service: String,
    identity_uid: String,
    /// The trust bundle published in the release namespace.
    bundle_pem: String,
    anchor_before: ByteString,
    /// A namespace labelled for injection, which got the bundle too.
    meshed: TestNamespace,
}

/// helm install: deployed, NOTES.txt says how to check, no caBundle and an empty Lease yet.
async fn helm_install(cluster: &'static Cluster, client: Client, ns: TestNamespace) -> Installed {
    let (release, installed) = install(cluster, &client, &ns, &[]).await;
    eprintln!("$ helm install {} helm/braid -n {}\n{installed}", release.name, ns.name);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    assert!(installed.contains("kubectl get mesh default"), "NOTES.txt tells how to check:\n{installed}");
    let installed = Installed {
        configs: Api::all(client.clone()),
        secrets: Api::namespaced(client.clone(), &ns.name),
        leases: Api::namespaced(client.clone(), &ns.name),
        meshes: Api::all(client.clone()),
        release,
        ns,
        cluster,
        client,
    };
    let (operator_sa, _, config_name) = installed.names();
    assert_eq!(bundles(&installed.configs, &config_name).await, ["", ""], "Helm installs no caBundle");
    assert_eq!(lease_holder(&installed.leases, &operator_sa).await, None, "the chart's Lease starts empty");
    installed
}

/// Least privilege, as the API server's authorizer sees it.
fn service_accounts_may_do_what_they_need_and_no_more(installed: &Installed) {
    let Installed { release, ns, cluster, .. } = installed;
    let (operator_sa, webhook_sa, config_name) = installed.names();
    let operator_may = |args: &[&str]| can_i(cluster, &ns.name, &operator_sa, args);
    let webhook_may = |args: &[&str]| can_i(cluster, &ns.name, &webhook_sa, args);
    let n = ns.name.as_str();
    let (config_ref, lease_ref) = (
        format!("mutatingwebhookconfigurations/{config_name}"),
        format!("leases.coordination.k8s.io/{operator_sa}"),
    );
    let discovery_slice = format!("endpointslices.discovery.k8s.io/{}-discovery-leader", release.name);
    #[rustfmt::skip]
    let operator_allowed: &[&[&str]] = &[
        &["list", "meshroutes.braid.dev", "-A"], &["watch", "meshroutes.braid.dev", "-A"],
        &["patch", "meshroutes.braid.dev", "--subresource=status", "-A"],
        &["watch", "services", "-A"], &["get", "services", "-A"],
        &["get", "meshes.braid.dev/default"], &["watch", "meshes.braid.dev/default"],
        &["patch", "meshes.braid.dev/default", "--subresource=status"],
        &["watch", &config_ref], &["patch", &config_ref],
        &["watch", "secrets/braid-webhook-ca", "-n", n], &["patch", "secrets/braid-webhook-tls", "-n", n],
        &["create", "secrets", "-n", n],
        &["get", &lease_ref, "-n", n], &["update", &lease_ref, "-n", n],
        // The mesh CA and its endpoint.
        &["create", "tokenreviews.authentication.k8s.io"],
        &["get", "pods", "-A"], &["get", "serviceaccounts", "-A"],
        &["list", "namespaces"], &["watch", "namespaces"],
        &["list", "configmaps/braid-trust-anchors", "-A"], &["watch", "configmaps/braid-trust-anchors", "-A"],
        &["patch", "configmaps/braid-trust-anchors", "-n", "default"], &["create", "configmaps", "-n", "default"],
        &["get", "secrets/braid-trust-anchor", "-n", n], &["watch", "secrets/braid-trust-anchor", "-n", n],
        &["patch", "secrets/braid-trust-anchor", "-n", n], &["get", "secrets/braid-issuer", "-n", n],
        &["list", "secrets/braid-issuer", "-n", n], &["patch", "secrets/braid-issuer", "-n", n],
        // Discovery's index, and the leader's EndpointSlice of the discovery Service.
        &["list", "pods", "-A"], &["watch", "pods", "-A"],
        &["list", "endpointslices.discovery.k8s.io", "-A"], &["watch", "endpointslices.discovery.k8s.io", "-A"],
        &["list", "meshpolicies.braid.dev", "-A"], &["watch", "meshpolicies.braid.dev", "-A"],
        &["list", "meshexternalservices.braid.dev", "-A"], &["watch", "meshexternalservices.braid.dev", "-A"],
        &["patch", &discovery_slice, "-n", n], &["create", "endpointslices.discovery.k8s.io", "-n", n],
    ];
    #[rustfmt::skip]
    let operator_denied: &[&[&str]] = &[
        &["update", "meshroutes.braid.dev", "-A"], &["patch", "meshes.braid.dev/default"],
        &["list", "meshes.braid.dev"], &["create", "mutatingwebhookconfigurations"],
        &["delete", &config_ref], &["patch", "mutatingwebhookconfigurations/someone-elses"],
        &["get", "secrets", "-n", n], &["get", "secrets/someone-elses", "-n", n],
        &["get", "secrets/braid-webhook-ca", "-n", "default"], &["create", "secrets", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", n], &["delete", &lease_ref, "-n", n],
        &["delete", "pods", "-A"], &["delete", "services", "-A"],
        &["patch", "pods", "-A"], &["patch", "endpointslices.discovery.k8s.io/someone-elses", "-n", n],
        &["create", "endpointslices.discovery.k8s.io", "-n", "default"], &["patch", "meshpolicies.braid.dev", "-A"],
        &["patch", "meshexternalservices.braid.dev", "-A"],
        // The mesh CA's: nothing beyond its own objects, by name.
        &["delete", "tokenreviews.authentication.k8s.io"],
        &["list", "serviceaccounts", "-A"], &["create", "serviceaccounts", "--subresource=token", "-A"],
        &["patch", "namespaces"], &["delete", "namespaces"],
        &["list", "configmaps", "-A"], &["get", "configmaps/someone-elses", "-n", "default"],
        &["patch", "configmaps/someone-elses", "-n", "default"],
        &["delete", "configmaps/braid-trust-anchors", "-n", "default"],
        &["update", "configmaps/braid-trust-anchors", "-n", "default"],
        &["get", "secrets/braid-issuer", "-n", "default"], &["patch", "secrets/braid-trust-anchor", "-n", "default"],
        &["list", "secrets", "-n", n], &["delete", "secrets/braid-issuer", "-n", n],
        &["get", "secrets/braid-issuer-external", "-n", n],
    ];
    for args in operator_allowed {
        assert!(operator_may(args), "the operator's ServiceAccount may not {args:?}");
    }
    for args in operator_denied {
        assert!(!operator_may(args), "the operator's ServiceAccount may {args:?}: more than it needs");
    }
    for args in [&["watch", "namespaces"][..], &["get", "namespaces"], &["watch", "meshes.braid.dev/default"]]
    {
        assert!(webhook_may(args), "the webhook's ServiceAccount may not {args:?}");
    }
    #[rustfmt::skip]
    let webhook_denied: &[&[&str]] = &[
        &["get", "secrets", "-n", n], &["list", "meshes.braid.dev"], &["patch", "namespaces"],
        &["create", "pods", "-A"], &["list", "meshroutes.braid.dev", "-A"],
    ];
    for args in webhook_denied {
        assert!(!webhook_may(args), "the webhook's ServiceAccount may {args:?}: more than it needs");
    }
}

/// The operator under its ServiceAccount, with the Deployment's flags: it leads (the Lease),
/// issues the webhook's certificates, fills in the caBundle and writes status. Returns it, the
/// local address of its identity endpoint, and the caBundle.
async fn operator_leads_and_issues_the_webhook_certificates(
    installed: &Installed,
) -> (Component, SocketAddr, String) {
    let Installed { release, ns, client, configs, secrets, leases, meshes, .. } = installed;
    let (operator_sa, webhook_sa, config_name) = installed.names();
    let (operator, identity_local) = release.start_operator(&format!("{}-1", release.name), &[]);
    let identity_local = identity_local.expect("the chart runs the mesh CA");
    let holder = eventually(Duration::from_secs(15), "the operator to take the chart's Lease", || {
        lease_holder(leases, &operator_sa)
    })
    .await;
    eprintln!("leader: {holder}");
    let bundle = eventually(Duration::from_secs(30), "the caBundle in both entries", || async {
        let bundles = bundles(configs, &config_name).await;
        (bundles.len() == 2 && !bundles[0].is_empty() && bundles[0] == bundles[1]).then(|| bundles[0].clone())
    })
    .await;
    assert_eq!(failure_policy(configs, &config_name, 0).await, "Fail");
    assert_eq!(failure_policy(configs, &config_name, 1).await, "Ignore");
    // The operator owns exactly caBundle and the first entry's failure policy; the rest is Helm's.
    let config = configs.get(&config_name).await.unwrap();
    let operator_fields = config
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|f| f.manager.as_deref() == Some("braid-operator"))
        .and_then(|f| f.fields_v1)
        .map(|f| f.0.to_string())
        .unwrap_or_default();
    assert!(
        operator_fields.contains("f:caBundle") && operator_fields.contains("f:failurePolicy"),
        "{operator_fields}"
    );
    assert!(
        !operator_fields.contains("f:rules") && !operator_fields.contains("f:service"),
        "{operator_fields}"
    );

    let service = Api::<Service>::namespaced(client.clone(), &ns.name).get(&webhook_sa).await.unwrap();
    for name in [CA_SECRET, TLS_SECRET] {
        // The serving certificate is written after the caBundle (a rollover needs that order).
        let secret = eventually(Duration::from_secs(15), &format!("Secret {name}"), || async {
            secrets.get_opt(name).await.unwrap_or_else(|err| panic!("Secret {name}: {err}"))
        })
        .await;
        let owners = secret.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1, "{name}: {owners:?}");
        assert_eq!((owners[0].kind.as_str(), owners[0].name.as_str()), ("Service", webhook_sa.as_str()));
        assert_eq!(
            Some(&owners[0].uid),
            service.metadata.uid.as_ref(),
            "{name} is owned by the webhook's Service"
        );
    }
    eventually(Duration::from_secs(30), "Mesh default WebhookCertificateReady=True", || async {
        let status = meshes.get("default").await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "WebhookCertificateReady" && c.status == "True")
            .then_some(())
    })
    .await;
    (operator, identity_local, bundle)
}

/// MeshRoute status, written under the same ServiceAccount. Returns the app namespace and its
/// routes.
async fn operator_writes_meshroute_status(
    installed: &Installed,
) -> (TestNamespace, Api<braid_crds::MeshRoute>) {
    let Installed { cluster, client, .. } = installed;
    let app = TestNamespace::create(cluster, client, "e2e-helm-app").await;
    for service in ["reviews", "reviews-v1"] {
        cluster.kubectl_ok(&["create", "service", "clusterip", service, "-n", &app.name, "--tcp=8080"]);
    }
    let route = r#"{"apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": "reviews"},
        "spec": {"service": "reviews", "rules": [{"backends": [{"service": "reviews-v1", "weight": 100}]}]}}"#;
    let applied = cluster.kubectl_with_stdin(&["apply", "-n", &app.name, "-f", "-"], Some(route));
    assert!(applied.status.success(), "{}", stderr(&applied));
    let routes: Api<braid_crds::MeshRoute> = Api::namespaced(client.clone(), &app.name);
    eventually(Duration::from_secs(30), "MeshRoute reviews Accepted and ResolvedRefs", || async {
        let status = routes.get("reviews").await.ok()?.status?;
        let is_true = |t: &str| status.conditions.iter().any(|c| c.type_ == t && c.status == "True");
        (is_true("Accepted") && is_true("ResolvedRefs")).then_some(())
    })
    .await;
    eprintln!("{}", cluster.kubectl_ok(&["get", "meshroutes", "-n", &app.name]));
    (app, routes)
}

/// The mesh CA, under the same ServiceAccount: the trust anchor and the issuer, owned by the
/// chart's identity Service (uninstalling removes them), and the trust bundle in the release
/// namespace (owned too) and in every namespace labelled braid.dev/inject=enabled (not owned:
/// an owner reference cannot cross namespaces).
async fn mesh_ca_issues_and_publishes_its_trust_bundle(installed: &Installed) -> MeshCa {
    let Installed { release, ns, cluster, client, secrets, meshes, .. } = installed;
    let identity_service = release.identity();
    let identity_uid = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get(&identity_service)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let owned = vec![("Service".to_owned(), identity_service.clone(), identity_uid.clone())];
    for name in [ANCHOR_SECRET, ISSUER_SECRET] {
        let secret = eventually(Duration::from_secs(30), &format!("Secret {name}"), || async {
            secrets.get_opt(name).await.ok()?
        })
        .await;
        assert_eq!(owners(&secret.metadata), owned, "{name} is owned by the identity Service");
    }
    let (config_map, bundle_pem) =
        eventually(Duration::from_secs(30), "the trust bundle in the release namespace", || {
            published(client, &ns.name)
        })
        .await;
    assert_eq!(owners(&config_map.metadata), owned, "the release namespace's bundle");
    let meshed = TestNamespace::create(cluster, client, "e2e-helm-meshed").await;
    cluster.kubectl_ok(&["label", "namespace", &meshed.name, "braid.dev/inject=enabled"]);
    let (config_map, meshed_bundle) =
        eventually(Duration::from_secs(30), "the trust bundle in a meshed namespace", || {
            published(client, &meshed.name)
        })
        .await;
    assert_eq!(meshed_bundle, bundle_pem);
    assert_eq!(owners(&config_map.metadata), [], "{}/{TRUST_CONFIG_MAP}", meshed.name);
    let labels = config_map.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/part-of").map(String::as_str), Some("braid"));
    eventually(Duration::from_secs(30), "Mesh default CAReady=True", || async {
        let status = meshes.get("default").await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "CAReady" && c.status == "True").then_some(())
    })
    .await;
    let anchor_before = secrets.get(ANCHOR_SECRET).await.unwrap().data.unwrap()["ca.crt"].clone();
    MeshCa { identity_service, identity_uid, bundle_pem, anchor_before, meshed }
}

/// A workload certificate, asked for at the address the webhook gives injected proxies (so
/// the Service name, --identity-service and the webhook's flag agree: the endpoint's
/// certificate carries that name) and trusting only the published bundle. The TokenReview
/// and the pod and ServiceAccount reads behind it run under the operator's ServiceAccount.
async fn endpoint_issues_a_workload_certificate_at_the_address_proxies_ask(
    installed: &Installed,
    app: &TestNamespace,
    ca: &MeshCa,
    identity_local: SocketAddr,
) {
    let Installed { release, ns, cluster, client, .. } = installed;
    let (_, webhook_sa, _) = installed.names();
    let MeshCa { identity_service, bundle_pem, .. } = ca;
    let webhook_args = args_of(find(&release.manifest(), "Deployment", &webhook_sa));
    let proxies_ask = format!("{identity_service}.{}.svc:8080", ns.name);
    assert_eq!(flag(&webhook_args, "--identity-addr"), Some(proxies_ask.as_str()));
    cluster.kubectl_ok(&["create", "serviceaccount", "web", "-n", &app.name]);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        // Only has to exist (for the bound token): the gate keeps it off the cluster's node.
        "spec": {"serviceAccountName": "web", "schedulingGates": [{"name": "braid.dev/e2e-never-run"}],
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .unwrap();
    // Not meshed (the namespace is not labelled), so the webhook's Ignore entry lets it through.
    Api::<Pod>::namespaced(client.clone(), &app.name).create(&PostParams::default(), &pod).await.unwrap();
    #[rustfmt::skip]
    let token = cluster.kubectl_ok(&[
        "create", "token", "web", "-n", &app.name, "--audience=braid",
        "--bound-object-kind=Pod", "--bound-object-name=web", "--duration=10m",
    ]);
    let id = format!("spiffe://cluster.local/ns/{}/sa/web", app.name);
    let trust_file = write_temp(&format!("{}-trust-bundle.pem", release.name), bundle_pem);
    let (status, answer) = eventually(Duration::from_secs(30), "the endpoint to issue", || async {
        match certify(&proxies_ask, identity_local, &trust_file, token.trim(), &csr(&id)) {
            Ok((503, answer)) => {
                eprintln!("not yet: {answer}");
                None
            }
            Ok(answered) => Some(answered),
            Err(err) => {
                eprintln!("not yet: {err}");
                None
            }
        }
    })
    .await;
    assert_eq!(status, 200, "POST /v1/certify: {answer}");
    assert_eq!(answer["identity"], id.as_str(), "{answer}");
    eprintln!("issued {id} until {}", answer["notAfter"]);
}

/// The webhook under its ServiceAccount, with the Deployment's flags and the operator's
/// Secret where the chart mounts it: ready means its namespace and Mesh reflectors list
/// and watch. The API server would call it at the Service's name and check it against the
/// caBundle; curl does the same here.
async fn webhook_serves_with_the_operators_certificate(installed: &Installed, bundle: &str) -> Component {
    let Installed { release, ns, cluster, secrets, .. } = installed;
    let (_, webhook_sa, _) = installed.names();
    let manifest = release.manifest();
    let webhook_deployment = find(&manifest, "Deployment", &webhook_sa);
    let chart_args = args_of(webhook_deployment);
    assert_eq!(chart_args.first().map(String::as_str), Some("serve"));
    let mount = container(webhook_deployment)["volumeMounts"][0]["mountPath"].as_str().unwrap().to_owned();
    let volume = &webhook_deployment["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], TLS_SECRET, "the webhook mounts the operator's Secret");
    assert_eq!(flag(&chart_args, "--tls-cert"), Some(format!("{mount}/tls.crt").as_str()));
    assert_eq!(flag(&chart_args, "--tls-key"), Some(format!("{mount}/tls.key").as_str()));
    let tls_dir = std::env::temp_dir().join(format!("{}-tls", release.name));
    std::fs::create_dir_all(&tls_dir).unwrap();
    let data = secrets.get(TLS_SECRET).await.unwrap().data.unwrap();
    for key in ["tls.crt", "tls.key"] {
        std::fs::write(tls_dir.join(key), &data[key].0).unwrap();
    }
    let addr = free_local_addr();
    let mut args = local_args(
        &chart_args[1..],
        &["--addr", "--admin-addr", "--log", "--log-format", "--tls-cert", "--tls-key"],
    );
    args.extend([
        format!("--addr={addr}"),
        format!("--tls-cert={}", tls_dir.join("tls.crt").display()),
        format!("--tls-key={}", tls_dir.join("tls.key").display()),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig = service_account_kubeconfig(cluster, &ns.name, &webhook_sa);
    let webhook =
        Component::spawn_with_kubeconfig("braid-webhook", &kubeconfig, &release.name, &["serve"], &args);
    let host = format!("{webhook_sa}.{}.svc", ns.name);
    let bundle_file = write_temp(&format!("{}-bundle.pem", release.name), bundle);
    let curl = Command::new("curl")
        .args(["-fsS", "--noproxy", "*", "--cacert", &bundle_file])
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .arg(format!("https://{host}:{}/readyz", addr.port()))
        .output()
        .unwrap_or_else(|err| panic!("cannot run curl (apt-get install curl): {err}"));
    assert!(curl.status.success(), "the webhook's certificate does not verify as {host}: {}", stderr(&curl));
    webhook
}

/// Upgrade with changed values while the operator is stopped: whatever happens to the
/// caBundle now is Helm's doing. On SIGTERM the operator releases its Lease.
async fn an_upgrade_with_the_operator_stopped_keeps_the_ca_bundle_and_the_lease(
    installed: &Installed,
    operator: Component,
    bundle: &str,
) {
    let Installed { release, ns, cluster, configs, leases, meshes, .. } = installed;
    let (operator_sa, webhook_sa, config_name) = installed.names();
    let chart = chart();
    let bundle = bundle.to_owned();
    let (status, log) = operator.terminate(Duration::from_secs(20));
    assert!(status.success(), "the operator exited with {status}:\n{log}");
    assert!(log.contains("released the Lease"), "{log}");
    assert_eq!(lease_holder(leases, &operator_sa).await, None);
    let upgrade = [
        "upgrade",
        release.name.as_str(),
        chart.as_str(),
        "-n",
        ns.name.as_str(),
        "--set",
        "webhook.replicas=3,operator.logLevel=debug,mesh.spec.injection.failurePolicy=Ignore",
        "--set-json",
        NO_NODE,
    ];
    let upgraded = helm_ok(cluster, &upgrade);
    assert!(upgraded.contains("REVISION: 2"), "{upgraded}");
    assert_eq!(
        bundles(configs, &config_name).await,
        [bundle.clone(), bundle.clone()],
        "helm upgrade changed the caBundle"
    );
    assert_eq!(
        failure_policy(configs, &config_name, 0).await,
        "Fail",
        "Helm does not own the failure policy"
    );
    let manifest = release.manifest();
    assert_eq!(find(&manifest, "Deployment", &webhook_sa)["spec"]["replicas"], 3);
    let operator_args = args_of(find(&manifest, "Deployment", &operator_sa));
    assert_eq!(flag(&operator_args, "--log"), Some("debug"));
    let live = cluster.kubectl_ok(&[
        "get",
        "deployment",
        &webhook_sa,
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(live, "3");
    let mesh = meshes.get("default").await.unwrap();
    assert_eq!(mesh.spec.injection.failure_policy, braid_crds::mesh::FailurePolicy::Ignore);
    assert!(leases.get_opt(&operator_sa).await.unwrap().is_some(), "the upgrade kept the Lease");
}

/// The operator, restarted with the upgraded flags, carries the Mesh's new failure policy
/// into the configuration and keeps the CA it had.
async fn the_restarted_operator_applies_the_new_failure_policy_and_keeps_the_ca(
    installed: &Installed,
    bundle: &str,
    ca: &MeshCa,
) -> Component {
    let Installed { release, ns, client, configs, secrets, .. } = installed;
    let (_, _, config_name) = installed.names();
    let MeshCa { identity_service, identity_uid, anchor_before, .. } = ca;
    let (operator, _) = release.start_operator(&format!("{}-2", release.name), &[]);
    eventually(Duration::from_secs(30), "failurePolicy Ignore from the upgraded Mesh", || async {
        (failure_policy(configs, &config_name, 0).await == "Ignore").then_some(())
    })
    .await;
    assert_eq!(bundles(configs, &config_name).await[0], bundle, "the CA was kept");
    // The identity Service survived the upgrade, so the mesh CA (which it owns) did too.
    let service = Api::<Service>::namespaced(client.clone(), &ns.name).get(identity_service).await.unwrap();
    assert_eq!(
        service.metadata.uid.as_ref(),
        Some(identity_uid),
        "the upgrade recreated the identity Service"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let anchor = secrets.get(ANCHOR_SECRET).await.unwrap().data.unwrap()["ca.crt"].clone();
    assert_eq!(&anchor, anchor_before, "the trust anchor was kept");
    operator
}

/// Uninstall while both still run: everything but the CRDs goes, and the operator does not
/// bring the configuration back (a stale one could block pod creation in meshed namespaces).
async fn uninstall_removes_everything_but_the_crds_the_routes_and_the_meshed_bundles(
    installed: &Installed,
    routes: &Api<braid_crds::MeshRoute>,
    meshed: &TestNamespace,
    (operator, webhook): (Component, Component),
) {
    let Installed { release, ns, cluster, client, configs, .. } = installed;
    let (_, _, config_name) = installed.names();
    let uninstalled = helm_ok(cluster, &["uninstall", &release.name, "-n", &ns.name]);
    eprintln!("$ helm uninstall {} -n {}\n{uninstalled}", release.name, ns.name);
    let leftovers = || {
        let namespaced = cluster.kubectl_ok(&[
            "get",
            "all,secrets,leases,serviceaccounts,roles,rolebindings,poddisruptionbudgets,configmaps",
            "-n",
            &ns.name,
            "-o",
            "name",
        ]);
        let cluster_wide = cluster.kubectl_ok(&[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,meshes",
            "-o",
            "name",
        ]);
        namespaced
            .lines()
            .filter(|l| !matches!(*l, "serviceaccount/default" | "configmap/kube-root-ca.crt"))
            .chain(
                cluster_wide
                    .lines()
                    .filter(|l| l.contains(&release.name) || l.ends_with("mesh.braid.dev/default")),
            )
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers().is_empty() {
        assert!(Instant::now() < deadline, "helm uninstall left {:?}", leftovers());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(configs.get_opt(&config_name).await.unwrap().is_none(), "the webhook configuration came back");
    assert!(leftovers().is_empty(), "after 5 s: {:?}", leftovers());
    let crds = cluster.kubectl_ok(&["get", "crds", "-o", "name"]);
    for crd in [
        "meshroutes.braid.dev",
        "meshpolicies.braid.dev",
        "meshes.braid.dev",
        "meshexternalservices.braid.dev",
    ] {
        assert!(crds.contains(crd), "helm uninstall removed CRD {crd}");
    }
    assert!(routes.get_opt("reviews").await.unwrap().is_some(), "routes outlive the release");
    // The trust bundle in meshed namespaces stays (it cannot be owned from another namespace, and
    // holds only public certificates); NOTES.txt and the README say how to remove it.
    drop((operator, webhook));
    let (config_map, _) = published(client, &meshed.name).await.expect("the meshed namespace's bundle");
    assert_eq!(owners(&config_map.metadata), []);
    #[rustfmt::skip]
    let removed = cluster.kubectl_ok(&[
        "delete", "configmaps", "-n", &meshed.name, "-l", "app.kubernetes.io/part-of=braid",
        "--field-selector", "metadata.name=braid-trust-anchors",
    ]);
    assert!(removed.contains(TRUST_CONFIG_MAP), "{removed}");
}

#[tokio::test]
async fn the_chart_installs_runs_under_its_own_service_accounts_upgrades_and_uninstalls_cleanly() {
    let (cluster, client, ns) = setup("e2e-helm").await;
    let _turn = CHART_INSTALL.lock().await;
    let installed = helm_install(cluster, client, ns).await;
    service_accounts_may_do_what_they_need_and_no_more(&installed);
    let (operator, identity_local, bundle) =
        operator_leads_and_issues_the_webhook_certificates(&installed).await;
    let (app, routes) = operator_writes_meshroute_status(&installed).await;
    let ca = mesh_ca_issues_and_publishes_its_trust_bundle(&installed).await;
    endpoint_issues_a_workload_certificate_at_the_address_proxies_ask(&installed, &app, &ca, identity_local)
        .await;
    let webhook = webhook_serves_with_the_operators_certificate(&installed, &bundle).await;
    for (name, log) in [("operator", operator.log_text()), ("webhook", webhook.log_text())] {
        assert!(!log.to_lowercase().contains("forbidden"), "the {name} was refused something:\n{log}");
    }
    an_upgrade_with_the_operator_stopped_keeps_the_ca_bundle_and_the_lease(&installed, operator, &bundle)
        .await;
    let operator =
        the_restarted_operator_applies_the_new_failure_policy_and_keeps_the_ca(&installed, &bundle, &ca)
            .await;
    uninstall_removes_everything_but_the_crds_the_routes_and_the_meshed_bundles(
        &installed,
        &routes,
        &ca.meshed,
        (operator, webhook),
    )
    .await;
}

#[tokio::test]
async fn two_operator_replicas_elect_one_leader_and_fail_over_within_the_lease_duration() {
    let (cluster, client, ns) = setup("e2e-helm-ha").await;
    let _turn = CHART_INSTALL.lock().await;
    let (release, _) = install(cluster, &client, &ns, &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let lease = release.operator();
    let identity = |replica: &str| format!("--leader-election-identity={}-{replica}", release.operator());
    let leader_metric = "braid_operator_leader";
    let webhook_reconciles = "braid_operator_reconciles_total{controller=\"webhook-certificate\"}";

    // Two replicas as the Deployment runs them: the first leads, the second stands by (and is
    // ready, so a rollout is not held up by it) without running any controller.
    let (a, _) = release.start_operator(&format!("{}-a", release.name), &[&identity("a")]);
    let (b, b_identity) = release.start_operator(&format!("{}-b", release.name), &[&identity("b")]);
    assert_eq!(lease_holder(&leases, &lease).await, Some(format!("{lease}-a")));
    eventually(Duration::from_secs(30), "the leader to issue the webhook's Secret", || async {
        secrets.get_opt(TLS_SECRET).await.ok()?.map(|_| ())
    })
    .await;
    assert_eq!(metric(&a.metrics(), leader_metric), 1.0);
    assert_eq!(metric(&b.metrics(), leader_metric), 0.0);
    // No sample at all: the series appears at a controller's first reconcile (checked below, once
    // this replica leads, so that a renamed series cannot pass here).
    assert_eq!(metric_value(&b.metrics(), webhook_reconciles), None, "the standby ran a controller");

    // Every replica serves the identity endpoint, the standby too: it loads the issuer the leader
    // wrote and reviews tokens under the chart's ServiceAccount (a forged one is refused).
    let (_, bundle) = eventually(Duration::from_secs(30), "the leader to publish the trust bundle", || {
        published(&client, &ns.name)
    })
    .await;
    let trust_file = write_temp(&format!("{}-trust-bundle.pem", release.name), &bundle);
    let proxies_ask = format!("{}.{}.svc:8080", release.identity(), ns.name);
    let id = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let b_identity = b_identity.expect("the chart runs the mesh CA");
    let answer = eventually(Duration::from_secs(30), "the standby's endpoint to load the issuer", || async {
        match certify(&proxies_ask, b_identity, &trust_file, "not-a-token", &csr(&id)) {
            Ok((503, _)) | Err(_) => None,
            Ok(answered) => Some(answered),
        }
    })
    .await;
    assert_eq!((answer.0, answer.1["error"].as_str()), (401, Some("unauthenticated")), "{answer:?}");
    assert_eq!(metric(&b.metrics(), leader_metric), 0.0, "still the standby");

    // Steady state: the standby has seen the leader renew at least once (a standby that has
    // only just started knows nothing older than its first look, and waits a full lease
    // duration from that).
    let renewed = |lease: Lease| lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renewed(leases.get(&lease).await.unwrap());
    eventually(Duration::from_secs(10), "the leader to renew the Lease", || async {
        (renewed(leases.get(&lease).await.ok()?) != first).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The leader dies without releasing the Lease (SIGKILL): the standby takes over once the
    // Lease has gone unrenewed for the lease duration, which started before the kill.
    let killed = Instant::now();
    drop(a);
    let took = eventually(LEASE_DURATION * 2, "the standby to take over", || async {
        (lease_holder(&leases, &lease).await == Some(format!("{lease}-b"))).then(|| killed.elapsed())
    })
    .await;
    eprintln!(
        "after SIGKILL of the leader, the standby led after {took:?} (lease duration {LEASE_DURATION:?})"
    );
    assert!(took <= LEASE_DURATION + Duration::from_secs(1), "took over after {took:?}");
    // At the earliest: the last renewal came at most a renew period (5 s) before the kill, and
    // the standby dates it at most one look (2 s) early.
    assert!(took >= LEASE_DURATION - Duration::from_secs(8), "took over after {took:?}: a live lease");

    // The new leader does the work: a deleted Secret is issued again, under its ServiceAccount.
    eventually(Duration::from_secs(20), "the new leader to run the controllers", || async {
        (metric_value(&b.metrics(), leader_metric) == Some(1.0)).then_some(())
    })
    .await;
    secrets.delete(TLS_SECRET, &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(20), "the new leader to reissue the webhook's Secret", || async {
        secrets.get_opt(TLS_SECRET).await.ok()?.map(|_| ())
    })
    .await;
    let reconciles = metric(&b.metrics(), webhook_reconciles);
    assert!(reconciles >= 1.0, "the new leader counts its reconciles in {webhook_reconciles}: {reconciles}");

    // A leader that is stopped (SIGTERM, as on a rollout or drain) releases the Lease, and the
    // standby takes over at its next look instead of a lease duration later.
    let (c, _) = release.start_operator(&format!("{}-c", release.name), &[&identity("c")]);
    let stopped = Instant::now();
    let (status, log) = b.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{log}");
    let took = eventually(Duration::from_secs(10), "the standby to take over a released Lease", || async {
        (lease_holder(&leases, &lease).await == Some(format!("{lease}-c"))).then(|| stopped.elapsed())
    })
    .await;
    eprintln!("after SIGTERM of the leader, the standby led after {took:?}");
    assert!(took <= Duration::from_secs(5), "took over after {took:?}");
    let transitions = leases.get(&lease).await.unwrap().spec.unwrap().lease_transitions;
    assert_eq!(transitions, Some(2), "a -> b -> c");
    let log = c.log_text();
    assert!(log.contains("acquired the Lease"), "{log}");
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    drop(c);
    drop(release);
}

/// Writes `text` to a file in the temp directory and returns its path.
fn write_temp(name: &str, text: &str) -> String {
    let path: &Path = &std::env::temp_dir().join(name);
    std::fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    path.display().to_string()
}
