//! The configuration the table is built from: the file, the discovered services that do not
//! collide with it or each other, and the inbound policy, checked as a whole.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use braid_api::config::{Config, DefaultInboundPolicy, PolicyConfig, ServiceConfig};

use super::State;
use crate::table::LiveTable;

/// A discovered service that cannot join the table because another one holds its name, one of
/// its hosts or addresses.
pub(super) struct Shadowed {
    pub(super) destination: String,
    pub(super) reason: String,
}

/// A composed configuration is checked as a whole (a file was checked when it was parsed), then
/// the table is rebuilt from it.
pub(super) fn rebuild(table: &LiveTable, config: Config) -> Result<(), String> {
    config.validate().map_err(|e| e.to_string())?;
    table.rebuild(config).map_err(|e| e.to_string())
}

/// A destination named `IP:PORT` belongs to its service even if the server left the address
/// out: otherwise every connection to it would miss the table and ask again.
pub(super) fn with_own_address(name: &str, mut service: ServiceConfig) -> ServiceConfig {
    if let Ok(addr) = name.parse::<SocketAddr>()
        && !service.addresses.contains(&addr)
    {
        service.addresses.push(addr);
    }
    service
}

/// `service` as this pod reaches it: its endpoints at one of the pod's own IPs are the pod
/// itself, reached directly rather than through mTLS to its own proxy (`EndpointConfig::local`).
fn as_seen_from(service: &ServiceConfig, pod_ips: &[IpAddr]) -> ServiceConfig {
    let mut service = service.clone();
    for endpoint in service.backends.iter_mut().flat_map(|backend| backend.endpoints.iter_mut()) {
        if pod_ips.contains(&endpoint.address.ip()) {
            endpoint.local = true;
            endpoint.meshed = false;
            endpoint.identity = None;
        }
    }
    service
}

/// A discovered service checked on its own, so the reason names its fields, not its place in
/// the composed list.
pub(super) fn check_service(file: &Config, service: Option<&ServiceConfig>) -> Result<(), String> {
    let Some(service) = service else { return Ok(()) };
    if service.listen.is_some() {
        return Err("listen: a discovered service cannot open a listener (they are bound at start)".into());
    }
    let alone =
        Config { identity: file.identity.clone(), services: vec![service.clone()], ..Config::empty() };
    alone.validate().map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix("services[0]") {
            Some(rest) => format!("service {}{rest}", service.name),
            None => text,
        }
    })
}

/// The file, then the discovered services in the order they were first applied (each one that
/// collides with what is already there is left out and reported), then the inbound policy.
/// `candidate` replaces (or adds) one destination's service; `inbound` replaces the policy.
pub(super) fn compose(
    state: &State,
    candidate: Option<(&str, u64, Option<&ServiceConfig>)>,
    inbound: Option<Option<&PolicyConfig>>,
) -> (Config, Vec<Shadowed>) {
    let mut config = state.file.clone();
    // The file's tracing settings win over the Mesh's.
    if config.tracing.is_none() {
        config.tracing.clone_from(&state.tracing);
    }
    let mut hosts: HashMap<String, String> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    for service in &config.services {
        let owner = format!("the configuration file's service {}", service.name);
        for host in std::iter::once(&service.name).chain(&service.hosts) {
            hosts.insert(host.to_ascii_lowercase(), owner.clone());
        }
        for address in &service.addresses {
            addresses.insert(*address, owner.clone());
        }
    }
    let mut discovered: Vec<(u64, &str, &ServiceConfig)> = state
        .destinations
        .iter()
        .filter(|(name, _)| candidate.is_none_or(|(candidate, ..)| candidate != name.as_str()))
        .filter_map(|(name, d)| {
            let service = d.snapshot.applied.as_ref()?.1.as_ref()?;
            Some((d.seq, name.as_str(), service))
        })
        .collect();
    if let Some((name, seq, Some(service))) = candidate {
        discovered.push((seq, name, service));
    }
    discovered.sort_by_key(|(seq, name, _)| (*seq, *name));
    let pod_ips = state.file.discovery.as_ref().map_or(&[][..], |discovery| &discovery.pod_ips[..]);
    let mut shadowed = Vec::new();
    for (_, destination, service) in discovered {
        let names: Vec<String> =
            std::iter::once(&service.name).chain(&service.hosts).map(|h| h.to_ascii_lowercase()).collect();
        let taken = names
            .iter()
            .find_map(|host| {
                hosts.get(host).map(|owner| format!("the host name {host:?} belongs to {owner}"))
            })
            .or_else(|| {
                service.addresses.iter().find_map(|address| {
                    addresses.get(address).map(|owner| format!("the address {address} belongs to {owner}"))
                })
            });
        if let Some(taken) = taken {
            shadowed.push(Shadowed {
                destination: destination.to_owned(),
                reason: format!("service {}: {taken}, which wins", service.name),
            });
            continue;
        }
        let owner = format!("the service {} of destination {destination}", service.name);
        for host in names {
            hosts.insert(host, owner.clone());
        }
        for address in &service.addresses {
            addresses.insert(*address, owner.clone());
        }
        config.services.push(as_seen_from(service, pod_ips));
    }
    // With discovery on, the inbound policy comes from the server once it has sent one. Until
    // then: the file's, else the pod's default from the webhook, else nobody but the probes.
    match (inbound, &state.inbound.applied) {
        (Some(policy), _) => config.inbound.policy = policy.cloned(),
        (None, Some((_, policy))) => config.inbound.policy = policy.clone(),
        (None, None) if config.inbound.policy.is_none() => {
            let startup = state.startup_policy.clone();
            config.inbound.policy =
                Some(startup.unwrap_or_else(|| DefaultInboundPolicy::Deny.policy(Vec::new())));
        }
        (None, None) => {}
    }
    (config, shadowed)
}
