//! What the webhook writes on a meshed pod so that metrics can be read by workload: the labels
//! naming the workload that owns the pod (as Linkerd's `linkerd.io/proxy-deployment` and friends,
//! which Prometheus relabelling turns into `deployment`, `statefulset`, … and which Flagger's
//! queries filter on), and the annotations a standard Kubernetes scrape job looks for.

use braid_api::contract::ADMIN_PORT;
use k8s_openapi::api::core::v1::Pod;

/// The label prefix: `braid.dev/proxy-deployment`, `braid.dev/proxy-statefulset`, …
pub const WORKLOAD_LABEL_PREFIX: &str = "braid.dev/proxy-";
pub const SCRAPE: &str = "prometheus.io/scrape";
pub const SCRAPE_PORT: &str = "prometheus.io/port";
pub const SCRAPE_PATH: &str = "prometheus.io/path";
/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// The workload labels for `pod`, from its controller (`braid_crds::pod::controlling_workload`):
/// `proxy-deployment`, `proxy-replicaset`, `proxy-statefulset`, `proxy-daemonset` or
/// `proxy-job`. A pod without a controller, or whose workload's name would not fit a label
/// value, gets none.
pub fn workload_labels(pod: &Pod) -> Vec<(String, String)> {
    match braid_crds::pod::controlling_workload(pod) {
        Some(workload) if workload.name.len() <= MAX_LABEL_VALUE => {
            vec![(format!("{WORKLOAD_LABEL_PREFIX}{}", workload.kind.as_str()), workload.name)]
        }
        _ => Vec::new(),
    }
}

/// The scrape annotations for the proxy's admin port, unless the pod already says how it is
/// scraped (its app's own metrics): those stay, and a PodMonitor on the `braid-admin` port
/// reaches the proxy instead.
pub fn scrape_annotations(pod: &Pod) -> Vec<(&'static str, String)> {
    let already =
        pod.metadata.annotations.as_ref().is_some_and(|annotations| annotations.contains_key(SCRAPE));
    if already {
        return Vec::new();
    }
    vec![
        (SCRAPE, "true".to_owned()),
        (SCRAPE_PORT, ADMIN_PORT.to_string()),
        (SCRAPE_PATH, "/metrics".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(metadata: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": metadata, "spec": {"containers": []}})).expect("test pod")
    }

    fn owned_by(kind: &str, name: &str, labels: serde_json::Value) -> Pod {
        pod(json!({"labels": labels, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]}))
    }

    #[test]
    fn a_deployments_pod_is_labelled_with_the_deployment() {
        let pod = owned_by("ReplicaSet", "reviews-v2-7d9f8c6b5", json!({"pod-template-hash": "7d9f8c6b5"}));
        assert_eq!(
            workload_labels(&pod),
            [("braid.dev/proxy-deployment".to_owned(), "reviews-v2".to_owned())]
        );
    }

    #[test]
    fn other_controllers_name_themselves_and_a_bare_pod_gets_nothing() {
        let cases = [
            (owned_by("ReplicaSet", "legacy", json!({})), Some(("replicaset", "legacy"))),
            (owned_by("StatefulSet", "db", json!({})), Some(("statefulset", "db"))),
            (owned_by("DaemonSet", "agent", json!({})), Some(("daemonset", "agent"))),
            (owned_by("Job", "migrate", json!({})), Some(("job", "migrate"))),
            (owned_by("Workflow", "x", json!({})), None),
            (pod(json!({"name": "bare"})), None),
            (owned_by("StatefulSet", &"a".repeat(64), json!({})), None),
        ];
        for (pod, expected) in cases {
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(kind, name)| (format!("braid.dev/proxy-{kind}"), name.to_owned()))
                .collect();
            assert_eq!(workload_labels(&pod), expected);
        }
        // An owner that is not the controller does not count.
        let not_controller = pod(json!({"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u"}]}));
        assert!(workload_labels(&not_controller).is_empty());
    }

    #[test]
    fn scrape_annotations_point_at_the_admin_port_unless_the_pod_has_its_own() {
        let plain = pod(json!({}));
        let expected = [
            ("prometheus.io/scrape", "true".to_owned()),
            ("prometheus.io/port", "4191".to_owned()),
            ("prometheus.io/path", "/metrics".to_owned()),
        ];
        assert_eq!(scrape_annotations(&plain), expected);
        let own = pod(json!({"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}}));
        assert!(scrape_annotations(&own).is_empty());
    }
}
