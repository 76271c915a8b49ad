//! Configuration streamed from the operator (docs/proxy.md, Discovery): the state the proxy
//! holds, and the client that keeps the stream open. The wire format, shared with the server, is
//! `braid_api::discovery`.

pub mod client;
pub mod report;
pub mod state;

pub use state::Discovery;
