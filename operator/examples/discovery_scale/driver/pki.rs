//! The mesh CA the driver makes as the operator would, and the workload certificates and TLS
//! client settings of the simulated proxies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use braid_operator::identity::authority::{Authority, AuthoritySource};
use braid_operator::identity::ca::{self, Settings, Source, Stored};
use braid_operator::identity::csr::{CheckedCsr, spiffe_id};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::world::{self, ProxySpec};

/// The CA: its authority, its trust bundle (PEM), and the folder the server child reads the
/// issuer and the bundle from.
pub struct MeshCa {
    pub authority: Authority,
    pub bundle: String,
    pub dir: PathBuf,
}

impl MeshCa {
    /// A trust anchor and an issuer under it, the issuer and bundle written for the server.
    pub fn create() -> anyhow::Result<Self> {
        let now = unix_now();
        let settings = Settings {
            trust_anchor_lifetime: Duration::from_secs(365 * 86400),
            issuer_lifetime: Duration::from_secs(30 * 86400),
            workload_lifetime: Duration::from_secs(86400),
            propagation: Duration::from_secs(60),
        };
        let plan = ca::plan(now, &Stored::default(), &Source::Generate, &settings, None);
        let stored = ca::apply(now, &Stored::default(), &plan, &Source::Generate, &settings)?;
        let issuer = stored.issuer.clone().context("the CA made no issuer")?;
        let bundle = ca::bundle(&stored);
        let ca_dir = std::env::temp_dir().join(format!("braid-discovery-scale-{}", std::process::id()));
        std::fs::create_dir_all(&ca_dir)?;
        std::fs::write(ca_dir.join("issuer.crt"), &issuer.cert_pem)?;
        std::fs::write(ca_dir.join("issuer.key"), &issuer.key_pem)?;
        std::fs::write(ca_dir.join("bundle.crt"), &bundle)?;
        let authority = Authority::new(AuthoritySource {
            issuer,
            bundle_pem: bundle.clone(),
            trust_domain: world::TRUST_DOMAIN.to_owned(),
            workload_lifetime: settings.workload_lifetime,
        })?;
        Ok(Self { authority, bundle, dir: ca_dir })
    }

    /// A TLS client configuration per service account, with a workload certificate of this CA.
    pub fn client_configs(
        &self,
        specs: &[ProxySpec],
    ) -> anyhow::Result<HashMap<(String, String), Arc<rustls::ClientConfig>>> {
        let authority = &self.authority;
        let roots = Arc::new(roots_from_pem(&self.bundle)?);
        let mut configs: HashMap<(String, String), Arc<rustls::ClientConfig>> = HashMap::new();
        for spec in specs {
            let identity = (spec.namespace.clone(), spec.service_account.clone());
            if configs.contains_key(&identity) {
                continue;
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = CheckedCsr {
                uri: spiffe_id(world::TRUST_DOMAIN, &identity.0, &identity.1),
                public_key_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            };
            let issued = authority.issue(unix_now(), &csr)?;
            let chain: Vec<CertificateDer<'static>> = ca::certs(&issued.certificate_pem)
                .and_then(|leaf| Ok(leaf.into_iter().chain(ca::certs(authority.chain_pem())?)))
                .map_err(anyhow::Error::msg)?
                .map(|cert| CertificateDer::from(cert.der))
                .collect();
            configs.insert(identity, Arc::new(client_config(chain, key.serialize_der(), roots.clone())?));
        }
        Ok(configs)
    }
}

/// The mesh roots of a PEM bundle, as a proxy trusts them.
fn roots_from_pem(bundle: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca::certs(bundle).map_err(anyhow::Error::msg)? {
        roots.add(CertificateDer::from(cert.der))?;
    }
    Ok(roots)
}

/// What a proxy connects to the discovery server with: TLS 1.3, its workload certificate as the
/// client certificate, the server's checked against the mesh roots, HTTP/2.
fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key_pkcs8.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
