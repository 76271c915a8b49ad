//! The command line of `braid-proxy init`, and the redirect it asks for once checked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::InitError;
use super::family::Family;

/// `braid-proxy init`: the arguments the webhook's init container passes.
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own connections are never redirected.
    #[arg(long, value_name = "UID", required_unless_present = "remove")]
    pub proxy_uid: Option<u32>,
    /// The proxy's inbound port: TCP arriving at the pod is redirected to it.
    #[arg(long, value_name = "PORT", required_unless_present = "remove",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: Option<u16>,
    /// The proxy's outbound port: TCP the pod's processes open is redirected to it.
    #[arg(long, value_name = "PORT", required_unless_present = "remove",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: Option<u16>,
    /// Inbound ports that reach the pod's processes directly, as a comma list of ports and
    /// ranges: "4191,80,8000-8010".
    #[arg(long, value_name = "PORTS", default_value = "", hide_default_value = true)]
    pub skip_inbound_ports: PortList,
    /// Outbound ports that bypass the proxy, as a comma list of ports and ranges: "25,443".
    #[arg(long, value_name = "PORTS", default_value = "", hide_default_value = true)]
    pub skip_outbound_ports: PortList,
    /// Delete Braid's rules and chains instead of installing them (nothing to do when absent).
    #[arg(long)]
    pub remove: bool,
    /// Print the iptables-restore input to stdout and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The iptables-restore to run (Debian package iptables), by path or name on PATH.
    #[arg(long, value_name = "PATH", default_value = "iptables-restore")]
    pub iptables_restore: PathBuf,
    /// The iptables-save that reads the current nat table, by path or name on PATH.
    #[arg(long, value_name = "PATH", default_value = "iptables-save")]
    pub iptables_save: PathBuf,
    /// The ip6tables-restore for the IPv6 rules [default: --iptables-restore's, with "iptables"
    /// in its file name read as "ip6tables": iptables-legacy-restore gives ip6tables-legacy-restore].
    #[arg(long, value_name = "PATH")]
    pub ip6tables_restore: Option<PathBuf>,
    /// The ip6tables-save that reads the current IPv6 nat table [default: derived from
    /// --iptables-save as --ip6tables-restore is from --iptables-restore].
    #[arg(long, value_name = "PATH")]
    pub ip6tables_save: Option<PathBuf>,
}

impl InitArgs {
    /// The restore and save programs of `family`.
    pub(super) fn tools(&self, family: Family) -> Tools {
        match family {
            Family::V4 => Tools {
                restore: Tool { path: self.iptables_restore.clone(), flag: "iptables-restore" },
                save: Tool { path: self.iptables_save.clone(), flag: "iptables-save" },
            },
            Family::V6 => Tools {
                restore: Tool {
                    path: self
                        .ip6tables_restore
                        .clone()
                        .unwrap_or_else(|| ip6_counterpart(&self.iptables_restore)),
                    flag: "ip6tables-restore",
                },
                save: Tool {
                    path: self.ip6tables_save.clone().unwrap_or_else(|| ip6_counterpart(&self.iptables_save)),
                    flag: "ip6tables-save",
                },
            },
        }
    }
}

/// A program to run, and the flag that names it (for the error when it is missing).
#[derive(Debug, Clone)]
pub(super) struct Tool {
    pub(super) path: PathBuf,
    pub(super) flag: &'static str,
}

#[derive(Debug, Clone)]
pub(super) struct Tools {
    pub(super) restore: Tool,
    pub(super) save: Tool,
}

/// The ip6tables program that goes with an iptables one: the same path with the first
/// "iptables" of its file name read as "ip6tables" (Debian names both backends' programs so).
/// A name without "iptables" gives the plain "ip6tables-…" of the same suffix.
pub fn ip6_counterpart(iptables: &Path) -> PathBuf {
    let name = iptables.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let counterpart = match name.find("iptables") {
        Some(at) if !name.contains("ip6tables") => format!("{}ip6tables{}", &name[..at], &name[at + 8..]),
        Some(_) => name,
        None if name.ends_with("-save") => "ip6tables-save".to_owned(),
        None => "ip6tables-restore".to_owned(),
    };
    iptables.with_file_name(counterpart)
}

pub use braid_runtime::ports::PortRange;

/// A comma list of ports and ranges, in the syntax of the webhook's skip-port annotations (and
/// parsed alike, since the webhook renders them straight into init's arguments): "25,443,8000-8100".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<PortRange>);

impl FromStr for PortList {
    type Err = String;

    /// Parsed as the webhook parses the annotations, so a list it rendered always reads back.
    fn from_str(value: &str) -> Result<Self, String> {
        braid_runtime::ports::parse_port_list(value).map(Self)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&braid_runtime::ports::render(&self.0))
    }
}

/// The redirect to install: [`InitArgs`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub skip_inbound: Vec<PortRange>,
    pub skip_outbound: Vec<PortRange>,
}

impl Redirect {
    pub fn from_args(args: &InitArgs) -> Result<Self, InitError> {
        let proxy_uid = args.proxy_uid.ok_or(InitError::MissingArgument { flag: "proxy-uid" })?;
        let inbound_port = args.inbound_port.ok_or(InitError::MissingArgument { flag: "inbound-port" })?;
        let outbound_port = args.outbound_port.ok_or(InitError::MissingArgument { flag: "outbound-port" })?;
        if proxy_uid == 0 {
            return Err(InitError::RootProxyUid);
        }
        if inbound_port == outbound_port {
            return Err(InitError::SamePorts(inbound_port));
        }
        Ok(Self {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound: args.skip_inbound_ports.0.clone(),
            skip_outbound: args.skip_outbound_ports.0.clone(),
        })
    }
}

/// What the tests of init's modules parse: its command line as the proxy's CLI embeds it.
#[cfg(test)]
pub(super) mod fixtures {
    use clap::Parser;

    use super::{InitArgs, Redirect};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    pub fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|cli| cli.init)
    }

    /// What the webhook's init container passes for a pod without annotations.
    pub const WEBHOOK_ARGS: [&str; 4] =
        ["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", "--skip-inbound-ports=4191,80"];

    pub fn webhook_redirect() -> Redirect {
        Redirect::from_args(&parse(&WEBHOOK_ARGS).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{WEBHOOK_ARGS, parse};
    use super::*;

    #[test]
    fn malformed_port_lists_are_rejected_naming_the_item() {
        for (value, needle) in [
            ("80,http", "\"http\" is not a port"),
            ("0", "\"0\" is not a port"),
            ("70000", "\"70000\" is not a port"),
            ("9000-8000", "ends before it starts"),
            ("80-", "\"80-\" is not a port"),
            ("1-2-3", "\"1-2-3\" is not a port"),
        ] {
            let flag = format!("--skip-outbound-ports={value}");
            let err = parse(&["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", &flag])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle) && err.contains("--skip-outbound-ports"), "{value:?}: {err}");
        }
        let err = parse(&["--proxy-uid=2102", "--inbound-port=0", "--outbound-port=4140"]).unwrap_err();
        assert!(err.to_string().contains("--inbound-port"), "{err}");
    }

    #[test]
    fn port_lists_render_back_in_the_webhook_syntax() {
        let list: PortList = " 25, 8000-8100 ,443,25,".parse().unwrap();
        assert_eq!(list.to_string(), "25,8000-8100,443");
        assert_eq!("".parse::<PortList>().unwrap(), PortList::default());
    }

    #[test]
    fn nonsensical_redirects_are_refused() {
        let same = parse(&["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4143"]).unwrap();
        assert!(matches!(Redirect::from_args(&same), Err(InitError::SamePorts(4143))));
        let root = parse(&["--proxy-uid=0", "--inbound-port=4143", "--outbound-port=4140"]).unwrap();
        assert!(Redirect::from_args(&root).unwrap_err().to_string().contains("--proxy-uid=0"));
        assert!(parse(&["--inbound-port=4143", "--outbound-port=4140"]).is_err());
        // Removing needs none of them.
        assert!(parse(&["--remove"]).unwrap().remove);
    }

    #[test]
    fn the_ip6tables_programs_follow_the_iptables_ones() {
        for (iptables, ip6tables) in [
            ("iptables-restore", "ip6tables-restore"),
            ("iptables-legacy-save", "ip6tables-legacy-save"),
            ("/usr/sbin/iptables-nft-restore", "/usr/sbin/ip6tables-nft-restore"),
            ("/opt/bin/ip6tables-restore", "/opt/bin/ip6tables-restore"),
            ("/opt/bin/restore-wrapper", "/opt/bin/ip6tables-restore"),
            ("/opt/bin/nat-save", "/opt/bin/ip6tables-save"),
        ] {
            assert_eq!(ip6_counterpart(Path::new(iptables)), PathBuf::from(ip6tables), "{iptables}");
        }
        let args =
            parse(&[&WEBHOOK_ARGS[..], &["--iptables-restore=iptables-legacy-restore"]].concat()).unwrap();
        let tools = args.tools(Family::V6);
        assert_eq!(tools.restore.path, PathBuf::from("ip6tables-legacy-restore"));
        assert_eq!(tools.save.path, PathBuf::from("ip6tables-save"));
        assert_eq!((tools.restore.flag, tools.save.flag), ("ip6tables-restore", "ip6tables-save"));
        let args = parse(&[&WEBHOOK_ARGS[..], &["--ip6tables-save=/x/save6"]].concat()).unwrap();
        assert_eq!(args.tools(Family::V6).save.path, PathBuf::from("/x/save6"));
        assert_eq!(args.tools(Family::V4).save.path, PathBuf::from("iptables-save"));
    }
}
