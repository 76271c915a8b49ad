//! Canary rollouts end to end, with real pods on the local cluster: Braid from its Helm chart,
//! echo v1 and v2 with injected sidecars, and a meshed load client sending throughout. A healthy
//! v2 is promoted through every step (the measured split at each step within 3 points of the
//! step's weight, no request failed); a v2 answering 20% 500s is rolled back within
//! failureThreshold x interval plus one interval, after which every request reaches v1, and so
//! is a v2 that adds 200 ms to every answer (judged on p99); with the leading operator killed
//! mid-rollout the new leader resumes at the same step and no request fails. The
//! `kubectl get mr -w` output of each run is printed. Needs the node and the images (`make
//! e2e` does both). A test binary of its own: it installs the chart, which owns the Mesh.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, Release, Sidecar, apply, check_prerequisites, count, deploy_meshed_echo, echo, holder,
    install, kill_leader, lease,
};
use braid_e2e::{Cluster, SIGMAS, TestNamespace, eventually, setup, within};
use kube::Client;
use serde_json::Value;

/// Short, so the test is: three steps and a promotion take four intervals.
const INTERVAL_SECONDS: u64 = 10;
/// Requests per second of the load client: over 1,000 requests per measured window.
const RATE: u32 = 150;
/// How long a step's split is measured: from a second after the test saw the step's weight,
/// ending before the next step, which comes an interval after the weight changed.
const STEP_WINDOW: Duration = Duration::from_millis(7500);

/// Whether v2's share of `report` is within SIGMAS binomial standard deviations of `weight` %;
/// the share and that bound, in points.
fn v2_share(report: &Value, weight: i64) -> (bool, f64, f64) {
    let (requests, v2) = (count(report, "total"), answered_by(report, "v2"));
    let (near, _, sd) = within(v2, requests, weight as f64 / 100.0);
    let points = |n: f64| n * 100.0 / requests.max(1) as f64;
    (near, points(v2 as f64), points(SIGMAS * sd))
}

/// The echo Service clients call (v1's pods, so that what no route sends elsewhere reaches v1),
/// the identities, and echo v1 and v2 (`v2_env`: v2's faults).
fn workloads(ns: &str, v2_env: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: echo, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: {ns} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: echo, namespace: {ns} }}
spec:
  selector: {{ app: echo, version: v1 }}
  ports: [{{ name: http, port: 8080, targetPort: http }}]
---
{}
---
{}
"#,
        echo(ns, "v1", 1, ""),
        echo(ns, "v2", 1, v2_env)
    )
}

/// The route a user writes for a canary of echo-v2: the spec keeps v1 at 100, the rollout moves
/// the effective weights.
fn canary_route(ns: &str, steps: &str, failure_threshold: u32, max_latency_ms: u32) -> String {
    format!(
        r#"
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata: {{ name: echo, namespace: {ns} }}
spec:
  service: echo
  rules:
    - backends: [{{ service: echo-v1, weight: 100 }}, {{ service: echo-v2, weight: 0 }}]
  canary:
    stable: echo-v1
    canary: echo-v2
    steps: {steps}
    interval: {INTERVAL_SECONDS}s
    minSuccessRate: 99
    maxLatencyMs: {max_latency_ms}
    failureThreshold: {failure_threshold}
    minRequests: 50
"#
    )
}

/// A meshed load client sending `RATE` requests a second to the echo Service until stopped,
/// once it got a first answer.
async fn start_load<'a>(cluster: &'a Cluster, client: &Client, ns: &str, name: &str) -> LoadRun<'a> {
    let url = format!("http://echo.{ns}.svc.cluster.local:8080/");
    let spec = LoadSpec {
        name,
        account: "client",
        sidecar: Sidecar::Meshed,
        url: &url,
        rate: RATE,
        extra: &[],
        probe: false,
    };
    let load = LoadRun::start(cluster, client, ns, spec).await;
    load.answered().await;
    load
}

/// Requests answered by echo `version` (backends are named POD@VERSION).
fn answered_by(report: &Value, version: &str) -> u64 {
    report["backends"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(backend, _)| backend.rsplit('@').next() == Some(version))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum()
}

/// `kubectl get mr -w` running in the background; its lines as they come.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(cluster: &Cluster, ns: &str) -> Watch {
        let mut child = Command::new(cluster.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["get", "mr", "-n", ns, "-w"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run kubectl get mr -w: {err}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Watch { child, lines }
    }

    fn finish(mut self, title: &str) -> String {
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
        eprintln!("--- {title}: kubectl get mr -w\n{text}\n---");
        text
    }
}

async fn route_json(cluster: &Cluster, ns: &str) -> Option<Value> {
    let out = cluster.kubectl(&["get", "meshroute", "echo", "-n", ns, "-o", "json"]);
    serde_json::from_slice(&out.stdout).ok()
}

fn canary_status(route: &Value) -> (String, i64) {
    let canary = &route["status"]["canary"];
    (canary["phase"].as_str().unwrap_or_default().to_owned(), canary["weight"].as_i64().unwrap_or(-1))
}

/// Waits until the rollout is at `weight` (or finished), and returns its phase.
async fn at_weight(cluster: &Cluster, ns: &str, weight: i64, within: Duration) -> String {
    eventually(within, &format!("the canary at weight {weight}"), || async {
        let route = route_json(cluster, ns).await?;
        let (phase, now) = canary_status(&route);
        (now == weight).then_some(phase)
    })
    .await
}

fn condition(route: &Value, type_: &str) -> Option<(String, String)> {
    route["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

fn events(cluster: &Cluster, ns: &str) -> Vec<String> {
    let out = cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.kind=MeshRoute,involvedObject.name=echo",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    out.lines().map(str::to_owned).collect()
}

struct Mesh {
    apps: TestNamespace,
    _release: Release,
    _unused: TestNamespace,
    cluster: &'static Cluster,
    client: Client,
}

impl Mesh {
    async fn install(v2_env: &str) -> Mesh {
        let (cluster, client, unused) = setup("e2e-canary-unused").await;
        check_prerequisites(cluster);
        let release = install(cluster, &[]);
        let apps = TestNamespace::create(cluster, &client, "e2e-canary").await;
        let ns = apps.name.as_str();
        deploy_meshed_echo(cluster, ns, &workloads(ns, v2_env), "180s");
        Mesh { apps, _release: release, _unused: unused, cluster, client }
    }

    fn ns(&self) -> &str {
        &self.apps.name
    }

    /// Steps that do not increase are refused by the API server; a canary on two rules is not
    /// accepted, with the field named, and no rollout runs for it.
    async fn bad_canaries_get_a_clear_answer(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
        let decreasing = canary_route(ns, "[50, 10]", 2, 500).replace("name: echo,", "name: echo-bad-steps,");
        let output = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&decreasing));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("steps must increase"), "{stderr}");
        let two_rules = canary_route(ns, "[10, 50]", 2, 500).replace("name: echo,", "name: echo-two-rules,").replace(
            "  rules:\n",
            "  rules:\n    - matches: [{ path: { value: /admin } }]\n      backends: [{ service: echo-v1 }, { service: echo-v2, weight: 0 }]\n",
        );
        apply(cluster, &two_rules);
        let message = eventually(Duration::from_secs(30), "echo-two-rules Accepted=False", || async {
            let out = cluster.kubectl(&["get", "meshroute", "echo-two-rules", "-n", ns, "-o", "json"]);
            let route: Value = serde_json::from_slice(&out.stdout).ok()?;
            let accepted =
                route["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Accepted")?.clone();
            (accepted["status"] == "False")
                .then(|| accepted["message"].as_str().unwrap_or_default().to_owned())
        })
        .await;
        assert!(
            message.contains("spec.rules[1].backends") && message.contains("exactly one rule"),
            "{message}"
        );
        cluster.kubectl_ok(&["delete", "meshroute", "echo-two-rules", "-n", ns]);
    }

    /// A healthy v2 is promoted through every step; the split at each step is the step's weight;
    /// no request fails; `kubectl wait --for=condition=Promoted` returns.
    async fn a_healthy_canary_is_promoted_step_by_step(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
        let load = start_load(cluster, &self.client, ns, "load-healthy").await;
        let watch = Watch::start(cluster, ns);
        let started = Instant::now();
        apply(cluster, &canary_route(ns, "[10, 25, 50]", 2, 500));
        let mut failed = 0;
        let mut total = 0;
        let mut figures = Vec::new();
        let slack = Duration::from_secs(INTERVAL_SECONDS * 3);
        for (step, weight) in [10, 25, 50].into_iter().enumerate() {
            let phase = at_weight(cluster, ns, weight, slack).await;
            assert!(["Progressing", "Waiting"].contains(&phase.as_str()), "step {}: {phase}", step + 1);
            // The split is measured inside the step: not before the weight reached the proxies,
            // nor once the next one has, which they get before the status shows it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = load.reset();
            tokio::time::sleep(STEP_WINDOW).await;
            let report = load.reset();
            let next = if weight == 50 { 100 } else { [10, 25, 50][step + 1] };
            at_weight(cluster, ns, next, slack).await;
            let after = load.reset();
            for counted in [&before, &report, &after] {
                failed += count(counted, "failed");
                total += count(counted, "total");
            }
            let requests = count(&report, "total");
            let (near, share, tolerance) = v2_share(&report, weight);
            eprintln!(
                "step {} ({weight}%): v2 answered {share:.1}% of {requests} requests (within {tolerance:.1} by chance)",
                step + 1
            );
            figures.push((weight, share, requests));
            assert!(requests >= 800, "step {}: only {requests} requests measured: {report}", step + 1);
            assert!(
                near,
                "step {}: v2 share {share:.1}% at weight {weight}, off by more than {tolerance:.1}: {report}",
                step + 1
            );
        }
        let wait = cluster.kubectl_ok(&[
            "wait",
            "-n",
            ns,
            "--for=condition=Promoted",
            "meshroute/echo",
            "--timeout=60s",
        ]);
        eprintln!("$ kubectl wait --for=condition=Promoted meshroute/echo\n{wait}");
        eprintln!("promoted {:?} after the route was applied", started.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let promoted = load.reset();
        let last = load.stop();
        for report in [&promoted, &last] {
            failed += count(report, "failed");
            total += count(report, "total");
        }
        assert_eq!(answered_by(&last, "v1"), 0, "promoted: everything to v2: {last}");
        assert_eq!(failed, 0, "requests failed during the healthy rollout ({total} sent)");
        eprintln!(
            "healthy rollout: {total} requests, {failed} failed; per step (weight, v2 %, requests): {figures:?}"
        );

        let route = route_json(cluster, ns).await.expect("route");
        assert_eq!(condition(&route, "Promoted"), Some(("True".into(), "Promoted".into())), "{route}");
        assert_eq!(condition(&route, "RolledBack"), Some(("False".into(), "OtherOutcome".into())), "{route}");
        assert_eq!(condition(&route, "CanaryHealthy").map(|c| c.0), Some("True".into()), "{route}");
        let seen = events(cluster, ns);
        for reason in ["RolloutStarted", "StepAdvanced", "Promoted"] {
            assert!(seen.iter().any(|r| r == reason), "event {reason} missing: {seen:?}");
        }
        let table = watch.finish("promotion");
        assert!(table.contains("Promoted"), "{table}");
    }

    /// The leading operator killed mid-rollout: the new leader resumes at the step the status
    /// holds (it neither starts over nor skips a step), the proxies keep the last effective
    /// weights while no operator leads, and no request fails.
    async fn a_rollout_resumes_at_its_step_after_the_leader_is_killed(&self) {
        let (cluster, ns) = (self.cluster, self.ns());
        cluster.kubectl_ok(&["delete", "meshroute", "echo", "-n", ns, "--wait=true"]);
        let load = start_load(cluster, &self.client, ns, "load-failover").await;
        let watch = Watch::start(cluster, ns);
        apply(cluster, &canary_route(ns, "[10, 25, 50]", 2, 500));
        let slack = Duration::from_secs(INTERVAL_SECONDS * 3);
        at_weight(cluster, ns, 25, slack).await;
        let before = route_json(cluster, ns).await.expect("route")["status"]["canary"].clone();
        let mut reports = vec![load.reset()];
        // A standby takes over a lease duration after the last renewal it saw: how long this
        // takes depends on when that was, which the log shows beside the failover's time.
        let held = lease(cluster);
        let killed_at = k8s_openapi::jiff::Timestamp::now();
        let (next, took) = kill_leader(cluster, &holder(&held)).await;
        eprintln!(
            "leader killed at step {} (weight 25) at {killed_at}, its Lease last renewed {}: {next} leads {took:?} later",
            before["step"], held["spec"]["renewTime"],
        );
        let leaderless = load.reset();
        let requests = count(&leaderless, "total");
        let (near, share, tolerance) = v2_share(&leaderless, 25);
        eprintln!("while no operator led: v2 answered {share:.1}% of {requests} requests");
        // However short the failover, enough requests to tell 25 % from the weights around it.
        assert!(requests >= 200, "{leaderless}");
        assert!(
            near,
            "the proxies kept the last weights: {share:.1}%, off 25 by more than {tolerance:.1}: {leaderless}"
        );
        reports.push(leaderless);

        // Every weight the rollout shows from here on, until it is promoted.
        let mut weights = vec![25];
        let deadline = Instant::now() + Duration::from_secs(INTERVAL_SECONDS * 6) + slack;
        let after = loop {
            let route = route_json(cluster, ns).await.expect("route");
            let (phase, weight) = canary_status(&route);
            if weights.last() != Some(&weight) {
                weights.push(weight);
            }
            if phase == "Promoted" {
                break route["status"]["canary"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "not promoted after the failover: weights {weights:?}, {route}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(weights, [25, 50, 100], "resumed at its step, one step per interval");
        assert_eq!(after["revision"], before["revision"], "the same run, not a new one: {after}");
        reports.push(load.reset());
        reports.push(load.stop());
        let (total, failed): (u64, u64) =
            reports.iter().fold((0, 0), |(t, f), r| (t + count(r, "total"), f + count(r, "failed")));
        assert_eq!(failed, 0, "requests failed across the failover ({total} sent)");
        eprintln!("failover mid-rollout: weights {weights:?}, {total} requests, 0 failed");
        watch.finish("leader killed mid-rollout");
    }

    /// A v2 with `env` (its faults) is rolled back within failureThreshold x interval plus
    /// one, the check saying `why`, and then every request reaches v1.
    async fn a_failing_canary_is_rolled_back(&self, env: &[&str], max_latency_ms: u32, why: &str) {
        let (cluster, ns) = (self.cluster, self.ns());
        let title = format!("rollback ({})", env.join(" "));
        // The user starts over: a new route (a new run) for the faulty v2.
        cluster.kubectl_ok(&["delete", "meshroute", "echo", "-n", ns, "--wait=true"]);
        let mut set_env = vec!["set", "env", "-n", ns, "deployment/echo-v2"];
        set_env.extend_from_slice(env);
        cluster.kubectl_ok(&set_env);
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, "deployment/echo-v2", "--timeout=180s"]);
        let load = start_load(cluster, &self.client, ns, &format!("load-failing-{max_latency_ms}")).await;
        let watch = Watch::start(cluster, ns);
        let threshold = 2;
        apply(cluster, &canary_route(ns, "[10, 25, 50]", threshold, max_latency_ms));
        let started = Instant::now();
        let bound = Duration::from_secs(INTERVAL_SECONDS * (u64::from(threshold) + 1));
        let phase = at_weight(cluster, ns, 0, bound + Duration::from_secs(INTERVAL_SECONDS)).await;
        let took = started.elapsed();
        assert_eq!(phase, "RolledBack");
        eprintln!("rolled back {took:?} after the route was applied (bound {bound:?})");
        let route = route_json(cluster, ns).await.expect("route");
        assert_eq!(condition(&route, "RolledBack"), Some(("True".into(), "FailedChecks".into())), "{route}");
        assert_eq!(condition(&route, "CanaryHealthy").map(|c| c.0), Some("False".into()), "{route}");
        let message = route["status"]["canary"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message}");
        // Within the bound, measured on the operator's own clock: from the run's start to the
        // phase change.
        let canary = &route["status"]["canary"];
        eprintln!("status.canary: {canary}");
        assert!(took <= bound + Duration::from_secs(2), "rolled back after {took:?}, bound {bound:?}");

        tokio::time::sleep(Duration::from_secs(2)).await;
        load.reset();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let after = load.stop();
        let requests = count(&after, "total");
        assert!(requests >= 500, "{after}");
        assert_eq!(
            answered_by(&after, "v1"),
            requests,
            "after the rollback every request reaches v1: {after}"
        );
        assert_eq!(count(&after, "failed"), 0, "{after}");
        eprintln!("after the rollback: {requests} requests, all to v1");
        let seen = events(cluster, ns);
        for reason in ["RolloutStarted", "CheckFailed", "RolledBack"] {
            assert!(seen.iter().any(|r| r == reason), "event {reason} missing: {seen:?}");
        }
        let table = watch.finish(&title);
        assert!(table.contains("RolledBack"), "{table}");
        cluster.kubectl_ok(&["delete", "events", "-n", ns, "--field-selector", "involvedObject.name=echo"]);
    }
}

#[tokio::test]
async fn canary_rollouts_promote_a_healthy_version_and_roll_back_a_failing_one() {
    let mesh = Mesh::install("").await;
    mesh.bad_canaries_get_a_clear_answer().await;
    mesh.a_healthy_canary_is_promoted_step_by_step().await;
    mesh.a_rollout_resumes_at_its_step_after_the_leader_is_killed().await;
    mesh.a_failing_canary_is_rolled_back(&["FAIL_RATE=0.2"], 500, "success rate").await;
    // Slow rather than failing: 200 ms added to every answer, 100 ms allowed.
    mesh.a_failing_canary_is_rolled_back(&["FAIL_RATE=0", "DELAY=200ms"], 100, "p99").await;
}
