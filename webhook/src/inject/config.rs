//! What injection needs to know besides the pod: the Mesh's proxy settings and where the control
//! plane is.

use braid_api::config::DefaultInboundPolicy;
use braid_crds::mesh::{MeshSpec, ProxyResources};

/// Where the proxy finds the identity and discovery services of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub identity_addr: String,
    pub discovery_addr: String,
}

impl Default for ControlPlane {
    fn default() -> Self {
        // Service names without the cluster domain, which is not always cluster.local; the pod's
        // resolv.conf search path completes them.
        Self {
            identity_addr: "braid-identity.braid-system.svc:8080".to_owned(),
            discovery_addr: "braid-discovery.braid-system.svc:8086".to_owned(),
        }
    }
}

/// Everything injection needs to know besides the pod: the Mesh's proxy settings, the proxy
/// version and the control plane's addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    pub proxy_image: String,
    pub proxy_version: String,
    pub log_level: String,
    pub resources: ProxyResources,
    pub trust_domain: String,
    /// What the pod admits when no MeshPolicy selects it, unless its annotation says otherwise.
    pub default_inbound_policy: DefaultInboundPolicy,
    pub control_plane: ControlPlane,
}

impl InjectConfig {
    pub fn from_mesh(mesh: &MeshSpec, proxy_version: &str, control_plane: &ControlPlane) -> Self {
        Self {
            proxy_image: mesh.proxy.image.clone(),
            proxy_version: proxy_version.to_owned(),
            log_level: mesh.proxy.log_level.clone(),
            resources: mesh.proxy.resources.clone(),
            trust_domain: mesh.trust_domain.clone(),
            default_inbound_policy: mesh.default_inbound_policy,
            control_plane: control_plane.clone(),
        }
    }

    /// The settings of a cluster without a Mesh object: the Mesh CRD's own defaults.
    pub fn defaults(proxy_version: &str, control_plane: &ControlPlane) -> Self {
        Self::from_mesh(&MeshSpec::default(), proxy_version, control_plane)
    }
}
