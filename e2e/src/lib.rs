//! Test harness for the local Kubernetes built by e2e/cluster/: connect to it (starting it when
//! it is not running), install the CRDs, make throwaway namespaces, run the real braid-operator
//! binary against them, and wait for what a user would see.
//!
//! Everything here panics with a message that says what to do: in a test, a panic is the report.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub mod dashboards;
pub mod mesh;
pub mod registry;

use k8s_openapi::{
    api::{core::v1::Namespace, discovery::v1::EndpointSlice},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's appVersion (helm/braid/Chart.yaml): the tag of the images a release runs and the
/// version its proxies report.
pub fn app_version() -> String {
    chart_field("appVersion")
}

/// The chart's own version (helm/braid/Chart.yaml), as `helm install --version` takes it.
pub fn chart_version() -> String {
    chart_field("version")
}

fn chart_field(field: &str) -> String {
    let path = repo_root().join("helm/braid/Chart.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| panic!("no {field} in {}", path.display()))
}

/// `command` with the environment a user's shell would give it: without the variables cargo sets
/// for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...), which some build scripts (ring's)
/// watch, so that a release build it runs would start over for them.
pub fn as_a_user(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = ["CARGO_TARGET_DIR", "CARGO_HOME", "CARGO_INCREMENTAL"].contains(&name.as_ref());
        if (name.starts_with("CARGO_") && !ours) || name == "OUT_DIR" {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// `make ARGS` in the repository, as a user runs it (`as_a_user`).
pub fn make(args: &[&str]) -> Output {
    as_a_user(Command::new("make"))
        .current_dir(repo_root())
        .arg("--no-print-directory")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run make: {err}"))
}

/// The local cluster: its kubeconfig and the directory holding kubectl and helm.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
}

impl Cluster {
    /// The running local cluster, started with `e2e/cluster/cluster.sh up` when it is not up
    /// (that script reuses a running one and only prints its kubeconfig).
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let script = repo_root().join("e2e/cluster/cluster.sh");
            let output = Command::new("bash").arg(&script).arg("up").stderr(Stdio::inherit()).output();
            let output = output.unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
            assert!(
                output.status.success(),
                "`e2e/cluster/cluster.sh up` failed ({}); see its output above, or run `make cluster-up`",
                output.status
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let kubeconfig =
                stdout.lines().rev().find(|l| !l.trim().is_empty()).map(|l| PathBuf::from(l.trim()));
            let kubeconfig = kubeconfig.unwrap_or_else(|| panic!("cluster.sh up printed no kubeconfig path"));
            let bin_dir = kubeconfig.parent().map(|d| d.join("bin")).unwrap_or_default();
            assert!(kubeconfig.is_file(), "kubeconfig {} does not exist", kubeconfig.display());
            assert!(
                bin_dir.join("kubectl").is_file(),
                "{} has no kubectl: run `make cluster-up`",
                bin_dir.display()
            );
            Cluster { kubeconfig, bin_dir }
        })
    }

    /// The path of `tool` (one that `e2e/cluster/build-tools.sh` builds, such as prometheus or jaeger)
    /// in the cluster's tools directory: built there now if it is missing, and waited for if another
    /// build of it is running (`make test` builds the ones only later tests use in the background).
    pub fn tool(&self, tool: &str) -> PathBuf {
        let dir = std::fs::canonicalize(&self.bin_dir)
            .unwrap_or_else(|err| panic!("the cluster's tools directory {}: {err}", self.bin_dir.display()));
        let script = repo_root().join("e2e/cluster/build-tools.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(tool)
            .env("BRAID_TOOLS_DIR", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        let binary = dir.join(tool);
        assert!(
            status.success() && binary.is_file(),
            "`bash e2e/cluster/build-tools.sh {tool}` did not build {} ({status}); see its output above",
            binary.display()
        );
        binary
    }

    /// A client for the cluster's admin user.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", self.kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|err| panic!("invalid kubeconfig {}: {err}", self.kubeconfig.display()));
        Client::try_from(config).unwrap_or_else(|err| panic!("cannot build a client: {err}"))
    }

    /// Runs kubectl (the one built with the cluster) and returns what it printed.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_stdin(args, None)
    }

    /// Runs kubectl with `stdin` fed to it.
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(self.bin_dir.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|err| panic!("cannot run kubectl {args:?}: {err}"));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).unwrap_or_else(|err| panic!("cannot feed kubectl: {err}"));
        }
        child.wait_with_output().unwrap_or_else(|err| panic!("kubectl {args:?} did not finish: {err}"))
    }

    /// Runs kubectl, requires success, and returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs helm (the one built with the cluster) against the cluster and returns what it printed.
    pub fn helm(&self, args: &[&str]) -> Output {
        let helm = self.bin_dir.join("helm");
        assert!(helm.is_file(), "{} does not exist: run `make cluster-up` (it builds helm)", helm.display());
        Command::new(&helm)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run helm {args:?}: {err}"))
    }

    /// Restarts kube-apiserver with the same flags and waits until it is ready again.
    pub fn restart_apiserver(&self) {
        let script = repo_root().join("e2e/cluster/cluster.sh");
        let status = Command::new("bash").arg(script).arg("restart-apiserver").status();
        let status = status.unwrap_or_else(|err| panic!("cannot run cluster.sh restart-apiserver: {err}"));
        assert!(status.success(), "cluster.sh restart-apiserver failed: {status}");
    }
}

/// The usual start of a test: the cluster, an admin client, the CRDs, and a fresh namespace.
pub async fn setup(prefix: &str) -> (&'static Cluster, Client, TestNamespace) {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(cluster, &client, prefix).await;
    (cluster, client, ns)
}

/// Replaces the cluster's single Mesh with one of `spec`, and deletes it when the guard drops.
/// Tests that do this run in test binaries of their own.
pub async fn own_mesh(cluster: &Cluster, client: &Client, spec: serde_json::Value) -> DeleteOnDrop {
    let guard = DeleteOnDrop::new(cluster, "mesh", "default");
    let meshes: Api<braid_crds::Mesh> = Api::all(client.clone());
    let _ = meshes.delete("default", &kube::api::DeleteParams::default()).await;
    let mesh = serde_json::json!({"apiVersion": "braid.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"}, "spec": spec});
    meshes
        .patch("default", &PatchParams::apply("braid-e2e").force(), &Patch::Apply(&mesh))
        .await
        .unwrap_or_else(|err| panic!("cannot apply Mesh default: {err}"));
    guard
}

/// Installs the CRDs generated from the Rust types (server-side apply, as GitOps tools do) and
/// waits until the API server serves them.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("braid-e2e").force();
    for (_, crd) in braid_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|err| panic!("the API server refused CRD {name}: {err}"));
        eventually(Duration::from_secs(30), &format!("CRD {name} to be Established"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            }
        })
        .await;
    }
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    cluster: Cluster,
}

impl TestNamespace {
    pub async fn create(cluster: &Cluster, client: &Client, prefix: &str) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{prefix}-{:x}", (nanos as u64) ^ u64::from(std::process::id()));
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"braid.dev/test": "true"}}
        }))
        .unwrap_or_else(|err| panic!("namespace object: {err}"));
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("cannot create namespace {name}: {err}"));
        TestNamespace { name, cluster: cluster.clone() }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Synchronous on purpose (Drop cannot await); the controllers finish the deletion.
        let _ = self.cluster.kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Deletes a cluster-scoped object when dropped, so a test that panics leaves nothing behind
/// that could affect the next one (a webhook configuration would catch every later pod).
pub struct DeleteOnDrop {
    cluster: Cluster,
    resource: String,
    name: String,
}

impl DeleteOnDrop {
    pub fn new(cluster: &Cluster, resource: &str, name: &str) -> Self {
        DeleteOnDrop { cluster: cluster.clone(), resource: resource.to_owned(), name: name.to_owned() }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            &self.resource,
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// A binary of this workspace (braid-operator, braid-webhook) running as a child process, with
/// its admin server on a free loopback port.
pub struct Component {
    name: &'static str,
    child: Child,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Component {
    /// Path of a workspace binary: $BRAID_BIN_DIR/NAME, or debug/NAME in cargo's target folder
    /// ($CARGO_TARGET_DIR, or target/ of the repository).
    pub fn binary(name: &str) -> PathBuf {
        let dir = std::env::var_os("BRAID_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| repo_root().join("target"), PathBuf::from)
                .join("debug")
        });
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} does not exist: build it with `cargo build --workspace --bins` (`make test` does)",
            path.display()
        );
        path
    }

    /// Starts the operator watching MeshRoutes in `namespace` only, without the webhook's
    /// certificates (one operator per test, and only one may own those), and waits until ready.
    pub fn start(cluster: &Cluster, namespace: &str) -> Component {
        Self::operator(cluster, namespace, &["--namespace", namespace, "--skip-webhook"])
    }

    /// Starts braid-operator owning the webhook's certificates and its configuration
    /// `config_name` (url form, `webhook_url`), with its Secrets in `mesh_namespace` and a new CA
    /// trusted 3 s before it signs. Returns the operator and a guard that deletes the
    /// configuration: keep the guard alive longer than the operator, or it recreates it.
    pub fn webhook_owner(
        cluster: &Cluster,
        mesh_namespace: &str,
        config_name: &str,
        webhook_url: &str,
    ) -> (DeleteOnDrop, Component) {
        let guard = DeleteOnDrop::new(cluster, "mutatingwebhookconfiguration", config_name);
        #[rustfmt::skip]
        let args = [
            "--namespace", mesh_namespace,
            "--mesh-namespace", mesh_namespace,
            "--webhook-config-name", config_name,
            "--webhook-url", webhook_url,
            "--webhook-ca-propagation", "3s",
        ];
        (guard, Self::operator(cluster, mesh_namespace, &args))
    }

    /// Starts braid-operator with `args`; `label` tells its log file apart.
    pub fn operator(cluster: &Cluster, label: &str, args: &[&str]) -> Component {
        Self::spawn("braid-operator", cluster, label, &[], args)
    }

    /// Starts `braid-webhook serve` with `args`.
    pub fn webhook(cluster: &Cluster, label: &str, args: &[&str]) -> Component {
        Self::spawn("braid-webhook", cluster, label, &["serve"], args)
    }

    fn spawn(
        name: &'static str,
        cluster: &Cluster,
        label: &str,
        command: &[&str],
        args: &[&str],
    ) -> Component {
        Self::spawn_with_kubeconfig(name, &cluster.kubeconfig, label, command, args)
    }

    /// Starts workspace binary `name` (`command` first, then `--admin-addr` on a free loopback
    /// port, `--log`, and `args`) connecting with `kubeconfig` instead of the admin one (a
    /// ServiceAccount's token, say), and waits until its /readyz answers 200.
    pub fn spawn_with_kubeconfig(
        name: &'static str,
        kubeconfig: &Path,
        label: &str,
        command: &[&str],
        args: &[&str],
    ) -> Component {
        let admin = free_local_addr();
        let log = std::env::temp_dir().join(format!("{name}-{label}.log"));
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let stderr = log_file.try_clone().unwrap_or_else(|err| panic!("cannot clone log handle: {err}"));
        let child = Command::new(Self::binary(name))
            .env("KUBECONFIG", kubeconfig)
            .args(command)
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--log",
                "info,braid_operator=debug,braid_webhook=debug",
            ])
            .args(args)
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let mut component = Component { name, child, admin, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = component.child.try_wait() {
                panic!("{name} exited at start ({status}); its log:\n{}", component.log_text());
            }
            if http_get(admin, "/readyz").is_some_and(|(code, _)| code == 200) {
                return component;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready after 30 s; its log:\n{}",
                component.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its metrics, as Prometheus text.
    pub fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics") {
            Some((200, body)) => body,
            other => panic!("{}: GET /metrics answered {other:?}; log:\n{}", self.name, self.log_text()),
        }
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, waits up to `grace` for the process to exit, and returns how it exited
    /// and everything it logged.
    pub fn terminate(mut self, grace: Duration) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "cannot send SIGTERM to {pid}");
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, self.log_text());
            }
            assert!(Instant::now() < deadline, "{} still running {grace:?} after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unused loopback address for a child's listener.
pub fn free_local_addr() -> SocketAddr {
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|err| panic!("cannot bind loopback: {err}"));
    listener.local_addr().unwrap_or_else(|err| panic!("no local address: {err}"))
}

/// A plain HTTP/1.0 GET (to loopback, or a pod IP): status code and body, or None when nothing
/// answers within 5 s.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, Duration::from_secs(5))
}

/// A plain HTTP/1.0 POST with no body, for endpoints that may take up to `timeout` to answer.
pub fn http_post(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    http_request(addr, "POST", path, timeout)
}

fn http_request(addr: SocketAddr, method: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let length = if method == "POST" { "Content-Length: 0\r\n" } else { "" };
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{length}\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// Standard deviations a measured share may be from the configured one: a false failure about
/// once in 16,000 runs per share.
pub const SIGMAS: f64 = 4.0;

/// Whether `measured` of `n` is within SIGMAS binomial standard deviations of share `p`; the
/// expected count and the standard deviation.
pub fn within(measured: u64, n: u64, p: f64) -> (bool, f64, f64) {
    let expected = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    ((measured as f64 - expected).abs() <= SIGMAS * sd, expected, sd)
}

/// The ready endpoints of Service `service` in `ns`, as its EndpointSlices list them: each one's
/// hostname (a StatefulSet pod's) and first address. None when they cannot be listed.
pub async fn ready_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
) -> Option<Vec<(Option<String>, String)>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let selector = format!("kubernetes.io/service-name={service}");
    let list = slices.list(&ListParams::default().labels(&selector)).await.ok()?;
    Some(
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .filter_map(|e| Some((e.hostname.clone(), e.addresses.first()?.clone())))
            .collect(),
    )
}

/// Polls `check` until it yields a value, or panics after `timeout` naming what was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the sample of `series` (`name`, or `name{labels}` with the labels as exposed)
/// in Prometheus text, or None when there is no such sample: a renamed metric must not read as 0.
/// (prometheus-client exposes a labelled series, and even its metric's `# TYPE` line, only from
/// its first increment: a test that expects none must see the series appear at some point.)
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    let series = series.trim();
    metrics.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(series)?;
        // Exactly this series: `name 1` matches `name`, `name_total 1` and `name{a="b"} 1` do not.
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

/// The value of the sample of `series`; panics, with the metrics, when it is not exposed.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series)
        .unwrap_or_else(|| panic!("no sample {series} in the metrics (renamed or removed?):\n{metrics}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP braid_operator_reconciles Reconciles run, by controller.
# TYPE braid_operator_reconciles counter
braid_operator_reconciles_total{controller=\"meshroute\"} 3
# HELP braid_operator_leader Whether this replica runs the controllers.
# TYPE braid_operator_leader gauge
braid_operator_leader 0
# TYPE braid_identity_issued counter
braid_identity_issued_total 65
# EOF
";

    #[test]
    fn a_sample_is_read_by_its_exact_series() {
        assert_eq!(metric_value(METRICS, "braid_operator_leader"), Some(0.0));
        assert_eq!(metric_value(METRICS, "braid_operator_leader "), Some(0.0));
        assert_eq!(metric_value(METRICS, "braid_identity_issued_total"), Some(65.0));
        assert_eq!(
            metric_value(METRICS, "braid_operator_reconciles_total{controller=\"meshroute\"}"),
            Some(3.0)
        );
        // A prefix of a name, a name without its labels, a comment: no sample.
        assert_eq!(metric_value(METRICS, "braid_operator_lead"), None);
        assert_eq!(metric_value(METRICS, "braid_operator_reconciles_total"), None);
        assert_eq!(metric_value(METRICS, "braid_operator_reconciles"), None);
        assert_eq!(metric_value("braid_x not-a-number\n", "braid_x"), None);
    }

    #[test]
    fn a_missing_metric_is_not_zero() {
        assert_eq!(metric(METRICS, "braid_identity_issued_total"), 65.0);
        let missing = std::panic::catch_unwind(|| metric(METRICS, "braid_identity_issued"));
        assert!(missing.is_err(), "a missing sample must fail");
    }
}
