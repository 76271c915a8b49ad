//! What the discovery server knows about the cluster, reduced to what proxies need, and the pure
//! functions that answer a proxy: the configuration of a destination, the policy of a pod, and
//! whether an identity may know either. The watches (watch.rs) keep it current; nothing here
//! talks to the API server, so every answer is tested from plain values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use braid_api::config::{
    BackendConfig, DefaultInboundPolicy, EndpointConfig, EndpointPod, LoadBalancerConfig, PolicyConfig,
    ProbeConfig, Protocol, RetryBudgetConfig, RouteConfig, ServiceConfig, WeightedBackend, Workload,
};
use braid_api::contract::ADMIN_PORT;
use braid_crds::{MeshPolicySpec, MeshRouteSpec};
use braid_runtime::ports::PortRange;

use super::translate::{self, Unsupported};
use crate::gateway::translate::RouteKind;

mod changes;
mod egress;
mod gateway;
pub use changes::{Changes, Topic, TopicId};
pub use gateway::{GatewayPart, GatewayRouteInfo};

/// A MeshRoute's rules in the proxies' model, or why they cannot be.
type Translated = Result<Vec<RouteConfig>, Unsupported>;

/// Namespace and name.
pub type Key = (String, String);

/// The annotation on a Service that limits which namespaces' proxies may discover it, like
/// Istio's exportTo: a comma-separated list of namespaces, `.` for the Service's own, `*` for all.
pub const EXPORT_TO: &str = "braid.dev/export-to";

/// What a pod contributes: its identity (service account), labels (subsets, policies), whether
/// a braid proxy runs in it, and the IPs it holds (a connection to one is a connection to it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodInfo {
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub meshed: bool,
    /// The app containers' HTTP probes: the kubelet's plaintext requests that a STRICT policy
    /// must still let through.
    pub probes: Vec<ProbeConfig>,
    /// The pod's annotation braid.dev/default-inbound-policy (the webhook writes the value it
    /// resolved at injection); without it the Mesh's.
    pub default_policy: Option<DefaultInboundPolicy>,
    /// The pod's IPs (status.podIPs) while it holds them: none for a pod on the node's network
    /// (the IP is the node's), none once it has finished (Succeeded, Failed: the IP may already be
    /// another pod's).
    pub ips: Vec<IpAddr>,
    /// Creation time in RFC 3339 (the API server's second-precision UTC form, so the text
    /// orders as the time): of two pods that claim one IP, the one created later holds it.
    pub created: String,
    /// The inbound ports its redirect leaves alone (the proxy container's
    /// BRAID_INBOUND_SKIP_PORTS): a connection to one reaches the app, not the proxy.
    pub skip_inbound: Vec<PortRange>,
    /// The workload that controls it (`braid_crds::pod::controlling_workload`).
    pub workload: Option<Workload>,
}

impl PodInfo {
    /// The pod as the proxies' metrics name an endpoint of it (`EndpointConfig::pod`).
    fn endpoint_pod(&self, namespace: &str, name: &str) -> EndpointPod {
        EndpointPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_account: self.service_account.clone(),
            workload: self.workload.clone(),
            pod_template_hash: self.labels.get("pod-template-hash").cloned().unwrap_or_default(),
        }
    }

    /// Whether a connection to `port` of the pod reaches its proxy. The admin port never does,
    /// whatever the pod says (the webhook always skips it).
    pub fn proxied(&self, port: u16) -> bool {
        self.meshed
            && port != ADMIN_PORT
            && !self.skip_inbound.iter().any(|range| (range.first..=range.last).contains(&port))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: DNS answers with the pods' IPs, so clients connect to pods directly.
    pub headless: bool,
    pub ports: Vec<PortInfo>,
    /// `None`: every namespace.
    pub export_to: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    /// Empty for the single unnamed port.
    pub name: String,
    pub port: u16,
    /// appProtocol says HTTP/2 (h2c, grpc): the endpoint is spoken to with prior knowledge.
    pub http2: bool,
    /// appProtocol or the port's name says a protocol that is not HTTP (a database, where the
    /// server may speak first): proxies forward its connections as opaque TCP, without detection.
    pub opaque: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    /// The Service the slice belongs to (label kubernetes.io/service-name).
    pub service: String,
    pub ports: Vec<PortInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// The pod behind the endpoint (targetRef), in the slice's namespace.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub generation: i64,
    /// Creation time in RFC 3339, for a stable order of several routes of one Service.
    pub created: String,
    pub accepted: bool,
    pub spec: MeshRouteSpec,
}

/// Where a backend name of a destination's configuration points: Service, port, pod subset.
type BackendSource = (String, u16, Option<BTreeMap<String, String>>);

/// A route generation that a destination's configuration carries: a MeshRoute's, or a Gateway
/// API route's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteRef {
    /// None for a MeshRoute; the kind of a Gateway API route.
    pub kind: Option<RouteKind>,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// What a subscribed destination resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Service {
        key: Key,
        port: u16,
    },
    /// An IP that is no Service's: while a meshed pod holds it, the answer is that pod alone,
    /// with its identity (`Index::address`); otherwise the proxy forwards unchanged.
    Address(SocketAddr),
    /// Not a Service name: the proxy forwards such connections unchanged.
    Unknown,
}

/// A destination's answer, and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub service: Option<ServiceConfig>,
    /// The routes this configuration applies (the Programmed condition counts their acks).
    pub routes: Vec<RouteRef>,
    /// Routes of the Service left out because the proxy cannot apply them as written.
    pub unsupported: Vec<(RouteRef, Unsupported)>,
    /// The other Services it was built from (its routes' backends): a change to one of them is a
    /// change to it.
    pub depends_on: Vec<Key>,
}

impl Snapshot {
    pub const UNKNOWN: Snapshot =
        Snapshot { service: None, routes: Vec::new(), unsupported: Vec::new(), depends_on: Vec::new() };

    fn of(service: ServiceConfig) -> Self {
        Snapshot { service: Some(service), ..Snapshot::UNKNOWN }
    }
}

#[derive(Debug, Clone)]
pub struct Index {
    trust_domain: String,
    cluster_domain: String,
    pods: HashMap<Key, PodInfo>,
    services: HashMap<Key, ServiceInfo>,
    by_cluster_ip: HashMap<IpAddr, Key>,
    /// The pods that claim each IP: one, but for the moment between an IP's reuse by a new pod
    /// and the old pod's deletion reaching the index (see `pod_at`).
    by_pod_ip: HashMap<IpAddr, Vec<Key>>,
    slices: HashMap<Key, SliceInfo>,
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// The slices that list each endpoint address: the Services a pod IP serves.
    slices_by_ip: HashMap<IpAddr, BTreeSet<Key>>,
    /// The slices that name each pod (namespace, pod) as an endpoint's target.
    slices_by_pod: HashMap<Key, BTreeSet<Key>>,
    routes: HashMap<Key, RouteInfo>,
    routes_of: HashMap<Key, BTreeSet<String>>,
    policies: HashMap<Key, MeshPolicySpec>,
    /// metadata.generation of each policy, for its status.
    policy_generations: HashMap<Key, Option<i64>>,
    default_policy: DefaultInboundPolicy,
    /// The Mesh's tracing settings, sent with each pod's inbound policy.
    tracing: Option<braid_api::config::TracingConfig>,
    revision: u64,
    /// What changed since the server last looked (changes.rs), once it asked for it.
    changes: Option<Changes>,
    /// HTTPRoutes, GRPCRoutes and ReferenceGrants (index/gateway.rs).
    gateway: gateway::GatewayState,
    /// The Mesh's egress settings and the MeshExternalServices (index/egress.rs).
    egress: egress::EgressState,
}

impl Index {
    pub fn new(trust_domain: &str, cluster_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            cluster_domain: cluster_domain.to_owned(),
            pods: HashMap::new(),
            services: HashMap::new(),
            by_cluster_ip: HashMap::new(),
            by_pod_ip: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            slices_by_ip: HashMap::new(),
            slices_by_pod: HashMap::new(),
            routes: HashMap::new(),
            routes_of: HashMap::new(),
            policies: HashMap::new(),
            policy_generations: HashMap::new(),
            default_policy: DefaultInboundPolicy::default(),
            tracing: None,
            revision: 1,
            changes: None,
            gateway: gateway::GatewayState::default(),
            egress: egress::EgressState::new(""),
        }
    }

    /// The namespace the mesh runs in: its MeshExternalServices apply to every namespace.
    pub fn with_mesh_namespace(mut self, namespace: &str) -> Self {
        self.egress = egress::EgressState::new(namespace);
        self
    }

    pub fn set_egress(&mut self, settings: &braid_crds::mesh::EgressSettings) {
        if self.egress.set_settings(settings) {
            self.touch_everything();
        }
    }

    pub fn upsert_external_service(&mut self, key: Key, spec: braid_crds::MeshExternalServiceSpec) {
        if self.egress.upsert(key, spec) {
            self.touch_everything();
        }
    }

    pub fn remove_external_service(&mut self, key: &Key) {
        if self.egress.remove(key) {
            self.touch_everything();
        }
    }

    /// What an `IP:PORT` that is no cluster IP means to a proxy of namespace `client`: a meshed
    /// pod (`address`), a destination outside the cluster with egress to check, or neither
    /// (forwarded unchanged).
    pub fn address_for(&self, addr: SocketAddr, client: &str) -> Snapshot {
        let snapshot = self.address(addr);
        let ip = addr.ip();
        // Anything the cluster holds is never egress, whatever the cluster networks say.
        if snapshot.service.is_some() || self.pod_at(ip).is_some() || self.slices_by_ip.contains_key(&ip) {
            return snapshot;
        }
        match self.egress.answer(addr, client) {
            Some(config) => Snapshot::of(config),
            None => snapshot,
        }
    }

    /// Grows with every change; a destination's version is the revision that last changed it.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn set_trust_domain(&mut self, trust_domain: &str) {
        if self.trust_domain != trust_domain {
            trust_domain.clone_into(&mut self.trust_domain);
            self.touch_everything();
        }
    }

    /// What pods no MeshPolicy selects admit, unless their annotation says otherwise.
    pub fn set_default_policy(&mut self, policy: DefaultInboundPolicy) {
        if self.default_policy != policy {
            self.default_policy = policy;
            self.touch_everything();
        }
    }

    pub fn set_tracing(&mut self, tracing: Option<braid_api::config::TracingConfig>) {
        if self.tracing != tracing {
            self.tracing = tracing;
            self.touch_everything();
        }
    }

    /// Where proxies send spans, and which requests they trace; `None`: tracing is off.
    pub fn tracing(&self) -> Option<&braid_api::config::TracingConfig> {
        self.tracing.as_ref()
    }

    pub fn upsert_pod(&mut self, key: Key, pod: PodInfo) {
        if self.pods.get(&key) == Some(&pod) {
            return;
        }
        self.remove_pod(&key);
        for ip in &pod.ips {
            let claims = self.by_pod_ip.entry(*ip).or_default();
            if !claims.contains(&key) {
                claims.push(key.clone());
            }
        }
        self.touch_pod(&key, &pod.ips);
        self.pods.insert(key, pod);
    }

    pub fn remove_pod(&mut self, key: &Key) {
        let Some(old) = self.pods.remove(key) else { return };
        self.touch_pod(key, &old.ips);
        for ip in old.ips {
            if let Some(claims) = self.by_pod_ip.get_mut(&ip) {
                claims.retain(|claim| claim != key);
                if claims.is_empty() {
                    self.by_pod_ip.remove(&ip);
                }
            }
        }
    }

    /// The pod that holds `ip` now. An IP is reused once its pod is gone, but the watch may
    /// bring the new pod before the old one's deletion (or final status): of the pods that claim
    /// it, the one created last holds it, since the IP was free when it got it. Two created in
    /// the same second cannot be told apart: `None` (no identity) rather than maybe the wrong one.
    pub fn pod_at(&self, ip: IpAddr) -> Option<(&Key, &PodInfo)> {
        let claims = self.by_pod_ip.get(&ip)?;
        let mut newest: Option<(&Key, &PodInfo)> = None;
        let mut tied = false;
        for key in claims {
            let Some(pod) = self.pods.get(key) else { continue };
            match newest {
                Some((_, best)) if best.created > pod.created => {}
                Some((_, best)) if best.created == pod.created => tied = true,
                _ => {
                    newest = Some((key, pod));
                    tied = false;
                }
            }
        }
        if tied { None } else { newest }
    }

    pub fn upsert_service(&mut self, key: Key, service: ServiceInfo) {
        if self.services.get(&key) == Some(&service) {
            return;
        }
        self.remove_service(&key);
        for ip in &service.cluster_ips {
            self.by_cluster_ip.insert(*ip, key.clone());
        }
        self.touch_addresses(service.cluster_ips.iter().copied());
        self.services.insert(key.clone(), service);
        self.touch_service(&key);
    }

    pub fn remove_service(&mut self, key: &Key) {
        if let Some(old) = self.services.remove(key) {
            for ip in old.cluster_ips {
                if self.by_cluster_ip.get(&ip) == Some(key) {
                    self.by_cluster_ip.remove(&ip);
                }
                self.touch_addresses([ip]);
            }
            self.touch_service(key);
        }
    }

    pub fn upsert_slice(&mut self, key: Key, slice: SliceInfo) {
        if self.slices.get(&key) == Some(&slice) {
            return;
        }
        self.remove_slice(&key);
        let service = (key.0.clone(), slice.service.clone());
        self.slices_of.entry(service.clone()).or_default().insert(key.1.clone());
        for ip in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            self.slices_by_ip.entry(*ip).or_default().insert(key.clone());
        }
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            self.slices_by_pod.entry((key.0.clone(), pod.clone())).or_default().insert(key.clone());
        }
        self.slices.insert(key, slice);
        self.touch_service(&service);
    }

    pub fn remove_slice(&mut self, key: &Key) {
        if let Some(old) = self.slices.remove(key) {
            for ip in old.endpoints.iter().flat_map(|e| &e.addresses) {
                remove_from(&mut self.slices_by_ip, ip, key);
            }
            for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                remove_from(&mut self.slices_by_pod, &(key.0.clone(), pod.clone()), key);
            }
            // The IPs it listed, which the Service's other slices may no longer list.
            self.touch_addresses(old.endpoints.iter().flat_map(|e| e.addresses.iter().copied()));
            let service = (key.0.clone(), old.service);
            remove_from(&mut self.slices_of, &service, &key.1);
            self.touch_service(&service);
        }
    }

    pub fn upsert_route(&mut self, key: Key, route: RouteInfo) {
        if self.routes.get(&key) == Some(&route) {
            return;
        }
        self.remove_route(&key);
        let service = (key.0.clone(), route.spec.service.clone());
        self.routes_of.entry(service.clone()).or_default().insert(key.1.clone());
        self.routes.insert(key, route);
        self.touch_service(&service);
    }

    pub fn remove_route(&mut self, key: &Key) {
        if let Some(old) = self.routes.remove(key) {
            let service = (key.0.clone(), old.spec.service);
            remove_from(&mut self.routes_of, &service, &key.1);
            self.touch_service(&service);
        }
    }

    pub fn upsert_policy(&mut self, key: Key, policy: MeshPolicySpec) {
        if self.policies.get(&key) != Some(&policy) {
            self.touch(Topic::Policies(key.0.clone()));
            self.policies.insert(key, policy);
        }
    }

    pub fn remove_policy(&mut self, key: &Key) {
        self.policy_generations.remove(key);
        if self.policies.remove(key).is_some() {
            self.touch(Topic::Policies(key.0.clone()));
        }
    }

    pub fn set_policy_generation(&mut self, key: Key, generation: Option<i64>) {
        if self.policy_generations.get(&key) != Some(&generation) {
            self.policy_generations.insert(key, generation);
            self.touch_status();
        }
    }

    /// Each policy, its generation and how many meshed pods of its namespace it selects.
    pub fn policy_selections(&self) -> Vec<(Key, Option<i64>, usize)> {
        let mut selections: Vec<_> = self
            .policies
            .iter()
            .map(|(key, policy)| {
                let pods = self
                    .pods
                    .iter()
                    .filter(|((namespace, _), pod)| {
                        *namespace == key.0
                            && pod.meshed
                            && policy.pod_selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                    })
                    .count();
                (key.clone(), self.policy_generations.get(key).copied().flatten(), pods)
            })
            .collect();
        selections.sort();
        selections
    }

    /// What a subscribed name means: `IP:PORT` of a Service's cluster IP, any other `IP:PORT`
    /// (a pod's, or outside the mesh), or `NAME.NAMESPACE[.svc[.CLUSTER_DOMAIN]]:PORT`. A name of
    /// a Service that does not exist (yet) still resolves to it, so the proxy learns when it
    /// appears; likewise an IP no pod holds yet.
    pub fn resolve(&self, destination: &str) -> Result<Target, String> {
        if let Ok(address) = destination.parse::<SocketAddr>() {
            let Some(key) = self.by_cluster_ip.get(&address.ip()) else {
                return Ok(Target::Address(address));
            };
            return Ok(Target::Service { key: key.clone(), port: address.port() });
        }
        let malformed = || format!("{destination:?} is neither IP:PORT nor a Service's DNS name with :PORT");
        let (host, port) = destination.rsplit_once(':').ok_or_else(malformed)?;
        let port: u16 = port.parse().map_err(|_| malformed())?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".svc.{}", self.cluster_domain);
        let short = host.strip_suffix(&suffix).or_else(|| host.strip_suffix(".svc")).unwrap_or(&host);
        match short.split('.').collect::<Vec<_>>().as_slice() {
            [name, namespace] if !name.is_empty() && !namespace.is_empty() => {
                Ok(Target::Service { key: ((*namespace).to_owned(), (*name).to_owned()), port })
            }
            _ => Ok(Target::Unknown),
        }
    }

    /// Whether a proxy of namespace `client` may know Service `key` (its export-to annotation).
    pub fn visible(&self, key: &Key, client: &str) -> Result<(), String> {
        let Some(service) = self.services.get(key) else { return Ok(()) };
        match &service.export_to {
            Some(namespaces) if !namespaces.contains(client) && !namespaces.contains("*") => Err(format!(
                "Service {}/{} is exported only to namespace(s) {} (annotation {EXPORT_TO}), not to {client}",
                key.0,
                key.1,
                namespaces.iter().cloned().collect::<Vec<_>>().join(",")
            )),
            _ => Ok(()),
        }
    }

    /// Whether a proxy of namespace `client` may know who holds `ip`: unless the pod serves only
    /// Services that are not exported to `client` (the pod IP would be a way around export-to).
    pub fn visible_address(&self, ip: IpAddr, client: &str) -> Result<(), String> {
        let mut services: Vec<Key> = self.endpoint_ports(ip).into_iter().map(|(key, _)| key).collect();
        services.dedup();
        if services.is_empty() {
            return Ok(());
        }
        let mut hidden = Vec::new();
        for key in services {
            match self.visible(&key, client) {
                Ok(()) => return Ok(()),
                Err(reason) => hidden.push(reason),
            }
        }
        Err(format!("{ip} is an endpoint only of Services hidden from {client}: {}", hidden.join("; ")))
    }

    /// Each Service that lists `ip` as an endpoint, with each port of the slices that list it;
    /// sorted by Service.
    fn endpoint_ports(&self, ip: IpAddr) -> Vec<(Key, &PortInfo)> {
        let mut found: Vec<(Key, &PortInfo)> = Vec::new();
        for key in self.slices_by_ip.get(&ip).into_iter().flatten() {
            let Some(slice) = self.slices.get(key) else { continue };
            for port in &slice.ports {
                found.push(((key.0.clone(), slice.service.clone()), port));
            }
        }
        found.sort_by(|a, b| (&a.0, a.1.port, &a.1.name).cmp(&(&b.0, b.1.port, &b.1.name)));
        found.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        found
    }

    /// Whether a client proving namespace/service account may speak for pod `pod`.
    pub fn check_pod(&self, identity: (&str, &str), pod: &Key) -> Result<(), String> {
        let (namespace, service_account) = identity;
        let Some(info) = self.pods.get(pod) else {
            return Err(format!("pod {}/{} does not exist (or is not known yet)", pod.0, pod.1));
        };
        if pod.0 != namespace || info.service_account != service_account {
            return Err(format!(
                "pod {}/{} runs as {}/{}, but the client certificate names {namespace}/{service_account}",
                pod.0, pod.1, pod.0, info.service_account
            ));
        }
        Ok(())
    }

    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.trust_domain)
    }

    /// The inbound policy of pod `pod`: the MeshPolicies of its namespace that select it, or its
    /// default inbound policy when none does. `None` for a pod the index does not know.
    pub fn inbound(&self, pod: &Key) -> Option<PolicyConfig> {
        let info = self.pods.get(pod)?;
        let labels = &info.labels;
        let mut selecting: Vec<(&str, &MeshPolicySpec)> = self
            .policies
            .iter()
            .filter(|((namespace, _), policy)| {
                *namespace == pod.0 && policy.pod_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|((_, name), policy)| (name.as_str(), policy))
            .collect();
        selecting.sort_by_key(|(name, _)| *name);
        let default = info.default_policy.unwrap_or(self.default_policy);
        Some(translate::inbound_policy(&pod.0, &selecting, &info.probes, default))
    }

    /// The configuration a proxy needs to call port `port` of Service `key`.
    pub fn destination(&self, key: &Key, port: u16) -> Snapshot {
        self.destination_for(key, port, None)
    }

    /// The same for a proxy of namespace `client`: the consumer routes of that namespace (Gateway
    /// API routes there whose parent is this Service) replace the Service's own Gateway API
    /// routes. Callers pass `client` only when `has_consumer_routes` says there are some, so
    /// every other client shares one answer.
    pub fn destination_for(&self, key: &Key, port: u16, client: Option<&str>) -> Snapshot {
        let Some(service) = self.services.get(key) else { return Snapshot::UNKNOWN };
        let Some(service_port) = service.ports.iter().find(|p| p.port == port) else {
            return Snapshot::UNKNOWN;
        };
        let protocol = if service_port.opaque { Protocol::Opaque } else { Protocol::Auto };
        let (namespace, target) = key;
        let mut routes = Vec::new();
        let mut applied = Vec::new();
        let mut unsupported = Vec::new();
        // (service, port, subset) of every backend name the routes use.
        let mut backends: BTreeMap<String, BackendSource> = BTreeMap::new();
        backends.insert(target.clone(), (target.clone(), port, None));
        for (reference, route, translated) in self.translated_routes(key, port) {
            match translated {
                Ok(rules) => {
                    for rule in &route.spec.rules {
                        for backend in &rule.backends {
                            let service_name = backend.service.clone().unwrap_or_else(|| target.clone());
                            let backend_port =
                                backend.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(port);
                            backends.insert(
                                translate::backend_name(target, backend, port),
                                (service_name, backend_port, backend.subset.clone()),
                            );
                        }
                        if let Some(mirror) = &rule.mirror {
                            let backend = braid_crds::meshroute::Backend {
                                service: Some(mirror.service.clone()),
                                subset: None,
                                port: mirror.port,
                                weight: 0,
                            };
                            let mirror_port = mirror.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(port);
                            backends.insert(
                                translate::backend_name(target, &backend, port),
                                (mirror.service.clone(), mirror_port, None),
                            );
                        }
                    }
                    routes.extend(rules);
                    applied.push(reference);
                }
                Err(why) => unsupported.push((reference, why)),
            }
        }
        // Without a MeshRoute on this port, the Gateway API routes attached to it apply: MeshRoutes
        // win (docs/gateway-api.md), and both statuses say so.
        let mut gateway_backends = Vec::new();
        let mut gateway_routes = false;
        let mut depends_on: BTreeSet<Key> = BTreeSet::new();
        if applied.is_empty() && unsupported.is_empty() {
            let part = self.gateway_destination(key, port, client);
            gateway_routes = !part.routes.is_empty();
            routes.extend(part.routes);
            applied.extend(part.applied);
            gateway_backends = part.backends;
            depends_on.extend(part.depends_on);
        }
        // A request that no rule matches goes to the Service as if there were no route; with
        // Gateway API routes attached, it gets a 404, as GAMMA specifies (the proxy answers
        // `no-route` when no rule matches).
        if !gateway_routes {
            routes.push(RouteConfig {
                name: Some("default".to_owned()),
                backends: vec![WeightedBackend { name: target.clone(), weight: 1 }],
                ..RouteConfig::default()
            });
        }
        let mut backends: Vec<BackendConfig> = backends
            .into_iter()
            .map(|(name, (service, backend_port, subset))| {
                let service = (namespace.clone(), service);
                let endpoints = self.endpoints(&service, backend_port, subset.as_ref());
                depends_on.insert(service);
                BackendConfig { endpoints, name }
            })
            .collect();
        depends_on.remove(key);
        for backend in gateway_backends {
            if !backends.iter().any(|b| b.name == backend.name) {
                backends.push(backend);
            }
        }
        let (max_connections, max_pending_requests) = self.connection_limits(key, port);
        let config = ServiceConfig {
            name: format!("{target}.{namespace}.svc.{}:{port}", self.cluster_domain),
            addresses: service.cluster_ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
            protocol,
            backends,
            routes,
            load_balancer: self.load_balancer(key, port),
            // Each rule with a budget of its own carries it; the others share Linkerd's default.
            retry_budget: RetryBudgetConfig::default(),
            max_requests: self.max_requests(key, port),
            max_requests_per_connection: self.max_requests_per_connection(key, port),
            max_connections,
            max_pending_requests,
            ..ServiceConfig::default()
        };
        Snapshot {
            service: Some(config),
            routes: applied,
            unsupported,
            depends_on: depends_on.into_iter().collect(),
        }
    }

    /// The configuration a proxy needs to call `addr`, an IP that is no Service's: a headless
    /// Service's DNS answer, a StatefulSet pod's own name, any pod IP. While a meshed pod holds
    /// the IP and its proxy takes that port: one endpoint, the pod, with the identity it must
    /// prove. The protocol is that of the Service ports that target the pod's port; a headless
    /// Service's routes apply with the pod as their only backend (docs/discovery.md). Otherwise
    /// `UNKNOWN`: the proxy forwards the connection unchanged, as before.
    pub fn address(&self, addr: SocketAddr) -> Snapshot {
        let port = addr.port();
        let Some(((namespace, pod_name), pod)) = self.pod_at(addr.ip()) else { return Snapshot::UNKNOWN };
        if !pod.proxied(port) {
            return Snapshot::UNKNOWN;
        }
        // The Service ports whose endpoints are this port of the pod.
        let serving: Vec<(Key, &ServiceInfo, &PortInfo)> = self
            .endpoint_ports(addr.ip())
            .into_iter()
            .filter(|(_, slice_port)| slice_port.port == port)
            .filter_map(|(key, slice_port)| {
                let service = self.services.get(&key)?;
                let service_port = service.ports.iter().find(|p| p.name == slice_port.name)?;
                Some((key, service, service_port))
            })
            .collect();
        // A server-speaks-first protocol must not wait for detection, whichever Service says so.
        let opaque = serving.iter().any(|(_, _, p)| p.opaque);
        let http2 = serving.iter().any(|(_, _, p)| p.http2);
        let backend = pod_name.clone();
        let mut routes = Vec::new();
        let mut applied = Vec::new();
        let mut unsupported = Vec::new();
        // A headless Service's clients reach its pods only by their IPs: its routes are about
        // this traffic. They keep their matches, timeouts, retries and faults; the pod stays the
        // only backend (the client chose it, as a StatefulSet's clients must) and nothing is
        // mirrored. The first such Service by name, when several are.
        let headless = serving
            .iter()
            .find(|(key, service, p)| service.headless && !self.routes_for(key, p.port).is_empty());
        if let Some((key, _, service_port)) = headless {
            for (reference, _, translated) in self.translated_routes(key, service_port.port) {
                match translated {
                    Ok(rules) => {
                        routes.extend(rules.into_iter().map(|mut rule| {
                            rule.backends = vec![WeightedBackend { name: backend.clone(), weight: 1 }];
                            rule.mirror = None;
                            rule
                        }));
                        applied.push(reference);
                    }
                    Err(why) => unsupported.push((reference, why)),
                }
            }
        }
        routes.push(RouteConfig {
            name: Some("default".to_owned()),
            backends: vec![WeightedBackend { name: backend.clone(), weight: 1 }],
            ..RouteConfig::default()
        });
        let config = ServiceConfig {
            name: format!("{}.{namespace}.pod.{}:{port}", dashed(addr.ip()), self.cluster_domain),
            addresses: vec![addr],
            protocol: if opaque { Protocol::Opaque } else { Protocol::Auto },
            backends: vec![BackendConfig {
                name: backend,
                endpoints: vec![EndpointConfig {
                    address: addr,
                    meshed: true,
                    http2,
                    identity: Some(self.spiffe_id(namespace, &pod.service_account)),
                    local: false,
                    pod: Some(pod.endpoint_pod(namespace, pod_name)),
                }],
            }],
            routes,
            ..ServiceConfig::default()
        };
        Snapshot { service: Some(config), routes: applied, unsupported, depends_on: Vec::new() }
    }

    /// The accepted routes of a Service that apply to `port`, oldest first.
    /// Each MeshRoute on port `port` of Service `key`: its reference, itself, and its rules in
    /// the proxies' model (or why they cannot be).
    fn translated_routes<'a>(&'a self, key: &Key, port: u16) -> Vec<(RouteRef, &'a RouteInfo, Translated)> {
        let (namespace, target) = key;
        self.routes_for(key, port)
            .into_iter()
            .map(|(name, route)| {
                let reference = RouteRef {
                    kind: None,
                    namespace: namespace.clone(),
                    name: name.to_owned(),
                    generation: route.generation,
                };
                let translated = route
                    .spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| translate::route_rule(name, i, rule, target, port))
                    .collect();
                (reference, route, translated)
            })
            .collect()
    }

    fn routes_for<'a>(&'a self, key: &Key, port: u16) -> Vec<(&'a str, &'a RouteInfo)> {
        let mut routes: Vec<(&str, &RouteInfo)> = self
            .routes_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let route = self.routes.get(&(key.0.clone(), name.clone()))?;
                Some((name.as_str(), route))
            })
            .filter(|(_, route)| route.accepted)
            .filter(|(_, route)| route.spec.port.is_none_or(|p| i64::from(p) == i64::from(port)))
            .collect();
        routes.sort_by(|a, b| (a.1.created.as_str(), a.0).cmp(&(b.1.created.as_str(), b.0)));
        routes
    }

    /// The load balancing the oldest MeshRoute of the port that sets it asks for, or the default.
    fn load_balancer(&self, key: &Key, port: u16) -> LoadBalancerConfig {
        self.routes_for(key, port)
            .into_iter()
            .find_map(|(_, route)| route.spec.load_balancer.as_ref())
            .map(translate::load_balancer)
            .unwrap_or_default()
    }

    /// The in-flight limit the oldest MeshRoute of the port that sets one asks for.
    fn max_requests(&self, key: &Key, port: u16) -> Option<u32> {
        self.routes_for(key, port)
            .into_iter()
            .find_map(|(_, route)| route.spec.connection_pool.as_ref()?.max_requests)
            .map(|max| u32::try_from(max).unwrap_or(1).clamp(1, 1_000_000))
    }

    /// The connection limits (`maxConnections`, and its `maxPendingRequests`) of the oldest
    /// MeshRoute of the port that sets `maxConnections`.
    fn connection_limits(&self, key: &Key, port: u16) -> (Option<u32>, Option<u32>) {
        let pool = self.routes_for(key, port).into_iter().find_map(|(_, route)| {
            route.spec.connection_pool.as_ref().filter(|pool| pool.max_connections.is_some())
        });
        let Some(pool) = pool else { return (None, None) };
        let clamp = |max: i32, min: u32| u32::try_from(max).unwrap_or(min).clamp(min, 1_000_000);
        (pool.max_connections.map(|max| clamp(max, 1)), pool.max_pending_requests.map(|max| clamp(max, 0)))
    }

    /// The connection reuse limit the oldest MeshRoute of the port that sets one asks for.
    fn max_requests_per_connection(&self, key: &Key, port: u16) -> Option<u32> {
        self.routes_for(key, port)
            .into_iter()
            .find_map(|(_, route)| route.spec.connection_pool.as_ref()?.max_requests_per_connection)
            .map(|max| u32::try_from(max).unwrap_or(1).clamp(1, 1_000_000))
    }

    /// The ready endpoints of Service `key` behind its port `port`, optionally only the pods with
    /// `subset`'s labels; sorted, so an unchanged set compares equal.
    fn endpoints(
        &self,
        key: &Key,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Vec<EndpointConfig> {
        let Some(service) = self.services.get(key) else { return Vec::new() };
        let Some(service_port) = service.ports.iter().find(|p| p.port == port) else { return Vec::new() };
        let mut endpoints = Vec::new();
        for slice_name in self.slices_of.get(key).into_iter().flatten() {
            let Some(slice) = self.slices.get(&(key.0.clone(), slice_name.clone())) else { continue };
            let Some(slice_port) = slice.ports.iter().find(|p| p.name == service_port.name) else { continue };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                let pod =
                    endpoint.pod.as_ref().and_then(|name| self.pods.get(&(key.0.clone(), name.clone())));
                if let Some(labels) = subset
                    && !pod.is_some_and(|pod| labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
                {
                    continue;
                }
                let meshed = pod.filter(|pod| pod.proxied(slice_port.port));
                for ip in &endpoint.addresses {
                    // The slice names a pod, but another one holds the IP now: the IP was reused
                    // before the slice caught up. Whoever that is, it gets neither the old pod's
                    // traffic nor its identity.
                    if let (Some(name), Some(((namespace, holder), _))) = (&endpoint.pod, self.pod_at(*ip))
                        && (namespace != &key.0 || holder != name)
                    {
                        continue;
                    }
                    endpoints.push(EndpointConfig {
                        address: SocketAddr::new(*ip, slice_port.port),
                        meshed: meshed.is_some(),
                        http2: service_port.http2 || slice_port.http2,
                        identity: meshed.map(|pod| self.spiffe_id(&key.0, &pod.service_account)),
                        local: false,
                        pod: pod.zip(endpoint.pod.as_ref()).map(|(pod, name)| pod.endpoint_pod(&key.0, name)),
                    });
                }
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        endpoints
    }
}

/// Takes `item` out of `key`'s set in `map`, and the set once it is empty.
fn remove_from<K, V>(map: &mut HashMap<K, BTreeSet<V>>, key: &K, item: &V)
where
    K: std::hash::Hash + Eq,
    V: Ord,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// An IP as the label of a pod's DNS name (`10-1-0-5`, `fd00--5`), as Kubernetes spells it.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_owned(), name.to_owned())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP")
    }

    fn http_port(port: u16) -> PortInfo {
        PortInfo { name: "http".into(), port, http2: false, opaque: false }
    }

    /// Service `name` in shop with cluster IP `cluster_ip`:80 → pods `pods` (name, ip, labels) on 8080.
    type TestPod<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn add_service(index: &mut Index, name: &str, cluster_ip: &str, pods: &[TestPod<'_>]) {
        index.upsert_service(
            key("shop", name),
            ServiceInfo {
                cluster_ips: vec![ip(cluster_ip)],
                headless: false,
                ports: vec![http_port(80)],
                export_to: None,
            },
        );
        let mut endpoints = Vec::new();
        for (pod, address, labels) in pods {
            index.upsert_pod(
                key("shop", pod),
                PodInfo {
                    service_account: "reviews".to_owned(),
                    labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                    meshed: true,
                    ips: vec![ip(address)],
                    created: "2026-01-01T00:00:00Z".to_owned(),
                    // reviews-v1-a: a pod of Deployment reviews-v1.
                    workload: pod.rsplit_once('-').map(|(deployment, _)| Workload {
                        kind: braid_api::config::WorkloadKind::Deployment,
                        name: deployment.to_owned(),
                    }),
                    ..Default::default()
                },
            );
            endpoints.push(EndpointInfo {
                addresses: vec![ip(address)],
                ready: true,
                pod: Some((*pod).to_owned()),
            });
        }
        index.upsert_slice(
            key("shop", &format!("{name}-abc")),
            SliceInfo { service: name.to_owned(), ports: vec![http_port(8080)], endpoints },
        );
    }

    fn route(index: &mut Index, name: &str, generation: i64, spec: serde_json::Value) {
        let spec: MeshRouteSpec = serde_json::from_value(spec).expect("test route spec");
        let accepted = crate::meshroute::validate::validate(&spec).is_empty();
        index.upsert_route(
            key("shop", name),
            RouteInfo { generation, created: "2026-01-01T00:00:00Z".into(), accepted, spec },
        );
    }

    fn shop() -> Index {
        let mut index = Index::new("cluster.local", "cluster.local");
        add_service(
            &mut index,
            "reviews",
            "10.96.0.10",
            &[
                ("reviews-v1-a", "10.1.0.1", &[("version", "v1")]),
                ("reviews-v2-a", "10.1.0.2", &[("version", "v2")]),
            ],
        );
        add_service(
            &mut index,
            "reviews-v1",
            "10.96.0.11",
            &[("reviews-v1-a", "10.1.0.1", &[("version", "v1")])],
        );
        add_service(
            &mut index,
            "reviews-v2",
            "10.96.0.12",
            &[("reviews-v2-a", "10.1.0.2", &[("version", "v2")])],
        );
        index
    }

    #[test]
    fn cluster_ips_and_dns_names_resolve_to_the_service() {
        let index = shop();
        let reviews = Target::Service { key: key("shop", "reviews"), port: 80 };
        assert_eq!(index.resolve("10.96.0.10:80"), Ok(reviews.clone()));
        assert_eq!(index.resolve("reviews.shop.svc.cluster.local:80"), Ok(reviews.clone()));
        assert_eq!(index.resolve("reviews.shop.svc:80"), Ok(reviews.clone()));
        assert_eq!(index.resolve("reviews.shop:80"), Ok(reviews));
        assert_eq!(
            index.resolve("10.1.0.1:8080"),
            Ok(Target::Address("10.1.0.1:8080".parse().unwrap())),
            "a pod IP is not a Service"
        );
        assert_eq!(
            index.resolve("example.com:443"),
            Ok(Target::Service { key: key("com", "example"), port: 443 })
        );
        assert!(index.resolve("no-port").is_err());
        assert!(index.resolve("a.b:99999").is_err());
    }

    #[test]
    fn without_a_route_the_service_goes_to_its_ready_endpoints_with_their_identities() {
        let index = shop();
        let snapshot = index.destination(&key("shop", "reviews"), 80);
        let service = snapshot.service.expect("a known service");
        assert_eq!(service.name, "reviews.shop.svc.cluster.local:80");
        assert_eq!(service.addresses, ["10.96.0.10:80".parse::<SocketAddr>().unwrap()]);
        assert_eq!(service.backends.len(), 1);
        let endpoints = &service.backends[0].endpoints;
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].address, "10.1.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(endpoints[0].identity.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/reviews"));
        assert!(endpoints[0].meshed);
        // Who is behind each endpoint, for the client proxy's dst_* labels.
        let pods: Vec<_> = endpoints
            .iter()
            .map(|e| e.pod.as_ref().map(|p| (p.name.as_str(), p.workload.as_ref().map(|w| w.name.as_str()))))
            .collect();
        assert_eq!(
            pods,
            [Some(("reviews-v1-a", Some("reviews-v1"))), Some(("reviews-v2-a", Some("reviews-v2")))]
        );
        assert_eq!(service.routes.len(), 1);
        assert!(snapshot.routes.is_empty());
        assert_eq!(index.destination(&key("shop", "reviews"), 81), Snapshot::UNKNOWN, "no such port");
        assert_eq!(index.destination(&key("shop", "nope"), 80), Snapshot::UNKNOWN);
    }

    #[test]
    fn a_weighted_route_names_its_backends_and_generation() {
        let mut index = shop();
        route(
            &mut index,
            "split",
            3,
            json!({"service": "reviews", "rules": [{"backends": [
            {"service": "reviews-v1", "weight": 80}, {"service": "reviews-v2", "weight": 20}]}]}),
        );
        let snapshot = index.destination(&key("shop", "reviews"), 80);
        assert_eq!(
            snapshot.routes,
            [RouteRef { kind: None, namespace: "shop".into(), name: "split".into(), generation: 3 }]
        );
        let service = snapshot.service.expect("known");
        let weights: Vec<_> =
            service.routes[0].backends.iter().map(|b| (b.name.as_str(), b.weight)).collect();
        assert_eq!(weights, [("reviews-v1", 80), ("reviews-v2", 20)]);
        let v2 = service.backends.iter().find(|b| b.name == "reviews-v2").expect("backend v2");
        assert_eq!(v2.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(), ["10.1.0.2:8080"]);
        assert_eq!(service.routes.last().and_then(|r| r.name.as_deref()), Some("default"));
    }

    #[test]
    fn the_oldest_route_that_sets_load_balancing_sets_it_for_the_port() {
        let mut index = shop();
        let destination =
            |index: &Index| index.destination(&key("shop", "reviews"), 80).service.expect("known");
        assert_eq!(destination(&index).load_balancer, LoadBalancerConfig::default());
        route(
            &mut index,
            "sticky",
            1,
            json!({"service": "reviews", "loadBalancer": {"hashOn": {"type": "Cookie", "name": "sid"}},
                   "rules": [{"backends": [{"service": "reviews-v1"}]}]}),
        );
        let config = destination(&index).load_balancer;
        assert_eq!(config.hash_on, Some(braid_api::config::HashOn::Cookie("sid".into())));
        assert_eq!(destination(&index).max_requests, None);
        route(
            &mut index,
            "limits",
            1,
            json!({"service": "reviews", "connectionPool": {"maxRequests": 64, "maxRequestsPerConnection": 100},
                   "rules": [{"backends": [{"service": "reviews-v1"}]}]}),
        );
        assert_eq!(destination(&index).max_requests, Some(64));
        assert_eq!(destination(&index).max_requests_per_connection, Some(100));
        assert_eq!(
            (destination(&index).max_connections, destination(&index).max_pending_requests),
            (None, None)
        );
        // maxConnections and its queue come together, from the oldest route that sets them.
        route(
            &mut index,
            "connections",
            1,
            json!({"service": "reviews", "connectionPool": {"maxConnections": 4, "maxPendingRequests": 0},
                   "rules": [{"backends": [{"service": "reviews-v1"}]}]}),
        );
        let service = destination(&index);
        assert_eq!((service.max_connections, service.max_pending_requests), (Some(4), Some(0)));
        let config = json!({"identity": {"identity": "spiffe://cluster.local/ns/shop/sa/web",
            "endpoint": "id:8080", "tokenFile": "/t", "trustBundleFile": "/b"}, "services": [service]});
        braid_api::config::Config::parse(&config.to_string()).expect("the proxy takes it");
    }

    #[test]
    fn a_subset_selects_the_targets_pods_by_label() {
        let mut index = shop();
        route(
            &mut index,
            "canary",
            1,
            json!({"service": "reviews", "rules": [{"backends": [
            {"subset": {"version": "v2"}, "weight": 100}]}]}),
        );
        let service = index.destination(&key("shop", "reviews"), 80).service.expect("known");
        let subset =
            service.backends.iter().find(|b| b.name == "reviews[version=v2]").expect("subset backend");
        assert_eq!(subset.endpoints.len(), 1);
        assert_eq!(subset.endpoints[0].address.to_string(), "10.1.0.2:8080");
    }

    #[test]
    fn an_unsupported_route_is_left_out_and_reported() {
        let mut index = shop();
        // A duration the proxy cannot read, as a route written before the CRD checked it would be.
        let spec: MeshRouteSpec = serde_json::from_value(json!({"service": "reviews", "rules": [{
            "backends": [{"service": "reviews-v2"}], "timeout": "soon"}]}))
        .expect("spec");
        index.upsert_route(
            key("shop", "q"),
            RouteInfo { generation: 2, created: "2026-01-01T00:00:00Z".into(), accepted: true, spec },
        );
        let snapshot = index.destination(&key("shop", "reviews"), 80);
        assert!(snapshot.routes.is_empty());
        assert_eq!(snapshot.unsupported.len(), 1);
        assert_eq!(snapshot.service.expect("known").routes.len(), 1, "only the default route");
    }

    #[test]
    fn the_config_the_server_builds_passes_the_proxys_own_check() {
        let mut index = shop();
        route(
            &mut index,
            "split",
            3,
            json!({"service": "reviews", "rules": [{"backends": [
            {"service": "reviews-v1", "weight": 80}, {"service": "reviews-v2", "weight": 20}],
            "timeout": "5s", "retries": {"attempts": 3}, "mirror": {"service": "reviews-v1", "percent": 10}}]}),
        );
        let service = index.destination(&key("shop", "reviews"), 80).service.expect("known");
        let config = json!({"identity": {"identity": "spiffe://cluster.local/ns/shop/sa/web",
            "endpoint": "id:8080", "tokenFile": "/t", "trustBundleFile": "/b"}, "services": [service]});
        braid_api::config::Config::parse(&config.to_string())
            .expect("the proxy accepts what the server sends");
    }

    #[test]
    fn unready_endpoints_and_unmeshed_pods_are_told_apart() {
        let mut index = shop();
        index.upsert_pod(
            key("shop", "reviews-v1-a"),
            PodInfo {
                service_account: "reviews".into(),
                labels: BTreeMap::new(),
                meshed: false,
                probes: Vec::new(),
                ..Default::default()
            },
        );
        index.upsert_slice(
            key("shop", "reviews-abc"),
            SliceInfo {
                service: "reviews".into(),
                ports: vec![http_port(8080)],
                endpoints: vec![
                    EndpointInfo {
                        addresses: vec![ip("10.1.0.1")],
                        ready: true,
                        pod: Some("reviews-v1-a".into()),
                    },
                    EndpointInfo {
                        addresses: vec![ip("10.1.0.2")],
                        ready: false,
                        pod: Some("reviews-v2-a".into()),
                    },
                ],
            },
        );
        let service = index.destination(&key("shop", "reviews"), 80).service.expect("known");
        let endpoints = &service.backends[0].endpoints;
        assert_eq!(endpoints.len(), 1, "the unready endpoint is left out");
        assert!(!endpoints[0].meshed);
        assert_eq!(endpoints[0].identity, None, "no identity for a pod without a proxy");
    }

    #[test]
    fn export_to_limits_who_may_discover_a_service() {
        let mut index = shop();
        let mut private = index.services[&key("shop", "reviews")].clone();
        private.export_to = Some(BTreeSet::from(["shop".to_owned()]));
        index.upsert_service(key("shop", "reviews"), private);
        assert!(index.visible(&key("shop", "reviews"), "shop").is_ok());
        let refused = index.visible(&key("shop", "reviews"), "web").unwrap_err();
        assert!(refused.contains("exported only to namespace(s) shop"), "{refused}");
        assert!(index.visible(&key("shop", "reviews-v1"), "web").is_ok(), "no annotation: everyone");
    }

    #[test]
    fn a_pod_may_be_spoken_for_only_by_its_own_service_account() {
        let index = shop();
        assert!(index.check_pod(("shop", "reviews"), &key("shop", "reviews-v1-a")).is_ok());
        let wrong = index.check_pod(("shop", "web"), &key("shop", "reviews-v1-a")).unwrap_err();
        assert!(wrong.contains("client certificate names shop/web"), "{wrong}");
        assert!(index.check_pod(("shop", "reviews"), &key("shop", "ghost")).is_err());
    }

    #[test]
    fn policies_select_pods_by_label_in_their_namespace() {
        let mut index = shop();
        let policy: MeshPolicySpec = serde_json::from_value(json!({"podSelector": {"version": "v2"},
            "rules": [{"from": [{"serviceAccount": {"name": "web"}}]}]}))
        .unwrap();
        index.upsert_policy(key("shop", "only-web"), policy.clone());
        index.upsert_policy(key("other", "elsewhere"), policy);
        let v2 = index.inbound(&key("shop", "reviews-v2-a")).expect("selected");
        assert_eq!(v2.rules.len(), 1, "the other namespace's policy does not apply");
        let unselected = index.inbound(&key("shop", "reviews-v1-a")).expect("a known pod has a policy");
        assert_eq!(
            unselected,
            DefaultInboundPolicy::AllUnauthenticated.policy(Vec::new()),
            "the Mesh's default"
        );
        assert!(index.inbound(&key("shop", "ghost")).is_none(), "an unknown pod has none");
    }

    #[test]
    fn each_policy_counts_the_meshed_pods_it_selects_in_its_namespace() {
        let mut index = shop();
        let v2: MeshPolicySpec = serde_json::from_value(json!({"podSelector": {"version": "v2"}})).unwrap();
        let everyone: MeshPolicySpec = serde_json::from_value(json!({})).unwrap();
        index.upsert_policy(key("shop", "v2-only"), v2);
        index.set_policy_generation(key("shop", "v2-only"), Some(3));
        index.upsert_policy(key("other", "everyone"), everyone);
        let selections = index.policy_selections();
        let meshed_in_shop = index.pods.iter().filter(|((ns, _), p)| ns == "shop" && p.meshed).count();
        let v2_pods = index
            .pods
            .iter()
            .filter(|((ns, _), p)| {
                ns == "shop" && p.meshed && p.labels.get("version").map(String::as_str) == Some("v2")
            })
            .count();
        assert!(v2_pods > 0 && v2_pods < meshed_in_shop, "the fixture has v2 pods and others");
        assert_eq!(
            selections,
            [(key("other", "everyone"), None, 0), (key("shop", "v2-only"), Some(3), v2_pods)],
            "no pod of another namespace counts"
        );
    }

    #[test]
    fn the_default_policy_is_the_pods_annotation_else_the_meshs() {
        let mut index = shop();
        index.set_default_policy(DefaultInboundPolicy::Deny);
        let closed = index.inbound(&key("shop", "reviews-v1-a")).expect("known");
        assert_eq!(closed, DefaultInboundPolicy::Deny.policy(Vec::new()));
        let mut pod = index.pods[&key("shop", "reviews-v1-a")].clone();
        pod.default_policy = Some(DefaultInboundPolicy::AllAuthenticated);
        index.upsert_pod(key("shop", "reviews-v1-a"), pod);
        let meshed = index.inbound(&key("shop", "reviews-v1-a")).expect("known");
        assert_eq!(
            meshed,
            DefaultInboundPolicy::AllAuthenticated.policy(Vec::new()),
            "the pod's annotation wins"
        );
    }

    #[test]
    fn the_revision_moves_only_on_real_changes() {
        let mut index = shop();
        let before = index.revision();
        add_service(
            &mut index,
            "reviews-v1",
            "10.96.0.11",
            &[("reviews-v1-a", "10.1.0.1", &[("version", "v1")])],
        );
        assert_eq!(index.revision(), before, "the same objects again change nothing");
        index.remove_pod(&key("shop", "reviews-v1-a"));
        assert!(index.revision() > before);
    }

    fn pod_at_ip(service_account: &str, address: &str, created: &str) -> PodInfo {
        PodInfo {
            service_account: service_account.to_owned(),
            meshed: true,
            ips: vec![ip(address)],
            created: created.to_owned(),
            ..Default::default()
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// The identity the answer for `address` sends the proxy to, `None` for passthrough.
    fn identity_at(index: &Index, address: &str) -> Option<String> {
        let service = index.address(addr(address)).service?;
        assert_eq!(service.backends.len(), 1, "one backend: the pod");
        assert_eq!(service.backends[0].endpoints.len(), 1, "one endpoint: the pod");
        service.backends[0].endpoints[0].identity.clone()
    }

    #[test]
    fn a_meshed_pods_ip_is_answered_with_that_pod_alone_and_its_identity() {
        let index = shop();
        let snapshot = index.address(addr("10.1.0.1:8080"));
        let service = snapshot.service.expect("a meshed pod");
        assert_eq!(service.name, "10-1-0-1.shop.pod.cluster.local:8080");
        assert_eq!(service.addresses, [addr("10.1.0.1:8080")]);
        assert_eq!(service.protocol, Protocol::Auto);
        assert_eq!(service.backends.len(), 1);
        assert_eq!(service.backends[0].name, "reviews-v1-a");
        assert_eq!(
            service.backends[0].endpoints,
            [EndpointConfig {
                address: addr("10.1.0.1:8080"),
                meshed: true,
                http2: false,
                identity: Some("spiffe://cluster.local/ns/shop/sa/reviews".to_owned()),
                local: false,
                pod: Some(EndpointPod {
                    namespace: "shop".into(),
                    name: "reviews-v1-a".into(),
                    service_account: "reviews".into(),
                    workload: Some(Workload {
                        kind: braid_api::config::WorkloadKind::Deployment,
                        name: "reviews-v1".into()
                    }),
                    pod_template_hash: String::new(),
                }),
            }]
        );
        let routes: Vec<_> = service.routes.iter().map(|r| r.name.as_deref()).collect();
        assert_eq!(routes, [Some("default")], "no headless Service: no route but the pod");
        // What the proxy is sent passes its own check.
        let config = json!({"identity": {"identity": "spiffe://cluster.local/ns/shop/sa/web",
            "endpoint": "id:8080", "tokenFile": "/t", "trustBundleFile": "/b"}, "services": [service]});
        braid_api::config::Config::parse(&config.to_string()).expect("the proxy accepts it");
        // Any port of the pod reaches its proxy, but the admin port.
        assert!(identity_at(&index, "10.1.0.1:9000").is_some());
        assert_eq!(index.address(addr("10.1.0.1:4191")), Snapshot::UNKNOWN, "the admin port");
        assert_eq!(index.address(addr("10.9.9.9:8080")), Snapshot::UNKNOWN, "no pod holds it");
        assert_eq!(index.address(addr("10.96.0.10:80")), Snapshot::UNKNOWN, "a cluster IP is no pod's");
    }

    #[test]
    fn an_unmeshed_pod_or_a_skipped_port_is_forwarded_unchanged() {
        let mut index = shop();
        let mut plain = pod_at_ip("batch", "10.1.0.7", "2026-01-01T00:00:00Z");
        plain.meshed = false;
        index.upsert_pod(key("shop", "batch"), plain);
        assert_eq!(index.address(addr("10.1.0.7:8080")), Snapshot::UNKNOWN, "no proxy in the pod");
        let mut skipping = pod_at_ip("db", "10.1.0.8", "2026-01-01T00:00:00Z");
        skipping.skip_inbound = braid_runtime::ports::parse_port_list("4191,5432,9000-9100").unwrap();
        index.upsert_pod(key("shop", "db"), skipping);
        assert_eq!(index.address(addr("10.1.0.8:5432")), Snapshot::UNKNOWN, "a skipped port");
        assert_eq!(index.address(addr("10.1.0.8:9050")), Snapshot::UNKNOWN, "inside a skipped range");
        assert!(identity_at(&index, "10.1.0.8:8080").is_some(), "other ports reach the proxy");
    }

    #[test]
    fn a_reused_ip_is_never_answered_with_the_old_pods_identity() {
        let mut index = shop();
        let old = "spiffe://cluster.local/ns/shop/sa/reviews";
        let new = "spiffe://cluster.local/ns/jobs/sa/batch";
        assert_eq!(identity_at(&index, "10.1.0.2:8080").as_deref(), Some(old));
        // The old pod is gone, but its deletion has not reached the index when the new pod,
        // given the freed IP, does.
        index.upsert_pod(key("jobs", "batch-1"), pod_at_ip("batch", "10.1.0.2", "2026-01-01T00:05:00Z"));
        assert_eq!(identity_at(&index, "10.1.0.2:8080").as_deref(), Some(new), "the later pod holds it");
        let reviews = index.destination(&key("shop", "reviews"), 80).service.expect("known");
        let addresses: Vec<String> =
            reviews.backends[0].endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(
            addresses,
            ["10.1.0.1:8080"],
            "the Service's slice still lists the old pod at the IP: that endpoint is left out"
        );
        index.remove_pod(&key("shop", "reviews-v2-a"));
        assert_eq!(identity_at(&index, "10.1.0.2:8080").as_deref(), Some(new));
        index.remove_pod(&key("jobs", "batch-1"));
        assert_eq!(index.address(addr("10.1.0.2:8080")), Snapshot::UNKNOWN, "nobody holds it now");

        // Deletion first, then the new pod: the same.
        let mut index = shop();
        index.remove_pod(&key("shop", "reviews-v2-a"));
        assert_eq!(index.address(addr("10.1.0.2:8080")), Snapshot::UNKNOWN);
        index.upsert_pod(key("jobs", "batch-1"), pod_at_ip("batch", "10.1.0.2", "2026-01-01T00:05:00Z"));
        assert_eq!(identity_at(&index, "10.1.0.2:8080").as_deref(), Some(new));

        // A pod that moves off an IP (its status loses it) lets go of it.
        let mut moved = pod_at_ip("batch", "10.1.0.3", "2026-01-01T00:05:00Z");
        index.upsert_pod(key("jobs", "batch-1"), moved.clone());
        assert_eq!(index.address(addr("10.1.0.2:8080")), Snapshot::UNKNOWN);
        moved.ips.clear();
        index.upsert_pod(key("jobs", "batch-1"), moved);
        assert_eq!(index.address(addr("10.1.0.3:8080")), Snapshot::UNKNOWN);

        // Two pods created in the same second claim one IP: which one holds it cannot be told.
        let mut index = shop();
        index.upsert_pod(key("jobs", "twin"), pod_at_ip("batch", "10.1.0.1", "2026-01-01T00:00:00Z"));
        assert_eq!(index.address(addr("10.1.0.1:8080")), Snapshot::UNKNOWN, "no identity when unsure");
        // An unmeshed newer pod holds the IP: forwarded unchanged, not to the old identity.
        let mut index = shop();
        let mut plain = pod_at_ip("batch", "10.1.0.1", "2026-01-02T00:00:00Z");
        plain.meshed = false;
        index.upsert_pod(key("jobs", "plain"), plain);
        assert_eq!(index.address(addr("10.1.0.1:8080")), Snapshot::UNKNOWN);
    }

    /// StatefulSet `web` behind headless Service `web` (port http 80 → 8080 on the pods).
    fn statefulset() -> Index {
        let mut index = Index::new("cluster.local", "cluster.local");
        index.upsert_service(
            key("shop", "web"),
            ServiceInfo {
                cluster_ips: Vec::new(),
                headless: true,
                ports: vec![http_port(80)],
                export_to: None,
            },
        );
        let mut endpoints = Vec::new();
        for (name, address) in [("web-0", "10.1.1.10"), ("web-1", "10.1.1.11")] {
            index.upsert_pod(key("shop", name), pod_at_ip("web", address, "2026-01-01T00:00:00Z"));
            endpoints.push(EndpointInfo {
                addresses: vec![ip(address)],
                ready: true,
                pod: Some(name.to_owned()),
            });
        }
        index.upsert_slice(
            key("shop", "web-xyz"),
            SliceInfo { service: "web".to_owned(), ports: vec![http_port(8080)], endpoints },
        );
        index
    }

    #[test]
    fn a_headless_services_routes_apply_with_the_pod_as_their_only_backend() {
        let mut index = statefulset();
        let spec = json!({"service": "web", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "timeout": "5s",
             "backends": [{"service": "elsewhere", "weight": 100}]},
            {"retries": {"attempts": 3, "retryOn": ["5xx"]}, "mirror": {"service": "shadow", "percent": 10},
             "backends": [{"subset": {"version": "v2"}, "weight": 1}]}]});
        let spec: MeshRouteSpec = serde_json::from_value(spec).expect("route");
        index.upsert_route(
            key("shop", "web"),
            RouteInfo { generation: 4, created: "2026-01-01T00:00:00Z".into(), accepted: true, spec },
        );
        let snapshot = index.address(addr("10.1.1.11:8080"));
        assert_eq!(
            snapshot.routes,
            [RouteRef { kind: None, namespace: "shop".into(), name: "web".into(), generation: 4 }]
        );
        let service = snapshot.service.expect("a meshed pod");
        assert_eq!(service.backends.len(), 1, "only the pod, whatever the route names");
        assert_eq!(service.backends[0].name, "web-1");
        assert_eq!(service.routes.len(), 3, "two rules and the default");
        for route in &service.routes {
            let backends: Vec<_> = route.backends.iter().map(|b| b.name.as_str()).collect();
            assert_eq!(backends, ["web-1"], "the client chose the pod: {route:?}");
            assert!(route.mirror.is_none(), "nothing mirrored");
        }
        assert_eq!(service.routes[0].timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(service.routes[1].retries.as_ref().map(|r| r.attempts), Some(3));
        assert_eq!(service.routes[2].name.as_deref(), Some("default"));
        let config = json!({"identity": {"identity": "spiffe://cluster.local/ns/shop/sa/client",
            "endpoint": "id:8080", "tokenFile": "/t", "trustBundleFile": "/b"}, "services": [service]});
        braid_api::config::Config::parse(&config.to_string()).expect("the proxy accepts it");

        // The same pods behind a Service with a cluster IP: its routes are for the cluster IP;
        // a client that dials a pod directly gets that pod, untouched.
        let mut index = index.clone();
        let mut with_ip = index.services[&key("shop", "web")].clone();
        with_ip.headless = false;
        with_ip.cluster_ips = vec![ip("10.96.1.1")];
        index.upsert_service(key("shop", "web"), with_ip);
        let service = index.address(addr("10.1.1.11:8080")).service.expect("a meshed pod");
        assert_eq!(service.routes.len(), 1, "only the default route");
        assert!(service.routes[0].retries.is_none());
    }

    #[test]
    fn the_services_port_says_whether_a_pod_port_is_opaque_or_http2() {
        let mut index = statefulset();
        let mut service = index.services[&key("shop", "web")].clone();
        service.ports = vec![PortInfo { name: "http".into(), port: 80, http2: true, opaque: false }];
        index.upsert_service(key("shop", "web"), service.clone());
        let config = index.address(addr("10.1.1.10:8080")).service.expect("meshed");
        assert!(config.backends[0].endpoints[0].http2);
        service.ports = vec![PortInfo { name: "http".into(), port: 80, http2: false, opaque: true }];
        index.upsert_service(key("shop", "web"), service);
        let config = index.address(addr("10.1.1.10:8080")).service.expect("meshed");
        assert_eq!(config.protocol, Protocol::Opaque, "a database port is not held for detection");
        let other = index.address(addr("10.1.1.10:9090")).service.expect("meshed");
        assert_eq!(other.protocol, Protocol::Auto, "a port no Service names is detected");
    }

    #[test]
    fn a_pod_ip_is_hidden_only_behind_services_all_hidden_from_the_client() {
        let mut index = statefulset();
        assert!(index.visible_address(ip("10.1.1.10"), "elsewhere").is_ok());
        assert!(index.visible_address(ip("10.9.9.9"), "elsewhere").is_ok(), "no Service: nothing to hide");
        let mut private = index.services[&key("shop", "web")].clone();
        private.export_to = Some(BTreeSet::from(["shop".to_owned()]));
        index.upsert_service(key("shop", "web"), private);
        let refused = index.visible_address(ip("10.1.1.10"), "elsewhere").unwrap_err();
        assert!(refused.contains("exported only to namespace(s) shop"), "{refused}");
        assert!(index.visible_address(ip("10.1.1.10"), "shop").is_ok());
        // Also behind a Service everyone may see: no secret to keep.
        index.upsert_service(
            key("shop", "web-public"),
            ServiceInfo {
                cluster_ips: Vec::new(),
                headless: true,
                ports: vec![http_port(80)],
                export_to: None,
            },
        );
        let slice = index.slices[&key("shop", "web-xyz")].clone();
        index
            .upsert_slice(key("shop", "web-public-abc"), SliceInfo { service: "web-public".into(), ..slice });
        assert!(index.visible_address(ip("10.1.1.10"), "elsewhere").is_ok());
        // The slice index lets go of addresses with their slices.
        index.remove_slice(&key("shop", "web-public-abc"));
        index.remove_slice(&key("shop", "web-xyz"));
        assert!(index.slices_by_ip.is_empty(), "{:?}", index.slices_by_ip);
        index.remove_pod(&key("shop", "web-0"));
        index.remove_pod(&key("shop", "web-1"));
        assert!(index.by_pod_ip.is_empty(), "{:?}", index.by_pod_ip);
    }
}
