//! What the mesh reads from a pod, the same way in the webhook (at injection) and the operator's
//! discovery (the pod's inbound policy, the workload its endpoints are labelled with).

use braid_api::config::{ProbeConfig, Workload, WorkloadKind};
use braid_api::contract::PROXY_CONTAINER;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

/// The workload that controls `pod`, from its controller reference: a ReplicaSet made by a
/// Deployment (its name is the Deployment's plus `-` and the pod's `pod-template-hash`) gives
/// the Deployment, any other ReplicaSet itself; StatefulSet, DaemonSet and Job themselves. None
/// for a pod without a controller or with another kind of one.
pub fn controlling_workload(pod: &Pod) -> Option<Workload> {
    let owner =
        pod.metadata.owner_references.iter().flatten().find(|owner| owner.controller == Some(true))?;
    let hash = pod.metadata.labels.as_ref().and_then(|labels| labels.get("pod-template-hash"));
    let (kind, name) = match owner.kind.as_str() {
        "ReplicaSet" => match hash.and_then(|hash| owner.name.strip_suffix(hash.as_str())?.strip_suffix('-'))
        {
            Some(deployment) => (WorkloadKind::Deployment, deployment),
            None => (WorkloadKind::ReplicaSet, owner.name.as_str()),
        },
        "StatefulSet" => (WorkloadKind::StatefulSet, owner.name.as_str()),
        "DaemonSet" => (WorkloadKind::DaemonSet, owner.name.as_str()),
        "Job" => (WorkloadKind::Job, owner.name.as_str()),
        _ => return None,
    };
    (!name.is_empty()).then(|| Workload { kind, name: name.to_owned() })
}
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The HTTP probes the kubelet sends to the pod's app containers (not the proxy's own), as port
/// and request target. The kubelet cannot speak mTLS, so the proxy admits exactly these in
/// plaintext. A probe without a path requests "/"; a named port is looked up in the container's
/// ports, and one that names no port is left out (the kubelet cannot send it either).
pub fn http_probes(spec: &PodSpec) -> Vec<ProbeConfig> {
    let mut probes = Vec::new();
    for container in spec.containers.iter().filter(|c| c.name != PROXY_CONTAINER) {
        let declared = [&container.readiness_probe, &container.liveness_probe, &container.startup_probe];
        for http in declared.into_iter().flatten().filter_map(|probe| probe.http_get.as_ref()) {
            let port = match &http.port {
                IntOrString::Int(port) => u16::try_from(*port).ok().filter(|port| *port != 0),
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            if let Some(port) = port {
                let path = http.path.as_deref().filter(|path| !path.is_empty()).unwrap_or("/");
                probes.push(ProbeConfig { port, path: kubelet_request_target(path) });
            }
        }
    }
    probes.sort_by(|a, b| (a.port, &a.path).cmp(&(b.port, &b.path)));
    probes.dedup();
    probes
}

/// The request target the kubelet (Go's net/url) sends for a probe's `path`: bytes a path may
/// not carry are percent-encoded, escapes already written stay as written, and the query (after
/// `?`) is sent as it is. The proxy admits exactly this target.
pub fn kubelet_request_target(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let bytes = path.as_bytes();
    let mut target = String::with_capacity(path.len() + 2);
    if !path.starts_with('/') {
        target.push('/');
    }
    for (i, &byte) in bytes.iter().enumerate() {
        let escape =
            byte == b'%' && bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        if escape || byte.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@!*'()".contains(&byte) {
            target.push(char::from(byte));
        } else {
            target.push_str(&format!("%{byte:02X}"));
        }
    }
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_read_by_number_or_name_and_without_a_path_ask_for_the_root() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "app", "ports": [{"name": "admin", "containerPort": 9000}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                 "livenessProbe": {"httpGet": {"port": "admin"}},
                 "startupProbe": {"httpGet": {"path": "/ready", "port": 8080}}},
                {"name": "other", "livenessProbe": {"httpGet": {"path": "/x", "port": "missing"}}},
                {"name": "tcp", "livenessProbe": {"tcpSocket": {"port": 5432}}},
                {"name": "braid-proxy", "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}}}
            ]
        }))
        .unwrap();
        let probes = http_probes(&spec);
        let found: Vec<(u16, &str)> = probes.iter().map(|p| (p.port, p.path.as_str())).collect();
        assert_eq!(found, [(8080, "/ready"), (9000, "/")]);
    }

    #[test]
    fn probe_paths_are_what_the_kubelet_puts_on_the_wire() {
        for (path, sent) in [
            ("/healthz", "/healthz"),
            ("/ready?full=1&x=a b", "/ready?full=1&x=a b"),
            ("/a b/\u{fc}", "/a%20b/%C3%BC"),
            ("/already%20escaped", "/already%20escaped"),
            ("/100%", "/100%25"),
            ("healthz", "/healthz"),
        ] {
            assert_eq!(kubelet_request_target(path), sent, "{path}");
        }
    }
}
