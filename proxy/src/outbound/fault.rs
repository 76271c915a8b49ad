//! Faults a route injects: a delay before the request goes on, or an answer instead of it.

use http::{Response, StatusCode};

use crate::client::body::ProxyBody;
use crate::http::respond::local;
use crate::table::Route;

/// Sleeps for the route's delay when it draws one, then answers for the upstream when the route
/// draws an abort.
pub async fn inject_fault(route: &Route) -> Option<Response<ProxyBody>> {
    let fault = route.fault.as_ref()?;
    if let Some(delay) = &fault.delay
        && fastrand::f64() * 100.0 < delay.percent
    {
        tokio::time::sleep(delay.fixed).await;
    }
    let abort = fault.abort.as_ref()?;
    if fastrand::f64() * 100.0 < abort.percent {
        let status = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Some(local(
            status,
            "fault-injected",
            "braid-proxy: fault injected by the route\n".to_owned(),
        ));
    }
    None
}
