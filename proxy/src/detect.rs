//! Protocol detection from a connection's first bytes: the HTTP/2 connection preface, an
//! HTTP/1.x request line, or anything else (opaque TCP). Pure, so it is fuzzed directly.

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
