//! Inbound authorisation, in one place: a connection when it is accepted (an opaque one whole,
//! an HTTP one only for whether it may connect at all), then each HTTP request as it arrives, so
//! that a denied request gets a 403 that says why. Every denial is counted here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::Guard;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::http::forward::record;
use crate::http::respond::local;
use crate::identity::Credentials;
use crate::metrics::{DenyLabels, DenyProtocol, Label, Metrics, RequestLabels, RequestMetrics};
use crate::policy::{self, HttpRequest};
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
    let denied = {
        let table = state.table.load();
        let policy = table.config.inbound.policy.as_ref();
        let credentials = own_credentials(state, client_id);
        let trust_domain =
            credentials.as_ref().and_then(|c| c.as_deref()).and_then(Credentials::trust_domain);
        let client = policy::Client { identity: client_id, trust_domain };
        match carries {
            Carries::Opaque => policy::authorize(policy, client, None, app.port()),
            Carries::Http => policy::admit_connection(policy, client, true),
        }
    };
    let Err(denied) = denied else { return true };
    count(&state.metrics, DenyProtocol::tcp, client_id.map_or_else(Label::empty, Label::new));
    debug!(%peer, reason = %denied.0, "inbound connection denied by the policy: closed");
    false
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
) -> Option<Response<ProxyBody>> {
    let denied = {
        let table = state.table.load();
        let credentials = own_credentials(state, client_id);
        let trust_domain =
            credentials.as_ref().and_then(|c| c.as_deref()).and_then(Credentials::trust_domain);
        let client = policy::Client { identity: client_id, trust_domain };
        policy::authorize(table.config.inbound.policy.as_ref(), client, Some(request), app.port())
    };
    let Err(denied) = denied else { return None };
    metrics.requests.inc();
    count(&state.metrics, DenyProtocol::http, labels.client_id.clone());
    let mut response = local(StatusCode::FORBIDDEN, "forbidden", format!("braid-proxy: {}\n", denied.0));
    if let Ok(reason) = HeaderValue::from_str(&denied.0) {
        response.headers_mut().insert(DENY_REASON, reason);
    }
    record(metrics, Label::empty(), &response, Instant::now());
    Some(response)
}

/// This proxy's credentials, for the mesh's trust domain: only needed when the client proved
/// an identity (which it can only have done with them).
fn own_credentials(state: &ProxyState, client_id: Option<&str>) -> Option<Guard<Option<Arc<Credentials>>>> {
    client_id?;
    Some(state.identity.as_ref()?.peek())
}

fn count(registry: &Metrics, protocol: DenyProtocol, client_id: Label) {
    registry.authz_denied.get_or_create(&DenyLabels { protocol, client_id }).inc();
}
