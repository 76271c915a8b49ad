//! The mesh's certificate authority as a pure state machine: given what is stored, where the CA
//! comes from, and the time, which roots and which issuer to have. No I/O; times are Unix seconds
//! so tests choose them.
//!
//! Two certificates matter. The trust anchor (root) is what every proxy trusts, through the
//! published trust bundle; the issuer (intermediate) signs workload certificates. Replacing the
//! issuer under the same root changes nothing any proxy trusts, so it happens at once. Replacing
//! the root must never leave a proxy unable to verify a peer, so it goes in three steps:
//!
//! 1. The new root joins the bundle beside the old one (which moves to `previous`).
//! 2. Once that bundle has been published everywhere for `propagation` (the kubelet takes up to
//!    about a minute to update a mounted ConfigMap), the issuer is replaced by one the new root
//!    signed. Certificates from the old issuer still verify, since the old root is still trusted.
//! 3. The old root leaves the bundle once nothing it signed can still be valid: the old issuer's
//!    last certificate lives at most `workload_lifetime` after the switch, and no longer than the
//!    old issuer itself.
//!
//! With an external CA (a Secret cert-manager keeps) the operator never generates anything: it
//! copies that issuer, and treats a change of its roots exactly like a rotation.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use x509_parser::{
    certificate::X509Certificate,
    pem::Pem,
    prelude::{FromDer, X509Error},
};

/// A certificate (PEM; for an issuer, the issuer first, then any intermediates up to the root) and
/// its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What is stored (in Secrets braid-trust-anchor and braid-issuer) between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The roots the mesh trusts now, PEM: the generated root, or the external CA's ca.crt.
    pub roots_pem: String,
    /// The generated root's key; None with an external CA.
    pub root_key_pem: Option<String>,
    /// Roots still trusted because certificates they signed may still be in use, PEM.
    pub previous_pem: String,
    /// When `previous_pem` leaves the bundle; None until the issuer moved to a current root.
    pub previous_until: Option<i64>,
    pub issuer: Option<KeyedCert>,
}

/// Where the CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The operator generates the root and the issuer.
    Generate,
    /// Mesh.spec.identity.externalCaSecret: its tls.crt/tls.key is the issuer, its ca.crt the roots.
    External(ExternalCa),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCa {
    pub issuer: KeyedCert,
    pub roots_pem: String,
}

/// Lifetimes, from the Mesh, and the propagation delay, from the operator's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub trust_anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
    pub workload_lifetime: Duration,
    /// How long a changed bundle must have been published before an issuer under a new root is used.
    pub propagation: Duration,
}

/// Share of its lifetime after which the operator replaces a root or an issuer, in percent.
pub const RENEW_AT_PERCENT: i64 = 66;

/// One thing to do, with the reason (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Generate a root; the old one, while still valid, moves to the previous roots.
    NewRoot(&'static str),
    /// Trust the external CA's roots; the old ones, while still valid, move to the previous roots.
    AdoptExternalRoots,
    /// Generate an issuer under the current root, or copy the external one.
    NewIssuer(&'static str),
    /// The previous roots can no longer be needed after this time (a lost schedule, recomputed).
    SchedulePreviousDrop(i64),
    /// Forget the previous roots: nothing they signed can still be valid.
    DropPrevious(&'static str),
    /// Forget the previous roots that expired.
    DropExpiredPrevious,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the stored trust anchor cannot sign ({0}); delete Secret braid-trust-anchor to start over")]
    UnusableRoot(String),
    #[error("{0}")]
    External(String),
}

/// Validity of a certificate, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    pub fn renew_at(self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * RENEW_AT_PERCENT / 100
    }

    pub fn valid_at(self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// One certificate, parsed once: its DER and what the plan compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub der: Vec<u8>,
    pub validity: Validity,
    pub is_ca: bool,
    /// The raw public key (the EC point, or the RSA key), to match a private key against.
    pub public_key: Vec<u8>,
}

impl Cert {
    pub fn from_der(der: Vec<u8>) -> Result<Cert, X509Error> {
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|_| X509Error::InvalidCertificate)?;
        if !rest.is_empty() {
            return Err(X509Error::InvalidCertificate);
        }
        let validity = Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        };
        let is_ca = cert.is_ca();
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        Ok(Cert { der, validity, is_ca, public_key })
    }

    pub fn pem(&self) -> String {
        let block = pem::Pem::new("CERTIFICATE", self.der.clone());
        pem::encode_config(&block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
    }

    /// Whether this certificate carries a valid signature by `issuer`'s key.
    pub fn signed_by(&self, issuer: &Cert) -> bool {
        let (Ok((_, cert)), Ok((_, issuer))) =
            (X509Certificate::from_der(&self.der), X509Certificate::from_der(&issuer.der))
        else {
            return false;
        };
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    }

    /// Whether `key_pem` is this certificate's private key.
    pub fn matches_key(&self, key_pem: &str) -> bool {
        KeyPair::from_pem(key_pem).is_ok_and(|key| key.public_key_raw() == self.public_key.as_slice())
    }
}

/// Every certificate in `pem`, in order; an error when any block is not a certificate.
pub fn certs(pem: &str) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| format!("malformed PEM: {err}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("expected CERTIFICATE blocks, found {}", block.label));
        }
        out.push(Cert::from_der(block.contents).map_err(|err| format!("not a certificate: {err}"))?);
    }
    Ok(out)
}

/// The certificates of `pem` that parse, ignoring the rest (for what is already stored).
fn lenient_certs(pem: &str) -> Vec<Cert> {
    certs(pem).unwrap_or_default()
}

/// Whether `chain` (leaf or issuer first, then its issuers) leads to one of `roots`.
pub fn chains_to(chain: &[Cert], roots: &[Cert]) -> bool {
    let Some(last) = chain.last() else { return false };
    chain.windows(2).all(|pair| pair[0].signed_by(&pair[1]))
        && roots.iter().any(|root| root.der == last.der || last.signed_by(root))
}

/// The issuer as stored, when it is usable: parses, has its key, is a CA.
fn usable_issuer(issuer: Option<&KeyedCert>) -> Option<Vec<Cert>> {
    let issuer = issuer?;
    let chain = certs(&issuer.cert_pem).ok()?;
    let first = chain.first()?;
    (first.is_ca && first.matches_key(&issuer.key_pem)).then_some(chain)
}

/// Checks an external CA before anything is copied from it; the message goes into the Mesh.
pub fn check_external(now: i64, external: &ExternalCa) -> Result<(), String> {
    let roots = certs(&external.roots_pem).map_err(|err| format!("ca.crt: {err}"))?;
    if roots.is_empty() {
        return Err("ca.crt holds no certificate; it must hold the root(s) the issuer chains to".to_owned());
    }
    let chain = certs(&external.issuer.cert_pem).map_err(|err| format!("tls.crt: {err}"))?;
    let Some(issuer) = chain.first() else {
        return Err("tls.crt holds no certificate".to_owned());
    };
    if !issuer.is_ca {
        return Err("tls.crt is not a CA certificate (basicConstraints CA:TRUE is required)".to_owned());
    }
    if let Some(label) = ["EC PRIVATE KEY", "RSA PRIVATE KEY"]
        .into_iter()
        .find(|label| external.issuer.key_pem.contains(&format!("BEGIN {label}")))
    {
        return Err(format!(
            "tls.key is a {label}; the operator reads PKCS#8 keys (BEGIN PRIVATE KEY): with cert-manager, set spec.privateKey.encoding: PKCS8 on the Certificate"
        ));
    }
    if !issuer.matches_key(&external.issuer.key_pem) {
        return Err("tls.key is not the private key of tls.crt".to_owned());
    }
    if !issuer.validity.valid_at(now) {
        return Err("tls.crt is not valid now (expired, or not yet valid)".to_owned());
    }
    if !chains_to(&chain, &roots) {
        return Err("tls.crt does not chain to any certificate in ca.crt".to_owned());
    }
    Ok(())
}

/// What to do now, in order. `published_since` is when the bundle of `stored` was last seen
/// published everywhere (None: not yet, or it changed since).
pub fn plan(
    now: i64,
    stored: &Stored,
    source: &Source,
    settings: &Settings,
    published_since: Option<i64>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let roots = lenient_certs(&stored.roots_pem);
    let previous = lenient_certs(&stored.previous_pem);

    // The roots.
    match source {
        Source::Generate => {
            let root = roots.first().filter(|root| {
                roots.len() == 1
                    && root.is_ca
                    && stored.root_key_pem.as_deref().is_some_and(|key| root.matches_key(key))
            });
            match root {
                None if stored.roots_pem.trim().is_empty() => {
                    changes.push(Change::NewRoot("no trust anchor yet"))
                }
                None if stored.root_key_pem.is_none() => {
                    changes.push(Change::NewRoot("the mesh no longer uses the external CA"))
                }
                None => changes.push(Change::NewRoot("the stored trust anchor is unusable")),
                Some(root) if now >= root.validity.not_after => {
                    changes.push(Change::NewRoot("the trust anchor expired"))
                }
                // One rotation at a time: a second one before the old root left the bundle could
                // drop a root that still signs certificates in use.
                Some(root) if now >= root.validity.renew_at() && stored.previous_pem.trim().is_empty() => {
                    changes.push(Change::NewRoot("the trust anchor reached its renewal time"))
                }
                Some(_) => {}
            }
        }
        Source::External(external) => {
            if !same_set(&lenient_certs(&external.roots_pem), &roots) || stored.root_key_pem.is_some() {
                changes.push(Change::AdoptExternalRoots);
            }
        }
    }
    let roots_changing = !changes.is_empty();

    // The issuer. Urgent: nothing usable to sign with, so waiting would save no connection.
    let current_issuer = usable_issuer(stored.issuer.as_ref());
    let valid =
        |certs: &[Cert]| certs.iter().filter(|c| c.validity.valid_at(now)).cloned().collect::<Vec<_>>();
    let trusted: Vec<Cert> = valid(&roots).into_iter().chain(valid(&previous)).collect();
    let urgent = match &current_issuer {
        None if stored.issuer.is_none() => Some("no issuer yet"),
        None => Some("the stored issuer is unusable"),
        Some(chain) if now >= chain[0].validity.not_after => Some("the issuer expired"),
        Some(chain) if !chains_to(chain, &trusted) => Some("the issuer is not signed by a trusted root"),
        Some(_) => None,
    };
    // A new issuer under a root that is not the old issuer's needs the bundle carrying that root
    // to have reached every proxy first.
    let propagated =
        !roots_changing && published_since.is_some_and(|at| now >= at + secs(settings.propagation));
    let under_current = current_issuer.as_ref().is_some_and(|chain| chains_to(chain, &roots));
    let wanted = match (source, &current_issuer) {
        _ if urgent.is_some() => urgent,
        (_, None) => None,
        (Source::Generate, Some(chain)) => {
            if roots_changing {
                None
            } else if !under_current {
                propagated.then_some("the new trust anchor has reached every proxy")
            } else if now >= chain[0].validity.renew_at() {
                Some("the issuer reached its renewal time")
            } else {
                None
            }
        }
        (Source::External(external), Some(chain)) => {
            let differs = stored.issuer.as_ref() != Some(&external.issuer);
            let new_chain = lenient_certs(&external.issuer.cert_pem);
            // cert-manager renewed the issuer under a root the old one also chains to.
            let same_root = roots.iter().any(|root| {
                chains_to(chain, std::slice::from_ref(root))
                    && chains_to(&new_chain, std::slice::from_ref(root))
            });
            match () {
                () if !differs => None,
                () if same_root && !roots_changing => Some("the external CA renewed its issuer"),
                () if propagated => Some("the external CA's roots have reached every proxy"),
                () => None,
            }
        }
    };
    if let Some(reason) = wanted {
        changes.push(Change::NewIssuer(reason));
    }

    // The previous roots.
    if !previous.is_empty() {
        let issuer_moves = changes.iter().any(|c| matches!(c, Change::NewIssuer(_)));
        if stored.previous_until.is_some_and(|until| now >= until) {
            changes.push(Change::DropPrevious("nothing the previous trust anchor signed can still be valid"));
        } else if previous.iter().any(|p| now >= p.validity.not_after) {
            changes.push(Change::DropExpiredPrevious);
        } else if stored.previous_until.is_none() && under_current && !issuer_moves && !roots_changing {
            // The schedule is set when the issuer moves; it was lost (an edited Secret), so the
            // conservative bound is a full workload lifetime from now.
            changes.push(Change::SchedulePreviousDrop(now.saturating_add(secs(settings.workload_lifetime))));
        }
    }
    changes
}

/// Carries out `changes`, generating keys and certificates valid from `now`.
pub fn apply(
    now: i64,
    stored: &Stored,
    changes: &[Change],
    source: &Source,
    settings: &Settings,
) -> Result<Stored, CaError> {
    let mut next = stored.clone();
    for change in changes {
        match change {
            Change::NewRoot(_) => {
                retire_roots(now, &mut next);
                let root = issue_root(now, settings.trust_anchor_lifetime)?;
                next.roots_pem = root.cert_pem;
                next.root_key_pem = Some(root.key_pem);
            }
            Change::AdoptExternalRoots => {
                let Source::External(external) = source else {
                    return Err(CaError::External("there is no external CA to adopt".to_owned()));
                };
                retire_roots(now, &mut next);
                let new_roots = lenient_certs(&external.roots_pem);
                // A root that stays trusted is not "previous".
                let previous: Vec<Cert> = lenient_certs(&next.previous_pem)
                    .into_iter()
                    .filter(|p| !new_roots.iter().any(|r| r.der == p.der))
                    .collect();
                next.previous_pem = join(&previous);
                next.roots_pem = join(&new_roots);
                next.root_key_pem = None;
            }
            Change::NewIssuer(_) => {
                let roots = lenient_certs(&next.roots_pem);
                let old = usable_issuer(next.issuer.as_ref());
                let old_under_current = old.as_ref().is_some_and(|chain| chains_to(chain, &roots));
                if !next.previous_pem.trim().is_empty() && !old_under_current {
                    // The previous roots stay until the old issuer's last certificate expires.
                    let workload_end = now.saturating_add(secs(settings.workload_lifetime));
                    let bound =
                        old.map_or(workload_end, |chain| chain[0].validity.not_after.min(workload_end));
                    next.previous_until = Some(next.previous_until.map_or(bound, |until| until.max(bound)));
                }
                next.issuer = Some(match source {
                    Source::Generate => issue_issuer(now, &next, settings.issuer_lifetime)?,
                    Source::External(external) => external.issuer.clone(),
                });
            }
            Change::SchedulePreviousDrop(at) => next.previous_until = Some(*at),
            Change::DropPrevious(_) => {
                next.previous_pem = String::new();
                next.previous_until = None;
            }
            Change::DropExpiredPrevious => {
                let kept: Vec<Cert> = lenient_certs(&next.previous_pem)
                    .into_iter()
                    .filter(|p| now < p.validity.not_after)
                    .collect();
                next.previous_pem = join(&kept);
                if kept.is_empty() {
                    next.previous_until = None;
                }
            }
        }
    }
    Ok(next)
}

/// Moves the current roots that are still valid to the previous ones (a root rotation).
fn retire_roots(now: i64, next: &mut Stored) {
    let mut previous = lenient_certs(&next.previous_pem);
    for root in lenient_certs(&next.roots_pem) {
        if now < root.validity.not_after && !previous.iter().any(|p| p.der == root.der) {
            previous.push(root);
        }
    }
    next.previous_pem = join(&previous);
    // Decided again when the issuer moves to the new root.
    if !previous.is_empty() {
        next.previous_until = None;
    }
}

/// The trust bundle: the current roots, then the previous ones, each once.
pub fn bundle(stored: &Stored) -> String {
    let mut seen: Vec<Cert> = Vec::new();
    for cert in lenient_certs(&stored.roots_pem).into_iter().chain(lenient_certs(&stored.previous_pem)) {
        if !seen.iter().any(|s| s.der == cert.der) {
            seen.push(cert);
        }
    }
    join(&seen)
}

/// When the plan could next change: the earliest renewal, propagation or expiry ahead.
pub fn next_change(
    now: i64,
    stored: &Stored,
    source: &Source,
    settings: &Settings,
    published_since: Option<i64>,
) -> Option<i64> {
    let roots = lenient_certs(&stored.roots_pem);
    let previous = lenient_certs(&stored.previous_pem);
    let issuer = usable_issuer(stored.issuer.as_ref());
    let generated = matches!(source, Source::Generate);
    let mut times = Vec::new();
    for root in &roots {
        times.push(root.validity.not_after);
        if generated {
            times.push(root.validity.renew_at());
        }
    }
    if let Some(chain) = &issuer {
        times.push(chain[0].validity.not_after);
        if generated {
            times.push(chain[0].validity.renew_at());
        }
    }
    // The end of a propagation wait matters only while an issuer waits for it.
    let waiting = match (source, &issuer) {
        (_, None) => false,
        (Source::Generate, Some(chain)) => !chains_to(chain, &roots),
        (Source::External(external), Some(_)) => stored.issuer.as_ref() != Some(&external.issuer),
    };
    if waiting {
        times.extend(published_since.map(|at| at.saturating_add(secs(settings.propagation))));
    }
    times.extend(stored.previous_until);
    times.extend(previous.iter().map(|p| p.validity.not_after));
    times.into_iter().filter(|t| *t > now).min()
}

fn same_set(a: &[Cert], b: &[Cert]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x.der == y.der))
}

fn join(certs: &[Cert]) -> String {
    certs.iter().map(Cert::pem).collect()
}

fn issue_root(now: i64, lifetime: Duration) -> Result<KeyedCert, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // Unique names, so that during a rotation chain builders never confuse the two roots.
    params.distinguished_name = name(&format!("braid trust anchor {now}"));
    // Root -> issuer -> workload: one CA may sit below the root.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, now, lifetime, None)?;
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issue_issuer(now: i64, stored: &Stored, lifetime: Duration) -> Result<KeyedCert, CaError> {
    let root = lenient_certs(&stored.roots_pem)
        .into_iter()
        .next()
        .ok_or_else(|| CaError::UnusableRoot("there is no trust anchor".to_owned()))?;
    let key_pem = stored
        .root_key_pem
        .as_deref()
        .ok_or_else(|| CaError::UnusableRoot("its key is missing".to_owned()))?;
    let root_key = KeyPair::from_pem(key_pem).map_err(|e| CaError::UnusableRoot(e.to_string()))?;
    let issuer =
        Issuer::from_ca_cert_pem(&root.pem(), root_key).map_err(|e| CaError::UnusableRoot(e.to_string()))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("braid issuer {now}"));
    // The issuer signs workload certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    // Never outlives its root: a certificate chain is only as valid as its shortest link.
    set_validity(&mut params, now, lifetime, Some(root.validity.not_after))?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "braid");
    dn
}

/// Sets notBefore (backdated for clocks behind ours: a minute, or a tenth of a short lifetime so
/// that the renewal time stays ahead) and notAfter (now + lifetime, at most `cap`).
pub(crate) fn set_validity(
    params: &mut CertificateParams,
    now: i64,
    lifetime: Duration,
    cap: Option<i64>,
) -> Result<(), CaError> {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| CaError::UnusableRoot(format!("time {t} out of range")))
    };
    let not_after = now.saturating_add(secs(lifetime));
    params.not_before = at(now - secs(lifetime / 10).min(60))?;
    params.not_after = at(cap.map_or(not_after, |cap| cap.min(not_after)))?;
    Ok(())
}

/// 16 random bytes, positive: RFC 5280 wants serials unique per issuer, and a workload's renewals
/// reuse its key (rcgen's default serial is a hash of the key).
pub(crate) fn random_serial() -> Result<SerialNumber, rcgen::Error> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::identity::{
        authority::{Authority, AuthoritySource},
        csr::CheckedCsr,
    };
    use rcgen::PublicKeyData as _;

    const DAY: i64 = 86400;
    const START: i64 = 1_800_000_000;

    fn settings() -> Settings {
        Settings {
            trust_anchor_lifetime: Duration::from_secs(365 * 86400),
            issuer_lifetime: Duration::from_secs(30 * 86400),
            workload_lifetime: Duration::from_secs(86400),
            propagation: Duration::from_secs(60),
        }
    }

    fn short() -> Settings {
        Settings {
            trust_anchor_lifetime: Duration::from_secs(900),
            issuer_lifetime: Duration::from_secs(300),
            workload_lifetime: Duration::from_secs(120),
            propagation: Duration::from_secs(60),
        }
    }

    fn kinds(changes: &[Change]) -> Vec<&'static str> {
        changes
            .iter()
            .map(|c| match c {
                Change::NewRoot(_) => "root",
                Change::AdoptExternalRoots => "adopt",
                Change::NewIssuer(_) => "issuer",
                Change::SchedulePreviousDrop(_) => "schedule",
                Change::DropPrevious(_) => "drop",
                Change::DropExpiredPrevious => "drop-expired",
            })
            .collect()
    }

    /// The shell's loop without I/O: the stored state, and the bundle published since when.
    struct Sim {
        now: i64,
        stored: Stored,
        source: Source,
        settings: Settings,
        published: Option<(String, i64)>,
    }

    impl Sim {
        fn new(settings: Settings, source: Source) -> Sim {
            Sim { now: START, stored: Stored::default(), source, settings, published: None }
        }

        fn since(&self) -> Option<i64> {
            self.published.as_ref().filter(|(b, _)| *b == bundle(&self.stored)).map(|(_, at)| *at)
        }

        fn plan(&self) -> Vec<Change> {
            plan(self.now, &self.stored, &self.source, &self.settings, self.since())
        }

        /// One pass at `self.now`: plan, apply, publish.
        fn step(&mut self) -> Vec<Change> {
            let changes = self.plan();
            self.stored = apply(self.now, &self.stored, &changes, &self.source, &self.settings).unwrap();
            let bundle = bundle(&self.stored);
            if self.published.as_ref().is_none_or(|(b, _)| *b != bundle) {
                self.published = Some((bundle, self.now));
            }
            changes
        }

        fn at(&mut self, now: i64) -> Vec<Change> {
            self.now = now;
            self.step()
        }

        fn next_change(&self) -> Option<i64> {
            next_change(self.now, &self.stored, &self.source, &self.settings, self.since())
        }

        /// Steps through every planned change up to `until` (exclusive), as the shell would.
        fn run_until(&mut self, until: i64) {
            while let Some(next) = self.next_change().filter(|t| *t < until) {
                self.at(next);
            }
            self.now = until;
        }

        fn issuer(&self) -> Vec<Cert> {
            certs(&self.stored.issuer.as_ref().unwrap().cert_pem).unwrap()
        }

        fn roots(&self) -> Vec<Cert> {
            certs(&self.stored.roots_pem).unwrap()
        }

        fn bundle_size(&self) -> usize {
            certs(&bundle(&self.stored)).unwrap().len()
        }
    }

    /// Whether a peer holding `bundle` accepts a certificate `chain` (leaf first) at `now`.
    fn verifies(now: i64, chain: &[Cert], bundle: &str) -> bool {
        let roots: Vec<Cert> =
            certs(bundle).unwrap().into_iter().filter(|r| r.validity.valid_at(now)).collect();
        chain.iter().all(|c| c.validity.valid_at(now)) && chains_to(chain, &roots)
    }

    #[test]
    fn first_start_generates_a_root_and_an_issuer_it_signed() {
        let mut sim = Sim::new(settings(), Source::Generate);
        assert_eq!(kinds(&sim.step()), ["root", "issuer"]);
        let (root, issuer) = (sim.roots().remove(0), sim.issuer().remove(0));
        assert!(issuer.signed_by(&root) && issuer.is_ca && root.is_ca);
        assert_eq!(root.validity, Validity { not_before: START - 60, not_after: START + 365 * DAY });
        assert_eq!(issuer.validity, Validity { not_before: START - 60, not_after: START + 30 * DAY });
        assert_eq!(sim.bundle_size(), 1);
        sim.now += 3600;
        assert_eq!(sim.plan(), []);
    }

    #[test]
    fn the_issuer_renews_at_two_thirds_under_the_same_root_at_once() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let renew_at = sim.issuer()[0].validity.renew_at();
        assert_eq!(sim.next_change(), Some(renew_at));
        assert_eq!(renew_at - START, (30 * DAY + 60) * 66 / 100 - 60);
        sim.now = renew_at - 1;
        assert_eq!(sim.plan(), []);
        let roots = sim.stored.roots_pem.clone();
        let old_issuer = sim.issuer();
        assert_eq!(kinds(&sim.at(renew_at)), ["issuer"], "no propagation wait: the root is unchanged");
        assert_ne!(sim.issuer(), old_issuer);
        assert_eq!(sim.stored.roots_pem, roots);
        assert!(sim.stored.previous_pem.is_empty());
    }

    #[test]
    fn a_root_rotation_overlaps_old_and_new_roots_then_drops_the_old_one() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let old_root = sim.roots().remove(0);
        let rotate_at = old_root.validity.renew_at();
        sim.run_until(rotate_at);
        assert_eq!(sim.roots(), std::slice::from_ref(&old_root), "issuer renewals kept the root");
        let old_issuer = sim.issuer();

        // 1. The new root joins the bundle; the issuer stays.
        assert_eq!(kinds(&sim.at(rotate_at)), ["root"]);
        assert_eq!(sim.bundle_size(), 2);
        assert_eq!(certs(&sim.stored.previous_pem).unwrap(), std::slice::from_ref(&old_root));
        assert_eq!(sim.issuer(), old_issuer);
        assert_eq!(sim.stored.previous_until, None);

        // 2. Only once that bundle was published for the propagation time does the issuer move.
        sim.now = rotate_at + 59;
        assert_eq!(sim.plan(), []);
        assert_eq!(sim.next_change(), Some(rotate_at + 60));
        assert_eq!(kinds(&sim.at(rotate_at + 60)), ["issuer"]);
        let new_root = sim.roots().remove(0);
        assert!(chains_to(&sim.issuer(), &[new_root]));
        let until = (rotate_at + 60 + DAY).min(old_issuer[0].validity.not_after);
        assert_eq!(sim.stored.previous_until, Some(until));

        // 3. The old root leaves when nothing it signed can still be valid.
        sim.now = until - 1;
        assert_eq!(sim.plan(), []);
        assert_eq!(kinds(&sim.at(until)), ["drop"]);
        assert_eq!(sim.bundle_size(), 1);
        assert_eq!(sim.stored.previous_until, None);
    }

    #[test]
    fn a_renewal_due_during_the_propagation_window_waits_for_it() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let rotate_at = sim.roots()[0].validity.renew_at();
        sim.run_until(rotate_at);
        sim.at(rotate_at);
        // The issuer reaches its renewal time inside the window: a renewal under the old root
        // would be pointless, one under the new root premature.
        sim.now = sim.issuer()[0].validity.renew_at().max(rotate_at + 10);
        sim.published = Some((bundle(&sim.stored), sim.now - 10));
        assert_eq!(sim.plan(), []);
        sim.now += 50;
        assert_eq!(kinds(&sim.plan()), ["issuer"]);
    }

    #[test]
    fn after_a_restart_the_propagation_wait_starts_over() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let rotate_at = sim.roots()[0].validity.renew_at();
        sim.run_until(rotate_at);
        sim.at(rotate_at);
        sim.now = rotate_at + 3600;
        sim.published = None; // a new process, or a new leader
        assert_eq!(sim.step(), [], "publishing first");
        sim.now += 59;
        assert_eq!(sim.plan(), []);
        sim.now += 1;
        assert_eq!(kinds(&sim.plan()), ["issuer"]);
    }

    #[test]
    fn a_second_rotation_waits_until_the_first_one_finished() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let rotate_at = sim.roots()[0].validity.renew_at();
        sim.run_until(rotate_at);
        sim.at(rotate_at);
        // The new root is itself due (a clock jump) while the old one is still trusted.
        sim.now = sim.roots()[0].validity.renew_at();
        assert!(!kinds(&sim.plan()).contains(&"root"), "{:?}", sim.plan());
    }

    #[test]
    fn an_expired_root_is_replaced_with_its_issuer_at_once() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let expiry = sim.roots()[0].validity.not_after;
        // Nothing ran for a year: no overlap can save anything, so no waiting either.
        assert_eq!(kinds(&sim.at(expiry)), ["root", "issuer"]);
        assert_eq!(sim.bundle_size(), 1, "an expired root is not kept");
        assert!(chains_to(&sim.issuer(), &sim.roots()));
    }

    #[test]
    fn an_issuer_never_outlives_its_root() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let root_expiry = sim.roots()[0].validity.not_after;
        // Block the rotation (as if one were still finishing) so the issuer renews near the end.
        sim.stored.previous_pem = sim.stored.roots_pem.clone();
        sim.stored.previous_until = Some(i64::MAX);
        sim.at(root_expiry - 10 * DAY);
        assert_eq!(sim.issuer()[0].validity.not_after, root_expiry);
    }

    #[test]
    fn garbage_is_replaced_and_a_lost_schedule_is_recomputed() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        sim.stored.issuer.as_mut().unwrap().key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert_eq!(kinds(&sim.step()), ["issuer"]);
        assert!(chains_to(&sim.issuer(), &sim.roots()));

        let mut corrupt = Sim::new(settings(), Source::Generate);
        corrupt.stored.roots_pem = "not a certificate".into();
        corrupt.stored.root_key_pem = Some("nor a key".into());
        assert_eq!(kinds(&corrupt.step()), ["root", "issuer"]);
        assert!(corrupt.stored.previous_pem.is_empty(), "nothing unparsable is carried into the bundle");

        // Someone removed the annotation with the drop time.
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let rotate_at = sim.roots()[0].validity.renew_at();
        sim.run_until(rotate_at);
        sim.at(rotate_at);
        sim.at(rotate_at + 60);
        sim.stored.previous_until = None;
        sim.now = rotate_at + 120;
        assert_eq!(sim.plan(), [Change::SchedulePreviousDrop(rotate_at + 120 + DAY)]);
    }

    /// The property the overlap exists for, over several rotations with short lifetimes: every
    /// certificate issued at any moment is accepted by a peer whose bundle is `propagation` old,
    /// and every certificate still valid is accepted by a peer with the current bundle.
    #[test]
    fn no_certificate_is_ever_refused_through_renewals_and_rotations() {
        let mut sim = Sim::new(short(), Source::Generate);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CheckedCsr {
            uri: "spiffe://cluster.local/ns/shop/sa/web".into(),
            public_key_der: key.subject_public_key_info(),
        };
        let mut history: Vec<(i64, String)> = Vec::new();
        let mut leaves: Vec<Vec<Cert>> = Vec::new();
        let mut issuers_seen = HashMap::new();
        let mut root_changes = 0;
        let end = START + 4 * 900;
        let mut now = START;
        while now < end {
            let changes = sim.at(now);
            root_changes += changes.iter().filter(|c| matches!(c, Change::NewRoot(_))).count();
            let bundle_now = bundle(&sim.stored);
            if history.last().is_none_or(|(_, b)| *b != bundle_now) {
                history.push((now, bundle_now.clone()));
            }
            // A workload certifies now.
            let authority = Authority::new(AuthoritySource {
                issuer: sim.stored.issuer.clone().unwrap(),
                bundle_pem: bundle_now.clone(),
                trust_domain: "cluster.local".into(),
                workload_lifetime: sim.settings.workload_lifetime,
            })
            .unwrap();
            let leaf = certs(&authority.issue(now, &csr).unwrap().certificate_pem).unwrap();
            let chain: Vec<Cert> = leaf.into_iter().chain(sim.issuer()).collect();
            issuers_seen.insert(sim.issuer()[0].der.clone(), now);

            // A peer whose bundle is as old as the propagation time allows.
            let lagging = history.iter().rev().find(|(at, _)| *at <= now - 60).or(history.first()).unwrap();
            assert!(
                verifies(now, &chain, &lagging.1),
                "at +{}: a new certificate fails an older bundle",
                now - START
            );
            leaves.push(chain);
            leaves.retain(|chain| now < chain[0].validity.not_after);
            for chain in &leaves {
                assert!(
                    verifies(now, chain, &bundle_now),
                    "at +{}: a valid certificate fails the bundle",
                    now - START
                );
            }
            assert!(sim.bundle_size() <= 2);
            let next = sim.next_change().unwrap_or(now + 10);
            now = next.min(now + 10).max(now + 1);
        }
        assert!(root_changes >= 3, "expected several trust-anchor rotations, saw {root_changes}");
        assert!(issuers_seen.len() >= 10, "expected many issuers, saw {}", issuers_seen.len());
    }

    fn external(roots: &Stored) -> ExternalCa {
        ExternalCa { issuer: roots.issuer.clone().unwrap(), roots_pem: roots.roots_pem.clone() }
    }

    /// A CA as cert-manager would keep it: generated here, handed over as a Secret's contents.
    fn cert_manager_ca(now: i64) -> Sim {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.now = now;
        sim.step();
        sim
    }

    #[test]
    fn an_external_ca_is_used_as_is_and_its_renewals_follow_at_once() {
        let mut upstream = cert_manager_ca(START);
        let mut sim = Sim::new(settings(), Source::External(external(&upstream.stored)));
        assert_eq!(check_external(START, &external(&upstream.stored)), Ok(()));
        assert_eq!(kinds(&sim.step()), ["adopt", "issuer"]);
        assert_eq!(sim.stored.issuer, upstream.stored.issuer);
        assert_eq!(sim.stored.root_key_pem, None);
        assert_eq!(sim.bundle_size(), 1);
        sim.now += 3600;
        assert_eq!(sim.plan(), [], "cert-manager renews it, not us");

        // cert-manager renewed the issuer under the same root.
        upstream.at(upstream.issuer()[0].validity.renew_at());
        sim.source = Source::External(external(&upstream.stored));
        assert_eq!(kinds(&sim.step()), ["issuer"]);
        assert_eq!(sim.stored.issuer, upstream.stored.issuer);
    }

    #[test]
    fn a_new_external_root_or_a_switch_of_ca_overlaps_like_a_rotation() {
        // From a generated CA to an external one.
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let generated_root = sim.roots();
        let upstream = cert_manager_ca(START + 100);
        sim.source = Source::External(external(&upstream.stored));
        assert_eq!(kinds(&sim.at(START + 100)), ["adopt"]);
        assert_eq!(certs(&sim.stored.previous_pem).unwrap(), generated_root);
        assert_eq!(sim.bundle_size(), 2);
        sim.now = START + 159;
        assert_eq!(sim.plan(), []);
        assert_eq!(kinds(&sim.at(START + 160)), ["issuer"]);
        assert_eq!(sim.stored.issuer, upstream.stored.issuer);
        assert_eq!(sim.stored.previous_until, Some(START + 160 + DAY));

        // And back: the external roots stay trusted while the generated issuer takes over.
        let mut back = Sim::new(settings(), Source::External(external(&upstream.stored)));
        back.at(START + 100);
        back.source = Source::Generate;
        assert_eq!(kinds(&back.at(START + 110)), ["root"]);
        assert_eq!(back.bundle_size(), 2);
        assert_eq!(kinds(&back.at(START + 170)), ["issuer"]);
        assert!(chains_to(&back.issuer(), &back.roots()));
    }

    #[test]
    fn an_unusable_external_ca_says_what_is_wrong() {
        let upstream = cert_manager_ca(START);
        let good = external(&upstream.stored);
        let with = |f: &dyn Fn(&mut ExternalCa)| {
            let mut ca = good.clone();
            f(&mut ca);
            check_external(START, &ca).unwrap_err()
        };
        assert!(with(&|ca| ca.roots_pem.clear()).contains("ca.crt holds no certificate"));
        assert!(with(&|ca| ca.issuer.cert_pem = "junk".into()).contains("tls.crt"));
        let leaf_like = cert_manager_ca(START);
        let err = with(&|ca| {
            ca.issuer.key_pem = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()
        });
        assert!(err.contains("tls.key is not the private key of tls.crt"), "{err}");
        let err = with(&|ca| {
            ca.issuer.key_pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n".into()
        });
        assert!(err.contains("privateKey.encoding: PKCS8"), "{err}");
        let err = with(&|ca| ca.roots_pem = leaf_like.stored.roots_pem.clone());
        assert!(err.contains("does not chain"), "{err}");
        let expired = check_external(START + 31 * DAY, &good).unwrap_err();
        assert!(expired.contains("not valid now"), "{expired}");
    }

    #[test]
    fn pem_round_trips_and_bundles_hold_each_root_once() {
        let mut sim = Sim::new(settings(), Source::Generate);
        sim.step();
        let root = sim.roots().remove(0);
        assert_eq!(certs(&root.pem()).unwrap(), std::slice::from_ref(&root));
        assert!(root.pem().starts_with("-----BEGIN CERTIFICATE-----\n") && !root.pem().contains('\r'));
        sim.stored.previous_pem = sim.stored.roots_pem.clone();
        assert_eq!(sim.bundle_size(), 1);
        assert!(certs("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
