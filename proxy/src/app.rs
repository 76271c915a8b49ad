//! Wiring: bind the listeners, start serving, reload the configuration file, drain on shutdown.
//! The binary parses flags and calls `start`; tests call it in-process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_api::config::{
    Config, ConfigError, DefaultInboundPolicy, DiscoveryConfig, IdentityConfig, UnknownDefaultPolicy,
    default_destination_idle_timeout, default_initial_timeout, default_renew_at_percent,
};
use braid_api::contract::{self, env};
use braid_api::identity::SpiffeId;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{self, ListenerKind};
use crate::admin::{self, Admin};
use crate::discovery::Discovery;
use crate::identity::{self, IdentityStore};
use crate::reload::{self, LoadError, ReloadStatus};
use crate::state::ProxyState;
use crate::table::{Table, TableError};

/// The identity a proxy in an injected pod asks for, from the environment the webhook sets
/// (BRAID_TRUST_DOMAIN, BRAID_POD_NAMESPACE, BRAID_SERVICE_ACCOUNT, BRAID_IDENTITY_ADDR) and the
/// files it mounts. `None` when any is missing: then the proxy runs without an identity.
pub fn identity_from_env(var: impl Fn(&str) -> Option<String>) -> Option<IdentityConfig> {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    let trust_domain = non_empty(env::TRUST_DOMAIN)?;
    let namespace = non_empty(env::POD_NAMESPACE)?;
    let service_account = non_empty(env::SERVICE_ACCOUNT)?;
    let endpoint = non_empty(env::IDENTITY_ADDR)?;
    let server_name = endpoint.rsplit_once(':').map(|(host, _)| host.to_owned());
    Some(IdentityConfig {
        identity: SpiffeId { trust_domain, namespace, service_account }.to_string(),
        endpoint,
        server_name,
        token_file: contract::token_path(),
        trust_bundle_file: contract::trust_bundle_path(),
        renew_at_percent: default_renew_at_percent(),
    })
}

/// Where a proxy in an injected pod gets its configuration, from the environment the webhook
/// sets (BRAID_DISCOVERY_ADDR, BRAID_POD_NAMESPACE, BRAID_POD_NAME; and the policy that holds
/// until the server sends the pod's: BRAID_DEFAULT_INBOUND_POLICY, BRAID_INBOUND_PROBES).
/// `None` when any address part is missing: then the proxy runs from its file alone.
pub fn discovery_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<DiscoveryConfig>, EnvError> {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    let (Some(endpoint), Some(pod_namespace), Some(pod_name)) =
        (non_empty(env::DISCOVERY_ADDR), non_empty(env::POD_NAMESPACE), non_empty(env::POD_NAME))
    else {
        return Ok(None);
    };
    let invalid =
        |name: &'static str, value: &str, reason: String| EnvError { name, value: value.to_owned(), reason };
    let probes = match non_empty(env::INBOUND_PROBES) {
        None => Vec::new(),
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| invalid(env::INBOUND_PROBES, &json, e.to_string()))?
        }
    };
    let pod_ips = match non_empty(env::POD_IP) {
        None => Vec::new(),
        Some(ip) => {
            vec![ip.parse().map_err(|e: std::net::AddrParseError| invalid(env::POD_IP, &ip, e.to_string()))?]
        }
    };
    let startup_policy = match non_empty(env::DEFAULT_INBOUND_POLICY) {
        // Without it the proxy admits nobody until the server answers (see DiscoveryConfig).
        None => None,
        Some(name) => {
            let default: DefaultInboundPolicy = name.parse().map_err(|e: UnknownDefaultPolicy| {
                invalid(env::DEFAULT_INBOUND_POLICY, &name, e.to_string())
            })?;
            Some(default.policy(probes))
        }
    };
    Ok(Some(DiscoveryConfig {
        endpoint,
        // The endpoint's host (DiscoveryConfig::server_name).
        server_name: None,
        pod_namespace,
        pod_name,
        initial_timeout: default_initial_timeout(),
        idle_timeout: default_destination_idle_timeout(),
        pod_ips,
        startup_policy,
    }))
}

/// An environment variable the webhook sets holds something the proxy cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

pub struct Options {
    /// Without a file the proxy forwards everything to its original destination.
    pub config: Option<PathBuf>,
    pub config_poll: Duration,
    /// Overrides the file's admin address.
    pub admin: Option<SocketAddr>,
    /// Used when the file names no identity (see `identity_from_env`).
    pub default_identity: Option<IdentityConfig>,
    /// Used when the file has no discovery section (see `discovery_from_env`).
    pub default_discovery: Option<DiscoveryConfig>,
    /// Extra outbound listeners (on 127.0.0.1, any port), one per address given: their
    /// connections are handled as if iptables had redirected them from that original
    /// destination. For tests and benchmarks, where there is no iptables.
    pub fixed_destinations: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error("the configuration was refused: {0}")]
    Invalid(#[from] ConfigError),
    #[error("the configuration could not be compiled: {0}")]
    Table(#[from] TableError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind { what: String, addr: SocketAddr, source: std::io::Error },
}

/// A started proxy: where it listens, and how to stop it.
pub struct Running {
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// The dedicated listeners, by service name.
    pub services: HashMap<String, SocketAddr>,
    /// The listeners of `Options::fixed_destinations`, by the original destination they stand for.
    pub fixed_destinations: HashMap<SocketAddr, SocketAddr>,
    pub state: Arc<ProxyState>,
    ready: Arc<AtomicBool>,
    accept: CancellationToken,
    background: CancellationToken,
    connections: TaskTracker,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { what: what.to_owned(), addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

pub async fn start(options: Options) -> Result<Running, StartError> {
    let (mut config, bytes) = match &options.config {
        Some(path) => reload::read(path)?,
        None => (Config::empty(), Vec::new()),
    };
    if let Some(admin) = options.admin {
        config.admin = admin;
    }
    if config.identity.is_none() {
        config.identity = options.default_identity;
    }
    if config.discovery.is_none() {
        config.discovery = options.default_discovery;
    }
    config.check_discovery_identity()?;
    let identity = config.identity.as_ref().map(|_| Arc::new(IdentityStore::default()));
    let discovery =
        config.discovery.clone().map(|settings| Arc::new(Discovery::new(settings, config.clone())));
    // With discovery, inbound starts from the policy that holds until the server sends the pod's.
    let config = match &discovery {
        Some(discovery) => discovery.initial_config(),
        None => config,
    };
    let table = Table::build(config, None, identity.as_ref())?;
    let config = table.config.clone();
    let state = Arc::new(ProxyState::new(table, identity.clone(), discovery.clone()));

    let (admin_listener, admin_addr) = bind("admin", config.admin).await?;
    let (outbound_listener, outbound_addr) = bind("outbound", config.outbound.listen).await?;
    let (inbound_listener, inbound_addr) = bind("inbound", config.inbound.listen).await?;
    let mut service_listeners = Vec::new();
    let mut services = HashMap::new();
    for service in &config.services {
        if let Some(addr) = service.listen {
            let (listener, bound) = bind(&format!("service {}", service.name), addr).await?;
            services.insert(service.name.clone(), bound);
            service_listeners.push((listener, ListenerKind::Service(Arc::from(service.name.as_str()))));
        }
    }
    let mut fixed_destinations = HashMap::new();
    for original in options.fixed_destinations {
        let (listener, bound) =
            bind(&format!("fixed destination {original}"), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        fixed_destinations.insert(original, bound);
        service_listeners.push((listener, ListenerKind::Redirected(original)));
    }

    let accept = CancellationToken::new();
    let background = CancellationToken::new();
    let connections = TaskTracker::new();
    let listeners = [(outbound_listener, ListenerKind::Outbound), (inbound_listener, ListenerKind::Inbound)];
    for (listener, kind) in listeners.into_iter().chain(service_listeners) {
        tokio::spawn(accept::serve(listener, kind, state.clone(), accept.clone(), connections.clone()));
    }
    let reload_status = Arc::new(Mutex::new(ReloadStatus::applied(options.config.clone())));
    if let Some(path) = options.config {
        tokio::spawn(reload::watch(
            path,
            bytes,
            options.config_poll,
            state.clone(),
            reload_status.clone(),
            background.clone(),
        ));
    }
    if let (Some(discovery), Some(store)) = (discovery, identity.clone()) {
        info!(endpoint = %discovery.config.endpoint, "configuration from the discovery server, on top of the file");
        let (evicting, state_of_eviction, shutdown) = (discovery.clone(), state.clone(), background.clone());
        tokio::spawn(async move {
            evicting.evict_idle_until(&state_of_eviction.table, &state_of_eviction.metrics, shutdown).await;
        });
        let (state, shutdown) = (state.clone(), background.clone());
        tokio::spawn(async move {
            crate::discovery::client::run(&state.table, &state.metrics, discovery, store, shutdown).await;
        });
    }
    if let (Some(identity_config), Some(store)) = (config.identity.clone(), identity) {
        tokio::spawn(identity::client::maintain(identity_config, store, background.clone()));
    }
    let ready = Arc::new(AtomicBool::new(true));
    let admin = Arc::new(Admin { state: state.clone(), ready: ready.clone(), reload: reload_status });
    tokio::spawn(admin::serve(admin_listener, admin, background.clone()));
    info!(admin = %admin_addr, outbound = %outbound_addr, inbound = %inbound_addr, "braid-proxy listening");
    Ok(Running {
        admin: admin_addr,
        outbound: outbound_addr,
        inbound: inbound_addr,
        services,
        fixed_destinations,
        state,
        ready,
        accept,
        background,
        connections,
    })
}

impl Running {
    /// Graceful drain: /ready turns 503, the listeners close, open connections finish their
    /// in-flight requests (HTTP connections are told to close) for up to `deadline`; whatever
    /// is still open then is cut. Returns whether everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.ready.store(false, Ordering::Relaxed);
        self.accept.cancel();
        self.connections.close();
        let open = self.connections.len();
        info!(open, ?deadline, "draining");
        let finished = tokio::time::timeout(deadline, self.connections.wait()).await.is_ok();
        if finished {
            info!("drained: every connection finished");
        } else {
            warn!(
                still_open = self.connections.len(),
                "drain deadline reached; closing the remaining connections"
            );
        }
        self.background.cancel();
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_of_an_injected_pod_comes_from_its_environment() {
        let env = |name: &str| {
            let value = match name {
                "BRAID_TRUST_DOMAIN" => "cluster.local",
                "BRAID_POD_NAMESPACE" => "shop",
                "BRAID_SERVICE_ACCOUNT" => "web",
                "BRAID_IDENTITY_ADDR" => "braid-identity.braid-system.svc:8080",
                _ => return None,
            };
            Some(value.to_owned())
        };
        let identity = identity_from_env(env).unwrap();
        assert_eq!(identity.identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(identity.server_name.as_deref(), Some("braid-identity.braid-system.svc"));
        assert_eq!(identity.token_file, std::path::PathBuf::from("/var/run/braid/identity/token"));
        let missing = |name: &str| if name == "BRAID_SERVICE_ACCOUNT" { None } else { env(name) };
        assert!(identity_from_env(missing).is_none());
    }

    #[test]
    fn discovery_settings_come_from_the_webhooks_environment() {
        let env = |name: &str| {
            let value = match name {
                "BRAID_DISCOVERY_ADDR" => "braid-discovery.braid-system.svc:8086",
                "BRAID_POD_NAMESPACE" => "shop",
                "BRAID_POD_NAME" => "web-7d9f-abcde",
                "BRAID_POD_IP" => "10.244.0.7",
                _ => return None,
            };
            Some(value.to_owned())
        };
        let discovery = discovery_from_env(env).unwrap().unwrap();
        assert_eq!(discovery.endpoint, "braid-discovery.braid-system.svc:8086");
        assert_eq!(discovery.server_name(), "braid-discovery.braid-system.svc");
        assert_eq!(
            (discovery.pod_namespace.as_str(), discovery.pod_name.as_str()),
            ("shop", "web-7d9f-abcde")
        );
        assert_eq!(discovery.pod_ips, ["10.244.0.7".parse::<std::net::IpAddr>().unwrap()]);
        let bad_ip =
            |name: &str| if name == "BRAID_POD_IP" { Some("10.244.0".to_owned()) } else { env(name) };
        let error = discovery_from_env(bad_ip).unwrap_err().to_string();
        assert!(error.starts_with("BRAID_POD_IP=\"10.244.0\": invalid IP address"), "{error}");
        let missing = |name: &str| if name == "BRAID_POD_NAME" { Some(String::new()) } else { env(name) };
        assert!(discovery_from_env(missing).unwrap().is_none());
        assert_eq!(discovery.startup_policy, None, "no default from the webhook: closed until discovery");

        let with_default = |name: &str| match name {
            "BRAID_DEFAULT_INBOUND_POLICY" => Some("all-authenticated".to_owned()),
            "BRAID_INBOUND_PROBES" => Some(r#"[{"port":8080,"path":"/healthz"}]"#.to_owned()),
            _ => env(name),
        };
        let policy =
            discovery_from_env(with_default).unwrap().unwrap().startup_policy.expect("a startup policy");
        let probes = vec![braid_api::config::ProbeConfig { port: 8080, path: "/healthz".into() }];
        assert_eq!(policy, DefaultInboundPolicy::AllAuthenticated.policy(probes));
    }

    #[test]
    fn a_bad_default_policy_or_probe_list_stops_the_start_with_the_variable() {
        let env = |policy: &'static str, probes: &'static str| {
            move |name: &str| match name {
                "BRAID_DISCOVERY_ADDR" => Some("d.test:8086".to_owned()),
                "BRAID_POD_NAMESPACE" | "BRAID_POD_NAME" => Some("x".to_owned()),
                "BRAID_DEFAULT_INBOUND_POLICY" => Some(policy.to_owned()),
                "BRAID_INBOUND_PROBES" => Some(probes.to_owned()),
                _ => None,
            }
        };
        let error = discovery_from_env(env("open", "")).unwrap_err().to_string();
        assert!(
            error.starts_with("BRAID_DEFAULT_INBOUND_POLICY=\"open\"") && error.contains("deny"),
            "{error}"
        );
        let error = discovery_from_env(env("deny", "[{\"port\":\"x\"}]")).unwrap_err().to_string();
        assert!(error.starts_with("BRAID_INBOUND_PROBES="), "{error}");
    }

    #[tokio::test]
    async fn discovery_without_an_identity_is_refused_at_start() {
        let options = Options {
            config: None,
            config_poll: Duration::from_secs(1),
            admin: None,
            default_identity: None,
            default_discovery: discovery_from_env(|name| match name {
                "BRAID_DISCOVERY_ADDR" => Some("discovery.test:8086".into()),
                "BRAID_DEFAULT_INBOUND_POLICY" | "BRAID_INBOUND_PROBES" | "BRAID_POD_IP" => None,
                _ => Some("x".into()),
            })
            .unwrap(),
            fixed_destinations: Vec::new(),
        };
        let Err(error) = start(options).await else { panic!("started without an identity") };
        assert!(error.to_string().contains("discovery needs this proxy's identity"), "{error}");
    }
}
