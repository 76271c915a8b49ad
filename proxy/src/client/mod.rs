//! The client side of the proxy, under both inbound and outbound: connections to one upstream
//! address. A `Pool` keeps idle HTTP/1.1 connections (our lean client in `http1` for requests
//! without a streaming body, hyper's client for the rest), or one multiplexed HTTP/2 connection
//! (the h2 crate, driven here: each request is sent from its own task and its response awaited
//! there, and the connection's task writes all the frames of a turn at once, see `coalesce`). The
//! transport is made by `connect`, the one place mTLS slots in.

pub mod body;
pub mod coalesce;
pub mod connect;
pub mod http1;
pub mod limit;
pub mod replay;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body::Body as _;
use hyper::client::conn::http1 as hyper_http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::http::h2_server::teardown_reason;
use crate::metrics::{TeardownReason, Teardowns};

use body::{Http2Body, ProxyBody};
use coalesce::{FlushAfterPoll, coalesce};
pub use connect::{ConnectError, TlsTarget, UpstreamIo, connect, connect_for_upgrade};
use http1::{self as lean, EncodedRequest, Http1Connection, Http1Error, IdleConnections, MAX_IDLE_HTTP1};
use limit::{ConnectionLimit, ConnectionSlot, Overflow, Waited};
/// An HTTP/2 connection is pinged this often, and closed when the answer takes longer than
/// `KEEP_ALIVE_TIMEOUT`: a peer that vanished without a FIN (a node gone) is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests that may wait for a connection under `maxConnections` when `maxPendingRequests` is
/// not given (Envoy's default).
const DEFAULT_MAX_PENDING: u32 = 1024;

/// Why an upstream request failed; the kind decides the status the client gets and whether the
/// request may be retried.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No transport could be made (TCP, or the mTLS handshake).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/1.1 handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Http2Handshake { addr: SocketAddr, source: h2::Error },
    /// The connection broke before a response arrived (reset, closed, protocol error).
    #[error("the connection to {addr} failed before a response: {source}")]
    Reset { addr: SocketAddr, source: hyper::Error },
    /// A lean HTTP/1.1 exchange failed: the connection broke, or the response was not HTTP.
    #[error("HTTP/1.1 to {addr}: {source}")]
    Http1 { addr: SocketAddr, source: Http1Error },
    /// The HTTP/2 stream or its connection broke before a response arrived.
    #[error("the HTTP/2 connection to {addr} failed before a response: {source}")]
    Http2Reset { addr: SocketAddr, source: h2::Error },
    /// The client's request body broke off while it was being sent (its chunked framing was
    /// malformed, or the client went away): the client's error, which says nothing of the
    /// upstream's health.
    #[error("the request body from the client broke off while it was sent to {addr}: {reason}")]
    RequestBody { addr: SocketAddr, reason: String },
    /// The service's connection limits to this endpoint were reached (`maxConnections` busy,
    /// `maxPendingRequests` waiting): refused here, without touching the endpoint.
    #[error(
        "all {} connections to {addr} (maxConnections) are busy and {} requests (maxPendingRequests) already wait for one",
        .overflow.max_connections, .overflow.max_pending
    )]
    Overflow { addr: SocketAddr, overflow: Overflow },
    /// An extended CONNECT (RFC 8441: a WebSocket over HTTP/2) for an upstream that speaks
    /// HTTP/1.1, which has no such request.
    #[error(
        "{addr} speaks HTTP/1.1, and an extended CONNECT (:protocol {protocol}) reaches only an HTTP/2 upstream: \
         serve HTTP/2 (h2c) there, or have the client use an HTTP/1.1 Upgrade"
    )]
    ExtendedConnect { addr: SocketAddr, protocol: String },
}

/// A failed send: why, and the request itself when none of it left (`Pool::try_send`).
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<Box<Request<ProxyBody>>>,
}

impl SendFailure {
    fn unsent(error: UpstreamError, request: Request<ProxyBody>) -> Self {
        Self { error, unsent: Some(Box::new(request)) }
    }
}

impl From<UpstreamError> for SendFailure {
    fn from(error: UpstreamError) -> Self {
        Self { error, unsent: None }
    }
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Handshake { .. } | Self::Http2Handshake { .. })
    }

    /// Whether the endpoint itself could not be reached (refused, unreachable, timed out, or its
    /// mTLS handshake failed), as opposed to this proxy having no certificate yet.
    pub fn is_endpoint_unreachable(&self) -> bool {
        match self {
            Self::Connect(ConnectError::NoIdentity(_)) => false,
            other => other.is_connect(),
        }
    }
    /// The reason of the upstream's own reset of the request's HTTP/2 stream, when that is
    /// how the request failed.
    pub fn stream_reset(&self) -> Option<h2::Reason> {
        match self {
            Self::Http2Reset { source, .. } if source.is_reset() && source.is_remote() => source.reason(),
            _ => None,
        }
    }

    /// Whether the client, not the upstream, caused the failure.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::RequestBody { .. })
    }

    /// Whether this proxy's own connection limits refused the request before it left.
    pub fn is_overflow(&self) -> bool {
        matches!(self, Self::Overflow { .. })
    }

    /// Whether the request never left this proxy (its limits, or a request the upstream's
    /// protocol cannot carry): nothing to hold against the endpoint.
    pub fn never_sent(&self) -> bool {
        matches!(self, Self::Overflow { .. } | Self::ExtendedConnect { .. })
    }

    /// What hyper's client reported: the request body it was writing failed (it holds our
    /// `BodyError`, which only the client's side of the proxy produces), or the exchange did.
    fn hyper(addr: SocketAddr, source: hyper::Error) -> Self {
        use std::error::Error as _;
        match source.source().and_then(|cause| cause.downcast_ref::<body::BodyError>()) {
            Some(cause) if source.is_user() => Self::RequestBody { addr, reason: cause.to_string() },
            _ => Self::Reset { addr, source },
        }
    }

    /// What h2 reported for a request whose body was streaming (`streaming_body`): a reset of
    /// our own with CANCEL is the body task's (`send_body`) when the client's request body
    /// failed; anything else is the upstream's or the connection's.
    fn http2(addr: SocketAddr, source: h2::Error, streaming_body: bool) -> Self {
        let own_cancel = source.is_reset()
            && !source.is_remote()
            && !source.is_library()
            && source.reason() == Some(h2::Reason::CANCEL);
        if streaming_body && own_cancel {
            return Self::RequestBody { addr, reason: "the client's body failed".to_owned() };
        }
        Self::Http2Reset { addr, source }
    }
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
    /// Idle connections for requests without a streaming body (`http1`, the common case).
    http1_lean_idle: IdleConnections,
    /// Idle connections of hyper's client, for requests that stream a body, with the requests
    /// each has carried.
    http1_idle: Mutex<Vec<(hyper_http1::SendRequest<ProxyBody>, u32)>>,
    http2: Mutex<Option<Http2Sender>>,
    /// Serialises HTTP/2 connects, so a burst of requests opens one connection, not many; holds
    /// the last attempt's failure, which the requests that waited on it are given.
    http2_connecting: tokio::sync::Mutex<Option<FailedConnect>>,
    tls: Option<TlsTarget>,
    /// Where the end of each HTTP/2 connection is counted, once the owner says (`count_teardowns`).
    teardowns: OnceLock<Teardowns>,
    /// Requests (HTTP/2: streams) a connection carries before it is let go; 0: no limit.
    max_requests_per_connection: AtomicU32,
    /// `maxConnections` and `maxPendingRequests`: HTTP/1.1 and opaque TCP only.
    limit: ArcSwapOption<ConnectionLimit>,
}

impl Pool {
    pub fn new(addr: SocketAddr, protocol: UpstreamProtocol) -> Self {
        Self::with_tls(addr, protocol, None)
    }

    pub fn with_tls(addr: SocketAddr, protocol: UpstreamProtocol, tls: Option<TlsTarget>) -> Self {
        Self {
            addr,
            protocol,
            http1_lean_idle: IdleConnections::default(),
            http1_idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connecting: tokio::sync::Mutex::new(None),
            tls,
            teardowns: OnceLock::new(),
            max_requests_per_connection: AtomicU32::new(0),
            limit: ArcSwapOption::empty(),
        }
    }

    /// The service's `maxConnections` (and `maxPendingRequests`, 1024 when not given) to this
    /// endpoint; kept as it is when unchanged, so a reload neither forgets the connections open
    /// nor lets more in.
    pub fn set_connection_limit(&self, max_connections: Option<u32>, max_pending: Option<u32>) {
        let wanted = max_connections.map(|max| (max, max_pending.unwrap_or(DEFAULT_MAX_PENDING)));
        let current = self.limit.load();
        let current = current.as_ref().map(|limit| (limit.max_connections, limit.max_pending));
        if current != wanted {
            self.limit.store(wanted.map(|(connections, pending)| ConnectionLimit::new(connections, pending)));
        }
    }

    pub fn connection_limit(&self) -> Option<Arc<ConnectionLimit>> {
        self.limit.load_full()
    }

    fn overflow(&self, overflow: Overflow) -> UpstreamError {
        UpstreamError::Overflow { addr: self.addr, overflow }
    }

    /// A place for a new connection under the limit, or a connection of the pool that came free
    /// while waiting for one (`Err(Ok(idle))`).
    async fn slot_or_idle<T>(
        &self,
        take_idle: impl FnMut() -> Option<T>,
    ) -> Result<Result<Option<ConnectionSlot>, T>, UpstreamError> {
        let Some(limit) = self.limit.load_full() else { return Ok(Ok(None)) };
        if let Some(slot) = limit.try_slot() {
            return Ok(Ok(Some(slot)));
        }
        match limit.wait(take_idle).await.map_err(|overflow| self.overflow(overflow))? {
            Waited::Idle(idle) => Ok(Err(idle)),
            Waited::Slot(slot) => Ok(Ok(Some(slot))),
        }
    }

    /// How many requests each connection carries before it is closed after its last answer and
    /// another one opened (the service's `maxRequestsPerConnection`); `None`: no limit.
    pub fn set_max_requests_per_connection(&self, max: Option<u32>) {
        self.max_requests_per_connection.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    fn requests_per_connection(&self) -> Option<u32> {
        Some(self.max_requests_per_connection.load(Ordering::Relaxed)).filter(|&max| max != 0)
    }

    /// Counts the ends of this pool's HTTP/2 connections in `teardowns` (the first call wins).
    pub fn count_teardowns(&self, teardowns: impl FnOnce() -> Teardowns) {
        self.teardowns.get_or_init(teardowns);
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Sends a request; the request's URI must suit the protocol (origin-form for HTTP/1.1,
    /// absolute for HTTP/2).
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, UpstreamError> {
        self.try_send(request).await.map_err(|failed| failed.error)
    }

    /// As `send`, but a request that never left because no connection to the endpoint could be
    /// had (refused, unreachable, a failed handshake, the connection limits) comes back with the
    /// error: none of it was sent, so it may go to another endpoint whatever its method.
    pub async fn try_send(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendFailure> {
        if request.extensions().get::<crate::http::upgrade::Upgrading>().is_some() {
            return Box::pin(self.send_upgrade(request)).await;
        }
        match self.protocol {
            UpstreamProtocol::Http1 => self.send_http1(request).await,
            UpstreamProtocol::Http2 => self.send_http2(request).await,
        }
    }

    async fn send_http1(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendFailure> {
        if let Some(protocol) = request.extensions().get::<h2::ext::Protocol>() {
            return Err(SendFailure::from(UpstreamError::ExtendedConnect {
                addr: self.addr,
                protocol: protocol.as_str().to_owned(),
            }));
        }
        let body = request.body();
        let whole_body = match body.in_memory() {
            Some(bytes) => Some(bytes.cloned()),
            None if body.is_end_stream() => Some(None),
            None => None,
        };
        match whole_body {
            Some(body) => {
                let encoded = EncodedRequest::new(&request, body.as_ref());
                let connection = match self.take_idle_lean() {
                    Some(connection) => connection,
                    None => match Box::pin(self.open_lean()).await {
                        Ok(connection) => connection,
                        Err(error) => return Err(SendFailure::unsent(error, request)),
                    },
                };
                drop(request);
                Ok(self.send_http1_lean(connection, &encoded).await?)
            }
            None => self.send_http1_streaming(request).await,
        }
    }

    async fn send_http1_lean(
        &self,
        connection: Http1Connection,
        request: &EncodedRequest,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let reused = connection.reused;
        let source = match lean::send(connection, request, &self.http1_lean_idle).await {
            Ok(response) => return Ok(response.map(ProxyBody::http1)),
            Err((source, answered)) => {
                if answered || !reused || !request.is_idempotent() {
                    return Err(UpstreamError::Http1 { addr: self.addr, source });
                }
                source
            }
        };
        // A kept-alive connection that broke before any answer was most likely closed by the
        // server as the request went out (its idle timeout): once more, on a new connection.
        debug!(addr = %self.addr, error = %source, "idle HTTP/1.1 connection was closed; sending again");
        let connection = Box::pin(self.open_lean()).await?;
        lean::send(connection, request, &self.http1_lean_idle)
            .await
            .map(|response| response.map(ProxyBody::http1))
            .map_err(|(source, _)| UpstreamError::Http1 { addr: self.addr, source })
    }

    fn take_idle_lean(&self) -> Option<Http1Connection> {
        let mut idle = self.http1_lean_idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(max) = self.requests_per_connection() {
            // Those that carried their share are closed, not kept for later.
            idle.retain(|connection| connection.served < max);
        }
        while let Some(mut connection) = idle.pop() {
            if connection.is_usable() {
                return Some(connection);
            }
        }
        None
    }

    /// A new connection, or, under `maxConnections`, one of the pool's that came free while
    /// this request waited for its turn.
    async fn open_lean(&self) -> Result<Http1Connection, UpstreamError> {
        let slot = match self.slot_or_idle(|| self.take_idle_lean()).await? {
            Ok(slot) => slot,
            Err(idle) => return Ok(idle),
        };
        let mut connection = Http1Connection::new(connect(self.addr, self.tls.as_ref()).await?);
        connection.slot = slot;
        Ok(connection)
    }

    async fn send_http1_streaming(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendFailure> {
        let (mut sender, served) = match self.take_idle_http1() {
            Some(idle) => idle,
            // Boxed: connecting (TCP, maybe TLS, the handshake) is rare, and its state would
            // otherwise make every request's future, moved on each spawn, several KiB larger.
            None => match Box::pin(self.open_http1()).await {
                Ok(connection) => connection,
                Err(error) => return Err(SendFailure::unsent(error, request)),
            },
        };
        let response =
            sender.send_request(request).await.map_err(|source| UpstreamError::hyper(self.addr, source))?;
        // Back to the pool at once: it becomes ready again when the response body is read, and
        // take_idle_http1 skips it until then.
        self.return_http1(sender, served + 1);
        Ok(response.map(ProxyBody::streaming))
    }

    fn take_idle_http1(&self) -> Option<(hyper_http1::SendRequest<ProxyBody>, u32)> {
        let mut idle = self.http1_idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut i = 0;
        while i < idle.len() {
            if idle[i].0.is_closed() {
                idle.swap_remove(i);
            } else if idle[i].0.is_ready() {
                return Some(idle.swap_remove(i));
            } else {
                i += 1;
            }
        }
        None
    }

    /// Keeps a connection for later unless the pool is full or it carried its share: dropped,
    /// hyper closes it once its response is read.
    fn return_http1(&self, sender: hyper_http1::SendRequest<ProxyBody>, served: u32) {
        if self.requests_per_connection().is_some_and(|max| served >= max) {
            return;
        }
        let mut idle = self.http1_idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_HTTP1 {
            idle.push((sender, served));
        }
        drop(idle);
        if let Some(limit) = self.limit.load().as_ref() {
            limit.connection_returned();
        }
    }

    /// As `open_lean`, for hyper's connections: the slot lives as long as the connection's task.
    async fn open_http1(&self) -> Result<(hyper_http1::SendRequest<ProxyBody>, u32), UpstreamError> {
        let slot = match self.slot_or_idle(|| self.take_idle_http1()).await? {
            Ok(slot) => slot,
            Err(idle) => return Ok(idle),
        };
        let io = connect(self.addr, self.tls.as_ref()).await?;
        let (sender, connection) = self.handshake_http1(io).await?;
        drive_http1(self.addr, async move {
            let _slot = slot;
            connection.await
        });
        Ok((sender, 0))
    }

    async fn handshake_http1(
        &self,
        io: UpstreamIo,
    ) -> Result<
        (hyper_http1::SendRequest<ProxyBody>, hyper_http1::Connection<TokioIo<UpstreamIo>, ProxyBody>),
        UpstreamError,
    > {
        hyper_http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: self.addr, source })
    }

    /// Sends an upgrade request on an HTTP/1.1 connection of its own (another proxy's inbound
    /// takes it with ALPN braid/http1), never pooled: after a 101 the connection is the tunnel's.
    /// The response carries the connection for the tunnel (`hyper::upgrade::on`).
    async fn send_upgrade(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendFailure> {
        let connected = match connect_for_upgrade(self.addr, self.tls.as_ref()).await {
            Ok(io) => self.handshake_http1(io).await,
            Err(error) => Err(error.into()),
        };
        let (mut sender, connection) = match connected {
            Ok(connected) => connected,
            Err(error) => return Err(SendFailure::unsent(error, request)),
        };
        drive_http1(self.addr, connection.with_upgrades());
        let response =
            sender.send_request(request).await.map_err(|source| UpstreamError::hyper(self.addr, source))?;
        Ok(response.map(ProxyBody::streaming))
    }

    async fn send_http2(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendFailure> {
        let sender = match self.http2_sender().await {
            Ok(sender) => sender,
            Err(error) => return Err(SendFailure::unsent(error, request)),
        };
        let reset = |source| UpstreamError::Http2Reset { addr: self.addr, source };
        // Waits while the peer's limit of concurrent streams is reached.
        let Http2Sender { send, state } = sender;
        let mut send = match send.ready().await {
            Ok(send) => send,
            Err(error) => {
                // The peer sent GOAWAY (it is draining) or the connection failed. Nothing of this
                // request was sent, so it goes on a new connection, whatever its method.
                debug!(addr = %self.addr, %error, "HTTP/2 connection refuses new streams; reconnecting");
                if error.is_go_away() {
                    state.goaway.store(true, Ordering::Release);
                }
                state.closed.store(true, Ordering::Release);
                match Box::pin(self.reconnect_http2()).await {
                    Ok(sender) => sender.send.ready().await.map_err(reset)?,
                    Err(error) => return Err(SendFailure::unsent(error, request)),
                }
            }
        };
        let (head, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        let (response, stream) =
            send.send_request(Request::from_parts(head, ()), end_of_stream).map_err(reset)?;
        let cancel = (!end_of_stream).then(|| {
            let (cancel, cancelled) = tokio::sync::oneshot::channel();
            tokio::spawn(send_body(body, stream, Some(cancelled)));
            CancelOnDrop(Some(cancel))
        });
        let response =
            response.await.map_err(|source| UpstreamError::http2(self.addr, source, cancel.is_some()))?;
        // Answered: the body goes on streaming for as long as it lasts (gRPC bidi streams).
        if let Some(cancel) = cancel {
            cancel.disarm();
        }
        let (parts, stream) = response.into_parts();
        let body = Http2Body::new(stream, &parts.headers);
        Ok(Response::from_parts(parts, ProxyBody::http2(body)))
    }

    /// The connection the next stream goes on. With `maxRequestsPerConnection`, the stream that
    /// reaches it closes the connection to new ones (it ends once its streams have), and any
    /// stream past it goes on a new connection.
    async fn http2_sender(&self) -> Result<Http2Sender, UpstreamError> {
        loop {
            let sender = match self.live_http2() {
                Some(sender) => sender,
                // Boxed, as in send_http1: the rare path stays out of every request's future.
                None => Box::pin(self.reconnect_http2()).await?,
            };
            let Some(max) = self.requests_per_connection() else { return Ok(sender) };
            let streams = sender.state.streams.fetch_add(1, Ordering::Relaxed) + 1;
            if streams >= max {
                sender.state.closed.store(true, Ordering::Release);
                // Let go now, so it closes when its streams end rather than at the next request.
                let mut slot = self.http2.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if slot.as_ref().is_some_and(|kept| Arc::ptr_eq(&kept.state, &sender.state)) {
                    *slot = None;
                }
            }
            if streams <= max {
                return Ok(sender);
            }
        }
    }

    async fn reconnect_http2(&self) -> Result<Http2Sender, UpstreamError> {
        let asked = Instant::now();
        let mut connecting = self.http2_connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        // Or failed to: this request gets that failure now, rather than an attempt of its own
        // after it. Each attempt at a gone pod takes the connect timeout, so the tenth request
        // of a burst would wait ten of them before it could go on to another endpoint.
        if let Some(failed) = connecting.as_ref().filter(|failed| failed.at >= asked) {
            return Err(UpstreamError::Connect(failed.error.again()));
        }
        match self.connect_http2().await {
            Ok(sender) => {
                *connecting = None;
                *self.http2.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender.clone());
                Ok(sender)
            }
            Err(UpstreamError::Connect(error)) => {
                *connecting = Some(FailedConnect { at: Instant::now(), error: error.again() });
                Err(UpstreamError::Connect(error))
            }
            Err(other) => Err(other),
        }
    }

    fn live_http2(&self) -> Option<Http2Sender> {
        let mut slot = self.http2.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match slot.as_ref() {
            Some(sender) if !sender.state.closed.load(Ordering::Acquire) => Some(sender.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    async fn connect_http2(&self) -> Result<Http2Sender, UpstreamError> {
        let addr = self.addr;
        let io = connect(addr, self.tls.as_ref()).await?;
        let (io, flusher) = coalesce(io);
        let (send, connection) = h2::client::Builder::new()
            // Larger windows than the 64 KiB default: a meshed connection carries many streams.
            .initial_window_size(1 << 20)
            // The connection is shared by every client of this upstream, and each request a client
            // cancels resets a stream; h2's bound (1,024 in the connection's life, never lowered)
            // would end it, with everyone's requests in flight, after that many cancellations.
            .max_local_error_reset_streams(None)
            .initial_connection_window_size(4 << 20)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|source| UpstreamError::Http2Handshake { addr, source })?;
        let state = Arc::new(Http2State::default());
        let sender = Http2Sender { send, state: state.clone() };
        let teardowns = self.teardowns.get().cloned();
        tokio::spawn(async move {
            let mut connection = connection;
            let ping_pong = connection.ping_pong();
            tokio::pin!(connection);
            let ended = tokio::select! {
                result = FlushAfterPoll::new(connection.as_mut(), &flusher) => result.map_err(Some),
                () = keep_alive(ping_pong) => Err(None),
            };
            state.closed.store(true, Ordering::Release);
            let reason = match &ended {
                Err(None) => TeardownReason::ping_timeout,
                Err(Some(error)) => teardown_reason(error),
                _ if state.goaway.load(Ordering::Acquire) => TeardownReason::goaway_received,
                // h2 ends a connection on its own, with GOAWAY, only once no sender is left: the
                // pool let it go. With senders left, the server closed it.
                Ok(()) if Arc::strong_count(&state) == 1 => TeardownReason::goaway_sent,
                Ok(()) => TeardownReason::closed,
            };
            if let Some(teardowns) = teardowns {
                teardowns.count(reason);
            }
            match ended {
                Err(None) => {
                    debug!(%addr, protocol = "HTTP/2", "upstream connection: no answer to a keep-alive ping")
                }
                Err(Some(error)) => debug!(%addr, %error, protocol = "HTTP/2", "upstream connection ended"),
                Ok(()) => {}
            }
        });
        Ok(sender)
    }
}

/// An HTTP/2 connect attempt that failed, and when.
struct FailedConnect {
    at: Instant,
    error: ConnectError,
}

/// The sending half of an HTTP/2 connection, and whether its task has ended.
#[derive(Clone)]
struct Http2Sender {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<Http2State>,
}

/// What the requests and the task of an HTTP/2 connection know of its end.
#[derive(Default)]
struct Http2State {
    /// It takes no more requests (its task ended, it refused a stream, or it carried
    /// `maxRequestsPerConnection`).
    closed: AtomicBool,
    /// Streams opened on it, counted only under `maxRequestsPerConnection`.
    streams: AtomicU32,
    /// A request met the server's GOAWAY.
    goaway: AtomicBool,
}

/// Pings every `KEEP_ALIVE_INTERVAL`; returns when an answer does not come in time.
async fn keep_alive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Tells a request's body task to reset its stream when the request is given up (the client
/// left, a timeout fired) before the response came; disarmed once it came.
struct CancelOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        // Dropped unsent: the body task sees the channel closed, not a cancellation.
        self.0.take();
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// Whether the request was given up; a disarmed guard stops being watched.
fn cancelled(cancel: &mut Option<tokio::sync::oneshot::Receiver<()>>, cx: &mut Context<'_>) -> bool {
    let Some(receiver) = cancel.as_mut() else { return false };
    match Pin::new(receiver).poll(cx) {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(_)) => {
            *cancel = None;
            false
        }
        Poll::Pending => false,
    }
}

/// Streams a body into its HTTP/2 stream as the peer's flow-control window allows, then its
/// trailers. Resets the stream when the body fails or (a request body, with `cancel`) the request
/// is given up, and stops when the peer resets it.
pub async fn send_body(
    mut body: ProxyBody,
    mut stream: h2::SendStream<Bytes>,
    mut cancel: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    loop {
        let frame = poll_fn(|cx| {
            if cancelled(&mut cancel, cx) {
                stream.send_reset(h2::Reason::CANCEL);
                return Poll::Ready(None);
            }
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                debug!(?reset, "the peer reset a request stream before its body was sent");
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            None => return,
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(error))) => {
                debug!(%error, "a body failed while it was sent");
                // The peer of the other side reset its stream: this one gets the same reason.
                stream.send_reset(error.stream_reset().unwrap_or(h2::Reason::CANCEL));
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return;
            }
        };
        let end_of_stream = body.is_end_stream();
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let capacity = poll_fn(|cx| {
                if cancelled(&mut cancel, cx) {
                    return Poll::Ready(None);
                }
                stream.poll_capacity(cx)
            })
            .await;
            let capacity = match capacity {
                Some(Ok(capacity)) => capacity,
                // Given up, reset, or the connection ended: nothing more is sent.
                _ => {
                    stream.send_reset(h2::Reason::CANCEL);
                    return;
                }
            };
            if capacity == 0 {
                continue;
            }
            let chunk = data.split_to(capacity.min(data.len()));
            let last = end_of_stream && data.is_empty();
            if stream.send_data(chunk, last).is_err() || last {
                return;
            }
        }
        if end_of_stream {
            let _ = stream.send_data(Bytes::new(), true);
            return;
        }
    }
}

/// Runs an upstream HTTP/1.1 connection's I/O on its own task until it ends.
fn drive_http1<C>(addr: SocketAddr, connection: C)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%addr, %error, protocol = "HTTP/1.1", "upstream connection ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/2 server on loopback (the h2 crate): `/echo` answers with the request's body, then
    /// a trailer `echoed-bytes` with its length; `/stream` answers with one chunk and never ends;
    /// `/hang` never answers and reports when its request body breaks off (`body_reset`); anything
    /// else gets "ok". With `goaway_after_first`, the first connection's first request makes it send
    /// GOAWAY while that request stays open. Counts the connections it accepted.
    struct TestServer {
        addr: SocketAddr,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        body_reset: Arc<tokio::sync::Notify>,
    }

    async fn test_server(goaway_after_first: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let server = TestServer {
            addr: listener.local_addr().expect("listener address"),
            connections: Arc::default(),
            body_reset: Arc::default(),
        };
        let (connections, body_reset) = (server.connections.clone(), server.body_reset.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let number = connections.fetch_add(1, Ordering::SeqCst) + 1;
                let body_reset = body_reset.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                    let mut open = Vec::new();
                    let mut first = goaway_after_first && number == 1;
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let path = request.uri().path().to_owned();
                        if path == "/echo" {
                            tokio::spawn(echo_stream(request, respond));
                            continue;
                        }
                        if path == "/hang" {
                            let body_reset = body_reset.clone();
                            let mut body = request.into_body();
                            tokio::spawn(async move {
                                while let Some(data) = body.data().await {
                                    if data.is_err() {
                                        body_reset.notify_one();
                                        return;
                                    }
                                }
                                let _keep_unanswered = respond;
                                std::future::pending::<()>().await;
                            });
                            continue;
                        }
                        let Ok(mut stream) = respond.send_response(Response::new(()), false) else { return };
                        if path == "/stream" || first {
                            let _ = stream.send_data(Bytes::from_static(b"chunk"), false);
                            open.push(stream);
                            if std::mem::take(&mut first) {
                                connection.graceful_shutdown();
                            }
                        } else {
                            let _ = stream.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                });
            }
        });
        server
    }

    async fn echo_stream(request: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
        let mut body = request.into_body();
        let mut received = Vec::new();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            received.extend_from_slice(&data);
        }
        let Ok(mut stream) = respond.send_response(Response::new(()), false) else { return };
        let mut trailers = http::HeaderMap::new();
        trailers.insert("echoed-bytes", received.len().into());
        let mut data = Bytes::from(received);
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let Some(Ok(capacity)) = poll_fn(|cx| stream.poll_capacity(cx)).await else { return };
            let _ = stream.send_data(data.split_to(capacity.min(data.len())), false);
        }
        let _ = stream.send_trailers(trailers);
    }

    fn request(addr: SocketAddr, path: &str, body: ProxyBody) -> Request<ProxyBody> {
        Request::post(format!("http://{addr}{path}")).body(body).expect("a valid request")
    }

    async fn echo(pool: &Pool, body: ProxyBody) -> (Bytes, http::HeaderMap) {
        let response = pool.send(request(pool.addr, "/echo", body)).await.expect("a response");
        let collected = response.into_body().collect().await.expect("the whole body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn http2_requests_carry_bodies_both_ways_and_the_responses_trailers() {
        let pool = Pool::new(test_server(false).await.addr, UpstreamProtocol::Http2);
        let (body, trailers) = echo(&pool, ProxyBody::empty()).await;
        assert_eq!((body.len(), trailers["echoed-bytes"].to_str().ok()), (0, Some("0")));
        let (body, trailers) = echo(&pool, ProxyBody::text("hello")).await;
        assert_eq!((body, trailers["echoed-bytes"].to_str().ok()), (Bytes::from("hello"), Some("5")));
        // Larger than the 1 MiB stream window: sent as the peer gives credit.
        let large: Bytes = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>().into();
        let (body, trailers) = echo(&pool, ProxyBody::text(large.clone())).await;
        assert!(body == large, "3 MiB came back as {} bytes", body.len());
        assert_eq!(trailers["echoed-bytes"], (3 << 20).to_string().as_str());
        assert!(pool.live_http2().is_some(), "one connection, still open");
    }

    #[tokio::test]
    async fn a_request_after_goaway_goes_on_a_new_connection() {
        let server = test_server(true).await;
        let pool = Pool::new(server.addr, UpstreamProtocol::Http2);
        // Its stream stays open, so the connection lives on after the GOAWAY.
        let _first =
            pool.send(request(server.addr, "/", ProxyBody::empty())).await.expect("the first response");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = async {
            let response = pool.send(request(server.addr, "/", ProxyBody::empty())).await;
            response
                .expect("not refused: reconnected")
                .into_body()
                .collect()
                .await
                .expect("the body")
                .to_bytes()
        };
        let body = tokio::time::timeout(Duration::from_secs(5), second).await.expect("answered within 5 s");
        assert_eq!(body, "ok");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_given_up_before_its_response_resets_its_streaming_body() {
        let server = test_server(false).await;
        let pool = Pool::new(server.addr, UpstreamProtocol::Http2);
        // A request body that never ends: the body of a response that never ends.
        let endless =
            pool.send(request(server.addr, "/stream", ProxyBody::empty())).await.expect("a response");
        let request = request(server.addr, "/hang", endless.into_body());
        let given_up = tokio::time::timeout(Duration::from_millis(200), pool.send(request)).await;
        assert!(given_up.is_err(), "the server never answers /hang");
        tokio::time::timeout(Duration::from_secs(5), server.body_reset.notified())
            .await
            .expect("the stream of the abandoned request is reset, not left sending");
    }

    #[tokio::test]
    async fn a_keep_alive_ping_without_answer_closes_the_connection_and_an_answered_one_keeps_it() {
        // A peer that accepts and reads but never answers, as one behind a vanished node does.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let silent_addr = silent.local_addr().expect("listener address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = silent.accept().await {
                tokio::spawn(async move {
                    let mut sink = [0; 1024];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        let silent = Pool::new(silent_addr, UpstreamProtocol::Http2);
        let answering = Pool::new(test_server(false).await.addr, UpstreamProtocol::Http2);
        silent.reconnect_http2().await.expect("the handshake needs no answer");
        answering.reconnect_http2().await.expect("connected");
        // Time jumps while the runtime has nothing else to do; the sockets stay real.
        tokio::time::pause();
        tokio::time::sleep(KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT + Duration::from_secs(1)).await;
        for _ in 0..50 {
            if silent.live_http2().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(silent.live_http2().is_none(), "a connection whose pings go unanswered is closed");
        assert!(answering.live_http2().is_some(), "a connection whose pings are answered stays");
    }
}
