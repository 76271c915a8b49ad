//! The admission webhook's certificates as a pure state machine: given what is stored and the
//! time, which certificates to issue. No I/O here; times are Unix seconds so tests choose them.
//!
//! Rollover without failed admissions: the API server verifies the webhook against the caBundle
//! of the MutatingWebhookConfiguration, and picks a new bundle up a moment after it changes. So
//! a new CA first joins the bundle beside the old one, and only after `ca_propagation` does the
//! webhook get a serving certificate signed by it. The old CA stays in the bundle until it
//! expires. Renewing the serving certificate under the same CA changes nothing in the bundle.

use std::{net::IpAddr, time::Duration};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};

use crate::certs::x509::{self, CaSpec, IssueError, secs};
pub use crate::certs::{KeyedCert, Rotation, Validity};

/// What is stored (in the operator's Secrets) between reconciles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub ca: Option<KeyedCert>,
    /// The CA the current one replaced, kept in the bundle until it expires.
    pub previous_ca_pem: Option<String>,
    /// When the current CA was created by a rollover (Unix seconds); None for the first CA.
    pub ca_rotated_at: Option<i64>,
    pub serving: Option<KeyedCert>,
}

/// Lifetimes and names, from the Mesh and the operator's flags; the webhook's [`Rotation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cert_lifetime: Duration,
    pub ca_lifetime: Duration,
    /// Share of the lifetime after which a certificate is renewed, in percent.
    pub renew_at_percent: u32,
    /// How long a new CA sits in the bundle before a serving certificate it signed is used.
    pub ca_propagation: Duration,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

/// One thing to do, with the reason (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NewCa(&'static str),
    NewServing(&'static str),
    DropPreviousCa,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the stored CA cannot be used to sign ({0}); delete Secret braid-webhook-ca to start over")]
    UnusableCa(String),
}

impl From<IssueError> for CertError {
    fn from(err: IssueError) -> Self {
        match err {
            IssueError::Generate(err) => CertError::Generate(err),
            IssueError::UnusableSigner(why) => CertError::UnusableCa(why),
        }
    }
}

/// What a stored PEM certificate says about itself; None when it cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub validity: Validity,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

pub fn parse(pem: &str) -> Option<Parsed> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(octets));
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(octets));
                    }
                }
                _ => {}
            }
        }
    }
    Some(Parsed { validity, dns_names, ip_addresses })
}

/// Whether `cert_pem` carries a valid signature by the key of `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |pem: &str| parse_x509_pem(pem.as_bytes()).ok().map(|(_, p)| p);
    let (Some(cert), Some(ca)) = (parse(cert_pem), parse(ca_pem)) else { return false };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else { return false };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

impl Rotation for Settings {
    type Stored = Stored;
    type Change = Change;
    type Error = CertError;

    fn plan(&self, now: i64, stored: &Stored) -> Vec<Change> {
        let mut changes = Vec::new();
        let ca = stored.ca.as_ref().and_then(|ca| parse(&ca.cert_pem).map(|p| (ca, p)));
        let first_ca = ca.is_none();
        match &ca {
            None if stored.ca.is_some() => changes.push(Change::NewCa("the stored CA cannot be parsed")),
            None => changes.push(Change::NewCa("no CA yet")),
            Some((_, parsed)) if now >= parsed.validity.not_after => {
                changes.push(Change::NewCa("the CA expired"))
            }
            // A second rollover before the serving certificate moved to the current CA would drop
            // the CA that still signs it from the bundle; finish the first one.
            Some((ca, parsed))
                if now >= parsed.validity.renew_at(self.renew_at_percent)
                    && stored.serving.as_ref().is_none_or(|s| signed_by(&s.cert_pem, &ca.cert_pem)) =>
            {
                changes.push(Change::NewCa("the CA reached its renewal time"));
            }
            Some(_) => {}
        }
        // A serving certificate signed by a CA that joined the bundle less than `ca_propagation`
        // ago would be refused by an API server that has not seen that bundle yet.
        let rotating = !first_ca && !changes.is_empty();
        let propagated =
            !rotating && stored.ca_rotated_at.is_none_or(|at| now >= at + secs(self.ca_propagation));

        let serving = stored.serving.as_ref().and_then(|s| parse(&s.cert_pem).map(|p| (s, p)));
        let (reason, urgent) = match (&serving, &ca) {
            (None, _) => (Some("no serving certificate yet"), true),
            (Some((_, parsed)), _) if now >= parsed.validity.not_after => {
                (Some("the serving certificate expired"), true)
            }
            (Some((_, parsed)), _) if now >= parsed.validity.renew_at(self.renew_at_percent) => {
                (Some("the serving certificate reached its renewal time"), false)
            }
            (Some((_, parsed)), _) if !same_names(parsed, self) => {
                (Some("the webhook's names changed"), false)
            }
            (Some((serving, _)), Some((ca, _))) if !signed_by(&serving.cert_pem, &ca.cert_pem) => {
                (Some("the CA changed and the new bundle has had time to reach the API server"), false)
            }
            _ => (None, false),
        };
        // Nothing valid to serve with: waiting would not save an admission, so issue at once.
        if let Some(reason) = reason
            && (urgent || propagated)
        {
            changes.push(Change::NewServing(reason));
        }

        if let Some(previous) = &stored.previous_ca_pem
            && parse(previous).is_none_or(|p| now >= p.validity.not_after)
        {
            changes.push(Change::DropPreviousCa);
        }
        changes
    }

    fn apply_change(&self, now: i64, next: &mut Stored, change: &Change) -> Result<(), CertError> {
        match change {
            Change::NewCa(_) => {
                let ca = issue_ca(now, self.ca_lifetime)?;
                if let Some(old) = next.ca.take().filter(|old| parse(&old.cert_pem).is_some()) {
                    next.previous_ca_pem = Some(old.cert_pem);
                    next.ca_rotated_at = Some(now);
                }
                next.ca = Some(ca);
            }
            Change::NewServing(_) => {
                let ca =
                    next.ca.as_ref().ok_or_else(|| CertError::UnusableCa("there is no CA".to_owned()))?;
                next.serving = Some(issue_serving(now, ca, self)?);
            }
            Change::DropPreviousCa => next.previous_ca_pem = None,
        }
        Ok(())
    }

    /// The CAs the API server must trust: the current one, then the previous one during a
    /// rollover.
    fn bundle(stored: &Stored) -> String {
        let mut pem = String::new();
        for cert in stored.ca.as_ref().map(|c| &c.cert_pem).into_iter().chain(stored.previous_ca_pem.as_ref())
        {
            pem.push_str(cert.trim_end());
            pem.push('\n');
        }
        pem
    }

    /// Renewals, the end of a propagation wait, and the previous CA's expiry.
    fn deadlines(&self, stored: &Stored) -> Vec<i64> {
        let renewals = [stored.ca.as_ref(), stored.serving.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|c| parse(&c.cert_pem))
            .map(|p| p.validity.renew_at(self.renew_at_percent));
        let propagation = stored.ca_rotated_at.map(|at| at + secs(self.ca_propagation));
        let previous_expiry = stored.previous_ca_pem.as_deref().and_then(parse).map(|p| p.validity.not_after);
        renewals.chain(propagation).chain(previous_expiry).collect()
    }
}

fn same_names(parsed: &Parsed, settings: &Settings) -> bool {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let mut ips = parsed.ip_addresses.clone();
    let mut wanted_ips = settings.ip_addresses.clone();
    ips.sort();
    wanted_ips.sort();
    sorted(parsed.dns_names.clone()) == sorted(settings.dns_names.clone()) && ips == wanted_ips
}

fn issue_ca(now: i64, lifetime: Duration) -> Result<KeyedCert, CertError> {
    let spec = CaSpec {
        common_name: &format!("braid-webhook-ca-{now}"),
        path_len: 0,
        key_usages: vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ],
        lifetime,
        cap: None,
        random_serial: false,
        authority_key_identifier: false,
    };
    Ok(x509::issue_ca(now, &spec, None)?)
}

fn issue_serving(now: i64, ca: &KeyedCert, settings: &Settings) -> Result<KeyedCert, CertError> {
    let mut params = CertificateParams::new(settings.dns_names.clone())?;
    params.subject_alt_names.extend(settings.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name =
        x509::name(settings.dns_names.first().map_or("braid-webhook", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    x509::set_validity(&mut params, now, settings.cert_lifetime, None)?;
    Ok(x509::sign(params, Some(ca))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn settings() -> Settings {
        Settings {
            cert_lifetime: Duration::from_secs(90 * 24 * 3600),
            ca_lifetime: Duration::from_secs(365 * 24 * 3600),
            renew_at_percent: 66,
            ca_propagation: Duration::from_secs(60),
            dns_names: vec!["braid-webhook.braid-system.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    /// Runs plan+apply like the controller does.
    fn step(now: i64, stored: &Stored) -> (Vec<Change>, Stored) {
        let changes = settings().plan(now, stored);
        let next = settings().apply(now, stored, &changes).unwrap();
        (changes, next)
    }

    fn kinds(changes: &[Change]) -> Vec<&'static str> {
        changes
            .iter()
            .map(|c| match c {
                Change::NewCa(_) => "ca",
                Change::NewServing(_) => "serving",
                Change::DropPreviousCa => "drop",
            })
            .collect()
    }

    #[test]
    fn first_start_issues_a_ca_and_a_serving_certificate_it_signed() {
        let (changes, stored) = step(1_000_000, &Stored::default());
        assert_eq!(kinds(&changes), ["ca", "serving"]);
        let ca = stored.ca.as_ref().unwrap();
        let serving = stored.serving.as_ref().unwrap();
        assert!(signed_by(&serving.cert_pem, &ca.cert_pem));
        let parsed = parse(&serving.cert_pem).unwrap();
        assert_eq!(parsed.dns_names, ["braid-webhook.braid-system.svc"]);
        assert_eq!(parsed.ip_addresses, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(parsed.validity.not_after - 1_000_000, 90 * 24 * HOUR);
        assert_eq!(parsed.validity.not_before, 1_000_000 - 60);
        assert_eq!(Settings::bundle(&stored).matches("BEGIN CERTIFICATE").count(), 1);
        // Nothing more to do until the renewal time.
        assert_eq!(settings().plan(1_000_000 + HOUR, &stored), []);
    }

    #[test]
    fn the_serving_certificate_renews_at_two_thirds_under_the_same_ca() {
        let start = 1_000_000;
        let (_, stored) = step(start, &Stored::default());
        let renew_at = parse(&stored.serving.as_ref().unwrap().cert_pem).unwrap().validity.renew_at(66);
        assert_eq!(settings().next_change(start, &stored), Some(renew_at));
        assert_eq!(settings().plan(renew_at - 1, &stored), []);
        let (changes, renewed) = step(renew_at, &stored);
        assert_eq!(kinds(&changes), ["serving"]);
        assert_eq!(renewed.ca, stored.ca, "same CA, so the bundle does not change");
        assert_ne!(renewed.serving, stored.serving);
        assert_eq!(Settings::bundle(&renewed), Settings::bundle(&stored));
    }

    /// Steps through every planned change from `from` up to `until`, as the controller would.
    fn run_until(from: i64, until: i64, mut stored: Stored) -> Stored {
        let mut now = from;
        while let Some(next) = settings().next_change(now, &stored).filter(|t| *t < until) {
            now = next;
            stored = step(now, &stored).1;
        }
        stored
    }

    #[test]
    fn a_ca_rollover_trusts_both_cas_before_the_new_one_signs_the_serving_certificate() {
        let start = 1_000_000;
        let (_, first) = step(start, &Stored::default());
        let old_ca = first.ca.clone().unwrap();
        let ca_renew = parse(&old_ca.cert_pem).unwrap().validity.renew_at(66);
        // The serving certificate was renewed on schedule up to the CA's renewal time.
        let stored = run_until(start, ca_renew, first);
        assert_eq!(stored.ca.as_ref(), Some(&old_ca));

        // Phase 1: a new CA joins the bundle; the webhook keeps its certificate from the old one.
        let (changes, rotated) = step(ca_renew, &stored);
        assert_eq!(kinds(&changes), ["ca"]);
        assert_eq!(rotated.previous_ca_pem.as_deref(), Some(old_ca.cert_pem.as_str()));
        assert_eq!(rotated.serving, stored.serving);
        assert_eq!(Settings::bundle(&rotated).matches("BEGIN CERTIFICATE").count(), 2);

        // Phase 2: only once the bundle had time to propagate is the serving certificate reissued.
        assert_eq!(settings().plan(ca_renew + 59, &rotated), []);
        assert_eq!(settings().next_change(ca_renew, &rotated), Some(ca_renew + 60));
        let (changes, reissued) = step(ca_renew + 60, &rotated);
        assert_eq!(kinds(&changes), ["serving"]);
        let serving = reissued.serving.as_ref().unwrap();
        assert!(signed_by(&serving.cert_pem, &reissued.ca.as_ref().unwrap().cert_pem));
        assert!(!signed_by(&serving.cert_pem, &old_ca.cert_pem));

        // Phase 3: the old CA leaves the bundle when it expires.
        let old_expiry = parse(&old_ca.cert_pem).unwrap().validity.not_after;
        let done = run_until(ca_renew + 60, old_expiry + 1, reissued);
        assert!(done.previous_ca_pem.is_none());
        assert_eq!(Settings::bundle(&done).matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn a_renewal_due_during_the_propagation_window_waits_for_it() {
        let start = 1_000_000;
        let (_, first) = step(start, &Stored::default());
        let ca_renew = parse(&first.ca.as_ref().unwrap().cert_pem).unwrap().validity.renew_at(66);
        let mut rotated = step(ca_renew, &run_until(start, ca_renew, first)).1;
        // Pretend the serving certificate is due right now, inside the window.
        let serving_renew = parse(&rotated.serving.as_ref().unwrap().cert_pem).unwrap().validity.renew_at(66);
        rotated.ca_rotated_at = Some(serving_renew - 10);
        assert_eq!(settings().plan(serving_renew, &rotated), [], "waits until the bundle propagated");
        assert_eq!(kinds(&settings().plan(serving_renew + 50, &rotated)), ["serving"]);
    }

    #[test]
    fn short_lifetimes_renew_ahead_not_at_birth() {
        let mut short = settings();
        short.cert_lifetime = Duration::from_secs(20);
        short.ca_lifetime = Duration::from_secs(40);
        short.renew_at_percent = 50;
        let changes = short.plan(1_000, &Stored::default());
        let stored = short.apply(1_000, &Stored::default(), &changes).unwrap();
        assert_eq!(short.plan(1_000, &stored), [], "nothing is due right after issuing");
        let serving = parse(&stored.serving.as_ref().unwrap().cert_pem).unwrap().validity;
        assert_eq!((serving.not_before, serving.renew_at(50)), (998, 1_009));
    }

    #[test]
    fn a_second_ca_rollover_waits_until_the_first_one_finished() {
        let start = 1_000_000;
        let (_, first) = step(start, &Stored::default());
        let ca_renew = parse(&first.ca.as_ref().unwrap().cert_pem).unwrap().validity.renew_at(66);
        let rotated = step(ca_renew, &run_until(start, ca_renew, first)).1;
        // The new CA is itself due long before its serving certificate moved over (a clock jump):
        // the CA that still signs the serving certificate must stay trusted.
        let new_ca_renew = parse(&rotated.ca.as_ref().unwrap().cert_pem).unwrap().validity.renew_at(66);
        let mut frozen = rotated.clone();
        frozen.ca_rotated_at = Some(new_ca_renew);
        let changes = settings().plan(new_ca_renew, &frozen);
        assert!(!kinds(&changes).contains(&"ca"), "{changes:?}");
    }

    #[test]
    fn an_expired_serving_certificate_is_replaced_at_once() {
        let start = 1_000_000;
        let (_, stored) = step(start, &Stored::default());
        let expiry = parse(&stored.serving.as_ref().unwrap().cert_pem).unwrap().validity.not_after;
        let mut late = stored.clone();
        late.ca_rotated_at = Some(expiry - 1);
        assert_eq!(kinds(&settings().plan(expiry, &late)), ["serving"]);
    }

    #[test]
    fn changed_names_reissue_and_garbage_is_replaced() {
        let (_, stored) = step(1_000_000, &Stored::default());
        let mut other = settings();
        other.dns_names.push("braid-webhook.braid-system.svc.cluster.local".into());
        assert_eq!(kinds(&other.plan(1_000_000, &stored)), ["serving"]);

        let corrupt = Stored {
            ca: Some(KeyedCert { cert_pem: "not a certificate".into(), key_pem: "nor a key".into() }),
            ..Stored::default()
        };
        let (changes, fixed) = step(1_000_000, &corrupt);
        assert_eq!(kinds(&changes), ["ca", "serving"]);
        assert!(fixed.previous_ca_pem.is_none(), "an unparsable CA is not carried in the bundle");
    }

    #[test]
    fn a_ca_key_that_does_not_parse_is_a_clear_error() {
        let (_, stored) = step(1_000_000, &Stored::default());
        let mut broken = stored.clone();
        broken.ca.as_mut().unwrap().key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        broken.serving = None;
        let err = settings().apply(1_000_000, &broken, &[Change::NewServing("test")]).unwrap_err();
        assert!(err.to_string().contains("delete Secret braid-webhook-ca"), "{err}");
    }
}
