//! Points the discovery Service at the leader. Only the leader serves discovery (so that one
//! process counts every proxy's acks); the chart's discovery Service has no selector, and the
//! leader writes its EndpointSlice with its own pod IP, as kube-apiserver does for the
//! `kubernetes` Service. A new leader overwrites it when it takes over.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::FIELD_MANAGER;

pub const MANAGED_BY: &str = "braid-operator";

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("Service {0} not found in the mesh namespace; the Helm chart creates it")]
    NoService(String),
    #[error("BRAID_POD_IP {0:?} is not an IP address")]
    BadIp(String),
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// The EndpointSlice that sends the Service's traffic to this pod, owned by the Service.
pub fn leader_slice(
    service: &Service,
    pod_name: &str,
    pod_ip: &str,
    port: u16,
) -> Result<serde_json::Value, EndpointError> {
    let ip: std::net::IpAddr = pod_ip.parse().map_err(|_| EndpointError::BadIp(pod_ip.to_owned()))?;
    let name = service.name_any();
    Ok(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-leader"),
            "namespace": service.namespace(),
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": name,
                "uid": service.meta().uid, "controller": true,
            }],
        },
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": service.namespace()},
        }],
        "ports": [{"name": "https-discovery", "port": port, "protocol": "TCP"}],
    }))
}

/// Writes the leader's EndpointSlice for Service `service` of `namespace`.
pub async fn point_at_self(
    client: &Client,
    namespace: &str,
    service: &str,
    pod_name: &str,
    pod_ip: &str,
    port: u16,
) -> Result<(), EndpointError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let found =
        services.get_opt(service).await?.ok_or_else(|| EndpointError::NoService(service.to_owned()))?;
    let slice = leader_slice(&found, pod_name, pod_ip, port)?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    slices
        .patch(
            &format!("{service}-leader"),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&slice),
        )
        .await?;
    tracing::debug!(%service, %pod_ip, "discovery Service points at this leader");
    Ok(())
}

/// Keeps the slice pointing here while leading: retried with backoff until written, then
/// re-applied every minute in case it was changed or deleted.
pub async fn keep_pointing_at_self(
    client: Client,
    namespace: String,
    service: String,
    pod_name: String,
    pod_ip: String,
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) {
    let backoff = crate::backoff::FailureBackoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    loop {
        let wait = match point_at_self(&client, &namespace, &service, &pod_name, &pod_ip, port).await {
            Ok(()) => {
                backoff.succeeded("discovery-endpoint");
                std::time::Duration::from_secs(60)
            }
            Err(err) => {
                let wait = backoff.failed("discovery-endpoint");
                tracing::warn!(%err, retry_in = ?wait, "cannot point the discovery Service at this leader");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "braid-discovery", "namespace": "braid-system", "uid": "u-1"}}),
        )
        .expect("service")
    }

    #[test]
    fn the_slice_names_the_leader_and_belongs_to_the_service() {
        let slice = leader_slice(&service(), "braid-operator-abc", "10.1.2.3", 8086).expect("valid");
        assert_eq!(slice["metadata"]["name"], "braid-discovery-leader");
        assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "braid-discovery");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["endpoints"][0]["addresses"][0], "10.1.2.3");
        assert_eq!(slice["endpoints"][0]["targetRef"]["name"], "braid-operator-abc");
        assert_eq!(slice["ports"][0]["port"], 8086);
        assert_eq!(leader_slice(&service(), "p", "fd00::1", 8086).expect("v6")["addressType"], "IPv6");
        assert!(matches!(leader_slice(&service(), "p", "not-an-ip", 8086), Err(EndpointError::BadIp(_))));
    }
}
