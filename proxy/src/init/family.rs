//! IP families: which iptables program handles each, and whether IPv6 is on in this namespace.

use std::path::Path;

/// An IP family, and the iptables that handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    pub(super) fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// Whether IPv6 works in this network namespace: when it does not, nothing can go around the
/// proxy over it and there is nothing for ip6tables to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6 {
    Enabled,
    /// Why it is off, for the log.
    Disabled(&'static str),
}

impl Ipv6 {
    /// Reads `net.ipv6.conf.all.disable_ipv6` under `sysctls` (/proc/sys/net/ipv6). A value it
    /// cannot make sense of counts as enabled: then the rules are installed or init fails, and
    /// IPv6 is never left open on a guess.
    pub fn detect(sysctls: &Path) -> Self {
        if !sysctls.exists() {
            return Self::Disabled("the kernel has no IPv6 (booted with ipv6.disable=1)");
        }
        match std::fs::read_to_string(sysctls.join("conf/all/disable_ipv6")) {
            Ok(value) if value.trim() == "1" => Self::Disabled("net.ipv6.conf.all.disable_ipv6 = 1"),
            _ => Self::Enabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_as_disabled_only_when_the_namespace_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let sysctls = dir.path().join("ipv6");
        assert_eq!(
            Ipv6::detect(&sysctls),
            Ipv6::Disabled("the kernel has no IPv6 (booted with ipv6.disable=1)")
        );
        std::fs::create_dir_all(sysctls.join("conf/all")).unwrap();
        // A value it cannot read is no reason to leave IPv6 without rules.
        assert_eq!(Ipv6::detect(&sysctls), Ipv6::Enabled);
        let value = sysctls.join("conf/all/disable_ipv6");
        for (content, expected) in [
            ("1\n", Ipv6::Disabled("net.ipv6.conf.all.disable_ipv6 = 1")),
            ("0\n", Ipv6::Enabled),
            ("", Ipv6::Enabled),
            ("yes\n", Ipv6::Enabled),
        ] {
            std::fs::write(&value, content).unwrap();
            assert_eq!(Ipv6::detect(&sysctls), expected, "{content:?}");
        }
    }
}
