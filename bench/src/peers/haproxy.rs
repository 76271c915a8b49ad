//! HAProxy (`nbthread 1`), A → B over HTTP/2 (`proto h2`, cleartext prior knowledge or ALPN h2
//! with mTLS): bench/proxy/haproxy-{a,b}[.mtls].cfg.

use std::path::Path;

use anyhow::Result;
use braid_bench::settings::Peer;

use crate::run::{Bench, Hop, Side};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let config = super::hop_config(
        b,
        peer,
        side,
        "cfg",
        &[("PORT", port.to_string()), ("UPSTREAM", upstream.to_string())],
    )?;
    let dir = b.hop_dir(peer, side)?;
    let args = vec!["-db".to_string(), "-f".to_string(), config.display().to_string()];
    // instructions: HAProxy, the closest peer, runs under callgrind beside braid.
    let (program, args) = b.recorded(&dir, Path::new("haproxy"), args);
    let pid = b.start(1, &dir.join("haproxy.log"), &program, &args, &[])?;
    Ok(Hop { pids: vec![pid], ready: None, admin: None })
}
