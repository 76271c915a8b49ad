//! TLS between proxies: TLS 1.3 only, mutual, with the workload certificate. The client checks
//! the server's SPIFFE id against the one the configuration expects for that endpoint (not a DNS
//! name: mesh certificates carry only the SPIFFE URI); the server requires a client certificate
//! from the mesh and reads the client's SPIFFE id for authorization.

use std::sync::Arc;

use braid_api::identity::{SpiffeIdRef, spiffe_id_of};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the trust bundle holds no usable certificate: {0}")]
    EmptyBundle(String),
    #[error("the certificate or key is not usable: {0}")]
    Key(String),
    #[error("building the TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
    #[error("building the client certificate verifier failed: {0}")]
    Verifier(String),
}

/// ring's suites with AES-128-GCM first. The handshake takes the client's first suite the server
/// also has, so both ends of a mesh link seal and open every record with 10 AES rounds rather
/// than AES-256's 14; Go's TLS 1.3 prefers it the same way. AES-256-GCM and ChaCha20 stay
/// accepted from clients that ask for them.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Every certificate of a PEM bundle.
pub fn parse_pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(parse_pem_certificates(pem));
    if added == 0 {
        return Err(TlsError::EmptyBundle(format!("{ignored} certificates could not be parsed")));
    }
    Ok(roots)
}

/// The certificate chain and in-memory key as rustls signs with them.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
) -> Result<CertifiedKey, TlsError> {
    let key = PrivateKeyDer::Pkcs8(key_pkcs8.into());
    let signing = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The inbound configuration: client certificates required and verified against `roots`.
pub fn server_config(
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ServerKey(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_OPAQUE.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// The outbound configuration for one endpoint: present our certificate, accept only a server
/// certificate for `expected`, in our own trust domain, signed by a mesh root.
pub fn client_config(
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    expected: String,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let trust_domain = key
        .cert
        .first()
        .and_then(|leaf| spiffe_id_of(leaf))
        .and_then(|id| SpiffeIdRef::parse(&id).map(|id| id.trust_domain.to_owned()))
        .ok_or_else(|| TlsError::Key("our certificate names no SPIFFE id".into()))?;
    let verifier = SpiffeServerVerifier {
        roots,
        expected,
        trust_domain,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientKey(key)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A client configuration for a control-plane server (the discovery server): our workload
/// certificate as the client certificate, the server's certificate checked against the mesh
/// roots for the DNS name the caller connects to (not a SPIFFE id: the server is no proxy).
pub fn control_plane_client_config(
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientKey(key)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The name sent in SNI between proxies: the server checks nothing by it, and the client
/// verifies the SPIFFE id instead.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::DnsName(rustls::pki_types::DnsName::try_from("braid.mesh").unwrap_or_else(|_| unreachable!()))
}

#[derive(Debug)]
struct ServerKey(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for ServerKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct ClientKey(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    /// Ours: a root the mesh trusts may sign for other trust domains too (a shared issuer).
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = spiffe_id_of(end_entity);
        let found_domain = found.as_deref().and_then(SpiffeIdRef::parse).map(|id| id.trust_domain);
        if found_domain.is_some_and(|domain| domain != self.trust_domain) {
            let error =
                ForeignTrustDomain { found: found.unwrap_or_default(), ours: self.trust_domain.clone() };
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(error)),
            )));
        }
        match found {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(WrongIdentity { expected: self.expected.clone(), found })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the server proved {found:?}, not the expected identity {expected}")]
struct WrongIdentity {
    expected: String,
    found: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("the server proved {found}, which is not of this mesh's trust domain {ours}")]
struct ForeignTrustDomain {
    found: String,
    ours: String,
}

/// The client's SPIFFE id after an inbound handshake.
pub fn peer_identity(connection: &rustls::ServerConnection) -> Option<String> {
    connection.peer_certificates()?.first().and_then(|cert| spiffe_id_of(cert))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rustls::CipherSuite;
    use rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384;

    use super::*;

    const IDENTITY: &str = "spiffe://test.local/ns/shop/sa/web";

    /// A workload certificate for IDENTITY, and a root store that trusts it.
    fn workload() -> (Arc<CertifiedKey>, Arc<RootCertStore>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(IDENTITY).unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let certified = certified_key(vec![cert.der().clone()], key.serialize_der()).unwrap();
        (Arc::new(certified), Arc::new(roots))
    }

    /// A CA root, and workload certificates it signs for any SPIFFE id: one issuer shared by
    /// several trust domains.
    struct SharedRoot {
        key: rcgen::KeyPair,
        params: rcgen::CertificateParams,
        roots: Arc<RootCertStore>,
    }

    impl SharedRoot {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            let root = params.clone().self_signed(&key).unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(root.der().clone()).unwrap();
            Self { key, params, roots: Arc::new(roots) }
        }

        fn workload(&self, identity: &str) -> Arc<CertifiedKey> {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names =
                vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(identity).unwrap())];
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            Arc::new(certified_key(vec![cert.der().clone()], key.serialize_der()).unwrap())
        }
    }

    /// Runs a handshake in memory until it ends; the client's error, if it refused the server.
    fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<(), rustls::Error> {
        let mut client = rustls::ClientConnection::new(Arc::new(client), mesh_server_name()).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish in 10 round trips");
    }

    #[test]
    fn a_server_of_another_trust_domain_under_the_same_root_is_refused_even_when_expected() {
        let shared = SharedRoot::new();
        let ours = shared.workload("spiffe://test.local/ns/shop/sa/frontend");
        let web = shared.workload(IDENTITY);
        let foreign = "spiffe://other.domain/ns/shop/sa/web";
        let foreign_web = shared.workload(foreign);
        let client = |expected: &str| {
            client_config(ours.clone(), shared.roots.clone(), expected.to_owned(), ALPN_H2).unwrap()
        };
        let server = |key: &Arc<CertifiedKey>| server_config(key.clone(), shared.roots.clone()).unwrap();
        handshake(client(IDENTITY), server(&web)).expect("the mesh's own server");
        let error = handshake(client(foreign), server(&foreign_web)).unwrap_err().to_string();
        assert!(error.contains("ForeignTrustDomain") && error.contains("test.local"), "{error}");
        assert!(error.contains(foreign), "{error}");
    }

    /// Runs a handshake in memory; the suite both ends agreed on.
    fn negotiated(client: rustls::ClientConfig, server: rustls::ServerConfig) -> CipherSuite {
        let mut client = rustls::ClientConnection::new(Arc::new(client), mesh_server_name()).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                let suite = client.negotiated_cipher_suite().unwrap().suite();
                assert_eq!(server.negotiated_cipher_suite().unwrap().suite(), suite);
                return suite;
            }
        }
        panic!("the handshake did not finish in 10 round trips");
    }

    #[test]
    fn mesh_links_seal_with_aes_128_gcm_and_still_serve_a_client_that_asks_for_aes_256() {
        let (key, roots) = workload();
        let server = || server_config(key.clone(), roots.clone()).unwrap();
        let client = client_config(key.clone(), roots.clone(), IDENTITY.to_owned(), ALPN_H2).unwrap();
        assert_eq!(negotiated(client, server()), CipherSuite::TLS13_AES_128_GCM_SHA256);

        let mut only_aes_256 = rustls::crypto::ring::default_provider();
        only_aes_256.cipher_suites = vec![TLS13_AES_256_GCM_SHA384];
        let verifier = SpiffeServerVerifier {
            roots: roots.clone(),
            expected: IDENTITY.to_owned(),
            trust_domain: "test.local".to_owned(),
            algorithms: only_aes_256.signature_verification_algorithms,
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(only_aes_256))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(ClientKey(key.clone())));
        assert_eq!(negotiated(client, server()), CipherSuite::TLS13_AES_256_GCM_SHA384);
    }
}
