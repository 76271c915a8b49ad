//! Inbound authorization, as a MeshPolicy says it: the mTLS mode decides which connections are
//! accepted at all; with a policy, a request is allowed only when a rule allows it (default deny).

use braid_api::config::{MtlsMode, OperationConfig, PolicyConfig, SourceConfig};
use braid_api::identity::SpiffeIdRef;
use http::Method;

/// Who is calling: the SPIFFE id from an mTLS handshake, or nobody for plaintext.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub identity: Option<&'a str>,
    /// This mesh's trust domain (the one in this proxy's own SPIFFE id). Any root the mesh
    /// trusts may also sign for other trust domains (a shared issuer), so an identity of another
    /// trust domain matches no source, whatever its namespace and service account.
    pub trust_domain: Option<&'a str>,
}

/// An HTTP request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a Method,
    /// The path in normal form (`http::path`): what path rules match.
    pub path: &'a str,
    /// The path and query exactly as the client sent them: what a kubelet probe must equal.
    pub target: &'a str,
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

/// What let a request or connection through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// No policy: every client may connect.
    NoPolicy,
    /// The kubelet's probe.
    Probe,
    /// The rule at this index of the policy.
    Rule(usize),
}

/// Whether a request (or, with none, an opaque TCP connection) is allowed, and by what.
pub fn authorize(
    policy: Option<&PolicyConfig>,
    client: Client<'_>,
    request: Option<HttpRequest<'_>>,
    port: u16,
) -> Result<Allowed, Denied> {
    let Some(policy) = policy else { return Ok(Allowed::NoPolicy) };
    if client.identity.is_none()
        && let Some(request) = request
        && request.method == Method::GET
        && policy.probes.iter().any(|probe| probe.port == port && is_probe(&probe.path, request.target))
    {
        return Ok(Allowed::Probe);
    }
    admit_connection(Some(policy), client, false)?;
    let (method, path) = match request {
        Some(request) => (Some(request.method), Some(request.path)),
        None => (None, None),
    };
    let allowed = policy.rules.iter().position(|rule| {
        let from = rule.from.is_empty() || rule.from.iter().any(|source| source_matches(source, client));
        let to = rule.to.is_empty()
            || rule.to.iter().any(|operation| operation_matches(operation, method, path, port));
        from && to
    });
    if let Some(index) = allowed {
        return Ok(Allowed::Rule(index));
    }
    let who = client.identity.unwrap_or("an unauthenticated client");
    Err(Denied(match (method, path) {
        (Some(method), Some(path)) => format!("no rule of the policy allows {who} to {method} {path}"),
        _ => format!("no rule of the policy allows {who} to connect to port {port}"),
    }))
}

/// Whether a request target is the kubelet's request for a probe's path: exactly, query
/// included, since the kubelet sends the path as the pod spec gives it (an empty one as `/`).
fn is_probe(probe_path: &str, target: &str) -> bool {
    let expected = if probe_path.is_empty() { "/" } else { probe_path };
    expected == target
}

fn source_matches(source: &SourceConfig, client: Client<'_>) -> bool {
    let Some(identity) = client.identity else { return false };
    let Some(id) = SpiffeIdRef::parse(identity) else { return false };
    // Unknown (no identity of our own): nothing can be matched safely.
    if client.trust_domain != Some(id.trust_domain) {
        return false;
    }
    if let Some(expected) = &source.identity {
        return expected == identity;
    }
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

    const fn client(identity: Option<&'static str>) -> Client<'static> {
        Client { identity, trust_domain: Some("td") }
    }

    const FRONTEND: Client<'static> = client(Some("spiffe://td/ns/shop/sa/frontend"));
    const BATCH: Client<'static> = client(Some("spiffe://td/ns/jobs/sa/batch"));
    const PLAIN: Client<'static> = client(None);

    /// A request as sent: its path is its target without the query (already normal here).
    fn http<'a>(method: &'a Method, target: &'a str) -> Option<HttpRequest<'a>> {
        let path = target.split('?').next().unwrap_or(target);
        Some(HttpRequest { method, path, target })
    }

    #[test]
    fn strict_refuses_plaintext_and_permissive_admits_it() {
        let strict = policy("mtls: STRICT\nrules: [{}]");
        assert!(admit_connection(Some(&strict), PLAIN, false).unwrap_err().0.contains("STRICT"));
        assert!(admit_connection(Some(&strict), FRONTEND, false).is_ok());
        let permissive = policy("mtls: PERMISSIVE\nrules: [{}]");
        assert!(authorize(Some(&permissive), PLAIN, http(&Method::GET, "/"), 80).is_ok());
        assert_eq!(
            authorize(None, PLAIN, http(&Method::GET, "/"), 80),
            Ok(Allowed::NoPolicy),
            "no policy: no checks"
        );
    }

    #[test]
    fn a_selected_workload_is_default_deny() {
        let deny_all = policy("mtls: STRICT\nrules: []");
        let denied = authorize(Some(&deny_all), FRONTEND, http(&Method::GET, "/x"), 80).unwrap_err();
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
        let get = &Method::GET;
        assert!(authorize(Some(&policy), FRONTEND, http(get, "/api/items"), 80).is_ok());
        assert!(authorize(Some(&policy), FRONTEND, http(&Method::POST, "/api/items"), 80).is_err());
        assert!(authorize(Some(&policy), FRONTEND, http(get, "/admin"), 80).is_err());
        assert_eq!(
            authorize(Some(&policy), BATCH, http(get, "/healthz"), 80),
            Ok(Allowed::Rule(1)),
            "the second rule"
        );
        assert!(authorize(Some(&policy), BATCH, http(get, "/api/items"), 80).is_err());
        let admin = client(Some("spiffe://td/ns/ops/sa/admin"));
        assert!(authorize(Some(&policy), admin, http(&Method::DELETE, "/anything"), 80).is_ok());
        // Opaque TCP: only rules without HTTP conditions can allow it.
        assert!(authorize(Some(&policy), FRONTEND, None, 5432).is_err());
        assert!(authorize(Some(&policy), admin, None, 5432).is_ok());
    }

    #[test]
    fn an_identity_of_another_trust_domain_matches_no_source() {
        let policy = policy(
            r#"
rules:
  - from: [{ serviceAccount: { namespace: shop, name: frontend } }, { namespace: jobs }]
  - from: [{ identity: "spiffe://other/ns/ops/sa/admin" }]
"#,
        );
        let get = &Method::GET;
        assert!(authorize(Some(&policy), FRONTEND, http(get, "/"), 80).is_ok());
        assert!(authorize(Some(&policy), BATCH, http(get, "/"), 80).is_ok());
        for foreign in [
            "spiffe://other/ns/shop/sa/frontend",
            "spiffe://other/ns/jobs/sa/batch",
            "spiffe://other/ns/ops/sa/admin",
        ] {
            let denied = authorize(Some(&policy), client(Some(foreign)), http(get, "/"), 80);
            assert!(denied.is_err(), "{foreign} matched a source of a mesh whose trust domain is td");
            assert!(authorize(Some(&policy), client(Some(foreign)), None, 80).is_err(), "{foreign} over TCP");
        }
        let unknown = Client { identity: FRONTEND.identity, trust_domain: None };
        assert!(authorize(Some(&policy), unknown, http(get, "/"), 80).is_err(), "no trust domain: no match");
    }

    #[test]
    fn the_kubelets_probes_pass_strict_and_nothing_else_plaintext_does() {
        let strict = policy(
            "mtls: STRICT\nrules: [{from: [{namespace: shop}]}]\nprobes: [{port: 8080, path: /healthz}, {port: 8080, path: \"/ready?full=1\"}, {port: 9000, path: \"\"}]",
        );
        assert!(admit_connection(Some(&strict), PLAIN, true).is_ok(), "HTTP is checked per request");
        assert!(admit_connection(Some(&strict), PLAIN, false).is_err(), "opaque plaintext is still refused");
        let get = &Method::GET;
        let allowed =
            |target: &str, port: u16| authorize(Some(&strict), PLAIN, http(get, target), port).is_ok();
        assert!(allowed("/healthz", 8080));
        assert!(allowed("/ready?full=1", 8080), "the query is part of the probe");
        assert!(allowed("/", 9000), "the kubelet sends an empty path as /");
        assert!(!allowed("/healthz", 9090), "another port");
        assert!(!allowed("/healthz/x", 8080), "exact path only");
        assert!(!allowed("/healthz?x", 8080), "a query the probe does not have");
        assert!(!allowed("/ready", 8080), "without the probe's query");
        assert!(!allowed("/?anything", 9000), "a query the probe does not have");
        // The path rules see the normal form, the probe the target as sent.
        let sneaky = HttpRequest { method: get, path: "/healthz", target: "/x/../healthz" };
        assert!(authorize(Some(&strict), PLAIN, Some(sneaky), 8080).is_err(), "not the probe's spelling");
        assert!(authorize(Some(&strict), PLAIN, http(&Method::POST, "/healthz"), 8080).is_err(), "GET only");
        assert!(
            authorize(Some(&strict), PLAIN, http(get, "/orders"), 8080).unwrap_err().0.contains("STRICT")
        );
    }
}
