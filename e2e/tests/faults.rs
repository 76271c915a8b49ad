//! The mesh under faults, with real pods: 20 meshed echo servers under a STRICT MeshPolicy that
//! admits only the `client` identity, a meshed load client as `client` sending throughout, and
//! three probes that must be refused every time — a plaintext client pod, a meshed client with
//! the wrong identity, and this test process sending plaintext to every echo pod's IP (pods that
//! are starting included). Each case disrupts the control plane while they run and asserts that
//! the disruption overlapped the load (the pods' timestamps), that the load client lost nothing
//! and that no probe was let in:
//! - the webhook down: meshed namespaces refuse new pods with the reason, others are unaffected;
//! - the leading operator killed (SIGKILL) while the echo pods are being replaced;
//! - the API server restarted;
//! - a trust-anchor rotation, with issuer rotations inside it, ending with every pod serving a
//!   certificate under the new root.
//!
//! Needs the node and the images (`make e2e` brings both). A test binary of its own: it installs
//! the chart, which owns the cluster's single Mesh.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, Release, Sidecar, Window, assert_overlaps, check_prerequisites, count,
    deploy_meshed_echo, install, kill_leader, lease_holder, programmed, sidecar_log, split, strict_policy,
    url, workloads,
};
use braid_e2e::{Cluster, TestNamespace, eventually, setup};
use kube::Client;

/// Short certificate lifetimes, so that a trust-anchor rotation (at two thirds of 8 min, then the
/// chart's default 2 min for the new root to reach every pod before it signs, then one workload
/// lifetime before the old root leaves) falls inside the suite. The issuer lives 6 min: the last
/// third of its life (when it is renewed) must be longer than those 2 min, or it could expire
/// while a new root is still on its way to the pods.
const LIFETIMES: [&str; 3] = [
    "mesh.spec.identity.trustAnchorLifetime=8m",
    "mesh.spec.identity.issuerLifetime=6m",
    "mesh.spec.identity.workloadLifetime=1m",
];
/// Replicas of each echo version: 20 meshed servers.
const REPLICAS: u32 = 10;
/// The path the probes ask for: not the pods' readiness probe path, which plaintext may reach.
const PRIVATE: &str = "/private";

struct Faults {
    cluster: &'static Cluster,
    client: Client,
    apps: TestNamespace,
    /// A namespace without the injection label.
    plain: TestNamespace,
    _release: Release,
}

/// The figures of one case, for the report at the end.
struct Figures {
    case: &'static str,
    sent: u64,
    failed: u64,
    wrongly_accepted: u64,
    probes: u64,
}

impl Faults {
    async fn install() -> Faults {
        let (cluster, client, plain) = setup("e2e-faults-plain").await;
        check_prerequisites(cluster);
        let release = install(cluster, &LIFETIMES);
        let apps = TestNamespace::create(cluster, &client, "e2e-faults").await;
        let ns = apps.name.as_str();
        let retries = "      retries: { attempts: 3, retryOn: [\"connect-failure\"] }\n";
        let yaml = [workloads(ns, REPLICAS), strict_policy(ns), split(ns, 50, 50, retries)].join("\n---\n");
        deploy_meshed_echo(cluster, ns, &yaml, "300s");
        programmed(cluster, ns).await;
        Faults { cluster, client, apps, plain, _release: release }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    /// Runs `disruption` while the load client and the three probes run; asserts 0 failed, 0 let
    /// in, and that the disruption overlapped both.
    async fn under_load<T>(
        &self,
        case: &'static str,
        disruption: impl std::future::Future<Output = T>,
    ) -> (T, Figures) {
        let (cluster, client, ns) = (self.cluster, &self.client, self.ns());
        let load_url = url(ns, "/");
        let probe_url = url(ns, PRIVATE);
        let start = |name: String, account: &'static str, sidecar: Sidecar, url: &str, rate: u32| {
            let url = url.to_owned();
            async move {
                let extra: &[&str] = if account == "client" { &[] } else { &["--timeout", "2s"] };
                let spec = LoadSpec {
                    name: &name,
                    account,
                    sidecar,
                    url: &url,
                    rate,
                    extra,
                    probe: account != "client",
                };
                LoadRun::start(cluster, client, ns, spec).await
            }
        };
        let load = start(format!("{case}-load"), "client", Sidecar::MeshedDebug, &load_url, 50).await;
        let plaintext = start(format!("{case}-plaintext"), "intruder", Sidecar::None, &probe_url, 20).await;
        let intruder = start(format!("{case}-intruder"), "intruder", Sidecar::Meshed, &probe_url, 20).await;
        load.answered().await;
        plaintext.sent(20).await;
        intruder.sent(20).await;
        let pod_ips = PodIpProbe::start(cluster, ns);
        tokio::time::sleep(Duration::from_secs(3)).await;

        let (out, window) = Window::of(disruption).await;
        eprintln!("{case}: the disruption took {} ms", window.ended_ms - window.started_ms);
        tokio::time::sleep(Duration::from_secs(5)).await;

        let (probed, let_in) = pod_ips.stop();
        let load = load.stop();
        let plaintext = plaintext.stop();
        let intruder = intruder.stop();
        assert_overlaps(&load, "ok", window, &format!("{case}: the load client"));
        assert_overlaps(&plaintext, "done", window, &format!("{case}: the plaintext probe"));
        assert_overlaps(&intruder, "done", window, &format!("{case}: the intruder probe"));
        let figures = Figures {
            case,
            sent: count(&load, "total"),
            failed: count(&load, "failed"),
            wrongly_accepted: count(&plaintext, "ok") + count(&intruder, "ok") + let_in.len() as u64,
            probes: count(&plaintext, "total") + count(&intruder, "total") + probed,
        };
        eprintln!(
            "{case}: load sent {} failed {}; probes sent {} (plaintext {}, intruder {}, to pod IPs {probed}), let in {}",
            figures.sent,
            figures.failed,
            figures.probes,
            count(&plaintext, "total"),
            count(&intruder, "total"),
            figures.wrongly_accepted
        );
        if figures.failed > 0 {
            // What the client's proxy saw: the endpoints it could not reach, and why it sent a
            // request back failed rather than to another endpoint.
            let seen = sidecar_log(
                cluster,
                ns,
                &format!("{case}-load"),
                &["not reached", "ejected", "discovery", "no other endpoint"],
                60,
            );
            eprintln!("{case}: the load client's proxy log (endpoints, discovery):\n{seen}");
        }
        assert_eq!(figures.failed, 0, "{case}: the load client lost requests: {load}");
        assert_eq!(count(&plaintext, "ok"), 0, "{case}: a plaintext client was let in: {plaintext}");
        assert_eq!(
            count(&intruder, "ok"),
            0,
            "{case}: an identity the policy refuses was let in: {intruder}"
        );
        assert!(let_in.is_empty(), "{case}: plaintext to pod IPs was answered 2xx: {let_in:?}");
        (out, figures)
    }

    /// The webhook scaled to 0: a pod of the meshed namespace is refused with the reason, a pod of
    /// a namespace without the label is created as usual; traffic between meshed pods goes on.
    async fn the_webhook_down(&self) -> Figures {
        let cluster = self.cluster;
        let (ns, plain) = (self.ns(), self.plain.name.as_str());
        let down = async {
            scale(cluster, "braid-webhook", 0);
            // Polled rather than `kubectl wait --for=delete -l`, which fails with "no matching
            // resources found" when the pods are gone before it lists them.
            eventually(Duration::from_secs(60), "the webhook's pods to be gone", || async {
                let pods = cluster.kubectl_ok(&[
                    "get",
                    "pods",
                    "-n",
                    "braid-system",
                    "-l",
                    "app.kubernetes.io/component=webhook",
                    "-o",
                    "name",
                ]);
                pods.trim().is_empty().then_some(())
            })
            .await;
            let refused = cluster.kubectl_with_stdin(&["create", "-f", "-"], Some(&sleeper(ns, "refused")));
            let accepted =
                cluster.kubectl_with_stdin(&["create", "-f", "-"], Some(&sleeper(plain, "accepted")));
            scale(cluster, "braid-webhook", 2);
            cluster.kubectl_ok(&[
                "rollout",
                "status",
                "-n",
                "braid-system",
                "deployment/braid-webhook",
                "--timeout=120s",
            ]);
            (refused, accepted)
        };
        let ((refused, accepted), figures) = self.under_load("webhook-down", down).await;
        let reason = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "a meshed pod was created without the webhook");
        assert!(
            reason.contains("braid") && reason.contains("failed calling webhook"),
            "the refusal names the webhook and why: {reason}"
        );
        eprintln!("webhook-down: a meshed pod was refused with: {}", reason.trim());
        assert!(
            accepted.status.success(),
            "a pod of a namespace without the label must not need the webhook: {}",
            String::from_utf8_lossy(&accepted.stderr)
        );
        figures
    }

    /// SIGKILL to the leading operator, and its pod deleted, while echo v1's ten pods are replaced
    /// one by one: new pods start under a control plane that is failing over (the standby takes
    /// the lease once it expires), and none lets a probe in.
    async fn the_leader_killed(&self) -> Figures {
        let (cluster, ns) = (self.cluster, self.ns());
        let failover = async {
            let leader = lease_holder(cluster);
            cluster.kubectl_ok(&["rollout", "restart", "-n", ns, "deployment/echo-v1"]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (next, took) = kill_leader(cluster, &leader).await;
            eprintln!(
                "leader-killed: {leader} killed while echo-v1 rolled; {next} leads, {took:?} after the kill"
            );
            cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/echo-v1", "--timeout=300s"]);
        };
        let ((), figures) = self.under_load("leader-killed", failover).await;
        figures
    }

    /// The API server stopped and started again: routes and policies are as before, and still
    /// enforced.
    async fn the_api_server_restarted(&self) -> Figures {
        let (cluster, ns) = (self.cluster, self.ns());
        let specs = || {
            (
                cluster.kubectl_ok(&["get", "meshroute", "echo", "-n", ns, "-o", "jsonpath={.spec}"]),
                cluster.kubectl_ok(&["get", "meshpolicy", "echo", "-n", ns, "-o", "jsonpath={.spec}"]),
            )
        };
        let before = specs();
        let restart = async {
            tokio::task::spawn_blocking(move || cluster.restart_apiserver()).await.expect("the restart ran");
        };
        let ((), figures) = self.under_load("apiserver-restart", restart).await;
        assert_eq!(specs(), before, "routes and policies are unchanged by the restart");
        programmed(cluster, ns).await;
        figures
    }

    /// The trust anchor rotates (its renewal time falls inside the suite) while the load runs:
    /// the bundle grows to two roots, a new issuer signs under the new root, the old root leaves;
    /// afterwards every echo pod serves a chain that verifies against the new root alone.
    async fn the_trust_anchor_rotated(&self) -> Figures {
        let (cluster, ns) = (self.cluster, self.ns());
        let first = bundle(cluster, ns);
        assert_eq!(roots(&first), 1, "one trust anchor before the rotation: {first}");
        let rotation = async {
            let mut issuers = std::collections::BTreeSet::new();
            let mut two_roots = false;
            let deadline = Instant::now() + Duration::from_secs(600);
            let last = loop {
                assert!(Instant::now() < deadline, "no trust-anchor rotation within 10 min");
                if let Some(issuer) = issuer_not_after(cluster) {
                    issuers.insert(issuer);
                }
                let current = bundle(cluster, ns);
                two_roots |= roots(&current) == 2;
                if two_roots && roots(&current) == 1 && current != first {
                    break current;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            eprintln!("trust-anchor: rotated; {} issuers seen during it", issuers.len());
            // The old root's issuer, then the new root's: the rotation moved the issuer too.
            assert!(issuers.len() >= 2, "an issuer rotation during the trust-anchor rotation: {issuers:?}");
            // Each pod renews within one workload lifetime of the new issuer, which is when the old
            // root left; a pod that has not is caught here.
            eventually(
                Duration::from_secs(90),
                "every echo pod to serve a chain under the new root",
                || async {
                    let stale: Vec<String> = echo_pod_ips(cluster, ns)
                        .into_iter()
                        .filter_map(|ip| served_chain_verifies(&ip, &last).err())
                        .collect();
                    if let Some(first) = stale.first() {
                        eprintln!(
                            "trust-anchor: {} pods not yet under the new root, e.g. {first}",
                            stale.len()
                        );
                    }
                    stale.is_empty().then_some(())
                },
            )
            .await;
        };
        // The check tells the roots apart: before, every pod's chain verifies under the first root.
        for ip in echo_pod_ips(cluster, ns) {
            served_chain_verifies(&ip, &first).unwrap_or_else(|err| panic!("before the rotation: {err}"));
        }
        let ((), figures) = self.under_load("trust-anchor-rotation", rotation).await;
        for ip in echo_pod_ips(cluster, ns) {
            assert!(
                served_chain_verifies(&ip, &first).is_err(),
                "{ip} still serves a chain under the old root"
            );
        }
        figures
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_loses_a_request_or_lets_one_in() {
    let started = Instant::now();
    let faults = Faults::install().await;
    eprintln!("installed, 20 echo pods ready, in {:?}", started.elapsed());
    let figures = vec![
        faults.the_webhook_down().await,
        faults.the_leader_killed().await,
        faults.the_api_server_restarted().await,
        faults.the_trust_anchor_rotated().await,
    ];
    eprintln!("case                   load sent  failed  probes sent  wrongly accepted");
    for f in &figures {
        eprintln!(
            "{:<22} {:>9}  {:>6}  {:>11}  {:>16}",
            f.case, f.sent, f.failed, f.probes, f.wrongly_accepted
        );
    }
    eprintln!("faults e2e done in {:?}", started.elapsed());
}

fn scale(cluster: &Cluster, deployment: &str, replicas: u32) {
    cluster.kubectl_ok(&[
        "scale",
        "-n",
        "braid-system",
        "deployment",
        deployment,
        &format!("--replicas={replicas}"),
    ]);
}

/// A pod that only sleeps, in `ns`.
fn sleeper(ns: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - {{ name: sleep, image: braid.dev/braid-testapps:dev, imagePullPolicy: Always, command: [echo, --name, sleep] }}
"#
    )
}

/// The trust bundle published in `ns`.
fn bundle(cluster: &Cluster, ns: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "configmap",
        "braid-trust-anchors",
        "-n",
        ns,
        "-o",
        "jsonpath={.data.ca-bundle\\.crt}",
    ])
}

fn roots(bundle: &str) -> usize {
    bundle.matches("-----BEGIN CERTIFICATE-----").count()
}

fn issuer_not_after(cluster: &Cluster) -> Option<String> {
    let out =
        cluster.kubectl(&["get", "mesh", "default", "-o", "jsonpath={.status.identity.issuerNotAfter}"]);
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

fn echo_pod_ips(cluster: &Cluster, ns: &str) -> Vec<String> {
    cluster
        .kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "app=echo",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Whether the certificate chain the proxy of the pod at `ip` serves to another proxy verifies
/// against `bundle` alone, as checked by openssl (an implementation other than ours).
fn served_chain_verifies(ip: &str, bundle: &str) -> Result<(), String> {
    let run = |args: &[&str], stdin: &[u8]| -> Result<String, String> {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run openssl (apt-get install openssl): {err}"))?;
        let _ = child.stdin.take().map(|mut s| s.write_all(stdin));
        let output = child.wait_with_output().map_err(|err| err.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() || args[0] == "s_client" {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
        }
    };
    // A peer proxy's ClientHello to the app's port (braid/h2 ALPN) is what the sidecar terminates.
    let shown =
        run(&["s_client", "-connect", &format!("{ip}:8080"), "-alpn", "braid/h2", "-showcerts"], b"")?;
    let pems: Vec<&str> = shown
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .collect();
    let [leaf, chain @ ..] = pems.as_slice() else { return Err(format!("{ip}: no certificate served")) };
    let pem = |body: &str| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n");
    let dir = std::env::temp_dir().join(format!("braid-faults-{}-{ip}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
    std::fs::write(dir.join("bundle.pem"), bundle).map_err(|err| err.to_string())?;
    std::fs::write(dir.join("chain.pem"), chain.iter().map(|c| pem(c)).collect::<String>())
        .map_err(|e| e.to_string())?;
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let verified = run(
        &["verify", "-CAfile", &path("bundle.pem"), "-untrusted", &path("chain.pem")],
        pem(leaf).as_bytes(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    verified.map(|_| ()).map_err(|err| format!("{ip}: {err}"))
}

/// This test process sending plaintext GET /private to every echo pod's IP, starting ones
/// included, in a loop on a thread of its own: the requests that were answered 2xx.
struct PodIpProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl PodIpProbe {
    fn start(cluster: &'static Cluster, ns: &str) -> PodIpProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut let_in) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let out = cluster.kubectl(&[
                    "get",
                    "pods",
                    "-n",
                    &ns,
                    "-l",
                    "app=echo",
                    "-o",
                    "jsonpath={.items[*].status.podIP}",
                ]);
                for ip in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let Ok(addr) = format!("{ip}:8080").parse() else { continue };
                    sent += 1;
                    if let Some((code, body)) = braid_e2e::http_get(addr, PRIVATE)
                        && (200..300).contains(&code)
                    {
                        let_in.push(format!("{ip}: {code} {}", body.chars().take(120).collect::<String>()));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (sent, let_in)
        });
        PodIpProbe { stop, thread }
    }

    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the pod IP probe thread")
    }
}
