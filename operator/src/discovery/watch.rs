//! Keeps the discovery index current from the API server: Pods, Services, EndpointSlices,
//! MeshRoutes, MeshPolicies and the Mesh. Each object is reduced to what proxies need before it
//! is stored (index.rs), and the events that arrive together are applied as one change, so a
//! burst of endpoint churn wakes each proxy's stream once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use braid_api::config::DefaultInboundPolicy;
use braid_api::contract::{DEFAULT_INBOUND_POLICY, INJECTED, PROXY_CONTAINER, env::INBOUND_SKIP_PORTS};
use braid_crds::{Mesh, MeshExternalService, MeshExternalServiceSpec, MeshPolicy, MeshRoute, MeshSpec};
use futures::{FutureExt as _, StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use super::index::{
    EXPORT_TO, EndpointInfo, Index, Key, PodInfo, PortInfo, RouteInfo, ServiceInfo, SliceInfo,
};
use super::stream::Discovery;

/// The most events applied as one change.
const BATCH: usize = 2_000;

pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    let meshed = pod.annotations().contains_key(INJECTED)
        || spec.init_containers.iter().flatten().chain(&spec.containers).any(|c| c.name == PROXY_CONTAINER);
    let probes = braid_crds::pod::http_probes(spec);
    // A value the webhook did not write (edited later) closes rather than opens the pod.
    let default_policy = pod.annotations().get(DEFAULT_INBOUND_POLICY).map(|value| {
        value.parse().unwrap_or_else(|err| {
            tracing::warn!(pod = ?pod.metadata.name, %err, "the pod's default inbound policy is refused; applying deny");
            DefaultInboundPolicy::Deny
        })
    });
    Some(PodInfo {
        service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
        labels: pod.labels().clone(),
        meshed,
        probes,
        default_policy,
        ips: pod_ips(pod),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        skip_inbound: skip_inbound(pod),
        workload: braid_crds::pod::controlling_workload(pod),
    })
}

/// The IPs a pod holds: a finished pod keeps them in its status after the node has freed them,
/// and a pod on the node's network has the node's.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else { return Vec::new() };
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    if host_network || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The inbound ports the pod's redirect skips, as the webhook gave them to its proxy.
fn skip_inbound(pod: &Pod) -> Vec<braid_runtime::ports::PortRange> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let value = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == PROXY_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == INBOUND_SKIP_PORTS)
        .and_then(|e| e.value.as_deref());
    let Some(value) = value else { return Vec::new() };
    braid_runtime::ports::parse_port_list(value).unwrap_or_else(|err| {
        // braid-proxy init refuses the same list, so such a pod does not start.
        tracing::warn!(pod = ?pod.metadata.name, %err, "the pod's skipped inbound ports are unreadable");
        Vec::new()
    })
}

fn http2(app_protocol: Option<&String>) -> bool {
    matches!(app_protocol.map(String::as_str), Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2"))
}

/// Protocols in which the server may speak first, or that are never HTTP, by appProtocol or by
/// the port name's prefix (Istio's convention: `mysql`, `tcp-db`, `redis-main`). Their
/// connections are not held for protocol detection.
fn opaque(app_protocol: Option<&String>, name: Option<&str>) -> bool {
    const OPAQUE: [&str; 10] =
        ["tcp", "tls", "mysql", "postgres", "postgresql", "redis", "mongo", "mongodb", "smtp", "amqp"];
    let protocol =
        app_protocol.map(String::as_str).or_else(|| name.map(|n| n.split('-').next().unwrap_or(n)));
    protocol.is_some_and(|p| OPAQUE.contains(&p.to_ascii_lowercase().as_str()))
}

pub fn service_info(service: &Service) -> Option<ServiceInfo> {
    let spec = service.spec.as_ref()?;
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok()?,
                http2: http2(p.app_protocol.as_ref()),
                opaque: opaque(p.app_protocol.as_ref(), p.name.as_deref()),
            })
        })
        .collect();
    let namespace = service.namespace().unwrap_or_default();
    let export_to = service.annotations().get(EXPORT_TO).map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| if n == "." { namespace.clone() } else { n.to_owned() })
            .collect::<BTreeSet<_>>()
    });
    let headless = spec.cluster_ip.as_deref() == Some("None");
    Some(ServiceInfo { cluster_ips, headless, ports, export_to })
}

pub fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice.labels().get("kubernetes.io/service-name")?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port?).ok()?,
                http2: http2(p.app_protocol.as_ref()),
                opaque: opaque(p.app_protocol.as_ref(), p.name.as_deref()),
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| EndpointInfo {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            // Ready unless said otherwise, as the EndpointSlice API defines.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone()),
        })
        .collect();
    Some(SliceInfo { service, ports, endpoints })
}

pub fn route_info(route: &MeshRoute) -> RouteInfo {
    RouteInfo {
        generation: route.metadata.generation.unwrap_or(0),
        created: route.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        accepted: crate::meshroute::validate::validate(&route.spec).is_empty(),
        // A canary's weights are the rollout's (status.canary), not the spec's.
        spec: crate::canary::weights::effective_spec(route),
    }
}

/// One watch event, reduced.
enum Change {
    Pod(Key, Option<PodInfo>),
    Service(Key, Option<ServiceInfo>),
    Slice(Key, Option<SliceInfo>),
    Route(Key, Option<RouteInfo>),
    Policy(Key, Option<(braid_crds::MeshPolicySpec, Option<i64>)>),
    /// The Mesh's settings: trust domain, default inbound policy, egress and tracing.
    Mesh(Box<MeshSpec>),
    External(Key, Option<MeshExternalServiceSpec>),
    /// A watch (re)listed: objects of this kind not seen since `Start` are gone.
    Start(Kind),
    Done(Kind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pod,
    Service,
    Slice,
    Route,
    Policy,
    /// The Mesh named default (its trust domain); listed like the others before discovery serves.
    Mesh,
    External,
}

fn key_of<K: Resource>(object: &K) -> Key {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

fn watch<K, F>(api: Api<K>, kind: Kind, reduce: F) -> BoxStream<'static, Change>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Key, Option<&K>) -> Change + Send + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let change = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    Some(reduce(key_of(&object), Some(&object)))
                }
                Ok(watcher::Event::Delete(object)) => Some(reduce(key_of(&object), None)),
                Ok(watcher::Event::Init) => Some(Change::Start(kind)),
                Ok(watcher::Event::InitDone) => Some(Change::Done(kind)),
                Err(err) => {
                    tracing::warn!(?kind, %err, "discovery watch failed; retrying");
                    None
                }
            };
            std::future::ready(change)
        })
        .boxed()
}

/// The MeshExternalServices. A cluster whose CRD is not installed yet (a `helm upgrade` does not
/// add CRDs) has none: discovery must not wait for it, so the first failure to list reports the
/// kind listed, empty, and the watch keeps retrying until the CRD is there.
fn external_services(api: Api<MeshExternalService>) -> BoxStream<'static, Change> {
    let mut reported = false;
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let change = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    Some(Change::External(key_of(&object), Some(object.spec)))
                }
                Ok(watcher::Event::Delete(object)) => Some(Change::External(key_of(&object), None)),
                Ok(watcher::Event::Init) => Some(Change::Start(Kind::External)),
                Ok(watcher::Event::InitDone) => {
                    reported = true;
                    Some(Change::Done(Kind::External))
                }
                Err(err) => {
                    tracing::warn!(kind = ?Kind::External, %err, "discovery watch failed; retrying (is the MeshExternalService CRD installed? kubectl apply -f crds/)");
                    (!std::mem::replace(&mut reported, true)).then_some(Change::Done(Kind::External))
                }
            };
            std::future::ready(change)
        })
        .boxed()
}

/// The keys of each kind the index holds, and those seen since a relist started, so that what
/// vanished while the watch was away is dropped when the relist ends.
#[derive(Default)]
struct Keys {
    known: HashMap<Kind, HashSet<Key>>,
    relisting: HashMap<Kind, HashSet<Key>>,
}

impl Keys {
    fn record(&mut self, kind: Kind, key: &Key, present: bool) {
        let known = self.known.entry(kind).or_default();
        if present {
            known.insert(key.clone());
            if let Some(seen) = self.relisting.get_mut(&kind) {
                seen.insert(key.clone());
            }
        } else {
            known.remove(key);
        }
    }

    /// The keys not seen since the relist of `kind` started; they are forgotten.
    fn vanished(&mut self, kind: Kind) -> Vec<Key> {
        let seen = self.relisting.remove(&kind).unwrap_or_default();
        let known = self.known.entry(kind).or_default();
        let gone: Vec<Key> = known.iter().filter(|k| !seen.contains(*k)).cloned().collect();
        for key in &gone {
            known.remove(key);
        }
        gone
    }
}

fn apply(index: &mut Index, keys: &mut Keys, change: Change) {
    match change {
        Change::Pod(key, info) => {
            keys.record(Kind::Pod, &key, info.is_some());
            match info {
                Some(info) => index.upsert_pod(key, info),
                None => index.remove_pod(&key),
            }
        }
        Change::Service(key, info) => {
            keys.record(Kind::Service, &key, info.is_some());
            match info {
                Some(info) => index.upsert_service(key, info),
                None => index.remove_service(&key),
            }
        }
        Change::Slice(key, info) => {
            keys.record(Kind::Slice, &key, info.is_some());
            match info {
                Some(info) => index.upsert_slice(key, info),
                None => index.remove_slice(&key),
            }
        }
        Change::Route(key, info) => {
            keys.record(Kind::Route, &key, info.is_some());
            match info {
                Some(info) => index.upsert_route(key, info),
                None => index.remove_route(&key),
            }
        }
        Change::Policy(key, info) => {
            keys.record(Kind::Policy, &key, info.is_some());
            match info {
                Some((spec, generation)) => {
                    index.set_policy_generation(key.clone(), generation);
                    index.upsert_policy(key, spec);
                }
                None => index.remove_policy(&key),
            }
        }
        Change::Mesh(spec) => {
            index.set_trust_domain(&spec.trust_domain);
            index.set_default_policy(spec.default_inbound_policy);
            index.set_egress(&spec.egress);
            index.set_tracing(spec.tracing.proxy_config());
        }
        Change::External(key, spec) => {
            keys.record(Kind::External, &key, spec.is_some());
            match spec {
                Some(spec) => index.upsert_external_service(key, spec),
                None => index.remove_external_service(&key),
            }
        }
        Change::Start(kind) => {
            keys.relisting.insert(kind, HashSet::new());
        }
        Change::Done(kind) => {
            for key in keys.vanished(kind) {
                match kind {
                    Kind::Pod => index.remove_pod(&key),
                    Kind::Service => index.remove_service(&key),
                    Kind::Slice => index.remove_slice(&key),
                    Kind::Route => index.remove_route(&key),
                    Kind::Policy => index.remove_policy(&key),
                    Kind::External => index.remove_external_service(&key),
                    // Not keyed: a deleted Mesh leaves the trust domain as it was.
                    Kind::Mesh => {}
                }
            }
        }
    }
}

/// Runs the watches until `shutdown`; marks `discovery` synced once every kind has listed, which
/// is when the discovery server starts answering.
pub async fn run(client: Client, discovery: Arc<Discovery>, shutdown: CancellationToken) {
    let mut changes = futures::stream::select_all([
        watch(Api::<Pod>::all(client.clone()), Kind::Pod, |key, pod| {
            Change::Pod(key, pod.and_then(pod_info))
        }),
        watch(Api::<Service>::all(client.clone()), Kind::Service, |key, s| {
            Change::Service(key, s.and_then(service_info))
        }),
        watch(Api::<EndpointSlice>::all(client.clone()), Kind::Slice, |key, s| {
            Change::Slice(key, s.and_then(slice_info))
        }),
        watch(Api::<MeshRoute>::all(client.clone()), Kind::Route, |key, r| {
            Change::Route(key, r.map(route_info))
        }),
        watch(Api::<MeshPolicy>::all(client.clone()), Kind::Policy, |key, p| {
            Change::Policy(key, p.map(|p| (p.spec.clone(), p.metadata.generation)))
        }),
        external_services(Api::<MeshExternalService>::all(client.clone())),
        watcher(Api::<Mesh>::all(client), watcher::Config::default().fields("metadata.name=default"))
            .default_backoff()
            .filter_map(|event| {
                std::future::ready(match event {
                    Ok(watcher::Event::Apply(mesh) | watcher::Event::InitApply(mesh)) => {
                        Some(Change::Mesh(Box::new(mesh.spec)))
                    }
                    Ok(watcher::Event::InitDone) => Some(Change::Done(Kind::Mesh)),
                    Ok(_) => None,
                    Err(err) => {
                        tracing::warn!(kind = ?Kind::Mesh, %err, "discovery watch failed; retrying");
                        None
                    }
                })
            })
            .boxed(),
    ]);
    let mut keys = Keys::default();
    let mut pending_sync: HashSet<Kind> =
        [Kind::Pod, Kind::Service, Kind::Slice, Kind::Route, Kind::Policy, Kind::Mesh, Kind::External].into();
    loop {
        let first = tokio::select! {
            change = changes.next() => match change { Some(change) => change, None => return },
            () = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Some(Some(change)) = changes.next().now_or_never()
        {
            batch.push(change);
        }
        for change in &batch {
            if let Change::Done(kind) = change {
                pending_sync.remove(kind);
            }
        }
        discovery.update(|index| {
            for change in batch {
                apply(index, &mut keys, change);
            }
        });
        if pending_sync.is_empty() && !discovery.is_synced() {
            tracing::info!(pods = discovery.read(Index::pod_count), "discovery index synced");
            discovery.mark_synced();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_ports_are_opaque_by_app_protocol_or_name_and_http_ports_are_not() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "mysql", "port": 3306},
                {"name": "tcp-admin", "port": 3307},
                {"name": "main", "port": 5432, "appProtocol": "postgresql"},
                {"name": "http", "port": 80},
                {"name": "web", "port": 8080, "appProtocol": "http"},
                {"name": "tcpish", "port": 9000}
            ]}
        }))
        .unwrap();
        let info = service_info(&service).unwrap();
        let opaque: Vec<(u16, bool)> = info.ports.iter().map(|p| (p.port, p.opaque)).collect();
        assert_eq!(
            opaque,
            [(3306, true), (3307, true), (5432, true), (80, false), (8080, false), (9000, false)]
        );
    }

    #[test]
    fn a_pod_is_reduced_to_identity_labels_meshing_and_probes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": {"braid.dev/injected": "0.1.0"}},
            "spec": {"serviceAccountName": "web", "containers": [
                {"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                 "livenessProbe": {"httpGet": {"port": 9000}},
                 "startupProbe": {"tcpSocket": {"port": 8080}}}]},
        }))
        .expect("pod");
        let info = pod_info(&pod).expect("a spec");
        assert_eq!(info.service_account, "web");
        assert!(info.meshed);
        let probes: Vec<(u16, &str)> = info.probes.iter().map(|p| (p.port, p.path.as_str())).collect();
        assert_eq!(probes, [(8080, "/ready"), (9000, "/")]);
        assert_eq!(info.default_policy, None, "no annotation: the Mesh's default applies");
        let annotated = |value: &str| {
            let mut pod = pod.clone();
            pod.annotations_mut().insert(DEFAULT_INBOUND_POLICY.to_owned(), value.to_owned());
            pod_info(&pod).expect("a spec").default_policy
        };
        assert_eq!(annotated("all-authenticated"), Some(DefaultInboundPolicy::AllAuthenticated));
        assert_eq!(
            annotated("allow-everyone"),
            Some(DefaultInboundPolicy::Deny),
            "a bad value closes the pod"
        );
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).expect("pod");
        assert!(pod_info(&bare).is_none(), "no spec: nothing to index");
    }

    #[test]
    fn a_pod_holds_its_ips_while_it_runs_off_the_nodes_network() {
        let pod = |phase: &str, host_network: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-0", "namespace": "shop", "creationTimestamp": "2026-03-01T10:00:00Z"},
                "spec": {"hostNetwork": host_network, "initContainers": [{"name": "braid-proxy", "image": "p",
                    "env": [{"name": "BRAID_INBOUND_SKIP_PORTS", "value": "4191,5432,9000-9100"}]}],
                    "containers": [{"name": "app", "image": "x"}]},
                "status": {"phase": phase, "podIP": "10.1.0.5",
                           "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]},
            }))
            .expect("pod")
        };
        let info = pod_info(&pod("Running", false)).expect("a spec");
        let ips: Vec<String> = info.ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.1.0.5", "fd00::5"]);
        assert_eq!(info.created, "2026-03-01T10:00:00Z");
        assert!(info.proxied(8080));
        assert!(!info.proxied(5432) && !info.proxied(9050) && !info.proxied(4191), "{:?}", info.skip_inbound);
        assert!(pod_info(&pod("Succeeded", false)).expect("a spec").ips.is_empty(), "a finished pod let go");
        assert!(pod_info(&pod("Failed", false)).expect("a spec").ips.is_empty());
        assert!(pod_info(&pod("Running", true)).expect("a spec").ips.is_empty(), "the node's IP is no pod's");
        let mut bad = pod("Running", false);
        if let Some(env) =
            bad.spec.as_mut().and_then(|s| s.init_containers.as_mut()).and_then(|c| c[0].env.as_mut())
        {
            env[0].value = Some("http".into());
        }
        let info = pod_info(&bad).expect("a spec");
        assert!(info.skip_inbound.is_empty() && !info.proxied(4191), "unreadable: only the admin port");
    }

    #[test]
    fn a_headless_service_is_told_apart() {
        let service = |cluster_ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]}
            }))
            .expect("service")
        };
        let headless = service_info(&service("None")).expect("a spec");
        assert!(headless.headless && headless.cluster_ips.is_empty());
        assert!(!service_info(&service("10.96.0.9")).expect("a spec").headless);
    }
}
