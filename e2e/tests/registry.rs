//! Images the way a cluster gets them: from a registry, by name. The node pulls from the local
//! cluster's registry (CNCF Distribution, TLS from the cluster CA), `braid.dev/NAME` through it as
//! that name's mirror and the registry's own address directly; Braid's images carry their labels
//! and dependency list; `make push` and `make chart` publish images and chart to a repository that
//! `helm install oci://...` then installs from. What is not there is refused with the reason.

use std::process::Command;
use std::time::Duration;

use braid_e2e::registry::Registry;
use braid_e2e::{Cluster, eventually, make, repo_root};
use serde_json::Value;

const BUSYBOX: &str = "braid.dev/busybox:e2e";
const PROXY: &str = "braid.dev/braid-proxy:dev";

/// A pod running `image` (busybox's sh, or the image's entrypoint with `args`), never restarted.
fn pod(ns: &str, name: &str, image: &str, args: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
    - {{ name: main, image: "{image}", imagePullPolicy: Always{args} }}
"#
    )
}

fn pod_json(cluster: &Cluster, ns: &str, name: &str) -> Value {
    let out = cluster.kubectl_ok(&["get", "pod", name, "-n", ns, "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|err| panic!("pod {name}: {err}: {out}"))
}

/// The pod's phase once it has Succeeded or Failed, with its container's image ID.
async fn finished(cluster: &Cluster, ns: &str, name: &str) -> (String, String) {
    eventually(Duration::from_secs(90), &format!("pod {name} to finish"), || async {
        let pod = pod_json(cluster, ns, name);
        let phase = pod["status"]["phase"].as_str()?.to_owned();
        let image_id =
            pod["status"]["containerStatuses"][0]["imageID"].as_str().unwrap_or_default().to_owned();
        (phase == "Succeeded" || phase == "Failed").then_some((phase, image_id))
    })
    .await
}

#[tokio::test]
async fn the_node_pulls_by_name_through_the_mirror_and_by_the_registrys_address() {
    let (cluster, _client, ns) = braid_e2e::setup("e2e-registry-pull").await;
    let registry = Registry::get();
    registry.require_pushed(BUSYBOX);
    // An image only this test has: a copy of busybox under a new name, so the node cannot have
    // it already and must pull it.
    let name = format!("{}-pulled", ns.name);
    let copy = format!("{}/{name}:v1", registry.address);
    registry.crane_ok(&["copy", &format!("{}/busybox:e2e", registry.address), &copy]);
    let digest = registry.crane_ok(&["digest", &copy]).trim().to_owned();

    let by_mirror = format!("braid.dev/{name}:v1");
    let by_address = copy.clone();
    let command = ", command: [sh, -c, 'test -x /bin/busybox && echo pulled']";
    for (pod_name, image) in [("by-mirror", &by_mirror), ("by-address", &by_address)] {
        braid_e2e::mesh::apply(cluster, &pod(&ns.name, pod_name, image, command));
        let (phase, image_id) = finished(cluster, &ns.name, pod_name).await;
        let logs = cluster.kubectl_ok(&["logs", "-n", &ns.name, pod_name]);
        eprintln!("{image}: {phase}, imageID {image_id}, printed {}", logs.trim());
        assert_eq!(phase, "Succeeded", "{image}: {logs}");
        assert!(image_id.ends_with(&digest), "{image} ran {image_id}, not the pushed {digest}");
    }

    // Not in the registry: the pull fails with the registry's answer, and nothing else is asked.
    let missing = format!("braid.dev/{name}:missing");
    braid_e2e::mesh::apply(cluster, &pod(&ns.name, "missing", &missing, ""));
    let reason = eventually(Duration::from_secs(60), "the missing image's pull to fail", || async {
        let pod = pod_json(cluster, &ns.name, "missing");
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        let reason = waiting["reason"].as_str()?;
        (reason == "ErrImagePull" || reason == "ImagePullBackOff")
            .then(|| format!("{reason}: {}", waiting["message"].as_str().unwrap_or_default()))
    })
    .await;
    eprintln!("{missing}: {reason}");
    assert!(reason.contains("not found"), "the registry's 'not found' is the reason: {reason}");
}

#[tokio::test]
async fn braids_images_carry_their_labels_and_the_crates_they_are_built_from() {
    let registry = Registry::get();
    registry.require_pushed(PROXY);
    let reference = format!("{}/braid-proxy:dev", registry.address);
    let config: Value = serde_json::from_str(&registry.crane_ok(&["config", &reference])).unwrap();
    let labels = &config["config"]["Labels"];
    eprintln!("{reference}: {labels}");
    assert_eq!(labels["org.opencontainers.image.title"], "braid-proxy");
    let version = braid_e2e::app_version();
    assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
    let head =
        Command::new("git").args(["-C", &repo_root().display().to_string(), "rev-parse", "HEAD"]).output();
    if let Ok(head) = head
        && head.status.success()
    {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
        assert!(revision.starts_with(&head), "revision {revision} is not this checkout's {head}");
    }
    assert_eq!(config["architecture"], "amd64");

    // The dependency list, read out of the image's layer as a scanner would.
    let dir = std::env::temp_dir().join(format!("braid-e2e-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("proxy.tar");
    registry.crane_ok(&["export", &reference, &tar.display().to_string()]);
    let list = Command::new("tar")
        .args(["-xOf", &tar.display().to_string(), "usr/share/doc/braid/braid-proxy.dependencies"])
        .output()
        .expect("tar runs");
    let _ = std::fs::remove_dir_all(&dir);
    let list = String::from_utf8_lossy(&list.stdout);
    let lines: Vec<&str> = list.lines().collect();
    eprintln!("{} crates, e.g. {:?}", lines.len(), &lines[..lines.len().min(3)]);
    let own = format!("braid-proxy v{version} Apache-2.0");
    for crate_line in [own.as_str(), "hyper v1.", "rustls v0.23."] {
        assert!(lines.iter().any(|l| l.starts_with(crate_line)), "no {crate_line:?} in:\n{list}");
    }
    assert!(!list.contains(" ("), "paths or markers left in the list:\n{list}");
    assert!(!lines.iter().any(|l| l.starts_with("kube ")), "the proxy does not link kube:\n{list}");
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn make_push_and_make_chart_publish_what_helm_installs_from_oci() {
    let cluster = Cluster::get();
    let registry = Registry::get();
    let version = braid_e2e::app_version();
    let chart_version = braid_e2e::chart_version();
    for image in [format!("braid.dev/braid-operator:{version}"), format!("braid.dev/braid-webhook:{version}")]
    {
        registry.require_pushed(&image);
    }
    registry.require_pushed(PROXY);
    let repo = format!("{}/e2e-publish", registry.address);
    let ca = format!("REGISTRY_CA={}", registry.ca);
    let push = make(&["push", &format!("IMAGE_REPO={repo}"), &ca]);
    assert!(push.status.success(), "make push: {}", text(&push));
    // The very images the node runs in the other tests: same manifests, so the same digests.
    for name in ["braid-operator", "braid-webhook", "braid-proxy"] {
        let published = registry.crane_ok(&["digest", &format!("{repo}/{name}:{version}")]);
        let local = registry.crane_ok(&["digest", &format!("{}/{name}:{version}", registry.address)]);
        assert_eq!(published, local, "{name}: make push pushed another image than make images");
    }
    let chart = make(&["chart", &format!("IMAGE_REPO={repo}"), &ca]);
    let printed = text(&chart);
    assert!(chart.status.success(), "make chart: {printed}");
    let install = format!("helm install braid oci://{repo}/charts/braid --version {chart_version}");
    assert!(printed.contains(&install), "make chart says how to install: {printed}");

    // What `helm install oci://...` would apply: the chart from the registry, its images from
    // the same repository, the sidecars' included.
    let oci = format!("oci://{repo}/charts/braid");
    let output =
        cluster.helm(&["template", "braid", &oci, "--version", &chart_version, "--ca-file", &registry.ca]);
    let rendered = text(&output);
    assert!(output.status.success(), "helm template {oci}: {rendered}");
    for name in ["braid-operator", "braid-webhook", "braid-proxy"] {
        let image = format!("{name}:{version}");
        assert!(
            rendered.contains(&format!("{repo}/{image}")),
            "{oci} does not run {repo}/{image}:\n{rendered}"
        );
    }
    assert!(!rendered.contains("braid.dev/braid-"), "an image left at the default registry:\n{rendered}");

    // Bad input: no repository, or one that is not a repository, is refused with the usage.
    let none = make(&["push"]);
    assert!(
        !none.status.success() && text(&none).contains("usage: make push IMAGE_REPO="),
        "{}",
        text(&none)
    );
    let none = make(&["chart"]);
    assert!(
        !none.status.success() && text(&none).contains("usage: make chart IMAGE_REPO="),
        "{}",
        text(&none)
    );
    for bad in
        ["https://registry.example.com/braid", "registry.example.com/braid/", "registry.example.com/Braid:1"]
    {
        let push = make(&["push", &format!("IMAGE_REPO={bad}")]);
        assert!(
            !push.status.success() && text(&push).contains("--push-to needs a repository"),
            "{}",
            text(&push)
        );
        let chart = make(&["chart", &format!("IMAGE_REPO={bad}")]);
        assert!(
            !chart.status.success() && text(&chart).contains("a repository: no scheme"),
            "{}",
            text(&chart)
        );
    }
    // A registry that is not there: the push fails with crane's reason, nothing half-written.
    let gone = make(&["push", "IMAGE_REPO=127.0.0.1:9/braid"]);
    assert!(!gone.status.success(), "a push to a closed port succeeded: {}", text(&gone));
    assert!(text(&gone).contains("127.0.0.1:9"), "the failed push names the registry: {}", text(&gone));
}
