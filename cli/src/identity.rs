//! `braid identity POD`: the workload certificate a pod's proxy presents to its peers, from the
//! proxy's `/identity` (through a port-forward, see proxy_admin.rs): its SPIFFE id, issuer,
//! validity, when the proxy renews it, and whether it chains to the trust bundle the mesh
//! publishes now in the pod's namespace (ConfigMap braid-trust-anchors, docs/identity.md).
//!
//! The chain is judged here, from its PEM, with the operator's own certificate code: not from the
//! fields the proxy reports beside it. `evaluate` is pure; `render_text` and `render_json` print.

use std::fmt::Write as _;

use braid_operator::certs::x509::{Cert, certs, chains_to};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::proxy_admin::{self, AdminError};

/// Where the mesh publishes its trust bundle in each meshed namespace, and under which key.
pub const TRUST_CONFIG_MAP: &str = "braid-trust-anchors";
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.crt";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the proxy's /identity is not the JSON braid identity reads ({0}); is the proxy older than this CLI? \
         `kubectl logs POD -c braid-proxy` names its version"
    )]
    Malformed(String),
    #[error("the certificate chain the proxy reports is not PEM certificates ({0})")]
    BadChain(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot read ConfigMap {namespace}/{TRUST_CONFIG_MAP}: {source}")]
    Bundle { namespace: String, source: kube::Error },
}

/// The proxy's /identity answer (its body) and the trust bundle of the pod's namespace.
pub async fn gather(client: &Client, namespace: &str, pod: &str) -> Result<(String, Bundle), GatherError> {
    let body = proxy_admin::get(client, namespace, pod, "/identity").await?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = maps
        .get_opt(TRUST_CONFIG_MAP)
        .await
        .map_err(|source| GatherError::Bundle { namespace: namespace.to_owned(), source })?;
    let pem = map.and_then(|map| map.data).and_then(|mut data| data.remove(TRUST_BUNDLE_KEY));
    let bundle = match pem {
        Some(pem) => Bundle::Found { namespace: namespace.to_owned(), pem },
        None => Bundle::Missing { namespace: namespace.to_owned() },
    };
    Ok((body, bundle))
}

/// The proxy's /identity answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub identity: String,
    /// PEM, the workload certificate first, then its issuers.
    pub chain: String,
    /// When the proxy asks for the next certificate, in seconds since the epoch.
    #[serde(default)]
    pub renew_at: Option<i64>,
}

pub fn parse(json: &str) -> Result<Answer, IdentityError> {
    serde_json::from_str(json).map_err(|e| IdentityError::Malformed(e.to_string()))
}

/// The trust bundle as read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bundle {
    /// The PEM of ConfigMap `namespace/braid-trust-anchors`, key ca-bundle.crt.
    Found { namespace: String, pem: String },
    /// No such ConfigMap, or no such key in it.
    Missing { namespace: String },
}

/// What `braid identity` reports; `-o json` prints it as it is (field names are stable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pod: String,
    /// The SPIFFE id in the certificate (its URI SAN): what peers and MeshPolicies see.
    pub identity: Option<String>,
    /// The identity the proxy asked for, when the certificate names another (it should not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_identity: Option<String>,
    pub issuer: String,
    pub serial_number: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub renew_at: Option<Timestamp>,
    /// Certificates in the chain, the workload's included.
    pub chain_length: usize,
    pub trust_bundle: String,
    pub chains_to_trust_bundle: bool,
    /// Which root it chains to, or why it does not.
    pub trust_detail: String,
    /// Whether the certificate is valid now, names a SPIFFE id and chains to the bundle.
    pub healthy: bool,
    /// What is wrong, each with what to do.
    pub problems: Vec<String>,
}

/// Judges the chain the proxy reports against `bundle` at `now`.
pub fn evaluate(
    pod: &str,
    answer: &Answer,
    bundle: &Bundle,
    now: Timestamp,
) -> Result<Report, IdentityError> {
    let chain = certs(&answer.chain).map_err(IdentityError::BadChain)?;
    let Some(leaf) = chain.first() else {
        return Err(IdentityError::BadChain("it holds no certificate".to_owned()));
    };
    let parsed =
        x509_parser::parse_x509_certificate(&leaf.der).map_err(|e| IdentityError::BadChain(e.to_string()))?.1;
    let at = |seconds: i64| Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH);
    let identity = braid_api::identity::spiffe_id_of(&leaf.der);
    let mut problems = Vec::new();
    let requested_identity = match &identity {
        None => {
            problems.push(format!(
                "the certificate names no SPIFFE id (URI SAN), so no peer accepts it; the proxy asked for {}: \
                 restart the pod (`kubectl delete pod …`) and read its proxy's log",
                answer.identity
            ));
            Some(answer.identity.clone())
        }
        Some(id) if *id != answer.identity => {
            problems.push(format!("the certificate names {id}, but the proxy asked for {}", answer.identity));
            Some(answer.identity.clone())
        }
        Some(_) => None,
    };
    let namespace = match bundle {
        Bundle::Found { namespace, .. } | Bundle::Missing { namespace } => namespace,
    };
    let bundle_name = format!("ConfigMap {namespace}/{TRUST_CONFIG_MAP}");
    let now_s = now.as_second();
    if now_s >= leaf.validity.not_after {
        problems.push(format!(
            "the certificate expired at {}: the proxy could not renew it; its log says why \
             (`kubectl logs POD -c braid-proxy`), and `braid check` whether the operator's identity endpoint runs",
            at(leaf.validity.not_after)
        ));
    } else if now_s < leaf.validity.not_before {
        problems.push(format!(
            "the certificate is valid only from {}: is this machine's clock behind?",
            at(leaf.validity.not_before)
        ));
    }
    let (chains, trust_detail) = match bundle {
        Bundle::Missing { namespace } => {
            problems.push(format!(
                "there is no {TRUST_CONFIG_MAP} ConfigMap with {TRUST_BUNDLE_KEY} in namespace {namespace}: the operator \
                 publishes it in namespaces labelled braid.dev/inject=enabled (`braid check` tells whether the operator runs)"
            ));
            (false, format!("no trust bundle in {namespace}"))
        }
        Bundle::Found { pem, .. } => match certs(pem) {
            Err(reason) => {
                problems.push(format!("{bundle_name} is not PEM certificates ({reason})"));
                (false, format!("{bundle_name} cannot be read"))
            }
            Ok(roots) if chains_to(&chain, &roots) => {
                let root = roots.iter().find(|root| {
                    chain.last().is_some_and(|last| last.der == root.der || last.signed_by(root))
                });
                let subject = root.map_or_else(String::new, subject_of);
                (true, format!("chains to {subject} in {bundle_name} ({} root(s))", roots.len()))
            }
            Ok(roots) => {
                problems.push(format!(
                    "the certificate does not chain to any of the {} root(s) of {bundle_name}: its issuer is not \
                     trusted by the mesh now, so peers refuse it. After a trust-anchor change, restart the pod \
                     (`kubectl rollout restart`) so its proxy gets a certificate from the current issuer",
                    roots.len()
                ));
                (false, format!("does not chain to {bundle_name} ({} root(s))", roots.len()))
            }
        },
    };
    Ok(Report {
        pod: pod.to_owned(),
        identity,
        requested_identity,
        issuer: parsed.issuer().to_string(),
        serial_number: parsed.raw_serial_as_string(),
        not_before: at(leaf.validity.not_before),
        not_after: at(leaf.validity.not_after),
        renew_at: answer.renew_at.map(at),
        chain_length: chain.len(),
        trust_bundle: bundle_name,
        chains_to_trust_bundle: chains,
        trust_detail,
        healthy: problems.is_empty(),
        problems,
    })
}

fn subject_of(cert: &Cert) -> String {
    x509_parser::parse_x509_certificate(&cert.der)
        .map_or_else(|_| String::new(), |(_, c)| c.subject().to_string())
}

/// `3d4h`, `16h48m`, `5m30s`, `12s`: the two largest units.
pub fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// One field a line; the trust line marked `√` or `×` (green or red with `color`), then the
/// problems, each with what to do.
pub fn render_text(report: &Report, now: Timestamp, color: bool) -> String {
    let relative = |t: Timestamp| {
        let d = t.as_second() - now.as_second();
        if d >= 0 { format!("in {}", span(d)) } else { format!("{} ago", span(d)) }
    };
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<14}{value}");
    };
    line("pod", report.pod.clone());
    line("identity", report.identity.clone().unwrap_or_else(|| "(none)".to_owned()));
    line("issuer", report.issuer.clone());
    line("serial", report.serial_number.clone());
    line("not before", report.not_before.to_string());
    line("not after", format!("{} (expires {})", report.not_after, relative(report.not_after)));
    line(
        "renewal",
        report
            .renew_at
            .map_or_else(|| "not reported by the proxy".to_owned(), |t| format!("{t} ({})", relative(t))),
    );
    line(
        "chain",
        format!(
            "{} certificate{} (the workload's{})",
            report.chain_length,
            if report.chain_length == 1 { "" } else { "s" },
            if report.chain_length > 1 { ", then its issuers" } else { " alone" }
        ),
    );
    let (mark, paint) = if report.chains_to_trust_bundle { ("√", "32") } else { ("×", "31") };
    let mark = if color { format!("\x1b[{paint}m{mark}\x1b[0m") } else { mark.to_owned() };
    line("trust", format!("{mark} {}", report.trust_detail));
    for problem in &report.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    out
}

pub fn render_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use braid_operator::certs::x509::{CaSpec, KeyedCert, issue_ca, set_validity, sign};
    use rcgen::{CertificateParams, KeyUsagePurpose, SanType, SerialNumber};

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn ca(name: &str, signer: Option<&KeyedCert>) -> KeyedCert {
        let spec = CaSpec {
            common_name: name,
            path_len: 1,
            key_usages: vec![KeyUsagePurpose::KeyCertSign],
            lifetime: Duration::from_secs(365 * 86_400),
            cap: None,
            random_serial: false,
            authority_key_identifier: false,
        };
        issue_ca(NOW - 86_400, &spec, signer).unwrap()
    }

    /// A workload certificate for `uri` from `issuer`, valid for a day from an hour ago.
    fn leaf(issuer: &KeyedCert, uri: Option<&str>) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uri.map(|u| SanType::URI(u.try_into().unwrap())).into_iter().collect();
        params.serial_number = Some(SerialNumber::from_slice(&[0x0a, 0x1b]));
        set_validity(&mut params, NOW - 3600, Duration::from_secs(86_400), None).unwrap();
        sign(params, Some(issuer)).unwrap().cert_pem
    }

    struct Mesh {
        root: KeyedCert,
        issuer: KeyedCert,
    }

    fn mesh() -> Mesh {
        let root = ca("braid root", None);
        let issuer = ca("braid issuer", Some(&root));
        Mesh { root, issuer }
    }

    fn answer(mesh: &Mesh, uri: Option<&str>) -> Answer {
        Answer {
            identity: ID.to_owned(),
            chain: leaf(&mesh.issuer, uri) + &mesh.issuer.cert_pem,
            renew_at: Some(NOW - 3600 + 60_480),
        }
    }

    fn found(pem: &str) -> Bundle {
        Bundle::Found { namespace: "shop".into(), pem: pem.to_owned() }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    #[test]
    fn a_current_certificate_that_chains_to_the_bundle_is_healthy() {
        let mesh = mesh();
        let report =
            evaluate("shop/web-1", &answer(&mesh, Some(ID)), &found(&mesh.root.cert_pem), now()).unwrap();
        assert!(report.healthy, "{report:#?}");
        let backdate = 60; // the kit backdates notBefore by a minute
        let text = render_text(&report, now(), false);
        let expected = format!(
            "\
pod           shop/web-1
identity      spiffe://cluster.local/ns/shop/sa/web
issuer        CN=braid issuer, O=braid
serial        0a:1b
not before    {}
not after     2027-01-16T07:00:00Z (expires in 23h0m)
renewal       2027-01-15T23:48:00Z (in 15h48m)
chain         2 certificates (the workload's, then its issuers)
trust         √ chains to CN=braid root, O=braid in ConfigMap shop/braid-trust-anchors (1 root(s))
",
            Timestamp::from_second(NOW - 3600 - backdate).unwrap()
        );
        insta_like(&text, &expected);
        let json: serde_json::Value = serde_json::from_str(&render_json(&report)).unwrap();
        assert_eq!(json["identity"], ID);
        assert_eq!(json["chainsToTrustBundle"], true);
        assert_eq!(json["notAfter"], "2027-01-16T07:00:00Z");
        assert_eq!(json["problems"], serde_json::json!([]));
        assert!(render_text(&report, now(), true).contains("\x1b[32m√\x1b[0m chains to"));
    }

    #[test]
    fn a_certificate_from_another_root_does_not_chain_and_says_what_to_do() {
        let mesh = mesh();
        let other = ca("another root", None);
        let report =
            evaluate("shop/web-1", &answer(&mesh, Some(ID)), &found(&other.cert_pem), now()).unwrap();
        assert!(!report.healthy && !report.chains_to_trust_bundle);
        let text = render_text(&report, now(), false);
        assert!(
            text.contains("trust         × does not chain to ConfigMap shop/braid-trust-anchors (1 root(s))"),
            "{text}"
        );
        assert!(
            text.contains("problem: the certificate does not chain")
                && text.contains("kubectl rollout restart"),
            "{text}"
        );
        // During a rotation the bundle holds both roots: either one will do.
        let both = other.cert_pem.clone() + &mesh.root.cert_pem;
        assert!(evaluate("shop/web-1", &answer(&mesh, Some(ID)), &found(&both), now()).unwrap().healthy);
    }

    #[test]
    fn expiry_a_missing_bundle_and_a_missing_spiffe_id_are_problems() {
        let mesh = mesh();
        let later = Timestamp::from_second(NOW + 2 * 86_400).unwrap();
        let expired =
            evaluate("shop/web-1", &answer(&mesh, Some(ID)), &found(&mesh.root.cert_pem), later).unwrap();
        assert!(!expired.healthy && expired.chains_to_trust_bundle);
        assert!(
            expired.problems[0].starts_with("the certificate expired at 2027-01-16T07:00:00Z"),
            "{:?}",
            expired.problems
        );
        assert!(render_text(&expired, later, false).contains("(expires 1d1h ago)"));

        let missing = Bundle::Missing { namespace: "shop".into() };
        let report = evaluate("shop/web-1", &answer(&mesh, Some(ID)), &missing, now()).unwrap();
        assert_eq!(report.trust_detail, "no trust bundle in shop");
        assert!(report.problems[0].contains("braid.dev/inject=enabled"), "{:?}", report.problems);

        let anonymous =
            evaluate("shop/web-1", &answer(&mesh, None), &found(&mesh.root.cert_pem), now()).unwrap();
        assert_eq!(anonymous.identity, None);
        assert_eq!(anonymous.requested_identity.as_deref(), Some(ID));
        assert!(anonymous.problems[0].starts_with("the certificate names no SPIFFE id"));
    }

    #[test]
    fn malformed_answers_chains_and_bundles_are_errors_not_panics() {
        for bad in ["", "{}", "[1]", r#"{"identity": 1, "chain": ""}"#] {
            assert!(
                parse(bad).unwrap_err().to_string().contains("is not the JSON braid identity reads"),
                "{bad}"
            );
        }
        let mesh = mesh();
        let bundle = found(&mesh.root.cert_pem);
        for chain in ["", "not pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            let answer = Answer { identity: ID.into(), chain: chain.into(), renew_at: None };
            let error = evaluate("shop/web-1", &answer, &bundle, now()).unwrap_err().to_string();
            assert!(
                error.starts_with("the certificate chain the proxy reports is not PEM certificates"),
                "{error}"
            );
        }
        let report = evaluate(
            "shop/web-1",
            &answer(&mesh, Some(ID)),
            &found("garbage\n-----BEGIN CERTIFICATE-----\n!!\n"),
            now(),
        );
        let report = report.unwrap();
        assert!(
            !report.healthy && report.problems[0].contains("is not PEM certificates"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn spans_show_two_units() {
        assert_eq!(span(12), "12s");
        assert_eq!(span(330), "5m30s");
        assert_eq!(span(16 * 3600 + 48 * 60 + 5), "16h48m");
        assert_eq!(span(-(3 * 86_400 + 4 * 3600)), "3d4h");
    }

    fn insta_like(actual: &str, expected: &str) {
        for (n, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "line {} of:\n{actual}", n + 1);
        }
        assert_eq!(actual.lines().count(), expected.lines().count(), "{actual}");
    }
}
