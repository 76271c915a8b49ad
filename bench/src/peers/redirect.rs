//! The peers on the redirect path (`PEER-redirect`): each proxy in its pod's network namespace,
//! run as the proxy uid behind `braid-proxy init`'s rules (bench/src/run/pods.rs builds the pods).
//!
//! - braid, braid-mtls (and braid-baseline, braid-nopgo): A has no service listener; it takes
//!   the redirected connection on its outbound listener and finds the service by the original
//!   destination (the Service address); B takes A's connection on its inbound listener and
//!   forwards it to its original destination, the origin (no `inbound.target`).
//! - haproxy, haproxy-mtls, floor: A listens on the outbound port the redirect leads to; HAProxy
//!   has no service table, so its server is B's pod address, static. B listens on the inbound port
//!   and forwards to `0.0.0.0:0`, the original destination (SO_ORIGINAL_DST).
//! - Not offered: envoy (an `original_dst` listener filter would do it; not written yet), nginx
//!   (its stream and http proxies cannot read the original destination), splice (a relay of this
//!   benchmark's own, not a sidecar), braid-traced (its span sink is outside the pods).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use braid_bench::pods::{
    self, ADMIN_PORT, APP_PORT, IDENTITY_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, Pods,
};
use braid_bench::settings::{Kind, Peer};

use crate::run::{Bench, Hop, Pair, Side, run_ok};

/// Why `peer` is not offered on the redirect path, if it is not.
pub fn refused(peer: Peer) -> Option<&'static str> {
    match peer.kind {
        Kind::Envoy => Some("Envoy's transparent listener (original_dst listener filter) is not set up yet"),
        Kind::Nginx => Some("nginx cannot read a redirected connection's original destination"),
        Kind::Splice => Some("the splice relay is this benchmark's own, not a sidecar"),
        Kind::BraidTraced => Some("its span sink runs outside the pods"),
        _ => None,
    }
}

/// Starts `peer`'s proxy for `side` in its pod.
pub fn start(b: &mut Bench, peer: Peer, pods: &Pods, side: Side) -> Result<Hop> {
    if let Some(why) = refused(peer) {
        bail!("{peer} is not offered on the redirect path: {why}");
    }
    let netns = match side {
        Side::A => pods.client_ns.clone(),
        Side::B => pods.server_ns.clone(),
    };
    let dir = b.hop_dir(peer, side)?;
    let (listen, upstream) = match side {
        Side::A => (format!("127.0.0.1:{OUTBOUND_PORT}"), pods.app()),
        Side::B => (format!("0.0.0.0:{INBOUND_PORT}"), "0.0.0.0:0".to_string()),
    };
    let hop = if peer.kind.is_braid() {
        let mut vars = vec![
            ("ADMIN", ADMIN_PORT.to_string()),
            ("OUTBOUND", OUTBOUND_PORT.to_string()),
            ("INBOUND", INBOUND_PORT.to_string()),
            ("SERVICE", pods.service()),
            ("UPSTREAM", upstream),
        ];
        if peer.mtls {
            let bundle = identity_stub(b, peer, pods)?;
            vars.push(("IDENTITY", format!("{}:{IDENTITY_PORT}", pods.server_ip)));
            vars.push(("BUNDLE", bundle));
            fs::write(
                dir.join("token"),
                format!("token-for:spiffe://bench.local/ns/bench/sa/{}", side.name()),
            )?;
        }
        let config = super::hop_config(b, peer, side, "yaml", &vars)?;
        let binary = super::braid::binary(b, peer)?;
        let args = super::braid::args(&config);
        own(&dir)?;
        let pid = b.start_in(&netns, true, 1, &dir.join("proxy.log"), &binary, &args)?;
        Hop {
            pids: vec![pid],
            ready: Some(format!("http://127.0.0.1:{ADMIN_PORT}/ready")),
            admin: Some(ADMIN_PORT),
        }
    } else {
        let vars = [("DIR", dir.display().to_string()), ("LISTEN", listen), ("UPSTREAM", upstream)];
        let config = match peer.kind {
            Kind::Floor => {
                let config = dir.join("haproxy.cfg");
                b.render("floor.redirect.cfg", &config, &vars)?;
                config
            }
            _ => super::hop_config(b, peer, side, "cfg", &vars[1..])?,
        };
        own(&dir)?;
        let args = vec!["-db".to_string(), "-f".to_string(), config.display().to_string()];
        let pid = b.start_in(&netns, true, 1, &dir.join("haproxy.log"), Path::new("haproxy"), &args)?;
        Hop { pids: vec![pid], ready: None, admin: None }
    };
    Ok(hop)
}

/// The proxy's scratch folder belongs to the proxy uid (HAProxy writes its pid file there).
fn own(dir: &Path) -> Result<()> {
    run_ok("chown", &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), &dir.display().to_string()])
}

/// braid-mtls-redirect's identity stand-in, in the server pod on a port the inbound redirect
/// skips, reached by A across the veth pair (as the proxy uid: not redirected) and by B on its
/// own pod's address; CPU 0. Its trust bundle file.
fn identity_stub(b: &mut Bench, peer: Peer, pods: &Pods) -> Result<String> {
    let dir = b.work.join(format!("{peer}-identity"));
    let bundle = dir.join("ca-bundle.crt");
    if bundle.is_file() {
        return Ok(bundle.display().to_string());
    }
    fs::create_dir_all(&dir)?;
    let stub = b.tools.identity_stub.clone();
    let log = dir.join("identity-stub.log");
    let args = [format!("{}:{IDENTITY_PORT}", pods.server_ip), bundle.display().to_string()];
    b.start_in(&pods.server_ns, false, 0, &log, &stub, &args)?;
    super::braid::wait_for_bundle(&bundle, &log)?;
    Ok(bundle.display().to_string())
}

/// The connections `chain`'s REDIRECT rule took in `netns`.
fn redirected(b: &Bench, netns: &str, chain: &str) -> Result<u64> {
    let listing = b.output_in(netns, false, "iptables", &["-t", "nat", "-L", chain, "-n", "-v", "-x"])?;
    pods::redirected(&listing).with_context(|| format!("no REDIRECT rule in {chain} of {netns}:\n{listing}"))
}

fn metrics(b: &Bench, netns: &str) -> Result<String> {
    b.output_in(netns, false, "curl", &["-fs", &format!("http://127.0.0.1:{ADMIN_PORT}/metrics")])
}

/// While a client in the client pod holds connections to the Service open: the client's
/// connections were redirected (the REDIRECT rules' counters), A holds a connection to B's pod
/// address, and the peer's own checks (braid: both counted requests, B saw A's SPIFFE id; the
/// floor: B holds one to the origin; HAProxy with mTLS: B refuses anything but A's certificate).
pub fn verify(b: &mut Bench, peer: Peer, pair: &Pair) -> Result<()> {
    let pods = pair.pods.as_ref().context("not a pair on the redirect path")?;
    let (client, server) = (pods.client_ns.as_str(), pods.server_ns.as_str());
    if redirected(b, client, "BRAID_OUTBOUND_REDIRECT")? == 0 {
        bail!("{peer}: no connection of the client pod was redirected to A");
    }
    if redirected(b, server, "BRAID_INBOUND_REDIRECT")? == 0 {
        bail!("{peer}: no connection to the server pod was redirected to B");
    }
    if b.established_in(Some(client), &format!("( dport = :{APP_PORT} )"))? == 0 {
        bail!("{peer} A holds no connection to B's pod address {}", pods.app());
    }
    if peer.kind.is_braid() {
        super::braid::check_counted(peer, &metrics(b, client)?, &metrics(b, server)?)?;
    }
    if peer.kind == Kind::Floor && b.established_in(Some(server), &format!("( dport = :{APP_PORT} )"))? == 0 {
        bail!("{peer} B holds no connection to the origin");
    }
    if peer.mtls && !peer.kind.is_braid() {
        mtls_only(b, peer, pods)?;
    }
    Ok(())
}

/// As `super::mtls_only`, from the client pod as the proxy uid (not redirected) to B's pod
/// address, which the server pod's rule redirects to B.
fn mtls_only(b: &mut Bench, peer: Peer, pods: &Pods) -> Result<()> {
    let pki = super::pki(b)?;
    let url = format!("https://server.mesh.local:{APP_PORT}/1k");
    let resolve = format!("server.mesh.local:{APP_PORT}:{}", pods.server_ip);
    let ca = pki.join("ca.crt").display().to_string();
    let quiet = ["-fs", "--max-time", "3", "-o", "/dev/null"];
    let curl = |args: &[&str]| b.output_in(&pods.client_ns, true, "curl", args).is_ok();
    let plain = format!("http://{}/1k", pods.app());
    if curl(&[&quiet[..], &[plain.as_str()]].concat()) {
        bail!("{peer} B answered plaintext HTTP");
    }
    let tls = [&quiet[..], &["--resolve", &resolve, "--cacert", &ca, &url]].concat();
    if curl(&tls) {
        bail!("{peer} B answered TLS without a client certificate");
    }
    let (crt, key) =
        (pki.join("client.crt").display().to_string(), pki.join("client.key").display().to_string());
    if !curl(&[&tls[..], &["--cert", &crt, "--key", &key]].concat()) {
        bail!("{peer} B refused A's client certificate");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_that_cannot_take_the_redirect_say_why() {
        for name in ["envoy-redirect", "nginx-mtls-redirect", "splice-redirect", "braid-traced-redirect"] {
            assert!(refused(Peer::parse(name).expect(name)).is_some(), "{name}");
        }
        for name in ["braid-redirect", "braid-mtls-redirect", "haproxy-mtls-redirect", "floor-redirect"] {
            assert!(refused(Peer::parse(name).expect(name)).is_none(), "{name}");
        }
    }
}
