//! The proxy-wide state every connection shares: the routing table as it is now, the metrics,
//! the workload identity, what discovery holds, and the pools to addresses that are not endpoints
//! of a configured service (the local app on inbound, unmeshed destinations on outbound).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use braid_api::config::Config;

use crate::bounded::InFlight;
use crate::client::{Pool, UpstreamProtocol};
use crate::discovery::Discovery;
use crate::identity::IdentityStore;
use crate::metrics::Metrics;
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
    pools: Mutex<HashMap<(SocketAddr, UpstreamProtocol), Arc<Pool>>>,
}

impl ProxyState {
    pub fn new(
        table: Table,
        identity: Option<Arc<IdentityStore>>,
        discovery: Option<Arc<Discovery>>,
    ) -> Self {
        Self {
            table: LiveTable::new(table, identity.clone()),
            metrics: Metrics::new(),
            identity,
            discovery,
            mirrors: InFlight::default(),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool to a fixed address, made on first use. Called once per client connection.
    pub fn pool(&self, addr: SocketAddr, protocol: UpstreamProtocol) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.entry((addr, protocol)).or_insert_with(|| Arc::new(Pool::new(addr, protocol))).clone()
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
