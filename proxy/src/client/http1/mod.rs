//! A lean HTTP/1.1 client for requests that carry no streaming body (nearly every request a
//! sidecar forwards to its app): the request's own task writes the request and reads the
//! response head, and the response body is read straight from the socket as it is passed on. The
//! connection goes back to its pool when the body has ended. hyper's client runs each connection
//! on a task of its own and hands every request, response and body chunk across a channel, which
//! costs wake-ups and polls per request; a request that streams a body still goes through it,
//! because it must write and read at the same time.

use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, Version};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};

pub mod codec;

use codec::{BodyState, Decoded, decode, end_of_input, has_token, next_response_head, poll_fill};
pub use codec::{Http1Error, MAX_RESPONSE_HEAD, parse_response};

use super::connect::UpstreamIo;
use super::limit::ConnectionSlot;

/// How much room a read asks for: one read takes a whole small response.
const READ_SIZE: usize = 16 * 1024;
/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they return.
pub const MAX_IDLE_HTTP1: usize = 256;

/// One idle or busy HTTP/1.1 connection: its transport and what was read but not yet used.
pub struct Http1Connection {
    io: UpstreamIo,
    read: BytesMut,
    /// It served a request before, so the server may have closed it while it sat idle.
    pub reused: bool,
    /// Requests it has carried.
    pub served: u32,
    /// Its place under the service's `maxConnections`, given back when it closes.
    pub slot: Option<ConnectionSlot>,
}

/// Where connections wait between requests; a response body puts its connection back here.
pub type IdleConnections = Arc<Mutex<Vec<Http1Connection>>>;

impl Http1Connection {
    pub fn new(io: UpstreamIo) -> Self {
        Self { io, read: BytesMut::new(), reused: false, served: 0, slot: None }
    }

    /// Whether an idle connection can take a request: the server has not closed it and sent
    /// nothing unasked. Checked without waiting, as the connection is taken from the pool.
    pub fn is_usable(&mut self) -> bool {
        let mut byte = [MaybeUninit::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

/// The request head (and a body held in memory) encoded for the wire; kept so a request that met
/// a connection the server had just closed can be written again on a new one.
pub struct EncodedRequest {
    bytes: BytesMut,
    head_request: bool,
    idempotent: bool,
}

impl EncodedRequest {
    /// Encodes `request`; its URI must be in origin form and its body `body` (all of it).
    pub fn new<B>(request: &Request<B>, body: Option<&Bytes>) -> Self {
        let method = request.method();
        let target = request.uri().path_and_query().map_or("/", |path| path.as_str());
        let headers = request.headers();
        let body_len = body.map_or(0, Bytes::len);
        let mut bytes = BytesMut::with_capacity(256 + body_len);
        bytes.put_slice(method.as_str().as_bytes());
        bytes.put_u8(b' ');
        bytes.put_slice(target.as_bytes());
        bytes.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            // The framing is ours: it describes the body as it is sent.
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            bytes.put_slice(name.as_str().as_bytes());
            bytes.put_slice(b": ");
            bytes.put_slice(value.as_bytes());
            bytes.put_slice(b"\r\n");
        }
        if body_len > 0 || headers.contains_key(CONTENT_LENGTH) || method_expects_content(method) {
            let _ = write!(bytes, "content-length: {body_len}\r\n");
        }
        bytes.put_slice(b"\r\n");
        if let Some(body) = body {
            bytes.put_slice(body);
        }
        Self {
            bytes,
            head_request: method == Method::HEAD,
            idempotent: matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            ),
        }
    }

    /// Whether the request may be sent again after a connection broke before any answer.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// Methods that define a meaning for enclosed content: they say `content-length: 0` when empty
/// (RFC 9110 §8.6), as hyper does.
fn method_expects_content(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Sends `request` on `connection` and reads the response head. The body is then read by the
/// returned `Http1Body`, which gives the connection back to `idle` when it has ended and the
/// connection can serve another request. On error the connection is dropped (closed).
pub async fn send(
    mut connection: Http1Connection,
    request: &EncodedRequest,
    idle: &IdleConnections,
) -> Result<Response<Http1Body>, (Http1Error, bool)> {
    // (error, whether any byte of a response arrived): a reused connection that broke before
    // the first byte was most likely closed by the server while idle.
    if let Err(error) = connection.io.write_all(&request.bytes).await {
        return Err((Http1Error::Write(error), false));
    }
    if let Err(error) = connection.io.flush().await {
        return Err((Http1Error::Write(error), false));
    }
    let (head, state) = loop {
        match next_response_head(&mut connection.read, request.head_request) {
            Ok(Some(found)) => break found,
            Ok(None) => {}
            Err(error) => return Err((error, true)),
        }
        let before = connection.read.len();
        match fill(&mut connection).await {
            Ok(0) if before == 0 => return Err((Http1Error::ClosedBeforeResponse, false)),
            Ok(0) => {
                return Err((Http1Error::Malformed("the connection closed inside the response head"), true));
            }
            Ok(_) => {}
            Err(error) => return Err((Http1Error::Read(error), before > 0)),
        }
    };
    let keep_alive = head.version == Version::HTTP_11
        && !head.conflicting_framing
        && !matches!(state, BodyState::Close)
        && !has_token(&head.headers, CONNECTION, "close");
    connection.reused = true;
    connection.served = connection.served.saturating_add(1);
    let mut body = Http1Body { connection: Some(connection), state, idle: idle.clone(), keep_alive };
    body.finish_if_done();
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

async fn fill(connection: &mut Http1Connection) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_fill(&mut connection.io, &mut connection.read, READ_SIZE, cx)).await
}

/// A response body read from its HTTP/1.1 connection as the reader asks for it.
pub struct Http1Body {
    /// `None` once the connection went back to the pool, or broke.
    connection: Option<Http1Connection>,
    state: BodyState,
    idle: IdleConnections,
    keep_alive: bool,
}

impl Http1Body {
    /// What is left of the body, when its length is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            BodyState::Length(remaining) => Some(remaining),
            BodyState::Done => Some(0),
            _ => None,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// When the body has ended, the connection goes back to the pool if the server keeps it
    /// open and sent nothing beyond the response.
    fn finish_if_done(&mut self) {
        if !matches!(self.state, BodyState::Done) {
            return;
        }
        if let Some(connection) = self.connection.take()
            && self.keep_alive
            && connection.read.is_empty()
        {
            let limit = connection.slot.as_ref().map(ConnectionSlot::limit);
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < MAX_IDLE_HTTP1 {
                idle.push(connection);
            }
            drop(idle);
            // After the push, so a woken waiter finds it.
            if let Some(limit) = limit {
                limit.connection_returned();
            }
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let result = self.poll_frame_inner(cx);
        if let Poll::Ready(Some(Err(_))) = result {
            // A body that broke leaves its connection in an unknown state.
            self.connection = None;
            self.state = BodyState::Done;
        }
        self.finish_if_done();
        result
    }

    fn poll_frame_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else { return Poll::Ready(None) };
            match decode(&mut self.state, &mut connection.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            match ready!(poll_fill(&mut connection.io, &mut connection.read, READ_SIZE, cx)) {
                Ok(0) => {
                    end_of_input(&mut self.state)?;
                    // A close-delimited body ended; its connection is spent.
                    self.connection = None;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(Http1Error::Read(error)))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;
    use crate::client::body::ProxyBody;
    use crate::client::{Pool, UpstreamError, UpstreamProtocol};

    /// What the scripted origin does with the next request it reads.
    #[derive(Clone)]
    enum Answer {
        /// Writes these bytes and keeps the connection.
        Send(&'static [u8]),
        /// Writes these bytes and closes the connection.
        SendAndClose(&'static [u8]),
        /// Closes the connection without a word (as a server whose idle timeout just fired).
        Close,
    }

    /// An HTTP/1.1 origin on loopback that answers requests in order from a script, across
    /// connections, and records each request it read (head and body) and how many connections
    /// it accepted.
    struct Origin {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn origin(script: Vec<Answer>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let (accepted2, requests2) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let (script, requests) = (script.clone(), requests2.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let Some(request) = read_request(&mut stream, &mut buffer).await else { return };
                        requests.lock().expect("lock").push(request);
                        let answer = script.lock().expect("lock").next();
                        match answer {
                            Some(Answer::Send(bytes)) => {
                                let _ = stream.write_all(bytes).await;
                            }
                            Some(Answer::SendAndClose(bytes)) => {
                                let _ = stream.write_all(bytes).await;
                                return;
                            }
                            Some(Answer::Close) | None => return,
                        }
                    }
                });
            }
        });
        Origin { addr, accepted, requests }
    }

    /// Reads one request (head, then a Content-Length body) as text.
    async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end + 4]).to_string();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse::<usize>().expect("a length"));
                while buffer.len() < end + 4 + length {
                    let mut chunk = [0; 4096];
                    let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let request = String::from_utf8_lossy(&buffer[..end + 4 + length]).to_string();
                buffer.drain(..end + 4 + length);
                return Some(request);
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn get(path: &str) -> Request<ProxyBody> {
        request(Method::GET, path, ProxyBody::empty())
    }

    fn request(method: Method, path: &str, body: ProxyBody) -> Request<ProxyBody> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().expect("a path");
        request.headers_mut().insert(http::header::HOST, HeaderValue::from_static("app.test"));
        request
    }

    async fn body_and_trailers(response: Response<ProxyBody>) -> Result<(Bytes, Option<HeaderMap>), String> {
        let collected = response.into_body().collect().await.map_err(|error| error.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    /// Sends `GET path` and reads the whole answer; panics (the test fails) when either breaks.
    async fn get_body(pool: &Pool, path: &str) -> (Bytes, Option<HeaderMap>) {
        let response = pool.send(get(path)).await.expect("a response");
        body_and_trailers(response).await.expect("the body")
    }

    const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-origin: yes\r\n\r\nhello";

    #[tokio::test]
    async fn a_response_with_a_length_arrives_whole_and_its_connection_serves_the_next_request() {
        let origin = origin(vec![Answer::Send(OK_HELLO), Answer::Send(OK_HELLO)]).await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        for _ in 0..2 {
            let response = pool.send(get("/a?b=c")).await.expect("a response");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["x-origin"], "yes");
            assert_eq!(http_body::Body::size_hint(response.body()).exact(), Some(5));
            let (body, trailers) = body_and_trailers(response).await.expect("the body");
            assert_eq!(body, "hello");
            assert!(trailers.is_none());
        }
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1, "the kept-alive connection was reused");
        let requests = origin.requests.lock().expect("lock").clone();
        assert_eq!(requests[0], "GET /a?b=c HTTP/1.1\r\nhost: app.test\r\n\r\n");
    }

    #[tokio::test]
    async fn a_post_carries_its_body_with_its_length() {
        let origin = origin(vec![Answer::Send(OK_HELLO), Answer::Send(OK_HELLO)]).await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let response =
            pool.send(request(Method::POST, "/form", ProxyBody::text("a=1&b=2"))).await.expect("a response");
        body_and_trailers(response).await.expect("the body");
        let response =
            pool.send(request(Method::POST, "/empty", ProxyBody::empty())).await.expect("a response");
        body_and_trailers(response).await.expect("the body");
        let requests = origin.requests.lock().expect("lock").clone();
        assert_eq!(requests[0], "POST /form HTTP/1.1\r\nhost: app.test\r\ncontent-length: 7\r\n\r\na=1&b=2");
        assert_eq!(requests[1], "POST /empty HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_chunked_response_arrives_with_its_trailers_and_keeps_the_connection() {
        const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ngrpc-status: 0\r\nx-sum: 12\r\n\r\n";
        let origin = origin(vec![Answer::Send(CHUNKED), Answer::Send(OK_HELLO)]).await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let response = pool.send(get("/")).await.expect("a response");
        let (body, trailers) = body_and_trailers(response).await.expect("the body");
        assert_eq!(body, "hello, world");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-sum"], "12");
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "hello");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_delimited_by_close_is_read_to_the_end_and_its_connection_not_reused() {
        let origin = origin(vec![
            Answer::SendAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            Answer::Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
            Answer::Send(OK_HELLO),
        ])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "until the end");
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "ok");
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "hello");
        assert_eq!(
            origin.accepted.load(Ordering::SeqCst),
            3,
            "neither a close-delimited body nor `connection: close` is reused"
        );
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_their_length_says() {
        const LENGTH_NO_BODY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n";
        let origin = origin(vec![
            Answer::Send(LENGTH_NO_BODY),
            Answer::Send(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Answer::Send(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1024\r\n\r\n"),
            Answer::Send(OK_HELLO),
        ])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let head = pool.send(request(Method::HEAD, "/", ProxyBody::empty())).await.expect("a response");
        assert_eq!(head.headers()[CONTENT_LENGTH], "1024");
        assert_eq!(body_and_trailers(head).await.expect("no body").0, "");
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let response = pool.send(get("/")).await.expect("a response");
            assert_eq!(response.status(), status);
            assert_eq!(body_and_trailers(response).await.expect("no body").0, "");
        }
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "hello", "the connection stayed in step");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_for_the_final_one() {
        let origin = origin(vec![Answer::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        )])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let response = pool.send(request(Method::PUT, "/", ProxyBody::text("x"))).await.expect("a response");
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_replaced_and_the_request_is_not_lost() {
        // The first connection answers, then the server closes it while it sits in the pool.
        let origin = origin(vec![
            Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Answer::Send(OK_HELLO),
        ])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        get_body(&pool, "/").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "hello");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closed_as_the_request_went_out_is_retried_only_when_idempotent() {
        let origin = origin(vec![
            Answer::Send(OK_HELLO),
            // The server's idle timeout fires just as the second request arrives.
            Answer::Close,
            Answer::Send(OK_HELLO),
            Answer::Send(OK_HELLO),
            Answer::Close,
        ])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        get_body(&pool, "/").await;
        let (body, _) = get_body(&pool, "/again").await;
        assert_eq!(body, "hello");
        // The third connection: one answer, then closed before the POST's.
        get_body(&pool, "/").await;
        let Err(error) = pool.send(request(Method::POST, "/pay", ProxyBody::text("1"))).await else {
            panic!("a POST is not sent twice");
        };
        assert!(
            matches!(error, UpstreamError::Http1 { source: Http1Error::ClosedBeforeResponse, .. }),
            "{error}"
        );
        let posts = origin.requests.lock().expect("lock").iter().filter(|r| r.starts_with("POST")).count();
        assert_eq!(posts, 1);
    }

    #[tokio::test]
    async fn a_dropped_body_does_not_put_its_connection_back() {
        let origin = origin(vec![
            Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst ten."),
            Answer::Send(OK_HELLO),
        ])
        .await;
        let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
        let mut response = pool.send(get("/")).await.expect("a response");
        let frame = response.body_mut().frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "first ten.");
        drop(response);
        let (body, _) = get_body(&pool, "/").await;
        assert_eq!(body, "hello", "not the rest of the first body");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    /// Bad answers from the app: each is a clear error, never a panic, and never a connection
    /// that is put back out of step.
    #[tokio::test]
    async fn malformed_responses_are_errors_with_a_reason() {
        let big_head: &'static [u8] = {
            let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            head.extend(std::iter::repeat_n(b'a', MAX_RESPONSE_HEAD));
            head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            Box::leak(head.into_boxed_slice())
        };
        let cases: [(&[u8], &str); 6] = [
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x response head"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 12x\r\n\r\n", "an invalid Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
                "conflicting Content-Length",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n", "101 Switching Protocols"),
            (b"HTTP/1.1 200 OK\r\ncontent-len", "inside the response head"),
            (big_head, "larger than 65536 bytes"),
        ];
        for (answer, reason) in cases {
            let origin = origin(vec![Answer::SendAndClose(answer)]).await;
            let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
            let Err(error) = pool.send(get("/")).await else { panic!("{reason}: no error") };
            assert!(error.to_string().contains(reason), "{error} should say {reason}");
        }
        let body_cases: [(&[u8], &str); 4] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", "91 bytes before the end"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "an invalid chunk size"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "chunk data longer than its size",
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "in the middle of a chunked"),
        ];
        for (answer, reason) in body_cases {
            let origin = origin(vec![Answer::SendAndClose(answer)]).await;
            let pool = Pool::new(origin.addr, UpstreamProtocol::Http1);
            let response = pool.send(get("/")).await.expect("the head is fine");
            let error = body_and_trailers(response).await.expect_err("the body breaks off");
            assert!(error.contains(reason), "{error} should say {reason}");
        }
    }
}
