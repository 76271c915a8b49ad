//! Mesh identity (docs/identity.md): the certificate authority that issues every proxy its
//! SPIFFE certificate, and the endpoint proxies ask.
//!
//! - ca.rs: the roots and the issuer as a pure state machine (first start, renewal, rotation
//!   with an overlapping trust bundle, an external CA).
//! - controller.rs: the leader's loop that stores them, publishes the trust bundle and reports
//!   on the Mesh.
//! - server.rs: POST /v1/certify on every replica; with csr.rs (what may be asked), tokens.rs
//!   (who is asking), ratelimit.rs and authority.rs (signing).

pub mod authority;
pub mod ca;
pub mod controller;
pub mod csr;
pub mod ratelimit;
pub mod server;
pub mod tokens;

/// Secret of the mesh namespace: the current roots and the generated root's key, and the roots
/// still trusted from before a rotation.
pub const ANCHOR_SECRET: &str = "braid-trust-anchor";
/// Secret of the mesh namespace: the issuer (tls.crt, tls.key) and the trust bundle (ca.crt).
pub const ISSUER_SECRET: &str = "braid-issuer";
/// ConfigMap with the trust bundle, in the mesh namespace and every meshed namespace (the
/// webhook mounts it into each proxy).
pub const TRUST_CONFIG_MAP: &str = "braid-trust-anchors";
pub const BUNDLE_KEY: &str = "ca-bundle.crt";
/// Namespaces with this label set to `enabled` are meshed, and get the trust bundle.
pub const INJECT_LABEL: &str = "braid.dev/inject";
