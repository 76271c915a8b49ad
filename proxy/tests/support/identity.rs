//! The in-process identity endpoint and CA of the proxy's tests (shared with the benchmark's
//! stand-in, examples/identity_stub), and the files a proxy's identity reads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

#[path = "../../examples/identity_stub/stub.rs"]
mod stub;
#[allow(unused_imports)] // used by tests/mtls.rs, not by every test crate that shares support/
pub use stub::{Authority, IdentityServer};

/// The files a proxy's identity reads, and the `identity:` block of its configuration.
pub struct IdentityFiles {
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub token: PathBuf,
}

impl IdentityFiles {
    pub fn new(bundle_pem: &str, identity: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca-bundle.crt");
        let token = dir.path().join("token");
        std::fs::write(&bundle, bundle_pem).unwrap();
        std::fs::write(&token, format!("token-for:{identity}")).unwrap();
        Self { dir, bundle, token }
    }

    pub fn config(&self, identity: &str, server: SocketAddr) -> String {
        format!(
            "identity:\n  identity: {identity}\n  endpoint: \"{server}\"\n  serverName: identity.test\n  tokenFile: {}\n  trustBundleFile: {}\n",
            self.token.display(),
            self.bundle.display()
        )
    }
}
