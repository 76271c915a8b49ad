//! The rules themselves, as pure functions of the redirect and the current nat table: the
//! `iptables-restore --noflush` input that installs or removes Braid's chains, and the dry run.

use std::collections::BTreeSet;

use super::args::{PortRange, Redirect};
use super::family::Family;

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

/// How iptables' multiport match spells a range: "80" or "8000:8010".
fn multiport(range: PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}:{}", range.first, range.last)
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

#[cfg(test)]
mod tests {
    use super::super::args::fixtures::{parse, webhook_redirect};
    use super::*;

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
}
