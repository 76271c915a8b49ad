//! Serving client connections' HTTP, shared by inbound and outbound: HTTP/2 with the h2 crate
//! (`h2_server`); HTTP/1.1 with the lean server (`h1_server`) until a request needs hyper's
//! server, which then serves the rest of the connection. Below them, what every proxied request
//! goes through: its path in normal form (`path`), its rewriting (`headers`), the proxy's own responses (`respond`), and the
//! forwarding and counting of one request (`forward`).

pub mod forward;
pub mod h1_server;
pub mod h2_server;
pub mod headers;
pub mod path;
pub mod respond;
pub mod upgrade;

use std::convert::Infallible;
use std::time::Duration;

use braid_api::config::Limits;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::detect::Detected;
use crate::io::ClientIo;
use crate::metrics::Teardowns;
use crate::tcp::Idle;

/// What answers each request of one client connection (`outbound::handle` or `inbound`'s
/// `forward::handle` bound to the connection): one name for the bounds every server of a
/// connection needs.
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

/// Who opened a client connection, which decides whether it is timed.
#[derive(Clone)]
pub enum ClientKind {
    /// The pod's own app (outbound): trusted to send its heads promptly and to close what it
    /// does not use, so nothing is timed.
    OwnApp,
    /// Anyone else (inbound): each HTTP/1.1 head must arrive within `limits.headTimeout`
    /// (slowloris), and an HTTP/2 connection without open streams is closed after
    /// `limits.idleTimeout`, counted in `idle_closed`. `mesh_peer`: another proxy, which proved
    /// an identity of the mesh over mTLS.
    Remote { idle_closed: Counter, mesh_peer: bool },
}

/// Serves a client connection's HTTP requests, each answered by `handle`; an HTTP/2 connection's
/// end is counted in `teardowns`.
pub async fn serve(
    detected: Detected,
    io: impl Transport,
    handle: impl Handler,
    limits: &Limits,
    shutdown: CancellationToken,
    client: ClientKind,
    teardowns: Teardowns,
) {
    let (head_timeout, idle, resets) = match client {
        ClientKind::OwnApp => (None, None, h2_server::Resets::Unbounded),
        ClientKind::Remote { idle_closed, mesh_peer } => (
            Some(limits.head_timeout),
            Some(Idle { timeout: limits.idle_timeout, closed: idle_closed }),
            if mesh_peer { h2_server::Resets::Unbounded } else { h2_server::Resets::Bounded },
        ),
    };
    if detected == Detected::Http2 {
        return h2_server::serve(io, handle, limits, idle, resets, shutdown, teardowns).await;
    }
    let max_head = limits.max_header_bytes.max(8192);
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
    let service = service_fn(move |mut request: http::Request<Incoming>| {
        let head_request = request.method() == http::Method::HEAD;
        let client_upgrade = upgrade::requested(request.version(), request.headers())
            .map(|_| hyper::upgrade::on(&mut request));
        let response = handle(request.map(ProxyBody::streaming));
        async move {
            let response = response.await;
            if let Some(client) = client_upgrade
                && upgrade::is_switching(&response)
            {
                return Ok::<_, Infallible>(upgrade::switch(client, response));
            }
            // hyper never reads the body of an answer to HEAD: emptied, it is not counted as a
            // response the client dropped.
            Ok(if head_request { response.map(ProxyBody::emptied) } else { response })
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Bounds the request head: a larger one is answered with 431.
        .max_buf_size(max_head)
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
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
