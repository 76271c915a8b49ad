//! A route's redirect (answered here, never sent on) and rewrite (the host and path the backend
//! sees), as the Gateway API's RequestRedirect and URLRewrite filters define them.

use braid_api::config::{RedirectConfig, RewriteConfig};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Response, StatusCode, Uri, header};

use crate::client::body::ProxyBody;

/// The request's host and port, from the URI's authority (HTTP/2) or the Host header.
fn request_authority(parts: &Parts) -> (String, Option<u16>) {
    let authority = parts
        .uri
        .authority()
        .map(Authority::as_str)
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    match authority.parse::<Authority>() {
        Ok(authority) => (authority.host().to_owned(), authority.port_u16()),
        Err(_) => (String::new(), None),
    }
}

fn well_known(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// The Location a redirect points to.
pub fn location(redirect: &RedirectConfig, parts: &Parts) -> String {
    let (host, request_port) = request_authority(parts);
    let scheme = redirect.scheme.as_deref().or(parts.uri.scheme_str()).unwrap_or("http");
    let host = redirect.hostname.clone().unwrap_or(host);
    // A scheme given without a port means its well-known port.
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => Some(port),
        (None, Some(_)) => None,
        (None, None) => request_port,
    }
    .filter(|port| *port != well_known(scheme));
    let path = parts.uri.path();
    let path = redirect.path.as_ref().map_or_else(|| path.to_owned(), |rewrite| rewrite.apply(path));
    let mut location = format!("{scheme}://{host}");
    if let Some(port) = port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(query) = parts.uri.query() {
        location.push('?');
        location.push_str(query);
    }
    location
}

/// The redirect answer, with an empty body.
pub fn redirect_response(redirect: &RedirectConfig, parts: &Parts) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    if let Ok(location) = HeaderValue::from_str(&location(redirect, parts)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Rewrites the request's host and path for the backend; the query stays.
pub fn rewrite(rewrite: &RewriteConfig, parts: &mut Parts) {
    if let Some(hostname) = &rewrite.hostname {
        // The port the client named stays with the new host.
        let (_, port) = request_authority(parts);
        let authority = match port {
            Some(port) => format!("{hostname}:{port}"),
            None => hostname.clone(),
        };
        if let Ok(value) = HeaderValue::from_str(&authority) {
            if parts.headers.contains_key(header::HOST) || parts.uri.authority().is_none() {
                parts.headers.insert(header::HOST, value);
            }
            if parts.uri.authority().is_some() {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.authority = authority.parse().ok().or(uri.authority);
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
        }
    }
    if let Some(path) = &rewrite.path {
        let mut new = path.apply(parts.uri.path());
        if let Some(query) = parts.uri.query() {
            new.push('?');
            new.push_str(query);
        }
        if let Ok(path_and_query) = new.parse::<PathAndQuery>() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(path_and_query);
            parts.uri = Uri::from_parts(uri).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::config::PathRewriteConfig;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut request = http::Request::get(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn redirect(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<PathRewriteConfig>,
    ) -> RedirectConfig {
        RedirectConfig {
            scheme: scheme.map(str::to_owned),
            hostname: host.map(str::to_owned),
            port,
            path,
            status: 302,
        }
    }

    #[test]
    fn the_location_keeps_what_the_redirect_does_not_change() {
        let request = parts("/a/b?x=1", Some("echo:8080"));
        let prefix =
            || Some(PathRewriteConfig::ReplacePrefixMatch { prefix: "/a".into(), with: "/z".into() });
        let cases = [
            (redirect(None, Some("example.org"), None, None), "http://example.org:8080/a/b?x=1"),
            (redirect(Some("https"), None, None, None), "https://echo/a/b?x=1"),
            (redirect(Some("https"), None, Some(8443), None), "https://echo:8443/a/b?x=1"),
            (redirect(None, None, Some(80), None), "http://echo/a/b?x=1"),
            (redirect(None, None, None, prefix()), "http://echo:8080/z/b?x=1"),
            (
                redirect(None, None, None, Some(PathRewriteConfig::ReplaceFullPath("/full".into()))),
                "http://echo:8080/full?x=1",
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(location(&config, &request), expected, "{config:?}");
        }
        let plain = parts("/p", Some("echo"));
        assert_eq!(
            location(&redirect(None, Some("example.org"), None, None), &plain),
            "http://example.org/p"
        );
    }

    #[test]
    fn a_rewrite_changes_the_host_and_path_and_keeps_the_query() {
        let mut request = parts("/prefix/one?q=2", Some("echo:80"));
        let config = RewriteConfig {
            hostname: Some("one.example.org".into()),
            path: Some(PathRewriteConfig::ReplacePrefixMatch { prefix: "/prefix".into(), with: "/".into() }),
        };
        rewrite(&config, &mut request);
        assert_eq!(request.uri.to_string(), "/one?q=2");
        assert_eq!(request.headers[header::HOST], "one.example.org:80");
        let mut h2 = parts("http://echo/prefix", None);
        rewrite(&config, &mut h2);
        assert_eq!(h2.uri.to_string(), "http://one.example.org/");
    }
}
