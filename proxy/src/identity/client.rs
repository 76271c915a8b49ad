//! Getting and renewing the workload certificate: a P-256 key made in memory at start (never
//! written anywhere), a CSR for the proxy's SPIFFE id, POST /v1/certify with the projected
//! ServiceAccount token, renewal at `renewAtPercent` of the lifetime, exponential backoff with
//! jitter on failure while the valid certificate keeps serving.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use braid_api::certify::{CertifyRefusal, CertifyRequest, CertifyResponse, PATH as CERTIFY_PATH};
use braid_api::config::IdentityConfig;
use braid_api::identity::spiffe_id_of;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls::{self, TlsError};
use super::{Credentials, IdentityStore};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// How often the trust bundle file is checked; a change renews the certificate at once, which
/// is how a trust-anchor rotation reaches the proxy.
const BUNDLE_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("making the key or CSR failed: {0}")]
    Key(String),
    #[error("cannot reach the identity endpoint {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the identity endpoint refused the request ({status}, {code}): {message}")]
    Refused { status: StatusCode, code: String, message: String, retry_after: Option<Duration> },
    #[error("the identity endpoint answered something unusable: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The key this proxy's certificates are for; made once per process.
pub struct WorkloadKey {
    key_pair: rcgen::KeyPair,
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, IdentityError> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(Self { key_pair })
    }

    /// A CSR asking for `identity` (its one URI SAN).
    pub fn csr_pem(&self, identity: &str) -> Result<String, IdentityError> {
        let mut params = rcgen::CertificateParams::default();
        let uri =
            rcgen::string::Ia5String::try_from(identity).map_err(|e| IdentityError::Key(e.to_string()))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&self.key_pair).map_err(|e| IdentityError::Key(e.to_string()))?;
        csr.pem().map_err(|e| IdentityError::Key(e.to_string()))
    }

    fn pkcs8(&self) -> Vec<u8> {
        self.key_pair.serialize_der()
    }
}

/// One round trip to the identity endpoint: the credentials for `key`.
pub async fn certify(
    config: &IdentityConfig,
    key: &WorkloadKey,
    generation: u64,
) -> Result<Credentials, IdentityError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let token =
        String::from_utf8_lossy(&read("the ServiceAccount token", &config.token_file)?).trim().to_owned();
    let bundle = read("the trust bundle", &config.trust_bundle_file)?;
    let roots = tls::roots_from_pem(&bundle)?;
    let request = CertifyRequest { token, csr: key.csr_pem(&config.identity)? };
    // Two strings: serializing them cannot fail.
    let body = serde_json::to_string(&request).unwrap_or_default();
    let (status, retry_after, answer) = tokio::time::timeout(REQUEST_TIMEOUT, post(config, roots, body))
        .await
        .map_err(|_| IdentityError::Unreachable {
            endpoint: config.endpoint.clone(),
            reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
        })??;
    if status != StatusCode::OK {
        let refusal: CertifyRefusal = serde_json::from_slice(&answer).unwrap_or(CertifyRefusal {
            error: "unknown".into(),
            message: String::from_utf8_lossy(&answer).chars().take(300).collect(),
        });
        return Err(IdentityError::Refused {
            status,
            code: refusal.error,
            message: refusal.message,
            retry_after,
        });
    }
    let certified: CertifyResponse = serde_json::from_slice(&answer)
        .map_err(|e| IdentityError::BadAnswer(format!("not the expected JSON: {e}")))?;
    if certified.identity != config.identity {
        return Err(IdentityError::BadAnswer(format!(
            "issued for {}, not {}",
            certified.identity, config.identity
        )));
    }
    let mut chain = tls::parse_pem_certificates(certified.certificate.as_bytes());
    chain.extend(tls::parse_pem_certificates(certified.chain.as_bytes()));
    let leaf =
        chain.first().ok_or_else(|| IdentityError::BadAnswer("no certificate in the answer".into()))?;
    if spiffe_id_of(leaf).as_deref() != Some(config.identity.as_str()) {
        return Err(IdentityError::BadAnswer("the certificate does not name this proxy's identity".into()));
    }
    let (not_before, not_after) = validity(leaf)?;
    // The bundle file is the source of truth; the answer's bundle may be newer during a rotation.
    let mut all_roots = bundle;
    all_roots.extend_from_slice(certified.trust_bundle.as_bytes());
    let roots = Arc::new(tls::roots_from_pem(&all_roots)?);
    let certified_key = Arc::new(tls::certified_key(chain, key.pkcs8())?);
    let server = Arc::new(tls::server_config(certified_key.clone(), roots.clone())?);
    Ok(Credentials {
        identity: config.identity.clone(),
        key: certified_key,
        roots,
        not_before,
        not_after,
        server,
        generation,
    })
}

fn validity(certificate: &[u8]) -> Result<(SystemTime, SystemTime), IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| IdentityError::BadAnswer(format!("the certificate does not parse: {e}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((at(parsed.validity().not_before), at(parsed.validity().not_after)))
}

async fn post(
    config: &IdentityConfig,
    roots: rustls::RootCertStore,
    body: String,
) -> Result<(StatusCode, Option<Duration>, Bytes), IdentityError> {
    let unreachable =
        |reason: String| IdentityError::Unreachable { endpoint: config.endpoint.clone(), reason };
    let host = config.endpoint.rsplit_once(':').map_or(config.endpoint.as_str(), |(host, _)| host);
    let name = config.server_name.clone().unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| unreachable(format!("{name:?}: {e}")))?;
    let tls_config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::from)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(&config.endpoint).await.map_err(|e| unreachable(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::post(CERTIFY_PATH)
        .header(http::header::HOST, config.endpoint.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| IdentityError::BadAnswer(e.to_string()))?
        .to_bytes();
    Ok((status, retry_after, body))
}

/// Retry-After in seconds (the endpoint sends no dates), at most an hour.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// When to renew a certificate valid from `not_before` to `not_after`: at `percent` of its
/// lifetime, measured from now (zero when that moment has passed).
pub fn renew_delay(now: SystemTime, not_before: SystemTime, not_after: SystemTime, percent: u8) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let renew_at = not_before + lifetime.mul_f64(f64::from(percent) / 100.0);
    renew_at.duration_since(now).unwrap_or_default()
}

/// Exponential backoff, 1 s doubling to 60 s (or other bounds), each wait drawn between half
/// and all of it (so a fleet of proxies does not retry in step).
pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        Self::between(Self::BASE, Self::MAX)
    }

    /// Starts at `base`, doubles up to `max`.
    pub fn between(base: Duration, max: Duration) -> Self {
        Self { attempt: 0, base, max }
    }

    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps `store` holding a valid certificate until `shutdown`.
pub async fn maintain(config: IdentityConfig, store: Arc<IdentityStore>, shutdown: CancellationToken) {
    let key = match WorkloadKey::generate() {
        Ok(key) => key,
        Err(error) => {
            warn!(%error, "cannot make the workload key; the proxy will not become ready");
            return;
        }
    };
    let percent = config.renew_at_percent;
    let bundle_path = config.trust_bundle_file.clone();
    let mut generation = 0;
    let certify_once = || {
        generation += 1;
        let (config, key, generation) = (&config, &key, generation);
        async move { certify(config, key, generation).await }
    };
    renewal_loop(certify_once, &store, percent, || std::fs::read(&bundle_path).ok(), shutdown).await;
}

/// The renewal state machine, apart from the network so tests can drive it in paused time.
pub async fn renewal_loop<C, F, B>(
    mut certify: C,
    store: &IdentityStore,
    percent: u8,
    mut read_bundle: B,
    shutdown: CancellationToken,
) where
    C: FnMut() -> F,
    F: Future<Output = Result<Credentials, IdentityError>>,
    B: FnMut() -> Option<Vec<u8>>,
{
    let mut backoff = Backoff::new();
    let mut bundle = read_bundle();
    loop {
        let wait = match certify().await {
            Ok(credentials) => {
                let wait =
                    renew_delay(SystemTime::now(), credentials.not_before, credentials.not_after, percent);
                info!(identity = %credentials.identity, renew_in = ?wait, "workload certificate obtained");
                store.set(credentials);
                backoff.reset();
                wait
            }
            Err(error) => {
                // The endpoint knows when it will have room: never sooner than it says.
                let asked = match &error {
                    IdentityError::Refused { retry_after: Some(wait), .. } => *wait,
                    _ => Duration::ZERO,
                };
                let wait = backoff.next_wait().max(asked);
                let valid = store.current().is_some_and(|c| c.not_after > SystemTime::now());
                warn!(%error, retry_in = ?wait, keeping_valid_certificate = valid, "certificate request failed");
                wait
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Sleep until renewal, waking early when the trust bundle changes.
        loop {
            let tick = deadline.min(tokio::time::Instant::now() + BUNDLE_POLL);
            tokio::select! {
                () = tokio::time::sleep_until(tick) => {}
                () = shutdown.cancelled() => return,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let current = read_bundle();
            if let Some(pem) = current.as_ref().filter(|_| current != bundle) {
                // Trust the new roots now: the renewal below may be refused or rate-limited
                // while the rest of the mesh already presents certificates under them.
                match (store.current(), tls::roots_from_pem(pem)) {
                    (Some(credentials), Ok(roots)) => match credentials.with_roots(roots) {
                        Ok(refreshed) => store.set(refreshed),
                        Err(error) => warn!(%error, "cannot use the changed trust bundle"),
                    },
                    (_, Err(error)) => warn!(%error, "the changed trust bundle is not usable"),
                    (None, Ok(_)) => {}
                }
                info!("the trust bundle changed; renewing the certificate now");
                bundle = current;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn renews_at_the_configured_share_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(100);
        assert_eq!(renew_delay(start, start, end, 70), Duration::from_secs(70));
        assert_eq!(renew_delay(start + Duration::from_secs(60), start, end, 70), Duration::from_secs(10));
        assert_eq!(renew_delay(start + Duration::from_secs(90), start, end, 70), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_minute() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next_wait()).collect();
        for (i, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i.min(6)).min(Backoff::MAX);
            assert!(
                *wait >= ceiling / 2 && *wait <= ceiling,
                "attempt {i}: {wait:?} for ceiling {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_secs(1));
    }

    fn self_signed(identity: &str, lifetime: Duration, generation: u64) -> Credentials {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(identity).unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let certified = Arc::new(tls::certified_key(vec![cert.der().clone()], key.serialize_der()).unwrap());
        let now = SystemTime::now();
        Credentials {
            identity: identity.to_owned(),
            server: Arc::new(tls::server_config(certified.clone(), roots.clone()).unwrap()),
            key: certified,
            roots,
            not_before: now,
            not_after: now + lifetime,
            generation,
        }
    }

    /// In paused time: renewal at 70 %, backoff after failures while the old certificate stays,
    /// and an early renewal when the trust bundle changes.
    #[tokio::test(start_paused = true)]
    async fn the_renewal_loop_renews_backs_off_and_keeps_the_valid_certificate() {
        let start = tokio::time::Instant::now();
        let calls: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
        // Call 1 succeeds (100 s lifetime), calls 2-4 fail, call 5 succeeds.
        let outcomes = Arc::new(Mutex::new(vec![true, false, false, false, true, true, true]));
        let store = Arc::new(IdentityStore::default());
        let bundle = Arc::new(Mutex::new(b"bundle-1".to_vec()));
        let shutdown = CancellationToken::new();
        let task = {
            let (calls, outcomes, store, bundle, shutdown) =
                (calls.clone(), outcomes.clone(), store.clone(), bundle.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut generation = 0;
                let certify = || {
                    generation += 1;
                    let ok = outcomes.lock().unwrap().remove(0);
                    calls.lock().unwrap().push((start.elapsed(), ok));
                    let generation = generation;
                    async move {
                        if ok {
                            Ok(self_signed("spiffe://td/ns/a/sa/b", Duration::from_secs(100), generation))
                        } else {
                            Err(IdentityError::BadAnswer("down".into()))
                        }
                    }
                };
                renewal_loop(certify, &store, 70, || Some(bundle.lock().unwrap().clone()), shutdown).await;
            })
        };
        // Just after the first renewal attempt failed: the first certificate stays in place.
        tokio::time::sleep(Duration::from_millis(70_200)).await;
        assert_eq!(calls.lock().unwrap().len(), 2);
        assert_eq!(store.current().unwrap().generation, 1);
        // Past three failures and the success after them.
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let calls = calls.lock().unwrap();
            assert_eq!(calls[0], (Duration::ZERO, true));
            let renewal = calls[1].0.as_secs_f64();
            assert!((69.0..=71.0).contains(&renewal), "renewed at {renewal} s, expected 70 s");
            assert!(!calls[1].1 && !calls[2].1 && !calls[3].1);
            let first_wait = (calls[2].0 - calls[1].0).as_secs_f64();
            let second_wait = (calls[3].0 - calls[2].0).as_secs_f64();
            assert!((0.5..=1.0).contains(&first_wait), "{first_wait}");
            assert!((1.0..=2.0).contains(&second_wait), "{second_wait}");
        }
        assert_eq!(calls.lock().unwrap().len(), 5);
        assert_eq!(store.current().unwrap().generation, 5);
        // A changed trust bundle renews within the poll interval, long before 70 %.
        let before = calls.lock().unwrap().len();
        *bundle.lock().unwrap() = b"bundle-2".to_vec();
        tokio::time::sleep(BUNDLE_POLL + Duration::from_secs(1)).await;
        assert_eq!(calls.lock().unwrap().len(), before + 1);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        let headers = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
            headers
        };
        assert_eq!(retry_after(&headers("6")), Some(Duration::from_secs(6)));
        assert_eq!(retry_after(&headers("999999")), Some(Duration::from_secs(3600)));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_retry_after_waits_that_long_not_the_backoff() {
        let start = tokio::time::Instant::now();
        let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let store = Arc::new(IdentityStore::default());
        let shutdown = CancellationToken::new();
        let task = {
            let (calls, store, shutdown) = (calls.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let certify = || {
                    calls.lock().unwrap().push(start.elapsed());
                    async {
                        Err(IdentityError::Refused {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            code: "rate-limited".into(),
                            message: "retry in 6 s".into(),
                            retry_after: Some(Duration::from_secs(6)),
                        })
                    }
                };
                renewal_loop(certify, &store, 70, || None, shutdown).await;
            })
        };
        tokio::time::sleep(Duration::from_secs(13)).await;
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "at 0, 6 and 12 s: {calls:?}");
        assert!(calls.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs(6)), "{calls:?}");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_trust_bundle_is_trusted_at_once_even_when_renewal_is_refused() {
        let store = Arc::new(IdentityStore::default());
        let first = Arc::new(Mutex::new(true));
        let new_root = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
            .unwrap();
        let bundle: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(Some(b"old".to_vec())));
        let shutdown = CancellationToken::new();
        let task = {
            let (store, first, bundle, shutdown) =
                (store.clone(), first.clone(), bundle.clone(), shutdown.clone());
            tokio::spawn(async move {
                let certify = || {
                    let ok = std::mem::replace(&mut *first.lock().unwrap(), false);
                    async move {
                        if ok {
                            Ok(self_signed("spiffe://td/ns/a/sa/b", Duration::from_secs(3600), 1))
                        } else {
                            Err(IdentityError::Refused {
                                status: StatusCode::TOO_MANY_REQUESTS,
                                code: "rate-limited".into(),
                                message: "later".into(),
                                retry_after: Some(Duration::from_secs(600)),
                            })
                        }
                    }
                };
                renewal_loop(certify, &store, 70, || bundle.lock().unwrap().clone(), shutdown).await;
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = store.current().unwrap();
        assert_eq!(before.roots.len(), 1);
        *bundle.lock().unwrap() = Some(new_root.pem().into_bytes());
        tokio::time::sleep(BUNDLE_POLL + Duration::from_secs(1)).await;
        let after = store.current().unwrap();
        assert!(!Arc::ptr_eq(&before.roots, &after.roots), "the new bundle is trusted");
        let expected = tls::roots_from_pem(new_root.pem().as_bytes()).unwrap();
        assert_eq!(after.roots.roots, expected.roots);
        assert!(Arc::ptr_eq(&before.key, &after.key), "with the same certificate");
        shutdown.cancel();
        task.await.unwrap();
    }
}
