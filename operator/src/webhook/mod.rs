//! The admission webhook's certificates and configuration, owned by the operator.

pub mod certs;
pub mod config;
pub mod controller;
