//! The identity endpoint, POST /v1/certify over HTTPS, as docs/identity.md specifies; and the
//! loop that keeps its issuer (from Secret braid-issuer) and serving certificate current.
//!
//! Every operator replica serves it, not only the leader: issuing needs the issuer's key, which
//! every replica reads from the Secret, and nothing is written, so a standby behind the same
//! Service answers as well as the leader. Only the CA controller (controller.rs) writes.
//!
//! TLS is braid-runtime's accept loop, as in braid-webhook: the certificate resolver makes a new
//! serving certificate a pointer swap, and we keep control of timeouts and graceful shutdown.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use braid_api::certify::{CertifyRefusal, CertifyRequest, CertifyResponse, PATH as CERTIFY_PATH};
use braid_crds::{Mesh, duration::parse_duration, mesh::IdentitySettings};
use braid_runtime::serve::{self, Protocol, Settings};
use futures::{FutureExt as _, StreamExt, stream::BoxStream};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    ISSUER_SECRET,
    authority::{Authority, AuthoritySource},
    ca::KeyedCert,
    csr,
    ratelimit::RateLimiter,
    tokens::{AuthError, KubeVerifier, Verifier, Workload},
};
use crate::{backoff::FailureBackoff, metrics::IdentityMetrics};

/// A token and a CSR fit in a few KiB; anything larger is refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Issuances per pod: a minute's worth on average, and at most this many at once. Per pod, not
/// per ServiceAccount: on a trust-bundle change every replica of a Deployment renews at once.
pub const RATE_PER_MINUTE: u32 = 10;
pub const RATE_BURST: u32 = 10;
/// Token checks in flight at once (each is a TokenReview and two GETs to the API server); more
/// requests are answered `busy` with Retry-After, so the endpoint cannot be turned against the
/// API server.
pub const MAX_VERIFYING: usize = 32;
/// Of those, at most this many from one source address: a single client (or a node's host-network
/// pods behind one address) cannot take every slot from the rest of the mesh.
pub const MAX_VERIFYING_PER_SOURCE: usize = 4;
/// A token the API server refused is refused again from memory for this long, without asking.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(10);
const REMEMBERED_REFUSALS: usize = 4096;
/// A client that has not finished its TLS handshake or request headers by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The keeper re-reads the issuer at least this often, whatever the watches say.
const RESYNC: Duration = Duration::from_secs(60);

/// What the handler shares.
pub struct IdentityState {
    authority: RwLock<Option<Arc<Authority>>>,
    verifier: Arc<dyn Verifier>,
    limiter: RateLimiter,
    metrics: Arc<IdentityMetrics>,
    verifying: tokio::sync::Semaphore,
    /// Token checks in flight per source address (entries leave at 0).
    verifying_by_source: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    /// Refusals by a keyed hash of the token, and when they were made.
    refused: std::sync::Mutex<std::collections::HashMap<u64, (Refusal, Instant)>>,
    token_hasher: std::collections::hash_map::RandomState,
}

impl IdentityState {
    pub fn new(verifier: Arc<dyn Verifier>, limiter: RateLimiter, metrics: Arc<IdentityMetrics>) -> Self {
        // Every refusal's series exists from the start, so a rate() over it is never empty.
        for reason in Refusal::CODES {
            metrics.zero(reason);
        }
        Self {
            authority: RwLock::new(None),
            verifier,
            limiter,
            metrics,
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
            verifying_by_source: Default::default(),
            refused: Default::default(),
            token_hasher: Default::default(),
        }
    }

    fn token_key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.token_hasher.hash_one(token)
    }

    fn remembered(&self, key: u64, now: Instant) -> Option<Refusal> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(&key).filter(|(_, at)| now.duration_since(*at) < REFUSAL_MEMORY).map(|(r, _)| r.clone())
    }

    fn remember(&self, key: u64, refusal: &Refusal, now: Instant) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REMEMBERED_REFUSALS {
            refused.retain(|_, (_, at)| now.duration_since(*at) < REFUSAL_MEMORY);
        }
        if refused.len() < REMEMBERED_REFUSALS {
            refused.insert(key, (refusal.clone(), now));
        }
    }

    /// A slot for one token check from `source`, or None when it has MAX_VERIFYING_PER_SOURCE.
    fn source_slot(&self, source: IpAddr) -> Option<SourceSlot<'_>> {
        let mut counts = self.verifying_by_source.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= MAX_VERIFYING_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(SourceSlot { state: self, source })
    }

    pub fn authority(&self) -> Option<Arc<Authority>> {
        self.authority.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_authority(&self, authority: Arc<Authority>) {
        *self.authority.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(authority);
    }
}

/// Held while a token check from `source` runs.
struct SourceSlot<'a> {
    state: &'a IdentityState,
    source: IpAddr,
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.state.verifying_by_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// The client's address, added to each request by the accept loop (`serve_tls`).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub IpAddr);

pub fn router(state: Arc<IdentityState>) -> Router {
    Router::new()
        .route(CERTIFY_PATH, post(certify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Why a request is refused: the table of docs/identity.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MalformedRequest(String),
    MalformedCsr(String),
    Unauthenticated(String),
    IdentityGone(String),
    IdentityMismatch(String),
    TooLarge,
    RateLimited(Duration),
    /// Too many token checks in flight; retry in a second.
    Busy,
    /// Too many token checks in flight from this client's address.
    SourceBusy(IpAddr),
    Unavailable(String),
}

impl Refusal {
    /// Every code, so each `braid_identity_rejections_total` series exists from the start.
    pub const CODES: [&'static str; 9] = [
        "malformed-request",
        "malformed-csr",
        "unauthenticated",
        "identity-gone",
        "identity-mismatch",
        "request-too-large",
        "rate-limited",
        "busy",
        "unavailable",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MalformedRequest(_) => "malformed-request",
            Refusal::MalformedCsr(_) => "malformed-csr",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::IdentityGone(_) => "identity-gone",
            Refusal::IdentityMismatch(_) => "identity-mismatch",
            Refusal::TooLarge => "request-too-large",
            Refusal::RateLimited(_) => "rate-limited",
            Refusal::Busy | Refusal::SourceBusy(_) => "busy",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::MalformedRequest(_) | Refusal::MalformedCsr(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::IdentityGone(_) | Refusal::IdentityMismatch(_) => StatusCode::FORBIDDEN,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Busy | Refusal::SourceBusy(_) | Refusal::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::MalformedRequest(m)
            | Refusal::MalformedCsr(m)
            | Refusal::Unauthenticated(m)
            | Refusal::IdentityGone(m)
            | Refusal::IdentityMismatch(m)
            | Refusal::Unavailable(m) => m.clone(),
            Refusal::TooLarge => format!("the request body is over {MAX_BODY_BYTES} bytes"),
            Refusal::RateLimited(wait) => format!(
                "more than {RATE_PER_MINUTE} certificates a minute for this pod; retry in {} s",
                retry_secs(*wait)
            ),
            Refusal::Busy => format!("{MAX_VERIFYING} requests are being checked already; retry in 1 s"),
            Refusal::SourceBusy(source) => format!(
                "{MAX_VERIFYING_PER_SOURCE} requests from {source} are being checked already; retry in 1 s"
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = CertifyRefusal { error: self.code().to_owned(), message: self.message() };
        let mut response = json_response(self.status(), &body);
        let retry = match self {
            Refusal::RateLimited(wait) => Some(retry_secs(wait)),
            Refusal::Busy | Refusal::SourceBusy(_) => Some(1),
            _ => None,
        };
        if let Some(Ok(value)) = retry.map(|secs| HeaderValue::from_str(&secs.to_string())) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A JSON body with its content type (axum's Json needs a feature the workspace leaves off).
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(err) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {err}\n")).into_response()
        }
    }
}

/// Whole seconds, rounded up, and at least one: what Retry-After can say.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

async fn certify(
    State(state): State<Arc<IdentityState>>,
    source: Option<Extension<Source>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let outcome = answer(&state, source.map(|Extension(Source(ip))| ip), body).await;
    state.metrics.certify_duration.observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok((workload, answer)) => {
            state.metrics.issued.inc();
            tracing::info!(
                identity = %answer.identity,
                pod = %format!("{}/{}", workload.namespace, workload.pod_name),
                not_after = %answer.not_after,
                took = ?started.elapsed(),
                "issued a workload certificate"
            );
            json_response(StatusCode::OK, &answer)
        }
        Err(refusal) => {
            state.metrics.rejected(refusal.code());
            match &refusal {
                Refusal::Unavailable(_) => {
                    tracing::warn!(code = refusal.code(), message = %refusal.message(), "cannot certify")
                }
                _ => tracing::info!(code = refusal.code(), message = %refusal.message(), "certify refused"),
            }
            refusal.into_response()
        }
    }
}

/// The checks, cheapest first: the body, the CSR, then the token (a TokenReview and two GETs),
/// the identity, and the rate limit, which counts only requests that would be issued.
async fn answer(
    state: &IdentityState,
    source: Option<IpAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Workload, CertifyResponse), Refusal> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refusal::TooLarge,
        _ => Refusal::MalformedRequest(format!("cannot read the body: {}", rejection.body_text())),
    })?;
    let request: CertifyRequest = serde_json::from_slice(&body).map_err(|err| {
        Refusal::MalformedRequest(format!("expected JSON {{\"token\": \"...\", \"csr\": \"...\"}}: {err}"))
    })?;
    if request.token.trim().is_empty() || request.csr.trim().is_empty() {
        return Err(Refusal::MalformedRequest("token and csr must not be empty".to_owned()));
    }
    let checked = csr::check(&request.csr).map_err(|err| Refusal::MalformedCsr(err.to_string()))?;
    let authority = state.authority().ok_or_else(|| {
        Refusal::Unavailable(
            "the mesh has no issuer yet (see the CAReady condition of Mesh default)".to_owned(),
        )
    })?;

    let token = request.token.trim();
    let key = state.token_key(token);
    if let Some(refusal) = state.remembered(key, Instant::now()) {
        return Err(refusal);
    }
    let workload = {
        let _source = source.map(|ip| state.source_slot(ip).ok_or(Refusal::SourceBusy(ip))).transpose()?;
        let _permit = state.verifying.try_acquire().map_err(|_| Refusal::Busy)?;
        state.verifier.verify(token).await.map_err(|err| match err {
            AuthError::Unauthenticated(m) => Refusal::Unauthenticated(m),
            AuthError::Gone(m) => Refusal::IdentityGone(m),
            AuthError::Unavailable(_) => Refusal::Unavailable(err.to_string()),
        })
    };
    let workload = workload.inspect_err(|refusal| {
        // What the API server said of this token will not change in seconds; an outage might.
        if matches!(refusal, Refusal::Unauthenticated(_) | Refusal::IdentityGone(_)) {
            state.remember(key, refusal, Instant::now());
        }
    })?;
    let identity = authority.identity(&workload.namespace, &workload.service_account);
    if checked.uri != identity {
        return Err(Refusal::IdentityMismatch(format!(
            "the CSR asks for {}, but the token proves {identity}",
            checked.uri
        )));
    }
    let pod = format!("{}/{}", workload.namespace, workload.pod_uid);
    state.limiter.check(&pod, Instant::now()).map_err(Refusal::RateLimited)?;

    let issued = authority
        .issue(Timestamp::now().as_second(), &checked)
        .map_err(|err| Refusal::Unavailable(format!("cannot sign: {err}")))?;
    let not_after =
        Timestamp::from_second(issued.not_after).map_or_else(|_| String::new(), |t| t.to_string());
    Ok((
        workload,
        CertifyResponse {
            identity,
            certificate: issued.certificate_pem,
            chain: authority.chain_pem().to_owned(),
            trust_bundle: authority.bundle_pem().to_owned(),
            not_after,
        },
    ))
}

/// The endpoint's serving certificate, swapped in when the issuer changes.
#[derive(Debug)]
pub struct ServingCert {
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCert {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: RwLock::new(None),
        })
    }

    pub fn set(&self, chain: Vec<Vec<u8>>, key_der: Vec<u8>) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let signing_key = self.provider.key_provider.load_private_key(key)?;
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, signing_key)));
        Ok(())
    }

    /// TLS 1.3 only, as between proxies; HTTP/1.1: a proxy certifies once a day or so.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCert {
    // None (before the first issuer exists) fails the handshake, which the client retries.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Where the endpoint runs and which names its certificate carries; from the operator's flags.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub mesh_namespace: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

/// Serves the endpoint on `listener` until `shutdown`, keeping its issuer current.
pub async fn run(
    client: Client,
    listener: TcpListener,
    settings: ServerSettings,
    metrics: Arc<IdentityMetrics>,
    authorities: tokio::sync::watch::Sender<Option<Arc<Authority>>>,
    shutdown: CancellationToken,
) -> Result<(), rustls::Error> {
    let verifier = Arc::new(KubeVerifier::new(client.clone()));
    let state =
        Arc::new(IdentityState::new(verifier, RateLimiter::new(RATE_PER_MINUTE, RATE_BURST), metrics));
    let serving = ServingCert::new();
    let tls = serving.server_config()?;
    let keeper =
        tokio::spawn(keep_authority(client, settings, state.clone(), serving, authorities, shutdown.clone()));
    serve_tls(listener, tls, router(state), shutdown).await;
    let _ = keeper.await;
    Ok(())
}

/// Re-reads Secret braid-issuer and Mesh default whenever either changes (and every minute), and
/// swaps in a new authority and serving certificate when what they say changed.
async fn keep_authority(
    client: Client,
    settings: ServerSettings,
    state: Arc<IdentityState>,
    serving: Arc<ServingCert>,
    authorities: tokio::sync::watch::Sender<Option<Arc<Authority>>>,
    shutdown: CancellationToken,
) {
    let mut triggers = triggers(&client, &settings.mesh_namespace);
    let backoff = FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let wait = match reload(&client, &settings, &state, &serving, &authorities).await {
            Ok(()) => {
                backoff.succeeded("identity-authority");
                RESYNC
            }
            Err(err) => {
                let wait = backoff.failed("identity-authority");
                tracing::warn!(error = %err, retry_in = ?wait, "cannot load the mesh issuer");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(()) = triggers.next() => {
                // A burst of events (the watches' initial lists) makes one reload.
                while let Some(Some(())) = triggers.next().now_or_never() {}
            }
            () = shutdown.cancelled() => return,
        }
    }
}

fn triggers(client: &Client, mesh_namespace: &str) -> BoxStream<'static, ()> {
    fn named<K>(api: Api<K>, name: &str) -> BoxStream<'static, ()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api, config).default_backoff().map(|_| ()).boxed()
    }
    futures::stream::select_all([
        named(Api::<Secret>::namespaced(client.clone(), mesh_namespace), ISSUER_SECRET),
        named(Api::<Mesh>::all(client.clone()), "default"),
    ])
    .boxed()
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Authority(#[from] super::authority::AuthorityError),
    #[error("cannot use the serving certificate: {0}")]
    Tls(#[from] rustls::Error),
}

async fn reload(
    client: &Client,
    settings: &ServerSettings,
    state: &IdentityState,
    serving: &ServingCert,
    authorities: &tokio::sync::watch::Sender<Option<Arc<Authority>>>,
) -> Result<(), ReloadError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.mesh_namespace);
    let Some(secret) = secrets.get_opt(ISSUER_SECRET).await? else {
        tracing::info!(
            secret = %format!("{}/{ISSUER_SECRET}", settings.mesh_namespace),
            "no issuer yet; the CA controller of the leading operator creates it"
        );
        return Ok(());
    };
    let mesh = Api::<Mesh>::all(client.clone()).get_opt("default").await?;
    let (trust_domain, identity) = mesh
        .map(|m| (m.spec.trust_domain, m.spec.identity))
        .unwrap_or_else(|| (braid_crds::MeshSpec::default().trust_domain, IdentitySettings::default()));
    let workload_lifetime = parse_duration(&identity.workload_lifetime).unwrap_or_else(|err| {
        tracing::warn!(%err, value = %identity.workload_lifetime, "Mesh default: invalid spec.identity.workloadLifetime; using 24h");
        Duration::from_secs(24 * 3600)
    });
    let text = |key: &str| -> String {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .unwrap_or_default()
    };
    let source = AuthoritySource {
        issuer: KeyedCert { cert_pem: text("tls.crt"), key_pem: text("tls.key") },
        bundle_pem: text("ca.crt"),
        trust_domain,
        workload_lifetime,
    };
    if state.authority().is_some_and(|current| current.source() == &source) {
        return Ok(());
    }
    let authority = Arc::new(Authority::new(source)?);
    let (chain, key) =
        authority.serving_cert(Timestamp::now().as_second(), &settings.dns_names, &settings.ip_addresses)?;
    // The serving certificate first: a client that gets a certificate from the new issuer also
    // gets the new issuer's chain, and both verify with the bundle it already holds.
    serving.set(chain, key)?;
    state.metrics.issuer_expiry.set(authority.issuer_not_after());
    tracing::info!(
        issuer_not_after = %Timestamp::from_second(authority.issuer_not_after()).map_or_else(|_| String::new(), |t| t.to_string()),
        trust_domain = %authority.trust_domain(),
        "identity endpoint: issuer loaded"
    );
    state.set_authority(authority.clone());
    // The discovery endpoint serves with the same issuer and trusts the same bundle.
    authorities.send_replace(Some(authority));
    Ok(())
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open connections finish
/// their requests (up to 10 s).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    tracing::info!(addr = ?listener.local_addr().ok(), "identity endpoint listening (HTTPS)");
    let settings = Settings {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        header_read_timeout: Some(HANDSHAKE_TIMEOUT),
        drain_timeout: DRAIN_TIMEOUT,
        ..Settings::new("identity endpoint", Protocol::Http1)
    };
    let service = move |connection: &serve::Connection<'_>| {
        Some(TowerToHyperService::new(router.clone().layer(Extension(Source(connection.peer.ip())))))
    };
    serve::serve(listener, Some(Arc::new(tls)), service, settings, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{
        ca::{self, Stored},
        tokens::Workload,
    };
    use axum::body::Body;
    use futures::future::BoxFuture;
    use http_body_util::BodyExt;
    use prometheus_client::registry::Registry;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
    use tower::ServiceExt;

    /// Accepts "good:NS:SA", reports "gone" as a deleted pod, refuses the rest.
    struct FakeVerifier;

    impl Verifier for FakeVerifier {
        fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>> {
            Box::pin(async move {
                let parts = token.split(':').collect::<Vec<_>>();
                match parts.as_slice() {
                    ["good", ns, sa, ..] => Ok(Workload {
                        namespace: (*ns).to_owned(),
                        service_account: (*sa).to_owned(),
                        service_account_uid: None,
                        pod_name: "pod".to_owned(),
                        pod_uid: parts.get(3).unwrap_or(&"uid").to_string(),
                    }),
                    ["gone"] => Err(AuthError::Gone("pod shop/pod no longer exists".to_owned())),
                    ["down"] => Err(AuthError::Unavailable("connection refused".to_owned())),
                    _ => Err(AuthError::Unauthenticated(
                        "the API server refused the token: invalid".to_owned(),
                    )),
                }
            })
        }
    }

    /// FakeVerifier, counting the calls and taking `delay` over each.
    struct Slow {
        calls: std::sync::atomic::AtomicUsize,
        delay: Duration,
    }

    impl Verifier for Slow {
        fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                FakeVerifier.verify(token).await
            })
        }
    }

    fn state(with_authority: bool) -> (Arc<IdentityState>, Stored) {
        state_with(with_authority, Arc::new(FakeVerifier))
    }

    fn state_with(with_authority: bool, verifier: Arc<dyn Verifier>) -> (Arc<IdentityState>, Stored) {
        let mut registry = Registry::default();
        let metrics = Arc::new(IdentityMetrics::register(&mut registry));
        let state = Arc::new(IdentityState::new(verifier, RateLimiter::new(10, 10), metrics));
        let (_, stored) = ca::generated_for_tests();
        if with_authority {
            let source = AuthoritySource {
                issuer: stored.issuer.clone().unwrap(),
                bundle_pem: ca::bundle(&stored),
                trust_domain: "cluster.local".to_owned(),
                workload_lifetime: Duration::from_secs(86400),
            };
            state.set_authority(Arc::new(Authority::new(source).unwrap()));
        }
        (state, stored)
    }

    fn csr(uri: &str) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    async fn post(
        state: &Arc<IdentityState>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        post_from(state, body, None).await
    }

    /// As the accept loop passes it: with the client's address.
    async fn post_from(
        state: &Arc<IdentityState>,
        body: Vec<u8>,
        source: Option<IpAddr>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let request = axum::http::Request::post("/v1/certify")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let mut router = router(state.clone());
        if let Some(ip) = source {
            router = router.layer(Extension(Source(ip)));
        }
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null), retry)
    }

    fn certify_body(token: &str, csr: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"token": token, "csr": csr})).unwrap()
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[tokio::test]
    async fn a_good_request_gets_a_certificate_chain_and_bundle() {
        let (state, stored) = state(true);
        let (status, body, _) = post(&state, certify_body("good:shop:web", &csr(WEB))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["identity"], WEB);
        let leaf = ca::certs(body["certificate"].as_str().unwrap()).unwrap();
        let chain = ca::certs(body["chain"].as_str().unwrap()).unwrap();
        let bundle = ca::certs(body["trustBundle"].as_str().unwrap()).unwrap();
        assert_eq!(bundle, ca::certs(&stored.roots_pem).unwrap());
        assert!(ca::chains_to(&[leaf, chain].concat(), &bundle));
        let not_after: Timestamp = body["notAfter"].as_str().unwrap().parse().unwrap();
        assert!(body["notAfter"].as_str().unwrap().ends_with('Z'));
        let lifetime = not_after.as_second() - Timestamp::now().as_second();
        assert!((86390..=86400).contains(&lifetime), "{lifetime}");
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.register("m", "", state.metrics.issued.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("m_total 1"), "{text}");
    }

    #[tokio::test]
    async fn each_refusal_has_its_status_and_code() {
        let (state, _) = state(true);
        let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
            (b"not json".to_vec(), StatusCode::BAD_REQUEST, "malformed-request"),
            (br#"{"token": "good:shop:web"}"#.to_vec(), StatusCode::BAD_REQUEST, "malformed-request"),
            (certify_body("", &csr(WEB)), StatusCode::BAD_REQUEST, "malformed-request"),
            (certify_body("good:shop:web", "nope"), StatusCode::BAD_REQUEST, "malformed-csr"),
            (certify_body("forged", &csr(WEB)), StatusCode::UNAUTHORIZED, "unauthenticated"),
            (certify_body("gone", &csr(WEB)), StatusCode::FORBIDDEN, "identity-gone"),
            (certify_body("good:shop:db", &csr(WEB)), StatusCode::FORBIDDEN, "identity-mismatch"),
            (certify_body("down", &csr(WEB)), StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (vec![b' '; MAX_BODY_BYTES + 1], StatusCode::PAYLOAD_TOO_LARGE, "request-too-large"),
        ];
        for (body, status, code) in cases {
            let (got, answer, _) = post(&state, body).await;
            assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{answer}");
            assert!(!answer["message"].as_str().unwrap_or_default().is_empty(), "{answer}");
        }
        // A mismatch names both identities, so the proxy's log says what went wrong.
        let (_, answer, _) = post(&state, certify_body("good:shop:db", &csr(WEB))).await;
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(WEB) && message.contains("sa/db"), "{message}");
    }

    #[tokio::test]
    async fn the_eleventh_issuance_in_a_minute_is_rate_limited() {
        let (state, _) = state(true);
        for i in 0..10 {
            let (status, answer, _) = post(&state, certify_body("good:shop:web", &csr(WEB))).await;
            assert_eq!(status, StatusCode::OK, "request {i}: {answer}");
        }
        let (status, answer, retry) = post(&state, certify_body("good:shop:web", &csr(WEB))).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate-limited")));
        assert_eq!(retry.as_deref(), Some("6"), "6 s until the next token");
        // Refused requests do not spend tokens, and other pods are unaffected.
        let db = "spiffe://cluster.local/ns/shop/sa/db";
        let (status, _, _) = post(&state, certify_body("good:shop:db:uid-db", &csr(db))).await;
        assert_eq!(status, StatusCode::OK);
        // Nor is another pod of the same ServiceAccount: on a trust-bundle change every replica
        // renews at once.
        let (status, answer, _) = post(&state, certify_body("good:shop:web:uid-2", &csr(WEB))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    #[tokio::test]
    async fn a_refused_token_is_refused_again_without_asking_the_api_server() {
        let slow = Arc::new(Slow { calls: Default::default(), delay: Duration::ZERO });
        let (state, _) = state_with(true, slow.clone());
        for _ in 0..3 {
            let (status, answer, _) = post(&state, certify_body("forged", &csr(WEB))).await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
            );
        }
        assert_eq!(
            slow.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one TokenReview for three requests"
        );
        // An outage is not remembered: the next request asks again.
        for _ in 0..2 {
            post(&state, certify_body("down", &csr(WEB))).await;
        }
        assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn token_checks_beyond_the_bound_are_answered_busy_with_retry_after() {
        let slow = Arc::new(Slow { calls: Default::default(), delay: Duration::from_millis(500) });
        let (state, _) = state_with(true, slow.clone());
        let requests: Vec<_> = (0..MAX_VERIFYING + 4)
            .map(|i| {
                let state = state.clone();
                let body = certify_body(&format!("good:shop:web:pod-{i}"), &csr(WEB));
                tokio::spawn(async move { post(&state, body).await })
            })
            .collect();
        let mut busy = 0;
        for request in requests {
            let (status, answer, retry) = request.await.unwrap();
            if answer["error"] == "busy" {
                assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
                busy += 1;
            }
        }
        assert_eq!(busy, 4, "only the checks over {MAX_VERIFYING} wait");
        assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), MAX_VERIFYING);
    }

    #[tokio::test]
    async fn one_source_cannot_take_every_token_check() {
        let slow = Arc::new(Slow { calls: Default::default(), delay: Duration::from_millis(500) });
        let (state, _) = state_with(true, slow.clone());
        let noisy: IpAddr = "10.0.0.7".parse().unwrap();
        let send = |i: usize, source: IpAddr| {
            let state = state.clone();
            let body = certify_body(&format!("good:shop:web:pod-{i}"), &csr(WEB));
            tokio::spawn(async move { post_from(&state, body, Some(source)).await })
        };
        let from_noisy: Vec<_> = (0..MAX_VERIFYING_PER_SOURCE + 3).map(|i| send(i, noisy)).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = send(100, "10.0.0.8".parse().unwrap());
        let mut busy = 0;
        for request in from_noisy {
            let (status, answer, retry) = request.await.unwrap();
            if answer["error"] == "busy" {
                assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
                assert!(answer["message"].as_str().unwrap().contains("from 10.0.0.7"), "{answer}");
                busy += 1;
            } else {
                assert_eq!(status, StatusCode::OK, "{answer}");
            }
        }
        assert_eq!(busy, 3, "only the checks over {MAX_VERIFYING_PER_SOURCE} from one address wait");
        let (status, answer, _) = other.await.unwrap();
        assert_eq!(status, StatusCode::OK, "another address is unaffected: {answer}");
        // The slots are given back: the address may send again, and nothing is left behind.
        let (status, answer, _) = send(200, noisy).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(state.verifying_by_source.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_an_issuer_the_endpoint_says_so() {
        let (state, _) = state(false);
        let (status, answer, _) = post(&state, certify_body("good:shop:web", &csr(WEB))).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
        );
        assert!(answer["message"].as_str().unwrap().contains("CAReady"), "{answer}");
    }
}
