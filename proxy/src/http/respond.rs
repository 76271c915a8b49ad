//! Responses the proxy makes itself: a denial, a fault, no route, and every way a request can
//! get no response from upstream.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::client::UpstreamError;
use crate::client::body::ProxyBody;
use crate::metrics::Label;

/// Names the reason of a response the proxy made itself, for people and tests.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("braid-proxy-error");

/// The reason of a 400 for a request body the client broke: its own error, classified as
/// `client_error` and held against no endpoint.
pub const REQUEST_BODY: &str = "request-body";

/// Why a request got no response from upstream.
pub enum Failure {
    Upstream(UpstreamError),
    PerTryTimeout { addr: SocketAddr, timeout: Duration },
    Timeout { service: Label, timeout: Duration },
    NoEndpoints { service: Label, backend: Label },
}

/// What the client gets when upstream gave no response: the status says why.
pub fn failure_response(failure: &Failure) -> Response<ProxyBody> {
    match failure {
        Failure::Upstream(error) if error.is_connect() => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "connect-failure",
            format!("braid-proxy: {error}: the endpoint refused or did not answer\n"),
        ),
        Failure::Upstream(error) if error.is_client_error() => {
            local(StatusCode::BAD_REQUEST, REQUEST_BODY, format!("braid-proxy: {error}\n"))
        }
        Failure::Upstream(error) => {
            local(StatusCode::BAD_GATEWAY, "upstream-reset", format!("braid-proxy: {error}\n"))
        }
        Failure::PerTryTimeout { addr, timeout } => local(
            StatusCode::GATEWAY_TIMEOUT,
            "per-try-timeout",
            format!("braid-proxy: {addr} sent no response within the per-try timeout of {timeout:?}\n"),
        ),
        Failure::Timeout { service, timeout } => local(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "braid-proxy: the request to {} timed out after {timeout:?} (the route's timeout)\n",
                service.as_str()
            ),
        ),
        Failure::NoEndpoints { service, backend } => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoints",
            format!(
                "braid-proxy: backend {} of service {} has no endpoints\n",
                backend.as_str(),
                service.as_str()
            ),
        ),
    }
}

/// A response the proxy makes itself.
pub fn local(status: StatusCode, reason: &'static str, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(PROXY_ERROR, HeaderValue::from_static(reason));
    response
}
