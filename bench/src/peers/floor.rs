//! The floor: HAProxy in TCP mode as A and as B (bench/proxy/floor.cfg), relaying bytes without
//! parsing them: what two user-space hops on CPU 1 cost on this machine before any HTTP work.

use std::path::Path;

use anyhow::{Result, bail};
use braid_bench::settings::Peer;

use crate::run::{Bench, Hop, Side, established};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let dir = b.hop_dir(peer, side)?;
    let config = dir.join("haproxy.cfg");
    b.render(
        "floor.cfg",
        &config,
        &[("DIR", dir.display().to_string()), ("PORT", port.to_string()), ("UPSTREAM", upstream.to_string())],
    )?;
    let args = vec!["-db".to_string(), "-f".to_string(), config.display().to_string()];
    let pid = b.start(1, &dir.join("haproxy.log"), Path::new("haproxy"), &args, &[])?;
    Ok(Hop { pids: vec![pid], ready: None, admin: None })
}

/// While the pair's client connection is held open, B relays it to the origin.
pub fn verify(b: &Bench) -> Result<()> {
    if established(&format!("( dport = :{} )", b.origin_port))? == 0 {
        bail!("floor B holds no connection to the origin");
    }
    Ok(())
}
