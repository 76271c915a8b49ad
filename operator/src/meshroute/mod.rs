//! MeshRoute: validation, status and the controller that writes it.

pub mod controller;
pub mod status;
pub mod validate;
