//! Mirroring: a copy of a request sent to another backend, its answer read and dropped. A copy
//! must cost the primary nothing and the proxy little: at most `limits.maxMirrorsInFlight`
//! copies are in flight (the rest are not sent, and counted), each is abandoned after
//! `limits.mirrorTimeout`, and its answer's frames are dropped as they arrive, never collected.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request;
use http_body_util::BodyExt as _;
use tracing::debug;

use crate::client::body::ProxyBody;
use crate::http::headers::{clone_parts, upstream_request};
use crate::metrics::{Direction, MirrorLabels, TimeoutKind, TimeoutLabels};
use crate::state::ProxyState;
use crate::table::{Route, Service};

/// Sends a copy of the request to the mirror backend and forgets the answer; counted in
/// mirror_dropped instead when the proxy has as many copies in flight as it may.
pub fn mirror(
    state: &ProxyState,
    service: &Arc<Service>,
    route: &Route,
    backend: usize,
    parts: &request::Parts,
    body: Bytes,
) {
    let (limit, timeout) = {
        let table = state.table.load();
        (table.config.limits.max_mirrors_in_flight, table.config.limits.mirror_timeout)
    };
    let Some(slot) = state.mirrors.take(limit) else {
        let labels = MirrorLabels { dst_service: service.name.clone(), route: route.name.clone() };
        state.metrics.mirror_dropped.get_or_create(&labels).inc();
        return;
    };
    let timed_out = state
        .metrics
        .timeouts
        .get_or_create(&TimeoutLabels {
            direction: Direction::outbound,
            dst_service: service.name.clone(),
            route: route.name.clone(),
            kind: TimeoutKind::mirror,
        })
        .clone();
    let service = service.clone();
    let mut parts = clone_parts(parts);
    tokio::spawn(async move {
        let _slot = slot;
        let Some(backend) = service.backends.get(backend) else { return };
        let Some(endpoint) = service.balancer(backend).choose(&backend.endpoints, None, Instant::now())
        else {
            return;
        };
        let pool = endpoint.pool_for(parts.version);
        let request =
            upstream_request(&mut parts, ProxyBody::text(body), pool.protocol(), endpoint.meshed, false);
        let copy = async {
            let Ok(response) = pool.send(request).await else { return };
            // Read through, so that the connection returns to the pool; nothing is kept.
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, copy).await.is_err() {
            timed_out.inc();
            debug!(service = service.name.as_str(), ?timeout, "a mirrored copy timed out: abandoned");
        }
    });
}
