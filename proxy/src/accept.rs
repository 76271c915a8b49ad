//! Listeners: accept connections (within the connection limit, and on inbound within each client
//! address's share of it), find where each was going, and hand it to `outbound` or `inbound`.
//! Every connection drains gracefully when `shutdown` fires.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

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
///
/// The redirect targets (`Outbound`, `Inbound`) bound to 127.0.0.1 or 0.0.0.0 also listen on
/// ::1 or :: at the same port, where ip6tables sends IPv6 connections (see [`ipv6_twin`]).
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max_connections = state.table.load().config.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    // Only inbound clients are counted per address: outbound ones are all the pod's own app.
    let per_client = matches!(kind, ListenerKind::Inbound).then(|| Arc::new(PerClient::default()));
    let twin = match kind {
        ListenerKind::Outbound | ListenerKind::Inbound => ipv6_twin(&listener),
        ListenerKind::Service(_) | ListenerKind::Redirected(_) => None,
    };
    let limits = Limits { slots, per_client };
    let ipv4 =
        accept_loop(listener, kind.clone(), state.clone(), limits.clone(), shutdown.clone(), tracker.clone());
    match twin {
        // Both on this task, sharing the connection limit and each client's share.
        Some(ipv6) => {
            tokio::join!(ipv4, accept_loop(ipv6, kind, state, limits, shutdown, tracker));
        }
        None => ipv4.await,
    }
}

/// The IPv6 listener beside an IPv4 redirect target: ::1 beside 127.0.0.1, :: beside 0.0.0.0,
/// same port, IPv6 only (IPv4 stays on its own socket, whose connections SO_ORIGINAL_DST
/// answers). `None` for other addresses, and when the pod has no IPv6 (init then installed no
/// ip6tables rules, and nothing is redirected there); a failure otherwise is logged: IPv6
/// connections redirected to that port are then refused, never passed around the proxy.
fn ipv6_twin(listener: &TcpListener) -> Option<TcpListener> {
    let SocketAddr::V4(ipv4) = listener.local_addr().ok()? else { return None };
    let ip = if *ipv4.ip() == Ipv4Addr::LOCALHOST {
        Ipv6Addr::LOCALHOST
    } else if ipv4.ip().is_unspecified() {
        Ipv6Addr::UNSPECIFIED
    } else {
        return None;
    };
    let addr = SocketAddr::from((ip, ipv4.port()));
    match bind_ipv6_only(addr) {
        Ok(listener) => {
            info!(%addr, "listening on IPv6 too");
            Some(listener)
        }
        // No IPv6 in this network namespace (no ::1), or none in the kernel.
        Err(error)
            if error.kind() == io::ErrorKind::AddrNotAvailable
                || error.raw_os_error() == Some(EAFNOSUPPORT) =>
        {
            info!(%addr, %error, "IPv6 is not available here: listening on IPv4 only");
            None
        }
        Err(error) => {
            warn!(%addr, %error, "cannot listen on IPv6: IPv6 connections redirected to this port will be refused");
            None
        }
    }
}

/// Linux's errno for a socket of a family the kernel lacks (std has no ErrorKind for it).
const EAFNOSUPPORT: i32 = 97;

fn bind_ipv6_only(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    // Otherwise :: would also take IPv4 (as v4-mapped addresses) and collide with 0.0.0.0.
    socket.set_only_v6(true)?;
    // As tokio's TcpListener::bind: a restarted proxy rebinds at once.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What the listeners of one kind share: the connection slots and each client's share of them.
#[derive(Clone)]
struct Limits {
    slots: Arc<Semaphore>,
    per_client: Option<Arc<PerClient>>,
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    state: Arc<ProxyState>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let Limits { slots, per_client } = limits;
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
        let client_slot = match &per_client {
            None => None,
            Some(per_client) => {
                let limit = state.table.load().config.limits.connections_per_client();
                match per_client.take(peer.ip(), limit) {
                    Some(slot) => Some(slot),
                    None => {
                        let labels = TcpLabels { direction: kind.direction() };
                        state.metrics.tcp_refused_client_limit.get_or_create(&labels).inc();
                        debug!(%peer, limit, "the client address holds its share of the connections: closed");
                        continue;
                    }
                }
            }
        };
        let kind = kind.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            handle(stream, peer, kind, state, shutdown).await;
            drop(client_slot);
            drop(permit);
        });
    }
}

/// The open connections of each client address on one listener.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in its client address's share, given back when it ends.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// A place for one more connection from `ip`, unless it has `limit` open already.
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        // An IPv4 client on a dual-stack listener is the same client either way.
        let ip = ip.to_canonical();
        let mut open = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot { clients: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redirect_targets_get_an_ipv6_twin_on_the_same_port() {
        for (ipv4, ipv6) in [("127.0.0.1", Ipv6Addr::LOCALHOST), ("0.0.0.0", Ipv6Addr::UNSPECIFIED)] {
            let listener = TcpListener::bind((ipv4, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let twin = ipv6_twin(&listener).unwrap();
            assert_eq!(twin.local_addr().unwrap(), SocketAddr::from((ipv6, port)));
            // Each family on its own socket: an IPv6 client reaches the twin, an IPv4 one the
            // original.
            let (v6, v4) = tokio::join!(
                TcpStream::connect((Ipv6Addr::LOCALHOST, port)),
                TcpStream::connect(("127.0.0.1", port))
            );
            let (accepted6, accepted4) = tokio::join!(twin.accept(), listener.accept());
            assert_eq!(accepted6.unwrap().1, v6.unwrap().local_addr().unwrap());
            assert_eq!(accepted4.unwrap().1, v4.unwrap().local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn other_addresses_get_no_twin() {
        for addr in ["127.0.0.2:0", "[::1]:0"] {
            let listener = TcpListener::bind(addr).await.unwrap();
            assert!(ipv6_twin(&listener).is_none(), "{addr}");
        }
    }

    #[test]
    fn each_client_address_gets_its_share_and_gets_it_back() {
        let clients = Arc::new(PerClient::default());
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let first = clients.take(one, 2).unwrap();
        let second = clients.take(mapped, 2).expect("the second connection of 10.0.0.1");
        assert!(clients.take(one, 2).is_none(), "a third from 10.0.0.1");
        assert!(clients.take(mapped, 2).is_none(), "a third from 10.0.0.1, written as IPv6");
        let other = clients.take(two, 2).expect("another client is not affected");
        drop(first);
        assert!(clients.take(one, 2).is_some(), "a slot came back");
        drop((second, other));
        assert!(clients.0.lock().unwrap().is_empty(), "no entry is kept for a client with no connection");
    }
}
