//! Why a pod that asked for the mesh cannot be injected, with the metric label of each reason.

use braid_api::contract::{DEFAULT_INBOUND_POLICY, INJECT};

/// Why a pod that asked for the mesh cannot be injected. The webhook denies the pod with this
/// message: injecting something other than what the annotations say (no port exclusion, default
/// resources) would break the pod in a way that is much harder to trace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {INJECT}: {value:?} is neither \"enabled\" nor \"disabled\"")]
    InvalidInjectValue { value: String },
    #[error("annotation {annotation}: {reason}")]
    InvalidPorts { annotation: &'static str, reason: String },
    #[error("{source_name}: {reason}")]
    InvalidQuantity { source_name: String, reason: String },
    #[error(
        "the proxy's {resource} request {request:?} is more than its limit {limit:?}; \
         set braid.dev/proxy-{resource}-limit too"
    )]
    RequestAboveLimit { resource: &'static str, request: String, limit: String },
    #[error("annotation {annotation}: {value:?} must be non-empty and contain no whitespace")]
    InvalidValue { annotation: &'static str, value: String },
    #[error("annotation {DEFAULT_INBOUND_POLICY}: {0}")]
    InvalidDefaultPolicy(#[from] braid_api::config::UnknownDefaultPolicy),
    #[error("the pod has no spec")]
    NoSpec,
    #[error("cannot build the patch: {0}; this is a bug in braid-webhook")]
    Patch(String),
}

impl InjectError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            InjectError::InvalidInjectValue { .. } => "invalid_inject_value",
            InjectError::InvalidPorts { .. } => "invalid_ports",
            InjectError::InvalidQuantity { .. } => "invalid_quantity",
            InjectError::RequestAboveLimit { .. } => "request_above_limit",
            InjectError::InvalidValue { .. } => "invalid_value",
            InjectError::InvalidDefaultPolicy(_) => "invalid_default_policy",
            InjectError::NoSpec => "no_spec",
            InjectError::Patch(_) => "patch",
        }
    }
}
