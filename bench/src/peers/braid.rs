//! braid-proxy (`--threads 1`): A has a service listener whose only endpoint is B's inbound
//! listener with `meshed: true`, so A speaks HTTP/2 to B; braid-mtls takes workload identities
//! from a stand-in of the operator's identity endpoint (examples/identity_stub) and speaks mutual
//! TLS between A and B: bench/proxy/braid-{a,b}[.mtls].yaml. The baseline runs the same
//! configurations with another build.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use braid_bench::settings::{Kind, Peer};
use braid_bench::workloads;

use crate::run::{Bench, Hop, Pair, Side, output};

pub fn start(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    let ports = b.free_ports(3)?;
    let (admin, outbound, inbound) = (ports[0], ports[1], ports[2]);
    let mut vars = vec![
        ("PORT", port.to_string()),
        ("UPSTREAM", upstream.to_string()),
        ("ADMIN", admin.to_string()),
        ("OUTBOUND", outbound.to_string()),
        ("INBOUND", inbound.to_string()),
    ];
    if peer.mtls {
        let identity = identity_stub(b)?;
        vars.push(("IDENTITY_PORT", identity.to_string()));
        vars.push(("BUNDLE", b.work.join("ca-bundle.crt").display().to_string()));
    }
    let config = super::hop_config(b, peer, side, "yaml", &vars)?;
    if peer.kind == Kind::BraidTraced {
        let sink = otlp_sink(b)?;
        let tracing =
            format!("tracing: {{ collector: \"http://127.0.0.1:{sink}\", samplingPercent: 100 }}\n");
        fs::write(&config, fs::read_to_string(&config)? + &tracing)?;
    }
    if side == Side::A && b.with_table() {
        fs::write(&config, workloads::with_braid_table(&fs::read_to_string(&config)?)?)?;
    }
    let dir = b.hop_dir(peer, side)?;
    if peer.mtls {
        fs::write(dir.join("token"), format!("token-for:spiffe://bench.local/ns/bench/sa/{}", side.name()))?;
    }
    let binary = binary(b, peer)?;
    let (program, args) = b.recorded(&dir, &binary, args(&config));
    let env: Vec<(&str, String)> =
        b.llvm_profile_file.iter().map(|f| ("LLVM_PROFILE_FILE", f.clone())).collect();
    let pid = b.start(1, &dir.join("proxy.log"), &program, &args, &env)?;
    Ok(Hop { pids: vec![pid], ready: Some(format!("http://127.0.0.1:{admin}/ready")), admin: Some(admin) })
}

/// The braid-proxy build `peer` measures.
pub fn binary(b: &Bench, peer: Peer) -> Result<PathBuf> {
    Ok(match peer.kind {
        Kind::BraidBaseline => {
            b.tools.baseline.as_ref().map(|(bin, _)| bin.clone()).context("no baseline braid-proxy")?
        }
        Kind::BraidNoPgo => b.tools.nopgo.clone().context("no braid-proxy built without the profile")?,
        _ => b.tools.braid.clone(),
    })
}

/// braid-proxy's command line for `config`: one worker, and --log warn: no per-request logging,
/// like the peers (no access logs).
pub fn args(config: &Path) -> Vec<String> {
    ["--config", &config.display().to_string(), "--threads", "1", "--log", "warn"]
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Waits up to 10 s for the identity stand-in (logging to `log`) to write its trust `bundle`.
pub fn wait_for_bundle(bundle: &Path, log: &Path) -> Result<()> {
    for _ in 0..100 {
        if fs::metadata(bundle).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("the identity stand-in wrote no trust bundle (log: {})", log.display())
}

/// The stand-in of the operator's identity endpoint, on CPU 0 (it only works at start); its port.
fn identity_stub(b: &mut Bench) -> Result<u16> {
    if let Some(port) = b.identity_port {
        return Ok(port);
    }
    let port = b.free_ports(1)?[0];
    let bundle = b.work.join("ca-bundle.crt");
    let stub = b.tools.identity_stub.clone();
    let log = b.work.join("identity-stub.log");
    b.start(0, &log, &stub, &[port.to_string(), bundle.display().to_string()], &[])?;
    wait_for_bundle(&bundle, &log)?;
    b.identity_port = Some(port);
    Ok(port)
}

/// The braid-traced pairs' collector, on CPU 0 like the other helpers; its port.
fn otlp_sink(b: &mut Bench) -> Result<u16> {
    if let Some(port) = b.otlp_sink_port {
        return Ok(port);
    }
    let port = b.free_ports(1)?[0];
    let sink = b.tools.otlp_sink.clone();
    let log = b.work.join("otlp-sink.log");
    b.start(0, &log, &sink, &[port.to_string()], &[])?;
    for _ in 0..100 {
        if output("curl", &["-fs", &format!("http://127.0.0.1:{port}/spans")]).is_ok() {
            b.otlp_sink_port = Some(port);
            return Ok(port);
        }
        sleep(Duration::from_millis(100));
    }
    bail!("the OTLP sink did not answer on port {port} (log: {})", log.display())
}

fn metrics(pair_hop_admin: Option<u16>) -> Result<String> {
    let admin = pair_hop_admin.context("braid-proxy has no admin port")?;
    output("curl", &["-fs", &format!("http://127.0.0.1:{admin}/metrics")])
}

/// What a braid pair's metrics (`a`, `b`: A's and B's /metrics) show once a request went
/// through: each proxy counted it and, over mTLS, B saw A's SPIFFE id on it.
pub fn check_counted(peer: Peer, a: &str, b: &str) -> Result<()> {
    for (side, text) in [("a", a), ("b", b)] {
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("request_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum();
        if total < 1.0 {
            bail!("braid-proxy {side} of {peer} counted no request (request_total={total})");
        }
    }
    if peer.mtls && !b.contains("client_id=\"spiffe://bench.local/ns/bench/sa/a\"") {
        bail!("{peer} B saw no client identity: not mTLS");
    }
    Ok(())
}

/// Each braid-proxy counted the request; with mTLS, B saw A's SPIFFE id on it.
pub fn verify(_b: &mut Bench, peer: Peer, pair: &Pair) -> Result<()> {
    check_counted(peer, &metrics(pair.a.admin)?, &metrics(pair.b.admin)?)?;
    if peer.kind == Kind::BraidTraced {
        // Spans leave in batches within a second of the request.
        let exported = |admin| -> Result<bool> {
            Ok(metrics(admin)?.lines().any(|l| {
                l.starts_with("trace_spans_total{result=\"exported\"}")
                    && l.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) >= 1.0
            }))
        };
        for _ in 0..50 {
            if exported(pair.a.admin)? && exported(pair.b.admin)? {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        bail!("{peer}: A and B did not both export a span to the OTLP sink within 5 s");
    }
    Ok(())
}
