//! braid-proxy: the sidecar data plane. Its work is issue 4 (the proxy); this crate holds
//! nothing yet. It must never depend on kube or k8s-openapi.
