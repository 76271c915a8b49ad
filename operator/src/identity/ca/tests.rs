use std::collections::HashMap;

use super::*;
use crate::identity::{
    authority::{Authority, AuthoritySource},
    csr::CheckedCsr,
};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};

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
        Ca { source: &self.source, settings: &self.settings, published_since: self.since() }
            .next_change(self.now, &self.stored)
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
    let roots: Vec<Cert> = certs(bundle).unwrap().into_iter().filter(|r| r.validity.valid_at(now)).collect();
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
    let renew_at = sim.issuer()[0].validity.renew_at(RENEW_AT_PERCENT);
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
    let rotate_at = old_root.validity.renew_at(RENEW_AT_PERCENT);
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
    let rotate_at = sim.roots()[0].validity.renew_at(RENEW_AT_PERCENT);
    sim.run_until(rotate_at);
    sim.at(rotate_at);
    // The issuer reaches its renewal time inside the window: a renewal under the old root
    // would be pointless, one under the new root premature.
    sim.now = sim.issuer()[0].validity.renew_at(RENEW_AT_PERCENT).max(rotate_at + 10);
    sim.published = Some((bundle(&sim.stored), sim.now - 10));
    assert_eq!(sim.plan(), []);
    sim.now += 50;
    assert_eq!(kinds(&sim.plan()), ["issuer"]);
}

#[test]
fn after_a_restart_the_propagation_wait_starts_over() {
    let mut sim = Sim::new(settings(), Source::Generate);
    sim.step();
    let rotate_at = sim.roots()[0].validity.renew_at(RENEW_AT_PERCENT);
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
    let rotate_at = sim.roots()[0].validity.renew_at(RENEW_AT_PERCENT);
    sim.run_until(rotate_at);
    sim.at(rotate_at);
    // The new root is itself due (a clock jump) while the old one is still trusted.
    sim.now = sim.roots()[0].validity.renew_at(RENEW_AT_PERCENT);
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
    let rotate_at = sim.roots()[0].validity.renew_at(RENEW_AT_PERCENT);
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
    upstream.at(upstream.issuer()[0].validity.renew_at(RENEW_AT_PERCENT));
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
fn bundles_hold_each_root_once() {
    let mut sim = Sim::new(settings(), Source::Generate);
    sim.step();
    sim.stored.previous_pem = sim.stored.roots_pem.clone();
    assert_eq!(sim.bundle_size(), 1);
}

#[test]
fn a_lifetime_shortened_in_the_mesh_takes_effect_without_waiting_out_the_old_one() {
    // Generated with the default lifetimes (as when the CA is made before the Mesh could be
    // read), then the Mesh asks for short ones.
    let mut sim = Sim::new(settings(), Source::Generate);
    sim.step();
    let old_root = sim.roots().remove(0);
    sim.settings = short();
    // Two thirds of the span of an issuer of 300 s (30 s backdated), from the old one's notBefore.
    let issuer_due = START - 60 + 330 * 66 / 100;
    assert_eq!(sim.next_change(), Some(issuer_due));
    sim.now = issuer_due - 1;
    assert_eq!(sim.plan(), []);
    assert_eq!(kinds(&sim.at(issuer_due)), ["issuer"], "under the same root: at once");
    assert_eq!(sim.issuer()[0].validity.not_after, issuer_due + 300);
    assert_eq!(sim.roots(), std::slice::from_ref(&old_root));

    // The root's rotation starts at two thirds of the 900 s asked for, not of its year.
    let root_due = START - 60 + 960 * 66 / 100;
    sim.run_until(root_due);
    assert_eq!(sim.roots(), std::slice::from_ref(&old_root));
    assert_eq!(kinds(&sim.at(root_due)), ["root"]);
    assert_eq!(sim.bundle_size(), 2, "the old root stays trusted beside the new one");
    assert_eq!(sim.roots()[0].validity.not_after, root_due + 900);
}

#[test]
fn a_lifetime_lengthened_in_the_mesh_waits_for_the_next_renewal() {
    let mut sim = Sim::new(short(), Source::Generate);
    sim.step();
    let issuer_due = sim.issuer()[0].validity.renew_at(RENEW_AT_PERCENT);
    sim.settings = settings();
    assert_eq!(sim.next_change(), Some(issuer_due));
    assert_eq!(kinds(&sim.at(issuer_due)), ["issuer"]);
    // 30 days asked for now, cut at the end of the (short-lived) root, as every issuer is.
    assert_eq!(sim.issuer()[0].validity.not_after, sim.roots()[0].validity.not_after);
}
