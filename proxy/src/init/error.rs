//! What can go wrong in `braid-proxy init`, each error saying what to do about it.

use std::io;
use std::process::ExitStatus;

/// What went wrong in `braid-proxy init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("--{flag} is required to install the redirect (only --remove goes without it)")]
    MissingArgument { flag: &'static str },
    #[error(
        "--inbound-port and --outbound-port are both {0}: the proxy needs two different ports, \
         one for each direction"
    )]
    SamePorts(u16),
    #[error(
        "--proxy-uid=0 would exempt every root process of the pod from the redirect: run the proxy \
         as a uid of its own and pass that"
    )]
    RootProxyUid,
    #[error(
        "{program} not found: install the Debian package iptables (`apt-get install iptables`), \
         or pass --{flag} with its path"
    )]
    ToolMissing { program: String, flag: &'static str },
    #[error("could not run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error(
        "{program} -t nat failed ({status}): {stderr}; init must run as root (CAP_NET_ADMIN) in the \
         pod's network namespace"
    )]
    ReadFailed { program: String, status: ExitStatus, stderr: String },
    #[error(
        "{program} --noflush failed ({status}): {stderr}; `braid-proxy init --dry-run` with the same \
         arguments prints the rules it was given"
    )]
    ApplyFailed { program: String, status: ExitStatus, stderr: String },
    #[error("could not write the rules to stdout: {0}")]
    Stdout(io::Error),
    #[error(
        "IPv6 is enabled in this network namespace but its traffic cannot be redirected to the proxy, \
         so it would bypass the mesh (mTLS and every policy): {cause}. Either make ip6tables work in \
         the pod (ip6tables-restore and ip6tables-save, and IPv6 NAT in the node's kernel: nf_tables, \
         or the ip6table_nat module for iptables-legacy), or disable IPv6 in the pod's network \
         namespace (sysctl net.ipv6.conf.all.disable_ipv6=1)"
    )]
    Ipv6NotRedirected { cause: Box<InitError> },
}

impl InitError {
    /// `self` as the reason IPv6 is left without rules.
    pub(super) fn ipv6(self) -> Self {
        Self::Ipv6NotRedirected { cause: Box::new(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_failure_says_ipv6_would_bypass_the_mesh_and_what_to_do() {
        let cause = InitError::ToolMissing { program: "ip6tables-save".into(), flag: "ip6tables-save" };
        let err = cause.ipv6().to_string();
        assert!(err.starts_with("IPv6 is enabled in this network namespace"), "{err}");
        assert!(err.contains("would bypass the mesh"), "{err}");
        assert!(err.contains("ip6tables-save not found") && err.contains("--ip6tables-save"), "{err}");
        assert!(err.contains("ip6table_nat") && err.contains("net.ipv6.conf.all.disable_ipv6=1"), "{err}");
    }
}
