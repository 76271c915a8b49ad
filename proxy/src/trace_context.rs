//! W3C trace context: a request's `traceparent` is passed on unchanged when it is well formed and
//! dropped when it is not (as the spec asks). The proxy reports no spans of its own, so it must
//! not replace the parent id: the callee's span would then point at a parent no collector has,
//! and the trace would break at every meshed hop (Linkerd rewrites it only when its span export
//! is on).

use http::{HeaderName, HeaderValue};

// A parsed name: looking a `&str` up in a header map parses it first, on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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
