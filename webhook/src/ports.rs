//! Port lists of the skip-port annotations; shared with `braid-proxy init`, which parses them.

pub use braid_runtime::ports::{PortRange, parse_port_list, render};
