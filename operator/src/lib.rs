//! braid-operator: reconciles the mesh API and reports what it found in each resource's status.
//! The binary only parses flags and wires these parts together.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod canary;
pub mod certs;
pub mod conditions;
pub mod discovery;
pub mod gateway;
pub mod identity;
pub mod leader;
pub mod meshroute;
pub mod metrics;
pub mod webhook;

/// The field manager of every server-side apply the operator makes, so `kubectl get -o yaml
/// --show-managed-fields` shows which fields it owns.
pub const FIELD_MANAGER: &str = "braid-operator";

/// Why a reconcile failed; each variant is also a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the MeshRoute CRD is not installed: run `kubectl apply --server-side -f crds/` (or install the Helm chart)"
    )]
    CrdMissing,
    #[error(
        "object has no namespace; MeshRoutes are namespaced, so the API server sent something unexpected"
    )]
    MissingNamespace,
}

impl Error {
    /// Every value of `metric_label`, so the failure series exist at 0 before the first failure:
    /// an alert on `increase(...) > 0` and a test of "none failed" then read a sample, not nothing.
    pub const METRIC_LABELS: [&'static str; 3] = ["kube", "crd_missing", "missing_namespace"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::CrdMissing => "crd_missing",
            Error::MissingNamespace => "missing_namespace",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn every_failure_label_is_listed() {
        let kube = Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded);
        for error in [kube, Error::CrdMissing, Error::MissingNamespace] {
            assert!(Error::METRIC_LABELS.contains(&error.metric_label()), "{error:?}");
        }
    }
}
