//! The accept loop every Braid server shares: TCP, optionally TLS with the configuration read per
//! connection (so a new certificate or trust bundle is a pointer swap), HTTP/1.1 and/or HTTP/2
//! through hyper, and a graceful drain on shutdown that is bounded in time.

use std::{
    error::Error as StdError,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, service::Service};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Which HTTP versions a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 only: over TLS after ALPN "h2", in plain TCP with prior knowledge.
    Http2,
    /// Both on one port, told apart by the HTTP/2 connection preface.
    Auto,
}

/// How a server accepts, serves and drains its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names the server in log lines ("admission server").
    pub name: &'static str,
    pub protocol: Protocol,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// HTTP/1: a client that has not sent its request headers by then is dropped; `None` waits.
    pub header_read_timeout: Option<Duration>,
    /// HTTP/2: ping the client this often, and drop the connection when it stops answering.
    pub keep_alive_interval: Option<Duration>,
    /// After shutdown, open connections get this long to finish their requests.
    pub drain_timeout: Duration,
    /// HTTP/2: streams one client may have open at once on a connection (hyper's default: 200).
    pub http2_max_concurrent_streams: Option<u32>,
}

impl Settings {
    /// 10 s for the handshake, 10 s to drain, no header or keep-alive timers.
    pub fn new(name: &'static str, protocol: Protocol) -> Self {
        Self {
            name,
            protocol,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: None,
            keep_alive_interval: None,
            drain_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: None,
        }
    }
}

/// Where the accept loop gets the TLS configuration of each new connection. A certificate
/// resolver inside a fixed configuration, or a swapped configuration, both rotate without a
/// restart.
pub trait TlsSource: Send + Sync + 'static {
    /// The configuration for the next handshake; `None` (no certificate yet) closes the connection.
    fn server_config(&self) -> Option<Arc<ServerConfig>>;
}

impl TlsSource for Arc<ServerConfig> {
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        Some(self.clone())
    }
}

impl TlsSource for RwLock<Option<Arc<ServerConfig>>> {
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A response body the accept loop can send from a connection's own task.
pub trait ResponseBody: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// A service the accept loop runs on a connection's own task.
pub trait ConnectionService<B: ResponseBody>:
    Service<Request<Incoming>, Response = Response<B>, Future: Send + 'static, Error: Into<BoxError>>
    + Send
    + 'static
{
}

impl<S, B: ResponseBody> ConnectionService<B> for S where
    S: Service<Request<Incoming>, Response = Response<B>, Future: Send + 'static, Error: Into<BoxError>>
        + Send
        + 'static
{
}

/// What a service factory knows of a connection before it serves it.
#[derive(Debug)]
pub struct Connection<'a> {
    pub peer: SocketAddr,
    /// The TLS session (client certificates, ALPN), when served over TLS.
    pub tls: Option<&'a rustls::ServerConnection>,
}

/// Serves `listener` until `shutdown`: each accepted connection gets a TLS handshake (when `tls`
/// is given, within `settings.handshake_timeout`), then the service `make_service` builds for it,
/// or is closed when that returns `None`. On shutdown the listener is closed, in-flight requests
/// finish (idle connections close at once, HTTP/2 clients get a GOAWAY), and this returns when
/// every connection is done or after `settings.drain_timeout`, closing those still open.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<Arc<dyn TlsSource>>,
    make_service: M,
    settings: Settings,
    shutdown: CancellationToken,
) where
    M: Fn(&Connection<'_>) -> Option<S> + Send + Sync + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let name = settings.name;
    let drain = settings.drain_timeout;
    let server = Arc::new(Server { builder: builder(&settings), settings, make_service });
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain times out, to close what is still open.
    let abandon = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%err, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = match &tls {
            None => None,
            Some(tls) => match tls.server_config() {
                Some(config) => Some(TlsAcceptor::from(config)),
                None => {
                    tracing::debug!(%peer, "{name}: no TLS configuration yet; closing the connection");
                    continue;
                }
            },
        };
        // Small requests and answers: never hold a segment back waiting for an ACK.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %err, "{name}: cannot set TCP_NODELAY");
        }
        // Taken before the handshake, so the drain also waits for connections still in it.
        let watcher = graceful.watcher();
        let server = server.clone();
        let abandon = abandon.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = server.connection(tcp, peer, acceptor, watcher) => {}
                () = abandon.cancelled() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("{name} drained"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!("{name}: connections still open after {drain:?}; closing them");
            abandon.cancel();
        }
    }
}

/// What every connection task of one server shares.
struct Server<M> {
    builder: auto::Builder<TokioExecutor>,
    settings: Settings,
    make_service: M,
}

fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Timers only when asked for: with a timer, hyper applies a default header timeout of its own.
    if let Some(timeout) = settings.header_read_timeout {
        builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout);
    }
    if let Some(interval) = settings.keep_alive_interval {
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(interval);
    }
    if let Some(streams) = settings.http2_max_concurrent_streams {
        builder.http2().max_concurrent_streams(streams);
    }
    match settings.protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Auto => builder,
    }
}

impl<M> Server<M> {
    async fn connection<S, B>(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        acceptor: Option<TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        M: Fn(&Connection<'_>) -> Option<S>,
        S: ConnectionService<B>,
        B: ResponseBody,
    {
        let name = self.settings.name;
        let Some(acceptor) = acceptor else {
            if let Some(service) = (self.make_service)(&Connection { peer, tls: None }) {
                self.http(tcp, peer, service, watcher).await;
            }
            return;
        };
        let tls = match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => return tracing::debug!(%peer, %err, "{name}: TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "{name}: TLS handshake timed out"),
        };
        if let Some(service) = (self.make_service)(&Connection { peer, tls: Some(tls.get_ref().1) }) {
            self.http(tls, peer, service, watcher).await;
        }
    }

    async fn http<I, S, B>(
        &self,
        io: I,
        peer: SocketAddr,
        service: S,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: ConnectionService<B>,
        B: ResponseBody,
    {
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, %err, "{}: connection ended with an error", self.settings.name);
        }
    }
}
