//! How a request and its response are rewritten between the two connections: hop-by-hop fields
//! removed, the URI in the form the upstream protocol wants, the trace context advanced, and an
//! HTTP/1.1 request carried over HTTP/2 between proxies marked as such.

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version, request};

use crate::client::UpstreamProtocol;
use crate::client::body::ProxyBody;
use crate::trace_context;

/// Set by the outbound proxy when it carries an HTTP/1.1 request over the HTTP/2 connection
/// between two proxies, so the inbound proxy hands it to the app as HTTP/1.1 again.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("braid-orig-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP11: HeaderValue = HeaderValue::from_static("HTTP/1.1");
/// Header fields that describe one connection (`te` aside: it may stay as `te: trailers`).
const HOP_BY_HOP: [HeaderName; 5] = [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING, UPGRADE];

/// The request as the upstream connection needs it: origin-form URI for HTTP/1.1, an absolute
/// URI for HTTP/2 (its :authority is the Host the client used), hop-by-hop headers removed.
pub fn upstream_request(
    parts: &mut request::Parts,
    body: ProxyBody,
    protocol: UpstreamProtocol,
    meshed: bool,
    inbound: bool,
) -> Request<ProxyBody> {
    let headers = &mut parts.headers;
    let present = hop_by_hop_present(headers);
    // Only a request with an Upgrade field is looked at again.
    let upgrade = if present.upgrade { super::upgrade::requested(parts.version, headers) } else { None };
    remove_hop_by_hop(headers, present);
    let was_http1 = parts.version != Version::HTTP_2;
    // An upgrade goes as HTTP/1.1 on a connection of its own, whatever the pool speaks.
    let protocol = if upgrade.is_some() { UpstreamProtocol::Http1 } else { protocol };
    match protocol {
        UpstreamProtocol::Http1 => {
            if parts.uri.authority().is_some() {
                if !headers.contains_key(HOST)
                    && let Some(authority) = parts.uri.authority()
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    headers.insert(HOST, host);
                }
                let path = parts.uri.path_and_query().cloned();
                let mut uri = http::uri::Parts::default();
                uri.path_and_query = path.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            if parts.uri.authority().is_none() {
                let host = headers.get(HOST).and_then(|host| Authority::try_from(host.as_bytes()).ok());
                let authority = match host {
                    Some(host) => {
                        // :authority carries it (RFC 9113 §8.3.1), so HPACK codes it once, not
                        // twice; the inbound side gives an HTTP/1.1 app its Host again from it.
                        headers.remove(HOST);
                        host
                    }
                    None => Authority::from_static("localhost"),
                };
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority);
                if uri.path_and_query.is_none() {
                    uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                }
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            if meshed && was_http1 && !inbound {
                headers.insert(ORIG_PROTO, HTTP11);
            }
            parts.version = Version::HTTP_2;
        }
    }
    let mut request = Request::new(body);
    // An extended CONNECT's :protocol (RFC 8441) goes on with it; an HTTP/1.1 pool refuses it.
    if let Some(protocol) = parts.extensions.remove::<h2::ext::Protocol>() {
        request.extensions_mut().insert(protocol);
    }
    if let Some(upgrade) = upgrade {
        super::upgrade::restore(&mut parts.headers, upgrade);
        request.extensions_mut().insert(super::upgrade::Upgrading);
    }
    *request.method_mut() = std::mem::take(&mut parts.method);
    *request.uri_mut() = std::mem::take(&mut parts.uri);
    *request.version_mut() = parts.version;
    *request.headers_mut() = std::mem::take(&mut parts.headers);
    request
}

pub fn clone_parts(parts: &request::Parts) -> request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    if let Some(protocol) = parts.extensions.get::<h2::ext::Protocol>() {
        request.extensions_mut().insert(protocol.clone());
    }
    request.into_parts().0
}

pub fn empty_parts() -> request::Parts {
    Request::new(()).into_parts().0
}

/// Passes a well-formed `traceparent` on as it came, and drops a malformed one.
pub fn propagate_trace(headers: &mut http::HeaderMap) {
    if headers.get(trace_context::TRACEPARENT).is_some_and(|received| !trace_context::is_valid(received)) {
        headers.remove(trace_context::TRACEPARENT);
    }
}

pub fn authority_of<B>(request: &Request<B>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| request.headers().get(HOST)?.to_str().ok())
}

/// The upstream response as the client gets it: connection-level headers are the proxy's own,
/// but for a 101's, which say what the connection switches to.
pub fn client_response(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    let switched_to =
        super::upgrade::is_switching(&response).then(|| response.headers().get(UPGRADE).cloned()).flatten();
    strip_hop_by_hop(response.headers_mut());
    if let Some(protocol) = switched_to {
        super::upgrade::restore(response.headers_mut(), protocol);
    }
    response
}

/// Removes the header fields that describe one connection rather than the message, from every
/// request and response the proxy passes on: each side frames its own connection, and HTTP/2
/// forbids them (RFC 9113 §8.2.2; h2 refuses a head that has one). `te: trailers` stays: gRPC
/// needs it end to end. Fields a Connection header names stay too, as in Linkerd: a client must
/// not be able to strip fields such as host from what the next hop sees.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    remove_hop_by_hop(headers, present);
}

/// Which hop-by-hop fields a head has, found in one pass over its names: most requests carry
/// none, and most HTTP/1.1 responses just `connection` (nginx: keep-alive), so only those
/// present are looked up again.
#[derive(Clone, Copy)]
struct HopByHop {
    /// Bit i: HOP_BY_HOP[i].
    fields: u8,
    te: bool,
    upgrade: bool,
}

fn hop_by_hop_present(headers: &HeaderMap) -> HopByHop {
    let mut present = HopByHop { fields: 0, te: false, upgrade: false };
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present.fields |= 1 << index;
            present.upgrade |= name == UPGRADE;
        } else if name == TE {
            present.te = true;
        }
    }
    present
}

fn remove_hop_by_hop(headers: &mut HeaderMap, present: HopByHop) {
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present.fields & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    if present.te && headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_with_te(te: &'static str) -> request::Parts {
        let request = Request::get("http://web/").header(TE, te).header(CONNECTION, "close").body(());
        request.expect("a valid request").into_parts().0
    }

    #[test]
    fn an_http2_request_keeps_te_only_when_it_is_trailers() {
        let mut gzip = parts_with_te("gzip");
        let request = upstream_request(&mut gzip, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert!(!request.headers().contains_key(TE), "h2 refuses any te but trailers");
        assert!(!request.headers().contains_key(CONNECTION), "no connection headers in HTTP/2");
        let mut trailers = parts_with_te("trailers");
        let request =
            upstream_request(&mut trailers, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert_eq!(request.headers()[TE], "trailers", "gRPC needs it");
        let mut http1 = parts_with_te("gzip");
        let request = upstream_request(&mut http1, ProxyBody::empty(), UpstreamProtocol::Http1, false, false);
        assert!(!request.headers().contains_key(TE), "te is hop-by-hop in HTTP/1.1 too");
    }

    #[test]
    fn host_travels_as_the_authority_over_http2_and_comes_back_as_host_for_http1() {
        let request = Request::get("/items?id=1").header(HOST, "web.shop:8080").body(());
        let mut parts = request.expect("a valid request").into_parts().0;
        let http2 = upstream_request(&mut parts, ProxyBody::empty(), UpstreamProtocol::Http2, true, false);
        assert_eq!(http2.uri().to_string(), "http://web.shop:8080/items?id=1");
        assert!(!http2.headers().contains_key(HOST), "sent once, as :authority");
        let mut parts = http2.into_parts().0;
        let http1 = upstream_request(&mut parts, ProxyBody::empty(), UpstreamProtocol::Http1, false, true);
        assert_eq!(http1.uri().to_string(), "/items?id=1");
        assert_eq!(http1.headers()[HOST], "web.shop:8080");
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_end_to_end_fields_kept() {
        let response = Response::builder()
            .header(CONNECTION, "keep-alive, host, close")
            .header("keep-alive", "timeout=5")
            .header(TRANSFER_ENCODING, "chunked")
            .header(UPGRADE, "h2c")
            .header("proxy-connection", "keep-alive")
            .header(TE, "trailers")
            .header("content-type", "text/plain")
            .header("grpc-status", "0")
            .body(ProxyBody::empty())
            .expect("a valid response");
        let response = client_response(response);
        let mut names: Vec<&str> = response.headers().keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "grpc-status", "te"]);
    }

    #[test]
    fn each_hop_by_hop_field_is_removed_alone_with_all_its_values() {
        let alone = [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
        ];
        assert_eq!(alone.len(), HOP_BY_HOP.len() + 1, "every hop-by-hop field, and te");
        for (name, value) in alone {
            let mut headers = HeaderMap::new();
            headers.append(name, HeaderValue::from_static("first"));
            headers.append("etag", HeaderValue::from_static("\"v1\""));
            headers.append(name, HeaderValue::from_str(value).expect("a valid value"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name} was kept: {headers:?}");
            assert_eq!(headers.len(), 1, "{name}: {headers:?}");
            assert_eq!(headers["etag"], "\"v1\"");
        }
        let mut te_trailers = HeaderMap::new();
        te_trailers.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut te_trailers);
        assert_eq!(te_trailers[TE], "trailers", "gRPC needs te: trailers end to end");
    }
}
