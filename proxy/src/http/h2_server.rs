//! HTTP/2 client connections served with the h2 crate directly: the connection's task accepts
//! streams and writes all the frames of a turn at once (`coalesce`); each stream's handling (on
//! the connection's task with one runtime thread, on a task of its own with more) reads the
//! request body straight from the stream and sends the response with the peer's flow control.
//! hyper's server did the same behind a conversion of every request and response, a service call
//! and a larger task per stream.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use braid_api::config::Limits;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::respond::{ResetStream, grpc_error, is_grpc, local};
use super::{Handler, Transport};
use crate::client::body::{Http2Body, ProxyBody};
use crate::client::coalesce::{FlushAfterPoll, coalesce};
use crate::client::send_body;
use crate::metrics::{TeardownReason, Teardowns};
use crate::tcp::Idle;

/// How long the client has to send its preface and settings.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection closed for idleness has, after GOAWAY, to finish closing cleanly
/// (h2 waits for the client's PING acknowledgement) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// One stream of the connection: driven on the connection's task, or on its own.
enum Stream<F> {
    Local(Pin<Box<F>>),
    Spawned(JoinHandle<()>),
}

impl<F: Future<Output = ()>> Future for Stream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Self::Local(stream) => stream.as_mut().poll(cx),
            Self::Spawned(task) => Pin::new(task).poll(cx).map(|_| ()),
        }
    }
}

/// Where a connection is in its idle timeout.
enum IdleState {
    /// Streams are open.
    Busy,
    /// No stream is open since then.
    Since(Instant),
    /// Closed for idleness (GOAWAY sent); dropped if it has not finished closing by then.
    Closing(Instant),
}

/// How many streams the server may reset for a client's errors before it gives the connection
/// up (h2's `max_local_error_reset_streams`). The count never decreases, and a stream the
/// server drops because its client went away counts too: on a connection shared by many
/// clients, ordinary cancellations reach any bound in time and the connection dies with
/// everyone's requests. So the bound, a defence against a client that makes the server reset
/// streams on purpose, is kept only for clients outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resets {
    /// The pod's own app, or another proxy of the mesh.
    Unbounded,
    /// h2's default (1,024 in a connection's life).
    Bounded,
}

/// Serves one client connection that spoke HTTP/2 until it closes, until `shutdown` fires and
/// its open streams have finished (GOAWAY first, so the client sends new requests elsewhere),
/// or, with `idle`, until it has had no open stream for its timeout (GOAWAY too).
/// `handle`'s responses carry no connection-specific fields (`headers::strip_hop_by_hop`).
pub async fn serve(
    io: impl Transport,
    handle: impl Handler,
    limits: &Limits,
    idle: Option<Idle>,
    resets: Resets,
    shutdown: CancellationToken,
    teardowns: Teardowns,
) {
    let (io, flusher) = coalesce(io);
    let mut builder = h2::server::Builder::new();
    if resets == Resets::Unbounded {
        builder.max_local_error_reset_streams(None);
    }
    // RFC 8441: WebSockets (and other protocols) over an HTTP/2 stream, passed on as a stream
    // to an HTTP/2 upstream (`headers::upstream_request` keeps :protocol).
    builder.enable_connect_protocol();
    let handshake = builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(decoded_header_limit(limits.max_header_bytes)).unwrap_or(u32::MAX),
        )
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io);
    tokio::pin!(handshake);
    let mut connection = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        FlushAfterPoll::new(handshake.as_mut(), &flusher),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            debug!(%error, "HTTP/2 handshake with a client failed");
            return;
        }
        Err(_) => {
            debug!("HTTP/2 client sent no preface in time");
            return;
        }
    };
    // On a one-thread runtime (a sidecar's default) the connection's task drives its streams
    // itself: a task per stream bought no parallelism there, and spawning one (a 128-byte-aligned
    // allocation, a scheduling round, a completion) cost the serving proxy about 2.5 % of each
    // request's instructions (braid-bench instructions). With more threads, each stream gets a
    // task of its own, so that one client connection's streams can use every thread.
    let local = Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
    let mut streams = FuturesUnordered::new();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    let mut draining = false;
    // Whether this side sent GOAWAY (a drain, the idle timeout): how the connection then ends.
    let mut goaway_sent = false;
    // One timer for the connection, moved only when it fires before the moment it guards: a
    // stream then costs a clock read when the connection goes idle, not a timer reset.
    let idle_timer = tokio::time::sleep(idle.as_ref().map_or(Duration::ZERO, |idle| idle.timeout));
    tokio::pin!(idle_timer);
    let mut idle_state = IdleState::Since(Instant::now());
    let accept_loop = poll_fn(|cx| {
        // Once per wake-up, not per stream: each poll of it takes a lock.
        if !draining && shutdown.as_mut().poll(cx).is_ready() {
            draining = true;
            goaway_sent = true;
            connection.graceful_shutdown();
        }
        loop {
            // Streams first: what they send this turn is written by the poll_accept below.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if let Some(idle) = &idle {
                if streams.is_empty() && matches!(idle_state, IdleState::Busy) {
                    idle_state = IdleState::Since(Instant::now());
                }
                let due = match idle_state {
                    IdleState::Busy => None,
                    IdleState::Since(since) => Some(since + idle.timeout),
                    IdleState::Closing(deadline) => Some(deadline),
                };
                if let Some(due) = due
                    && idle_timer.as_mut().poll(cx).is_ready()
                {
                    if Instant::now() < due {
                        idle_timer.as_mut().reset(due);
                        // Polled again so that it wakes this task when due.
                        if idle_timer.as_mut().poll(cx).is_pending() {
                            continue;
                        }
                    }
                    if let IdleState::Closing(_) = idle_state {
                        debug!("an idle HTTP/2 client did not finish closing: dropped");
                        return Poll::Ready(TeardownReason::goaway_sent);
                    }
                    debug!(timeout = ?idle.timeout, "HTTP/2 client connection idle: closing it");
                    idle.closed.inc();
                    goaway_sent = true;
                    connection.graceful_shutdown();
                    let deadline = Instant::now() + IDLE_CLOSE_GRACE;
                    idle_state = IdleState::Closing(deadline);
                    idle_timer.as_mut().reset(deadline);
                    continue;
                }
            }
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    if let IdleState::Since(_) = idle_state {
                        idle_state = IdleState::Busy;
                    }
                    // Boxed: the task holds a pointer, not the multi-KiB future, which would
                    // otherwise be copied whole on each move.
                    let stream =
                        Box::pin(serve_stream(request, respond, handle.clone(), limits.max_header_bytes));
                    if local {
                        streams.push(Stream::Local(stream));
                    } else {
                        // Its end is still seen here: the connection is idle once none is open.
                        streams.push(Stream::Spawned(tokio::spawn(stream)));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    // The streams driven here end with it: none of them can answer any more.
                    debug!(%error, "client HTTP/2 connection ended with an error");
                    return Poll::Ready(teardown_reason(&error));
                }
                // Closed. After GOAWAY (drain) h2 waits for the streams in flight, here or on
                // their tasks, to finish first; after the client's EOF none can answer any more.
                Poll::Ready(None) if goaway_sent => return Poll::Ready(TeardownReason::goaway_sent),
                Poll::Ready(None) => return Poll::Ready(TeardownReason::closed),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    tokio::pin!(accept_loop);
    let reason = FlushAfterPoll::new(accept_loop.as_mut(), &flusher).await;
    teardowns.count(reason);
}

/// How an HTTP/2 connection that failed ended: the peer's GOAWAY with an error code, or an error
/// (I/O, or a protocol error h2 answered with its own GOAWAY). A GOAWAY without error is a close.
pub fn teardown_reason(error: &h2::Error) -> TeardownReason {
    match (error.is_go_away() && error.is_remote(), error.reason()) {
        (true, Some(h2::Reason::NO_ERROR)) => TeardownReason::closed,
        (true, _) => TeardownReason::goaway_received,
        (false, _) => TeardownReason::error,
    }
}

/// How large a header block h2 decodes before it gives up on the request itself. h2 answers a
/// block over its limit with a 431 only up to a few times that limit, and ends the whole
/// connection (GOAWAY ENHANCE_YOUR_CALM or COMPRESSION_ERROR) past it: a 100 KiB header against a
/// 16 KiB limit took every stream of the connection down. So h2 decodes up to 8 times
/// `maxHeaderBytes`, and the proxy answers what is over `maxHeaderBytes` with 431 itself
/// (`read_fields`), as HTTP/1.1 does.
fn decoded_header_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(8)
}

/// What the proxy reads of a request's header fields, in one pass over them: the size of its
/// header list as HTTP/2 counts it (RFC 9113 §6.5.2: each field's name and value, and 32 bytes,
/// pseudo-header fields included), and whether it is a gRPC call.
fn read_fields(parts: &http::request::Parts) -> (usize, bool) {
    const FIELD: usize = 32;
    let pseudo = ":method".len()
        + parts.method.as_str().len()
        + ":path".len()
        + parts.uri.path_and_query().map_or(0, |path| path.as_str().len())
        + ":authority".len()
        + parts.uri.authority().map_or(0, |authority| authority.as_str().len())
        + ":scheme".len()
        + parts.uri.scheme_str().map_or(0, str::len)
        + 4 * FIELD;
    let mut grpc = false;
    let size = parts.headers.iter().fold(pseudo, |size, (name, value)| {
        if name == CONTENT_TYPE {
            grpc = is_grpc(value);
        }
        size + name.as_str().len() + value.len() + FIELD
    });
    (size, grpc)
}

async fn serve_stream(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    handle: impl Handler,
    max_header_bytes: usize,
) {
    let (parts, stream) = request.into_parts();
    let (header_list_size, grpc) = read_fields(&parts);
    let response = if header_list_size > max_header_bytes {
        debug!(max_header_bytes, "refused an HTTP/2 request whose header fields are too large");
        local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request-head-too-large",
            format!("braid-proxy: the request's header fields are larger than {max_header_bytes} bytes\n"),
        )
    } else {
        let body = ProxyBody::http2(Http2Body::new(stream, &parts.headers));
        let handling = handle(Request::from_parts(parts, body));
        tokio::pin!(handling);
        // A client that resets its stream has given the request up: stop handling it.
        tokio::select! {
            response = &mut handling => response,
            reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                debug!(?reset, "the client reset a stream before its response");
                return;
            }
        }
    };
    if let Some(&ResetStream(reason)) = response.extensions().get() {
        respond.send_reset(reason);
        // Counted as the 502 it stands for, not as a response the client dropped.
        response.into_body().count_now();
        return;
    }
    let response = if grpc { grpc_error(response) } else { response };
    let (mut head, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact()
        && !head.headers.contains_key(CONTENT_LENGTH)
    {
        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    let end_of_stream = body.is_end_stream();
    let stream = match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%error, "sending a response head failed");
            return;
        }
    };
    if !end_of_stream {
        send_body(body, stream, None).await;
    }
}
