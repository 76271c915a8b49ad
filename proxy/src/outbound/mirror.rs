//! Mirroring: a copy of a request sent to another backend, its answer read and dropped.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request;
use http_body_util::BodyExt as _;

use crate::balance;
use crate::client::body::ProxyBody;
use crate::http::headers::{clone_parts, upstream_request};
use crate::table::Service;

/// Sends a copy of the request to the mirror backend and forgets the answer.
pub fn mirror(service: &Arc<Service>, backend: usize, parts: &request::Parts, body: Bytes) {
    let service = service.clone();
    let mut parts = clone_parts(parts);
    tokio::spawn(async move {
        let Some(backend) = service.backends.get(backend) else { return };
        let Some(endpoint) = balance::pick(&backend.endpoints, Instant::now()) else { return };
        let request = upstream_request(
            &mut parts,
            ProxyBody::text(body),
            endpoint.pool.protocol(),
            endpoint.meshed,
            false,
        );
        if let Ok(response) = endpoint.pool.send(request).await {
            // Read it through, so the connection returns to the pool.
            let _ = response.into_body().collect().await;
        }
    });
}
