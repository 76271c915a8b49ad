//! Durations as the API spells them (GEP-2257). The parser lives in braid-runtime so that the
//! proxy, which must not link this crate's kube dependency, reads the same spelling.

pub use braid_runtime::duration::{DURATION_PATTERN, DurationError, parse_duration};
