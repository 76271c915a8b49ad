//! Outbound: the app's connections to other services. Where a connection was going (its
//! original destination, a dedicated listener, or the Host header of each request) and what
//! discovery knows of it decide the service; each HTTP request then takes a route (`route`), with
//! its fault (`fault`), mirror (`mirror`) and retries (`retry`). Opaque connections go to an
//! endpoint of the service, or on to their original destination. A destination outside the
//! cluster is checked against its external services (`egress`).

pub mod egress;
pub mod fault;
pub mod mirror;
pub mod rate_limit;
pub mod redirect;
pub mod retry;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::config::{Limits, Protocol};
use bytes::BytesMut;
use http::{Request, Response, StatusCode, Version};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::balance::Endpoint;
use crate::client::UpstreamProtocol;
use crate::client::body::ProxyBody;
use crate::detect::{self, Detected, Silence};
use crate::http::forward::forward_once;
use crate::http::headers::authority_of;
use crate::http::respond::local;
use crate::http::{ClientKind, serve as serve_http};
use crate::io::ClientIo;
use crate::metrics::{Direction, Label, Peer, RequestLabels, TcpLabels, Tls};
use crate::state::ProxyState;
use crate::table::Table;
use crate::tcp;

/// How long a client of a known service may hold a connection open without sending anything.
const SILENT_CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where an outbound client connection was going.
#[derive(Debug, Clone)]
pub enum OutboundTarget {
    /// A listener dedicated to a service.
    Service(Arc<str>),
    /// A redirected connection: its original destination.
    Original(SocketAddr),
    /// Connected to the proxy directly: the Host header decides.
    Unknown,
}

/// One outbound client connection.
pub struct OutboundConnection {
    pub state: Arc<ProxyState>,
    pub target: OutboundTarget,
    /// The app's address: the key of `hashOn: sourceIp`.
    pub peer: SocketAddr,
}

/// Serves one connection from the app. `table` is the one loaded when it was accepted.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    target: OutboundTarget,
    table: Arc<Table>,
    state: &Arc<ProxyState>,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    // The connection's bytes wait in the socket while discovery is asked; then the connection
    // holds its destination: one in use is never evicted (`evict_idle`).
    let table = resolved_table(state, &target, table).await;
    let _in_use = match (&state.discovery, &target) {
        (Some(discovery), OutboundTarget::Original(addr)) => discovery.in_use(addr),
        _ => None,
    };
    let service = match &target {
        OutboundTarget::Service(name) => table.service_by_name(name),
        OutboundTarget::Original(addr) => table.service_by_address(*addr),
        OutboundTarget::Unknown => None,
    };
    let egress = service.and_then(|s| s.egress.clone());
    // Outside the cluster anything may answer, servers that speak first too: detected as for
    // an unknown destination.
    let service_protocol = service.filter(|_| egress.is_none()).map(|s| s.protocol);
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
    let (detected, mut prefix, mut stream) = match detection {
        None => (Detected::Opaque, BytesMut::new(), stream),
        Some((timeout, silence)) => match detect::read_prefix(stream, timeout, silence, &shutdown).await {
            Some(read) => read,
            None => return,
        },
    };
    let labels = TcpLabels { direction: Direction::outbound };
    if detected == Detected::Opaque
        && let (Some(egress), OutboundTarget::Original(addr)) = (&egress, &target)
    {
        let decided =
            egress::connection(state, egress, *addr, &mut stream, &mut prefix, limits.detect_timeout).await;
        match decided {
            None => return,
            Some(egress::Decision::Denied) => {
                state.metrics.tcp_refused.get_or_create(&labels).inc();
                return;
            }
            Some(_) => {}
        }
    }
    let (read_bytes, write_bytes) = state.metrics.tcp_bytes(&labels);
    // The prefix was read before counting began.
    read_bytes.inc_by(prefix.len() as u64);
    let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);

    if detected == Detected::Opaque {
        match opaque_destination(state, &target) {
            Some(OpaqueDestination::Address(addr)) => tcp::forward(io, addr, None, None).await,
            Some(OpaqueDestination::Endpoint(endpoint)) => {
                // maxConnections holds for opaque connections too; nothing waits for TCP.
                let slot = match endpoint.pool.connection_limit() {
                    None => None,
                    Some(limit) => match limit.try_slot() {
                        Some(slot) => Some(slot),
                        None => {
                            state.metrics.tcp_refused.get_or_create(&labels).inc();
                            debug!(%peer, endpoint = %endpoint.addr, "opaque connection over maxConnections: closed");
                            return;
                        }
                    },
                };
                tcp::forward(io, endpoint.addr, endpoint.opaque_tls.as_ref(), None).await;
                drop(slot);
            }
            None => {
                state.metrics.tcp_refused.get_or_create(&labels).inc();
                debug!(%peer, "opaque outbound connection with no destination: closed");
            }
        }
        return;
    }
    let connection = Arc::new(OutboundConnection { state: state.clone(), target, peer });
    let handle = move |request| self::handle(connection.clone(), request);
    let teardowns = state.metrics.teardowns(Direction::outbound, Peer::client);
    serve_http(detected, io, handle, limits, shutdown, ClientKind::OwnApp, teardowns).await;
}

enum OpaqueDestination {
    Address(SocketAddr),
    Endpoint(Arc<Endpoint>),
}

/// Where an opaque outbound connection goes: an endpoint of the service (its first route's
/// backends), or the original destination when no service claims it.
fn opaque_destination(state: &ProxyState, target: &OutboundTarget) -> Option<OpaqueDestination> {
    let table = state.table.load();
    let service = match target {
        OutboundTarget::Service(name) => table.service_by_name(name)?,
        OutboundTarget::Original(addr) => match table.service_by_address(*addr) {
            Some(service) if service.egress.is_none() => service,
            // Outside the cluster, let through by the egress check: where the app was going.
            _ => return Some(OpaqueDestination::Address(*addr)),
        },
        OutboundTarget::Unknown => return None,
    };
    let route = service.default_route()?;
    let backend = service.backends.get(route.pick_backend())?;
    service
        .balancer(backend)
        .choose(&backend.endpoints, None, Instant::now())
        .map(|endpoint| OpaqueDestination::Endpoint(endpoint.clone()))
}

/// `table`, or the table after discovery answered, when `target` is an original destination it
/// does not know: one discovery has not been asked about yet (or has let go of) waits for its
/// answer or initialTimeout. Settled unknown destinations cost one lock-free lookup.
async fn resolved_table(state: &ProxyState, target: &OutboundTarget, table: Arc<Table>) -> Arc<Table> {
    match (&state.discovery, target) {
        (Some(discovery), OutboundTarget::Original(addr)) if table.service_by_address(*addr).is_none() => {
            drop(table);
            discovery.resolve(&state.metrics, *addr).await;
            state.table.load_full()
        }
        _ => table,
    }
}

/// Handles one request from the app to a destination.
pub async fn handle(connection: Arc<OutboundConnection>, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let state = &connection.state;
    // A destination discovery let go of just as this connection opened is asked for again.
    let table = resolved_table(state, &connection.target, state.table.load_full()).await;
    let service = match &connection.target {
        OutboundTarget::Service(name) => table.service_by_name(name),
        OutboundTarget::Original(addr) => match table.service_by_address(*addr) {
            Some(service) => match &service.egress {
                Some(egress) => {
                    let egress = egress.clone();
                    drop(table);
                    return egress::request(state, &egress, *addr, request).await;
                }
                None => Some(service),
            },
            None => return passthrough(state, *addr, request).await,
        },
        OutboundTarget::Unknown => {
            authority_of(&request).and_then(|authority| table.service_by_host(authority))
        }
    };
    let Some(service) = service.cloned() else {
        let host = authority_of(&request).unwrap_or("").to_owned();
        return local(
            StatusCode::BAD_GATEWAY,
            "no-destination",
            format!(
                "braid-proxy: no service is configured for host {host:?}, and the connection was not redirected, so \
                 there is no original destination to forward to\n"
            ),
        );
    };
    let limit = table.config.limits.max_retry_body_bytes;
    let access_log = table.config.access_log;
    drop(table);
    route::route_request(state, &service, Some(connection.peer.ip()), request, limit, access_log).await
}

/// An outbound request to an address no service claims: forwarded unchanged, and counted.
async fn passthrough(
    state: &ProxyState,
    addr: SocketAddr,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let protocol =
        if parts.version == Version::HTTP_2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
    let pool = state.pool(addr, protocol);
    let labels = RequestLabels {
        direction: Direction::outbound,
        authority: state.passthrough_label(addr),
        target_addr: crate::metrics::TargetAddr::none(),
        dst_service: Label::empty(),
        route: Label::empty(),
        client_id: Label::empty(),
        tls: Tls::NotYetKnown,
    };
    let metrics = state.metrics.request_metrics(&labels);
    forward_once(&pool, &metrics, &mut parts, body).await
}
