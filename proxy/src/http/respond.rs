//! Responses the proxy makes itself: a denial, a fault, no route, and every way a request can
//! get no response from upstream.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tracing::info;

use crate::client::UpstreamError;
use crate::client::body::ProxyBody;
use crate::metrics::Label;

/// Names the reason of a response the proxy made itself, for people and tests.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("braid-proxy-error");

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The reason of a 400 for a request body the client broke: its own error, classified as
/// `client_error` and held against no endpoint.
pub const REQUEST_BODY: &str = "request-body";

/// The reason of a 503 for a request no connection could be had for.
const CONNECT_FAILURE: &str = "connect-failure";

/// Why a request got no response from upstream.
pub enum Failure {
    Upstream(UpstreamError),
    PerTryTimeout { addr: SocketAddr, timeout: Duration },
    Timeout { service: Label, timeout: Duration },
    NoEndpoints { service: Label, backend: Label },
}

/// What the client gets when upstream gave no response: the status says why. Logged, as
/// linkerd2-proxy logs "Request failed": a failure the proxy made is what a user looks for in its
/// log, and failures are few where requests are many.
pub fn failure_response(failure: &Failure) -> Response<ProxyBody> {
    let response = failure_answer(failure);
    if let (Some(reason), Some(Some(text))) =
        (response.headers().get(PROXY_ERROR), response.body().in_memory())
    {
        info!(
            status = response.status().as_u16(),
            reason = String::from_utf8_lossy(reason.as_bytes()).as_ref(),
            "request failed: {}",
            String::from_utf8_lossy(text.trim_ascii_end())
        );
    }
    response
}

fn failure_answer(failure: &Failure) -> Response<ProxyBody> {
    match failure {
        Failure::Upstream(error) if error.is_connect() => local(
            StatusCode::SERVICE_UNAVAILABLE,
            CONNECT_FAILURE,
            format!("braid-proxy: {error}: the endpoint refused or did not answer\n"),
        ),
        Failure::Upstream(error) if error.is_overflow() => {
            local(StatusCode::SERVICE_UNAVAILABLE, "overloaded", format!("braid-proxy: {error}\n"))
        }
        Failure::Upstream(error @ UpstreamError::ExtendedConnect { .. }) => {
            local(StatusCode::BAD_GATEWAY, "extended-connect-unsupported", format!("braid-proxy: {error}\n"))
        }
        Failure::Upstream(error) if error.is_client_error() => {
            local(StatusCode::BAD_REQUEST, REQUEST_BODY, format!("braid-proxy: {error}\n"))
        }
        Failure::Upstream(error) => {
            let Some(reason) = error.stream_reset() else {
                return local(StatusCode::BAD_GATEWAY, "upstream-reset", format!("braid-proxy: {error}\n"));
            };
            // h2 words the reasons for people ("stream no longer needed"): the code goes first.
            let text = format!(
                "braid-proxy: the upstream reset the request's HTTP/2 stream with {reason:?}: {error}\n"
            );
            let mut response = local(StatusCode::BAD_GATEWAY, "upstream-reset", text);
            // An HTTP/2 client gets the upstream's reset itself (`ResetStream`).
            response.extensions_mut().insert(ResetStream(reason));
            response
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

/// Whether an endpoint's answer is its proxy's 503 `connect-failure` (only a `meshed` endpoint
/// has a braid proxy; another's header is its app's own): the proxy could not connect to its
/// app, which happens when the app has closed its listener while its pod shuts down and the
/// sidecar still serves. None of the request reached the app, so to the client's proxy it is a
/// connect failure one hop further: the endpoint is passed over like one that refused, and a
/// route retrying `connect-failure` retries it.
pub fn is_connect_failure<B>(meshed: bool, response: &Response<B>) -> bool {
    meshed
        && response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response.headers().get(PROXY_ERROR).is_some_and(|reason| reason == CONNECT_FAILURE)
}

/// Marks the answer to a request whose upstream reset its HTTP/2 stream before any response:
/// an HTTP/2 client's stream is reset with the same reason (a gRPC server's CANCEL stays a
/// CANCEL, REFUSED_STREAM stays safe to retry); an HTTP/1.1 client gets the 502 it is attached
/// to. An extension: it costs nothing on the responses that do not carry it.
#[derive(Debug, Clone, Copy)]
pub struct ResetStream(pub h2::Reason);

/// Whether a request's content-type makes it a gRPC call: `application/grpc` or
/// `application/grpc+…` / `application/grpc-web…`.
pub fn is_grpc(content_type: &HeaderValue) -> bool {
    content_type.as_bytes().starts_with(b"application/grpc")
}

/// The gRPC status of an answer the proxy made itself: by its reason, else by its HTTP status
/// as gRPC maps HTTP statuses (doc/http-grpc-status-mapping.md of the gRPC project), as
/// linkerd2-proxy does.
fn grpc_status(reason: &[u8], status: StatusCode) -> u8 {
    const UNKNOWN: u8 = 2;
    const DEADLINE_EXCEEDED: u8 = 4;
    const PERMISSION_DENIED: u8 = 7;
    const RESOURCE_EXHAUSTED: u8 = 8;
    const UNIMPLEMENTED: u8 = 12;
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    const UNAUTHENTICATED: u8 = 16;
    match reason {
        b"connect-failure" | b"upstream-reset" | b"no-endpoints" | b"no-destination" => UNAVAILABLE,
        b"timeout" | b"per-try-timeout" => DEADLINE_EXCEEDED,
        b"forbidden" => PERMISSION_DENIED,
        b"no-route" => UNIMPLEMENTED,
        b"request-head-too-large" => RESOURCE_EXHAUSTED,
        _ => match status.as_u16() {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502..=504 => UNAVAILABLE,
            _ => UNKNOWN,
        },
    }
}

/// An answer the proxy made itself (it carries `braid-proxy-error`) as a gRPC client reads one:
/// HTTP 200, `application/grpc`, the status and the reason in `grpc-status` and `grpc-message`,
/// and no body (trailers-only). Any other response is returned as it is.
pub fn grpc_error(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(reason) = response.headers().get(PROXY_ERROR) else { return response };
    // Already written for gRPC by the proxy that made it (the other side of the mesh).
    if response.headers().contains_key(GRPC_STATUS) {
        return response;
    }
    let code = grpc_status(reason.as_bytes(), response.status());
    let (mut head, body) = response.into_parts();
    let message = match body.in_memory() {
        Some(Some(text)) => grpc_message(text),
        _ => HeaderValue::from_static(""),
    };
    head.status = StatusCode::OK;
    head.headers.remove(CONTENT_LENGTH);
    head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head.headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    head.headers.insert(GRPC_MESSAGE, message);
    Response::from_parts(head, body.emptied())
}

/// The text as grpc-message carries it: percent-encoded outside printable ASCII (and `%`
/// itself), without the final newline.
fn grpc_message(text: &[u8]) -> HeaderValue {
    let text = text.trim_ascii_end();
    let mut encoded = Vec::with_capacity(text.len());
    for &byte in text {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            encoded.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    HeaderValue::from_bytes(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(grpc_message(b"braid-proxy: no route 100% sure\n"), "braid-proxy: no route 100%25 sure");
        assert_eq!(grpc_message("caf\u{e9}\ttab".as_bytes()), "caf%C3%A9%09tab");
    }

    #[test]
    fn a_response_of_the_apps_own_is_not_turned_into_a_grpc_status() {
        let mut response = Response::new(ProxyBody::text("app's 503"));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let response = grpc_error(response);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!response.headers().contains_key(GRPC_STATUS));
        let fault = grpc_error(local(StatusCode::INTERNAL_SERVER_ERROR, "fault-injected", "x".into()));
        assert_eq!(
            (fault.status(), &fault.headers()[GRPC_STATUS]),
            (StatusCode::OK, &HeaderValue::from(2u16))
        );
    }
}
