//! braid-webhook: the admission webhook that injects the Braid proxy into meshed pods, and the
//! `inject` command that does the same to YAML manifests.
//!
//! [`inject::inject`] is the one place that decides what an injected pod looks like; the
//! webhook ([`server`], through [`admission`]) and the CLI ([`manifest`]) both call it. The binary
//! only parses flags and wires these parts together.

pub mod admission;
pub mod cluster;
pub mod inject;
pub mod manifest;
pub mod metrics;
pub mod ports;
pub mod quantity;
pub mod server;
pub mod tls;
