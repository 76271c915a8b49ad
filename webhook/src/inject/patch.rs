//! The JSON patch that meshes a pod, and applying it as the API server will to check it.

use braid_api::config::DefaultInboundPolicy;
use braid_api::contract::{DEFAULT_INBOUND_POLICY, INJECTED, NEEDS_TRUST_BUNDLE};
use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::Value;

use super::error::InjectError;

/// The JSON patch. Arrays and maps the pod does not have are added whole (adding under a missing
/// parent is an error in RFC 6902); existing ones are extended. The init containers go in front
/// of the pod's own, so those run with the redirect installed and the proxy started.
pub(super) fn build_patch(
    pod: &Pod,
    init_containers: &[Container; 2],
    volumes: &[Volume; 3],
    proxy_version: &str,
    default_policy: DefaultInboundPolicy,
    needs_bundle: bool,
) -> Result<Patch, InjectError> {
    let mut labels = super::workload::workload_labels(pod);
    if needs_bundle {
        labels.push((NEEDS_TRUST_BUNDLE.to_owned(), "true".to_owned()));
    }
    let mut annotations: Vec<(&str, String)> = vec![(INJECTED, proxy_version.to_owned())];
    if !pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(DEFAULT_INBOUND_POLICY)) {
        annotations.push((DEFAULT_INBOUND_POLICY, default_policy.as_str().to_owned()));
    }
    annotations.extend(super::workload::scrape_annotations(pod));
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let add = |tokens: &[&str], value: Value| {
        PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens.iter().copied()), value })
    };
    let mut ops = Vec::new();

    match spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], to_json(init_containers)?)),
        Some(_) => {
            for (index, container) in ["0", "1"].into_iter().zip(init_containers) {
                ops.push(add(&["spec", "initContainers", index], to_json(container)?));
            }
        }
    }
    match spec.volumes {
        None => ops.push(add(&["spec", "volumes"], to_json(volumes)?)),
        Some(_) => {
            for volume in volumes {
                ops.push(add(&["spec", "volumes", "-"], to_json(volume)?));
            }
        }
    }
    // A map the pod lacks is added whole; into an existing one each key goes on its own (the
    // token escapes the "/" in a key: /metadata/annotations/braid.dev~1injected). The resolved
    // default inbound policy is recorded on the pod, where discovery reads it and
    // `kubectl get pod -o yaml` shows it.
    let mut add_entries = |map: &str, exists: bool, entries: Vec<(String, String)>| {
        if entries.is_empty() {
            return;
        }
        if exists {
            for (key, value) in entries {
                ops.push(add(&["metadata", map, &key], Value::from(value)));
            }
        } else {
            let whole: serde_json::Map<String, Value> =
                entries.into_iter().map(|(key, value)| (key, Value::from(value))).collect();
            ops.push(add(&["metadata", map], Value::Object(whole)));
        }
    };
    add_entries("labels", pod.metadata.labels.is_some(), labels);
    add_entries(
        "annotations",
        pod.metadata.annotations.is_some(),
        annotations.into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
    );
    Ok(Patch(ops))
}

/// Applies `patch` the way the API server will, and reads the result back as a Pod: if the patch
/// did not apply or produced something that is not a Pod, we fail here rather than in the API
/// server.
pub(super) fn apply(pod: &Pod, patch: &Patch) -> Result<Pod, InjectError> {
    let mut document = serde_json::to_value(pod).map_err(|err| InjectError::Patch(err.to_string()))?;
    json_patch::patch(&mut document, &patch.0).map_err(|err| InjectError::Patch(err.to_string()))?;
    serde_json::from_value(document).map_err(|err| InjectError::Patch(err.to_string()))
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Value, InjectError> {
    serde_json::to_value(value).map_err(|err| InjectError::Patch(err.to_string()))
}
