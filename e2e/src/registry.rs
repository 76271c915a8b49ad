//! The local cluster's image registry, as images/build.sh leaves it: the images pushed there, which
//! the node pulls by name (braid.dev/NAME through its mirror), and the Helm values that pin the
//! chart to the digests last pushed.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::repo_root;

/// The node's registry as `cluster.sh registry` describes it.
pub struct Registry {
    /// HOST:PORT.
    pub address: String,
    /// The CA certificate that signed the registry's serving certificate.
    pub ca: String,
    /// The crane binary built with the cluster's tools.
    pub crane: String,
}

impl Registry {
    /// Panics with what to run when the registry is not up.
    pub fn get() -> Registry {
        let script = repo_root().join("e2e/cluster/cluster.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("registry")
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        match (output.status.success(), lines.as_slice()) {
            (true, [address, ca, crane, ..]) => {
                Registry { address: (*address).to_owned(), ca: (*ca).to_owned(), crane: (*crane).to_owned() }
            }
            _ => panic!(
                "the local cluster's registry is not up (cluster.sh registry: {}): start it with make cluster-up",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    /// crane with `args`, trusting the cluster CA; the output whatever the exit status.
    pub fn crane(&self, args: &[&str]) -> Output {
        let host = self.address.split(':').next().unwrap_or_default();
        Command::new(&self.crane)
            .args(args)
            .env("SSL_CERT_FILE", &self.ca)
            .env("NO_PROXY", host)
            .env("no_proxy", host)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.crane))
    }

    /// Panics, saying to run `make images`, unless `image` (braid.dev/NAME:TAG) is in the
    /// registry, where the node pulls it from.
    pub fn require_pushed(&self, image: &str) {
        let (name, tag) = image
            .strip_prefix("braid.dev/")
            .and_then(|rest| rest.split_once(':'))
            .unwrap_or_else(|| panic!("{image} is not braid.dev/NAME:TAG"));
        let reference = format!("{}/{name}:{tag}", self.address);
        let output = self.crane(&["digest", &reference]);
        assert!(
            output.status.success(),
            "image {image} is not in the local cluster's registry (crane digest {reference}: {}): \
             build and push the images with: make images",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// crane with `args`; panics with crane's message unless it succeeds. Its stdout.
    pub fn crane_ok(&self, args: &[&str]) -> String {
        let output = self.crane(args);
        assert!(
            output.status.success(),
            "crane {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The Helm values file images/build.sh writes after pushing: image.digests of the operator, the
/// webhook and the proxy, so that a release runs exactly the images just built.
pub fn digests_values() -> PathBuf {
    let script = repo_root().join("images/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--digests-values")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr).trim());
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}
