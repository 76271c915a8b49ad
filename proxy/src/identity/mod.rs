//! The workload identity: a certificate for `spiffe://TD/ns/NS/sa/SA` from the operator, kept
//! in memory, renewed before expiry, and the TLS configurations made from it (docs/identity.md).
//! SPIFFE ids themselves are `braid_api::identity`, shared with the operator.

pub mod client;
pub mod tls;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;

/// ALPN of an HTTP/2 connection between proxies.
pub const ALPN_H2: &[u8] = b"braid/h2";
/// ALPN of an HTTP/1.1 connection between proxies, which carries one upgrade (WebSocket).
pub const ALPN_HTTP1: &[u8] = b"braid/http1";
/// ALPN of an opaque TCP connection between proxies.
pub const ALPN_OPAQUE: &[u8] = b"braid/opaque";

/// What the proxy holds while it has a certificate.
pub struct Credentials {
    pub identity: String,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The inbound TLS configuration, built once per certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// Bumped on every new certificate or bundle, so cached client configurations are rebuilt.
    pub generation: u64,
}

impl Credentials {
    /// The same certificate trusting `roots` (a trust bundle that changed on disk), so a new root
    /// is trusted at once, without waiting for a new certificate.
    pub fn with_roots(&self, roots: rustls::RootCertStore) -> Result<Self, tls::TlsError> {
        let roots = Arc::new(roots);
        Ok(Self {
            identity: self.identity.clone(),
            key: self.key.clone(),
            server: Arc::new(tls::server_config(self.key.clone(), roots.clone())?),
            roots,
            not_before: self.not_before,
            not_after: self.not_after,
            generation: self.generation,
        })
    }

    /// The trust domain of this proxy's SPIFFE id: the mesh's.
    pub fn trust_domain(&self) -> Option<&str> {
        braid_api::identity::SpiffeIdRef::parse(&self.identity).map(|id| id.trust_domain)
    }
}

/// The current credentials, swapped whole on renewal; readers never wait.
#[derive(Default)]
pub struct IdentityStore {
    current: ArcSwapOption<Credentials>,
}

impl IdentityStore {
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// The current credentials for a short look, without a reference count (per request).
    pub fn peek(&self) -> arc_swap::Guard<Option<Arc<Credentials>>> {
        self.current.load()
    }

    pub fn set(&self, credentials: Credentials) {
        self.current.store(Some(Arc::new(credentials)));
    }
}
