//! Publishes the trust bundle as ConfigMap braid-trust-anchors (the pod contract's
//! TRUST_CONFIG_MAP, which the webhook mounts into every proxy) in the mesh namespace, in every
//! namespace labelled braid.dev/inject=enabled, and in the namespace of every pod meshed by its
//! own annotation (labelled braid.dev/needs-trust-bundle by the webhook).

use std::collections::HashMap;

use braid_api::contract::{INJECT, INJECT_ENABLED, NEEDS_TRUST_BUNDLE, TRUST_BUNDLE_KEY, TRUST_CONFIG_MAP};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

/// Publishes `bundle` in the mesh namespace and every labelled namespace that lacks it; returns
/// how many namespaces hold it. Only the mesh namespace's copy can be owned: an owner reference
/// never crosses namespaces.
pub async fn publish(
    client: &Client,
    mesh_namespace: &str,
    bundle: &str,
    owner: Option<&OwnerReference>,
) -> Result<usize, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labelled = namespaces
        .list_metadata(&ListParams::default().labels(&format!("{INJECT}={INJECT_ENABLED}")))
        .await?;
    let mut targets: Vec<String> = labelled
        .items
        .into_iter()
        // A namespace being deleted refuses new objects, and needs none.
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter_map(|ns| ns.metadata.name)
        .collect();
    let asking = Api::<Pod>::all(client.clone())
        .list_metadata(&ListParams::default().labels(NEEDS_TRUST_BUNDLE))
        .await?;
    targets.extend(asking.items.into_iter().filter_map(|pod| pod.metadata.namespace));
    targets.push(mesh_namespace.to_owned());
    targets.sort();
    targets.dedup();
    let config_maps: Api<ConfigMap> = Api::all(client.clone());
    let existing: HashMap<String, ConfigMap> = config_maps
        .list(&ListParams::default().fields(&format!("metadata.name={TRUST_CONFIG_MAP}")))
        .await?
        .items
        .into_iter()
        .filter_map(|cm| Some((cm.metadata.namespace.clone()?, cm)))
        .collect();
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    let mut holding = 0;
    for namespace in targets {
        let owner = owner.filter(|_| namespace == mesh_namespace);
        let current = existing.get(&namespace);
        let holds = current.and_then(|cm| cm.data.as_ref()?.get(TRUST_BUNDLE_KEY)).map(String::as_str)
            == Some(bundle);
        let owned = owner.is_none_or(|owner| {
            current.and_then(|cm| cm.metadata.owner_references.as_deref())
                == Some(std::slice::from_ref(owner))
        });
        if holds && owned {
            holding += 1;
            continue;
        }
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": TRUST_CONFIG_MAP,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "braid"},
            },
            "data": {TRUST_BUNDLE_KEY: bundle},
        });
        if let Some(owner) = owner {
            object["metadata"]["ownerReferences"] = json!([owner]);
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        match api.patch(TRUST_CONFIG_MAP, &params, &Patch::Apply(&object)).await {
            Ok(_) => {
                tracing::info!(%namespace, "published the trust bundle");
                holding += 1;
            }
            // Deleted, or being deleted, since the list: nothing there needs the bundle.
            Err(kube::Error::Api(status))
                if status.code == 404
                    || (status.code == 403 && status.message.contains("being terminated")) =>
            {
                tracing::debug!(%namespace, "namespace gone; bundle not published there");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(holding)
}
