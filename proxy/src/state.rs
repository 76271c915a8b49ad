//! The proxy-wide state every connection shares: the routing table as it is now, the metrics,
//! the workload identity, what discovery holds, and the pools to addresses that are not endpoints
//! of a configured service (the local app on inbound, unmeshed destinations on outbound).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use braid_api::config::Config;
use rustls::pki_types::ServerName;

use crate::bounded::InFlight;
use crate::client::{Pool, TlsTarget, UpstreamProtocol};
use crate::discovery::Discovery;
use crate::identity::IdentityStore;
use crate::metrics::{Direction, Label, Metrics, Peer};
use crate::outbound::egress::Origination;
use crate::table::{LiveTable, Table};

pub struct ProxyState {
    pub table: LiveTable,
    pub metrics: Metrics,
    /// The workload certificate, when the proxy has an identity.
    pub identity: Option<Arc<IdentityStore>>,
    /// What the proxy holds from the discovery server, when it has one.
    pub discovery: Option<Arc<Discovery>>,
    /// The mirrored copies of requests in flight (bounded by `limits.maxMirrorsInFlight`).
    pub mirrors: InFlight,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// The metric label of each address traffic went to unchanged, up to a bound.
    passthrough_labels: Mutex<HashMap<SocketAddr, Label>>,
}

/// A pool to a fixed address: by protocol, and for TLS the proxy originates, by the server name
/// and the roots it is checked with.
type PoolKey = (SocketAddr, UpstreamProtocol, Option<(ServerName<'static>, u64)>);

/// Pools to fixed addresses kept before the unused ones are dropped: an app that calls many
/// addresses outside the mesh must not grow the proxy without bound.
const POOLS_BEFORE_SWEEP: usize = 1024;
/// Passthrough addresses with a label of their own; the rest share `other`, so an app that calls
/// thousands of addresses does not make thousands of series.
const PASSTHROUGH_LABELS: usize = 256;

impl ProxyState {
    pub fn new(
        table: Table,
        identity: Option<Arc<IdentityStore>>,
        discovery: Option<Arc<Discovery>>,
    ) -> Self {
        let metrics = Metrics::new();
        let teardowns = metrics.teardowns(Direction::outbound, Peer::upstream);
        let discovery_settings = table.config.discovery.as_ref();
        let resource = crate::spans::ProxyResource {
            pod_namespace: discovery_settings.map(|settings| settings.pod_namespace.clone()),
            pod_name: discovery_settings.map(|settings| settings.pod_name.clone()),
        };
        Self {
            table: LiveTable::new(table, identity.clone(), Some(teardowns))
                .with_tracing(resource, metrics.span_counters()),
            metrics,
            identity,
            discovery,
            mirrors: InFlight::default(),
            pools: Mutex::new(HashMap::new()),
            passthrough_labels: Mutex::new(HashMap::new()),
        }
    }

    /// The pool to an address outside the mesh (outbound passthrough), made on first use.
    pub fn pool(&self, addr: SocketAddr, protocol: UpstreamProtocol) -> Arc<Pool> {
        self.fixed_pool(addr, protocol, Direction::outbound)
    }

    /// The pool to the local app (inbound), made on first use.
    pub fn app_pool(&self, addr: SocketAddr, protocol: UpstreamProtocol) -> Arc<Pool> {
        self.fixed_pool(addr, protocol, Direction::inbound)
    }

    /// The pool to a fixed address, made on first use. Called once per client connection.
    fn fixed_pool(&self, addr: SocketAddr, protocol: UpstreamProtocol, direction: Direction) -> Arc<Pool> {
        self.keyed_pool((addr, protocol, None), direction, || Pool::new(addr, protocol))
    }

    /// The pool to an external service at `addr` over TLS the proxy originates for `server_name`.
    pub fn originating_pool(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        server_name: ServerName<'static>,
        origination: &Origination,
    ) -> Arc<Pool> {
        let key = (addr, protocol, Some((server_name.clone(), origination.roots_key)));
        self.keyed_pool(key, Direction::outbound, || {
            let tls = TlsTarget::external(origination.config(protocol), server_name);
            Pool::with_tls(addr, protocol, Some(tls))
        })
    }

    fn keyed_pool(&self, key: PoolKey, direction: Direction, make: impl FnOnce() -> Pool) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pools.len() >= POOLS_BEFORE_SWEEP && !pools.contains_key(&key) {
            // Held only here: no connection uses it now; its idle upstream connections close.
            pools.retain(|_, pool| Arc::strong_count(pool) > 1);
        }
        let pool = pools.entry(key).or_insert_with(|| Arc::new(make()));
        pool.count_teardowns(|| self.metrics.teardowns(direction, Peer::upstream));
        pool.clone()
    }

    /// The `authority` label of traffic forwarded unchanged to `addr`: the address itself for the
    /// first few hundred addresses, `other` after that.
    pub fn passthrough_label(&self, addr: SocketAddr) -> Label {
        let mut labels = self.passthrough_labels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(label) = labels.get(&addr) {
            return label.clone();
        }
        if labels.len() >= PASSTHROUGH_LABELS {
            static OTHER: std::sync::OnceLock<Label> = std::sync::OnceLock::new();
            return OTHER.get_or_init(|| Label::new("other")).clone();
        }
        labels.entry(addr).or_insert_with(|| Label::new(addr.to_string())).clone()
    }

    /// A changed configuration file, checked. With discovery it is composed with what discovery
    /// holds first; either way the table is rebuilt by `LiveTable::rebuild`.
    pub fn apply_file(&self, config: Config) -> Result<(), String> {
        match &self.discovery {
            Some(discovery) => discovery.set_file(&self.table, config),
            None => self.table.rebuild(config).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ProxyState {
        ProxyState::new(Table::build(Config::empty(), None, None).expect("an empty table"), None, None)
    }

    #[test]
    fn passthrough_addresses_get_a_bounded_number_of_labels() {
        let state = state();
        let addr = |i: usize| SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 80));
        for i in 0..PASSTHROUGH_LABELS {
            assert_eq!(state.passthrough_label(addr(i)).as_str(), addr(i).to_string());
        }
        assert_eq!(state.passthrough_label(addr(PASSTHROUGH_LABELS)).as_str(), "other");
        assert_eq!(state.passthrough_label(addr(3)).as_str(), addr(3).to_string(), "kept");
    }

    #[test]
    fn unused_pools_are_dropped_once_there_are_many_and_used_ones_stay() {
        let state = state();
        let addr = |i: usize| SocketAddr::from(([10, 2, (i / 256) as u8, (i % 256) as u8], 80));
        let in_use = state.pool(addr(0), UpstreamProtocol::Http1);
        for i in 1..POOLS_BEFORE_SWEEP {
            state.pool(addr(i), UpstreamProtocol::Http1);
        }
        assert_eq!(state.pools.lock().unwrap().len(), POOLS_BEFORE_SWEEP);
        state.pool(addr(POOLS_BEFORE_SWEEP), UpstreamProtocol::Http1);
        let pools = state.pools.lock().unwrap();
        assert_eq!(pools.len(), 2, "the one in use and the new one");
        assert!(Arc::ptr_eq(&pools[&(addr(0), UpstreamProtocol::Http1, None)], &in_use));
    }
}
