//! One normal form for request paths, so that what a policy or a route matched is what the app
//! is asked for: `/public/%2e%2e/admin` must not pass a rule for `/public/*` and then be served
//! as `/admin` (the class of Istio's CVE-2019-9901).
//!
//! The normal form (RFC 3986 §6.2.2, plus merged slashes, as Envoy's `normalize_path` and
//! `merge_slashes`): percent-encoded unreserved characters decoded (`%7E` → `~`, `%2e` → `.`),
//! other percent-encodings in upper case (`%c3` → `%C3`), repeated slashes merged, then `.` and
//! `..` segments removed. The query is left as it is.
//!
//! Spellings that servers read differently are refused instead (`Ambiguous`): an encoded slash
//! or backslash (`%2F`, `%5C`: one app decodes it into a separator, another does not), a
//! backslash (some servers treat it as `/`), `..` that climbs above the root, a dot segment with
//! a parameter (`..;`: Tomcat and Spring strip `;...`), and a `%` not followed by two hex digits.

use std::borrow::Cow;

use bytes::{BufMut as _, BytesMut};
use http::uri::{PathAndQuery, Uri};
use http::{Response, StatusCode};

use super::respond::local;
use crate::client::body::ProxyBody;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    #[error("the path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSeparator,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path's dot segments climb above the root")]
    AboveRoot,
    #[error("the path has a dot segment with a parameter (..; or .;)")]
    DotSegmentParameter,
    #[error("the path has a % not followed by two hex digits")]
    BadPercentEncoding,
}

/// The normal form of `path` (borrowed, without allocating, when it is already normal: the
/// common case), or why it is refused. A path that does not start with `/` (`*`, or none) is
/// returned unchanged.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Ambiguous> {
    if !path.starts_with('/') || is_normal(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    rewrite(path).map(Cow::Owned)
}

/// Normalises the path of `uri` in place; the query stays as it was.
pub fn normalize_uri(uri: &mut Uri) -> Result<(), Ambiguous> {
    let Cow::Owned(path) = normalize(uri.path())? else { return Ok(()) };
    set_path(uri, path)
}

/// Puts `path` (a normal form of the path of `uri`) in place of it, keeping the query.
pub fn set_path(uri: &mut Uri, mut path: String) -> Result<(), Ambiguous> {
    if let Some(query) = uri.query() {
        path.push('?');
        path.push_str(query);
    }
    // The normal form only removes characters or decodes unreserved ones, so it stays a valid
    // path-and-query; the errors cannot happen.
    let path_and_query = PathAndQuery::try_from(path).map_err(|_| Ambiguous::BadPercentEncoding)?;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path_and_query);
    *uri = Uri::from_parts(parts).map_err(|_| Ambiguous::BadPercentEncoding)?;
    Ok(())
}

/// The answer to a request whose path is refused: 400, with the reason.
pub fn refusal(ambiguous: Ambiguous) -> Response<ProxyBody> {
    local(
        StatusCode::BAD_REQUEST,
        "ambiguous-path",
        format!("braid-proxy: {ambiguous}: refused, since servers read such paths differently\n"),
    )
}

/// Whether `path` (starting with `/`) is already in normal form; `Err` when it is ambiguous.
fn is_normal(path: &[u8]) -> Result<bool, Ambiguous> {
    let mut normal = true;
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'\\' => return Err(Ambiguous::Backslash),
            b'%' => {
                let byte = percent_byte(path, i)?;
                if byte == b'/' || byte == b'\\' {
                    return Err(Ambiguous::EncodedSeparator);
                }
                if is_unreserved(byte) || path[i + 1].is_ascii_lowercase() || path[i + 2].is_ascii_lowercase()
                {
                    normal = false;
                }
                i += 3;
                continue;
            }
            b'/' => {
                let segment = &path[i + 1..];
                let end = segment.iter().position(|&b| b == b'/').unwrap_or(segment.len());
                match dot_segment(&segment[..end])? {
                    DotSegment::None => {}
                    DotSegment::Dot | DotSegment::DotDot => normal = false,
                }
                if segment.first() == Some(&b'/') {
                    normal = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(normal)
}

enum DotSegment {
    None,
    Dot,
    DotDot,
}

fn dot_segment(segment: &[u8]) -> Result<DotSegment, Ambiguous> {
    let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
    let kind = match name {
        b"." => DotSegment::Dot,
        b".." => DotSegment::DotDot,
        _ => return Ok(DotSegment::None),
    };
    if name.len() != segment.len() {
        return Err(Ambiguous::DotSegmentParameter);
    }
    Ok(kind)
}

fn percent_byte(path: &[u8], at: usize) -> Result<u8, Ambiguous> {
    let hex = |b: u8| (b as char).to_digit(16);
    match (path.get(at + 1).copied().and_then(hex), path.get(at + 2).copied().and_then(hex)) {
        (Some(high), Some(low)) => Ok((high * 16 + low) as u8),
        _ => Err(Ambiguous::BadPercentEncoding),
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The slow path: decode, then merge slashes and resolve dot segments.
fn rewrite(path: &str) -> Result<String, Ambiguous> {
    let bytes = path.as_bytes();
    let mut decoded = BytesMut::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = percent_byte(bytes, i)?;
            if is_unreserved(byte) {
                decoded.put_u8(byte);
            } else {
                decoded.put_u8(b'%');
                decoded.put_u8(bytes[i + 1].to_ascii_uppercase());
                decoded.put_u8(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.put_u8(bytes[i]);
            i += 1;
        }
    }
    // Segments after the leading slash; empty ones are merged away, except a last one, which
    // keeps the trailing slash.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    for (n, segment) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match dot_segment(segment)? {
            DotSegment::Dot => trailing_slash = last,
            DotSegment::DotDot => {
                if kept.pop().is_none() {
                    return Err(Ambiguous::AboveRoot);
                }
                trailing_slash = last;
            }
            DotSegment::None if segment.is_empty() => trailing_slash = last,
            DotSegment::None => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        // Only ASCII bytes were decoded, and the rest came from a str: still UTF-8.
        out.push_str(std::str::from_utf8(segment).map_err(|_| Ambiguous::BadPercentEncoding)?);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a.b/.c/..d/c..", "/%C3%A9", "/a;b/c", "/~user", "*", ""] {
            let normal = normalize(path).unwrap();
            assert!(matches!(normal, Cow::Borrowed(_)), "{path} was rewritten to {normal}");
            assert_eq!(normal, path);
        }
    }

    #[test]
    fn other_spellings_get_one_normal_form() {
        let cases = [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("//public/../admin", "/admin"),
            ("/public//../admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a//", "/a/"),
            ("//", "/"),
            ("/a/..", "/"),
            ("/%7Euser/%61%2D", "/~user/a-"),
            ("/%c3%a9", "/%C3%A9"),
            ("/%3b", "/%3B"),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        let cases = [
            ("/a/..%2fb", Ambiguous::EncodedSeparator),
            ("/a%2Fb", Ambiguous::EncodedSeparator),
            ("/a/..%5cb", Ambiguous::EncodedSeparator),
            ("/a\\b", Ambiguous::Backslash),
            ("/..", Ambiguous::AboveRoot),
            ("/a/../../b", Ambiguous::AboveRoot),
            ("/%2e%2e/b", Ambiguous::AboveRoot),
            ("/a/..;/b", Ambiguous::DotSegmentParameter),
            ("/a/.;x/b", Ambiguous::DotSegmentParameter),
            ("/a/%2e%2e;/b", Ambiguous::DotSegmentParameter),
            ("/a%", Ambiguous::BadPercentEncoding),
            ("/a%2", Ambiguous::BadPercentEncoding),
            ("/a%zz", Ambiguous::BadPercentEncoding),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize(path), Err(expected), "{path}");
        }
    }

    /// The outbound proxy sends the normal form, and the inbound proxy must see it as normal
    /// (not copy it, and not read it differently): the normal form is a fixed point.
    #[test]
    fn the_normal_form_of_any_path_is_normal() {
        const PIECES: [&str; 14] =
            ["/", "//", ".", "..", "%2e", "%2E", "a", "%61", "%c3%a9", "%7e", ";x", "%3b", "~", "-"];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut path = String::from("/");
            for _ in 0..rng.usize(1..10) {
                path.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            let Ok(normal) = normalize(&path) else { continue };
            let again = normalize(&normal).unwrap_or_else(|e| panic!("{path} -> {normal} -> {e}"));
            assert!(matches!(again, Cow::Borrowed(_)), "{path} -> {normal} -> {again}: not a fixed point");
            assert!(
                !normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"),
                "{path} -> {normal}"
            );
            assert!(!normal.ends_with("/.") && !normal.ends_with("/.."), "{path} -> {normal}");
        }
    }

    #[test]
    fn the_query_is_kept_as_it_was() {
        let mut uri: Uri = "/a/./b?next=/../x&y=%2e".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/a/b?next=/../x&y=%2e");
        let mut absolute: Uri = "http://web:80//a/%2e%2e/b".parse().unwrap();
        normalize_uri(&mut absolute).unwrap();
        assert_eq!(absolute.to_string(), "http://web:80/b");
    }
}
