//! The cost of a new connection between two proxies: full TLS 1.3 mutual handshakes with the
//! proxy's own configurations (ECDSA P-256 workload certificates under an issuer, SPIFFE id
//! verification), client and server on one thread over an in-memory pipe, so the figure is
//! handshakes per second per core for both ends together. Used by the proxy benchmark (bench/, braid-bench pairs).
//!
//!   cargo run --release -p braid-proxy --example mtls_handshakes [SECONDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_proxy::identity::{ALPN_H2, tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    issuer_der: &[u8],
    id: &str,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(id)?)];
    let cert = params.signed_by(&key, issuer)?;
    let chain = vec![cert.der().clone(), issuer_der.to_vec().into()];
    Ok(Arc::new(tls::certified_key(chain, key.serialize_der())?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key)?;
    let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut issuer_params = CertificateParams::default();
    issuer_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let issuer_cert = issuer_params.signed_by(&issuer_key, &Issuer::from_params(&root_params, &root_key))?;
    let issuer = Issuer::from_params(&issuer_params, &issuer_key);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der().clone())?;
    let roots = Arc::new(roots);
    let (client_id, server_id) = ("spiffe://bench/ns/a/sa/client", "spiffe://bench/ns/b/sa/server");
    let server_key = leaf(&issuer, issuer_cert.der(), server_id)?;
    let client_key = leaf(&issuer, issuer_cert.der(), client_id)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(server_key, roots.clone())?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(
        client_key,
        roots,
        server_id.to_owned(),
        ALPN_H2,
    )?));
    let started = Instant::now();
    let mut handshakes = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (client, server) =
            tokio::join!(connector.connect(tls::mesh_server_name(), client_io), acceptor.accept(server_io));
        let server = server?;
        client?;
        anyhow::ensure!(
            tls::peer_identity(server.get_ref().1).as_deref() == Some(client_id),
            "client id not seen"
        );
        handshakes += 1;
    }
    let rate = handshakes as f64 / started.elapsed().as_secs_f64();
    println!(
        "{{\"handshakes\": {handshakes}, \"seconds\": {:.2}, \"per_second_per_core\": {rate:.0}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
