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
use braid_api::config::{DEFAULT_RULE_PREFIX, PolicyConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{
    AllowLabels, Answerer, AuthzKind, DenyLabels, Label, RequestLabels, RequestMetrics, TargetAddr, Tls,
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
    let tls = Tls::inbound(client_id.is_some());
    let client_id = client_id.map_or_else(Label::empty, Label::new);
    match decision {
        Ok(None) => true,
        Ok(Some(allowed)) => {
            let (authz_kind, authz_name) = what_allowed(policy, allowed);
            let authz_name = Label::new(authz_name);
            let labels = AllowLabels { target_addr, authz_kind, authz_name, tls, client_id };
            state.metrics.tcp_authz_allowed.get_or_create(&labels).inc();
            true
        }
        Err(denied) => {
            state.metrics.tcp_authz_denied.get_or_create(&DenyLabels { target_addr, tls, client_id }).inc();
            debug!(%peer, reason = %denied.0, "inbound connection denied by the policy: closed");
            false
        }
    }
}

/// `authz_kind` and `authz_name` of what let a request or connection through.
fn what_allowed(policy: Option<&PolicyConfig>, allowed: Allowed) -> (AuthzKind, &str) {
    match allowed {
        Allowed::NoPolicy => (AuthzKind::default, "all-unauthenticated"),
        Allowed::Probe => (AuthzKind::probe, "probe"),
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

/// The allow counters one inbound connection has used. Its labels are fixed but for what
/// allowed each request, so a request finds its counter without building a label set.
#[derive(Default)]
pub struct AllowCounters(Mutex<Vec<(AuthzKind, Box<str>, Counter)>>);

/// Distinct rules remembered per connection; beyond them a request builds its label set.
const REMEMBERED_RULES: usize = 8;

impl AllowCounters {
    fn count(
        &self,
        family: &Family<AllowLabels, Counter>,
        labels: &RequestLabels,
        kind: AuthzKind,
        name: &str,
    ) {
        let mut known = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((.., counter)) = known.iter().find(|(k, n, _)| *k == kind && **n == *name) {
            counter.inc();
            return;
        }
        let counter = family
            .get_or_create(&AllowLabels {
                target_addr: labels.target_addr.clone(),
                authz_kind: kind,
                authz_name: Label::new(name),
                tls: labels.tls,
                client_id: labels.client_id.clone(),
            })
            .clone();
        counter.inc();
        if known.len() < REMEMBERED_RULES {
            known.push((kind, name.into(), counter));
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
        match policy::authorize(policy, client, Some(request), app.port()) {
            Ok(allowed) => {
                let (kind, name) = what_allowed(policy, allowed);
                allow_counters.count(&state.metrics.http_authz_allowed, labels, kind, name);
                return None;
            }
            Err(denied) => denied,
        }
    };
    metrics.requests.inc();
    let deny = DenyLabels {
        target_addr: labels.target_addr.clone(),
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
        assert_eq!(what_allowed(Some(&authenticated), Allowed::Probe), (AuthzKind::probe, "probe"));
        let mut named = authenticated.clone();
        named.rules[0].name = Some("reads-0".into());
        assert_eq!(what_allowed(Some(&named), Allowed::Rule(0)), (AuthzKind::meshpolicy, "reads-0"));
        assert_eq!(
            what_allowed(Some(&named), Allowed::Rule(7)),
            (AuthzKind::meshpolicy, ""),
            "a stale index names nothing"
        );
    }
}
