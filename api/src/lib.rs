//! braid-api: what the operator, the webhook and the proxy must agree on, in one crate that links
//! none of them and no kube, so the proxy stays small and the control plane never links the proxy.
//!
//! - [`config`]: the proxy's configuration model and its validation.
//! - [`discovery`]: the discovery stream's messages, which carry that model.
//! - [`identity`]: SPIFFE ids, as issued, proven and named in policies.
//! - [`certify`]: the identity endpoint's request and answers, which carry them.
//! - [`contract`]: the pod contract: env names, mount paths, ports, annotation and ConfigMap names.

pub mod certify;
pub mod config;
pub mod contract;
pub mod discovery;
pub mod identity;
