//! The MutatingWebhookConfiguration the operator keeps: a pure function of the mesh settings,
//! where the webhook is reachable, and the CA bundle.
//!
//! Two entries, so that a webhook outage cannot wedge anything the user did not mesh:
//! - namespaces labelled braid.dev/inject=enabled, with the Mesh's failure policy (Fail by
//!   default: no pod of a meshed namespace starts without its proxy);
//! - pods elsewhere, which may opt in by annotation, always with Ignore.
//!
//! kube-system and the mesh's own namespace match neither, so the control plane can always
//! start, even while the webhook cannot.

use braid_api::contract::{INJECT, INJECT_ENABLED, INJECT_PATH};
use braid_crds::mesh::FailurePolicy;
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};

/// The entry for namespaces labelled for injection, with the Mesh's failure policy.
pub const NAMESPACE_WEBHOOK: &str = "namespace.inject.braid.dev";
/// The entry for pods elsewhere that opt in by annotation, always with Ignore.
pub const POD_WEBHOOK: &str = "pod.inject.braid.dev";

/// How the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The webhook's Service, inside the cluster.
    Service { namespace: String, name: String, port: i32 },
    /// A URL, for a webhook running outside the cluster (local runs and tests).
    Url(String),
}

pub fn desired(
    name: &str,
    endpoint: &Endpoint,
    ca_bundle: &str,
    failure_policy: FailurePolicy,
    mesh_namespace: &str,
) -> MutatingWebhookConfiguration {
    let client_config = WebhookClientConfig {
        ca_bundle: Some(ByteString(ca_bundle.as_bytes().to_vec())),
        service: match endpoint {
            Endpoint::Service { namespace, name, port } => Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(INJECT_PATH.to_owned()),
                port: Some(*port),
            }),
            Endpoint::Url(_) => None,
        },
        url: match endpoint {
            Endpoint::Url(url) => Some(url.clone()),
            Endpoint::Service { .. } => None,
        },
    };
    let never_these = requirement("kubernetes.io/metadata.name", "NotIn", &["kube-system", mesh_namespace]);
    let policy = policy_name(failure_policy);
    let webhook = |webhook_name: &str, policy: &str, namespace_selector: Vec<LabelSelectorRequirement>| {
        MutatingWebhook {
            name: webhook_name.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config.clone(),
            failure_policy: Some(policy.to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(namespace_selector),
                match_labels: None,
            }),
            // The proxy must see every init container a later webhook adds, so run again if needed.
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["pods".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(10),
            ..MutatingWebhook::default()
        }
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "braid".to_owned())].into()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook(
                NAMESPACE_WEBHOOK,
                policy,
                vec![requirement(INJECT, "In", &[INJECT_ENABLED]), never_these.clone()],
            ),
            webhook(
                POD_WEBHOOK,
                "Ignore",
                vec![requirement(INJECT, "NotIn", &[INJECT_ENABLED]), never_these],
            ),
        ]),
    }
}

/// What the operator applies when someone else (the Helm chart, a GitOps tool) owns the
/// configuration: only the caBundle of both entries and the namespace entry's failure policy,
/// under the operator's field manager. Everything else stays the owner's, so `helm upgrade`
/// and the operator never undo each other.
///
/// It is deliberately not a whole object: were the configuration deleted (`helm uninstall`) just
/// before this is applied, the API server refuses to create entries without a service or url,
/// sideEffects and admissionReviewVersions, so the operator can never bring back a
/// configuration that was uninstalled.
pub fn ca_bundle_patch(name: &str, ca_bundle: &str, failure_policy: FailurePolicy) -> serde_json::Value {
    let bundle = ByteString(ca_bundle.as_bytes().to_vec());
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": NAMESPACE_WEBHOOK,
                "failurePolicy": policy_name(failure_policy),
                "clientConfig": {"caBundle": bundle},
            },
            {"name": POD_WEBHOOK, "clientConfig": {"caBundle": bundle}},
        ],
    })
}

fn policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Fail => "Fail",
        FailurePolicy::Ignore => "Ignore",
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhooks(policy: FailurePolicy) -> Vec<MutatingWebhook> {
        let endpoint = Endpoint::Url("https://127.0.0.1:9443/inject".into());
        desired("braid-webhook", &endpoint, "PEM", policy, "braid-system").webhooks.unwrap()
    }

    #[test]
    fn meshed_namespaces_get_the_mesh_policy_and_the_rest_never_blocks() {
        let hooks = webhooks(FailurePolicy::Fail);
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hooks[1].failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(webhooks(FailurePolicy::Ignore)[0].failure_policy.as_deref(), Some("Ignore"));
        let selector = |h: &MutatingWebhook| serde_json::to_value(&h.namespace_selector).unwrap();
        assert_eq!(
            selector(&hooks[0]),
            serde_json::json!({"matchExpressions": [
                {"key": "braid.dev/inject", "operator": "In", "values": ["enabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "braid-system"]}]})
        );
        assert_eq!(
            selector(&hooks[1])["matchExpressions"][0]["operator"],
            "NotIn",
            "disjoint from the first"
        );
        for hook in &hooks {
            assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
            assert_eq!(hook.client_config.url.as_deref(), Some("https://127.0.0.1:9443/inject"));
            assert_eq!(hook.side_effects, "None");
        }
    }

    #[test]
    fn the_ca_bundle_patch_names_only_the_fields_the_operator_owns() {
        let patch = ca_bundle_patch("braid-webhook", "PEM", FailurePolicy::Ignore);
        // base64("PEM"), as the API server stores []byte fields.
        assert_eq!(
            patch["webhooks"],
            serde_json::json!([
                {"name": "namespace.inject.braid.dev", "failurePolicy": "Ignore", "clientConfig": {"caBundle": "UEVN"}},
                {"name": "pod.inject.braid.dev", "clientConfig": {"caBundle": "UEVN"}},
            ])
        );
        assert_eq!(patch["metadata"], serde_json::json!({"name": "braid-webhook"}));
        // Entry names match the ones the operator creates itself, so both modes manage the same
        // webhooks (the chart's template repeats them).
        let whole = desired(
            "braid-webhook",
            &Endpoint::Url("https://x/inject".into()),
            "PEM",
            FailurePolicy::Fail,
            "ns",
        );
        let names: Vec<_> = whole.webhooks.unwrap().into_iter().map(|w| w.name).collect();
        assert_eq!(names, [NAMESPACE_WEBHOOK, POD_WEBHOOK]);
    }

    #[test]
    fn in_cluster_the_service_is_called() {
        let endpoint =
            Endpoint::Service { namespace: "braid-system".into(), name: "braid-webhook".into(), port: 443 };
        let config = desired("braid-webhook", &endpoint, "PEM", FailurePolicy::Fail, "braid-system");
        let client = &config.webhooks.unwrap()[0].client_config;
        assert!(client.url.is_none());
        let service = client.service.as_ref().unwrap();
        assert_eq!(
            (service.name.as_str(), service.path.as_deref(), service.port),
            ("braid-webhook", Some("/inject"), Some(443))
        );
    }
}
