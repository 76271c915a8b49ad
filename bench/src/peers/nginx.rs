//! nginx, one worker, A → B pooled HTTP/1.1 keep-alive (nginx has no HTTP/2 upstream):
//! bench/proxy/nginx-{a,b}[.mtls].conf.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, bail};
use braid_bench::settings::Peer;

use crate::run::{Bench, Hop, Side, nginx_args, tail_logs};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let config = super::hop_config(
        b,
        peer,
        side,
        "conf",
        &[("PORT", port.to_string()), ("UPSTREAM", upstream.to_string())],
    )?;
    let dir = b.hop_dir(peer, side)?;
    fs::create_dir_all(dir.join("tmp"))?;
    let master = b.start(1, &dir.join("stderr.log"), Path::new("nginx"), &nginx_args(&dir, &config), &[])?;
    let mut workers = Vec::new();
    for _ in 0..50 {
        workers = b.children(master);
        if !workers.is_empty() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    if workers.is_empty() {
        bail!("nginx {} did not start:\n{}", side.name(), tail_logs(&dir));
    }
    for &worker in &workers {
        b.adopt(worker);
    }
    let mut pids = vec![master];
    pids.extend(workers);
    Ok(Hop { pids, ready: None, admin: None })
}
