//! Inbound authorisation, in one place: a connection when it is accepted (an opaque one whole,
//! an HTTP one only for whether it may connect at all), then each HTTP request as it arrives, so
//! that a denied request gets a 403 that says why. Every denial is counted here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::Guard;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::http::forward::record;
use crate::http::respond::local;
use crate::identity::Credentials;
use braid_api::config::{DEFAULT_RULE_PREFIX, DefaultInboundPolicy, PolicyConfig, PolicySource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{
    AllowLabels, Answerer, Authz, AuthzKind, DenyLabels, InboundRoute, Label, RequestLabels, RequestMetrics,
    ServerKind, ServerLabels, TargetAddr, Tls,
};
use crate::policy::{self, Allowed, HttpRequest};
use crate::state::ProxyState;

/// Why the policy denied a request.
pub const DENY_REASON: HeaderName = HeaderName::from_static("braid-deny-reason");

/// What a connection carries, as far as its authorisation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// Opaque bytes: the connection is all there is to check.
    Opaque,
    /// HTTP: its requests are checked one by one (`request`).
    Http,
}

/// Whether a new connection from `client_id` (`None`: plaintext) to the app at `app` may go on.
/// A denied one is counted and logged; the caller closes it.
pub fn connection(
    state: &ProxyState,
    client_id: Option<&str>,
    carries: Carries,
    app: SocketAddr,
    peer: SocketAddr,
) -> bool {
    let table = state.table.load();
    let policy = table.config.inbound.policy.as_ref();
    let credentials = own_credentials(state, client_id);
    let trust_domain = credentials.as_ref().and_then(|c| c.as_deref()).and_then(Credentials::trust_domain);
    let client = policy::Client { identity: client_id, trust_domain };
    let decision = match carries {
        Carries::Opaque => policy::authorize(policy, client, None, app.port()).map(Some),
        // Its requests are counted one by one.
        Carries::Http => policy::admit_connection(policy, client, true).map(|()| None),
    };
    let target_addr = TargetAddr::new(app);
    let server = Server::of(policy).labels(app.port());
    let route = InboundRoute::Opaque;
    let tls = Tls::inbound(client_id.is_some());
    let client_id = client_id.map_or_else(Label::empty, Label::new);
    match decision {
        Ok(None) => true,
        Ok(Some(allowed)) => {
            let (kind, name) = what_allowed(policy, allowed);
            let authz = Authz { kind, name: Label::new(name) };
            let labels = AllowLabels { target_addr, server, route, authz, tls, client_id };
            state.metrics.tcp_authz_allowed.get_or_create(&labels).inc();
            true
        }
        Err(denied) => {
            let labels = DenyLabels { target_addr, server, route, tls, client_id };
            state.metrics.tcp_authz_denied.get_or_create(&labels).inc();
            debug!(%peer, reason = %denied.0, "inbound connection denied by the policy: closed");
            false
        }
    }
}

/// `authz_kind` and `authz_name` of what let a request or connection through.
fn what_allowed(policy: Option<&PolicyConfig>, allowed: Allowed) -> (AuthzKind, &str) {
    match allowed {
        Allowed::NoPolicy => (AuthzKind::default, "all-unauthenticated"),
        Allowed::Probe => (AuthzKind::default, "probe"),
        Allowed::Rule(index) => {
            let name =
                policy.and_then(|policy| policy.rules.get(index)).and_then(|rule| rule.name.as_deref());
            match name {
                Some(name) => match name.strip_prefix(DEFAULT_RULE_PREFIX) {
                    Some(default) => (AuthzKind::default, default),
                    None => (AuthzKind::meshpolicy, name),
                },
                // A hand-written policy's unnamed rule.
                None => (AuthzKind::meshpolicy, ""),
            }
        }
    }
}

/// The server a request or connection reached, as its policy names it (see [`ServerLabels`]),
/// before it is made a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server<'a> {
    Default(&'a str),
    /// The MeshPolicies' names, joined with commas in the label.
    MeshPolicies(&'a [String]),
}

impl<'a> Server<'a> {
    fn of(policy: Option<&'a PolicyConfig>) -> Self {
        let Some(policy) = policy else {
            return Self::Default(DefaultInboundPolicy::AllUnauthenticated.as_str());
        };
        match &policy.source {
            Some(PolicySource::Default(default)) => Self::Default(default.as_str()),
            Some(PolicySource::MeshPolicies(names)) => Self::MeshPolicies(names),
            // Written by hand, or sent by an operator that does not send the source: a default
            // policy's rule still says which default it is.
            None => {
                let first = policy.rules.first().and_then(|rule| rule.name.as_deref());
                match first.and_then(|name| name.strip_prefix(DEFAULT_RULE_PREFIX)) {
                    Some(default) => Self::Default(default),
                    None => Self::MeshPolicies(&[]),
                }
            }
        }
    }

    fn kind(self) -> ServerKind {
        match self {
            Self::Default(_) => ServerKind::default,
            Self::MeshPolicies(_) => ServerKind::meshpolicy,
        }
    }

    /// Whether `label` is this server's name, compared piece by piece rather than joined.
    fn is_named(self, label: &str) -> bool {
        match self {
            Self::Default(name) => name == label,
            Self::MeshPolicies(names) => {
                let mut rest = label;
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        let Some(after) = rest.strip_prefix(',') else { return false };
                        rest = after;
                    }
                    let Some(after) = rest.strip_prefix(name.as_str()) else { return false };
                    rest = after;
                }
                rest.is_empty()
            }
        }
    }

    fn labels(self, port: u16) -> ServerLabels {
        let name = match self {
            Self::Default(name) => Label::new(name),
            Self::MeshPolicies(names) => Label::new(names.join(",")),
        };
        ServerLabels { kind: self.kind(), name, port }
    }
}

/// The allow counters one inbound connection has used. Its labels are fixed but for the server
/// (when the policy changes) and what allowed each request, so a request finds its counter
/// without building a label set.
#[derive(Default)]
pub struct AllowCounters(Mutex<Vec<Remembered>>);

struct Remembered {
    server: (ServerKind, Box<str>),
    route: InboundRoute,
    authz: (AuthzKind, Box<str>),
    counter: Counter,
}

/// Distinct rules remembered per connection; beyond them a request builds its label set.
const REMEMBERED_RULES: usize = 8;

impl AllowCounters {
    fn count(
        &self,
        family: &Family<AllowLabels, Counter>,
        labels: &RequestLabels,
        server: Server<'_>,
        port: u16,
        route: InboundRoute,
        (kind, name): (AuthzKind, &str),
    ) {
        let mut known = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let seen = known.iter().find(|r| {
            r.route == route
                && r.authz.0 == kind
                && *r.authz.1 == *name
                && r.server.0 == server.kind()
                && server.is_named(&r.server.1)
        });
        if let Some(remembered) = seen {
            remembered.counter.inc();
            return;
        }
        let server = server.labels(port);
        let counter = family
            .get_or_create(&AllowLabels {
                target_addr: labels.target_addr.clone(),
                server: server.clone(),
                route,
                authz: Authz { kind, name: Label::new(name) },
                tls: labels.tls,
                client_id: labels.client_id.clone(),
            })
            .clone();
        counter.inc();
        if known.len() < REMEMBERED_RULES {
            known.push(Remembered {
                server: (server.kind, server.name.as_str().into()),
                route,
                authz: (kind, name.into()),
                counter,
            });
        }
    }
}

/// Whether one HTTP request may reach the app: `None` when it may. A denied one is answered
/// here (a 403 with the reason), counted, and recorded like any other request of the connection.
pub fn request(
    state: &ProxyState,
    client_id: Option<&str>,
    request: HttpRequest<'_>,
    app: SocketAddr,
    labels: &RequestLabels,
    metrics: &RequestMetrics,
    allow_counters: &AllowCounters,
) -> Option<Response<ProxyBody>> {
    let denied = {
        let table = state.table.load();
        let credentials = own_credentials(state, client_id);
        let trust_domain =
            credentials.as_ref().and_then(|c| c.as_deref()).and_then(Credentials::trust_domain);
        let client = policy::Client { identity: client_id, trust_domain };
        let policy = table.config.inbound.policy.as_ref();
        let server = Server::of(policy);
        match policy::authorize(policy, client, Some(request), app.port()) {
            Ok(allowed) => {
                let route =
                    if allowed == Allowed::Probe { InboundRoute::Probe } else { InboundRoute::Default };
                let authz = what_allowed(policy, allowed);
                let family = &state.metrics.http_authz_allowed;
                allow_counters.count(family, labels, server, app.port(), route, authz);
                return None;
            }
            Err(denied) => (denied, server.labels(app.port())),
        }
    };
    let (denied, server) = denied;
    metrics.requests.inc();
    let deny = DenyLabels {
        target_addr: labels.target_addr.clone(),
        server,
        route: InboundRoute::Default,
        tls: labels.tls,
        client_id: labels.client_id.clone(),
    };
    state.metrics.http_authz_denied.get_or_create(&deny).inc();
    let mut response = local(StatusCode::FORBIDDEN, "forbidden", format!("braid-proxy: {}\n", denied.0));
    if let Ok(reason) = HeaderValue::from_str(&denied.0) {
        response.headers_mut().insert(DENY_REASON, reason);
    }
    record(metrics, Answerer::nobody(), &response, Instant::now());
    Some(response)
}

/// This proxy's credentials, for the mesh's trust domain: only needed when the client proved
/// an identity (which it can only have done with them).
fn own_credentials(state: &ProxyState, client_id: Option<&str>) -> Option<Guard<Option<Arc<Credentials>>>> {
    client_id?;
    Some(state.identity.as_ref()?.peek())
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::config::DefaultInboundPolicy;

    #[test]
    fn what_allowed_is_named_as_linkerd_names_it() {
        let authenticated = DefaultInboundPolicy::AllAuthenticated.policy(Vec::new());
        assert_eq!(
            what_allowed(Some(&authenticated), Allowed::Rule(0)),
            (AuthzKind::default, "all-authenticated")
        );
        assert_eq!(what_allowed(None, Allowed::NoPolicy), (AuthzKind::default, "all-unauthenticated"));
        assert_eq!(what_allowed(Some(&authenticated), Allowed::Probe), (AuthzKind::default, "probe"));
        let mut named = authenticated.clone();
        named.rules[0].name = Some("reads-0".into());
        assert_eq!(what_allowed(Some(&named), Allowed::Rule(0)), (AuthzKind::meshpolicy, "reads-0"));
        assert_eq!(
            what_allowed(Some(&named), Allowed::Rule(7)),
            (AuthzKind::meshpolicy, ""),
            "a stale index names nothing"
        );
    }

    #[test]
    fn the_server_is_the_default_or_the_meshpolicies_that_select_the_pod() {
        let deny = DefaultInboundPolicy::Deny.policy(Vec::new());
        assert_eq!(Server::of(Some(&deny)), Server::Default("deny"), "a default with no rules");
        assert_eq!(Server::of(None), Server::Default("all-unauthenticated"));
        let mut sent_by_older_operator = DefaultInboundPolicy::AllAuthenticated.policy(Vec::new());
        sent_by_older_operator.source = None;
        assert_eq!(Server::of(Some(&sent_by_older_operator)), Server::Default("all-authenticated"));
        let names = ["reads".to_owned(), "writes".to_owned()];
        let mut selected = deny.clone();
        selected.source = Some(PolicySource::MeshPolicies(names.to_vec()));
        let server = Server::of(Some(&selected));
        let labels = server.labels(8080);
        assert_eq!(
            (labels.kind, labels.name.as_str(), labels.port),
            (ServerKind::meshpolicy, "reads,writes", 8080)
        );
        assert!(server.is_named("reads,writes"));
        for other in ["reads", "reads,", "reads,writes,", "readswrites", "writes,reads", ""] {
            assert!(!server.is_named(other), "{other:?}");
        }
        assert!(Server::MeshPolicies(&[]).is_named(""));
        assert!(!Server::Default("deny").is_named("deny,"));
    }
}
