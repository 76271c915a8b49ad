//! HTTP/1.1 client connections served by the proxy itself, for requests without a body (nearly
//! every request an app sends, and most that reach it): the connection's task parses the head,
//! builds the request from slices of the bytes it read, runs the handler and writes the response,
//! with nothing handed between tasks. hyper's server took 39 % of the outbound proxy's user time
//! under load. The first request that is not that simple (a body, `Expect`, an upgrade, HTTP/1.0)
//! hands the connection, and every byte read from it, to hyper's server for the rest of its life
//! (`HandOver`).
use std::fmt::Write as _;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::respond::PROXY_ERROR;
use super::{Handler, Transport};
use crate::client::body::{BodyError, ProxyBody};
use crate::client::http1::codec::{FieldSpans, MAX_HEADERS, has_token, poll_fill};

/// How much room a read asks for: one read takes a whole request head.
const READ_SIZE: usize = 8 * 1024;
/// A body chunk at least this large is written on its own rather than copied behind the head.
const COPY_LIMIT: usize = 8 * 1024;

/// A connection that met a request the lean server does not serve: the transport, and what was
/// read from it and not yet used (that request's head first).
pub struct HandOver<I> {
    pub io: I,
    pub read: Bytes,
}

/// Serves `io` until the client closes it, or a drain (`shutdown`) finds it idle or has let its
/// request finish. Returns the connection when a request needs hyper's server (`HandOver`).
/// A request head larger than `max_head` bytes is answered with 431. With a `head_timeout`, each
/// head must arrive within it of when the server starts waiting for it: a partial head then gets
/// 408, an idle connection is closed.
pub async fn serve<I: Transport>(
    mut io: I,
    handle: impl Handler,
    max_head: usize,
    head_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> Option<HandOver<I>> {
    let mut read = BytesMut::with_capacity(READ_SIZE);
    let mut out = BytesMut::new();
    // One timer for the connection, moved only when it fires before the head it guards is due:
    // a request then costs a clock read, not a timer insertion and removal.
    let head_timer = tokio::time::sleep(head_timeout.unwrap_or_default());
    tokio::pin!(head_timer);
    loop {
        let head_due = head_timeout.map(|timeout| Instant::now() + timeout);
        let (request, client_close) = loop {
            match parse_request(&mut read, max_head) {
                Ok(Parsed::Request { request, close }) => break (request, close),
                Ok(Parsed::NeedMore) => {}
                Ok(Parsed::NotLean) => return Some(HandOver { io, read: read.freeze() }),
                Err(refused) => {
                    debug!(reason = refused.reason(), "refused a client's request head");
                    let _ = io.write_all(&refusal(&refused)).await;
                    let _ = io.shutdown().await;
                    return None;
                }
            }
            let idle = read.is_empty();
            let filled = tokio::select! {
                filled = poll_fn(|cx| poll_fill(&mut io, &mut read, READ_SIZE, cx)) => filled,
                // An idle connection has nothing in flight: a drain closes it at once.
                () = shutdown.cancelled(), if idle => return None,
                () = &mut head_timer, if head_due.is_some() => {
                    let (Some(due), Some(timeout)) = (head_due, head_timeout) else { continue };
                    if Instant::now() < due {
                        head_timer.as_mut().reset(due);
                        continue;
                    }
                    if !idle {
                        let refused = Refused::HeadTimeout(timeout);
                        debug!(reason = refused.reason(), "refused a client's request head");
                        let _ = io.write_all(&refusal(&refused)).await;
                    }
                    let _ = io.shutdown().await;
                    return None;
                }
            };
            match filled {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "reading from a client failed");
                    return None;
                }
            }
        };
        let head_request = request.method() == Method::HEAD;
        let handling = handle(request);
        tokio::pin!(handling);
        // Reading on while the request is handled notices a client that gave up (as hyper does,
        // the request is then dropped, which cancels it upstream); bytes it pipelined are kept.
        let mut watching = true;
        let response = loop {
            tokio::select! {
                biased;
                response = &mut handling => break response,
                filled = poll_fn(|cx| poll_fill(&mut io, &mut read, READ_SIZE, cx)), if watching => match filled {
                    Ok(0) | Err(_) => {
                        debug!("the client closed its connection before the response");
                        return None;
                    }
                    Ok(_) => watching = read.len() < max_head,
                },
            }
        };
        let close = client_close || shutdown.is_cancelled();
        if let Err(error) = write_response(&mut io, &mut out, response, head_request, close).await {
            debug!(%error, "writing a response to a client failed");
            return None;
        }
        if close {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

/// What the bytes at the front of a connection's read buffer hold.
// Returned by value once per request: boxing the request would allocate for each.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A complete request without a body, removed from the buffer; `close` when the client asked
    /// to close the connection after it.
    Request { request: Request<ProxyBody>, close: bool },
    /// Not a complete head yet.
    NeedMore,
    /// A request hyper's server must serve (left in the buffer).
    NotLean,
}

/// Why a request head is refused; the connection is closed after the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("the request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("the request has more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("the request head did not arrive within {0:?}")]
    HeadTimeout(Duration),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge(_) | Self::TooManyFields => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::HeadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed-request",
            Self::HeadTooLarge(_) | Self::TooManyFields => "request-head-too-large",
            Self::HeadTimeout(_) => "request-head-timeout",
        }
    }
}

/// Parses the request head at the front of `read`. Pure, so it is fuzzed directly.
pub fn parse_request(read: &mut BytesMut, max_head: usize) -> Result<Parsed, Refused> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(Refused::HeadTooLarge(max_head)),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() >= max_head => {
            return Err(Refused::HeadTooLarge(max_head));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::NeedMore),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooManyFields),
        Err(httparse::Error::HeaderName) if has_obs_fold(read) => return Err(Refused::Malformed(OBS_FOLD)),
        Err(error) => return Err(Refused::Malformed(parse_error(error))),
    };
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version) else {
        return Err(Refused::Malformed("an incomplete request line"));
    };
    if minor != 1 || method == "CONNECT" || !is_lean(request.headers) {
        return Ok(Parsed::NotLean);
    }
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Refused::Malformed("an invalid method"))?;
    let target = (target.as_ptr() as usize - read.as_ptr() as usize, target.len());
    let spans = FieldSpans::new(read, request.headers);
    let head = read.split_to(head_len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Refused::Malformed("an invalid request target"))?;
    let headers = spans.header_map(&head).map_err(Refused::Malformed)?;
    let close = has_token(&headers, CONNECTION, "close");
    let mut request = Request::new(ProxyBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(Parsed::Request { request, close })
}

/// An HTTP/1.1 request the lean server serves: no body, nothing to negotiate.
fn is_lean(fields: &[httparse::Header<'_>]) -> bool {
    fields.iter().all(|field| {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            return field.value == b"0";
        }
        ![TRANSFER_ENCODING, EXPECT, UPGRADE]
            .iter()
            .any(|other| name.eq_ignore_ascii_case(other.as_str().as_bytes()))
    })
}

/// Why a head whose field line starts with a space or tab is refused: httparse reports it as an
/// invalid name, which sent people looking for a bad character.
const OBS_FOLD: &str =
    "obs-fold: a header field continued on the next line (line folding, refused by RFC 9112 §5.2)";

/// Whether a field line of the head at the front of `read` starts with a space or tab: a
/// continuation of the line before it (obs-fold). Only looked at for a head already refused.
fn has_obs_fold(read: &[u8]) -> bool {
    read.split(|&b| b == b'\n')
        .skip(1)
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .any(|line| line.starts_with(b" ") || line.starts_with(b"\t"))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "an invalid header name",
        httparse::Error::HeaderValue => "an invalid header value",
        httparse::Error::NewLine | httparse::Error::Status => "a broken line ending",
        httparse::Error::Token => "an invalid method or header name",
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// The answer to a refused request head: the status, the reason as text, and a close.
fn refusal(refused: &Refused) -> Vec<u8> {
    let status = refused.status();
    let text = format!("braid-proxy: {refused}\n");
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n{}: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        PROXY_ERROR,
        refused.reason(),
        text.len(),
    )
    .into_bytes()
}

/// How a response body is delimited on the client's connection (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a HEAD request, 204 or 304. Header fields are passed on as the upstream sent them.
    None,
    Length(u64),
    Chunked,
}

fn framing(head_request: bool, status: StatusCode, exact_size: Option<u64>) -> Framing {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Framing::None;
    }
    exact_size.map_or(Framing::Chunked, Framing::Length)
}

/// Writes the status line and header fields, with the framing fields the body needs.
fn encode_head(out: &mut BytesMut, status: StatusCode, headers: &HeaderMap, framing: Framing, close: bool) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        if framing != Framing::None && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(DATE) {
        out.put_slice(b"date: ");
        out.put_slice(&http_date(SystemTime::now()));
        out.put_slice(b"\r\n");
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Why a response could not be passed on whole; the connection is closed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the response body broke off: {0}")]
    Body(BodyError),
    #[error("the response body did not match its content-length")]
    WrongLength,
}

/// Writes the response, its body as it arrives: what is ready goes out in one write, and the
/// buffer is flushed whenever the body has to wait.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    response: Response<ProxyBody>,
    head_request: bool,
    close: bool,
) -> Result<(), WriteError> {
    let (head, mut body) = response.into_parts();
    let framing = framing(head_request, head.status, body.size_hint().exact());
    out.clear();
    encode_head(out, head.status, &head.headers, framing, close);
    let mut remaining = match framing {
        Framing::None => {
            io.write_all(out).await?;
            // Whole without a body: not a response the client dropped.
            body.count_now();
            return Ok(());
        }
        Framing::Length(length) => length,
        Framing::Chunked => 0,
    };
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let data = match next {
            // The body must wait: what is ready goes out now.
            None => {
                io.write_all(out).await?;
                out.clear();
                continue;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: an HTTP/1.1 client did not ask for them (no `te: trailers`).
                Err(_) => continue,
            },
            Some(Some(Err(error))) => {
                // Closing without the end of the body tells the client it is incomplete.
                let _ = io.write_all(out).await;
                return Err(WriteError::Body(error));
            }
            Some(None) => break,
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                let Some(left) = remaining.checked_sub(data.len() as u64) else {
                    return Err(WriteError::WrongLength);
                };
                remaining = left;
            }
            _ => {
                let _ = write!(out, "{:x}\r\n", data.len());
            }
        }
        if data.len() >= COPY_LIMIT {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.put_slice(&data);
        }
        if framing == Framing::Chunked {
            out.put_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(_) if remaining > 0 => {
            let _ = io.write_all(out).await;
            return Err(WriteError::WrongLength);
        }
        Framing::Chunked => out.put_slice(b"0\r\n\r\n"),
        _ => {}
    }
    io.write_all(out).await?;
    out.clear();
    Ok(())
}

/// `time` as an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(time: SystemTime) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm), from 1970-01-01 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut date = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    date[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |slot: &mut [u8], n: u64| {
        slot[0] = b'0' + (n / 10 % 10) as u8;
        slot[1] = b'0' + (n % 10) as u8;
    };
    two(&mut date[5..7], day);
    date[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut date[12..14], year / 100);
    two(&mut date[14..16], year % 100);
    two(&mut date[17..19], of_day / 3600);
    two(&mut date[20..22], of_day / 60 % 60);
    two(&mut date[23..25], of_day % 60);
    date
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::client::{Pool, UpstreamProtocol};

    const MAX_HEAD: usize = 16 * 1024;

    /// Answers each request with `<method> <target> host=<host>`; `/upstream` is answered with
    /// what a raw HTTP/1.1 origin at `origin` sends, through the proxy's own client.
    async fn echo(request: Request<ProxyBody>, origin: Option<Arc<Pool>>) -> Response<ProxyBody> {
        if request.uri().path() == "/upstream" {
            let pool = origin.expect("an origin for /upstream");
            return pool.send(request).await.expect("the origin answers");
        }
        let host = request.headers().get("host").map_or("", |h| h.to_str().expect("text"));
        let text = format!("{} {} host={host}", request.method(), request.uri());
        let mut response = Response::new(ProxyBody::text(text));
        if request.uri().path() == "/no-content" {
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = ProxyBody::empty();
        }
        response
    }

    /// The lean server on one accepted loopback connection; the task's result is what `serve`
    /// returned (whether it handed the connection over, and the bytes it handed over).
    async fn server(
        origin: Option<SocketAddr>,
        shutdown: CancellationToken,
    ) -> (TcpStream, tokio::task::JoinHandle<Option<Bytes>>) {
        timed_server(origin, shutdown, None).await
    }

    /// `server`, with a head timeout (as for clients from outside the pod).
    async fn timed_server(
        origin: Option<SocketAddr>,
        shutdown: CancellationToken,
        head_timeout: Option<Duration>,
    ) -> (TcpStream, tokio::task::JoinHandle<Option<Bytes>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let origin = origin.map(|addr| Arc::new(Pool::new(addr, UpstreamProtocol::Http1)));
        let task = tokio::spawn(async move {
            let handle = move |request| echo(request, origin.clone());
            serve(stream, handle, MAX_HEAD, head_timeout, &shutdown).await.map(|rest| rest.read)
        });
        (client, task)
    }

    /// A raw HTTP/1.1 origin: reads one request head per answer and writes the answer; closes
    /// after the last.
    async fn raw_origin(answers: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buffer = Vec::new();
            for answer in answers {
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                buffer.clear();
                let _ = stream.write_all(answer).await;
            }
        });
        addr
    }

    /// Reads until `count` responses with a Content-Length (or no body) or the end of a chunked
    /// body have arrived, or the connection closes; returns the text.
    async fn read_until(client: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
        let mut text = Vec::new();
        let reading = async {
            while !done(&String::from_utf8_lossy(&text)) {
                let mut chunk = [0; 4096];
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reading).await.expect("the answers in time");
        String::from_utf8_lossy(&text).into_owned()
    }

    async fn is_closed(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn bodiless_requests_are_answered_in_order_on_one_connection_pipelined_or_not() {
        let (mut client, task) = server(None, CancellationToken::new()).await;
        client.write_all(b"GET /a HTTP/1.1\r\nHost: one\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: two\r\ncontent-length: 0\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("host=two")).await;
        let first = text.find("GET /a host=one").expect("the first answer");
        let second = text.find("GET /b?x=1 host=two").expect("the second answer");
        assert!(first < second, "in order: {text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
        assert!(text.contains("content-length: 15\r\n") && text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        client.write_all(b"DELETE /c HTTP/1.1\r\nHost: three\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("host=three")).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        drop(client);
        assert_eq!(task.await.expect("the server task"), None, "nothing handed over");
    }

    #[tokio::test]
    async fn a_request_with_a_body_hands_the_connection_over_with_every_byte_read() {
        let (mut client, task) = server(None, CancellationToken::new()).await;
        let rest = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut all = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        all.extend_from_slice(rest);
        client.write_all(&all).await.expect("write");
        let handed = task.await.expect("the server task").expect("handed over");
        assert_eq!(&handed[..], &rest[..], "the request with a body and all after it");
        let text = read_until(&mut client, |text| text.contains("host=a")).await;
        assert!(text.contains("GET /first host=a"), "{text}");
        for needs_hyper in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 0, 0\r\n\r\n",
        ] {
            let mut read = BytesMut::from(needs_hyper);
            assert!(
                matches!(parse_request(&mut read, MAX_HEAD), Ok(Parsed::NotLean)),
                "{}",
                String::from_utf8_lossy(needs_hyper)
            );
            assert_eq!(&read[..], needs_hyper, "left in the buffer for hyper");
        }
    }

    #[test]
    fn a_head_with_the_most_fields_allowed_keeps_every_field_in_order_and_what_follows_it() {
        let fields: String = (0..MAX_HEADERS - 1).map(|i| format!("x-field: value {i}\r\n")).collect();
        let wire = format!("GET /path?q=1 HTTP/1.1\r\nHost: a\r\n{fields}\r\nGET /next");
        let mut read = BytesMut::from(wire.as_bytes());
        let Ok(Parsed::Request { request, close: false }) = parse_request(&mut read, MAX_HEAD) else {
            panic!("a head with {MAX_HEADERS} fields is a request");
        };
        assert_eq!(request.uri(), "/path?q=1");
        assert_eq!(request.headers().len(), MAX_HEADERS);
        assert_eq!(request.headers()["host"], "a");
        let values: Vec<_> = request.headers().get_all("x-field").iter().collect();
        assert_eq!(values.len(), MAX_HEADERS - 1);
        for (i, value) in values.into_iter().enumerate() {
            assert_eq!(value, format!("value {i}").as_str());
        }
        assert_eq!(&read[..], b"GET /next", "the next request stays in the buffer");
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body_and_keep_the_upstream_length() {
        let origin = raw_origin(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\netag: \"v1\"\r\n\r\n",
        ])
        .await;
        let (mut client, _task) = server(Some(origin), CancellationToken::new()).await;
        client.write_all(b"HEAD /upstream HTTP/1.1\r\nHost: a\r\n\r\nGET /upstream HTTP/1.1\r\nHost: a\r\n\r\nGET /no-content HTTP/1.1\r\nHost: a\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("GET /last host=a")).await;
        let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 4, "{text}");
        assert!(
            answers[0].starts_with("200 OK\r\n") && answers[0].contains("content-length: 1234\r\n"),
            "{text}"
        );
        assert!(answers[0].ends_with("\r\n\r\n"), "HEAD: no body: {text}");
        assert!(
            answers[1].starts_with("304 Not Modified\r\n") && answers[1].contains("content-length: 99\r\n"),
            "{text}"
        );
        assert!(answers[1].ends_with("\r\n\r\n"), "304: no body: {text}");
        assert!(
            answers[2].starts_with("204 No Content\r\n") && !answers[2].contains("content-length"),
            "{text}"
        );
        assert!(answers[3].starts_with("200 OK\r\n"), "the connection goes on: {text}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_sent_chunked_and_one_that_breaks_off_closes_the_connection() {
        let origin = raw_origin(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
        ])
        .await;
        let (mut client, task) = server(Some(origin), CancellationToken::new()).await;
        client.write_all(b"GET /upstream HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.ends_with("0\r\n\r\n")).await;
        assert!(
            text.contains("transfer-encoding: chunked\r\n") && !text.contains("content-length"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{text}");
        client.write_all(b"GET /upstream HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.ends_with("half")).await;
        assert!(text.contains("content-length: 10\r\n"), "{text}");
        assert!(is_closed(&mut client).await, "a short body must not look complete");
        assert_eq!(task.await.expect("the server task"), None);
    }

    #[tokio::test]
    async fn bad_request_heads_get_400_or_431_with_the_reason_and_the_connection_closed() {
        let too_many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let cases = [
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n".to_vec(),
                "400 Bad Request",
                "an invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nx: \x01\r\n\r\n".to_vec(),
                "400 Bad Request",
                "an invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nx-a: one\r\n\ttwo\r\n\r\n".to_vec(),
                "400 Bad Request",
                "obs-fold: a header field continued on the next line",
            ),
            (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n".to_vec(), "400 Bad Request", "not HTTP/1.x"),
            (b"G(T / HTTP/1.1\r\n\r\n".to_vec(), "400 Bad Request", "an invalid method"),
            (
                format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes(),
                "431 Request Header Fields Too Large",
                "larger than 16384 bytes",
            ),
            (
                format!("GET / HTTP/1.1\r\n{too_many}\r\n").into_bytes(),
                "431 Request Header Fields Too Large",
                "more than 100 header fields",
            ),
        ];
        for (request, status, reason) in cases {
            let (mut client, task) = server(None, CancellationToken::new()).await;
            let _ = client.write_all(&request).await;
            let text =
                read_until(&mut client, |text| text.ends_with('\n') && text.contains("braid-proxy: ")).await;
            assert!(text.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{text}");
            assert!(text.contains(reason) && text.contains("connection: close\r\n"), "{reason}: {text}");
            assert!(is_closed(&mut client).await, "closed after {reason}");
            assert_eq!(task.await.expect("the server task"), None);
        }
    }

    /// Each head gets the timeout from when the server starts waiting for it, however long the
    /// connection has lived (the one timer of the connection is moved on, not left to fire).
    #[tokio::test]
    async fn each_request_head_must_arrive_within_the_head_timeout() {
        let timeout = Duration::from_millis(300);
        let (mut client, task) = timed_server(None, CancellationToken::new(), Some(timeout)).await;
        // Five requests 200 ms apart: a second in all, each head well within its 300 ms.
        for i in 0..5 {
            client
                .write_all(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let text = read_until(&mut client, |text| text.ends_with(&format!("GET /{i} host=a"))).await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "request {i}: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A head that stops halfway: 408 with the reason, then the connection is closed.
        client.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n").await.expect("write");
        let text =
            read_until(&mut client, |text| text.ends_with('\n') && text.contains("braid-proxy: ")).await;
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("braid-proxy-error: request-head-timeout\r\n"), "{text}");
        assert!(text.contains("the request head did not arrive within 300ms"), "{text}");
        assert!(is_closed(&mut client).await, "closed after the 408");
        assert_eq!(task.await.expect("the server task"), None);

        // An idle connection is closed without an answer.
        let (mut idle, task) = timed_server(None, CancellationToken::new(), Some(timeout)).await;
        let started = std::time::Instant::now();
        assert!(is_closed(&mut idle).await, "an idle connection is closed");
        assert!(started.elapsed() >= Duration::from_millis(250), "closed early: {:?}", started.elapsed());
        assert_eq!(task.await.expect("the server task"), None);
    }

    #[tokio::test]
    async fn a_client_that_closes_before_its_answer_cancels_the_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let dropped = Arc::new(AtomicBool::new(false));
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let handle = {
            let dropped = dropped.clone();
            move |_request| {
                let guard = Guard(dropped.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<Response<ProxyBody>>().await
                }
            }
        };
        let task = tokio::spawn(async move {
            let shutdown = CancellationToken::new();
            serve(stream, handle, MAX_HEAD, None, &shutdown).await.is_none()
        });
        client.write_all(b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!dropped.load(Ordering::SeqCst), "still in flight while the client waits");
        drop(client);
        let ended =
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("the server ends").expect("task");
        assert!(ended && dropped.load(Ordering::SeqCst), "the request was dropped");
    }

    #[tokio::test]
    async fn connection_close_and_a_drain_end_the_connection_after_the_answer() {
        let (mut client, task) = server(None, CancellationToken::new()).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("host=a")).await;
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(is_closed(&mut client).await);
        assert_eq!(task.await.expect("the server task"), None);

        let shutdown = CancellationToken::new();
        let (mut client, task) = server(None, shutdown.clone()).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("host=a")).await;
        assert!(!text.contains("connection: close"), "{text}");
        shutdown.cancel();
        assert!(is_closed(&mut client).await, "an idle connection is closed by a drain");
        assert_eq!(task.await.expect("the server task"), None);

        let shutdown = CancellationToken::new();
        let (mut client, _task) = server(None, shutdown.clone()).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        client.write_all(b"\r\n").await.expect("write");
        let text = read_until(&mut client, |text| text.contains("host=b")).await;
        assert!(
            text.contains("connection: close\r\n"),
            "a request that began is answered, then closed: {text}"
        );
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let at = |seconds| String::from_utf8(http_date(UNIX_EPOCH + Duration::from_secs(seconds)).to_vec());
        assert_eq!(at(0).as_deref(), Ok("Thu, 01 Jan 1970 00:00:00 GMT"));
        assert_eq!(at(784_111_777).as_deref(), Ok("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(at(951_782_400).as_deref(), Ok("Tue, 29 Feb 2000 00:00:00 GMT"));
        assert_eq!(at(1_795_737_599).as_deref(), Ok("Thu, 26 Nov 2026 23:59:59 GMT"));
    }
}
