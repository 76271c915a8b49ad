//! gRPC over hyper's HTTP/2, framed by hand: a message is a 1-byte compression flag, a 4-byte
//! big-endian length and the protobuf bytes; the call's outcome is the `grpc-status` trailer
//! (or header, in a trailers-only answer). That is all the protocol a unary, a server-streaming
//! and a bidirectional streaming echo need, so the crate needs neither tonic, prost, nor protoc.

pub mod client;
pub mod proto;
pub mod server;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

pub const ECHO_PATH: &str = "/braid.echo.v1.Echo/Echo";
pub const STREAM_PATH: &str = "/braid.echo.v1.Echo/EchoStream";
pub const REPEAT_PATH: &str = "/braid.echo.v1.Echo/EchoRepeat";
pub const HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
/// gRPC's default limit on a received message.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// The most replies one EchoRepeat may ask for: enough for any benchmark's stream, few enough
/// that a typo cannot keep the server busy for minutes.
pub const MAX_REPEAT: u32 = 100_000;
pub const CONTENT_TYPE: &str = "application/grpc";

/// The status codes this crate uses (grpc/doc/statuscodes.md).
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// The outcome of a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gRPC status {code}: {message}")]
pub struct Status {
    pub code: u32,
    pub message: String,
}

impl Status {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn ok() -> Self {
        Self::new(code::OK, "")
    }

    /// `grpc-status` and `grpc-message`, for the trailers (or the headers of a trailers-only
    /// answer).
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from(self.code));
        if !self.message.is_empty() {
            // percent_encode leaves only visible ASCII, which is always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message)) {
                headers.insert("grpc-message", value);
            }
        }
        headers
    }

    /// The status in these headers or trailers; None when they carry no `grpc-status`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Result<Self, String>> {
        let code = headers.get("grpc-status")?;
        let code = match code.to_str().ok().and_then(|code| code.parse::<u32>().ok()) {
            Some(code) => code,
            None => return Some(Err(format!("grpc-status {code:?} is not a number"))),
        };
        let message =
            headers.get("grpc-message").map(|value| percent_decode(value.as_bytes())).unwrap_or_default();
        Some(Ok(Self { code, message }))
    }
}

/// One length-prefixed, uncompressed message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    // Messages over 4 GiB cannot be framed; nothing here comes close to gRPC's 4 MiB limit.
    buf.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    buf.put_slice(message);
    buf.freeze()
}

/// Splits a stream of DATA frames into messages, which may span frames or share one.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
}

impl Deframer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if compressed != 0 {
            return Err(Status::new(
                code::UNIMPLEMENTED,
                "compressed messages are not supported (send grpc-encoding identity)",
            ));
        }
        if len > MAX_MESSAGE {
            return Err(Status::new(
                code::RESOURCE_EXHAUSTED,
                format!("a message of {len} bytes exceeds {MAX_MESSAGE}"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// True when no partial message is left: the stream may end here.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// gRPC's grpc-message encoding: percent-encoding of everything but visible ASCII.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        match (bytes[index], hex.and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_and_joined_across_frames_come_out_whole() {
        let mut wire = frame(b"first").to_vec();
        wire.extend_from_slice(&frame(b""));
        wire.extend_from_slice(&frame(b"third"));
        let mut deframer = Deframer::default();
        let mut messages = Vec::new();
        for chunk in wire.chunks(3) {
            deframer.push(chunk);
            while let Some(message) = deframer.next_message().unwrap() {
                messages.push(message);
            }
        }
        assert_eq!(messages, [&b"first"[..], b"", b"third"]);
        assert!(deframer.is_empty());
        deframer.push(&frame(b"partial")[..6]);
        assert_eq!(deframer.next_message(), Ok(None));
        assert!(!deframer.is_empty());
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused() {
        let mut deframer = Deframer::default();
        deframer.push(&[1, 0, 0, 0, 1, b'x']);
        assert_eq!(deframer.next_message().unwrap_err().code, code::UNIMPLEMENTED);
        let mut deframer = Deframer::default();
        deframer.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(deframer.next_message().unwrap_err().code, code::RESOURCE_EXHAUSTED);
    }

    #[test]
    fn status_survives_the_headers() {
        let status = Status::new(code::UNAVAILABLE, "injected failure: 100% über");
        let headers = status.to_headers();
        assert_eq!(headers["grpc-message"], "injected failure: 100%25 %C3%BCber");
        assert_eq!(Status::from_headers(&headers), Some(Ok(status)));
        assert_eq!(Status::from_headers(&HeaderMap::new()), None);
    }
}
