//! Configuration streamed from the operator (docs/proxy.md, Discovery): the wire format shared
//! with the server, the state the proxy holds, and the client that keeps the stream open.

pub mod api;
pub mod client;
pub mod state;

pub use state::Discovery;
