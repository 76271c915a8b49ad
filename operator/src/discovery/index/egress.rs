//! Egress in the index: the Mesh's egress settings and the MeshExternalServices, and the answer
//! for a destination outside the cluster: the external services a proxy of a namespace may call
//! on that port (its own namespace's first, then the mesh namespace's), and what happens to the
//! rest. Pure: the watches feed it, the tests call it with plain values.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use braid_api::config::egress::{
    EgressAction, EgressConfig, ExternalProtocol, ExternalServiceConfig, Network, TlsOrigination,
};
use braid_api::config::{Config, ServiceConfig};
use braid_crds::MeshExternalServiceSpec;
use braid_crds::externalservice::ExternalProtocol as CrdProtocol;
use braid_crds::mesh::{EgressMode, EgressSettings};

use super::Key;

#[derive(Debug, Clone, Default)]
pub struct EgressState {
    mode: EgressMode,
    cluster_networks: Vec<Network>,
    /// MeshExternalServices here apply to every namespace.
    mesh_namespace: String,
    services: BTreeMap<Key, Registered>,
}

/// A MeshExternalService as it was written, and its ports in the proxies' model, translated and
/// checked once when it changes rather than for every answer.
#[derive(Debug, Clone)]
struct Registered {
    spec: MeshExternalServiceSpec,
    ports: Vec<(u16, ExternalServiceConfig)>,
}

impl EgressState {
    pub fn new(mesh_namespace: &str) -> Self {
        let mut state = Self { mesh_namespace: mesh_namespace.to_owned(), ..Self::default() };
        state.set_settings(&EgressSettings::default());
        state
    }

    /// Whether anything changed.
    pub fn set_settings(&mut self, settings: &EgressSettings) -> bool {
        let networks: Vec<Network> = settings
            .cluster_networks
            .iter()
            .filter_map(|text| {
                text.parse()
                    .map_err(
                        |err| tracing::warn!(%err, "Mesh spec.egress.clusterNetworks: an entry is ignored"),
                    )
                    .ok()
            })
            .collect();
        let changed = self.mode != settings.mode || self.cluster_networks != networks;
        self.mode = settings.mode;
        self.cluster_networks = networks;
        changed
    }

    pub fn upsert(&mut self, key: Key, spec: MeshExternalServiceSpec) -> bool {
        if self.services.get(&key).is_some_and(|registered| registered.spec == spec) {
            return false;
        }
        let ports = spec
            .ports
            .iter()
            .filter_map(|port| {
                let number = u16::try_from(port.port).ok()?;
                Some((number, checked(external_service(&key, &spec, port), &key)?))
            })
            .collect();
        self.services.insert(key, Registered { spec, ports });
        true
    }

    pub fn remove(&mut self, key: &Key) -> bool {
        self.services.remove(key).is_some()
    }

    pub fn in_cluster(&self, ip: IpAddr) -> bool {
        self.cluster_networks.iter().any(|network| network.contains(ip))
    }

    /// The answer for `addr`, outside the cluster, to a proxy of namespace `client`; `None` when
    /// there is nothing to check (every destination allowed and none registered on the port):
    /// the proxy then forwards as it always did.
    pub fn answer(&self, addr: SocketAddr, client: &str) -> Option<ServiceConfig> {
        if self.in_cluster(addr.ip()) {
            return None;
        }
        let visible = self.services.iter().filter(|((namespace, _), _)| namespace == client).chain(
            self.services
                .iter()
                .filter(|((namespace, _), _)| namespace == &self.mesh_namespace && namespace != client),
        );
        let services: Vec<ExternalServiceConfig> = visible
            .flat_map(|(_, registered)| &registered.ports)
            .filter(|(port, _)| *port == addr.port())
            .map(|(_, service)| service.clone())
            .collect();
        let unregistered = match self.mode {
            EgressMode::AllowAny if services.is_empty() => return None,
            EgressMode::AllowAny => EgressAction::Allow,
            EgressMode::RegistryOnly => EgressAction::Deny,
        };
        Some(egress_service(format!("external:{addr}"), vec![addr], EgressConfig { unregistered, services }))
    }
}

/// A destination outside the cluster in the proxies' model: its egress, no backends or routes.
fn egress_service(name: String, addresses: Vec<SocketAddr>, egress: EgressConfig) -> ServiceConfig {
    ServiceConfig { name, addresses, egress: Some(egress), ..ServiceConfig::default() }
}

fn external_service(
    (namespace, name): &Key,
    spec: &MeshExternalServiceSpec,
    port: &braid_crds::externalservice::ExternalPort,
) -> ExternalServiceConfig {
    let protocol = match port.protocol {
        CrdProtocol::HTTP => ExternalProtocol::Http,
        CrdProtocol::TLS => ExternalProtocol::Tls,
        CrdProtocol::TCP => ExternalProtocol::Tcp,
    };
    ExternalServiceConfig {
        name: format!("{namespace}/{name}"),
        // A TCP connection names no host: told apart by address alone.
        hosts: if protocol == ExternalProtocol::Tcp { Vec::new() } else { spec.hosts.clone() },
        protocol,
        addresses: spec.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        tls: port.tls.as_ref().map(|tls| TlsOrigination {
            port: u16::try_from(tls.port).unwrap_or(0),
            server_name: tls.server_name.clone(),
            ca_bundle: tls.ca_bundle.clone(),
        }),
    }
}

/// The service, if the proxy's own check takes it: one the API server let through but the proxy
/// would refuse (an address that is no network, say) must not make the proxy refuse the whole
/// destination, and with it every other registration on the port.
fn checked(service: ExternalServiceConfig, key: &Key) -> Option<ExternalServiceConfig> {
    let alone = egress_service(
        "check".to_owned(),
        Vec::new(),
        EgressConfig { unregistered: EgressAction::Allow, services: vec![service.clone()] },
    );
    let config = Config { services: vec![alone], ..Config::empty() };
    match config.validate() {
        Ok(()) => Some(service),
        Err(err) => {
            tracing::warn!(namespace = %key.0, name = %key.1, %err, "MeshExternalService left out: proxies would refuse it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> MeshExternalServiceSpec {
        serde_json::from_value(value).expect("a MeshExternalService spec")
    }

    fn key(namespace: &str, name: &str) -> Key {
        (namespace.to_owned(), name.to_owned())
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    fn state() -> EgressState {
        let mut state = EgressState::new("braid-system");
        state.upsert(
            key("shop", "stripe"),
            spec(
                serde_json::json!({"hosts": ["api.stripe.com"], "ports": [{"port": 443, "protocol": "TLS"}]}),
            ),
        );
        state.upsert(
            key("braid-system", "web"),
            spec(serde_json::json!({"hosts": ["*.example.com"], "ports": [
                {"port": 80, "protocol": "HTTP", "tls": {"port": 443}},
                {"port": 443, "protocol": "TLS"}]})),
        );
        state.upsert(
            key("billing", "db"),
            spec(serde_json::json!({"hosts": ["db.example.net"], "addresses": ["203.0.113.0/24"],
                                     "ports": [{"port": 5432, "protocol": "TCP"}]})),
        );
        state
    }

    fn names(config: &ServiceConfig) -> Vec<String> {
        config.egress.as_ref().expect("egress").services.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn a_proxy_gets_its_namespaces_services_then_the_mesh_namespaces_for_the_port() {
        let state = state();
        let answer = state.answer(addr("198.51.100.1:443"), "shop").expect("registered services on 443");
        assert_eq!(names(&answer), ["shop/stripe", "braid-system/web"]);
        assert_eq!(answer.addresses, [addr("198.51.100.1:443")]);
        assert_eq!(answer.egress.as_ref().unwrap().unregistered, EgressAction::Allow);
        let answer = state.answer(addr("198.51.100.1:443"), "billing").expect("the mesh-wide one");
        assert_eq!(names(&answer), ["braid-system/web"], "another namespace's service is not billing's");
        let answer = state.answer(addr("198.51.100.1:80"), "billing").unwrap();
        let web = &answer.egress.as_ref().unwrap().services[0];
        assert_eq!(web.tls.as_ref().map(|t| t.port), Some(443));
        let answer = state.answer(addr("203.0.113.9:5432"), "billing").unwrap();
        let db = &answer.egress.as_ref().unwrap().services[0];
        assert!(db.hosts.is_empty(), "a TCP port is matched by address only");
        assert_eq!(db.addresses[0].to_string(), "203.0.113.0/24");
        // What the server builds passes the proxy's own check.
        let config = Config { services: vec![answer], ..Config::empty() };
        config.validate().expect("valid");
    }

    #[test]
    fn allow_any_with_nothing_registered_changes_nothing_and_registry_only_denies_the_rest() {
        let mut state = state();
        assert_eq!(state.answer(addr("198.51.100.1:8443"), "shop"), None);
        assert_eq!(state.answer(addr("10.1.2.3:443"), "shop"), None, "inside the cluster networks");
        assert!(state.set_settings(&EgressSettings {
            mode: EgressMode::RegistryOnly,
            cluster_networks: vec!["10.0.0.0/8".to_owned(), "not-a-network".to_owned()],
        }));
        let answer = state.answer(addr("198.51.100.1:8443"), "shop").expect("a deny answer");
        assert_eq!(answer.egress.as_ref().unwrap().unregistered, EgressAction::Deny);
        assert!(names(&answer).is_empty());
        assert_eq!(state.answer(addr("10.1.2.3:443"), "shop"), None);
        assert!(state.answer(addr("172.16.0.1:443"), "shop").is_some(), "no longer a cluster network");
        assert!(!state.set_settings(&EgressSettings {
            mode: EgressMode::RegistryOnly,
            cluster_networks: vec!["10.0.0.0/8".to_owned()],
        }));
    }

    #[test]
    fn a_service_the_proxy_would_refuse_is_left_out_alone() {
        let mut state = state();
        state.upsert(
            key("shop", "broken"),
            spec(serde_json::json!({"hosts": ["Bad_Host"], "ports": [{"port": 443, "protocol": "TLS"}]})),
        );
        let answer = state.answer(addr("198.51.100.1:443"), "shop").unwrap();
        assert_eq!(names(&answer), ["shop/stripe", "braid-system/web"]);
    }
}
