//! The Braid mesh API, group `braid.dev`, version `v1alpha1`: the Rust types are the source of
//! truth, and the CRD YAML committed beside them is generated from them (`make crds`).

pub mod conditions;
pub mod duration;
pub mod externalservice;
pub mod mesh;
pub mod meshpolicy;
pub mod meshroute;
pub mod pod;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use externalservice::{MeshExternalService, MeshExternalServiceSpec};
pub use mesh::{Mesh, MeshSpec, MeshStatus};
pub use meshpolicy::{MeshPolicy, MeshPolicySpec, MeshPolicyStatus};
pub use meshroute::{CanaryPhase, CanaryStatus, MeshRoute, MeshRouteSpec, MeshRouteStatus};

/// Every CRD of the API, each with the file name it is committed under.
pub fn crds() -> Vec<(String, CustomResourceDefinition)> {
    [MeshRoute::crd(), MeshPolicy::crd(), Mesh::crd(), MeshExternalService::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), crd)
        })
        .collect()
}

/// Renders a CRD as the YAML document committed in crds/ and in the Helm chart.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!("# Generated from the Rust types in crds/src by `make crds`; do not edit.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_in_code_match_what_the_api_server_fills_in() {
        let from_empty: MeshSpec = serde_json::from_value(serde_json::json!({})).expect("empty spec");
        assert_eq!(MeshSpec::default(), from_empty);
        assert_eq!(MeshSpec::default().trust_domain, "cluster.local");
    }
}
