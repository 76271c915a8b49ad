//! Listeners: accept connections (within the connection limit), find where each was going, and
//! hand it to `outbound` or `inbound`. Every connection drains gracefully when `shutdown` fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::{Direction, TcpLabels};
use crate::original_dst::original_dst;
use crate::outbound::OutboundTarget;
use crate::state::ProxyState;
use crate::{inbound, outbound};

/// What a listener is for.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// Redirected outgoing connections of the app.
    Outbound,
    /// Redirected incoming connections to the app.
    Inbound,
    /// A listener dedicated to one service (config `services[].listen`).
    Service(Arc<str>),
    /// Outbound connections handled as if iptables had redirected them from this original
    /// destination (`app::Options::fixed_destinations`: tests, where there is no iptables).
    Redirected(SocketAddr),
}

impl ListenerKind {
    fn direction(&self) -> Direction {
        match self {
            Self::Inbound => Direction::inbound,
            Self::Outbound | Self::Service(_) | Self::Redirected(_) => Direction::outbound,
        }
    }
}

/// Accepts connections until `shutdown`, each served on its own task tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max_connections = state.table.load().config.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // At the limit, stop accepting: further clients wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off rather than spin.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let kind = kind.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            handle(stream, peer, kind, state, shutdown).await;
            drop(permit);
        });
    }
}

/// Decrements tcp_open_connections when the connection ends, however it ends.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
) {
    let labels = TcpLabels { direction: kind.direction() };
    let metrics = &state.metrics;
    metrics.tcp_open_total.get_or_create(&labels).inc();
    let open = metrics.tcp_open_connections.get_or_create(&labels).clone();
    open.inc();
    let _open = OpenConnection(open);
    let _ = stream.set_nodelay(true);

    let original = match kind {
        ListenerKind::Service(_) => None,
        ListenerKind::Redirected(addr) => Some(addr),
        _ => original_dst(&stream).unwrap_or_else(|error| {
            debug!(%error, %peer, "no original destination");
            None
        }),
    };
    let table = state.table.load_full();
    let limits = table.config.limits.clone();
    let target = match (&kind, original) {
        (ListenerKind::Service(name), _) => OutboundTarget::Service(name.clone()),
        (ListenerKind::Outbound | ListenerKind::Redirected(_), Some(addr)) => OutboundTarget::Original(addr),
        (ListenerKind::Outbound | ListenerKind::Redirected(_), None) => OutboundTarget::Unknown,
        (ListenerKind::Inbound, original) => {
            let Some(app) = original.or(table.config.inbound.target) else {
                metrics.tcp_refused.get_or_create(&labels).inc();
                warn!(%peer, "inbound connection without an original destination, and no inbound.target: closed");
                return;
            };
            drop(table);
            return inbound::serve(stream, peer, app, &state, &limits, shutdown).await;
        }
    };
    outbound::serve(stream, peer, target, table, &state, &limits, shutdown).await;
}
