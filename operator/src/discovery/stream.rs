//! One proxy's discovery stream: the protocol of docs/discovery.md over two channels of lines,
//! so it is tested without TLS and the server (server.rs) only moves bytes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use braid_api::config::{PolicyConfig, ServiceConfig, TracingConfig};
use braid_api::discovery::{
    self as api, ControlMessage, DestinationUpdate, InboundUpdate, LineReader, ProxyMessage, Refusal,
    Resource,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::index::{Index, Key, Snapshot, Target, TopicId};
use super::registry::Registry;
use super::wakers::{Wakers, Watching};
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
/// destination's answer is computed once per change, whatever the number of proxies asking, and
/// a change wakes only the streams subscribed to what it touched.
pub struct Discovery {
    index: RwLock<Index>,
    /// Every change, for the status writers; the streams wait on `wakers` instead.
    revision: watch::Sender<u64>,
    wakers: Wakers,
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

    pub fn with_metrics(mut index: Index, metrics: Arc<DiscoveryMetrics>) -> Arc<Self> {
        let revision = watch::channel(index.revision()).0;
        metrics.pods.set(i64::try_from(index.pod_count()).unwrap_or(i64::MAX));
        // No stream has seen anything yet: what was built before is no change to any.
        index.record_changes();
        Arc::new(Self {
            index: RwLock::new(index),
            revision,
            wakers: Wakers::default(),
            synced: watch::channel(false).0,
            memo: Mutex::default(),
            registry: Registry::default(),
            metrics,
            measurements: Default::default(),
        })
    }

    /// Applies a batch of changes; the streams subscribed to what it touched wake once for the
    /// whole batch.
    pub fn update(&self, change: impl FnOnce(&mut Index)) {
        let (revision, changes) = {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            change(&mut index);
            self.metrics.pods.set(i64::try_from(index.pod_count()).unwrap_or(i64::MAX));
            (index.revision(), index.take_changes())
        };
        // After the index moved on: a stream that registers a topic meanwhile either sees this
        // change in its answer or finds the revision moved (`Session::check_missed`).
        if !changes.is_empty() {
            let woken = self.wakers.wake(&changes);
            self.metrics.stream_wakes.inc_by(u64::try_from(woken).unwrap_or(u64::MAX));
        }
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

#[derive(Default)]
struct Destination {
    /// Version sent last, to send only what changed.
    sent: Option<u64>,
    /// The answer sent last for a pod-IP destination: computed per stream (one endpoint, no
    /// shared memo to grow with every IP asked), so compared rather than versioned.
    sent_address: Option<Arc<Snapshot>>,
    /// The refusal sent last: sent again only when its reason changes.
    refused: Option<String>,
    /// What the answer was computed from: a change to one of these wakes the stream.
    topics: Vec<TopicId>,
}

impl Destination {
    /// The topics of an answer for `name` from `target` (None: the name is malformed) and
    /// `snapshot` (None: refused), or None when they are those of the last answer, which is what
    /// nearly every wake finds: this allocates nothing then.
    fn new_topics(
        &mut self,
        name: &str,
        target: Option<&Target>,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> Option<Vec<TopicId>> {
        let service = match target {
            Some(Target::Service { key, .. }) => Some(TopicId::service(key)),
            _ => None,
        };
        // An `IP:PORT` name resolves by who holds the IP as a cluster IP: that may change.
        let named_ip = name.parse::<SocketAddr>().ok().map(|addr| TopicId::address(addr.ip()));
        let depends_on = snapshot.map_or(&[][..], |snapshot| &snapshot.depends_on[..]);
        let topics = || service.into_iter().chain(named_ip).chain(depends_on.iter().map(TopicId::service));
        if self.topics.iter().copied().eq(topics()) {
            return None;
        }
        Some(std::mem::replace(&mut self.topics, topics().collect()))
    }
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
        wake: discovery.wakers.join(destinations_waker(id)),
        watching: Watching::new(destinations_waker(id)),
        wake_inbound: discovery.wakers.join(inbound_waker(id)),
        watching_inbound: Watching::new(inbound_waker(id)),
    };
    let result = session.run(&mut reader, &mut incoming, &shutdown).await;
    discovery.wakers.leave(destinations_waker(id), session.watching.topics());
    discovery.wakers.leave(inbound_waker(id), session.watching_inbound.topics());
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
    /// Woken by changes to what this stream's destinations are computed from.
    wake: Arc<Notify>,
    watching: Watching,
    /// Woken by changes to its pod's inbound policy: apart, so that a change to a destination
    /// does not recompute the policy, nor a policy change every destination.
    wake_inbound: Arc<Notify>,
    watching_inbound: Watching,
}

/// A stream's two wakers (wakers.rs), by registry id.
fn destinations_waker(id: u64) -> u64 {
    id << 1
}

fn inbound_waker(id: u64) -> u64 {
    (id << 1) | 1
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
                () = self.wake.notified() => {
                    if !self.refresh().await {
                        return Ok(());
                    }
                }
                () = self.wake_inbound.notified() => {
                    if self.inbound.is_some() && !self.send_inbound().await {
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
                // Subscribing again to a name asks for its answer again.
                if let Some(old) = self.destinations.insert(name.clone(), Destination::default()) {
                    self.watching.replace(&self.discovery.wakers, &old.topics, &[]);
                }
                let start = self.discovery.read(Index::revision);
                let sent = self.send_destination(&name).await;
                self.check_missed(start);
                sent
            }
            ProxyMessage::Subscribe(Resource::Inbound) => {
                if self.inbound.is_none() {
                    self.watching_inbound.replace(&self.discovery.wakers, &[], &self.inbound_topics());
                }
                self.inbound = Some(None);
                self.send_inbound().await
            }
            ProxyMessage::Unsubscribe(Resource::Destination(name)) => {
                if let Some(old) = self.destinations.remove(&name) {
                    self.watching.replace(&self.discovery.wakers, &old.topics, &[]);
                }
                self.discovery.registry.unsubscribe(self.id, &name);
                true
            }
            ProxyMessage::Unsubscribe(Resource::Inbound) => {
                if self.inbound.take().is_some() {
                    self.watching_inbound.replace(&self.discovery.wakers, &self.inbound_topics(), &[]);
                }
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
        let start = self.discovery.read(Index::revision);
        let names: Vec<String> = self.destinations.keys().cloned().collect();
        for name in names {
            if !self.send_destination(&name).await {
                return false;
            }
        }
        self.check_missed(start);
        true
    }

    /// The topics of the pod's inbound policy.
    fn inbound_topics(&self) -> [TopicId; 2] {
        [TopicId::pod(&self.pod), TopicId::policies(&self.pod.0)]
    }

    /// Sends the destination's answer if it changed since the last one sent, and watches what
    /// the answer is computed from. The caller then checks for a change it may have missed
    /// (`check_missed`), once for all the answers it computed.
    async fn send_destination(&mut self, name: &str) -> bool {
        let resolved = self.discovery.read(|index| {
            index.resolve(name).map(|target| {
                let visible = match &target {
                    Target::Service { key, .. } => index.visible(key, &self.peer.namespace),
                    Target::Address(addr) => index.visible_address(addr.ip(), &self.peer.namespace),
                    Target::Unknown => Ok(()),
                };
                (visible, target)
            })
        });
        self.answer_destination(name, resolved).await
    }

    /// Watches the topics of `name`'s answer from `target` and `snapshot`, if they changed.
    fn follow(&mut self, name: &str, target: Option<&Target>, snapshot: Option<&Arc<Snapshot>>) {
        let Some(state) = self.destinations.get_mut(name) else { return };
        if let Some(old) = state.new_topics(name, target, snapshot) {
            self.watching.replace(&self.discovery.wakers, &old, &state.topics);
        }
    }

    /// A change between computing answers (from revision `computed_at` on) and watching their
    /// topics woke no one: the revision shows it, and the stream wakes itself to look again.
    fn check_missed(&self, computed_at: u64) {
        if self.discovery.read(Index::revision) != computed_at {
            self.wake.notify_one();
        }
    }

    /// Sends the answer for `name` if it changed, and watches what it was computed from.
    async fn answer_destination(
        &mut self,
        name: &str,
        resolved: Result<(Result<(), String>, Target), String>,
    ) -> bool {
        let target = match resolved {
            Ok((Ok(()), target)) => Ok(target),
            Ok((Err(reason), target)) => {
                self.follow(name, Some(&target), None);
                Err(reason)
            }
            // A malformed name stays malformed.
            Err(reason) => {
                self.follow(name, None, None);
                Err(reason)
            }
        };
        let Some(state) = self.destinations.get_mut(name) else { return true };
        let target = match target {
            Ok(target) => target,
            Err(reason) => {
                if state.refused.as_ref() == Some(&reason) {
                    return true;
                }
                state.refused = Some(reason.clone());
                state.sent = None;
                state.sent_address = None;
                self.discovery.registry.unsubscribe(self.id, name);
                let resource = Some(Resource::Destination(name.to_owned()));
                return self.send(ControlMessage::Refused(Refusal { resource, reason })).await;
            }
        };
        state.refused = None;
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
        let unchanged = state.sent == Some(version);
        state.sent = Some(version);
        self.follow(name, Some(&target), Some(&snapshot));
        if unchanged {
            return true;
        }
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
#[path = "stream_tests.rs"]
mod tests;
