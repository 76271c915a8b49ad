//! AdmissionReview in, AdmissionReview out: the I/O-free part of the webhook. The HTTP handler
//! looks up the namespace's labels between [`parse`] and [`answer_pod`]; the fuzz target and the
//! golden tests drive these two directly.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde::Deserialize as _;
use serde_json::Value;

use crate::inject::{Decision, InjectConfig, SkipReason, inject};

/// What a request body turned out to be.
#[derive(Debug)]
pub enum Review {
    /// The creation of a pod: injection decides.
    Pod(Box<PodReview>),
    /// Anything else (another kind, a subresource, an update): allowed unchanged. The webhook
    /// configuration only sends pod creations, but an object we were not meant to see is not a
    /// reason to block it.
    Ignored { request: Box<AdmissionRequest<DynamicObject>>, why: &'static str },
}

#[derive(Debug)]
pub struct PodReview {
    pub request: AdmissionRequest<DynamicObject>,
    pub pod: Pod,
    /// The request's namespace (a pod being created often has none in its own metadata).
    pub namespace: String,
}

/// Why a body is not an AdmissionReview we can answer; the HTTP layer answers 400 with this text.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("malformed AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unsupported AdmissionReview apiVersion {0:?}: braid-webhook speaks admission.k8s.io/v1")]
    UnsupportedVersion(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the pod creation request carries no object")]
    NoObject,
    #[error("the object of the AdmissionReview is not a valid Pod: {0}")]
    MalformedPod(#[source] serde_json::Error),
}

impl ReviewError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReviewError::Malformed(_) => "malformed",
            ReviewError::UnsupportedVersion(_) => "unsupported_version",
            ReviewError::NoRequest => "no_request",
            ReviewError::NoObject => "no_object",
            ReviewError::MalformedPod(_) => "malformed_pod",
        }
    }
}

/// Decodes a request body.
pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
    let body: Value = serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    let review = AdmissionReview::<DynamicObject>::deserialize(&body).map_err(ReviewError::Malformed)?;
    if review.types.api_version != kube::core::admission::META_API_VERSION_V1 {
        return Err(ReviewError::UnsupportedVersion(review.types.api_version));
    }
    // try_into copies the review's apiVersion/kind into the request, which the response echoes.
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod {
        return Ok(Review::Ignored { request: Box::new(request), why: "not_a_pod" });
    }
    if request.sub_resource.is_some() {
        return Ok(Review::Ignored { request: Box::new(request), why: "subresource" });
    }
    if request.operation != Operation::Create {
        return Ok(Review::Ignored { request: Box::new(request), why: "not_a_create" });
    }
    // The pod is read from the body itself rather than from the DynamicObject: that round trip
    // forgets an apiVersion/kind it cannot pair up, and the patch must fit exactly the object the
    // API server sent.
    let object = match body.pointer("/request/object") {
        None | Some(Value::Null) => return Err(ReviewError::NoObject),
        Some(object) => object,
    };
    let pod = Pod::deserialize(object).map_err(ReviewError::MalformedPod)?;
    let namespace = request.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    Ok(Review::Pod(Box::new(PodReview { request, pod, namespace })))
}

/// What happened to one admission; the two labels of the admissions metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
    /// The pod asked for the mesh but its annotations are wrong; the label is the error's.
    Denied(&'static str),
    Ignored(&'static str),
}

impl Outcome {
    pub fn result(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Denied(_) => "denied",
            Outcome::Ignored(_) => "ignored",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Injected => "",
            Outcome::Skipped(reason) => reason.as_str(),
            Outcome::Denied(reason) | Outcome::Ignored(reason) => reason,
        }
    }
}

/// The answer to one review: the AdmissionReview to send back (as JSON, see [`to_wire`]) and
/// what happened.
#[derive(Debug)]
pub struct Answer {
    pub review: Value,
    pub outcome: Outcome,
}

/// Decides on a pod creation.
pub fn answer_pod(
    review: &PodReview,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Answer {
    let allowed = AdmissionResponse::from(&review.request);
    let (response, outcome) = match inject(&review.pod, namespace_labels, config) {
        Ok(Decision::Inject(injection)) => match allowed.clone().with_patch(injection.patch) {
            Ok(response) => (response, Outcome::Injected),
            Err(err) => (deny(allowed, format!("braid-webhook: {err}")), Outcome::Denied("patch")),
        },
        Ok(Decision::Skip(reason)) => (allowed, Outcome::Skipped(reason)),
        // Denied rather than admitted without (or with the wrong) proxy: the annotation is the
        // user's request for the mesh, and a pod outside it would fail later and less clearly.
        Err(err) => (
            deny(allowed, format!("braid-webhook cannot inject the braid proxy: {err}")),
            Outcome::Denied(err.metric_label()),
        ),
    };
    Answer { review: to_wire(response), outcome }
}

/// A denial the API server passes on as 400 BadRequest: the pod's annotations are what is wrong,
/// and `kubectl` then says "Error from server (BadRequest)" rather than "Forbidden".
fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = response.deny(message);
    response.result.status = Some(kube::core::response::StatusSummary::Failure);
    response.result.code = 400;
    response.result.reason = "BadRequest".to_owned();
    response
}

/// Lets through what is not ours to mutate.
pub fn answer_ignored(request: &AdmissionRequest<DynamicObject>, why: &'static str) -> Answer {
    Answer { review: to_wire(AdmissionResponse::from(request)), outcome: Outcome::Ignored(why) }
}

/// Serializes the response as an AdmissionReview with the patch in base64, as the Kubernetes API
/// documents it (kube-core writes `Vec<u8>` as an array of numbers, which Go happens to accept
/// but no one reading a log or a golden file can).
pub fn to_wire(response: AdmissionResponse) -> Value {
    let mut response = response;
    let patch = response.patch.take();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_else(|err| {
        // Only strings, bools and maps of strings are in a response: serializing cannot fail.
        tracing::error!(%err, "cannot serialize an AdmissionResponse");
        Value::Null
    });
    if let (Some(patch), Some(Value::Object(response))) = (patch, review.get_mut("response")) {
        response.insert("patch".to_owned(), base64::engine::general_purpose::STANDARD.encode(patch).into());
    }
    review
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(request: serde_json::Value) -> Vec<u8> {
        let mut request = request;
        let defaults = json!({
            "uid": "u1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "userInfo": {},
            "namespace": "ns",
        });
        for (key, value) in defaults.as_object().unwrap() {
            request.as_object_mut().unwrap().entry(key.clone()).or_insert(value.clone());
        }
        serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
        )
        .unwrap()
    }

    fn pod() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}})
    }

    #[test]
    fn a_pod_creation_is_decoded_with_the_request_namespace() {
        let Ok(Review::Pod(review)) = parse(&body(json!({"object": pod()}))) else {
            panic!("not a pod review")
        };
        assert_eq!(review.namespace, "ns");
        assert_eq!(review.pod.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn what_is_not_a_pod_creation_is_ignored() {
        let cases = [
            (json!({"operation": "UPDATE", "object": pod()}), "not_a_create"),
            (json!({"subResource": "status", "object": pod()}), "subresource"),
            (json!({"kind": {"group": "apps", "version": "v1", "kind": "Pod"}, "object": {}}), "not_a_pod"),
        ];
        for (request, expected) in cases {
            match parse(&body(request)) {
                Ok(Review::Ignored { why, .. }) => assert_eq!(why, expected),
                other => panic!("expected Ignored({expected}), got {other:?}"),
            }
        }
    }

    #[test]
    fn a_pod_creation_without_a_valid_pod_is_an_error() {
        // Found by the fuzzer: the object's own apiVersion was lost on the way through DynamicObject.
        let mut v2 = pod();
        v2["apiVersion"] = json!("v2");
        v2.as_object_mut().unwrap().remove("kind");
        assert!(matches!(parse(&body(json!({"object": v2}))), Err(ReviewError::MalformedPod(_))));
        assert!(matches!(parse(&body(json!({"object": null}))), Err(ReviewError::NoObject)));
        assert!(matches!(parse(&body(json!({}))), Err(ReviewError::NoObject)));
        let bad_spec = json!({"metadata": {}, "spec": {"containers": "none"}});
        assert!(matches!(parse(&body(json!({"object": bad_spec}))), Err(ReviewError::MalformedPod(_))));
    }
}
