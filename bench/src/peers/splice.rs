//! The splice floor: `braid-bench relay` as A and as B (bench/src/relay.rs), two relays that copy
//! bytes in the kernel with a blocking thread per direction: the least two hops can cost here.

use anyhow::{Context as _, Result};
use braid_bench::settings::Peer;

use crate::run::{Bench, Hop, Side};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let dir = b.hop_dir(peer, side)?;
    let program = std::env::current_exe().context("cannot find the braid-bench binary for the relay")?;
    let args = vec![
        "relay".to_string(),
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--upstream".to_string(),
        format!("127.0.0.1:{upstream}"),
    ];
    let pid = b.start(1, &dir.join("relay.log"), &program, &args, &[])?;
    Ok(Hop { pids: vec![pid], ready: None, admin: None })
}
