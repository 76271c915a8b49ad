//! Wiring: bind the listeners, start serving, reload the configuration file, drain on shutdown.
//! The binary parses flags and calls `start`; tests call it in-process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::http::Shared;
use crate::identity::{self, IdentityStore};
use crate::reload::{self, LoadError, ReloadStatus};
use crate::server::{self, ListenerKind};
use crate::table::{Table, TableError};

pub struct Options {
    /// Without a file the proxy forwards everything to its original destination.
    pub config: Option<PathBuf>,
    pub config_poll: Duration,
    /// Overrides the file's admin address.
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
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
    pub shared: Arc<Shared>,
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
    let identity = config.identity.as_ref().map(|_| Arc::new(IdentityStore::default()));
    let table = Table::build(config, None, identity.as_ref())?;
    let config = table.config.clone();
    let shared = Arc::new(Shared::new(table, identity.clone()));

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

    let accept = CancellationToken::new();
    let background = CancellationToken::new();
    let connections = TaskTracker::new();
    let listeners = [(outbound_listener, ListenerKind::Outbound), (inbound_listener, ListenerKind::Inbound)];
    for (listener, kind) in listeners.into_iter().chain(service_listeners) {
        tokio::spawn(server::serve(listener, kind, shared.clone(), accept.clone(), connections.clone()));
    }
    let reload_status = Arc::new(Mutex::new(ReloadStatus::applied(options.config.clone())));
    if let Some(path) = options.config {
        tokio::spawn(reload::watch(
            path,
            bytes,
            options.config_poll,
            shared.clone(),
            reload_status.clone(),
            background.clone(),
        ));
    }
    if let (Some(identity_config), Some(store)) = (config.identity.clone(), identity) {
        tokio::spawn(identity::client::maintain(identity_config, store, background.clone()));
    }
    let ready = Arc::new(AtomicBool::new(true));
    let admin = Arc::new(Admin { shared: shared.clone(), ready: ready.clone(), reload: reload_status });
    tokio::spawn(admin::serve(admin_listener, admin, background.clone()));
    info!(admin = %admin_addr, outbound = %outbound_addr, inbound = %inbound_addr, "braid-proxy listening");
    Ok(Running {
        admin: admin_addr,
        outbound: outbound_addr,
        inbound: inbound_addr,
        services,
        shared,
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
