//! braid-proxy: the sidecar data plane. It must never depend on kube or k8s-openapi.
//!
//! Its configuration model, the discovery wire format and the pod contract are in braid-api,
//! which the operator and the webhook link instead of this crate.
//!
//! A request reads top to bottom: `app` binds the listeners; `accept` takes each connection and
//! hands it to `outbound` (the app's connections to services) or `inbound` (connections to the
//! app); both serve HTTP with `http` and reach upstreams through `client`. Below them sit the
//! proxy-wide `state`, the routing `table` (with `balance`), `discovery` and `reload` that feed
//! it, and the leaf modules (`policy`, `metrics`, `identity`, `detect`, ...).

pub mod accept;
pub mod admin;
pub mod app;
pub mod balance;
pub mod bounded;
pub mod client;
pub mod client_hello;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod policy;
pub mod reload;
pub mod spans;
pub mod state;
pub mod table;
pub mod tcp;
pub mod trace_context;
