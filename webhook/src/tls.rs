//! The serving certificate, reloaded from its files while the server runs.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate at every handshake, so swapping the
//! key pair behind it takes effect on the next connection without rebuilding the acceptor or
//! dropping open connections. The files are polled (contents, not mtimes): a Kubernetes Secret
//! volume updates by swapping a `..data` symlink, which inotify on the file and mtimes both see
//! unreliably, and reading two small files every few seconds costs nothing.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: malformed PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the key in {key} does not belong to the certificate in {cert}; \
         if they are being rotated, the next poll picks up the matching pair"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The certificate and key files, and the pair loaded from them last.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file contents the key was built from, to tell whether the files changed.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl ReloadingCert {
    /// Loads the pair once; the server does not start without a valid one.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = certified_key(&provider, cert_path, &cert_pem, key_path, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Loaded { key, cert_pem, key_pem }),
        }))
    }

    /// Re-reads the files and swaps in the new pair when they changed. `Ok(true)`: swapped. On an
    /// error the previous pair keeps serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        {
            let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(&self.provider, &self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Loaded { key, cert_pem, key_pem };
        Ok(true)
    }

    /// A rustls server configuration whose certificate follows the files. HTTP/1.1 only: an
    /// admission is one small request, and the API server reuses connections either way.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Polls the files every `interval` until `shutdown`, and calls `observe` with each result.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
        observe: impl Fn(&Result<bool, TlsError>) + Send,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Blocking file reads, but of two small files on a local volume.
            let result = self.reload();
            match &result {
                Ok(true) => tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "cannot reload the serving certificate; still serving the previous one")
                }
            }
            observe(&result);
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).key.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem { path: cert_path.to_owned(), reason: err.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|err| TlsError::Key { path: key_path.to_owned(), reason: err.to_string() })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| TlsError::Key { path: key_path.to_owned(), reason: err.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // A Secret volume swaps both files at once, but files written one after the other can be
    // caught half-way: refuse a pair that does not match rather than serve a broken handshake.
    certified
        .keys_match()
        .map_err(|_| TlsError::Mismatch { cert: cert_path.to_owned(), key: key_path.to_owned() })?;
    Ok(Arc::new(certified))
}
