//! Listeners and client connections: accept (within the connection limit), find where the
//! connection was going, detect its protocol, then serve HTTP/1.1 (hyper) or HTTP/2 (the h2
//! crate, `http::h2_server`) or forward opaque bytes. Every connection drains gracefully when
//! `shutdown` fires.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::config::{Limits, Protocol};
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::balance::{self, Endpoint};
use crate::client_hello;
use crate::detect::{self, Detected};
use crate::http::body::ProxyBody;
use crate::http::forward::{self, InboundConnection, OutboundConnection, OutboundTarget};
use crate::http::{Handler, Shared, Transport};
use crate::http::{h1_server, h2_server};
use crate::identity::{ALPN_H2, ALPN_OPAQUE, tls};
use crate::io::ClientIo;
use crate::metrics::{DenyLabels, DenyProtocol, Label};
use crate::metrics::{Direction, TcpLabels};
use crate::original_dst::original_dst;
use crate::policy;
use crate::tcp;

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
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max_connections = shared.table.load().config.limits.max_connections;
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
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            handle(stream, peer, kind, shared, shutdown).await;
            drop(permit);
        });
    }
}

/// How long an inbound mTLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let direction = kind.direction();
    let labels = TcpLabels { direction };
    let metrics = &shared.metrics;
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
    let mut table = shared.table.load_full();
    let limits = table.config.limits.clone();
    let inbound_target = table.config.inbound.target;
    enum Target {
        Outbound(OutboundTarget),
        Inbound(SocketAddr),
    }
    let target = match (&kind, original) {
        (ListenerKind::Service(name), _) => Target::Outbound(OutboundTarget::Service(name.clone())),
        (ListenerKind::Outbound | ListenerKind::Redirected(_), Some(addr)) => {
            Target::Outbound(OutboundTarget::Original(addr))
        }
        (ListenerKind::Outbound | ListenerKind::Redirected(_), None) => {
            Target::Outbound(OutboundTarget::Unknown)
        }
        (ListenerKind::Inbound, Some(addr)) => Target::Inbound(addr),
        (ListenerKind::Inbound, None) => match inbound_target {
            Some(addr) => Target::Inbound(addr),
            None => {
                metrics.tcp_refused.get_or_create(&labels).inc();
                warn!(%peer, "inbound connection without an original destination, and no inbound.target: closed");
                return;
            }
        },
    };
    // A destination the table does not know may be one discovery has not been asked about yet:
    // hold the connection (its bytes wait in the socket) until the answer or initialTimeout.
    // Known destinations never get here, and settled unknown ones cost one lock-free lookup.
    if let (Some(discovery), Target::Outbound(OutboundTarget::Original(addr))) = (&shared.discovery, &target)
        && table.service_by_address(*addr).is_none()
    {
        discovery.resolve(&shared, *addr).await;
        table = shared.table.load_full();
    }
    let service_protocol = match &target {
        Target::Outbound(OutboundTarget::Service(name)) => table.service_by_name(name).map(|s| s.protocol),
        Target::Outbound(OutboundTarget::Original(addr)) => {
            table.service_by_address(*addr).map(|s| s.protocol)
        }
        _ => None,
    };
    drop(table);

    // A client that opens a connection to a known service and says nothing yet is an HTTP client
    // pool warming up, not a server-speaks-first protocol (those services are declared opaque):
    // forwarding its connection as opaque TCP after the detection timeout would pin all its later
    // requests to one endpoint, around the routes. So it may stay silent, and is closed, not
    // tunnelled, when it stays silent too long.
    let detection = match service_protocol {
        Some(Protocol::Opaque) => None,
        Some(Protocol::Auto) => Some((SILENT_CLIENT_TIMEOUT, Silence::Close)),
        None => Some((limits.detect_timeout, Silence::Opaque)),
    };
    let (detected, prefix, stream) = match detection {
        None => (Detected::Opaque, BytesMut::new(), stream),
        Some((timeout, silence)) => match read_prefix(stream, timeout, silence, &shutdown).await {
            Some(read) => read,
            None => return,
        },
    };
    let read_bytes = metrics.tcp_read_bytes.get_or_create(&labels).clone();
    let write_bytes = metrics.tcp_write_bytes.get_or_create(&labels).clone();
    // The prefix was read before counting began.
    read_bytes.inc_by(prefix.len() as u64);

    let app = match target {
        Target::Outbound(target) => {
            let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
            return outbound(detected, io, target, &shared, &limits, shutdown, peer).await;
        }
        Target::Inbound(app) => app,
    };
    // Inbound: another proxy's mTLS (a ClientHello offering braid/* ALPN) is terminated here;
    // everything else is plaintext to the proxy, whatever it carries.
    let mut prefix = prefix;
    let mut stream = stream;
    if detected == Detected::Opaque && shared.identity.is_some() && prefix.first() == Some(&0x16) {
        let before = prefix.len();
        let Some(alpn) = read_client_hello(&mut stream, &mut prefix, limits.detect_timeout).await else {
            return;
        };
        read_bytes.inc_by((prefix.len() - before) as u64);
        if alpn.iter().any(|p| p == ALPN_H2 || p == ALPN_OPAQUE) {
            let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
            return inbound_mtls(io, app, &shared, &limits, shutdown, peer).await;
        }
    }
    let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
    inbound_plaintext(detected, io, app, &shared, &limits, shutdown, peer).await;
}

async fn outbound(
    detected: Detected,
    io: ClientIo<TcpStream>,
    target: OutboundTarget,
    shared: &Arc<Shared>,
    limits: &Limits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    if detected == Detected::Opaque {
        match opaque_destination(shared, &target) {
            Some(OpaqueDestination::Address(addr)) => tcp::forward(io, addr, None).await,
            Some(OpaqueDestination::Endpoint(endpoint)) => {
                tcp::forward(io, endpoint.addr, endpoint.opaque_tls.as_ref()).await;
            }
            None => {
                let labels = TcpLabels { direction: Direction::outbound };
                shared.metrics.tcp_refused.get_or_create(&labels).inc();
                debug!(%peer, "opaque outbound connection with no destination: closed");
            }
        }
        return;
    }
    let connection = Arc::new(OutboundConnection { shared: shared.clone(), target });
    let handle = move |request| forward::outbound(connection.clone(), request);
    serve_http(detected, io, handle, limits, shutdown, ClientKind::OwnApp).await;
}

async fn inbound_plaintext(
    detected: Detected,
    io: ClientIo<TcpStream>,
    app: SocketAddr,
    shared: &Arc<Shared>,
    limits: &Limits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    let client = policy::Client { identity: None };
    let denied = {
        let table = shared.table.load();
        let policy = table.config.inbound.policy.as_ref();
        match detected {
            // HTTP is checked per request, so a denied one gets a 403 with the reason.
            Detected::Opaque => policy::authorize(policy, client, None, None, app.port()),
            _ => policy::admit_connection(policy, client, true),
        }
    };
    if let Err(denied) = denied {
        deny_connection(shared, Label::empty(), peer, &denied);
        return;
    }
    if detected == Detected::Opaque {
        return tcp::forward(io, app, None).await;
    }
    let connection = Arc::new(InboundConnection::new(shared.clone(), app, None));
    let handle = move |request| forward::inbound(connection.clone(), request);
    serve_http(detected, io, handle, limits, shutdown, ClientKind::Remote).await;
}

async fn inbound_mtls(
    io: ClientIo<TcpStream>,
    app: SocketAddr,
    shared: &Arc<Shared>,
    limits: &Limits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    let Some(credentials) = shared.identity.as_ref().and_then(|identity| identity.current()) else {
        debug!(%peer, "mTLS connection before this proxy has a certificate: closed");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server.clone());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            debug!(%peer, %error, "inbound mTLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "inbound mTLS handshake timed out");
            return;
        }
    };
    let (_, connection) = stream.get_ref();
    let client_id = tls::peer_identity(connection);
    let opaque = connection.alpn_protocol() == Some(ALPN_OPAQUE);
    if opaque {
        let denied = {
            let table = shared.table.load();
            let client = policy::Client { identity: client_id.as_deref() };
            policy::authorize(table.config.inbound.policy.as_ref(), client, None, None, app.port())
        };
        if let Err(denied) = denied {
            let id = client_id.as_deref().map_or_else(Label::empty, Label::new);
            deny_connection(shared, id, peer, &denied);
            return;
        }
        return tcp::forward(stream, app, None).await;
    }
    let connection = Arc::new(InboundConnection::new(shared.clone(), app, client_id));
    let handle = move |request| forward::inbound(connection.clone(), request);
    serve_http(Detected::Http2, stream, handle, limits, shutdown, ClientKind::Remote).await;
}

fn deny_connection(shared: &Shared, client_id: Label, peer: SocketAddr, denied: &policy::Denied) {
    shared.metrics.authz_denied.get_or_create(&DenyLabels { protocol: DenyProtocol::tcp, client_id }).inc();
    debug!(%peer, reason = %denied.0, "inbound connection denied by the policy: closed");
}

/// Reads the rest of the first TLS record and returns the ClientHello's ALPN protocols, or an
/// empty list when it is not a ClientHello the proxy can read (then it passes through).
async fn read_client_hello(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    timeout: Duration,
) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    loop {
        match client_hello::parse(buffer) {
            client_hello::Hello::Alpn(alpn) => return Some(alpn),
            client_hello::Hello::NotHello => return Some(Vec::new()),
            client_hello::Hello::NeedBytes(needed) => {
                buffer.reserve(needed.saturating_sub(buffer.len()));
                match tokio::time::timeout_at(deadline.into(), stream.read_buf(buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                    Ok(Ok(_)) => {}
                    Err(_) => return Some(Vec::new()),
                }
            }
        }
    }
}

/// How long a client of a known service may hold a connection open without sending anything.
const SILENT_CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// What a connection whose client sent nothing before the timeout becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// Opaque TCP: the server may speak first (an unknown destination, or inbound).
    Opaque,
    /// Closed: an idle HTTP client connection, which the client replaces when it needs one.
    Close,
}

/// Reads until the protocol is known, or the client stays silent for `timeout` (then `silence`
/// decides). `None` when the client closed without a byte, or was closed for its silence, or a
/// drain began while a `Silence::Close` client had sent nothing (it has no request in flight, and
/// would otherwise hold the drain until its deadline).
async fn read_prefix(
    mut stream: TcpStream,
    timeout: Duration,
    silence: Silence,
    shutdown: &CancellationToken,
) -> Option<(Detected, BytesMut, TcpStream)> {
    let mut buffer = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + timeout;
    loop {
        match detect::detect(&buffer) {
            Detected::NeedMore if buffer.len() < detect::MAX_DETECT_BYTES => {}
            Detected::NeedMore => return Some((Detected::Opaque, buffer, stream)),
            decided => return Some((decided, buffer, stream)),
        }
        if buffer.capacity() == buffer.len() {
            buffer.reserve(buffer.len());
        }
        let closable = buffer.is_empty() && silence == Silence::Close;
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buffer)) => read,
            () = shutdown.cancelled(), if closable => return None,
        };
        match read {
            Err(_) if closable => return None,
            Err(_) => return Some((Detected::Opaque, buffer, stream)),
            Ok(Ok(0)) if buffer.is_empty() => return None,
            Ok(Ok(0)) => return Some((Detected::Opaque, buffer, stream)),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                debug!(%error, "reading from a new connection failed");
                return None;
            }
        }
    }
}

enum OpaqueDestination {
    Address(SocketAddr),
    Endpoint(Arc<Endpoint>),
}

/// Where an opaque outbound connection goes: an endpoint of the service (its first route's
/// backends), or the original destination when no service claims it.
fn opaque_destination(shared: &Shared, target: &OutboundTarget) -> Option<OpaqueDestination> {
    let table = shared.table.load();
    let service = match target {
        OutboundTarget::Service(name) => table.service_by_name(name)?,
        OutboundTarget::Original(addr) => match table.service_by_address(*addr) {
            Some(service) => service,
            None => return Some(OpaqueDestination::Address(*addr)),
        },
        OutboundTarget::Unknown => return None,
    };
    let route = service.default_route()?;
    let backend = service.backends.get(route.pick_backend())?;
    balance::pick(&backend.endpoints, Instant::now())
        .map(|endpoint| OpaqueDestination::Endpoint(endpoint.clone()))
}

/// Who opened a client connection, which decides whether its request heads are timed.
#[derive(Clone, Copy)]
enum ClientKind {
    /// The pod's own app (outbound): trusted to send its heads promptly, so no head is timed.
    OwnApp,
    /// Anyone else (inbound): each head must arrive within `limits.headTimeout` (slowloris).
    Remote,
}

/// Serves a client connection's HTTP requests, each answered by `handle`: HTTP/2 with the h2
/// crate (`http::h2_server`); HTTP/1.1 with `http::h1_server` until a request needs hyper's
/// server, which then serves the rest of the connection.
async fn serve_http(
    detected: Detected,
    io: impl Transport,
    handle: impl Handler,
    limits: &Limits,
    shutdown: CancellationToken,
    client: ClientKind,
) {
    if detected == Detected::Http2 {
        return h2_server::serve(io, handle, limits, shutdown).await;
    }
    let max_head = limits.max_header_bytes.max(8192);
    let head_timeout = match client {
        ClientKind::OwnApp => None,
        ClientKind::Remote => Some(limits.head_timeout),
    };
    let Some(rest) = h1_server::serve(io, handle.clone(), max_head, head_timeout, &shutdown).await else {
        return;
    };
    let io = ClientIo::replaying(rest.read, rest.io);
    serve_hyper_http1(io, handle, max_head, shutdown, head_timeout).await;
}

async fn serve_hyper_http1(
    io: impl Transport,
    handle: impl Handler,
    max_head: usize,
    shutdown: CancellationToken,
    header_timeout: Option<Duration>,
) {
    let service = service_fn(move |request: http::Request<Incoming>| {
        let response = handle(request.map(ProxyBody::Streaming));
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Bounds the request head: a larger one is answered with 431.
        .max_buf_size(max_head)
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_end(result),
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            log_end(connection.await);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        debug!(%error, "client connection ended with an error");
    }
}
