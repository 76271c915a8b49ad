//! braid-proxy: the sidecar data plane. It must never depend on kube or k8s-openapi.
