//! MeshPolicy: who may talk to a workload, and whether plaintext is allowed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meshroute::HttpMethod;

/// Who may talk to the pods a policy selects. A pod selected by any MeshPolicy is default-deny:
/// only requests that some rule allows get through.
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a copy-paste slip.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    namespaced,
    shortname = "mp",
    category = "braid",
    status = "MeshPolicyStatus",
    doc = "Who may talk to the pods a policy selects, and whether plaintext is allowed.",
    printcolumn(
        name = "mTLS",
        type_ = "string",
        json_path = ".spec.mtls",
        description = "STRICT or PERMISSIVE"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the policy is valid"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.pods",
        description = "Meshed pods the policy selects"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Labels of the pods, in the policy's namespace, this policy applies to. Empty selects
    /// every pod in the namespace.
    #[serde(default)]
    pub pod_selector: BTreeMap<String, String>,

    /// STRICT accepts only mTLS connections from meshed clients; PERMISSIVE also accepts
    /// plaintext, for clients not yet in the mesh.
    #[serde(default)]
    pub mtls: MtlsMode,

    /// Requests allowed in; a request is allowed when any rule allows it. An empty list allows
    /// nothing (deny all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<AuthorizationRule>,
}

/// Whether a workload accepts plaintext.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum MtlsMode {
    /// Only mTLS from meshed clients.
    #[default]
    STRICT,
    /// mTLS and plaintext.
    PERMISSIVE,
}

/// Requests from some sources to some operations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Clients allowed; any one may match. Empty means any authenticated meshed client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub from: Vec<Source>,

    /// Operations allowed; any one may match. Empty means every operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub to: Vec<Operation>,
}

/// A client identity: one service account, or every service account of a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.serviceAccount) != has(self.namespace)",
     "message": "a source names either a serviceAccount or a namespace, exactly one of them"}
]))]
pub struct Source {
    /// A service account; its namespace defaults to the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// Every service account of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// A reference to a service account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the service account.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Namespace of the service account; the policy's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// An operation on the workload; every field given must fit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Request paths: exact ("/healthz") or prefix with a trailing "*" ("/api/*"). Any path
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(min = 1, max = 1024), regex(pattern = "^/")))]
    pub paths: Vec<String>,

    /// HTTP methods. Any method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,

    /// Ports of the workload. Any port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
}

/// What the operator observed about a MeshPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Accepted (the policy is valid and enforced).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// How many meshed pods the policy selects now (their proxies apply it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i32>,
}
