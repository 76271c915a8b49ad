//! `braid-proxy init`: the iptables rules that redirect a pod's traffic through the proxy.
//!
//! It runs once per pod, as the first init container, in the pod's network namespace, and edits
//! only the nat table, through one `iptables-restore --noflush` transaction per IP family
//! (iptables for IPv4, ip6tables for IPv6, the same rules in both) that replaces Braid's own
//! chains and leaves every other rule alone (the layout of Linkerd's proxy-init and Istio's
//! istio-iptables):
//!
//! ```text
//! PREROUTING -> BRAID_PREROUTING   TCP arriving at the pod, except the proxy's own ports and the
//!                                  skipped inbound ports -> BRAID_INBOUND_REDIRECT -> inbound port
//! OUTPUT     -> BRAID_OUTPUT       TCP the pod's processes open, except the proxy's (by uid), what
//!                                  stays in the pod (lo) and the skipped outbound ports
//!                                  -> BRAID_OUTBOUND_REDIRECT -> outbound port
//! ```
//!
//! The proxy finds where a redirected connection was going with SO_ORIGINAL_DST, or
//! IP6T_SO_ORIGINAL_DST for IPv6 ([`crate::original_dst`]).
//!
//! IPv6 is never left open: rules a family lacks are a way around STRICT mTLS and every policy.
//! When IPv6 is enabled in the namespace and ip6tables cannot install the rules, init fails and
//! says what to do; when IPv6 is disabled there (`net.ipv6.conf.all.disable_ipv6 = 1`, or a
//! kernel without IPv6) nothing can go around the proxy over it, and init says so and goes on
//! with IPv4 alone. The IPv6 rules are applied first, so that a failure there leaves the IPv4
//! side as it was too.
//!
//! What the rules ask of the proxy: redirected outbound connections arrive at 127.0.0.1 (::1 for
//! IPv6), where its outbound listener should bind (outsiders have no business reaching it); and
//! since its own connections are never redirected, one it opens to an endpoint that is this very
//! pod reaches the app directly, not the inbound side, so it must not speak mTLS to its own pod IP.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

use tracing::{debug, info, warn};

pub const PREROUTING_CHAIN: &str = "BRAID_PREROUTING";
pub const INBOUND_REDIRECT_CHAIN: &str = "BRAID_INBOUND_REDIRECT";
pub const OUTPUT_CHAIN: &str = "BRAID_OUTPUT";
pub const OUTBOUND_REDIRECT_CHAIN: &str = "BRAID_OUTBOUND_REDIRECT";

/// Braid's chains, in the order they are created.
const CHAINS: [&str; 4] = [PREROUTING_CHAIN, INBOUND_REDIRECT_CHAIN, OUTPUT_CHAIN, OUTBOUND_REDIRECT_CHAIN];
/// The jumps from the built-in chains into Braid's: (built-in chain, Braid's chain).
const JUMPS: [(&str, &str); 2] = [("PREROUTING", PREROUTING_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];
/// The multiport match takes at most 15 ports per rule, a range counting as two.
const MULTIPORT_MAX: usize = 15;
/// How long iptables-restore waits for the xtables lock (iptables-legacy takes it; a pod has its
/// own lock file, but a shared host /run would otherwise fail a concurrent run at once).
const LOCK_WAIT_SECONDS: &str = "10";
/// Per network namespace: a process reads the value of its own namespace.
const IPV6_SYSCTLS: &str = "/proc/sys/net/ipv6";

/// An IP family, and the iptables that handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

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
    fn tools(&self, family: Family) -> Tools {
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
struct Tool {
    path: PathBuf,
    flag: &'static str,
}

#[derive(Debug, Clone)]
struct Tools {
    restore: Tool,
    save: Tool,
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
    fn ipv6(self) -> Self {
        Self::Ipv6NotRedirected { cause: Box::new(self) }
    }
}

pub use braid_runtime::ports::PortRange;

/// How iptables' multiport match spells a range: "80" or "8000:8010".
fn multiport(range: PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}:{}", range.first, range.last)
    }
}

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

/// What the nat table holds now, as `iptables-save -t nat` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    chains: BTreeSet<String>,
    /// The rules, as `-A CHAIN spec...` lines.
    rules: Vec<String>,
}

impl NatState {
    pub fn parse(iptables_save: &str) -> Self {
        let mut state = Self::default();
        for line in iptables_save.lines().map(str::trim) {
            if let Some(declaration) = line.strip_prefix(':') {
                if let Some(chain) = declaration.split_whitespace().next() {
                    state.chains.insert(chain.to_owned());
                }
            } else if line.starts_with("-A ") {
                state.rules.push(line.to_owned());
            }
        }
        state
    }

    /// Whether any of Braid's chains or jumps is there.
    pub fn has_braid(&self) -> bool {
        CHAINS.iter().any(|chain| self.chains.contains(*chain))
            || self.rules.iter().any(|r| jumps_to_braid(r))
    }

    fn count(&self, rule: &str) -> usize {
        self.rules.iter().filter(|existing| *existing == rule).count()
    }
}

/// Whether a rule of another chain sends packets into one of Braid's chains.
fn jumps_to_braid(rule: &str) -> bool {
    let tokens: Vec<&str> = rule.split_whitespace().collect();
    let own_chain = tokens.get(1).is_some_and(|chain| CHAINS.contains(chain));
    !own_chain && tokens.windows(2).any(|pair| matches!(pair[0], "-j" | "-g") && CHAINS.contains(&pair[1]))
}

/// The `iptables-restore --noflush` input that installs `redirect` over the `current` nat table.
pub fn render_install(redirect: &Redirect, current: &NatState) -> String {
    // Declaring a chain creates it, or empties it when it exists (iptables-nft and -legacy alike,
    // with --noflush): a second run replaces Braid's rules instead of adding a copy.
    let mut lines: Vec<String> = CHAINS.iter().map(|chain| format!(":{chain} - [0:0]")).collect();
    let mut rule = |chain: &str, spec: &str| lines.push(format!("-A {chain} {spec}"));

    // The proxy's own ports: connections made straight to them need no redirect, and the
    // outbound port is not for outsiders to reach through the inbound side.
    rule(
        PREROUTING_CHAIN,
        &format!(
            "-p tcp -m multiport --dports {},{} -j RETURN",
            redirect.inbound_port, redirect.outbound_port
        ),
    );
    for ports in multiport_lists(&redirect.skip_inbound) {
        rule(PREROUTING_CHAIN, &format!("-p tcp -m multiport --dports {ports} -j RETURN"));
    }
    rule(PREROUTING_CHAIN, &format!("-p tcp -j {INBOUND_REDIRECT_CHAIN}"));
    rule(INBOUND_REDIRECT_CHAIN, &format!("-p tcp -j REDIRECT --to-ports {}", redirect.inbound_port));

    // First the proxy's own connections: its upstream connections and its connections to the
    // app must leave as they are, or they would come straight back to it, forever.
    rule(OUTPUT_CHAIN, &format!("-m owner --uid-owner {} -j RETURN", redirect.proxy_uid));
    // Then what stays inside the pod: the kernel routes 127.0.0.0/8 and the pod's own IPs over
    // lo. As in Linkerd's proxy-init, it goes straight to its listener: containers of one pod
    // talking to each other (or an app to itself by pod IP) cross no network, identity or
    // policy boundary. Through the outbound proxy it would only come back to the same pod as
    // the proxy's uid, skipping the inbound side anyway; Istio instead sends the proxy's own lo
    // traffic to the inbound port, which loops unless the inbound proxy dials 127.0.0.1 only.
    rule(OUTPUT_CHAIN, "-o lo -j RETURN");
    for ports in multiport_lists(&redirect.skip_outbound) {
        rule(OUTPUT_CHAIN, &format!("-p tcp -m multiport --dports {ports} -j RETURN"));
    }
    rule(OUTPUT_CHAIN, &format!("-p tcp -j {OUTBOUND_REDIRECT_CHAIN}"));
    rule(OUTBOUND_REDIRECT_CHAIN, &format!("-p tcp -j REDIRECT --to-ports {}", redirect.outbound_port));

    // Exactly one jump from each built-in chain: added when missing, extra copies (left by a
    // tool that appended blindly) deleted.
    for (builtin, chain) in JUMPS {
        let jump = format!("{builtin} -j {chain}");
        match current.count(&format!("-A {jump}")) {
            0 => lines.push(format!("-A {jump}")),
            present => lines.extend((1..present).map(|_| format!("-D {jump}"))),
        }
    }
    restore_input(&lines)
}

/// The `iptables-restore --noflush` input that removes Braid's jumps and chains from the `current`
/// nat table, or `None` when there is nothing of Braid's in it.
pub fn render_remove(current: &NatState) -> Option<String> {
    // Every rule that enters Braid's chains, whatever its spec, so that the chains can go.
    let mut lines: Vec<String> = current
        .rules
        .iter()
        .filter(|rule| jumps_to_braid(rule))
        .filter_map(|rule| rule.strip_prefix("-A ").map(|spec| format!("-D {spec}")))
        .collect();
    let present: Vec<&str> = CHAINS.iter().copied().filter(|chain| current.chains.contains(*chain)).collect();
    // All emptied before any is deleted: Braid's chains jump to each other.
    lines.extend(present.iter().map(|chain| format!("-F {chain}")));
    lines.extend(present.iter().map(|chain| format!("-X {chain}")));
    (!lines.is_empty()).then(|| restore_input(&lines))
}

fn restore_input(lines: &[String]) -> String {
    format!("*nat\n{}\nCOMMIT\n", lines.join("\n"))
}

/// The port lists of multiport matches ("4191,80,8000:8010"), split to fit its limit.
fn multiport_lists(ranges: &[PortRange]) -> Vec<String> {
    let mut lists = Vec::new();
    let mut list: Vec<String> = Vec::new();
    let mut used = 0;
    for range in ranges {
        let cost = if range.first == range.last { 1 } else { 2 };
        if used + cost > MULTIPORT_MAX {
            lists.push(list.join(","));
            list.clear();
            used = 0;
        }
        list.push(multiport(*range));
        used += cost;
    }
    if !list.is_empty() {
        lists.push(list.join(","));
    }
    lists
}

/// What init does in one family's nat table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub family: Family,
    /// The `iptables-restore --noflush` input; `None` when there is nothing to remove.
    pub input: Option<String>,
    /// Comment lines a dry run prints above the input (why the table was taken as empty, or
    /// that a real run skips this family).
    pub notes: Vec<String>,
}

impl Step {
    /// The step that installs `redirect` (or with `None` removes Braid's rules) over `current`.
    pub fn plan(family: Family, redirect: Option<&Redirect>, current: &NatState) -> Self {
        // The same rules for both families: no address appears in them, and REDIRECT sends
        // IPv6 to ::1 (OUTPUT) or the receiving interface's address (PREROUTING) as it sends
        // IPv4 to 127.0.0.1 or the interface's.
        let input = match redirect {
            Some(redirect) => Some(render_install(redirect, current)),
            None => render_remove(current),
        };
        Self { family, input, notes: Vec::new() }
    }
}

/// What `--dry-run` prints: each family's restore input under a heading naming the family.
pub fn render_dry_run(steps: &[Step]) -> String {
    let mut text = String::new();
    for step in steps {
        text.push_str(&format!("# {}: {} --noflush input\n", step.family.name(), step.family.restore()));
        for note in &step.notes {
            text.push_str(&format!("# {note}\n"));
        }
        match &step.input {
            Some(input) => text.push_str(input),
            None => text.push_str("# nothing of Braid's in the nat table: nothing to remove\n"),
        }
    }
    text
}

/// Installs (or with `--remove` deletes) the redirect in the current network namespace, for
/// IPv4 and, unless it is disabled here, IPv6.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let redirect = if args.remove { None } else { Some(Redirect::from_args(args)?) };
    let ipv6 = Ipv6::detect(Path::new(IPV6_SYSCTLS));
    // Every table is read before any is changed: a family that cannot be done stops init first.
    // An install that cannot cover IPv6 says what that means; a removal's errors speak alone.
    let ipv6_error = |family, err: InitError| match (family, &redirect) {
        (Family::V6, Some(_)) => err.ipv6(),
        _ => err,
    };
    let mut steps = Vec::new();
    let mut replaced = false;
    for family in [Family::V4, Family::V6] {
        let tools = args.tools(family);
        let disabled = match (family, &ipv6) {
            (Family::V6, Ipv6::Disabled(why)) => Some(*why),
            _ => None,
        };
        if let (Some(why), false) = (disabled, args.dry_run) {
            info!(
                reason = why,
                "IPv6 is disabled in this network namespace: no IPv6 traffic can go around the proxy, \
                 so no ip6tables rules are needed and none are installed"
            );
            continue;
        }
        let (current, note) = match read_nat(&tools.save) {
            Ok(current) => (current, None),
            // A dry run is also how one reviews the rules on a machine without iptables or root.
            Err(err) if args.dry_run => {
                warn!(%err, family = family.name(), "cannot read the nat table; rendering for a table without Braid's rules");
                (
                    NatState::default(),
                    Some(format!(
                        "the nat table could not be read ({err}); rendered for one without Braid's rules"
                    )),
                )
            }
            Err(err) => return Err(ipv6_error(family, err)),
        };
        replaced |= current.has_braid();
        let mut step = Step::plan(family, redirect.as_ref(), &current);
        step.notes.extend(note);
        if let Some(why) = disabled {
            step.notes
                .push(format!("IPv6 is disabled in this network namespace ({why}): a real run skips these"));
        }
        steps.push((step, tools));
    }

    if args.dry_run {
        let text = render_dry_run(&steps.into_iter().map(|(step, _)| step).collect::<Vec<_>>());
        let mut stdout = io::stdout().lock();
        return stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(InitError::Stdout);
    }
    // IPv6 first: it is the family more likely to fail (a node without IPv6 NAT), and failing
    // before IPv4 is touched leaves the namespace as it was.
    for (step, tools) in steps.iter().rev() {
        let Some(input) = &step.input else {
            info!(
                family = step.family.name(),
                "no Braid chains or jumps in the nat table: nothing to remove"
            );
            continue;
        };
        debug!(family = step.family.name(), rules = %input, "applying with iptables-restore --noflush");
        apply(&tools.restore, input).map_err(|err| ipv6_error(step.family, err))?;
    }
    let families = if steps.len() == 2 { "IPv4 and IPv6" } else { "IPv4" };
    match redirect {
        Some(redirect) => info!(
            inbound_port = redirect.inbound_port,
            skip_inbound_ports = %PortList(redirect.skip_inbound),
            outbound_port = redirect.outbound_port,
            skip_outbound_ports = %PortList(redirect.skip_outbound),
            proxy_uid = redirect.proxy_uid,
            replaced,
            families,
            "installed the iptables redirect: inbound TCP to the inbound port, outbound TCP (except the \
             proxy's uid and lo) to the outbound port"
        ),
        None => info!(families, "removed Braid's chains and jumps from the nat table"),
    }
    Ok(())
}

fn read_nat(save: &Tool) -> Result<NatState, InitError> {
    let program = locate(save)?;
    let output = Command::new(&program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn { program: program.display().to_string(), source })?;
    if !output.status.success() {
        return Err(InitError::ReadFailed {
            program: program.display().to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(NatState::parse(&String::from_utf8_lossy(&output.stdout)))
}

fn apply(restore: &Tool, input: &str) -> Result<(), InitError> {
    let program = locate(restore)?;
    let name = program.display().to_string();
    let spawn_error = |source| InitError::Spawn { program: name.clone(), source };
    let mut child = Command::new(&program)
        .args(["--noflush", "--wait", LOCK_WAIT_SECONDS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // A write error (it exited early) is reported through its exit status and stderr below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(InitError::ApplyFailed {
            program: name,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The program to run: a path as given, or a name looked up on PATH and then in /usr/sbin and
/// /sbin, where Debian installs iptables but which a non-root PATH often lacks.
fn locate(tool: &Tool) -> Result<PathBuf, InitError> {
    let (program, flag) = (&tool.path, tool.flag);
    let missing = || InitError::ToolMissing { program: program.display().to_string(), flag };
    if program.components().count() > 1 {
        return if program.is_file() { Ok(program.to_owned()) } else { Err(missing()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|cli| cli.init)
    }

    /// What the webhook's init container passes for a pod without annotations.
    const WEBHOOK_ARGS: [&str; 4] =
        ["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", "--skip-inbound-ports=4191,80"];

    fn webhook_redirect() -> Redirect {
        Redirect::from_args(&parse(&WEBHOOK_ARGS).unwrap()).unwrap()
    }

    #[test]
    fn the_webhook_defaults_render_these_rules() {
        let rendered = render_install(&webhook_redirect(), &NatState::default());
        assert_eq!(
            rendered,
            "*nat
:BRAID_PREROUTING - [0:0]
:BRAID_INBOUND_REDIRECT - [0:0]
:BRAID_OUTPUT - [0:0]
:BRAID_OUTBOUND_REDIRECT - [0:0]
-A BRAID_PREROUTING -p tcp -m multiport --dports 4143,4140 -j RETURN
-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,80 -j RETURN
-A BRAID_PREROUTING -p tcp -j BRAID_INBOUND_REDIRECT
-A BRAID_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A BRAID_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A BRAID_OUTPUT -o lo -j RETURN
-A BRAID_OUTPUT -p tcp -j BRAID_OUTBOUND_REDIRECT
-A BRAID_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -j BRAID_PREROUTING
-A OUTPUT -j BRAID_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn skip_lists_with_ranges_become_multiport_returns() {
        let args = parse(&[
            "--proxy-uid=2102",
            "--inbound-port=4143",
            "--outbound-port=4140",
            "--skip-inbound-ports=4191, 8000-8010,",
            "--skip-outbound-ports=25,443,5000-5010",
        ])
        .unwrap();
        let rendered = render_install(&Redirect::from_args(&args).unwrap(), &NatState::default());
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines.contains(&"-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,8000:8010 -j RETURN"));
        let outbound: Vec<&str> =
            lines.iter().copied().filter(|l| l.starts_with("-A BRAID_OUTPUT ")).collect();
        assert_eq!(
            outbound,
            [
                "-A BRAID_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A BRAID_OUTPUT -o lo -j RETURN",
                "-A BRAID_OUTPUT -p tcp -m multiport --dports 25,443,5000:5010 -j RETURN",
                "-A BRAID_OUTPUT -p tcp -j BRAID_OUTBOUND_REDIRECT",
            ]
        );
    }

    #[test]
    fn long_skip_lists_are_split_at_fifteen_multiport_slots() {
        // 14 single ports and then a range (two slots) do not fit one rule.
        let mut ranges: Vec<PortRange> = (1..=14).map(PortRange::single).collect();
        ranges.push(PortRange { first: 100, last: 200 });
        ranges.push(PortRange::single(300));
        assert_eq!(multiport_lists(&ranges), ["1,2,3,4,5,6,7,8,9,10,11,12,13,14", "100:200,300"]);
        assert!(multiport_lists(&[]).is_empty());
    }

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

    const INSTALLED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:BRAID_INBOUND_REDIRECT - [0:0]
:BRAID_OUTBOUND_REDIRECT - [0:0]
:BRAID_OUTPUT - [0:0]
:BRAID_PREROUTING - [0:0]
-A PREROUTING -j BRAID_PREROUTING
-A PREROUTING -i eth1 -j BRAID_PREROUTING
-A OUTPUT -j BRAID_OUTPUT
-A OUTPUT -j BRAID_OUTPUT
-A POSTROUTING -o eth0 -j MASQUERADE
-A BRAID_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A BRAID_PREROUTING -p tcp -j BRAID_INBOUND_REDIRECT
COMMIT
";

    #[test]
    fn a_second_install_adds_no_jump_and_drops_duplicates() {
        let rendered = render_install(&webhook_redirect(), &NatState::parse(INSTALLED));
        let jumps: Vec<&str> =
            rendered.lines().filter(|l| l.starts_with("-A PREROUTING") || l.contains(" OUTPUT -j")).collect();
        assert_eq!(jumps, ["-D OUTPUT -j BRAID_OUTPUT"]);
        // The chains are declared again, which empties them before the rules are added.
        assert!(rendered.contains(":BRAID_PREROUTING - [0:0]\n"));
    }

    #[test]
    fn remove_deletes_every_jump_then_the_chains_and_nothing_else() {
        let rendered = render_remove(&NatState::parse(INSTALLED)).unwrap();
        assert_eq!(
            rendered,
            "*nat
-D PREROUTING -j BRAID_PREROUTING
-D PREROUTING -i eth1 -j BRAID_PREROUTING
-D OUTPUT -j BRAID_OUTPUT
-D OUTPUT -j BRAID_OUTPUT
-F BRAID_PREROUTING
-F BRAID_INBOUND_REDIRECT
-F BRAID_OUTPUT
-F BRAID_OUTBOUND_REDIRECT
-X BRAID_PREROUTING
-X BRAID_INBOUND_REDIRECT
-X BRAID_OUTPUT
-X BRAID_OUTBOUND_REDIRECT
COMMIT
"
        );
    }

    #[test]
    fn remove_is_a_no_op_on_a_table_without_braid() {
        let empty = NatState::parse("*nat\n:PREROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n");
        assert!(!empty.has_braid());
        assert_eq!(render_remove(&empty), None);
        assert!(NatState::parse(INSTALLED).has_braid());
    }

    #[test]
    fn a_missing_iptables_says_which_package_to_install() {
        let mut args = parse(&WEBHOOK_ARGS).unwrap();
        args.iptables_save = PathBuf::from("/nonexistent/iptables-save");
        let err = run(&args).unwrap_err().to_string();
        assert!(
            err.starts_with("/nonexistent/iptables-save not found: install the Debian package iptables"),
            "{err}"
        );
        let tool = Tool { path: PathBuf::from("braid-no-such-iptables-restore"), flag: "iptables-restore" };
        let err = apply(&tool, "").unwrap_err().to_string();
        assert!(err.contains("not found: install the Debian package iptables"), "{err}");
        assert!(err.contains("--iptables-restore"), "{err}");
    }

    /// What `ip6tables-save -t nat` (nf_tables) shows after an install with the webhook's
    /// arguments, and an older tool's extra jump.
    const INSTALLED6: &str = "# Generated by ip6tables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:BRAID_INBOUND_REDIRECT - [0:0]
:BRAID_OUTBOUND_REDIRECT - [0:0]
:BRAID_OUTPUT - [0:0]
:BRAID_PREROUTING - [0:0]
-A PREROUTING -j BRAID_PREROUTING
-A OUTPUT -j BRAID_OUTPUT
-A OUTPUT -j BRAID_OUTPUT
-A BRAID_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A BRAID_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
-A BRAID_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A BRAID_OUTPUT -o lo -j RETURN
-A BRAID_OUTPUT -p tcp -j BRAID_OUTBOUND_REDIRECT
-A BRAID_PREROUTING -p tcp -m multiport --dports 4143,4140 -j RETURN
-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,80 -j RETURN
-A BRAID_PREROUTING -p tcp -j BRAID_INBOUND_REDIRECT
COMMIT
";

    #[test]
    fn both_families_get_the_same_rules_each_over_its_own_table() {
        let redirect = webhook_redirect();
        let empty = NatState::default();
        let v4 = Step::plan(Family::V4, Some(&redirect), &empty);
        let v6 = Step::plan(Family::V6, Some(&redirect), &empty);
        assert_eq!(v4.input, Some(render_install(&redirect, &empty)));
        assert_eq!(v6.input, v4.input, "the same exclusions and redirects for IPv6");
        assert!(
            v6.input.as_deref().is_some_and(|input| input.contains("-A PREROUTING -j BRAID_PREROUTING\n"))
        );

        // Each family's jumps are counted in its own table: IPv6's duplicate goes, IPv4's
        // missing jumps are added.
        let v6 = Step::plan(Family::V6, Some(&redirect), &NatState::parse(INSTALLED6)).input.unwrap();
        let jumps: Vec<&str> =
            v6.lines().filter(|l| l.starts_with("-D ") || l.starts_with("-A OUTPUT")).collect();
        assert_eq!(jumps, ["-D OUTPUT -j BRAID_OUTPUT"]);
        let v4 = Step::plan(Family::V4, Some(&redirect), &empty).input.unwrap();
        assert!(
            v4.ends_with("-A PREROUTING -j BRAID_PREROUTING\n-A OUTPUT -j BRAID_OUTPUT\nCOMMIT\n"),
            "{v4}"
        );

        let remove = Step::plan(Family::V6, None, &NatState::parse(INSTALLED6));
        assert!(remove.input.is_some_and(|input| input.contains("-X BRAID_PREROUTING")));
        assert_eq!(Step::plan(Family::V6, None, &empty).input, None);
    }

    #[test]
    fn the_dry_run_shows_both_families_with_their_notes() {
        let redirect = webhook_redirect();
        let v4 = Step::plan(Family::V4, Some(&redirect), &NatState::default());
        let mut v6 = Step::plan(Family::V6, Some(&redirect), &NatState::default());
        v6.notes.push("IPv6 is disabled in this network namespace (x): a real run skips these".into());
        let text = render_dry_run(&[v4.clone(), v6]);
        let rules = v4.input.unwrap();
        assert_eq!(
            text,
            format!(
                "# IPv4: iptables-restore --noflush input\n{rules}\
                 # IPv6: ip6tables-restore --noflush input\n\
                 # IPv6 is disabled in this network namespace (x): a real run skips these\n{rules}"
            )
        );
        let nothing = render_dry_run(&[Step::plan(Family::V6, None, &NatState::default())]);
        assert_eq!(
            nothing,
            "# IPv6: ip6tables-restore --noflush input\n# nothing of Braid's in the nat table: nothing to remove\n"
        );
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
