//! W3C trace context: a request that carries `traceparent` leaves the proxy with the same trace
//! id and a new parent (span) id, so each hop is a span of its own in the trace.

use http::{HeaderName, HeaderValue};

// A parsed name: looking a `&str` up in a header map parses it first, on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The `traceparent` to send upstream for the one received, or `None` when the received one is
/// malformed (then it is dropped rather than passed on, as the spec asks).
pub fn next_hop(received: &HeaderValue) -> Option<HeaderValue> {
    next_hop_with(received, fastrand::u64(1..))
}

fn next_hop_with(received: &HeaderValue, span_id: u64) -> Option<HeaderValue> {
    // version "-" trace-id(32) "-" parent-id(16) "-" flags(2)
    let bytes = received.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let hex =
        |range: std::ops::Range<usize>| bytes[range].iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) || &bytes[0..2] == b"ff" {
        return None;
    }
    if bytes[3..35].iter().all(|&b| b == b'0') {
        return None;
    }
    // Version 00 is exactly 55 bytes; later versions may append fields, kept as they are.
    if &bytes[0..2] == b"00" && bytes.len() != 55 {
        return None;
    }
    let mut out = [0u8; 55];
    out.copy_from_slice(&bytes[..55]);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out[36..52].iter_mut().enumerate() {
        *slot = DIGITS[((span_id >> (60 - 4 * i)) & 0xf) as usize];
    }
    let mut value = out.to_vec();
    value.extend_from_slice(&bytes[55..]);
    HeaderValue::from_bytes(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_trace_and_replaces_the_parent() {
        let received = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sent = next_hop_with(&received, 0x1234_5678_9abc_def0).unwrap();
        assert_eq!(sent, "00-4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-01");
        let random = next_hop(&received).unwrap();
        assert!(random.to_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(random, received);
    }

    #[test]
    fn drops_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(next_hop(&HeaderValue::from_static(bad)), None, "{bad:?}");
        }
    }
}
