//! MeshPolicy status: Accepted, and how many meshed pods each policy selects (the PODS column of
//! `kubectl get meshpolicies`). Written by the leader from the discovery index, when it changes,
//! with discovery's field manager.

use std::collections::HashMap;
use std::{sync::Arc, time::Duration};

use braid_crds::MeshPolicy;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{FIELD_MANAGER, index::Key, stream::Discovery};
use crate::conditions::{self, Observed, Status};

/// Changes that come together (a rollout's pods) make one write per policy.
const SETTLE: Duration = Duration::from_secs(1);

/// What one policy's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub generation: Option<i64>,
    pub pods: usize,
}

/// The condition for a policy that selects `pods` meshed pods. The API server has checked the
/// spec (schema and CEL), and the proxies apply every field of it, so it is always accepted.
pub fn accepted(pods: usize) -> Observed {
    let message = match pods {
        0 => "accepted; selects no meshed pod yet".to_owned(),
        1 => "accepted; applied by the proxy of 1 meshed pod".to_owned(),
        n => format!("accepted; applied by the proxies of {n} meshed pods"),
    };
    Observed { type_: "Accepted", status: Status::True, reason: "Accepted", message }
}

pub async fn run(client: Client, discovery: Arc<Discovery>, shutdown: CancellationToken) {
    discovery.synced().await;
    let mut revisions = discovery.revisions();
    let mut written: HashMap<Key, Selection> = HashMap::new();
    loop {
        let selections = discovery.read(|index| index.policy_selections());
        let mut failed = false;
        for ((namespace, name), generation, pods) in selections {
            let key = (namespace, name);
            let selection = Selection { generation, pods };
            if written.get(&key) == Some(&selection) {
                continue;
            }
            match write(&client, &key, &selection).await {
                Ok(()) => {
                    written.insert(key, selection);
                }
                Err(err) => {
                    tracing::debug!(policy = %format!("{}/{}", key.0, key.1), %err, "cannot write MeshPolicy status");
                    failed = true;
                }
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            // A write that failed (the API server away, the policy just deleted) is retried.
            () = tokio::time::sleep(Duration::from_secs(10)), if failed => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLE) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn write(client: &Client, (namespace, name): &Key, selection: &Selection) -> Result<(), kube::Error> {
    let api: Api<MeshPolicy> = Api::namespaced(client.clone(), namespace);
    let previous = api.get_status(name).await?.status.map(|s| s.conditions).unwrap_or_default();
    let now = Time(Timestamp::now());
    let conditions = conditions::merge(&previous, vec![accepted(selection.pods)], selection.generation, &now);
    let patch = json!({
        "apiVersion": MeshPolicy::api_version(&()),
        "kind": MeshPolicy::kind(&()),
        "status": {
            "observedGeneration": selection.generation,
            "conditions": conditions,
            "pods": i32::try_from(selection.pods).unwrap_or(i32::MAX),
        },
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_counts_the_pods_that_apply_the_policy() {
        assert_eq!(accepted(0).message, "accepted; selects no meshed pod yet");
        assert_eq!(accepted(1).message, "accepted; applied by the proxy of 1 meshed pod");
        assert_eq!(accepted(3).message, "accepted; applied by the proxies of 3 meshed pods");
        assert_eq!((accepted(3).type_, accepted(3).status), ("Accepted", Status::True));
    }
}
