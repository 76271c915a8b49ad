//! Mesh identity (docs/identity.md): the certificate authority that issues every proxy its
//! SPIFFE certificate, and the endpoint proxies ask.
//!
//! - ca.rs: the roots and the issuer as a pure state machine (first start, renewal, rotation
//!   with an overlapping trust bundle, an external CA), on the operator's certificate kit
//!   (crate::certs).
//! - controller.rs: the leader's loop that stores them, has trust_bundle.rs publish the trust
//!   bundle in every meshed namespace, and reports on the Mesh.
//! - server.rs: POST /v1/certify on every replica; with csr.rs (what may be asked), tokens.rs
//!   (who is asking), ratelimit.rs and authority.rs (signing).

pub mod authority;
pub mod ca;
pub mod controller;
pub mod csr;
pub mod ratelimit;
pub mod server;
pub mod tokens;
pub mod trust_bundle;

/// Secret of the mesh namespace: the current roots and the generated root's key, and the roots
/// still trusted from before a rotation.
pub const ANCHOR_SECRET: &str = "braid-trust-anchor";
/// Secret of the mesh namespace: the issuer (tls.crt, tls.key) and the trust bundle (ca.crt).
pub const ISSUER_SECRET: &str = "braid-issuer";
// The ConfigMap the trust bundle is published in, which the webhook mounts into each proxy, is
// part of the pod contract: braid_api::contract::TRUST_CONFIG_MAP.
