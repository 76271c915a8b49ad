//! The redirect path (`PEER-redirect`): a pair's proxies each in a network namespace of its own,
//! a pod, with the init container's rules (`braid-proxy init`), as a sidecar runs.
//!
//! Per scenario two namespaces joined by a veth pair (`eth0` in each), a /30 of their own:
//!
//! - the client pod (`braid-bench-N-client`, 10.250.N.1): the load generator and proxy A, and a
//!   route for the made-up Service range 10.96.0.0/16 out of eth0. The client connects to the
//!   Service address 10.96.N.10:80; the OUTPUT rule redirects it to A's outbound port 4140.
//! - the server pod (`braid-bench-N-server`, 10.250.N.2): proxy B on the inbound port 4143 and
//!   its own origin (nginx) on the app port 8080; PREROUTING redirects A's connection to
//!   10.250.N.2:8080 to B, which forwards it to its original destination.
//!
//! Scenario 0 is `direct-redirect`, the baseline of this path: the same two namespaces without
//! rules or proxies, the client straight to the origin over the veth pair.

use std::net::Ipv4Addr;

use crate::Error;

/// The sidecar's uid: its own connections are not redirected.
pub const PROXY_UID: u32 = 2102;
pub const OUTBOUND_PORT: u16 = 4140;
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;
/// The app's port in the server pod: the origin listens there, the Service's target port.
pub const APP_PORT: u16 = 8080;
/// braid-mtls-redirect's identity stand-in, in the server pod, on a port the inbound redirect
/// skips (the operator's identity endpoint is another pod in a cluster).
pub const IDENTITY_PORT: u16 = 4200;
pub const SERVICE_PORT: u16 = 80;
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The baseline scenario of the redirect path.
pub const DIRECT: &str = "direct-redirect";
const NETNS_PREFIX: &str = "braid-bench-";

/// Whether `scenario` ("direct", "direct-redirect", a peer's name) runs on the redirect path.
pub fn on_redirect_path(scenario: &str) -> bool {
    scenario.ends_with("-redirect")
}

/// The scenario whose latency a scenario's "added" is taken over: `direct-redirect` for the
/// redirect path (the same veth hop, no proxy), `direct` (loopback) for the others.
pub fn baseline_of(scenario: &str) -> &'static str {
    if on_redirect_path(scenario) { DIRECT } else { "direct" }
}

/// The two pods of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pods {
    pub client_ns: String,
    pub server_ns: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    pub service_ip: Ipv4Addr,
}

impl Pods {
    /// The pods of the `index`th redirect scenario of a run (0: `direct-redirect`).
    pub fn new(index: usize) -> Result<Pods, Error> {
        let n = u8::try_from(index)
            .ok()
            .filter(|n| *n < 250)
            .ok_or_else(|| Error::parse("PEERS", format!("too many redirect scenarios ({index})")))?;
        Ok(Pods {
            client_ns: format!("{NETNS_PREFIX}{n}-client"),
            server_ns: format!("{NETNS_PREFIX}{n}-server"),
            client_ip: Ipv4Addr::new(10, 250, n, 1),
            server_ip: Ipv4Addr::new(10, 250, n, 2),
            service_ip: Ipv4Addr::new(10, 96, n, 10),
        })
    }

    /// The Service address the client connects to (a cluster IP:port nothing listens on).
    pub fn service(&self) -> String {
        format!("{}:{SERVICE_PORT}", self.service_ip)
    }

    /// The server pod's app address: the Service's only endpoint.
    pub fn app(&self) -> String {
        format!("{}:{APP_PORT}", self.server_ip)
    }

    /// The load generator's URL: the Service through the proxies, or the origin itself
    /// (`direct-redirect`).
    pub fn url(&self, proxied: bool) -> String {
        let to = if proxied { self.service() } else { self.app() };
        format!("http://{to}/1k")
    }

    /// The `ip` commands (arguments after `ip`) that build both pods, in order.
    pub fn setup(&self) -> Vec<Vec<String>> {
        let (c, s) = (self.client_ns.as_str(), self.server_ns.as_str());
        let cmds: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), c.into()],
            vec!["netns".into(), "add".into(), s.into()],
            argv(&["-n", c, "link", "set", "lo", "up"]),
            argv(&["-n", s, "link", "set", "lo", "up"]),
            argv(&["-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", s]),
            argv(&["-n", c, "addr", "add", &format!("{}/30", self.client_ip), "dev", "eth0"]),
            argv(&["-n", s, "addr", "add", &format!("{}/30", self.server_ip), "dev", "eth0"]),
            argv(&["-n", c, "link", "set", "eth0", "up"]),
            argv(&["-n", s, "link", "set", "eth0", "up"]),
            argv(&["-n", c, "route", "add", SERVICE_CIDR, "via", &self.server_ip.to_string()]),
        ];
        cmds
    }

    /// The namespaces, to delete (a stale one first, and at the end of the run).
    pub fn namespaces(&self) -> [&str; 2] {
        [&self.client_ns, &self.server_ns]
    }
}

/// The arguments of `ip` that run `program args` inside `netns`: as root, or as the proxy uid
/// (`setpriv`, its groups cleared) so that its own connections are not redirected. `ip netns exec`
/// and `setpriv` exec what they run: the pid started is the program's.
pub fn netns_exec(netns: &str, as_proxy: bool, program: &str, args: &[String]) -> Vec<String> {
    let mut argv = vec!["netns".to_string(), "exec".into(), netns.into()];
    if as_proxy {
        argv.extend([
            "setpriv".to_string(),
            format!("--reuid={PROXY_UID}"),
            format!("--regid={PROXY_UID}"),
            "--clear-groups".into(),
        ]);
    }
    argv.push(program.into());
    argv.extend(args.iter().cloned());
    argv
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// `braid-proxy init`'s arguments as the webhook's init container passes them (the admin port
/// skipped), plus `skip` on the inbound side.
pub fn init_args(skip: &[u16]) -> Vec<String> {
    let skipped: Vec<String> =
        std::iter::once(ADMIN_PORT).chain(skip.iter().copied()).map(|p| p.to_string()).collect();
    vec![
        "init".into(),
        format!("--proxy-uid={PROXY_UID}"),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--skip-inbound-ports={}", skipped.join(",")),
    ]
}

/// The connections a REDIRECT rule took (its packet counter: NAT sees only a connection's first
/// packet), from `iptables -t nat -L CHAIN -n -v -x`; `None` when the chain has no REDIRECT rule.
pub fn redirected(listing: &str) -> Option<u64> {
    let counts: Vec<u64> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"REDIRECT")).then(|| fields[0].parse().ok())?
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// The origin's nginx configuration for a server pod: the rendered template with its loopback
/// listener moved to the pod's address, where B forwards redirected connections.
pub fn origin_in_pod(rendered: &str, port: u16, pod_ip: Ipv4Addr) -> Result<String, Error> {
    let loopback = format!("listen 127.0.0.1:{port};");
    if !rendered.contains(&loopback) {
        return Err(Error::parse(
            "bench/proxy/origin-nginx.conf",
            format!(
                "no `{loopback}` to move into the server pod: keep the origin's listener on 127.0.0.1:{{{{PORT}}}}"
            ),
        ));
    }
    Ok(rendered.replace(&loopback, &format!("listen {pod_ip}:{port};")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scenario_has_its_own_pods_and_addresses() {
        let pods = Pods::new(3).expect("ok");
        assert_eq!(pods.namespaces(), ["braid-bench-3-client", "braid-bench-3-server"]);
        assert_eq!(pods.service(), "10.96.3.10:80");
        assert_eq!(pods.app(), "10.250.3.2:8080");
        assert_eq!(pods.url(true), "http://10.96.3.10:80/1k");
        assert_eq!(pods.url(false), "http://10.250.3.2:8080/1k");
        assert_ne!(Pods::new(0).expect("ok").server_ip, pods.server_ip);
        assert!(Pods::new(250).is_err());
        let setup: Vec<String> = pods.setup().iter().map(|c| c.join(" ")).collect();
        assert_eq!(setup[0], "netns add braid-bench-3-client");
        assert!(
            setup.contains(
                &"-n braid-bench-3-client link add eth0 type veth peer name eth0 netns braid-bench-3-server"
                    .to_string()
            )
        );
        assert!(setup.contains(&"-n braid-bench-3-server addr add 10.250.3.2/30 dev eth0".to_string()));
        assert_eq!(
            setup.last().map(String::as_str),
            Some("-n braid-bench-3-client route add 10.96.0.0/16 via 10.250.3.2")
        );
    }

    #[test]
    fn programs_run_in_a_pod_as_root_or_as_the_proxy() {
        let args = vec!["-f".to_string(), "x.cfg".into()];
        assert_eq!(netns_exec("ns", false, "haproxy", &args).join(" "), "netns exec ns haproxy -f x.cfg");
        assert_eq!(
            netns_exec("ns", true, "haproxy", &args).join(" "),
            "netns exec ns setpriv --reuid=2102 --regid=2102 --clear-groups haproxy -f x.cfg"
        );
    }

    #[test]
    fn init_takes_the_webhooks_arguments() {
        assert_eq!(
            init_args(&[]).join(" "),
            "init --proxy-uid=2102 --inbound-port=4143 --outbound-port=4140 --skip-inbound-ports=4191"
        );
        assert!(init_args(&[IDENTITY_PORT]).join(" ").ends_with("--skip-inbound-ports=4191,4200"));
    }

    #[test]
    fn redirect_counters_and_baselines() {
        let listing = "Chain BRAID_OUTBOUND_REDIRECT (1 references)\n    pkts      bytes target     prot opt in     out     source               destination\n      17     1020 REDIRECT   6    --  *      *       0.0.0.0/0            0.0.0.0/0            redir ports 4140\n";
        assert_eq!(redirected(listing), Some(17));
        assert_eq!(redirected("Chain BRAID_OUTPUT (1 references)\n pkts bytes target\n"), None);
        assert_eq!(baseline_of("braid-mtls-redirect"), "direct-redirect");
        assert_eq!(baseline_of(DIRECT), "direct-redirect");
        assert_eq!(baseline_of("braid-mtls"), "direct");
    }

    #[test]
    fn the_origin_moves_to_the_pods_address() {
        let conf = "server {\n    listen 127.0.0.1:8080;\n    root /x;\n}\n";
        let moved = origin_in_pod(conf, 8080, Ipv4Addr::new(10, 250, 1, 2)).expect("ok");
        assert!(moved.contains("listen 10.250.1.2:8080;") && !moved.contains("127.0.0.1"), "{moved}");
        assert!(origin_in_pod("listen 8080;", 8080, Ipv4Addr::LOCALHOST).is_err());
    }
}
