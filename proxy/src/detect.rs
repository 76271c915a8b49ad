//! Protocol detection from a connection's first bytes: the HTTP/2 connection preface, an
//! HTTP/1.x request line, or anything else (opaque TCP). `detect` is pure, so it is fuzzed
//! directly; `read_prefix` reads a new connection until it decides.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client_hello::{self, ClientHello, Hello};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest request line read before deciding; a longer one is HTTP if it starts like HTTP,
/// and hyper then answers 414/431 itself.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Decides what `prefix` (the first bytes a client sent) is.
pub fn detect(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        return Detected::NeedMore;
    }
    let preface_len = prefix.len().min(HTTP2_PREFACE.len());
    if prefix[..preface_len] == HTTP2_PREFACE[..preface_len] {
        return if prefix.len() >= HTTP2_PREFACE.len() { Detected::Http2 } else { Detected::NeedMore };
    }
    detect_http1(prefix)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, checked as far as the bytes go.
fn detect_http1(prefix: &[u8]) -> Detected {
    let method_len = prefix.iter().take_while(|&&b| is_token(b)).count();
    if method_len == prefix.len() {
        // Still reading the method: plausible while short.
        return if method_len <= 32 { Detected::NeedMore } else { Detected::Opaque };
    }
    if method_len == 0 || method_len > 32 || prefix[method_len] != b' ' {
        return Detected::Opaque;
    }
    let rest = &prefix[method_len + 1..];
    let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
        if rest.iter().any(|&b| b == b'\r' || b == 0) {
            return Detected::Opaque;
        }
        // A method and a space then a long target: HTTP, let the server answer 414.
        return if prefix.len() >= MAX_DETECT_BYTES { Detected::Http1 } else { Detected::NeedMore };
    };
    let line = rest[..line_end].strip_suffix(b"\r").unwrap_or(&rest[..line_end]);
    match line.iter().rposition(|&b| b == b' ') {
        Some(space)
            if space > 0 && line[space + 1..].starts_with(b"HTTP/1.") && line.len() - space - 1 == 8 =>
        {
            Detected::Http1
        }
        _ => Detected::Opaque,
    }
}

/// RFC 9110 token characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a connection whose client sent nothing before the timeout becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Opaque TCP: the server may speak first (an unknown destination, or inbound).
    Opaque,
    /// Closed: an idle HTTP client connection, which the client replaces when it needs one.
    Close,
}

/// Reads until the protocol is known, or the client stays silent for `timeout` (then `silence`
/// decides). `None` when the client closed without a byte, or was closed for its silence, or a
/// drain began while a `Silence::Close` client had sent nothing (it has no request in flight, and
/// would otherwise hold the drain until its deadline).
pub async fn read_prefix(
    mut stream: TcpStream,
    timeout: Duration,
    silence: Silence,
    shutdown: &CancellationToken,
) -> Option<(Detected, BytesMut, TcpStream)> {
    let mut buffer = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + timeout;
    loop {
        match detect(&buffer) {
            Detected::NeedMore if buffer.len() < MAX_DETECT_BYTES => {}
            Detected::NeedMore => return Some((Detected::Opaque, buffer, stream)),
            decided => return Some((decided, buffer, stream)),
        }
        if buffer.capacity() == buffer.len() {
            buffer.reserve(buffer.len());
        }
        let closable = buffer.is_empty() && silence == Silence::Close;
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buffer)) => read,
            () = shutdown.cancelled(), if closable => return None,
        };
        match read {
            Err(_) if closable => return None,
            Err(_) => return Some((Detected::Opaque, buffer, stream)),
            Ok(Ok(0)) if buffer.is_empty() => return None,
            Ok(Ok(0)) => return Some((Detected::Opaque, buffer, stream)),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                debug!(%error, "reading from a new connection failed");
                return None;
            }
        }
    }
}

/// Whether a connection's first bytes may be a ClientHello (a TLS handshake record).
pub fn may_be_tls(prefix: &[u8]) -> bool {
    prefix.first() == Some(&0x16)
}

/// Reads the rest of the first TLS record into `buffer` and returns what its ClientHello offers;
/// an empty one when it is not a ClientHello the proxy can read or does not come in time (the
/// connection then goes on unread); `None` when the client went away.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    timeout: Duration,
) -> Option<ClientHello> {
    let deadline = Instant::now() + timeout;
    loop {
        match client_hello::parse(buffer) {
            Hello::Read(hello) => return Some(hello),
            Hello::NotHello => return Some(ClientHello::default()),
            Hello::NeedBytes(needed) => {
                buffer.reserve(needed.saturating_sub(buffer.len()));
                match tokio::time::timeout_at(deadline.into(), stream.read_buf(buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                    Ok(Ok(_)) => {}
                    Err(_) => return Some(ClientHello::default()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_protocols_apart() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Detected::Http1);
        assert_eq!(detect(b"POST /x?y=1 HTTP/1.0\r\n"), Detected::Http1);
        assert_eq!(detect(b"GET / HTTP/1.1\n"), Detected::Http1);
        assert_eq!(detect(HTTP2_PREFACE), Detected::Http2);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00\x01"), Detected::Opaque, "a TLS ClientHello");
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.2\r\n"), Detected::Opaque);
        assert_eq!(detect(b"GET / FTP/1.0\r\n"), Detected::Opaque);
        assert_eq!(detect(b"GET / HTTP/2.0\r\n"), Detected::Opaque);
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Detected::Opaque, "redis");
    }

    #[test]
    fn waits_for_enough_bytes() {
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"GE"), Detected::NeedMore);
        assert_eq!(detect(b"GET /very/long"), Detected::NeedMore);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Detected::NeedMore);
        assert_eq!(detect(&[b'A'; 40]), Detected::Opaque);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(detect(&long), Detected::Http1, "hyper answers 414 for it");
    }

    #[test]
    fn never_panics_on_any_short_input() {
        for a in 0..=255u8 {
            for b in [b' ', b'\r', b'\n', b'H', 0] {
                let _ = detect(&[a, b]);
                let _ = detect(&[b'G', b'E', b'T', b' ', a, b' ', b, b'\n']);
            }
        }
    }
}
