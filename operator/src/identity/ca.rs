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

use rcgen::KeyUsagePurpose;

pub use crate::certs::x509::{Cert, KeyedCert, Validity, certs, chains_to};
use crate::certs::{
    Rotation,
    x509::{CaSpec, IssueError, backdate, issue_ca, join, lenient_certs, same_set, secs},
};

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
pub const RENEW_AT_PERCENT: u32 = 66;

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

impl From<IssueError> for CaError {
    fn from(err: IssueError) -> Self {
        match err {
            IssueError::Generate(err) => CaError::Generate(err),
            IssueError::UnusableSigner(why) => CaError::UnusableRoot(why),
        }
    }
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

/// The mesh CA's [`Rotation`]: where the CA comes from, its lifetimes, and when the bundle of
/// what is stored was last seen published everywhere (None: not yet, or it changed since).
#[derive(Debug, Clone, Copy)]
pub struct Ca<'a> {
    pub source: &'a Source,
    pub settings: &'a Settings,
    pub published_since: Option<i64>,
}

impl Rotation for Ca<'_> {
    type Stored = Stored;
    type Change = Change;
    type Error = CaError;

    fn plan(&self, now: i64, stored: &Stored) -> Vec<Change> {
        let Ca { source, settings, published_since } = *self;
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
                    Some(root)
                        if now >= renewal_time(root.validity, settings.trust_anchor_lifetime)
                            && stored.previous_pem.trim().is_empty() =>
                    {
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
                } else if now >= renewal_time(chain[0].validity, settings.issuer_lifetime) {
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
                changes.push(Change::DropPrevious(
                    "nothing the previous trust anchor signed can still be valid",
                ));
            } else if previous.iter().any(|p| now >= p.validity.not_after) {
                changes.push(Change::DropExpiredPrevious);
            } else if stored.previous_until.is_none() && under_current && !issuer_moves && !roots_changing {
                // The schedule is set when the issuer moves; it was lost (an edited Secret), so the
                // conservative bound is a full workload lifetime from now.
                changes
                    .push(Change::SchedulePreviousDrop(now.saturating_add(secs(settings.workload_lifetime))));
            }
        }
        changes
    }

    fn apply_change(&self, now: i64, next: &mut Stored, change: &Change) -> Result<(), CaError> {
        let Ca { source, settings, .. } = *self;
        match change {
            Change::NewRoot(_) => {
                retire_roots(now, next);
                let root = issue_root(now, settings.trust_anchor_lifetime)?;
                next.roots_pem = root.cert_pem;
                next.root_key_pem = Some(root.key_pem);
            }
            Change::AdoptExternalRoots => {
                let Source::External(external) = source else {
                    return Err(CaError::External("there is no external CA to adopt".to_owned()));
                };
                retire_roots(now, next);
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
                    Source::Generate => issue_issuer(now, next, settings.issuer_lifetime)?,
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
        Ok(())
    }

    /// The trust bundle: the current roots, then the previous ones, each once.
    fn bundle(stored: &Stored) -> String {
        let mut seen: Vec<Cert> = Vec::new();
        for cert in lenient_certs(&stored.roots_pem).into_iter().chain(lenient_certs(&stored.previous_pem)) {
            if !seen.iter().any(|s| s.der == cert.der) {
                seen.push(cert);
            }
        }
        join(&seen)
    }

    /// Renewals (of what the operator generates), expiries, the end of a propagation wait while
    /// an issuer waits for it, and when the previous roots leave.
    fn deadlines(&self, stored: &Stored) -> Vec<i64> {
        let Ca { source, settings, published_since } = *self;
        let roots = lenient_certs(&stored.roots_pem);
        let previous = lenient_certs(&stored.previous_pem);
        let issuer = usable_issuer(stored.issuer.as_ref());
        let generated = matches!(source, Source::Generate);
        let mut times = Vec::new();
        for root in &roots {
            times.push(root.validity.not_after);
            if generated {
                times.push(renewal_time(root.validity, settings.trust_anchor_lifetime));
            }
        }
        if let Some(chain) = &issuer {
            times.push(chain[0].validity.not_after);
            if generated {
                times.push(renewal_time(chain[0].validity, settings.issuer_lifetime));
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
        times
    }
}

/// What to do now, in order: [`Ca::plan`], for callers that hold the pieces apart.
pub fn plan(
    now: i64,
    stored: &Stored,
    source: &Source,
    settings: &Settings,
    published_since: Option<i64>,
) -> Vec<Change> {
    Ca { source, settings, published_since }.plan(now, stored)
}

/// Carries out `changes`, generating keys and certificates valid from `now`.
pub fn apply(
    now: i64,
    stored: &Stored,
    changes: &[Change],
    source: &Source,
    settings: &Settings,
) -> Result<Stored, CaError> {
    Ca { source, settings, published_since: None }.apply(now, stored, changes)
}

/// The trust bundle: the current roots, then the previous ones, each once.
pub fn bundle(stored: &Stored) -> String {
    Ca::bundle(stored)
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

/// When a certificate the operator generated is due for replacement: at `RENEW_AT_PERCENT` of
/// its lifetime, or of the lifetime the Mesh asks for now when that is shorter. So a lifetime
/// shortened in the Mesh, or a CA generated before the Mesh was there to read (with the default
/// lifetimes), takes effect at once rather than after the old lifetime; a longer one waits for
/// the next renewal.
fn renewal_time(validity: Validity, configured: Duration) -> i64 {
    // What a certificate issued now under `configured` would span, its backdate included.
    let span = secs(configured).saturating_add(backdate(configured));
    if validity.not_after - validity.not_before <= span {
        return validity.renew_at(RENEW_AT_PERCENT);
    }
    Validity { not_before: validity.not_before, not_after: validity.not_before.saturating_add(span) }
        .renew_at(RENEW_AT_PERCENT)
}

fn issue_root(now: i64, lifetime: Duration) -> Result<KeyedCert, CaError> {
    let spec = CaSpec {
        // Unique names, so that during a rotation chain builders never confuse the two roots.
        common_name: &format!("braid trust anchor {now}"),
        // Root -> issuer -> workload: one CA may sit below the root.
        path_len: 1,
        key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        lifetime,
        cap: None,
        random_serial: true,
        authority_key_identifier: false,
    };
    Ok(issue_ca(now, &spec, None)?)
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
    let signer = KeyedCert { cert_pem: root.pem(), key_pem: key_pem.to_owned() };
    let spec = CaSpec {
        common_name: &format!("braid issuer {now}"),
        // The issuer signs workload certificates only, never another CA.
        path_len: 0,
        key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        lifetime,
        // Never outlives its root: a certificate chain is only as valid as its shortest link.
        cap: Some(root.validity.not_after),
        random_serial: true,
        authority_key_identifier: true,
    };
    Ok(issue_ca(now, &spec, Some(&signer))?)
}

/// A CA generated now with the default lifetimes, for the tests of what uses one.
#[cfg(test)]
pub fn generated_for_tests() -> (Settings, Stored) {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let settings = Settings {
        trust_anchor_lifetime: Duration::from_secs(86400 * 365),
        issuer_lifetime: Duration::from_secs(86400 * 30),
        workload_lifetime: Duration::from_secs(86400),
        propagation: Duration::from_secs(60),
    };
    let changes = plan(now, &Stored::default(), &Source::Generate, &settings, None);
    let stored = apply(now, &Stored::default(), &changes, &Source::Generate, &settings).expect("a new CA");
    (settings, stored)
}

#[cfg(test)]
mod tests;
