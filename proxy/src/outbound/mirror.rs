//! Mirroring: a copy of a request sent to another backend, its answer read and dropped. A copy
//! must cost the primary nothing and the proxy little: at most `limits.maxMirrorsInFlight`
//! copies are in flight (the rest are not sent, and counted), each is abandoned after
//! `limits.mirrorTimeout`, and its answer's frames are dropped as they arrive, never collected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::request;
use http_body_util::BodyExt as _;
use tracing::debug;

use crate::balance;
use crate::client::body::ProxyBody;
use crate::http::headers::{clone_parts, upstream_request};
use crate::metrics::{Direction, MirrorLabels, TimeoutKind, TimeoutLabels};
use crate::state::ProxyState;
use crate::table::{Route, Service};

/// The copies in flight over the whole proxy.
#[derive(Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One copy's place among those in flight, given back when it ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl InFlight {
    /// A place for one more copy, unless `limit` are in flight already.
    fn take(&self, limit: usize) -> Option<Slot> {
        let taken =
            self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < limit).then_some(now + 1));
        taken.ok().map(|_| Slot(self.0.clone()))
    }

    pub fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
        let Some(endpoint) = balance::pick(&backend.endpoints, Instant::now()) else { return };
        let request = upstream_request(
            &mut parts,
            ProxyBody::text(body),
            endpoint.pool.protocol(),
            endpoint.meshed,
            false,
        );
        let copy = async {
            let Ok(response) = endpoint.pool.send(request).await else { return };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_slots_than_the_limit_and_each_comes_back() {
        let in_flight = InFlight::default();
        let slots: Vec<Slot> = (0..3).map_while(|_| in_flight.take(3)).collect();
        assert_eq!((slots.len(), in_flight.now()), (3, 3));
        assert!(in_flight.take(3).is_none(), "a fourth copy over a limit of 3");
        drop(slots);
        assert_eq!(in_flight.now(), 0);
        assert!(in_flight.take(3).is_some());
    }
}
