//! Arbitrary bytes as the body of POST /inject: decoding must never panic, and whatever the
//! webhook answers must be something the API server can use. For every pod it injects, the patch
//! applies to the object the API server sent, the result is a Pod, and a second pass over that
//! Pod does not inject again.

#![no_main]

use std::collections::BTreeMap;

use base64::Engine as _;
use braid_api::contract::{INJECT, INJECT_ENABLED};
use braid_webhook::{
    admission::{self, Outcome, Review},
    inject::{self, ControlPlane, Decision, InjectConfig, SkipReason},
};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = admission::parse(data) else { return };
    let config = InjectConfig::defaults("fuzz", &ControlPlane::default());
    match review {
        Review::Ignored { request, why } => {
            let answer = admission::answer_ignored(&request, why);
            assert_eq!(answer.review["response"]["allowed"], true);
            assert!(answer.review["response"].get("patch").is_none());
        }
        Review::Pod(review) => {
            let enabled = BTreeMap::from([(INJECT.to_owned(), INJECT_ENABLED.to_owned())]);
            for labels in [BTreeMap::new(), enabled] {
                let answer = admission::answer_pod(&review, &labels, &config);
                let response = &answer.review["response"];
                assert_eq!(response["uid"].as_str(), Some(review.request.uid.as_str()));
                match answer.outcome {
                    Outcome::Injected => check_patch(data, response, &labels, &config),
                    Outcome::Denied(_) => {
                        assert_eq!(response["allowed"], false);
                        assert!(response["status"]["message"].as_str().is_some_and(|m| !m.is_empty()));
                    }
                    Outcome::Skipped(_) | Outcome::Ignored(_) => {
                        assert_eq!(response["allowed"], true);
                        assert!(response.get("patch").is_none());
                    }
                }
            }
        }
    }
});

/// Does to the patch what the API server does.
fn check_patch(data: &[u8], response: &Value, labels: &BTreeMap<String, String>, config: &InjectConfig) {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded = response["patch"].as_str().expect("an injected pod has a patch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is an RFC 6902 patch");

    let body: Value = serde_json::from_slice(data).expect("parse accepted it, so it is JSON");
    let mut object = body["request"]["object"].clone();
    // Go always serializes a Pod's ObjectMeta, so the API server's object has a metadata map even
    // when the review we were fuzzed with does not.
    if let Value::Object(fields) = &mut object
        && !fields.get("metadata").is_some_and(Value::is_object)
    {
        fields.insert("metadata".to_owned(), Value::Object(Default::default()));
    }
    json_patch::patch(&mut object, &patch.0).expect("the patch applies to the object that was sent");
    let pod: Pod = serde_json::from_value(object).expect("the patched object is a Pod");
    match inject::inject(&pod, labels, config) {
        Ok(Decision::Skip(SkipReason::AlreadyInjected)) => {}
        other => panic!("a second pass must skip the injected pod, got {other:?}"),
    }
}
