//! W3C trace context: a request's `traceparent` is passed on unchanged when it is well formed and
//! dropped when it is not (as the spec asks). Only a proxy that exports spans replaces the parent
//! id, with the id of the span it reports (src/spans): otherwise the callee's span would point at
//! a parent no collector has, and the trace would break at every meshed hop.

use http::{HeaderName, HeaderValue};

// A parsed name: looking a `&str` up in a header map parses it first, on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The fields of a well-formed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn parse(received: &HeaderValue) -> Option<Self> {
        if !is_valid(received) {
            return None;
        }
        let bytes = received.as_bytes();
        let mut trace_id = [0; 16];
        let mut parent_id = [0; 8];
        decode_hex(&bytes[3..35], &mut trace_id);
        decode_hex(&bytes[36..52], &mut parent_id);
        let mut flags = [0; 1];
        decode_hex(&bytes[53..55], &mut flags);
        Some(Self { trace_id, parent_id, flags: flags[0] })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header in version 00, the one a proxy that changes it must write.
    pub fn to_header(&self) -> HeaderValue {
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        encode_hex(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        encode_hex(&self.parent_id, &mut text[36..52]);
        text[52] = b'-';
        encode_hex(&[self.flags], &mut text[53..55]);
        // Lower-case hex and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn decode_hex(text: &[u8], out: &mut [u8]) {
    let digit = |b: u8| if b.is_ascii_digit() { b - b'0' } else { b - b'a' + 10 };
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0]) << 4) | digit(pair[1]);
    }
}

pub fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Whether a received `traceparent` is well formed: version, 32-digit trace id (not all zero),
/// 16-digit parent id, flags, in lower-case hex; version 00 exactly, later versions with fields
/// appended.
pub fn is_valid(received: &HeaderValue) -> bool {
    // version "-" trace-id(32) "-" parent-id(16) "-" flags(2)
    let bytes = received.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return false;
    }
    let hex =
        |range: std::ops::Range<usize>| bytes[range].iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) || &bytes[0..2] == b"ff" {
        return false;
    }
    if bytes[3..35].iter().all(|&b| b == b'0') || bytes[36..52].iter().all(|&b| b == b'0') {
        return false;
    }
    // Version 00 is exactly 55 bytes; a later version may append fields after a dash.
    match &bytes[0..2] {
        b"00" => bytes.len() == 55,
        _ => bytes.len() == 55 || bytes[55] == b'-',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_values() {
        for good in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        ] {
            assert!(is_valid(&HeaderValue::from_static(good)), "{good:?}");
        }
    }

    #[test]
    fn reads_and_writes_the_fields() {
        let received =
            HeaderValue::from_static("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future");
        let parsed = TraceParent::parse(&received).expect("well formed");
        assert_eq!(parsed.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(parsed.parent_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(parsed.sampled());
        let next = TraceParent { parent_id: [0xab; 8], ..parsed };
        assert_eq!(next.to_header(), "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01");
        let unsampled = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!TraceParent::parse(&unsampled).expect("well formed").sampled());
        assert_eq!(TraceParent::parse(&HeaderValue::from_static("00-xyz")), None);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid(&HeaderValue::from_static(bad)), "{bad:?}");
        }
    }
}
