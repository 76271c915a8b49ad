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
    if needs_bundle {
        match &pod.metadata.labels {
            None => ops.push(add(&["metadata", "labels"], serde_json::json!({ NEEDS_TRUST_BUNDLE: "true" }))),
            Some(_) => ops.push(add(&["metadata", "labels", NEEDS_TRUST_BUNDLE], Value::from("true"))),
        }
    }
    // The resolved default inbound policy is recorded on the pod, where discovery reads it and
    // `kubectl get pod -o yaml` shows it.
    match &pod.metadata.annotations {
        None => ops.push(add(
            &["metadata", "annotations"],
            serde_json::json!({ INJECTED: proxy_version, DEFAULT_INBOUND_POLICY: default_policy.as_str() }),
        )),
        // The token escapes the "/" in the key: /metadata/annotations/braid.dev~1injected.
        Some(annotations) => {
            ops.push(add(&["metadata", "annotations", INJECTED], Value::from(proxy_version)));
            if !annotations.contains_key(DEFAULT_INBOUND_POLICY) {
                ops.push(add(
                    &["metadata", "annotations", DEFAULT_INBOUND_POLICY],
                    Value::from(default_policy.as_str()),
                ));
            }
        }
    }
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
