//! Mesh default's status.proxies: how many proxies are connected, by version. Written by its own
//! field manager, so it never touches the fields the CA and webhook controllers own.

use std::{sync::Arc, time::Duration};

use braid_crds::{Mesh, mesh::ProxiesStatus};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{FIELD_MANAGER, registry::Summary, stream::Discovery};

const PERIOD: Duration = Duration::from_secs(2);

pub fn proxies_status(summary: &Summary) -> ProxiesStatus {
    ProxiesStatus {
        connected: i32::try_from(summary.connected).unwrap_or(i32::MAX),
        versions: summary
            .versions
            .iter()
            .map(|(v, n)| (v.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect(),
    }
}

pub async fn run(client: Client, discovery: Arc<Discovery>, shutdown: CancellationToken) {
    let meshes: Api<Mesh> = Api::all(client);
    let mut written: Option<ProxiesStatus> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PERIOD) => {}
            () = shutdown.cancelled() => return,
        }
        let proxies = proxies_status(&discovery.registry.summary());
        if written.as_ref() == Some(&proxies) {
            continue;
        }
        let patch = json!({
            "apiVersion": Mesh::api_version(&()),
            "kind": Mesh::kind(&()),
            "status": {"proxies": proxies},
        });
        match meshes
            .patch_status("default", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
        {
            Ok(_) => written = Some(proxies),
            // No Mesh yet (the chart creates it), or the API server is away: try again next tick.
            Err(err) => tracing::debug!(%err, "cannot write Mesh default status.proxies"),
        }
    }
}
