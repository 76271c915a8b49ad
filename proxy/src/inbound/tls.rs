//! Mutual TLS from other proxies, terminated here. A ClientHello that offers a braid/* ALPN is
//! another proxy's; any other TLS passes through to the app unread.

use std::net::SocketAddr;
use std::time::Duration;

use braid_api::identity::SpiffeIdRef;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::detect::Detected;
use crate::identity::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, tls};
use crate::io::ClientIo;
use crate::metrics::{IdentityRefusal, IdentityRefusedLabels};
use crate::state::ProxyState;

/// How long an inbound mTLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the ALPN protocols a ClientHello offers are another proxy's.
pub fn from_a_proxy(alpn: &[Vec<u8>]) -> bool {
    alpn.iter().any(|p| p == ALPN_H2 || p == ALPN_OPAQUE || p == ALPN_HTTP1)
}

/// A terminated mTLS connection: who the client proved to be, and what it carries.
pub struct Terminated {
    pub stream: TlsStream<ClientIo<TcpStream>>,
    /// The client's SPIFFE id, of this mesh's trust domain.
    pub client_id: String,
    /// What the client asked to send: HTTP/2 (ALPN braid/h2), opaque bytes (braid/opaque), or
    /// HTTP/1.1 for an upgrade (braid/http1).
    pub carries: Detected,
}

/// The handshake with this proxy's current certificate; `None` (logged) when there is none yet,
/// the handshake fails or times out, or the client's certificate names no workload identity of
/// this mesh's trust domain (also counted: a root the mesh trusts may sign for others too).
pub async fn terminate(state: &ProxyState, io: ClientIo<TcpStream>, peer: SocketAddr) -> Option<Terminated> {
    let Some(credentials) = state.identity.as_ref().and_then(|identity| identity.current()) else {
        debug!(%peer, "mTLS connection before this proxy has a certificate: closed");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server.clone());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            debug!(%peer, %error, "inbound mTLS handshake failed");
            return None;
        }
        Err(_) => {
            debug!(%peer, "inbound mTLS handshake timed out");
            return None;
        }
    };
    let (_, connection) = stream.get_ref();
    let client_id = tls::peer_identity(connection);
    let found = client_id.as_deref().and_then(SpiffeIdRef::parse);
    let refusal = match found {
        None => Some(IdentityRefusal::no_workload_identity),
        Some(id) if Some(id.trust_domain) != credentials.trust_domain() => {
            Some(IdentityRefusal::foreign_trust_domain)
        }
        Some(_) => None,
    };
    if let Some(reason) = refusal {
        state.metrics.identity_refused.get_or_create(&IdentityRefusedLabels { reason }).inc();
        warn!(
            %peer,
            client_id = client_id.as_deref().unwrap_or(""),
            trust_domain = credentials.trust_domain().unwrap_or(""),
            ?reason,
            "inbound mTLS client refused: its certificate names no identity of this mesh's trust domain"
        );
        return None;
    }
    let client_id = client_id?;
    let carries = match connection.alpn_protocol() {
        Some(ALPN_OPAQUE) => Detected::Opaque,
        Some(ALPN_HTTP1) => Detected::Http1,
        _ => Detected::Http2,
    };
    Some(Terminated { stream, client_id, carries })
}
