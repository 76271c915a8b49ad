//! Connections to one upstream address: a pool of idle HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection. The transport is made by `connect`, the one place mTLS will slot in: it
//! returns an `UpstreamIo` whose variants are the transports.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::ProxyBody;
use crate::identity::{IdentityStore, tls};

/// How long a TCP connect may take before the endpoint counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they return.
const MAX_IDLE_HTTP1: usize = 256;

/// Why an upstream request failed; the kind decides the status the client gets and whether the
/// request may be retried.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("no workload certificate yet, so no mTLS connection to {0} can be made")]
    NoIdentity(SocketAddr),
    #[error("the mTLS handshake with {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: io::Error },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    /// The connection broke before a response arrived (reset, closed, protocol error).
    #[error("the connection to {addr} failed before a response: {source}")]
    Reset { addr: SocketAddr, source: hyper::Error },
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout(_)
                | Self::Handshake { .. }
                | Self::NoIdentity(_)
                | Self::Tls { .. }
        )
    }
}

/// The transport under an upstream HTTP connection. Plain TCP today; TLS is another variant.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// How to reach a meshed endpoint over mTLS: the identity it must prove and the ALPN of the
/// inner protocol. The client configuration is cached until the credentials change.
pub struct TlsTarget {
    store: Arc<IdentityStore>,
    expected: String,
    alpn: &'static [u8],
    cached: Mutex<Option<(u64, Arc<rustls::ClientConfig>)>>,
}

impl TlsTarget {
    pub fn new(store: Arc<IdentityStore>, expected: String, alpn: &'static [u8]) -> Self {
        Self { store, expected, alpn, cached: Mutex::new(None) }
    }

    fn client_config(&self, addr: SocketAddr) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
        let credentials = self.store.current().ok_or(UpstreamError::NoIdentity(addr))?;
        let mut cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((generation, config)) = cached.as_ref()
            && *generation == credentials.generation
        {
            return Ok(config.clone());
        }
        let config = tls::client_config(
            credentials.key.clone(),
            credentials.roots.clone(),
            self.expected.clone(),
            self.alpn,
        )
        .map_err(|e| UpstreamError::Tls { addr, source: io::Error::other(e) })?;
        let config = Arc::new(config);
        *cached = Some((credentials.generation, config.clone()));
        Ok(config)
    }
}

/// Opens the transport to an upstream address: TCP, then mTLS when `tls` says so.
pub async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<UpstreamIo, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr))?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    // Requests are small and latency matters more than packet count.
    stream.set_nodelay(true).map_err(|source| UpstreamError::Connect { addr, source })?;
    let Some(tls) = tls else { return Ok(UpstreamIo::Plain(stream)) };
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(addr)?);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(tls::mesh_server_name(), stream))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr))?
        .map_err(|source| UpstreamError::Tls { addr, source })?;
    Ok(UpstreamIo::Tls(Box::new(stream)))
}

/// Which protocol the proxy speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// The connections to one upstream address.
pub struct Pool {
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    http1_idle: Mutex<Vec<http1::SendRequest<ProxyBody>>>,
    http2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// Serialises HTTP/2 connects, so a burst of requests opens one connection, not many.
    http2_connecting: tokio::sync::Mutex<()>,
    tls: Option<TlsTarget>,
}

impl Pool {
    pub fn new(addr: SocketAddr, protocol: UpstreamProtocol) -> Self {
        Self::with_tls(addr, protocol, None)
    }

    pub fn with_tls(addr: SocketAddr, protocol: UpstreamProtocol, tls: Option<TlsTarget>) -> Self {
        Self {
            addr,
            protocol,
            http1_idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connecting: tokio::sync::Mutex::new(()),
            tls,
        }
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Sends a request; the request's URI must suit the protocol (origin-form for HTTP/1.1,
    /// absolute for HTTP/2).
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        match self.protocol {
            UpstreamProtocol::Http1 => self.send_http1(request).await,
            UpstreamProtocol::Http2 => self.send_http2(request).await,
        }
    }

    async fn send_http1(&self, request: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self.take_idle_http1() {
            Some(sender) => sender,
            // Boxed: connecting (TCP, maybe TLS, the handshake) is rare, and its state would
            // otherwise make every request's future, moved on each spawn, several KiB larger.
            None => Box::pin(self.connect_http1()).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Reset { addr: self.addr, source })?;
        // Back to the pool at once: it becomes ready again when the response body is read, and
        // take_idle_http1 skips it until then.
        self.return_http1(sender);
        Ok(response)
    }

    fn take_idle_http1(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.http1_idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut i = 0;
        while i < idle.len() {
            if idle[i].is_closed() {
                idle.swap_remove(i);
            } else if idle[i].is_ready() {
                return Some(idle.swap_remove(i));
            } else {
                i += 1;
            }
        }
        None
    }

    fn return_http1(&self, sender: http1::SendRequest<ProxyBody>) {
        let mut idle = self.http1_idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_HTTP1 {
            idle.push(sender);
        }
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let io = connect(self.addr, self.tls.as_ref()).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: self.addr, source })?;
        drive(self.addr, "HTTP/1.1", connection);
        Ok(sender)
    }

    async fn send_http2(&self, request: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self.live_http2() {
            Some(sender) => sender,
            None => {
                // Boxed, as in send_http1: the rare path stays out of every request's future.
                Box::pin(self.reconnect_http2()).await?
            }
        };
        sender.send_request(request).await.map_err(|source| UpstreamError::Reset { addr: self.addr, source })
    }

    async fn reconnect_http2(&self) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let _connecting = self.http2_connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        let sender = self.connect_http2().await?;
        *self.http2.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    fn live_http2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut slot = self.http2.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match slot.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let io = connect(self.addr, self.tls.as_ref()).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Larger windows than the 64 KiB default: a meshed connection carries many streams.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: self.addr, source })?;
        drive(self.addr, "HTTP/2", connection);
        Ok(sender)
    }
}

/// Runs an upstream connection's I/O on its own task until it ends.
fn drive<C>(addr: SocketAddr, protocol: &'static str, connection: C)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%addr, %error, protocol, "upstream connection ended");
        }
    });
}
