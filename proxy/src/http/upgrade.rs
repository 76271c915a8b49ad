//! HTTP/1.1 protocol upgrades (WebSocket, and any other protocol an app switches to with
//! `Upgrade`): the request goes upstream with its `Connection: upgrade` and `Upgrade` fields, and
//! when the app answers 101 Switching Protocols, the client's connection and the upstream one are
//! joined and their bytes copied both ways until either side closes.
//!
//! Between two proxies an upgrade gets an mTLS connection of its own that speaks HTTP/1.1 (ALPN
//! `braid/http1`), as Linkerd does: the tunnel outlives the request, and the shared HTTP/2
//! connection between the proxies cannot carry an HTTP/1.1 upgrade. `h2c` is not passed on: it
//! would change the protocol of the proxy's own connection, so such a request goes as a plain one.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::client::http1::codec::has_token;

const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// Marks a request sent upstream as an upgrade: the pool gives it a connection of its own.
#[derive(Clone, Copy, Debug)]
pub struct Upgrading;

/// The protocol an HTTP/1.1 request asks to switch to, when it asks (`Connection: upgrade` and an
/// `Upgrade` field other than `h2c`).
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let protocol = headers.get(UPGRADE)?;
    if protocol.as_bytes().eq_ignore_ascii_case(b"h2c") || !has_token(headers, CONNECTION, "upgrade") {
        return None;
    }
    Some(protocol.clone())
}

/// Puts the upgrade fields back on a message whose hop-by-hop fields were removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, UPGRADE_TOKEN);
    headers.insert(UPGRADE, protocol);
}

/// Whether a response switches protocols.
pub fn is_switching<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
}

/// After a 101 from upstream: the response the client gets (counted now, with no body: what
/// follows is the tunnel), and the tunnel started in the background once both sides hand over
/// their connections. A 101 with no upstream connection behind it (nothing the proxy sends makes
/// one) becomes a 502.
pub fn switch(client: OnUpgrade, response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    body.count_now();
    let Some(upstream) = parts.extensions.remove::<OnUpgrade>() else {
        return super::respond::local(
            StatusCode::BAD_GATEWAY,
            "upstream-reset",
            "braid-proxy: the upstream switched protocols without a connection to switch\n".to_owned(),
        );
    };
    tokio::spawn(tunnel(client, upstream));
    Response::from_parts(parts, ProxyBody::empty())
}

/// Copies bytes both ways between the two upgraded connections until both directions end or
/// either fails. The bytes are counted where the client's connection is (`tcp_*_bytes_total`).
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "an upgraded connection was not handed over");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
        Err(error) => debug!(%error, "upgraded connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields.iter().map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value))).collect()
    }

    #[test]
    fn an_upgrade_needs_http11_the_connection_token_and_a_protocol_other_than_h2c() {
        let websocket = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &websocket), Some(HeaderValue::from_static("websocket")));
        assert_eq!(requested(Version::HTTP_10, &websocket), None, "HTTP/1.0 has no upgrades");
        assert_eq!(requested(Version::HTTP_2, &websocket), None, "HTTP/2 forbids Upgrade");
        let no_token = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &no_token), None, "Upgrade without Connection: upgrade");
        let no_protocol = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(Version::HTTP_11, &no_protocol), None);
        let h2c = headers(&[("connection", "upgrade, http2-settings"), ("upgrade", "h2c")]);
        assert_eq!(requested(Version::HTTP_11, &h2c), None, "h2c would change the proxy's own connection");
    }
}
