//! A stand-in identity endpoint for benchmarks on one machine: it makes a CA, writes the trust
//! bundle to a file, serves POST /v1/certify on 127.0.0.1 (DNS name identity.test), and runs
//! until killed. LISTEN is a port on 127.0.0.1, or IP:PORT (the benchmark's redirect path serves
//! the proxies of two network namespaces from one of them).
//!
//!   identity_stub LISTEN BUNDLE_FILE [LIFETIME_SECONDS]

mod stub;

use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: identity_stub LISTEN_PORT|LISTEN_IP:PORT BUNDLE_FILE [LIFETIME_SECONDS]";
    let listen: SocketAddr = args
        .next()
        .and_then(|l| {
            l.parse::<u16>().map(|p| SocketAddr::from(([127, 0, 0, 1], p))).or_else(|_| l.parse()).ok()
        })
        .ok_or_else(|| anyhow::anyhow!(usage))?;
    let bundle = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let lifetime = args.next().and_then(|s| s.parse().ok()).unwrap_or(86_400);
    let authority = stub::Authority::new();
    std::fs::write(&bundle, &authority.root_pem)?;
    let server = stub::IdentityServer::start_at(authority, listen).await?;
    *server.lifetime.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Duration::from_secs(lifetime);
    eprintln!("identity stub on {} (bundle {bundle})", server.addr);
    std::future::pending::<()>().await;
    Ok(())
}
