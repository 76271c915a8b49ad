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
//!
//! Here: `run`, which reads every table and then applies; `args` (the command line), `rules`
//! (the restore input, pure), `iptables` (running the programs), `family` (IPv4 and IPv6), `error`.

mod args;
mod error;
mod family;
mod iptables;
mod rules;

use std::io::{self, Write as _};
use std::path::Path;

use tracing::{debug, info, warn};

pub use args::{InitArgs, PortList, PortRange, Redirect, ip6_counterpart};
pub use error::InitError;
pub use family::{Family, Ipv6};
pub use rules::{
    INBOUND_REDIRECT_CHAIN, NatState, OUTBOUND_REDIRECT_CHAIN, OUTPUT_CHAIN, PREROUTING_CHAIN, Step,
    render_dry_run, render_install, render_remove,
};

/// Per network namespace: a process reads the value of its own namespace.
const IPV6_SYSCTLS: &str = "/proc/sys/net/ipv6";

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
        let (current, note) = match iptables::read_nat(&tools.save) {
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
        iptables::apply(&tools.restore, input).map_err(|err| ipv6_error(step.family, err))?;
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
