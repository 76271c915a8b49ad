//! The HTTP/1.1 wire format as the proxy reads it: response heads, body framing (length,
//! chunked, close-delimited) and trailers for the lean client, and the pieces the lean server
//! shares with it (field spans, token lists, buffered reads). Pure parsing, apart from
//! `poll_fill`, so that the fuzz target runs the same steps as a live connection.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use tokio::io::AsyncRead;

/// A response head larger than this is refused (hyper's client allows about 400 KiB; the apps a
/// sidecar fronts send a few hundred bytes).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Header fields per response head or trailer section (hyper's client allows 100).
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line, extensions included, longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request over a lean HTTP/1.1 connection failed, or its response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    ClosedBeforeResponse,
    #[error("the response head is larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the upstream closed the connection {0} bytes before the end of the response body")]
    BodyTruncated(u64),
    #[error("the upstream closed the connection in the middle of a chunked response body")]
    ChunkedTruncated,
}

/// The final response head at the front of `read` (interim 1xx answers skipped and removed) and
/// how its body is delimited; `None` when more bytes are needed.
pub(crate) fn next_response_head(
    read: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Head, BodyState)>, Http1Error> {
    loop {
        let Some(head) = parse_head(read)? else {
            if read.len() >= MAX_RESPONSE_HEAD {
                return Err(Http1Error::HeadTooLarge);
            }
            return Ok(None);
        };
        if head.status.is_informational() {
            // 100 Continue and 103 Early Hints come before the real answer; 101 would switch
            // protocols, which the proxy never asks for (it removes Upgrade).
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Http1Error::Malformed("101 Switching Protocols to a request without Upgrade"));
            }
            continue;
        }
        let state = framing(&head, head_request)?;
        return Ok(Some((head, state)));
    }
}

/// Reads what the socket has into `read`, growing it by `read_size` when less than a quarter of
/// that is free. Shared with the HTTP/1.1 server (`h1_server`).
pub fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    read_size: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < read_size / 4 {
        read.reserve(read_size);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// Both Transfer-Encoding and Content-Length: the body is read as chunked, and the
    /// connection is not reused (RFC 9112 §6.3), since the two may disagree.
    pub(crate) conflicting_framing: bool,
}

/// Parses a complete response head from the front of `read` and removes it; `None` when more
/// bytes are needed.
fn parse_head(read: &mut BytesMut) -> Result<Option<Head>, Http1Error> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Http1Error::Malformed("more than 100 header fields"));
        }
        Err(_) => return Err(Http1Error::Malformed("not an HTTP/1.x response head")),
    };
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Http1Error::Malformed("an invalid status code"))?;
    let spans = FieldSpans::new(read, response.headers);
    let head = read.split_to(head_len).freeze();
    let headers = spans.header_map(&head).map_err(Http1Error::Malformed)?;
    let conflicting_framing = headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH);
    Ok(Some(Head { status, version, headers, conflicting_framing }))
}

/// Where each header field of a parsed head lies in the read buffer, so that the head can be split
/// off and the header values become slices of it, not copies.
pub struct FieldSpans {
    /// (name offset, name length, value offset, value length), one per field: sized to the
    /// fields parsed, since zeroing room for MAX_HEADERS of them was 7 % of a proxied request's
    /// instructions.
    spans: Vec<(usize, usize, usize, usize)>,
}

impl FieldSpans {
    /// `fields` were parsed from `read`.
    pub fn new(read: &[u8], fields: &[httparse::Header<'_>]) -> Self {
        let base = read.as_ptr() as usize;
        let spans = fields
            .iter()
            .map(|field| {
                (
                    field.name.as_ptr() as usize - base,
                    field.name.len(),
                    field.value.as_ptr() as usize - base,
                    field.value.len(),
                )
            })
            .collect();
        Self { spans }
    }

    /// The fields as a header map; `head` is the split-off head they were parsed in.
    pub fn header_map(&self, head: &Bytes) -> Result<HeaderMap, &'static str> {
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        for &(name, name_len, value, value_len) in &self.spans {
            let name =
                HeaderName::from_bytes(&head[name..name + name_len]).map_err(|_| "an invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                .map_err(|_| "an invalid header value")?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// How the response body is delimited (RFC 9112 §6.3).
fn framing(head: &Head, head_request: bool) -> Result<BodyState, Http1Error> {
    if head_request || head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
        return Ok(BodyState::Done);
    }
    if let Some(last) = head.headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked { BodyState::Chunked(Chunk::Size) } else { BodyState::Close });
    }
    let mut length = None;
    for value in head.headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let parsed =
                parse_decimal(part.trim_ascii()).ok_or(Http1Error::Malformed("an invalid Content-Length"))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(Http1Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => BodyState::Done,
        Some(length) => BodyState::Length(length),
        None => BodyState::Close,
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| digit.is_ascii_digit().then(|| n * 10 + u64::from(digit - b'0')))
}

pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

pub(crate) enum BodyState {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends when the server closes the connection.
    Close,
    Done,
}

pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What `decode` took from the read buffer.
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The buffer holds no complete next piece: read more.
    NeedMore,
}

/// Takes the next piece of a response body from the front of `read` and advances `state`. Pure:
/// the caller reads more when it is asked to.
pub(crate) fn decode(state: &mut BodyState, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
    loop {
        match state {
            BodyState::Done => return Ok(Decoded::End),
            BodyState::Length(remaining) | BodyState::Chunked(Chunk::Data(remaining)) => {
                if read.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(read.len());
                let data = read.split_to(take).freeze();
                *remaining -= take as u64;
                if *remaining == 0 {
                    *state = match state {
                        BodyState::Length(_) => BodyState::Done,
                        _ => BodyState::Chunked(Chunk::DataEnd),
                    };
                }
                return Ok(Decoded::Data(data));
            }
            BodyState::Close if read.is_empty() => return Ok(Decoded::NeedMore),
            BodyState::Close => return Ok(Decoded::Data(read.split().freeze())),
            BodyState::Chunked(chunk) => {
                let step = match chunk {
                    Chunk::Size => chunk_size(read)?,
                    Chunk::DataEnd => chunk_data_end(read)?,
                    Chunk::Trailers => trailers(read)?,
                    // Served with `Length` above.
                    Chunk::Data(_) => return Err(Http1Error::Malformed("chunk data in the framing step")),
                };
                match step {
                    Step::NeedMore => return Ok(Decoded::NeedMore),
                    Step::Next(next) => *chunk = next,
                    Step::End(trailers) => {
                        *state = BodyState::Done;
                        if let Some(trailers) = trailers {
                            return Ok(Decoded::Trailers(trailers));
                        }
                    }
                }
            }
        }
    }
}

/// The connection closed while the body wanted more: the end of a close-delimited body, or a
/// body cut short.
pub(crate) fn end_of_input(state: &mut BodyState) -> Result<(), Http1Error> {
    match std::mem::replace(state, BodyState::Done) {
        BodyState::Close | BodyState::Done => Ok(()),
        BodyState::Length(remaining) => Err(Http1Error::BodyTruncated(remaining)),
        BodyState::Chunked(_) => Err(Http1Error::ChunkedTruncated),
    }
}

/// Reads a whole response from `input`, as if the connection closed after it: its status, body
/// length and trailer count, or why it is not a valid response. For the fuzz target and tests:
/// it runs the same steps as a live connection.
pub fn parse_response(input: &[u8], head_request: bool) -> Result<(StatusCode, u64, usize), Http1Error> {
    let mut read = BytesMut::from(input);
    let Some((head, mut state)) = next_response_head(&mut read, head_request)? else {
        return Err(if read.is_empty() {
            Http1Error::ClosedBeforeResponse
        } else {
            Http1Error::Malformed("the connection closed inside the response head")
        });
    };
    let (mut length, mut trailer_count) = (0, 0);
    loop {
        match decode(&mut state, &mut read)? {
            Decoded::Data(data) => length += data.len() as u64,
            Decoded::Trailers(trailers) => trailer_count = trailers.len(),
            Decoded::End => return Ok((head.status, length, trailer_count)),
            Decoded::NeedMore => end_of_input(&mut state)?,
        }
    }
}

enum Step {
    NeedMore,
    Next(Chunk),
    End(Option<HeaderMap>),
}

/// `<hex size>[;extensions]\r\n`
fn chunk_size(read: &mut BytesMut) -> Result<Step, Http1Error> {
    let Some(end) = read.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if read.len() >= MAX_CHUNK_LINE {
            return Err(Http1Error::Malformed("a chunk-size line longer than 4096 bytes"));
        }
        return Ok(Step::NeedMore);
    };
    let line = &read[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(Http1Error::Malformed("an invalid chunk size"));
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return Err(Http1Error::Malformed("an invalid chunk size")),
        };
        size = size * 16 + u64::from(value);
    }
    read.advance(end + 1);
    Ok(Step::Next(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) }))
}

fn chunk_data_end(read: &mut BytesMut) -> Result<Step, Http1Error> {
    match read.first() {
        None => Ok(Step::NeedMore),
        Some(b'\n') => {
            read.advance(1);
            Ok(Step::Next(Chunk::Size))
        }
        Some(b'\r') => match read.get(1) {
            None => Ok(Step::NeedMore),
            Some(b'\n') => {
                read.advance(2);
                Ok(Step::Next(Chunk::Size))
            }
            Some(_) => Err(Http1Error::Malformed("chunk data longer than its size")),
        },
        Some(_) => Err(Http1Error::Malformed("chunk data longer than its size")),
    }
}

/// The trailer section after the last chunk: header fields, then an empty line.
fn trailers(read: &mut BytesMut) -> Result<Step, Http1Error> {
    if read.starts_with(b"\r\n") || read.starts_with(b"\n") {
        read.advance(if read[0] == b'\r' { 2 } else { 1 });
        return Ok(Step::End(None));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(read, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| Http1Error::Malformed("an invalid trailer name"))?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| Http1Error::Malformed("an invalid trailer value"))?;
                trailers.append(name, value);
            }
            read.advance(len);
            Ok(Step::End(Some(trailers)))
        }
        Ok(httparse::Status::Partial) if read.len() < MAX_RESPONSE_HEAD => Ok(Step::NeedMore),
        Ok(httparse::Status::Partial) => Err(Http1Error::HeadTooLarge),
        Err(_) => Err(Http1Error::Malformed("an invalid trailer section")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_bounded_and_hex_only() {
        let mut long = BytesMut::from(&[b'1'; MAX_CHUNK_LINE][..]);
        assert!(chunk_size(&mut long).is_err(), "a line without end past the bound");
        for bad in [&b"\r\n"[..], b"-1\r\n", b"1234567890abcdef0\r\n", b"0x10\r\n"] {
            assert!(chunk_size(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        assert!(matches!(
            chunk_size(&mut BytesMut::from(&b"fF;name=value\r\n"[..])),
            Ok(Step::Next(Chunk::Data(255)))
        ));
        assert!(matches!(chunk_size(&mut BytesMut::from(&b"a"[..])), Ok(Step::NeedMore)));
    }

    #[test]
    fn whole_responses_parse_to_their_status_body_length_and_trailers() {
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\na: 1\r\nb: 2\r\n\r\n";
        assert_eq!(parse_response(chunked, false).expect("valid"), (StatusCode::OK, 3, 2));
        let close = b"HTTP/1.0 404 Not Found\r\n\r\nno such page";
        assert_eq!(parse_response(close, false).expect("valid"), (StatusCode::NOT_FOUND, 12, 0));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(parse_response(head, true).expect("valid"), (StatusCode::OK, 0, 0));
        assert!(matches!(parse_response(head, false), Err(Http1Error::BodyTruncated(10))));
        assert!(matches!(parse_response(b"", false), Err(Http1Error::ClosedBeforeResponse)));
        assert!(matches!(
            parse_response(b"HTTP/1.1 999999 Huge\r\n\r\n", false),
            Err(Http1Error::Malformed(_))
        ));
    }
}
