//! Inbound: connections from other pods to this pod's app. Another proxy's mTLS is terminated
//! (`tls`); the connection, then each HTTP request, is authorised (`authorize`); what is allowed
//! goes to the app (`forward` for HTTP, `tcp` for opaque bytes).

pub mod authorize;
pub mod forward;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use braid_api::config::Limits;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::detect::{self, Detected, Silence};
use crate::http::{ClientKind, Transport, serve as serve_http};
use crate::io::ClientIo;
use crate::metrics::{Direction, Peer, TcpLabels};
use crate::state::ProxyState;
use crate::tcp::{self, Idle};
use authorize::Carries;
use forward::InboundConnection;

const INBOUND: TcpLabels = TcpLabels { direction: Direction::inbound };

/// Serves one connection to the app at `app` (its original destination, or `inbound.target`).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    state: &Arc<ProxyState>,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    // A client that stays silent may be talking to a server that speaks first: opaque TCP.
    let detected = detect::read_prefix(stream, limits.detect_timeout, Silence::Opaque, &shutdown).await;
    let Some((detected, mut prefix, mut stream)) = detected else { return };
    let (read_bytes, write_bytes) = state.metrics.tcp_bytes(&INBOUND);
    // The prefix was read before counting began.
    read_bytes.inc_by(prefix.len() as u64);
    let client = Client { app, peer, state, limits, shutdown };
    // Another proxy's mTLS (a ClientHello offering braid/* ALPN) is terminated here; everything
    // else is plaintext to the proxy, whatever it carries.
    if detected == Detected::Opaque && state.identity.is_some() && detect::may_be_tls(&prefix) {
        let before = prefix.len();
        let Some(hello) = detect::read_client_hello(&mut stream, &mut prefix, limits.detect_timeout).await
        else {
            return;
        };
        read_bytes.inc_by((prefix.len() - before) as u64);
        if tls::from_a_proxy(&hello.alpn) {
            let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
            let Some(terminated) = tls::terminate(state, io, peer).await else { return };
            let tls::Terminated { stream, client_id, carries } = terminated;
            // Another proxy sends HTTP/2 whatever its app spoke, opaque bytes, or an upgrade.
            return client.serve(carries, stream, Some(client_id)).await;
        }
    }
    let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
    client.serve(detected, io, None).await;
}

/// A client connection to the app, plaintext or with its mTLS terminated.
struct Client<'a> {
    app: SocketAddr,
    peer: SocketAddr,
    state: &'a Arc<ProxyState>,
    limits: &'a Limits,
    shutdown: CancellationToken,
}

impl Client<'_> {
    /// Authorises the connection, then forwards its bytes (opaque) or serves its HTTP requests,
    /// each authorised in turn. `client_id`: the SPIFFE id an mTLS client proved.
    async fn serve(self, detected: Detected, io: impl Transport, client_id: Option<String>) {
        let Self { app, peer, state, limits, shutdown } = self;
        let carries = if detected == Detected::Opaque { Carries::Opaque } else { Carries::Http };
        if !authorize::connection(state, client_id.as_deref(), carries, app, peer) {
            return;
        }
        let idle_closed = state.metrics.tcp_idle_timeout.get_or_create(&INBOUND).clone();
        if carries == Carries::Opaque {
            let idle = Idle { timeout: limits.idle_timeout, closed: idle_closed };
            return tcp::forward(io, app, None, Some(idle)).await;
        }
        let mesh_peer = client_id.is_some();
        let connection = Arc::new(InboundConnection::new(state.clone(), app, client_id));
        let handle = move |request| forward::handle(connection.clone(), request);
        let client = ClientKind::Remote { idle_closed, mesh_peer };
        let teardowns = state.metrics.teardowns(Direction::inbound, Peer::client);
        serve_http(detected, io, handle, limits, shutdown, client, teardowns).await;
    }
}
