//! HTTP proxying: routing a request to a backend, retries, timeouts, faults, mirroring, and the
//! metrics of every request.

pub mod body;
pub mod coalesce;
pub mod forward;
pub mod h1_server;
pub mod h2_server;
pub mod http1;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::discovery::Discovery;
use crate::identity::IdentityStore;
use crate::metrics::Metrics;
use crate::table::Table;
use body::ProxyBody;
use upstream::{Pool, UpstreamProtocol};

/// What answers each request of one client connection (`forward::outbound` or `forward::inbound`
/// bound to the connection): one name for the bounds every server of a connection needs.
pub trait Handler: Fn(Request<ProxyBody>) -> Self::Answer + Clone + Send + 'static {
    type Answer: Future<Output = Response<ProxyBody>> + Send + 'static;
}

impl<H, F> Handler for H
where
    H: Fn(Request<ProxyBody>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    type Answer = F;
}

/// A client connection's transport as the servers take it (TCP, or TLS over TCP).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What every connection shares: the current routing table, the metrics, and the pools to
/// addresses that are not endpoints of a configured service (the local app on inbound, unmeshed
/// destinations on outbound).
pub struct Shared {
    pub table: ArcSwap<Table>,
    pub metrics: Metrics,
    /// The workload certificate, when the proxy has an identity.
    pub identity: Option<Arc<IdentityStore>>,
    /// What the proxy holds from the discovery server, when it has one.
    pub discovery: Option<Arc<Discovery>>,
    pools: Mutex<HashMap<(SocketAddr, UpstreamProtocol), Arc<Pool>>>,
}

impl Shared {
    pub fn new(table: Table, identity: Option<Arc<IdentityStore>>) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            metrics: Metrics::new(),
            identity,
            discovery: None,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool to a fixed address, made on first use. Called once per client connection.
    pub fn pool(&self, addr: SocketAddr, protocol: UpstreamProtocol) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.entry((addr, protocol)).or_insert_with(|| Arc::new(Pool::new(addr, protocol))).clone()
    }
}
