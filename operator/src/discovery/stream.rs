//! One proxy's discovery stream: the protocol of docs/discovery.md over two channels of lines,
//! so it is tested without TLS and the server (server.rs) only moves bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use braid_api::config::{PolicyConfig, ServiceConfig, TracingConfig};
use braid_api::discovery::{
    self as api, ControlMessage, DestinationUpdate, InboundUpdate, LineReader, ProxyMessage, Refusal,
    Resource,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::index::{Index, Key, Snapshot, Target};
use super::registry::Registry;
use crate::metrics::DiscoveryMetrics;

/// What the client certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub namespace: String,
    pub service_account: String,
    /// The optional message parts the proxy said it understands.
    pub features: ProxyFeatures,
}

/// What a proxy names in its `braid-proxy-features` request header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyFeatures {
    pub tracing: bool,
    pub endpoint_pod: bool,
    pub policy_source: bool,
}

impl ProxyFeatures {
    /// Unknown names are skipped: a newer proxy may name parts this server does not have.
    pub fn parse(header: Option<&[u8]>) -> Self {
        let names = header.and_then(|value| std::str::from_utf8(value).ok()).unwrap_or_default();
        let named = |feature: &str| names.split(',').any(|name| name.trim() == feature);
        Self {
            tracing: named(api::FEATURE_TRACING),
            endpoint_pod: named(api::FEATURE_ENDPOINT_POD),
            policy_source: named(api::FEATURE_POLICY_SOURCE),
        }
    }
}

/// `config` as a proxy that does not know `EndpointConfig::pod` accepts it: without the pods.
/// A copy for each such proxy's update, which only a proxy older than the field costs.
fn without_endpoint_pods(config: &ServiceConfig) -> ServiceConfig {
    let mut config = config.clone();
    for endpoint in config.backends.iter_mut().flat_map(|backend| &mut backend.endpoints) {
        endpoint.pod = None;
    }
    config
}

struct Memo {
    revision: u64,
    version: u64,
    snapshot: Arc<Snapshot>,
}

/// The index, shared by the watches that write it and the streams that read it; each
/// destination's answer is computed once per change, whatever the number of proxies asking.
pub struct Discovery {
    index: RwLock<Index>,
    revision: watch::Sender<u64>,
    /// Whether every watch has listed once: until then the index is partial, and an answer from
    /// it (no policy yet, an unknown Service) would be wrong rather than late.
    synced: watch::Sender<bool>,
    /// Answers by Service port, and by client namespace for one that has consumer routes there.
    memo: Mutex<HashMap<MemoSlot, Memo>>,
    pub registry: Registry,
    pub metrics: Arc<DiscoveryMetrics>,
    /// What the proxies report of their requests to each backend (the canary checks).
    pub measurements: crate::canary::measure::Measurements,
}

impl Discovery {
    /// With metrics that no registry exports (tests, benchmarks).
    pub fn new(index: Index) -> Arc<Self> {
        Self::with_metrics(index, Arc::default())
    }

    pub fn with_metrics(index: Index, metrics: Arc<DiscoveryMetrics>) -> Arc<Self> {
        let revision = watch::channel(index.revision()).0;
        metrics.pods.set(i64::try_from(index.pod_count()).unwrap_or(i64::MAX));
        Arc::new(Self {
            index: RwLock::new(index),
            revision,
            synced: watch::channel(false).0,
            memo: Mutex::default(),
            registry: Registry::default(),
            metrics,
            measurements: Default::default(),
        })
    }

    /// Applies a batch of changes; the streams wake once for the whole batch.
    pub fn update(&self, change: impl FnOnce(&mut Index)) {
        let revision = {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            change(&mut index);
            self.metrics.pods.set(i64::try_from(index.pod_count()).unwrap_or(i64::MAX));
            index.revision()
        };
        self.revision.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
    }

    /// Marks the index complete: every watch has listed once.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Returns once the index is complete.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    pub fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.index.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The current answer for a Service port, as a proxy of namespace `client` gets it, and its
    /// version: the revision that last changed it. Clients of a namespace with consumer routes
    /// for the port get an answer of their own; all others share one.
    pub fn snapshot(&self, key: &Key, port: u16, client: &str) -> (u64, Arc<Snapshot>) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let revision = index.revision();
        let consumer = index.has_consumer_routes(key, port, client).then(|| client.to_owned());
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (key.clone(), port, consumer);
        if let Some(found) = memo.get(&slot)
            && found.revision == revision
        {
            return (found.version, found.snapshot.clone());
        }
        let fresh = index.destination_for(key, port, slot.2.as_deref());
        let entry = match memo.remove(&slot) {
            Some(old) if *old.snapshot == fresh => {
                Memo { revision, version: old.version, snapshot: old.snapshot }
            }
            _ => Memo { revision, version: revision, snapshot: Arc::new(fresh) },
        };
        let answer = (entry.version, entry.snapshot.clone());
        memo.insert(slot, entry);
        answer
    }
}

/// A Service port, and the client namespace when it has consumer routes there.
type MemoSlot = (Key, u16, Option<String>);

/// The hello is a few hundred bytes: a client that sends more before it has said who it is, or
/// takes longer, is dropped before anything else is spent on it.
pub const MAX_HELLO_BYTES: usize = 4 * 1024;
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the hello a proxy sends only subscriptions, acks and nacks.
pub const MAX_PROXY_MESSAGE_BYTES: usize = 64 * 1024;
/// Far above what one pod calls; each costs memory here and a line in the registry.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;
/// How often proxies report their requests per backend: a tenth of a short canary interval, and
/// at 1,000 proxies a couple of hundred small messages a second at most.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Backends per report taken into account; a destination has a handful.
const MAX_REPORT_BACKENDS: usize = 64;
/// Names are Kubernetes names; the version is shown in the Mesh status.
const MAX_NAME_BYTES: usize = 253;
const MAX_VERSION_BYTES: usize = 64;
/// A nack's reason reaches the MeshRoute status: the rest is cut.
pub const MAX_REASON_BYTES: usize = 1024;

/// Why a stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Decode(#[from] api::DecodeError),
    #[error("the first message must be a hello")]
    NoHello,
    #[error("refused: {0}")]
    Refused(String),
    #[error("the request body failed: {0}")]
    Body(String),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
}

struct Destination {
    /// Version sent last, to send only what changed.
    sent: Option<u64>,
    /// The answer sent last for a pod-IP destination: computed per stream (one endpoint, no
    /// shared memo to grow with every IP asked), so compared rather than versioned.
    sent_address: Option<Arc<Snapshot>>,
    refused: bool,
}

/// Serves one proxy until its request body ends, the peer goes away or `shutdown`.
pub async fn serve<S, E>(
    discovery: Arc<Discovery>,
    peer: Peer,
    mut incoming: S,
    out: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) -> Result<(), StreamError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut reader = LineReader::with_limit(MAX_HELLO_BYTES);
    let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_deadline);
    let hello = loop {
        if let Some(message) = reader.next::<ProxyMessage>() {
            match message? {
                ProxyMessage::Hello(hello) => break hello,
                _ => return Err(StreamError::NoHello),
            }
        }
        let chunk = tokio::select! {
            chunk = incoming.next() => chunk,
            () = &mut hello_deadline => {
                discovery.metrics.limited("hello_timeout");
                return Err(StreamError::HelloTimeout);
            }
            () = shutdown.cancelled() => return Ok(()),
        };
        match chunk {
            Some(Ok(bytes)) => {
                reader.push(&bytes).inspect_err(|_| discovery.metrics.limited("hello_size"))?
            }
            Some(Err(err)) => return Err(StreamError::Body(err.to_string())),
            None => return Ok(()),
        }
    };
    reader.set_limit(MAX_PROXY_MESSAGE_BYTES);
    let pod: Key = (hello.pod_namespace.clone(), hello.pod_name.clone());
    let checked =
        check_hello(&hello).inspect_err(|_| discovery.metrics.limited("hello_fields")).and_then(|()| {
            discovery.read(|index| index.check_pod((&peer.namespace, &peer.service_account), &pod))
        });
    if let Err(reason) = checked {
        let _ = out
            .send(line(&ControlMessage::Refused(Refusal { resource: None, reason: reason.clone() })))
            .await;
        return Err(StreamError::Refused(reason));
    }
    let id = discovery.registry.connect(&hello.proxy_version);
    discovery.metrics.proxies.inc();
    tracing::debug!(pod = %format!("{}/{}", pod.0, pod.1), proxy_version = %hello.proxy_version, "proxy connected");
    let mut session = Session {
        discovery: &discovery,
        id,
        peer,
        pod,
        out: &out,
        destinations: BTreeMap::new(),
        inbound: None,
        services: HashMap::new(),
    };
    let result = session.run(&mut reader, &mut incoming, &shutdown).await;
    discovery.registry.disconnect(id);
    discovery.metrics.proxies.dec();
    result
}

struct Session<'a> {
    discovery: &'a Arc<Discovery>,
    id: u64,
    peer: Peer,
    pod: Key,
    out: &'a mpsc::Sender<Bytes>,
    destinations: BTreeMap<String, Destination>,
    /// The inbound policy and tracing settings last sent, when subscribed.
    inbound: Option<Option<(u64, InboundContent)>>,
    /// The destinations sent, by configuration name: a report counts only for a destination
    /// this proxy was given, and only for that destination's backends.
    services: HashMap<String, (Key, Arc<Snapshot>)>,
}

/// What an inbound update carries.
#[derive(Debug, Clone, PartialEq)]
struct InboundContent {
    policy: Option<PolicyConfig>,
    tracing: Option<TracingConfig>,
}

/// A hello whose fields could not name a pod (or would bloat the status) is refused.
fn check_hello(hello: &api::Hello) -> Result<(), String> {
    for (field, value, max) in [
        ("podNamespace", &hello.pod_namespace, MAX_NAME_BYTES),
        ("podName", &hello.pod_name, MAX_NAME_BYTES),
        ("proxyVersion", &hello.proxy_version, MAX_VERSION_BYTES),
    ] {
        if value.len() > max || value.chars().any(char::is_control) {
            return Err(format!("hello: {field} must be at most {max} bytes of printable text"));
        }
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
}

fn line(message: &ControlMessage) -> Bytes {
    Bytes::from(api::encode(message))
}

impl Session<'_> {
    async fn run<S, E>(
        &mut self,
        reader: &mut LineReader,
        incoming: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<(), StreamError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut revisions = self.discovery.revisions();
        loop {
            while let Some(message) = reader.next::<ProxyMessage>() {
                if !self.handle(message?).await {
                    return Ok(());
                }
            }
            tokio::select! {
                chunk = incoming.next() => match chunk {
                    Some(Ok(bytes)) => reader.push(&bytes)?,
                    Some(Err(err)) => return Err(StreamError::Body(err.to_string())),
                    None => return Ok(()),
                },
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !self.refresh().await {
                        return Ok(());
                    }
                }
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// False when the proxy went away (its response body was dropped).
    async fn send(&self, message: ControlMessage) -> bool {
        match &message {
            ControlMessage::Refused(_) => self.discovery.metrics.refusals.inc(),
            _ => self.discovery.metrics.updates_sent.inc(),
        };
        self.out.send(line(&message)).await.is_ok()
    }

    async fn handle(&mut self, message: ProxyMessage) -> bool {
        match message {
            ProxyMessage::Hello(_) => true,
            ProxyMessage::Subscribe(Resource::Destination(name))
                if self.destinations.len() >= MAX_SUBSCRIPTIONS && !self.destinations.contains_key(&name) =>
            {
                self.discovery.metrics.limited("subscriptions");
                let reason = format!("more than {MAX_SUBSCRIPTIONS} destinations on one stream");
                let resource = Some(Resource::Destination(name));
                self.send(ControlMessage::Refused(Refusal { resource, reason })).await
            }
            ProxyMessage::Subscribe(Resource::Destination(name)) => {
                self.destinations
                    .insert(name.clone(), Destination { sent: None, sent_address: None, refused: false });
                self.send_destination(&name).await
            }
            ProxyMessage::Subscribe(Resource::Inbound) => {
                self.inbound = Some(None);
                self.send_inbound().await
            }
            ProxyMessage::Unsubscribe(Resource::Destination(name)) => {
                self.destinations.remove(&name);
                self.discovery.registry.unsubscribe(self.id, &name);
                true
            }
            ProxyMessage::Unsubscribe(Resource::Inbound) => {
                self.inbound = None;
                true
            }
            ProxyMessage::Ack(ack) => {
                self.discovery.metrics.acks.inc();
                if let Resource::Destination(name) = &ack.resource {
                    self.discovery.registry.ack(self.id, name, ack.version);
                }
                true
            }
            ProxyMessage::Report(report) => {
                self.report(&report);
                true
            }
            ProxyMessage::Nack(mut nack) => {
                self.discovery.metrics.nacks.inc();
                truncate(&mut nack.reason, MAX_REASON_BYTES);
                tracing::warn!(pod = %format!("{}/{}", self.pod.0, self.pod.1), resource = ?nack.resource,
                    version = nack.version, reason = %nack.reason, "a proxy refused a configuration");
                if let Resource::Destination(name) = &nack.resource {
                    self.discovery.registry.nack(self.id, name, nack.version, &nack.reason);
                }
                true
            }
        }
    }

    /// Adds a report to the measurements, for backends of destinations this proxy was sent.
    fn report(&self, report: &api::Report) {
        let Some(((namespace, target), snapshot)) = self.services.get(&report.service) else {
            self.discovery.metrics.limited("report_unknown_service");
            return;
        };
        let Some(config) = &snapshot.service else { return };
        for backend in report.backends.iter().take(MAX_REPORT_BACKENDS) {
            if config.backends.iter().any(|b| b.name == backend.backend) {
                self.discovery.measurements.add(namespace, target, backend);
            }
        }
    }

    async fn refresh(&mut self) -> bool {
        let names: Vec<String> = self.destinations.keys().cloned().collect();
        for name in names {
            if !self.send_destination(&name).await {
                return false;
            }
        }
        if self.inbound.is_some() { self.send_inbound().await } else { true }
    }

    /// Sends the destination's answer if it changed since the last one sent.
    async fn send_destination(&mut self, name: &str) -> bool {
        let resolved = self.discovery.read(|index| {
            let target = index.resolve(name)?;
            match &target {
                Target::Service { key, .. } => index.visible(key, &self.peer.namespace)?,
                Target::Address(addr) => index.visible_address(addr.ip(), &self.peer.namespace)?,
                Target::Unknown => {}
            }
            Ok::<_, String>(target)
        });
        let Some(state) = self.destinations.get_mut(name) else { return true };
        let target = match resolved {
            Ok(target) => target,
            Err(reason) => {
                if state.refused {
                    return true;
                }
                state.refused = true;
                state.sent = None;
                state.sent_address = None;
                self.discovery.registry.unsubscribe(self.id, name);
                let resource = Some(Resource::Destination(name.to_owned()));
                return self.send(ControlMessage::Refused(Refusal { resource, reason })).await;
            }
        };
        state.refused = false;
        let (version, snapshot) = match &target {
            Target::Service { key, port } => {
                state.sent_address = None;
                self.discovery.snapshot(key, *port, &self.peer.namespace)
            }
            Target::Address(addr) => {
                let client = &self.peer.namespace;
                let (revision, fresh) =
                    self.discovery.read(|index| (index.revision(), index.address_for(*addr, client)));
                if let (Some(sent), Some(last)) = (state.sent, &state.sent_address)
                    && **last == fresh
                {
                    (sent, last.clone())
                } else {
                    let fresh = Arc::new(fresh);
                    state.sent_address = Some(fresh.clone());
                    (revision, fresh)
                }
            }
            Target::Unknown => {
                state.sent_address = None;
                (0, Arc::new(Snapshot::UNKNOWN))
            }
        };
        if state.sent == Some(version) {
            return true;
        }
        state.sent = Some(version);
        let service = match &snapshot.service {
            Some(config) if !self.peer.features.endpoint_pod => Some(without_endpoint_pods(config)),
            service => service.clone(),
        };
        if let (Some(config), Target::Service { key, .. }) = (&service, &target) {
            self.services.insert(config.name.clone(), (key.clone(), snapshot.clone()));
        }
        self.discovery.registry.sent(self.id, name, target, version, snapshot);
        self.send(ControlMessage::Destination(DestinationUpdate {
            destination: name.to_owned(),
            version,
            service,
        }))
        .await
    }

    async fn send_inbound(&mut self) -> bool {
        let ProxyFeatures { tracing, policy_source, .. } = self.peer.features;
        let (revision, content) = self.discovery.read(|index| {
            let mut policy = index.inbound(&self.pod);
            if !policy_source && let Some(policy) = &mut policy {
                policy.source = None;
            }
            let content = InboundContent { policy, tracing: index.tracing().filter(|_| tracing).cloned() };
            (index.revision(), content)
        });
        if let Some(Some((_, sent))) = &self.inbound
            && *sent == content
        {
            return true;
        }
        self.inbound = Some(Some((revision, content.clone())));
        let InboundContent { policy, tracing } = content;
        self.send(ControlMessage::Inbound(InboundUpdate { version: revision, policy, tracing })).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::index::{EndpointInfo, PodInfo, PortInfo, ServiceInfo, SliceInfo};
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_owned(), name.to_owned())
    }

    fn index_pod(service_account: &str, ip: &str, created: &str) -> PodInfo {
        PodInfo {
            service_account: service_account.into(),
            meshed: true,
            ips: vec![ip.parse().unwrap()],
            created: created.into(),
            ..Default::default()
        }
    }

    fn cluster() -> Arc<Discovery> {
        let mut index = Index::new("cluster.local", "cluster.local");
        let port = || PortInfo { name: String::new(), port: 80, http2: false, opaque: false };
        index.upsert_pod(
            key("web", "client"),
            PodInfo {
                service_account: "client".into(),
                labels: Default::default(),
                meshed: true,
                probes: Vec::new(),
                ..Default::default()
            },
        );
        index.upsert_pod(
            key("shop", "api-1"),
            PodInfo {
                service_account: "api".into(),
                labels: Default::default(),
                meshed: true,
                probes: Vec::new(),
                ..Default::default()
            },
        );
        index.upsert_service(
            key("shop", "api"),
            ServiceInfo {
                cluster_ips: vec!["10.96.0.20".parse().unwrap()],
                headless: false,
                ports: vec![port()],
                export_to: None,
            },
        );
        index.upsert_service(
            key("shop", "private"),
            ServiceInfo {
                cluster_ips: vec!["10.96.0.21".parse().unwrap()],
                headless: false,
                ports: vec![port()],
                export_to: Some(BTreeSet::from(["shop".to_owned()])),
            },
        );
        index.upsert_slice(
            key("shop", "api-x"),
            SliceInfo {
                service: "api".into(),
                ports: vec![PortInfo { name: String::new(), port: 8080, http2: false, opaque: false }],
                endpoints: vec![EndpointInfo {
                    addresses: vec!["10.1.0.5".parse().unwrap()],
                    ready: true,
                    pod: Some("api-1".into()),
                }],
            },
        );
        Discovery::new(index)
    }

    struct Proxy {
        to_server: mpsc::UnboundedSender<Result<Bytes, Infallible>>,
        from_server: mpsc::Receiver<Bytes>,
        task: tokio::task::JoinHandle<Result<(), StreamError>>,
    }

    fn start(discovery: &Arc<Discovery>, peer: (&str, &str)) -> Proxy {
        start_with(discovery, peer, ProxyFeatures::default())
    }

    fn start_with(discovery: &Arc<Discovery>, peer: (&str, &str), features: ProxyFeatures) -> Proxy {
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (out, from_server) = mpsc::channel(16);
        let peer = Peer { namespace: peer.0.into(), service_account: peer.1.into(), features };
        let incoming = Box::pin(futures::stream::unfold(incoming, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let task = tokio::spawn(serve(discovery.clone(), peer, incoming, out, CancellationToken::new()));
        Proxy { to_server, from_server, task }
    }

    impl Proxy {
        fn send(&self, message: &ProxyMessage) {
            self.to_server.send(Ok(Bytes::from(api::encode(message)))).expect("server running");
        }
        async fn next(&mut self) -> ControlMessage {
            let line = tokio::time::timeout(std::time::Duration::from_secs(5), self.from_server.recv())
                .await
                .expect("a message within 5 s")
                .expect("stream open");
            let mut reader = LineReader::default();
            reader.push(&line).expect("fits");
            reader.next().expect("one line").expect("valid message")
        }
    }

    fn hello(ns: &str, pod: &str) -> ProxyMessage {
        ProxyMessage::Hello(api::Hello {
            pod_namespace: ns.into(),
            pod_name: pod.into(),
            proxy_version: "test".into(),
        })
    }

    fn subscribe(destination: &str) -> ProxyMessage {
        ProxyMessage::Subscribe(Resource::Destination(destination.into()))
    }

    fn destination(message: ControlMessage) -> DestinationUpdate {
        match message {
            ControlMessage::Destination(update) => update,
            other => panic!("expected a destination, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_subscribed_destination_gets_a_snapshot_then_each_change() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        proxy.send(&subscribe("10.96.0.20:80"));
        let first = destination(proxy.next().await);
        let service = first.service.expect("a mesh service");
        assert_eq!(service.backends[0].endpoints[0].address.to_string(), "10.1.0.5:8080");
        proxy.send(&ProxyMessage::Ack(api::Ack {
            resource: Resource::Destination("10.96.0.20:80".into()),
            version: first.version,
        }));

        discovery.update(|index| {
            index.upsert_slice(
                key("shop", "api-x"),
                SliceInfo {
                    service: "api".into(),
                    ports: vec![PortInfo { name: String::new(), port: 8080, http2: false, opaque: false }],
                    endpoints: vec![EndpointInfo {
                        addresses: vec!["10.1.0.6".parse().unwrap()],
                        ready: true,
                        pod: None,
                    }],
                },
            );
        });
        let second = destination(proxy.next().await);
        assert!(second.version > first.version);
        assert_eq!(
            second.service.expect("mesh").backends[0].endpoints[0].address.to_string(),
            "10.1.0.6:8080"
        );

        // A change elsewhere sends nothing new to this proxy.
        discovery.update(|index| index.remove_pod(&key("shop", "api-1")));
        proxy.send(&subscribe("10.1.2.3:80"));
        let unknown = destination(proxy.next().await);
        assert_eq!((unknown.destination.as_str(), unknown.service), ("10.1.2.3:80", None));
        assert_eq!(discovery.registry.summary().connected, 1);
        drop(proxy.to_server);
        proxy.task.await.expect("task").expect("ends cleanly when the proxy hangs up");
        assert_eq!(discovery.registry.summary().connected, 0);
    }

    /// The identity the proxy is told to expect at the pod-IP destination of `update`.
    fn identity(update: &DestinationUpdate) -> Option<&str> {
        update.service.as_ref()?.backends.first()?.endpoints.first()?.identity.as_deref()
    }

    #[tokio::test]
    async fn a_pod_ip_follows_whoever_holds_it_and_an_unchanged_answer_is_not_resent() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        discovery.update(|index| {
            let mut pod = index_pod("api", "10.1.0.5", "2026-01-01T00:00:00Z");
            pod.labels.insert("app".into(), "api".into());
            index.upsert_pod(key("shop", "api-1"), pod);
        });
        proxy.send(&subscribe("10.1.0.5:8080"));
        let first = destination(proxy.next().await);
        assert_eq!(identity(&first), Some("spiffe://cluster.local/ns/shop/sa/api"));

        // A change that leaves the answer as it was sends nothing; the next message is the
        // answer to the reuse below.
        discovery.update(|index| index.remove_pod(&key("web", "client-gone")));
        discovery.update(|index| {
            index.upsert_pod(key("shop", "other"), index_pod("api", "10.1.0.99", "2026-01-01T00:00:00Z"))
        });
        // The IP is reused by a pod of another identity before the old pod's deletion arrives.
        discovery.update(|index| {
            index.upsert_pod(key("jobs", "batch-1"), index_pod("batch", "10.1.0.5", "2026-01-01T00:09:00Z"))
        });
        let reused = destination(proxy.next().await);
        assert!(reused.version > first.version);
        assert_eq!(identity(&reused), Some("spiffe://cluster.local/ns/jobs/sa/batch"));
        discovery.update(|index| {
            index.remove_pod(&key("shop", "api-1"));
            index.remove_pod(&key("jobs", "batch-1"));
        });
        let gone = destination(proxy.next().await);
        assert_eq!((gone.destination.as_str(), gone.service), ("10.1.0.5:8080", None), "forwarded unchanged");
    }

    #[tokio::test]
    async fn a_service_not_exported_to_the_proxys_namespace_is_refused() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        proxy.send(&subscribe("private.shop.svc.cluster.local:80"));
        match proxy.next().await {
            ControlMessage::Refused(refusal) => {
                assert_eq!(
                    refusal.resource,
                    Some(Resource::Destination("private.shop.svc.cluster.local:80".into()))
                );
                assert!(refusal.reason.contains("exported only to namespace(s) shop"), "{}", refusal.reason);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn inbound(message: ControlMessage) -> InboundUpdate {
        match message {
            ControlMessage::Inbound(update) => update,
            other => panic!("expected an inbound update, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tracing_goes_only_to_proxies_that_name_it_and_follows_the_mesh() {
        let discovery = cluster();
        let tracing =
            TracingConfig { collector: "http://jaeger.tracing:4318".into(), sampling_percent: 10.0 };
        discovery.update(|index| index.set_tracing(Some(tracing.clone())));
        let features = ProxyFeatures::parse(Some(b"future-thing, tracing"));
        assert!(features.tracing);
        let mut newer = start_with(&discovery, ("shop", "api"), features);
        let mut older = start(&discovery, ("shop", "api"));
        for proxy in [&newer, &older] {
            proxy.send(&hello("shop", "api-1"));
            proxy.send(&ProxyMessage::Subscribe(Resource::Inbound));
        }
        assert_eq!(inbound(newer.next().await).tracing, Some(tracing));
        assert_eq!(inbound(older.next().await).tracing, None, "an older proxy would refuse the field");

        discovery.update(|index| index.set_tracing(None));
        assert_eq!(inbound(newer.next().await).tracing, None, "tracing turned off reaches the proxy");
    }

    #[tokio::test]
    async fn the_policys_source_goes_only_to_proxies_that_name_it() {
        let discovery = cluster();
        let newer = start_with(&discovery, ("shop", "api"), ProxyFeatures::parse(Some(b"policy-source")));
        let older = start(&discovery, ("shop", "api"));
        let mut sources = Vec::new();
        for mut proxy in [newer, older] {
            proxy.send(&hello("shop", "api-1"));
            proxy.send(&ProxyMessage::Subscribe(Resource::Inbound));
            let policy = inbound(proxy.next().await).policy.expect("api-1 has a policy");
            sources.push(policy.source);
        }
        assert!(sources[0].is_some(), "the proxy that names the feature gets the source");
        assert_eq!(sources[1], None, "an older proxy would refuse the field");
    }

    #[test]
    fn proxy_features_skip_what_they_do_not_know() {
        assert!(!ProxyFeatures::parse(None).tracing);
        assert!(!ProxyFeatures::parse(Some(b"tracingx")).tracing);
        assert!(!ProxyFeatures::parse(Some(b"\xff\xfe")).tracing);
        assert!(ProxyFeatures::parse(Some(b"tracing")).tracing);
        let both = ProxyFeatures::parse(Some(b"endpoint-pod,tracing"));
        assert!(both.tracing && both.endpoint_pod);
        assert!(!ProxyFeatures::parse(Some(b"tracing")).endpoint_pod);
        assert!(ProxyFeatures::parse(Some(b"tracing, policy-source")).policy_source);
    }

    #[tokio::test]
    async fn endpoint_pods_go_only_to_proxies_that_name_them() {
        let discovery = cluster();
        let newer = start_with(&discovery, ("web", "client"), ProxyFeatures::parse(Some(b"endpoint-pod")));
        let older = start(&discovery, ("web", "client"));
        let mut pods = Vec::new();
        for mut proxy in [newer, older] {
            proxy.send(&hello("web", "client"));
            proxy.send(&subscribe("10.96.0.20:80"));
            let config = destination(proxy.next().await).service.expect("api is known");
            let endpoint = &config.backends[0].endpoints[0];
            pods.push(endpoint.pod.as_ref().map(|pod| (pod.namespace.clone(), pod.name.clone())));
        }
        assert_eq!(
            pods,
            [Some(("shop".to_owned(), "api-1".to_owned())), None],
            "an older proxy would refuse the field"
        );
    }

    #[tokio::test]
    async fn a_proxy_cannot_speak_for_another_identitys_pod() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("shop", "api-1"));
        match proxy.next().await {
            ControlMessage::Refused(refusal) => {
                assert_eq!(refusal.resource, None);
                assert!(refusal.reason.contains("client certificate names web/client"), "{}", refusal.reason);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(proxy.task.await.expect("task"), Err(StreamError::Refused(_))));
        assert_eq!(discovery.registry.summary().connected, 0, "never counted");
    }

    #[tokio::test]
    async fn garbage_and_a_missing_hello_end_the_stream_with_the_reason() {
        let discovery = cluster();
        let proxy = start(&discovery, ("web", "client"));
        proxy.send(&subscribe("10.96.0.20:80"));
        assert!(matches!(proxy.task.await.expect("task"), Err(StreamError::NoHello)));

        let proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        proxy.to_server.send(Ok(Bytes::from_static(b"{\"subscribe\": 42}\n"))).expect("running");
        let error = proxy.task.await.expect("task").unwrap_err();
        assert!(error.to_string().contains("not valid"), "{error}");
    }

    fn limited(discovery: &Discovery, limit: &'static str) -> u64 {
        discovery.metrics.limited.get_or_create(&crate::metrics::LimitLabels { limit }).get()
    }

    #[tokio::test]
    async fn a_client_that_says_nothing_useful_is_dropped_early_and_counted() {
        let discovery = cluster();
        // Bytes without a newline before the hello: cut at MAX_HELLO_BYTES, not 4 MiB.
        let proxy = start(&discovery, ("web", "client"));
        proxy.to_server.send(Ok(Bytes::from(vec![b'{'; MAX_HELLO_BYTES + 1]))).expect("running");
        let error = proxy.task.await.expect("task").unwrap_err();
        assert!(error.to_string().contains(&format!("longer than {MAX_HELLO_BYTES} bytes")), "{error}");
        assert_eq!(limited(&discovery, "hello_size"), 1);

        // A hello whose version would bloat the Mesh status is refused with the reason.
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&ProxyMessage::Hello(api::Hello {
            pod_namespace: "web".into(),
            pod_name: "client".into(),
            proxy_version: "v".repeat(65),
        }));
        let ControlMessage::Refused(refusal) = proxy.next().await else { panic!("a refusal") };
        assert!(refusal.reason.contains("proxyVersion must be at most 64 bytes"), "{}", refusal.reason);
        assert_eq!(limited(&discovery, "hello_fields"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_hello_in_time_ends_the_stream() {
        let discovery = cluster();
        let proxy = start(&discovery, ("web", "client"));
        let error = proxy.task.await.expect("task").unwrap_err();
        assert!(matches!(error, StreamError::HelloTimeout), "{error}");
        assert_eq!(limited(&discovery, "hello_timeout"), 1);
    }

    #[tokio::test]
    async fn subscriptions_beyond_the_bound_are_refused_one_by_one_and_the_stream_lives() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        let mut batch = Vec::new();
        for i in 0..MAX_SUBSCRIPTIONS {
            batch.extend(api::encode(&subscribe(&format!("10.200.{}.{}:80", i / 250, i % 250))));
        }
        proxy.to_server.send(Ok(Bytes::from(batch))).expect("running");
        for _ in 0..MAX_SUBSCRIPTIONS {
            proxy.next().await;
        }
        proxy.send(&subscribe("10.96.0.20:80"));
        let ControlMessage::Refused(refusal) = proxy.next().await else { panic!("a refusal") };
        assert_eq!(refusal.resource, Some(Resource::Destination("10.96.0.20:80".into())));
        assert!(refusal.reason.contains("more than 10000 destinations"), "{}", refusal.reason);
        assert_eq!(limited(&discovery, "subscriptions"), 1);
        proxy.send(&ProxyMessage::Unsubscribe(Resource::Destination("10.200.0.0:80".into())));
        proxy.send(&subscribe("10.96.0.20:80"));
        assert!(destination(proxy.next().await).service.is_some(), "room again after an unsubscribe");
    }

    #[tokio::test]
    async fn reports_count_only_for_destinations_and_backends_the_proxy_was_sent() {
        let discovery = cluster();
        let mut proxy = start(&discovery, ("web", "client"));
        proxy.send(&hello("web", "client"));
        let report = |service: &str, backend: &str| {
            ProxyMessage::Report(api::Report {
                service: service.into(),
                backends: vec![api::BackendReport {
                    backend: backend.into(),
                    requests: 10,
                    failures: 2,
                    latency_ms: vec![0, 10],
                }],
            })
        };
        // Before the destination was sent: not counted.
        proxy.send(&report("api.shop.svc.cluster.local:80", "api"));
        proxy.send(&subscribe("10.96.0.20:80"));
        let sent = destination(proxy.next().await).service.expect("a mesh service");
        assert_eq!(sent.name, "api.shop.svc.cluster.local:80");
        proxy.send(&report("api.shop.svc.cluster.local:80", "api"));
        proxy.send(&report("api.shop.svc.cluster.local:80", "made-up"));
        proxy.send(&report("private.shop.svc.cluster.local:80", "private"));
        // A round trip, so the reports before it were handled.
        proxy.send(&subscribe("10.1.2.3:80"));
        proxy.next().await;
        let totals = discovery.measurements.totals("shop", "api", "api");
        assert_eq!((totals.requests, totals.failures, totals.latency[1]), (10, 2, 10));
        assert_eq!(discovery.measurements.totals("shop", "api", "made-up").requests, 0);
        assert_eq!(discovery.measurements.totals("shop", "private", "private").requests, 0);
        assert_eq!(limited(&discovery, "report_unknown_service"), 2);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let mut reason = "é".repeat(MAX_REASON_BYTES);
        truncate(&mut reason, MAX_REASON_BYTES);
        assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8() && reason.ends_with('…'));
        let mut short = "fine".to_owned();
        truncate(&mut short, MAX_REASON_BYTES);
        assert_eq!(short, "fine");
    }
}
