//! Discovery (docs/discovery.md): the operator's index of what proxies need, the mTLS server that
//! streams it to them, and the count of proxies that run each MeshRoute generation.

pub mod budget;
pub mod endpoint;
pub mod index;
pub mod mesh_status;
pub mod policy_status;
pub mod registry;
pub mod server;
pub mod stream;
pub mod translate;
pub mod wakers;
pub mod watch;

/// The field manager of every write discovery makes (its EndpointSlice, the MeshPolicy and Mesh
/// status conditions it owns), so server-side apply keeps its fields apart from the controllers'.
const FIELD_MANAGER: &str = "braid-operator-discovery";
