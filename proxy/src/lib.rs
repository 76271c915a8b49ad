//! braid-proxy: the sidecar data plane. It must never depend on kube or k8s-openapi.
//!
//! Its configuration model, the discovery wire format and the pod contract are in braid-api,
//! which the operator and the webhook link instead of this crate.

pub mod admin;
pub mod app;
pub mod balance;
pub mod client_hello;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod init;
pub mod io;
pub mod metrics;
pub mod original_dst;
pub mod policy;
pub mod reload;
pub mod server;
pub mod table;
pub mod tcp;
pub mod trace_context;
