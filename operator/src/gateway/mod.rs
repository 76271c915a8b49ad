//! The Gateway API for the mesh (GAMMA, docs/gateway-api.md): HTTPRoutes and GRPCRoutes whose
//! parent is a Service are routed like MeshRoutes, through the same discovery index, and their
//! `status.parents` say whether Braid (controller `braid.dev/mesh`) applies them and why not.

pub mod status;
pub mod translate;
pub mod types;
pub mod watch;

#[cfg(test)]
mod tests;
