//! What the mesh reads from a meshed pod's spec, the same way in the webhook (at injection) and
//! the operator's discovery (for the pod's inbound policy).

use braid_api::config::ProbeConfig;
use braid_api::contract::PROXY_CONTAINER;
use k8s_openapi::api::core::v1::PodSpec;
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
                let path =
                    http.path.clone().filter(|path| !path.is_empty()).unwrap_or_else(|| "/".to_owned());
                probes.push(ProbeConfig { port, path });
            }
        }
    }
    probes.sort_by(|a, b| (a.port, &a.path).cmp(&(b.port, &b.path)));
    probes.dedup();
    probes
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
}
