//! Upgrading Braid as a user does, under traffic. The previous release (its images and chart built
//! from its own sources by e2e/upgrade/previous-release.sh) and this checkout's (`make push`, `make
//! chart`) are published to one repository of the local cluster's registry; the previous one is
//! installed with `helm install braid oci://…`, meshed echo servers and a meshed load client run its
//! proxies, and then `helm upgrade` moves the control plane to this release while the client sends.
//! What docs/upgrades.md promises is checked:
//! - no request fails: during the upgrade, the route change after it and the restart of the servers;
//! - proxies of the previous release keep working with the new control plane: the new leader
//!   counts them connected (the Mesh's status, by version), sends them a route change they apply,
//!   and renews their certificates (short lifetimes, so renewals fall inside the test);
//! - restarted pods get this release's proxies, which take mTLS from the previous release's client.
//!
//! Needs the node and the images (`make e2e` brings both). A test binary of its own: it installs
//! the chart, which owns the cluster's single Mesh.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use braid_e2e::mesh::{
    LoadRun, LoadSpec, RELEASE, Release, Sidecar, Window, assert_overlaps, by_version, check_prerequisites,
    count, deploy_meshed_echo, lease_holder, programmed, split, url, workloads,
};
use braid_e2e::registry::Registry;
use braid_e2e::{Cluster, as_a_user, chart_version, eventually, http_get, metric_value, repo_root, setup};
use serde_json::Value;

/// Workload certificates live a minute, so every proxy renews its certificate from the new
/// operator within the test; the same values go to install and upgrade, as a user's values file.
const VALUES: [&str; 1] = ["mesh.spec.identity.workloadLifetime=1m"];
/// Echo servers of each version.
const REPLICAS: u32 = 2;
/// The load client's requests per second.
const RATE: u32 = 50;
/// The operator's admin port (metrics), as the chart sets it.
const OPERATOR_ADMIN_PORT: u16 = 9990;

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `program` with `args` in the repository as a user would (`as_a_user`), its stderr shown
/// as it comes (a cold build takes minutes), stopped after `limit`; its stdout.
fn run_as_a_user(program: &str, args: &[&str], limit: Duration, ca: &str) -> String {
    let started = Instant::now();
    eprintln!("running {program} {}", args.join(" "));
    let output = as_a_user(Command::new("timeout"))
        .args(["--kill-after=10s", &format!("{}s", limit.as_secs()), program])
        .args(args)
        .current_dir(repo_root())
        .env("REGISTRY_CA", ca)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("cannot run timeout {program}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}; exit 124 is the {limit:?} limit), see its output above: {stdout}",
        output.status
    );
    eprintln!("{program} {} done in {:.1?}", args.first().copied().unwrap_or_default(), started.elapsed());
    stdout
}

/// The previous release's images and chart, pushed to `repo`; its chart version. Where they are not
/// built yet (`make previous-release`; `make test` builds them beside the tests), this builds them
/// (about 10 min on two cores), or waits for the build in progress.
fn publish_previous(registry: &Registry, repo: &str) -> String {
    let script = repo_root().join("e2e/upgrade/previous-release.sh").display().to_string();
    let out = run_as_a_user("bash", &[&script, "publish", repo], Duration::from_secs(1800), &registry.ca);
    out.lines().last().unwrap_or_default().trim().to_owned()
}

/// This checkout's images and chart, pushed to `repo` with `make push` and `make chart`; its chart
/// version.
fn publish_current(registry: &Registry, repo: &str) -> String {
    let image_repo = format!("IMAGE_REPO={repo}");
    for target in ["push", "chart"] {
        let args = ["--no-print-directory", target, &image_repo];
        run_as_a_user("make", &args, Duration::from_secs(900), &registry.ca);
    }
    chart_version()
}

/// `f` of each pod `selector` selects in `ns` that is not being deleted, by pod name.
fn per_pod<T>(cluster: &Cluster, ns: &str, selector: &str, f: impl Fn(&Value) -> T) -> BTreeMap<String, T> {
    let out = cluster.kubectl_ok(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"]);
    let pods: Value = serde_json::from_str(&out).unwrap_or_else(|err| panic!("pods {selector}: {err}"));
    let items = pods["items"].as_array().into_iter().flatten();
    items
        .filter(|pod| !pod["metadata"]["deletionTimestamp"].is_string())
        .map(|pod| (pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(), f(pod)))
        .collect()
}

/// The image of the container (or init container) named `container` in the pods `selector`
/// selects in `ns`.
fn images_of(cluster: &Cluster, ns: &str, selector: &str, container: &str) -> BTreeMap<String, String> {
    per_pod(cluster, ns, selector, |pod| {
        let spec = &pod["spec"];
        let all =
            spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten();
        let image = all.filter(|c| c["name"] == container).find_map(|c| c["image"].as_str());
        image.unwrap_or("(none)").to_owned()
    })
}

/// The Mesh's connected proxies by version, as the leading operator last wrote them.
fn proxy_versions(cluster: &Cluster) -> BTreeMap<String, u64> {
    let out = cluster.kubectl_ok(&["get", "mesh", "default", "-o", "jsonpath={.status.proxies.versions}"]);
    serde_json::from_str::<BTreeMap<String, u64>>(&out).unwrap_or_default()
}

/// The proxy admin port (/identity), as every sidecar serves it.
const PROXY_ADMIN_PORT: u16 = 4191;
/// How far back the operator dates a certificate's notBefore (clock skew between nodes).
const NOT_BEFORE_BACKDATE: u64 = 60;

/// For each running pod `selector` selects in `ns`: when its proxy's workload certificate was
/// issued (seconds since the epoch, from its admin /identity), None while it does not answer.
fn certificates_issued_at(cluster: &Cluster, ns: &str, selector: &str) -> BTreeMap<String, Option<u64>> {
    per_pod(cluster, ns, selector, |pod| {
        pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .and_then(|ip| http_get(std::net::SocketAddr::new(ip, PROXY_ADMIN_PORT), "/identity"))
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|identity| identity["notBefore"].as_u64())
            .map(|not_before| not_before + NOT_BEFORE_BACKDATE)
    })
}

/// `jsonpath` of the operator pods, terminating ones included.
fn operator_pods(cluster: &Cluster, jsonpath: &str) -> String {
    let selector = "app.kubernetes.io/component=operator";
    cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "braid-system",
        "-l",
        selector,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// Workload certificates issued by the operators running now, summed over their pods.
fn certificates_issued(cluster: &Cluster) -> f64 {
    let ips = operator_pods(cluster, "{.items[*].status.podIP}");
    ips.split_whitespace()
        .filter_map(|ip| ip.parse().ok())
        .filter_map(|ip| http_get(std::net::SocketAddr::new(ip, OPERATOR_ADMIN_PORT), "/metrics"))
        .filter_map(|(_, metrics)| metric_value(&metrics, "braid_identity_issued_total"))
        .sum()
}

fn helm_ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.helm(args);
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}\n{}",
        text(&output),
        cluster.kubectl_ok(&["get", "pods", "-n", "braid-system", "-o", "wide"])
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `helm install` or `helm upgrade` of release braid from `oci` at `version`, waiting for it.
fn helm_release(cluster: &Cluster, verb: &str, oci: &str, version: &str, ca: &str) -> Duration {
    let started = Instant::now();
    let mut args = vec![verb, RELEASE, oci, "--version", version, "--ca-file", ca, "-n", "braid-system"];
    args.extend(["--create-namespace", "--wait", "--timeout", "5m"]);
    for value in VALUES {
        args.extend(["--set", value]);
    }
    helm_ok(cluster, &args);
    started.elapsed()
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_release_under_traffic_loses_no_request() {
    let (cluster, client, apps) = setup("e2e-upgrade").await;
    check_prerequisites(cluster);
    let registry = Registry::get();
    let repo = format!("{}/e2e-upgrade", registry.address);
    let previous = publish_previous(&registry, &repo);
    let current = publish_current(&registry, &repo);
    assert_ne!(
        previous, current,
        "this checkout's chart has the previous release's version: bump version and appVersion in helm/braid/Chart.yaml"
    );
    let oci = format!("oci://{repo}/charts/braid");
    // What the images are tagged with and the proxies report: the chart's appVersion (the previous
    // release's is its chart version too).
    let app = braid_e2e::app_version();

    // The previous release, as its users installed it.
    eprintln!("removing any release of braid and the Mesh another test left");
    let _ = cluster.helm(&["uninstall", RELEASE, "-n", "braid-system", "--ignore-not-found", "--wait"]);
    let _ = cluster.kubectl(&["delete", "mesh", "default", "--ignore-not-found", "--timeout=120s"]);
    eprintln!("helm install {oci} --version {previous}");
    let took = helm_release(cluster, "install", &oci, &previous, &registry.ca);
    let _release = Release::installed(cluster);
    eprintln!("helm install {oci} --version {previous}: {took:.1?}");
    let previous_proxy = format!("{repo}/braid-proxy:{previous}");
    let current_proxy = format!("{repo}/braid-proxy:{app}");
    let operators = images_of(cluster, "braid-system", "app.kubernetes.io/component=operator", "operator");
    assert!(
        !operators.is_empty()
            && operators.values().all(|i| *i == format!("{repo}/braid-operator:{previous}")),
        "the previous release's operators: {operators:?}"
    );

    let ns = apps.name.as_str();
    let retries = "      retries: { attempts: 3, retryOn: [\"connect-failure\"] }\n";
    let yaml = [workloads(ns, REPLICAS), split(ns, 50, 50, retries)].join("\n---\n");
    deploy_meshed_echo(cluster, ns, &yaml, "300s");
    programmed(cluster, ns).await;
    let sidecars = images_of(cluster, ns, "app=echo", "braid-proxy");
    assert!(
        sidecars.len() == 2 * REPLICAS as usize && sidecars.values().all(|i| *i == previous_proxy),
        "the echo pods run the previous release's proxy {previous_proxy}: {sidecars:?}"
    );
    let load_url = url(ns, "/");
    let spec = LoadSpec {
        name: "upgrade-load",
        account: "client",
        sidecar: Sidecar::MeshedDebug,
        url: &load_url,
        rate: RATE,
        extra: &[],
        probe: false,
    };
    let load = LoadRun::start(cluster, &client, ns, spec).await;
    load.answered().await;
    let client_proxy = images_of(cluster, ns, "app=load", "braid-proxy");
    assert_eq!(client_proxy.values().collect::<Vec<_>>(), [&previous_proxy], "the load client's proxy");
    let meshed = 2 * REPLICAS as u64 + 1;
    eventually(Duration::from_secs(60), "every proxy connected to the previous operator", || async {
        (proxy_versions(cluster).get(&previous) == Some(&meshed)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every window of the load client's report (POST /reset starts a new one), so that none of its
    // requests goes uncounted.
    let windows = Mutex::new(Vec::new());
    let next_window = || windows.lock().unwrap_or_else(|e| e.into_inner()).push(load.reset());
    next_window();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The upgrade, under load.
    let (took, upgrade) =
        Window::of(async { helm_release(cluster, "upgrade", &oci, &current, &registry.ca) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.reset();
    assert_overlaps(&during, "ok", upgrade, "the load client during the upgrade");
    windows.lock().unwrap_or_else(|e| e.into_inner()).push(during);
    eprintln!("helm upgrade to {current}: {took:.1?}");
    let new_operator = format!("{repo}/braid-operator:{app}");
    let operators = images_of(cluster, "braid-system", "app.kubernetes.io/component=operator", "operator");
    assert!(
        operators.values().all(|i| *i == new_operator),
        "after the upgrade, only this release's operators run: {operators:?}"
    );
    let webhooks = images_of(cluster, "braid-system", "app.kubernetes.io/component=webhook", "webhook");
    assert!(
        !webhooks.is_empty() && webhooks.values().all(|i| *i == format!("{repo}/braid-webhook:{app}")),
        "after the upgrade, only this release's webhooks run: {webhooks:?}"
    );
    // Every operator replica issues certificates: from when the last of the previous release's
    // operators is gone (terminating ones included), a new certificate comes from this release.
    eventually(Duration::from_secs(90), "the previous release's operators to be gone", || async {
        let out = operator_pods(cluster, "{.items[*].spec.containers[0].image}");
        out.split_whitespace().all(|image| image == new_operator).then_some(())
    })
    .await;
    let previous_operators_gone_at = braid_e2e::mesh::unix_ms().div_ceil(1000);
    let leader = eventually(Duration::from_secs(60), "a new operator to lead", || async {
        let holder = lease_holder(cluster);
        operators.contains_key(&holder).then_some(holder)
    })
    .await;
    // The new leader counts the previous release's proxies connected to it.
    let started = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the previous release's proxies to connect to the new leader",
        || async { (proxy_versions(cluster).get(&previous) == Some(&meshed)).then_some(()) },
    )
    .await;
    eprintln!(
        "{leader} leads; {meshed} proxies of {previous} connected to it ({:.1?} after the upgrade)",
        started.elapsed()
    );

    // A route change the new operator makes reaches the previous release's proxies.
    let change = Instant::now();
    braid_e2e::mesh::apply(cluster, &split(ns, 0, 100, retries));
    programmed(cluster, ns).await;
    let moved =
        eventually(Duration::from_secs(60), "the old client proxy to apply the new weights", || async {
            next_window();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let report = load.report()?;
            let versions = by_version(&report);
            (count(&report, "ok") > 0 && !versions.contains_key("v1")).then_some(versions)
        })
        .await;
    eprintln!(
        "the 0/100 split reached the {previous} client proxy within {:.1?}: {moved:?}",
        change.elapsed()
    );

    // The previous release's proxies renew their certificates from the new operators: each one's
    // current certificate was issued after the last previous-release operator was gone.
    let renewal = Instant::now();
    let renewed = eventually(
        Duration::from_secs(120),
        &format!("every {previous} proxy to renew from the new operators"),
        || async {
            let mut all = certificates_issued_at(cluster, ns, "app=echo");
            all.extend(certificates_issued_at(cluster, ns, "app=load"));
            (all.len() as u64 == meshed
                && all.values().all(|at| at.is_some_and(|at| at >= previous_operators_gone_at)))
            .then_some(all)
        },
    )
    .await;
    assert_eq!(
        proxy_versions(cluster).get(&app),
        None,
        "no proxy of {app} runs yet, so the certificates went to proxies of {previous}"
    );
    eprintln!(
        "every {previous} proxy renewed its certificate from the new operators within {:.1?} ({} issued by them): {renewed:?}",
        renewal.elapsed(),
        certificates_issued(cluster)
    );

    // The servers restarted: the new webhook gives them this release's proxy, the old client's
    // proxy keeps sending to them over mTLS.
    let restart = Instant::now();
    cluster.kubectl_ok(&["rollout", "restart", "-n", ns, "deployment/echo-v1", "deployment/echo-v2"]);
    for deployment in ["deployment/echo-v1", "deployment/echo-v2"] {
        cluster.kubectl_ok(&["rollout", "status", "-n", ns, deployment, "--timeout=300s"]);
    }
    let sidecars = images_of(cluster, ns, "app=echo", "braid-proxy");
    assert!(
        sidecars.len() == 2 * REPLICAS as usize && sidecars.values().all(|i| *i == current_proxy),
        "restarted echo pods run this release's proxy {current_proxy}: {sidecars:?}"
    );
    let mixed = BTreeMap::from([(app.clone(), 2 * REPLICAS as u64), (previous.clone(), 1)]);
    eventually(Duration::from_secs(60), "both versions' proxies connected", || async {
        (proxy_versions(cluster) == mixed).then_some(())
    })
    .await;
    eprintln!(
        "echo restarted with {current_proxy} in {:.1?}; proxies by version {mixed:?}",
        restart.elapsed()
    );
    next_window();
    eventually(Duration::from_secs(30), "the old client to be answered by the new servers", || async {
        (count(&load.report()?, "ok") >= u64::from(RATE)).then_some(())
    })
    .await;

    let last = load.stop();
    let mut windows = windows.into_inner().unwrap_or_else(|e| e.into_inner());
    windows.push(last);
    let sent: u64 = windows.iter().map(|r| count(r, "total")).sum();
    let failed: u64 = windows.iter().map(|r| count(r, "failed")).sum();
    eprintln!("upgrade {previous} -> {current} under load: {sent} requests sent, {failed} failed");
    let failures: Vec<&Value> = windows.iter().filter(|r| count(r, "failed") > 0).collect();
    assert_eq!(failed, 0, "requests failed across the upgrade: {failures:?}");
    assert!(
        sent >= u64::from(RATE) * 30,
        "the load client sent {sent} requests, fewer than 30 s of its rate"
    );
}
