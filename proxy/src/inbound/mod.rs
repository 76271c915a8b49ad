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
use crate::http::{ClientKind, serve as serve_http};
use crate::io::ClientIo;
use crate::metrics::{Direction, TcpLabels};
use crate::state::ProxyState;
use crate::tcp;
use authorize::Carries;
use forward::InboundConnection;

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
    let (read_bytes, write_bytes) = state.metrics.tcp_bytes(&TcpLabels { direction: Direction::inbound });
    // The prefix was read before counting began.
    read_bytes.inc_by(prefix.len() as u64);
    // Another proxy's mTLS (a ClientHello offering braid/* ALPN) is terminated here; everything
    // else is plaintext to the proxy, whatever it carries.
    if detected == Detected::Opaque && state.identity.is_some() && tls::may_be_tls(&prefix) {
        let before = prefix.len();
        let Some(alpn) = tls::read_client_hello(&mut stream, &mut prefix, limits.detect_timeout).await else {
            return;
        };
        read_bytes.inc_by((prefix.len() - before) as u64);
        if tls::from_a_proxy(&alpn) {
            let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
            return mtls(io, app, state, limits, shutdown, peer).await;
        }
    }
    let io = ClientIo::new(prefix.freeze(), stream, read_bytes, write_bytes);
    plaintext(detected, io, app, state, limits, shutdown, peer).await;
}

async fn plaintext(
    detected: Detected,
    io: ClientIo<TcpStream>,
    app: SocketAddr,
    state: &Arc<ProxyState>,
    limits: &Limits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    let carries = if detected == Detected::Opaque { Carries::Opaque } else { Carries::Http };
    if !authorize::connection(state, None, carries, app, peer) {
        return;
    }
    if carries == Carries::Opaque {
        return tcp::forward(io, app, None).await;
    }
    let connection = Arc::new(InboundConnection::new(state.clone(), app, None));
    let handle = move |request| forward::handle(connection.clone(), request);
    serve_http(detected, io, handle, limits, shutdown, ClientKind::Remote).await;
}

async fn mtls(
    io: ClientIo<TcpStream>,
    app: SocketAddr,
    state: &Arc<ProxyState>,
    limits: &Limits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    let Some(terminated) = tls::terminate(state, io, peer).await else { return };
    let tls::Terminated { stream, client_id, opaque } = terminated;
    if opaque {
        if !authorize::connection(state, client_id.as_deref(), Carries::Opaque, app, peer) {
            return;
        }
        return tcp::forward(stream, app, None).await;
    }
    // HTTP/2 from another proxy: its requests are authorised one by one.
    let connection = Arc::new(InboundConnection::new(state.clone(), app, client_id));
    let handle = move |request| forward::handle(connection.clone(), request);
    serve_http(Detected::Http2, stream, handle, limits, shutdown, ClientKind::Remote).await;
}
