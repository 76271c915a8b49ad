//! The synthetic cluster both processes derive from the same knobs: which namespaces, Services,
//! pods, EndpointSlices, MeshRoutes and MeshPolicies exist, which pod each simulated proxy runs
//! for and what it subscribes to. Names are computed, not stored, so the server's memory holds
//! only what the discovery index keeps.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use braid_crds::{MeshPolicySpec, MeshRouteSpec};
use braid_operator::discovery::index::{
    EndpointInfo, Index, Key, PodInfo, PortInfo, RouteInfo, ServiceInfo, SliceInfo,
};
use serde_json::json;

/// The fan-out classes of the change phase. Every proxy calls route 0's Service (a shared
/// dependency, like an auth service: 100% of the proxies), one of the WIDE routes after it (10%
/// each) and one of the NARROW routes after those (1% each).
pub const WIDE: usize = 10;
pub const NARROW: usize = 100;
/// Routes 0..HOT are the ones the change phase edits.
pub const HOT: usize = 1 + WIDE + NARROW;
/// Subscriptions to Services picked at random, besides the three of the classes.
const RANDOM: usize = 2;
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The name in the discovery server's certificate, which the simulated proxies verify.
pub const SERVER_NAME: &str = "braid-discovery.bench";
/// The v1 weight every route starts with.
pub const INITIAL_WEIGHT: u32 = 90;
pub const CREATED: &str = "2026-01-01T00:00:00Z";

#[derive(Debug, Clone, Copy)]
pub struct World {
    pub pods: usize,
    pub services: usize,
    pub routes: usize,
    pub namespaces: usize,
    pub proxies: usize,
}

/// One simulated proxy: the pod it speaks for and its subscriptions, each with the route whose
/// target Service it is (`None`: not a route's target).
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    pub destinations: Vec<(String, Option<usize>)>,
}

/// How many proxies a change reaches, as a share of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Route 0: every proxy.
    All,
    /// Routes 1..=WIDE: a tenth each.
    Wide,
    /// Routes WIDE+1..HOT: a hundredth each.
    Narrow,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::All, Class::Wide, Class::Narrow];

    /// The share of the proxies subscribed to each route of the class, in percent.
    pub fn percent(self) -> u32 {
        match self {
            Class::All => 100,
            Class::Wide => 10,
            Class::Narrow => 1,
        }
    }

    /// The class's `n`th route: the change phase cycles over them.
    pub fn route(self, n: usize) -> usize {
        match self {
            Class::All => 0,
            Class::Wide => 1 + n % WIDE,
            Class::Narrow => 1 + WIDE + n % NARROW,
        }
    }

    pub fn of(route: usize) -> Option<Class> {
        match route {
            0 => Some(Class::All),
            r if r <= WIDE => Some(Class::Wide),
            r if r < HOT => Some(Class::Narrow),
            _ => None,
        }
    }

    /// The routes of the class, for the report.
    pub fn routes(self) -> String {
        match self {
            Class::All => "route-0".to_owned(),
            Class::Wide => format!("route-1 … route-{WIDE}"),
            Class::Narrow => format!("route-{} … route-{}", WIDE + 1, HOT - 1),
        }
    }
}

/// A Service: its group (a route's three Services, or one plain Service) and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The Service a route governs: its slice holds the pods of both versions.
    Root(usize),
    /// `version` 0 = v1, 1 = v2 of route group `group`.
    Version {
        group: usize,
        version: usize,
    },
    Plain(usize),
}

impl World {
    pub fn check(&self) -> Result<(), String> {
        if self.routes < HOT {
            return Err(format!(
                "at least {HOT} routes are needed (route-0, {WIDE} for 10% of the proxies each, \
                 {NARROW} for 1% each)"
            ));
        }
        if self.services < 3 * self.routes + 1 {
            return Err(format!(
                "{} routes need 3 Services each (the target, v1, v2) and at least one plain Service: \
                 more than {} Services",
                self.routes,
                3 * self.routes
            ));
        }
        if self.pods < self.leaves() || self.proxies == 0 || self.proxies > self.pods {
            return Err(format!(
                "need at least one pod per backend Service ({}) and 1..=pods proxies",
                self.leaves()
            ));
        }
        if self.namespaces == 0 {
            return Err("need at least one namespace".to_owned());
        }
        Ok(())
    }

    fn groups(&self) -> usize {
        self.services - 2 * self.routes
    }

    /// Services that have pods of their own: v1 and v2 of each route, and the plain ones.
    fn leaves(&self) -> usize {
        self.services - self.routes
    }

    fn namespace_of_group(&self, group: usize) -> String {
        format!("ns-{:02}", group % self.namespaces)
    }

    fn group_name(&self, group: usize) -> String {
        if group < self.routes { format!("app-{group}") } else { format!("svc-{group}") }
    }

    fn role(&self, service: usize) -> Role {
        if service < 3 * self.routes {
            let group = service / 3;
            match service % 3 {
                0 => Role::Root(group),
                v => Role::Version { group, version: v - 1 },
            }
        } else {
            Role::Plain(self.routes + service - 3 * self.routes)
        }
    }

    fn group_of(&self, service: usize) -> usize {
        match self.role(service) {
            Role::Root(g) | Role::Version { group: g, .. } | Role::Plain(g) => g,
        }
    }

    pub fn service_name(&self, service: usize) -> String {
        match self.role(service) {
            Role::Root(g) | Role::Plain(g) => self.group_name(g),
            Role::Version { group, version } => format!("app-{group}-v{}", version + 1),
        }
    }

    pub fn service_key(&self, service: usize) -> Key {
        (self.namespace_of_group(self.group_of(service)), self.service_name(service))
    }

    pub fn cluster_ip(&self, service: usize) -> IpAddr {
        let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
        IpAddr::V4(Ipv4Addr::from(base + 1 + service as u32))
    }

    /// Every third Service has a second, gRPC port.
    fn ports(&self, service: usize) -> Vec<PortInfo> {
        let mut ports = vec![PortInfo { name: "http".into(), port: 80, http2: false, opaque: false }];
        if service.is_multiple_of(3) {
            ports.push(PortInfo { name: "grpc".into(), port: 9090, http2: true, opaque: false });
        }
        ports
    }

    /// The Service index of leaf `leaf`.
    fn leaf_service(&self, leaf: usize) -> usize {
        if leaf < 2 * self.routes {
            3 * (leaf / 2) + 1 + leaf % 2
        } else {
            3 * self.routes + leaf - 2 * self.routes
        }
    }

    fn leaf_of_pod(&self, pod: usize) -> usize {
        pod % self.leaves()
    }

    fn pods_of_leaf(&self, leaf: usize) -> impl Iterator<Item = usize> + use<> {
        (leaf..self.pods).step_by(self.leaves())
    }

    fn pod_key(&self, pod: usize) -> Key {
        let service = self.leaf_service(self.leaf_of_pod(pod));
        (self.namespace_of_group(self.group_of(service)), format!("{}-{pod:05}", self.service_name(service)))
    }

    fn pod_ip(&self, pod: usize) -> IpAddr {
        let base = u32::from(Ipv4Addr::new(10, 1, 0, 0));
        IpAddr::V4(Ipv4Addr::from(base + 1 + pod as u32))
    }

    fn pod_info(&self, pod: usize) -> PodInfo {
        let leaf = self.leaf_of_pod(pod);
        let service = self.leaf_service(leaf);
        let group = self.group_of(service);
        let version = match self.role(service) {
            Role::Version { version, .. } => version + 1,
            _ => 1,
        };
        PodInfo {
            service_account: self.group_name(group),
            labels: BTreeMap::from([
                ("app".to_owned(), self.group_name(group)),
                ("version".to_owned(), format!("v{version}")),
                (
                    "pod-template-hash".to_owned(),
                    format!("{:010x}", (leaf as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24),
                ),
            ]),
            meshed: true,
            // As a Deployment with an HTTP readiness probe would have.
            probes: vec![braid_api::config::ProbeConfig { port: 8080, path: "/healthz".to_owned() }],
            ips: vec![self.pod_ip(pod)],
            created: "2026-01-01T00:00:00Z".to_owned(),
            ..Default::default()
        }
    }

    fn slice(&self, service: usize) -> (Key, SliceInfo) {
        let pods: Vec<usize> = match self.role(service) {
            Role::Root(group) => (0..2).flat_map(|v| self.pods_of_leaf(2 * group + v)).collect(),
            Role::Version { group, version } => self.pods_of_leaf(2 * group + version).collect(),
            Role::Plain(group) => self.pods_of_leaf(2 * self.routes + group - self.routes).collect(),
        };
        let endpoints = pods
            .into_iter()
            .map(|pod| EndpointInfo {
                addresses: vec![self.pod_ip(pod)],
                // One pod in 50 is not ready.
                ready: pod % 50 != 49,
                pod: Some(self.pod_key(pod).1),
            })
            .collect();
        let ports = self
            .ports(service)
            .into_iter()
            .map(|p| PortInfo { port: if p.port == 80 { 8080 } else { p.port }, ..p })
            .collect();
        let (namespace, name) = self.service_key(service);
        (
            (namespace, format!("{name}-{:05x}", service * 7919 % 0xfffff)),
            SliceInfo { service: name, ports, endpoints },
        )
    }

    pub fn route_key(&self, route: usize) -> Key {
        (self.namespace_of_group(route), format!("route-{route}"))
    }

    /// MeshRoute `route`: a weighted split of `app-N` across `app-N-v1` and `app-N-v2`.
    pub fn route_info(&self, route: usize, generation: i64, v1_weight: u32) -> RouteInfo {
        let spec: MeshRouteSpec = serde_json::from_value(json!({
            "service": format!("app-{route}"),
            "rules": [{
                "backends": [
                    {"service": format!("app-{route}-v1"), "weight": v1_weight},
                    {"service": format!("app-{route}-v2"), "weight": 100 - v1_weight},
                ],
                "timeout": "5s",
                "retries": {"attempts": 2},
            }],
        }))
        .unwrap_or_else(|e| unreachable!("the generated MeshRoute spec is valid: {e}"));
        RouteInfo { generation, created: CREATED.to_owned(), accepted: true, spec }
    }

    /// One MeshPolicy per namespace: the first group's pods accept calls from one service account.
    fn policy(&self, namespace: usize) -> (Key, MeshPolicySpec) {
        let spec: MeshPolicySpec = serde_json::from_value(json!({
            "podSelector": {"app": self.group_name(namespace)},
            "rules": [{"from": [{"serviceAccount": {"name": self.group_name((namespace + 1) % self.groups())}}]}],
        }))
        .unwrap_or_else(|e| unreachable!("the generated MeshPolicy spec is valid: {e}"));
        ((self.namespace_of_group(namespace), format!("allow-{namespace}")), spec)
    }

    pub fn new_index(&self) -> Index {
        Index::new(TRUST_DOMAIN, CLUSTER_DOMAIN)
    }

    pub fn add_pods(&self, index: &mut Index, known: &mut Vec<Key>) {
        for pod in 0..self.pods {
            let key = self.pod_key(pod);
            known.push(key.clone());
            index.upsert_pod(key, self.pod_info(pod));
        }
    }

    pub fn add_services(&self, index: &mut Index, known: &mut Vec<Key>) {
        for service in 0..self.services {
            let key = self.service_key(service);
            known.push(key.clone());
            let info = ServiceInfo {
                cluster_ips: vec![self.cluster_ip(service)],
                headless: false,
                ports: self.ports(service),
                export_to: None,
            };
            index.upsert_service(key, info);
        }
    }

    pub fn add_slices(&self, index: &mut Index, known: &mut Vec<Key>) {
        for service in 0..self.services {
            let (key, slice) = self.slice(service);
            known.push(key.clone());
            index.upsert_slice(key, slice);
        }
    }

    pub fn add_routes_and_policies(&self, index: &mut Index, known: &mut Vec<Key>) {
        for route in 0..self.routes {
            let key = self.route_key(route);
            known.push(key.clone());
            index.upsert_route(key, self.route_info(route, 1, INITIAL_WEIGHT));
        }
        for namespace in 0..self.namespaces.min(self.groups()) {
            let (key, spec) = self.policy(namespace);
            known.push(key.clone());
            index.upsert_policy(key, spec);
        }
    }

    /// The WIDE route and the NARROW route proxy `proxy` calls. The NARROW one is picked by
    /// `proxy / WIDE`, so each WIDE route's proxies spread over all the NARROW routes.
    fn class_routes(proxy: usize) -> [usize; 2] {
        [Class::Wide.route(proxy), Class::Narrow.route(proxy / WIDE)]
    }

    /// Proxy `proxy`: every proxy calls route 0's Service (by DNS name), one WIDE and one NARROW
    /// route's Service (by cluster IP) and RANDOM other Services picked at random, by IP or name.
    pub fn proxy(&self, proxy: usize) -> ProxySpec {
        let pod = proxy * self.pods / self.proxies;
        let (namespace, pod_name) = self.pod_key(pod);
        let service_account = self.pod_info(pod).service_account;
        let mut destinations =
            vec![(format!("app-0.{}.svc.{CLUSTER_DOMAIN}:80", self.namespace_of_group(0)), Some(0))];
        for route in Self::class_routes(proxy) {
            destinations.push((format!("{}:80", self.cluster_ip(3 * route)), Some(route)));
        }
        let mut random = SplitMix(proxy as u64 ^ 0x5eed);
        while destinations.len() < 3 + RANDOM {
            let service = (random.next() % self.services as u64) as usize;
            if matches!(self.role(service), Role::Root(r) if r < HOT) {
                continue;
            }
            let port = if service.is_multiple_of(3) && random.next().is_multiple_of(2) { 9090 } else { 80 };
            let name = if random.next().is_multiple_of(2) {
                format!("{}:{port}", self.cluster_ip(service))
            } else {
                let (ns, name) = self.service_key(service);
                format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}:{port}")
            };
            if !destinations.iter().any(|(d, _)| *d == name) {
                let route = match self.role(service) {
                    Role::Root(r) => Some(r),
                    _ => None,
                };
                destinations.push((name, route));
            }
        }
        ProxySpec { namespace, pod: pod_name, service_account, destinations }
    }

    /// The proxies that subscribe to hot route `route`'s Service.
    pub fn subscribers(&self, route: usize) -> Vec<usize> {
        (0..self.proxies).filter(|&p| route == 0 || Self::class_routes(p).contains(&route)).collect()
    }

    /// The routes of the rollouts phase: the first `count` routes whose Service at least one
    /// proxy calls (a route nobody calls gets no measurements, so its rollout would only wait).
    pub fn canary_routes(&self, count: usize) -> Vec<usize> {
        let mut called = vec![false; self.routes];
        for p in 0..self.proxies {
            for (_, route) in self.proxy(p).destinations {
                if let Some(r) = route {
                    called[r] = true;
                }
            }
        }
        (0..self.routes).filter(|&r| called[r]).take(count).collect()
    }
}

/// A small deterministic generator (SplitMix64), so both processes pick the same.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
