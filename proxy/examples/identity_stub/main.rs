//! A stand-in identity endpoint for benchmarks on one machine: it makes a CA, writes the trust
//! bundle to a file, serves POST /v1/certify on 127.0.0.1 (DNS name identity.test), and runs
//! until killed.
//!
//!   identity_stub LISTEN_PORT BUNDLE_FILE [LIFETIME_SECONDS]

mod stub;

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: identity_stub LISTEN_PORT BUNDLE_FILE [LIFETIME_SECONDS]";
    let port: u16 = args.next().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow::anyhow!(usage))?;
    let bundle = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let lifetime = args.next().and_then(|s| s.parse().ok()).unwrap_or(86_400);
    let authority = stub::Authority::new();
    std::fs::write(&bundle, &authority.root_pem)?;
    let server = stub::IdentityServer::start_on(authority, port).await?;
    *server.lifetime.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Duration::from_secs(lifetime);
    eprintln!("identity stub on {} (bundle {bundle})", server.addr);
    std::future::pending::<()>().await;
    Ok(())
}
