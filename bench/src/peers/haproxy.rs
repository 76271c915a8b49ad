//! HAProxy (`nbthread 1`), A → B over HTTP/2 (`proto h2`, cleartext prior knowledge or ALPN h2
//! with mTLS): bench/proxy/haproxy-{a,b}[.mtls].cfg. For the workloads: `proto h2` to an
//! HTTP/2-only origin, and A routing by Host through the large table.

use std::fs;
use std::path::Path;

use anyhow::Result;
use braid_bench::settings::Peer;
use braid_bench::workloads;

use crate::run::{Bench, Hop, Side};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let config = super::hop_config(
        b,
        peer,
        side,
        "cfg",
        &[
            ("PORT", port.to_string()),
            ("UPSTREAM", upstream.to_string()),
            ("ORIGIN_PROTO", if b.origin_is_h2() { " proto h2".into() } else { String::new() }),
        ],
    )?;
    let dir = b.hop_dir(peer, side)?;
    if side == Side::A && b.with_table() {
        let map = dir.join("services.map");
        let (text, entries) =
            workloads::with_haproxy_table(&fs::read_to_string(&config)?, &map.display().to_string())?;
        fs::write(&map, entries)?;
        fs::write(&config, text)?;
    }
    let args = vec!["-db".to_string(), "-f".to_string(), config.display().to_string()];
    // instructions: HAProxy, the closest peer, runs under callgrind beside braid.
    let (program, args) = b.recorded(&dir, Path::new("haproxy"), args);
    let pid = b.start(1, &dir.join("haproxy.log"), &program, &args, &[])?;
    Ok(Hop { pids: vec![pid], ready: None, admin: None })
}
