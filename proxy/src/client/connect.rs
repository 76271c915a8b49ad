//! The transport to an upstream address: TCP, then mutual TLS to a meshed endpoint or TLS the
//! proxy originates to an external service. The one place TLS slots in; `UpstreamIo`'s variants
//! are the transports.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::{ALPN_HTTP1, Credentials, IdentityStore, tls};

/// How long a TCP connect may take before the endpoint counts as unreachable. Inside a cluster a
/// live pod answers a SYN in well under a millisecond; a deleted pod's address does not answer at
/// all, and every request picked for it waits this long (Linkerd uses 1 s too).
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the mTLS handshake may take: it costs CPU on both sides, which a busy node lacks.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no transport to an upstream address could be made. Every kind counts as a connect
/// failure for retries and for the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("no workload certificate yet, so no mTLS connection to {0} can be made")]
    NoIdentity(SocketAddr),
    /// `kind`: mTLS to a meshed endpoint, TLS the proxy originates to an external service.
    #[error("the {kind} handshake with {addr} failed: {source}")]
    Tls { addr: SocketAddr, kind: &'static str, source: io::Error },
}

impl ConnectError {
    /// The same failure, for a request that waited on the attempt that met it.
    pub fn again(&self) -> Self {
        let copy = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            Self::Connect { addr, source } => Self::Connect { addr: *addr, source: copy(source) },
            Self::Timeout(addr) => Self::Timeout(*addr),
            Self::NoIdentity(addr) => Self::NoIdentity(*addr),
            Self::Tls { addr, kind, source } => Self::Tls { addr: *addr, kind, source: copy(source) },
        }
    }
}

const MUTUAL: &str = "mTLS";

/// The transport under an upstream HTTP connection: plain TCP, or mutual TLS to a meshed endpoint.
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

/// How to reach an upstream over TLS: a meshed endpoint over mTLS (the identity it must prove and
/// the ALPN of the inner protocol; the client configuration cached until the credentials change),
/// or an external service whose TLS the proxy originates (a fixed configuration and server name).
pub struct TlsTarget(TlsKind);

enum TlsKind {
    Mesh {
        store: Arc<IdentityStore>,
        expected: String,
        alpn: &'static [u8],
        /// The configuration and the credentials it was built from (a new certificate or trust
        /// bundle is a new `Credentials`).
        cached: Mutex<Option<(Arc<Credentials>, Arc<rustls::ClientConfig>)>>,
    },
    External {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
}

impl TlsTarget {
    pub fn new(store: Arc<IdentityStore>, expected: String, alpn: &'static [u8]) -> Self {
        Self(TlsKind::Mesh { store, expected, alpn, cached: Mutex::new(None) })
    }

    /// TLS the proxy originates to a server outside the mesh, checked against `config`'s roots
    /// for `server_name`.
    pub fn external(config: Arc<rustls::ClientConfig>, server_name: ServerName<'static>) -> Self {
        Self(TlsKind::External { config, server_name })
    }

    /// A configuration offering `braid/http1` instead, for an upgrade's own connection: built
    /// each time, as upgrades are rare next to the handshake they cost.
    fn upgrade_config(
        &self,
        addr: SocketAddr,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ConnectError> {
        let TlsKind::Mesh { store, expected, .. } = &self.0 else { return self.client_config(addr) };
        let credentials = store.current().ok_or(ConnectError::NoIdentity(addr))?;
        tls::client_config(credentials.key.clone(), credentials.roots.clone(), expected.clone(), ALPN_HTTP1)
            .map(|config| (Arc::new(config), tls::mesh_server_name()))
            .map_err(|e| ConnectError::Tls { addr, kind: MUTUAL, source: io::Error::other(e) })
    }

    fn client_config(
        &self,
        addr: SocketAddr,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ConnectError> {
        let (store, expected, alpn, cached) = match &self.0 {
            TlsKind::External { config, server_name } => return Ok((config.clone(), server_name.clone())),
            TlsKind::Mesh { store, expected, alpn, cached } => (store, expected, alpn, cached),
        };
        let credentials = store.current().ok_or(ConnectError::NoIdentity(addr))?;
        let mut cached = cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((built_from, config)) = cached.as_ref()
            && Arc::ptr_eq(built_from, &credentials)
        {
            return Ok((config.clone(), tls::mesh_server_name()));
        }
        let config =
            tls::client_config(credentials.key.clone(), credentials.roots.clone(), expected.clone(), alpn)
                .map_err(|e| ConnectError::Tls { addr, kind: MUTUAL, source: io::Error::other(e) })?;
        let config = Arc::new(config);
        *cached = Some((credentials, config.clone()));
        Ok((config, tls::mesh_server_name()))
    }
}

/// Opens the transport to an upstream address: TCP, then mTLS when `tls` says so.
pub async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<UpstreamIo, ConnectError> {
    let config = tls.map(|tls| tls.client_config(addr)).transpose()?;
    connect_with(addr, config).await
}

/// Opens the transport for an HTTP/1.1 upgrade: as `connect`, but an mTLS connection asks the
/// other proxy for HTTP/1.1 (`braid/http1`).
pub async fn connect_for_upgrade(
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
) -> Result<UpstreamIo, ConnectError> {
    let config = tls.map(|tls| tls.upgrade_config(addr)).transpose()?;
    connect_with(addr, config).await
}

async fn connect_with(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<UpstreamIo, ConnectError> {
    let stream = tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Connect { addr, source })?;
    // Requests are small and latency matters more than packet count.
    stream.set_nodelay(true).map_err(|source| ConnectError::Connect { addr, source })?;
    let Some((config, server_name)) = tls else { return Ok(UpstreamIo::Plain(stream)) };
    let connector = tokio_rustls::TlsConnector::from(config);
    // The mesh's own connections all name the mesh; an external server is named for itself.
    let kind = if server_name == tls::mesh_server_name() { MUTUAL } else { "TLS" };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, stream))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Tls { addr, kind, source })?;
    Ok(UpstreamIo::Tls(Box::new(stream)))
}
