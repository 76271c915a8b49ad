//! Inbound authorization, as a MeshPolicy says it: the mTLS mode decides which connections are
//! accepted at all; with a policy, a request is allowed only when a rule allows it (default deny).

use braid_api::config::{MtlsMode, OperationConfig, PolicyConfig, SourceConfig};
use braid_api::identity::SpiffeId;
use http::Method;

/// Who is calling: the SPIFFE id from an mTLS handshake, or nobody for plaintext.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub identity: Option<&'a str>,
}

/// Why a connection or request was denied: the text of the reason header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// Whether a connection may be accepted at all. `http`: the connection speaks HTTP, so its
/// requests are checked one by one (a kubelet probe may then pass under STRICT).
pub fn admit_connection(policy: Option<&PolicyConfig>, client: Client<'_>, http: bool) -> Result<(), Denied> {
    match policy {
        Some(policy) if http && !policy.probes.is_empty() => Ok(()),
        Some(policy) if policy.mtls == MtlsMode::Strict && client.identity.is_none() => {
            Err(Denied("the workload accepts only mTLS from meshed clients (mtls: STRICT)".into()))
        }
        _ => Ok(()),
    }
}

/// Whether a request (or, with no method and path, an opaque TCP connection) is allowed.
pub fn authorize(
    policy: Option<&PolicyConfig>,
    client: Client<'_>,
    method: Option<&Method>,
    path: Option<&str>,
    port: u16,
) -> Result<(), Denied> {
    let Some(policy) = policy else { return Ok(()) };
    if client.identity.is_none()
        && method == Some(&Method::GET)
        && path.is_some_and(|path| policy.probes.iter().any(|probe| probe.port == port && probe.path == path))
    {
        return Ok(());
    }
    admit_connection(Some(policy), client, false)?;
    let allowed = policy.rules.iter().any(|rule| {
        let from = rule.from.is_empty() || rule.from.iter().any(|source| source_matches(source, client));
        let to = rule.to.is_empty()
            || rule.to.iter().any(|operation| operation_matches(operation, method, path, port));
        from && to
    });
    if allowed {
        return Ok(());
    }
    let who = client.identity.unwrap_or("an unauthenticated client");
    Err(Denied(match (method, path) {
        (Some(method), Some(path)) => format!("no rule of the policy allows {who} to {method} {path}"),
        _ => format!("no rule of the policy allows {who} to connect to port {port}"),
    }))
}

fn source_matches(source: &SourceConfig, client: Client<'_>) -> bool {
    let Some(identity) = client.identity else { return false };
    if let Some(expected) = &source.identity {
        return expected == identity;
    }
    let Some(id) = SpiffeId::parse(identity) else { return false };
    if let Some(account) = &source.service_account {
        return id.namespace == account.namespace && id.service_account == account.name;
    }
    source.namespace.as_ref().is_some_and(|namespace| *namespace == id.namespace)
}

fn operation_matches(
    operation: &OperationConfig,
    method: Option<&Method>,
    path: Option<&str>,
    port: u16,
) -> bool {
    let port_ok = operation.ports.is_empty() || operation.ports.contains(&port);
    // Path and method rules are about HTTP: an opaque connection never fits one that has them.
    let method_ok = operation.methods.is_empty()
        || method
            .is_some_and(|method| operation.methods.iter().any(|m| m.eq_ignore_ascii_case(method.as_str())));
    let path_ok = operation.paths.is_empty()
        || path.is_some_and(|path| {
            operation.paths.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == pattern,
            })
        });
    port_ok && method_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> PolicyConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const FRONTEND: Client<'static> = Client { identity: Some("spiffe://td/ns/shop/sa/frontend") };
    const BATCH: Client<'static> = Client { identity: Some("spiffe://td/ns/jobs/sa/batch") };
    const PLAIN: Client<'static> = Client { identity: None };

    #[test]
    fn strict_refuses_plaintext_and_permissive_admits_it() {
        let strict = policy("mtls: STRICT\nrules: [{}]");
        assert!(admit_connection(Some(&strict), PLAIN, false).unwrap_err().0.contains("STRICT"));
        assert!(admit_connection(Some(&strict), FRONTEND, false).is_ok());
        let permissive = policy("mtls: PERMISSIVE\nrules: [{}]");
        assert!(authorize(Some(&permissive), PLAIN, Some(&Method::GET), Some("/"), 80).is_ok());
        assert!(authorize(None, PLAIN, Some(&Method::GET), Some("/"), 80).is_ok(), "no policy: no checks");
    }

    #[test]
    fn a_selected_workload_is_default_deny() {
        let deny_all = policy("mtls: STRICT\nrules: []");
        let denied = authorize(Some(&deny_all), FRONTEND, Some(&Method::GET), Some("/x"), 80).unwrap_err();
        assert_eq!(denied.0, "no rule of the policy allows spiffe://td/ns/shop/sa/frontend to GET /x");
    }

    #[test]
    fn allows_by_identity_namespace_and_route() {
        let policy = policy(
            r#"
rules:
  - from: [{ serviceAccount: { namespace: shop, name: frontend } }]
    to: [{ paths: ["/api/*"], methods: [GET] }]
  - from: [{ namespace: jobs }]
    to: [{ paths: [/healthz] }]
  - from: [{ identity: "spiffe://td/ns/ops/sa/admin" }]
"#,
        );
        let get = Some(&Method::GET);
        assert!(authorize(Some(&policy), FRONTEND, get, Some("/api/items"), 80).is_ok());
        assert!(authorize(Some(&policy), FRONTEND, Some(&Method::POST), Some("/api/items"), 80).is_err());
        assert!(authorize(Some(&policy), FRONTEND, get, Some("/admin"), 80).is_err());
        assert!(authorize(Some(&policy), BATCH, get, Some("/healthz"), 80).is_ok());
        assert!(authorize(Some(&policy), BATCH, get, Some("/api/items"), 80).is_err());
        let admin = Client { identity: Some("spiffe://td/ns/ops/sa/admin") };
        assert!(authorize(Some(&policy), admin, Some(&Method::DELETE), Some("/anything"), 80).is_ok());
        // Opaque TCP: only rules without HTTP conditions can allow it.
        assert!(authorize(Some(&policy), FRONTEND, None, None, 5432).is_err());
        assert!(authorize(Some(&policy), admin, None, None, 5432).is_ok());
    }

    #[test]
    fn the_kubelets_probes_pass_strict_and_nothing_else_plaintext_does() {
        let strict = policy(
            "mtls: STRICT\nrules: [{from: [{namespace: shop}]}]\nprobes: [{port: 8080, path: /healthz}]",
        );
        assert!(admit_connection(Some(&strict), PLAIN, true).is_ok(), "HTTP is checked per request");
        assert!(admit_connection(Some(&strict), PLAIN, false).is_err(), "opaque plaintext is still refused");
        let get = Method::GET;
        assert!(authorize(Some(&strict), PLAIN, Some(&get), Some("/healthz"), 8080).is_ok());
        assert!(authorize(Some(&strict), PLAIN, Some(&get), Some("/healthz"), 9090).is_err(), "another port");
        assert!(
            authorize(Some(&strict), PLAIN, Some(&get), Some("/healthz/x"), 8080).is_err(),
            "exact path only"
        );
        assert!(
            authorize(Some(&strict), PLAIN, Some(&Method::POST), Some("/healthz"), 8080).is_err(),
            "GET only"
        );
        assert!(
            authorize(Some(&strict), PLAIN, Some(&get), Some("/orders"), 8080)
                .unwrap_err()
                .0
                .contains("STRICT")
        );
    }
}
