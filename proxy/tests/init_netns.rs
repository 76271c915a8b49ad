//! `braid-proxy init` with real iptables in real network namespaces, run as the webhook's init
//! container runs it. Needs root, `ip` (iproute2), iptables and `setpriv` (util-linux): `make deps`
//! installs them; a missing one fails the test, saying so.
//!
//! Each test builds a pod: a namespace with lo up and a veth `eth0` at 10.9.0.1/24, whose other
//! end is a peer namespace at 10.9.0.2/24, standing for the rest of the cluster. Listeners and
//! clients run inside the namespaces as children of this test binary, re-executed in probe mode
//! (see [`probe`]): a listener answers each connection with where it landed ("pod port=4140
//! original_dst=10.9.0.2:80"), and the client prints that answer for the test to assert.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// both a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const PROBE_ENV: &str = "BRAID_INIT_PROBE";
const LABEL_ENV: &str = "BRAID_INIT_PROBE_LABEL";
const PROXY_UID: &str = "2102";
const POD_IP: &str = "10.9.0.1";
const PEER_IP: &str = "10.9.0.2";
/// The arguments of the webhook's init container for a pod without annotations.
const WEBHOOK_ARGS: [&str; 4] =
    ["--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140", "--skip-inbound-ports=4191,80"];
/// What `iptables-save -t nat` shows after init with [`WEBHOOK_ARGS`].
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

    pod.init(&WEBHOOK_ARGS);
    let installed = pod.nat_table();
    assert_eq!(
        rules_by_chain(&installed),
        rules_by_chain(WEBHOOK_RULES),
        "iptables-save -t nat:\n{installed}"
    );
    for chain in ["BRAID_PREROUTING", "BRAID_INBOUND_REDIRECT", "BRAID_OUTPUT", "BRAID_OUTBOUND_REDIRECT"] {
        assert!(installed.contains(&format!(":{chain} - [0:0]")), "{chain} missing:\n{installed}");
    }

    pod.init(&WEBHOOK_ARGS);
    assert_eq!(pod.nat_table(), installed, "a second init must leave one copy of the rules");
}

#[test]
fn a_rerun_with_other_ports_replaces_the_rules() {
    let pod = Pod::new();
    pod.init(&WEBHOOK_ARGS);
    pod.init(
        &[&WEBHOOK_ARGS[..3], &["--skip-inbound-ports=4191,8000-8010", "--skip-outbound-ports=25"]].concat(),
    );
    let rules = rules_by_chain(&pod.nat_table());
    assert_eq!(
        rules["BRAID_PREROUTING"][1],
        "-A BRAID_PREROUTING -p tcp -m multiport --dports 4191,8000:8010 -j RETURN"
    );
    assert_eq!(rules["BRAID_OUTPUT"][2], "-A BRAID_OUTPUT -p tcp -m multiport --dports 25 -j RETURN");
    assert_eq!((rules["PREROUTING"].len(), rules["OUTPUT"].len()), (1, 1), "{rules:#?}");
}

#[test]
fn remove_restores_the_empty_nat_table_and_is_a_no_op_when_absent() {
    let pod = Pod::new();
    let empty = pod.nat_table();
    pod.init(&["--remove"]);
    assert_eq!(pod.nat_table(), empty, "--remove on a namespace without Braid must change nothing");

    pod.init(&WEBHOOK_ARGS);
    pod.init(&["--remove"]);
    assert_eq!(pod.nat_table(), empty);
    pod.init(&["--remove"]);
    assert_eq!(pod.nat_table(), empty);

    // And traffic flows as if Braid had never been there.
    let _peer = Server::start(&pod.peer, "peer", &[80]);
    let _app = Server::start(&pod.pod, "pod", &POD_PORTS);
    assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 80), "peer port=80 original_dst=none");
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let pod = Pod::new();
    let empty = pod.nat_table();
    let printed = pod.init(&[&WEBHOOK_ARGS[..], &["--dry-run"]].concat());
    assert!(
        printed.starts_with("*nat\n:BRAID_PREROUTING - [0:0]\n") && printed.ends_with("COMMIT\n"),
        "{printed}"
    );
    assert_eq!(rules_by_chain(&printed), rules_by_chain(WEBHOOK_RULES), "{printed}");
    assert_eq!(pod.nat_table(), empty, "--dry-run must not touch the nat table");

    pod.init(&WEBHOOK_ARGS);
    let printed = pod.init(&["--remove", "--dry-run"]);
    assert!(printed.contains("-X BRAID_OUTPUT"), "{printed}");
    assert!(pod.nat_table().contains("BRAID_OUTPUT"), "--remove --dry-run must not remove anything");
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
    let legacy = ["--iptables-restore=iptables-legacy-restore", "--iptables-save=iptables-legacy-save"];
    pod.init(&[&WEBHOOK_ARGS[..], &legacy].concat());
    let saved = pod.pod.run(&["iptables-legacy-save".into(), "-t".into(), "nat".into()]);
    let saved = String::from_utf8_lossy(&saved.stdout);
    assert_eq!(
        rules_by_chain(&saved),
        rules_by_chain(WEBHOOK_RULES),
        "iptables-legacy-save -t nat:\n{saved}"
    );
    {
        let _proxy_and_app = Server::start(&pod.pod, "pod", &POD_PORTS);
        let _peer = Server::start(&pod.peer, "peer", &[80]);
        assert_eq!(connect(&pod.pod, Uid::Root, PEER_IP, 80), "pod port=4140 original_dst=10.9.0.2:80");
        assert_eq!(connect(&pod.pod, Uid::Proxy, PEER_IP, 80), "peer port=80 original_dst=none");
        assert_eq!(connect(&pod.peer, Uid::Root, POD_IP, 8080), "pod port=4143 original_dst=10.9.0.1:8080");
    }
    pod.init(&[&["--remove"][..], &legacy].concat());
    let saved = pod.pod.run(&["iptables-legacy-save".into(), "-t".into(), "nat".into()]);
    assert!(!String::from_utf8_lossy(&saved.stdout).contains("BRAID"));
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
        for (netns, ip) in [(&pod.pod, POD_IP), (&pod.peer, PEER_IP)] {
            netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            netns.ip(&["link", "set", "eth0", "up"]);
        }
        // Cluster addresses beyond the peer (a Service IP) route out of eth0 too, as in a pod.
        pod.pod.ip(&["route", "add", "default", "via", PEER_IP]);
        pod
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
        let output = self.pod.run(&["iptables-save".into(), "-t".into(), "nat".into()]);
        assert!(output.status.success(), "iptables-save: {}", String::from_utf8_lossy(&output.stderr));
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
}

/// The test binary, re-executed in `netns` to run only [`probe`], in `mode`.
fn probe_command(netns: &Netns, uid: Uid, mode: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = match uid {
        Uid::Root => netns.command(&exe.to_string_lossy()),
        // What the proxy container is: its uid and gid, no supplementary groups.
        Uid::Proxy => {
            let mut command = netns.command("setpriv");
            let (reuid, regid) = (format!("--reuid={PROXY_UID}"), format!("--regid={PROXY_UID}"));
            command.args([&reuid, &regid, "--clear-groups", &exe.to_string_lossy()]);
            command
        }
    };
    command.args(["--exact", "probe", "--nocapture", "--test-threads=1"]).env(PROBE_ENV, mode);
    command
}

/// Listeners on `ports` of all addresses of a namespace, until dropped.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open to the end: a probe writing to a closed pipe would report a broken pipe.
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(netns: &Netns, label: &str, ports: &[u16]) -> Self {
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let mut child = probe_command(netns, Uid::Root, &format!("serve:{}", ports.join(",")))
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
    let output =
        probe_command(netns, uid, &format!("connect:{ip}:{port}")).output().expect("run a client probe");
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
    for port in ports.split(',') {
        let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind a probe listener");
        let label = label.clone();
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a runtime");
            let _context = runtime.enter();
            for stream in listener.incoming().map_while(Result::ok) {
                let answer = landed(&label, stream.try_clone().expect("a socket handle"));
                let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
            }
        });
    }
    println!("PROBE ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
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
