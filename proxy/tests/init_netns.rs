//! `braid-proxy init` with real iptables and ip6tables in real network namespaces, run as the
//! webhook's init container runs it. Needs root, `ip` (iproute2), iptables (with ip6tables) and
//! `setpriv` (util-linux): `make deps` installs them; a missing one fails the test, saying so.
//!
//! Each test builds a dual-stack pod: a namespace with lo up and a veth `eth0` at 10.9.0.1/24 and
//! fd00:9::1/64, whose other end is a peer namespace at 10.9.0.2/24 and fd00:9::2/64, standing for
//! the rest of the cluster. Listeners and clients run inside the namespaces as children of this
//! test binary, re-executed in probe mode (see [`probe`]): a listener (on both families) answers
//! each connection with where it landed ("pod port=4140 original_dst=10.9.0.2:80"), and the client
//! prints that answer for the test to assert.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// both a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const PROBE_ENV: &str = "BRAID_INIT_PROBE";
const LABEL_ENV: &str = "BRAID_INIT_PROBE_LABEL";
/// Set: the listener probe binds one dual-stack socket per port instead of one per family.
const DUAL_STACK_ENV: &str = "BRAID_INIT_PROBE_DUAL_STACK";
const PROXY_UID: &str = "2102";
/// The app's containers run as some other uid.
const APP_UID: &str = "1000";
const POD_IP: &str = "10.9.0.1";
const PEER_IP: &str = "10.9.0.2";
const POD_IP6: &str = "fd00:9::1";
const PEER_IP6: &str = "fd00:9::2";
/// The arguments of the webhook's init container for a pod without annotations.
const WEBHOOK_ARGS: [&str; 4] =
    ["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", "--skip-inbound-ports=4191,80"];
/// What `iptables-save -t nat`, and `ip6tables-save -t nat` alike, show after init with
/// [`WEBHOOK_ARGS`].
const WEBHOOK_RULES: &str = "
-A PREROUTING -j BRAID_PREROUTING
-A OUTPUT -j BRAID_OUTPUT
-A BRAID_PREROUTING -p tcp -m multiport --dports 4143,4140 -j RETURN
-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,80 -j RETURN
-A BRAID_PREROUTING -p tcp -j BRAID_INBOUND_REDIRECT
-A BRAID_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A BRAID_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A BRAID_OUTPUT -o lo -j RETURN
-A BRAID_OUTPUT -p tcp -j BRAID_OUTBOUND_REDIRECT
-A BRAID_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
";
/// Where the pod's processes listen: the proxy (outbound, inbound, admin) and the app.
const POD_PORTS: [u16; 6] = [4140, 4143, 4191, 80, 8080, 9000];
const TIMEOUT: Duration = Duration::from_secs(5);

// ---- the tests ----

#[test]
fn init_installs_braid_chains_and_a_second_run_changes_nothing() {
    let pod = Pod::new();
    let before = pod.nat_table();
    assert!(!before.contains("BRAID"), "a new namespace has no Braid rules:\n{before}");

    assert!(!pod.nat6_table().contains("BRAID"));

    pod.init(&WEBHOOK_ARGS);
    let installed = pod.nat_table();
    let installed6 = pod.nat6_table();
    for (save, table) in [("iptables-save", &installed), ("ip6tables-save", &installed6)] {
        assert_eq!(rules_by_chain(table), rules_by_chain(WEBHOOK_RULES), "{save} -t nat:\n{table}");
        for chain in ["BRAID_PREROUTING", "BRAID_INBOUND_REDIRECT", "BRAID_OUTPUT", "BRAID_OUTBOUND_REDIRECT"]
        {
            assert!(table.contains(&format!(":{chain} - [0:0]")), "{chain} missing from {save}:\n{table}");
        }
    }

    pod.init(&WEBHOOK_ARGS);
    assert_eq!(pod.nat_table(), installed, "a second init must leave one copy of the rules");
    assert_eq!(pod.nat6_table(), installed6, "a second init must leave one copy of the IPv6 rules");
}

#[test]
fn a_rerun_with_other_ports_replaces_the_rules() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    pod.init(
        &[&WEBHOOK_ARGS[..3], &["--skip-inbound-ports=4191,8000-8010", "--skip-outbound-ports=25"]].concat(),
    );
    for table in [pod.nat_table(), pod.nat6_table()] {
        let rules = rules_by_chain(&table);
        assert_eq!(
            rules["BRAID_PREROUTING"][1],
            "-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,8000:8010 -j RETURN"
        );
        assert_eq!(rules["BRAID_OUTPUT"][2], "-A BRAID_OUTPUT -p tcp -m multiport --dports 25 -j RETURN");
        assert_eq!((rules["PREROUTING"].len(), rules["OUTPUT"].len()), (1, 1), "{rules:#?}");
    }
}

#[test]
fn remove_restores_the_empty_nat_table_and_is_a_no_op_when_absent() {
    let pod = Pod::new();
    let (empty, empty6) = (pod.nat_table(), pod.nat6_table());
    pod.init(&["--remove"]);
    assert_eq!(pod.nat_table(), empty, "--remove on a namespace without Braid must change nothing");
    assert_eq!(pod.nat6_table(), empty6);

    pod.init(&WEBHOOK_ARGS);
    pod.init(&["--remove"]);
    assert_eq!((pod.nat_table(), pod.nat6_table()), (empty.clone(), empty6.clone()));
    pod.init(&["--remove"]);
    assert_eq!((pod.nat_table(), pod.nat6_table()), (empty, empty6));

    // And traffic flows as if Braid had never been there.
    let _peer = Server::start(&pod.peer, "peer", &[80]);
    let _app = Server::start(&pod.pod, "pod", &POD_PORTS);
    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 80), "peer port=80 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP6, 80), "peer port=80 original_dst=none");
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let pod = Pod::new();
    let (empty, empty6) = (pod.nat_table(), pod.nat6_table());
    let printed = pod.init(&[&WEBHOOK_ARGS[..], &["--dry-run"]].concat());
    let (v4, v6) = dry_run_families(&printed);
    for input in [v4, v6] {
        assert!(
            input.contains("*nat\n:BRAID_PREROUTING - [0:0]\n") && input.ends_with("COMMIT\n"),
            "{printed}"
        );
        assert_eq!(rules_by_chain(input), rules_by_chain(WEBHOOK_RULES), "{printed}");
    }
    assert_eq!(pod.nat_table(), empty, "--dry-run must not touch the nat table");
    assert_eq!(pod.nat6_table(), empty6, "--dry-run must not touch the IPv6 nat table");

    pod.init(&WEBHOOK_ARGS);
    let printed = pod.init(&["--remove", "--dry-run"]);
    let (v4, v6) = dry_run_families(&printed);
    assert!(v4.contains("-X BRAID_OUTPUT") && v6.contains("-X BRAID_OUTPUT"), "{printed}");
    assert!(pod.nat_table().contains("BRAID_OUTPUT"), "--remove --dry-run must not remove anything");
    assert!(pod.nat6_table().contains("BRAID_OUTPUT"), "--remove --dry-run must not remove anything");
}

/// The IPv4 and the IPv6 part of what `--dry-run` prints, each under its heading.
fn dry_run_families(printed: &str) -> (&str, &str) {
    let v4 = printed.strip_prefix("# IPv4: iptables-restore --noflush input\n");
    let split = v4.and_then(|rest| rest.split_once("# IPv6: ip6tables-restore --noflush input\n"));
    split.unwrap_or_else(|| panic!("no IPv4 then IPv6 heading in the dry run:\n{printed}"))
}

#[test]
fn outbound_connections_land_on_the_outbound_port_with_their_original_destination() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[80, 443]);

    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 80), "pod port=4140 original_dst=10.9.0.2:80");
    // Any destination, even one nothing routes to: the proxy decides where it goes.
    assert_eq!(connect(&pod.pod, Uid::Root, "10.96.0.10", 443), "pod port=4140 original_dst=10.96.0.10:443");
}

#[test]
fn the_proxy_uid_and_traffic_inside_the_pod_are_not_redirected() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[80]);

    assert_eq!(connect(&pod.pod, Uid::Proxy, PEER_IP, 80), "peer port=80 original_dst=none");
    // Containers of the pod talking to each other, by loopback or by the pod's own IP.
    assert_eq!(connect(&pod.pod, Uid::Root, "127.0.0.1", 9000), "pod port=9000 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::Root, POD_IP, 9000), "pod port=9000 original_dst=none");
    // The proxy's inbound side reaching the app.
    assert_eq!(connect(&pod.pod, Uid::Proxy, POD_IP, 8080), "pod port=8080 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::Proxy, "127.0.0.1", 8080), "pod port=8080 original_dst=none");
}

#[test]
fn skipped_outbound_ports_bypass_the_proxy() {
    let pod = Pod::new();
    pod.init(&[&WEBHOOK_ARGS[..], &["--skip-outbound-ports=443,5000-5010"]].concat());
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[443, 5000, 5005, 5010, 5011]);

    for port in [443, 5000, 5005, 5010] {
        assert_eq!(
            connect(&pod.pod, Uid::Root, PEER_IP, port),
            format!("peer port={port} original_dst=none")
        );
    }
    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 5011), "pod port=4140 original_dst=10.9.0.2:5011");
}

#[test]
fn inbound_connections_land_on_the_inbound_port_except_skipped_ports() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);

    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 8080), "pod port=4143 original_dst=10.9.0.1:8080");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 9000), "pod port=4143 original_dst=10.9.0.1:9000");
    // Skipped: the admin port (the kubelet's probes) and the annotation's port 80.
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 4191), "pod port=4191 original_dst=none");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 80), "pod port=80 original_dst=none");
    // The proxy's own ports, reached directly.
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 4143), "pod port=4143 original_dst=none");
}

#[test]
fn init_works_with_iptables_legacy_too() {
    // Debian's iptables package defaults to the nf_tables backend and ships the legacy one beside
    // it; a node whose kernel lacks nf_tables needs the other.
    let pod = Pod::new();
    // The IPv6 tools follow: ip6tables-legacy-restore and ip6tables-legacy-save.
    let legacy = ["--iptables-restore=iptables-legacy-restore", "--iptables-save=iptables-legacy-save"];
    pod.init(&[&WEBHOOK_ARGS[..], &legacy].concat());
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let saved = pod.pod.run(&[save.into(), "-t".into(), "nat".into()]);
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert_eq!(rules_by_chain(&saved), rules_by_chain(WEBHOOK_RULES), "{save} -t nat:\n{saved}");
    }
    {
        let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
        let _peer = Server::start(&pod.peer, "peer", &[80]);
        assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 80), "pod port=4140 original_dst=10.9.0.2:80");
        assert_eq!(connect(&pod.pod, Uid::Proxy, PEER_IP, 80), "peer port=80 original_dst=none");
        assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 8080), "pod port=4143 original_dst=10.9.0.1:8080");
        assert_eq!(connect(&pod.pod, Uid::App, PEER_IP6, 80), "pod port=4140 original_dst=[fd00:9::2]:80");
        assert_eq!(connect(&pod.pod, Uid::Proxy, PEER_IP6, 80), "peer port=80 original_dst=none");
        assert_eq!(
            connect(&pod.peer, Uid::Root, POD_IP6, 8080),
            "pod port=4143 original_dst=[fd00:9::1]:8080"
        );
    }
    pod.init(&[&["--remove"][..], &legacy].concat());
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let saved = pod.pod.run(&[save.into(), "-t".into(), "nat".into()]);
        assert!(!String::from_utf8_lossy(&saved.stdout).contains("BRAID"), "{save}");
    }
}

#[test]
fn bad_port_lists_are_refused_with_a_clear_error_and_change_nothing() {
    let pod = Pod::new();
    let empty = pod.nat_table();
    let output =
        pod.pod.run(&init_command(&[&WEBHOOK_ARGS[..3], &["--skip-inbound-ports=4191,http"]].concat()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "init accepted a bad port list");
    assert!(stderr.contains("--skip-inbound-ports") && stderr.contains("\"http\" is not a port"), "{stderr}");
    assert_eq!(pod.nat_table(), empty);
}

// ---- IPv6: redirected exactly as IPv4, or init fails ----

#[test]
fn ipv6_inbound_connections_land_on_the_inbound_port_except_skipped_ports() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);

    // Straight to the app's port on the pod's IPv6 address: the proxy gets it, not the app.
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 8080), "pod port=4143 original_dst=[fd00:9::1]:8080");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 9000), "pod port=4143 original_dst=[fd00:9::1]:9000");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 4191), "pod port=4191 original_dst=none");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 80), "pod port=80 original_dst=none");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 4143), "pod port=4143 original_dst=none");
}

#[test]
fn ipv6_outbound_connections_land_on_the_outbound_port_with_their_original_destination() {
    let pod = Pod::new();
    pod.init(&[&WEBHOOK_ARGS[..], &["--skip-outbound-ports=443"]].concat());
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[80, 443]);

    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP6, 80), "pod port=4140 original_dst=[fd00:9::2]:80");
    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP6, 80), "pod port=4140 original_dst=[fd00:9::2]:80");
    // A Service IP nothing routes to but the default route.
    assert_eq!(
        connect(&pod.pod, Uid::App, "fd00:96::10", 8443),
        "pod port=4140 original_dst=[fd00:96::10]:8443"
    );
    // The skip list holds for IPv6 too.
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP6, 443), "peer port=443 original_dst=none");
}

#[test]
fn over_ipv6_the_proxy_uid_and_traffic_inside_the_pod_are_not_redirected() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[80]);

    assert_eq!(connect(&pod.pod, Uid::Proxy, PEER_IP6, 80), "peer port=80 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::App, "::1", 9000), "pod port=9000 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::App, POD_IP6, 9000), "pod port=9000 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::Proxy, POD_IP6, 8080), "pod port=8080 original_dst=none");
    assert_eq!(connect(&pod.pod, Uid::Proxy, "::1", 8080), "pod port=8080 original_dst=none");
}

#[test]
fn without_ip6tables_init_refuses_to_leave_ipv6_open_and_changes_nothing() {
    let pod = Pod::new();
    let (empty, empty6) = (pod.nat_table(), pod.nat6_table());
    let stderr =
        pod.init_fails(&[&WEBHOOK_ARGS[..], &["--ip6tables-save=/nonexistent/ip6tables-save"]].concat());
    assert!(stderr.contains("IPv6 is enabled in this network namespace"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ip6tables-save not found"), "{stderr}");
    // What to do about it.
    assert!(stderr.contains("net.ipv6.conf.all.disable_ipv6=1"), "{stderr}");
    assert!(stderr.contains("--ip6tables-save"), "{stderr}");
    assert_eq!(pod.nat_table(), empty, "a failed init must not leave IPv4 rules behind");
    assert_eq!(pod.nat6_table(), empty6);

    // Removing cannot look at the IPv6 table either: said plainly, nothing removed.
    pod.init(&WEBHOOK_ARGS);
    let installed = pod.nat_table();
    let stderr = pod.init_fails(&["--remove", "--ip6tables-save=/nonexistent/ip6tables-save"]);
    assert!(
        stderr.contains("/nonexistent/ip6tables-save not found") && !stderr.contains("bypass"),
        "{stderr}"
    );
    assert_eq!(pod.nat_table(), installed);
}

#[test]
fn when_the_ipv6_rules_cannot_be_installed_init_fails_with_what_to_do() {
    let pod = Pod::new();
    let empty = pod.nat_table();
    // What iptables-legacy says on a node without the ip6table_nat module.
    let dir = tempfile::tempdir().unwrap();
    let restore = dir.path().join("ip6tables-restore");
    std::fs::write(
        &restore,
        "#!/bin/sh\ncat >/dev/null\necho \"ip6tables-restore v1.8.9 (legacy): can't initialize ip6tables \
         table \\`nat': Table does not exist (do you need to insmod?)\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&restore, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flag = format!("--ip6tables-restore={}", restore.display());
    let stderr = pod.init_fails(&[&WEBHOOK_ARGS[..], &[flag.as_str()]].concat());
    assert!(stderr.contains("IPv6 is enabled in this network namespace"), "{stderr}");
    assert!(stderr.contains("Table does not exist"), "{stderr}");
    assert!(
        stderr.contains("ip6table_nat") && stderr.contains("net.ipv6.conf.all.disable_ipv6=1"),
        "{stderr}"
    );
    // The IPv6 rules go first: the IPv4 side was not touched either.
    assert_eq!(pod.nat_table(), empty);
}

#[test]
fn with_ipv6_disabled_in_the_pod_init_says_so_and_redirects_ipv4() {
    let pod = Pod::new();
    run_ok(pod.pod.command("sysctl").args(["-w", "net.ipv6.conf.all.disable_ipv6=1"]));
    // No ip6tables needed then.
    let output = pod
        .pod
        .run(&init_command(&[&WEBHOOK_ARGS[..], &["--ip6tables-save=/nonexistent/ip6tables-save"]].concat()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("IPv6 is disabled in this network namespace"), "{stderr}");
    assert_eq!(rules_by_chain(&pod.nat_table()), rules_by_chain(WEBHOOK_RULES));
    assert!(!pod.nat6_table().contains("BRAID"));

    let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
    let _peer = Server::start(&pod.peer, "peer", &[80]);
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP, 80), "pod port=4140 original_dst=10.9.0.2:80");
    assert!(connect(&pod.pod, Uid::App, PEER_IP6, 80).starts_with("error "), "IPv6 is off in the pod");

    // Removing needs no ip6tables either.
    let output = pod.pod.run(&init_command(&["--remove", "--ip6tables-save=/nonexistent/ip6tables-save"]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!pod.nat_table().contains("BRAID"));
}

/// A listener configured dual-stack (`[::]:4143`) gets IPv4 connections as v4-mapped IPv6
/// addresses: their original destination is still the IPv4 one.
#[test]
fn a_dual_stack_listener_reads_both_families_original_destinations() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy = Server::start_dual_stack(&pod.pod, "pod", &[4140, 4143]);
    let _peer = Server::start(&pod.peer, "peer", &[80]);

    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 8080), "pod port=4143 original_dst=10.9.0.1:8080");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 8080), "pod port=4143 original_dst=[fd00:9::1]:8080");
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP, 80), "pod port=4140 original_dst=10.9.0.2:80");
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP6, 80), "pod port=4140 original_dst=[fd00:9::2]:80");
    // Not redirected: straight to the listener's port.
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 4143), "pod port=4143 original_dst=none");
}

/// The real proxy, with its default listeners, behind the real rules: IPv6 connections both ways
/// reach it, and it sends them on to where they were going.
#[test]
fn the_proxy_serves_redirected_ipv6_connections_both_ways() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    let _proxy = Proxy::start(&pod.pod);
    // The app on the pod's ports (not the proxy's), and a server beyond.
    let _app = Server::start(&pod.pod, "app", &[8080]);
    let _peer = Server::start(&pod.peer, "peer", &[80]);

    // Through the outbound proxy at [::1]:4140 to the original destination; the clients send
    // nothing, so the proxy forwards them as opaque TCP after its detect timeout.
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP6, 80), "peer port=80 original_dst=none");
    // Through the inbound proxy at [::]:4143 to the app.
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP6, 8080), "app port=8080 original_dst=none");
    // IPv4 as before.
    assert_eq!(connect(&pod.pod, Uid::App, PEER_IP, 80), "peer port=80 original_dst=none");
    assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 8080), "app port=8080 original_dst=none");
}

/// `braid-proxy` as the sidecar runs it (its uid, default listeners, no file), until dropped.
struct Proxy {
    child: Child,
}

impl Proxy {
    fn start(netns: &Netns) -> Self {
        let mut command = netns.command("setpriv");
        let (reuid, regid) = (format!("--reuid={PROXY_UID}"), format!("--regid={PROXY_UID}"));
        command.args([&reuid, &regid, "--clear-groups", env!("CARGO_BIN_EXE_braid-proxy")]);
        // No identity, no discovery: the proxy forwards by original destination alone.
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BRAID_")) {
            command.env_remove(name);
        }
        command.env("BRAID_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start braid-proxy");
        let stderr = BufReader::new(child.stderr.take().expect("the proxy's stderr"));
        let proxy = Self { child };
        // Read to the end, so that the proxy never blocks on a full pipe.
        let (lines, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        // Its IPv6 listeners are bound by the listener tasks, after it says it is listening.
        let (mut ipv6_listeners, mut seen) = (0, String::new());
        while ipv6_listeners < 2 {
            let Ok(line) = log.recv_timeout(TIMEOUT) else {
                panic!("the proxy did not listen on both IPv6 addresses:\n{seen}");
            };
            ipv6_listeners += usize::from(line.contains("listening on IPv6"));
            seen.push_str(&line);
            seen.push('\n');
        }
        proxy
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the pod and its peer ----

/// Unique among the tests of this process, and the process id makes it unique among processes.
static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        require_tools();
        let n = NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed);
        let name = format!("braid-init-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// `command`, run inside this namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    fn run(&self, argv: &[String]) -> Output {
        let (program, args) = argv.split_first().expect("a command");
        let output = self.command(program).args(args).output();
        output.unwrap_or_else(|err| panic!("cannot run ip netns exec {} {program}: {err}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let deleted = Command::new("ip").args(["netns", "delete", &self.name]).status();
        if !deleted.is_ok_and(|status| status.success()) {
            eprintln!("could not delete network namespace {}: `ip netns delete {0}`", self.name);
        }
    }
}

struct Pod {
    pod: Netns,
    peer: Netns,
}

impl Pod {
    fn new() -> Self {
        let pod = Self { pod: Netns::new(), peer: Netns::new() };
        pod.pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &pod.peer.name]);
        for (netns, ip, ip6) in [(&pod.pod, POD_IP, POD_IP6), (&pod.peer, PEER_IP, PEER_IP6)] {
            netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            // nodad: usable at once, without a second of duplicate address detection.
            netns.ip(&["-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
            netns.ip(&["link", "set", "eth0", "up"]);
        }
        // Cluster addresses beyond the peer (a Service IP) route out of eth0 too, as in a pod.
        pod.pod.ip(&["route", "add", "default", "via", PEER_IP]);
        pod.pod.ip(&["-6", "route", "add", "default", "via", PEER_IP6]);
        pod
    }

    /// Runs `braid-proxy init ARGS` in the pod, which must fail, and returns its stderr.
    fn init_fails(&self, args: &[&str]) -> String {
        let output = self.pod.run(&init_command(args));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "braid-proxy init {args:?} succeeded:\n{stderr}");
        stderr
    }

    /// Runs `braid-proxy init ARGS` in the pod and returns its stdout.
    fn init(&self, args: &[&str]) -> String {
        let output = self.pod.run(&init_command(args));
        assert!(
            output.status.success(),
            "braid-proxy init {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `iptables-save -t nat` of the pod, without its timestamp comments and counters.
    fn nat_table(&self) -> String {
        self.saved_nat("iptables-save")
    }

    /// `ip6tables-save -t nat` of the pod, likewise.
    fn nat6_table(&self) -> String {
        self.saved_nat("ip6tables-save")
    }

    fn saved_nat(&self, save: &str) -> String {
        let output = self.pod.run(&[save.into(), "-t".into(), "nat".into()]);
        assert!(output.status.success(), "{save}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| match line.split_once(" [") {
                Some((chain, _counters)) if line.starts_with(':') => format!("{chain} [0:0]\n"),
                _ => format!("{line}\n"),
            })
            .collect()
    }
}

/// `braid-proxy init ARGS`, the real binary, as the webhook's init container runs it.
fn init_command(args: &[&str]) -> Vec<String> {
    [env!("CARGO_BIN_EXE_braid-proxy"), "init"].iter().chain(args).map(ToString::to_string).collect()
}

/// The `-A` lines of iptables-save (or iptables-restore) text, by chain, in order.
fn rules_by_chain(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().filter(|line| line.starts_with("-A ")) {
        let chain = line.split_whitespace().nth(1).unwrap_or_default();
        chains.entry(chain.to_owned()).or_default().push(line.to_owned());
    }
    chains
}

// ---- the probes: this test binary, re-executed inside a namespace ----

#[derive(Clone, Copy)]
enum Uid {
    Root,
    Proxy,
    App,
}

/// The test binary, re-executed in `netns` to run only [`probe`], in `mode`.
fn probe_command(netns: &Netns, uid: Uid, mode: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = match uid {
        Uid::Root => netns.command(&exe.to_string_lossy()),
        // What the proxy container is: its uid and gid, no supplementary groups.
        Uid::Proxy | Uid::App => {
            let uid = if matches!(uid, Uid::Proxy) { PROXY_UID } else { APP_UID };
            let mut command = netns.command("setpriv");
            let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
            command.args([&reuid, &regid, "--clear-groups", &exe.to_string_lossy()]);
            command
        }
    };
    command.args(["--exact", "probe", "--nocapture", "--test-threads=1"]).env(PROBE_ENV, mode);
    command
}

/// Listeners on `ports` of all addresses of a namespace, IPv4 and IPv6, until dropped.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open to the end: a probe writing to a closed pipe would report a broken pipe.
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(netns: &Netns, label: &str, ports: &[u16]) -> Self {
        Self::spawn(netns, label, ports, false)
    }

    /// Listeners on `[::]:PORT` that take IPv4 too (IPV6_V6ONLY off, Linux's default).
    fn start_dual_stack(netns: &Netns, label: &str, ports: &[u16]) -> Self {
        Self::spawn(netns, label, ports, true)
    }

    fn spawn(netns: &Netns, label: &str, ports: &[u16], dual_stack: bool) -> Self {
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let mut command = probe_command(netns, Uid::Root, &format!("serve:{}", ports.join(",")));
        if dual_stack {
            command.env(DUAL_STACK_ENV, "1");
        }
        let mut child = command
            .env(LABEL_ENV, label)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a listener probe");
        let stdout = BufReader::new(child.stdout.take().expect("the probe's stdout"));
        let mut server = Self { stdin: child.stdin.take(), child, stdout };
        let mut line = String::new();
        while !line.trim_end().ends_with("PROBE ready") {
            line.clear();
            let read = server.stdout.read_line(&mut line).unwrap_or(0);
            assert!(
                read > 0,
                "the {label} listeners on ports {ports:?} did not start (their error is above)"
            );
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing its stdin ends it; the kill is for a probe stuck anyway.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from `netns` as `uid` to `ip:port` and returns the answer of the listener it
/// landed on, "pod port=4140 original_dst=10.9.0.2:80", or the error.
fn connect(netns: &Netns, uid: Uid, ip: &str, port: u16) -> String {
    let addr = SocketAddr::new(ip.parse().expect("an IP address"), port);
    let output = probe_command(netns, uid, &format!("connect:{addr}")).output().expect("run a client probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // libtest may print "test probe ... " in front of it, on the same line.
    match stdout.lines().find_map(|line| line.split_once("PROBE ")) {
        Some((_, answer)) => answer.to_owned(),
        None => panic!(
            "the client probe to {ip}:{port} printed no answer ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Not a test of its own: the entry point of the probes the tests start inside namespaces (it
/// does nothing unless BRAID_INIT_PROBE says what to do).
#[test]
fn probe() {
    let Ok(mode) = std::env::var(PROBE_ENV) else { return };
    match mode.split_once(':') {
        Some(("serve", ports)) => serve(ports),
        Some(("connect", addr)) => {
            let answer =
                client(addr.parse().expect("an address")).unwrap_or_else(|err| format!("error {err}"));
            println!("PROBE {answer}");
        }
        _ => panic!("unknown probe mode {mode:?}"),
    }
}

/// Listens on `ports` (comma list), answers every connection with where it landed, and returns
/// when stdin closes.
fn serve(ports: &str) {
    let label = std::env::var(LABEL_ENV).unwrap_or_default();
    let dual_stack = std::env::var_os(DUAL_STACK_ENV).is_some();
    for port in ports.split(',') {
        let port: u16 = port.parse().expect("a port");
        if dual_stack {
            let listener =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("a socket");
            listener.set_only_v6(false).expect("IPV6_V6ONLY off");
            listener
                .bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())
                .expect("bind [::]");
            listener.listen(128).expect("listen on [::]");
            spawn_answering(&label, listener.into());
            continue;
        }
        let v4 = TcpListener::bind(("0.0.0.0", port)).expect("bind a probe listener");
        // IPv6 only, beside the IPv4 one, as the proxy listens: each connection in its own family.
        let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("a socket");
        v6.set_only_v6(true).expect("IPV6_V6ONLY");
        v6.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into()).expect("bind [::]");
        v6.listen(128).expect("listen on [::]");
        for listener in [v4, v6.into()] {
            spawn_answering(&label, listener);
        }
    }
    println!("PROBE ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn spawn_answering(label: &str, listener: TcpListener) {
    let label = label.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a runtime");
        let _context = runtime.enter();
        for stream in listener.incoming().map_while(Result::ok) {
            let answer = landed(&label, stream.try_clone().expect("a socket handle"));
            let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
        }
    });
}

/// "pod port=4140 original_dst=10.9.0.2:80": where a connection landed, by what the proxy sees.
fn landed(label: &str, stream: TcpStream) -> String {
    stream.set_nonblocking(true).expect("a nonblocking socket");
    let stream = tokio::net::TcpStream::from_std(stream).expect("a tokio socket");
    let port = stream.local_addr().expect("the local address").port();
    let original_dst = match braid_proxy::original_dst::original_dst(&stream) {
        Ok(Some(addr)) => addr.to_string(),
        Ok(None) => "none".to_owned(),
        Err(err) => format!("error({err})"),
    };
    format!("{label} port={port} original_dst={original_dst}")
}

fn client(addr: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

// ---- prerequisites ----

/// Fails (never skips) the test when something it needs is missing, saying how to get it.
fn require_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next());
    assert_eq!(uid, Some("0"), "these tests create network namespaces and iptables rules: run them as root");
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("ip6tables-save", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|dir| dir.join(program).is_file());
        assert!(found, "{program} not found: run `make deps` (it installs the Debian package {package})");
    }
}

/// Runs a setup command, failing the test with its stderr.
fn run_ok(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}
