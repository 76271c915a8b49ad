//! The peers: each module starts one proxy of a pair (A or B) from its template in bench/proxy/
//! and checks that a pair of it really took the path the benchmark claims.

mod braid;
mod envoy;
mod floor;
mod haproxy;
mod nginx;
pub mod redirect;
mod splice;

use std::fs;
use std::path::PathBuf;

use anyhow::{Result, bail};
use braid_bench::settings::{Kind, Peer};

use crate::run::{Bench, Hop, Pair, Side, run_ok, succeeds};

/// Starts `peer`'s proxy for `side`, listening on `port` and forwarding to `upstream` (A: B's
/// port; B: the origin).
pub fn start_hop(b: &mut Bench, peer: Peer, side: Side, port: u16, upstream: u16) -> Result<Hop> {
    match peer.kind {
        Kind::Braid | Kind::BraidBaseline | Kind::BraidNoPgo | Kind::BraidTraced => {
            braid::start(b, peer, side, port, upstream)
        }
        Kind::Haproxy => haproxy::start(b, peer, side, port, upstream),
        Kind::Nginx => nginx::start(b, peer, side, port, upstream),
        Kind::Envoy => envoy::start(b, peer, side, port, upstream),
        Kind::Floor => floor::start(b, peer, side, port, upstream),
        Kind::Splice => splice::start(b, peer, side, port, upstream),
    }
}

/// Checks, after one request went through the pair and while a keep-alive connection is held
/// open, that it really took the path claimed.
pub fn verify(b: &mut Bench, peer: Peer, pair: &Pair) -> Result<()> {
    match peer.kind {
        Kind::Braid | Kind::BraidBaseline | Kind::BraidNoPgo | Kind::BraidTraced => {
            braid::verify(b, peer, pair)?
        }
        Kind::Envoy => envoy::verify(pair)?,
        Kind::Floor | Kind::Splice => floor::verify(b)?,
        // HAProxy B's `bind ... proto h2` refuses anything but HTTP/2 from A; nginx has no
        // HTTP/2 upstream.
        Kind::Haproxy | Kind::Nginx => {}
    }
    if peer.mtls && !peer.kind.is_braid() {
        mtls_only(b, peer, pair)?;
    }
    Ok(())
}

/// Renders `peer`'s template for `side` (PEER-SIDE.EXT, or PEER-SIDE.mtls.EXT: an -mtls scenario
/// differs only in the link between A and B; .redirect before EXT on the redirect path) into its
/// scratch folder; the rendered file.
pub fn hop_config(
    b: &mut Bench,
    peer: Peer,
    side: Side,
    ext: &str,
    vars: &[(&str, String)],
) -> Result<PathBuf> {
    let dir = b.hop_dir(peer, side)?;
    let name = match peer.kind {
        Kind::BraidBaseline | Kind::BraidNoPgo | Kind::BraidTraced => "braid",
        kind => kind.name(),
    };
    let link = if peer.mtls { ".mtls" } else { "" };
    let path = if peer.redirect { ".redirect" } else { "" };
    let template = format!("{name}-{}{link}{path}.{ext}", side.name());
    let out = dir.join(format!("{name}.{ext}"));
    let mut all = vec![("DIR", dir.display().to_string())];
    all.extend(vars.iter().cloned());
    if peer.mtls && !peer.kind.is_braid() {
        all.extend(tls_vars(b)?);
    }
    b.render(&template, &out, &all)?;
    Ok(out)
}

/// The certificate placeholders of the HAProxy, nginx and Envoy mTLS templates.
fn tls_vars(b: &mut Bench) -> Result<Vec<(&'static str, String)>> {
    let pki = pki(b)?;
    let file = |name: &str| pki.join(name).display().to_string();
    Ok(vec![
        ("CA", file("ca.crt")),
        ("SERVER_CRT", file("server.crt")),
        ("SERVER_KEY", file("server.key")),
        ("SERVER_PEM", file("server.pem")),
        ("CLIENT_CRT", file("client.crt")),
        ("CLIENT_KEY", file("client.key")),
        ("CLIENT_PEM", file("client.pem")),
    ])
}

/// A test CA and two ECDSA P-256 leaves (openssl), made once per run: B's server certificate for
/// server.mesh.local, A's client certificate. The .pem files hold certificate and key (HAProxy).
pub fn pki(b: &mut Bench) -> Result<PathBuf> {
    if let Some(pki) = &b.pki {
        return Ok(pki.clone());
    }
    let pki = b.work.join("pki");
    fs::create_dir_all(&pki)?;
    let p = |name: &str| pki.join(name).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    args.extend(["-days", "1", "-subj", "/CN=bench-ca", "-keyout", &ca_key, "-out", &ca_crt]);
    run_ok("openssl", &args)?;
    for leaf in ["server", "client"] {
        let (key, csr, crt, ext) = (
            p(&format!("{leaf}.key")),
            p(&format!("{leaf}.csr")),
            p(&format!("{leaf}.crt")),
            p(&format!("{leaf}.ext")),
        );
        let subject = format!("/CN={leaf}.mesh.local");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-subj", &subject, "-keyout", &key, "-out", &csr]);
        run_ok("openssl", &args)?;
        fs::write(&ext, format!("subjectAltName=DNS:{leaf}.mesh.local\nextendedKeyUsage={leaf}Auth\n"))?;
        run_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        )?;
        let pem = fs::read_to_string(&crt)? + &fs::read_to_string(&key)?;
        fs::write(p(&format!("{leaf}.pem")), pem)?;
    }
    // nginx workers run as nobody.
    for entry in fs::read_dir(&pki)? {
        run_ok("chmod", &["644", &entry?.path().display().to_string()])?;
    }
    b.pki = Some(pki.clone());
    Ok(pki)
}

/// The -mtls peers' B must refuse plaintext and TLS without a client certificate, and answer
/// TLS with A's certificate: then the request that just went through A was mutual TLS.
fn mtls_only(b: &mut Bench, peer: Peer, pair: &Pair) -> Result<()> {
    let pki = pki(b)?;
    let port = pair.port_b;
    let url = format!("https://server.mesh.local:{port}/1k");
    let resolve = format!("server.mesh.local:{port}:127.0.0.1");
    let ca = pki.join("ca.crt").display().to_string();
    let quiet = ["-fs", "--max-time", "3", "-o", "/dev/null"];
    let plain = format!("http://127.0.0.1:{port}/1k");
    if succeeds("curl", &[&quiet[..], &[plain.as_str()]].concat()) {
        bail!("{peer} B answered plaintext HTTP");
    }
    let tls = [&quiet[..], &["--resolve", &resolve, "--cacert", &ca, &url]].concat();
    if succeeds("curl", &tls) {
        bail!("{peer} B answered TLS without a client certificate");
    }
    let (crt, key) =
        (pki.join("client.crt").display().to_string(), pki.join("client.key").display().to_string());
    let with_cert = [&tls[..], &["--cert", &crt, "--key", &key]].concat();
    if !succeeds("curl", &with_cert) {
        bail!("{peer} B refused A's client certificate");
    }
    Ok(())
}
