//! What the proxy holds from discovery and how it becomes the routing table, apart from the
//! network (the client in `client.rs` only moves messages): the discovered destinations and
//! inbound policy, the subscriptions the data path asks for, and the waits of first connections.
//!
//! Every change builds a whole new `Config` (the file, plus the discovered services, plus the
//! discovered inbound policy), checks and compiles it like a file, and swaps the table; requests
//! in flight keep the table they started with. A change that fails is nacked and changes nothing.
//!
//! Here: [`Discovery`] and the messages it handles; `compose` (the file and the discovered
//! services and policy made into one checked `Config`), `settled` (the lock-free set of
//! destinations that no longer wait) and `status` (what /config shows).

mod compose;
mod settled;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use braid_api::config::{Config, DiscoveryConfig, PolicyConfig, ServiceConfig, TracingConfig};
use braid_api::discovery::{
    Ack, ControlMessage, DestinationUpdate, InboundUpdate, Nack, ProxyMessage, Resource,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::{DiscoveryUpdateLabels, Metrics, ReloadResult};
use crate::table::LiveTable;
use compose::{check_service, compose, rebuild, with_own_address};
pub use settled::InUse;
use settled::Settled;
pub use status::{DestinationStatus, SnapshotStatus, Status};

/// The discovery state of one proxy, shared by the client task, the connections that wait for a
/// destination, the file watcher and the admin server.
pub struct Discovery {
    pub config: DiscoveryConfig,
    state: Mutex<State>,
    /// Destinations that are not waiting for their first answer: a connection to one that the
    /// table does not know goes straight to its original destination. Read lock-free, so a table
    /// miss costs no lock and no allocation once the destination has been asked about.
    settled: Settled,
    /// Subscriptions (and nacks of shadowed services) made outside the client task; the client
    /// sends them on the open stream, and drops them when it reconnects (it resubscribes all).
    outbox: mpsc::UnboundedSender<ProxyMessage>,
    outbox_receiver: Mutex<Option<mpsc::UnboundedReceiver<ProxyMessage>>>,
}

struct State {
    /// The configuration file as running (with the identity and discovery settings of the start).
    file: Config,
    /// The inbound policy until the server sends one (`DiscoveryConfig::startup_policy`).
    startup_policy: Option<PolicyConfig>,
    destinations: BTreeMap<String, Destination>,
    inbound: Snapshot<Option<PolicyConfig>>,
    /// The Mesh's tracing settings, as the last applied inbound update carried them.
    tracing: Option<TracingConfig>,
    /// Gives each destination its order of first application: on a collision between two
    /// discovered services the older one stays.
    next_seq: u64,
    connected: bool,
    last_error: Option<String>,
}

struct Snapshot<T> {
    /// The version running now and its content.
    applied: Option<(u64, T)>,
    /// The newest version received: `None` when it was applied, or why not.
    last: Option<(u64, Option<String>)>,
    refused: Option<String>,
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Self { applied: None, last: None, refused: None }
    }
}

#[derive(Default)]
struct Destination {
    seq: u64,
    snapshot: Snapshot<Option<ServiceConfig>>,
    /// Why the applied service is not in the table now (a file service took its name).
    shadowed: Option<String>,
    /// Set until the first answer; the first connections wait on it.
    waiting: Option<Waiting>,
    timed_out: bool,
}

struct Waiting {
    answered: watch::Sender<bool>,
    deadline: Instant,
}

impl Discovery {
    /// `file` is the configuration the proxy started with (identity and discovery included).
    pub fn new(config: DiscoveryConfig, file: Config) -> Self {
        let (outbox, receiver) = mpsc::unbounded_channel();
        Self {
            state: Mutex::new(State {
                startup_policy: config.startup_policy.clone(),
                file,
                destinations: BTreeMap::new(),
                inbound: Snapshot::default(),
                tracing: None,
                next_seq: 0,
                connected: false,
                last_error: None,
            }),
            config,
            settled: Settled::default(),
            outbox,
            outbox_receiver: Mutex::new(Some(receiver)),
        }
    }

    /// The configuration to start with: the file, and the inbound policy that holds until the
    /// server sends the pod's (see `compose`).
    pub fn initial_config(&self) -> Config {
        compose(&self.lock(), None, None).0
    }

    /// Whether the server has sent this pod's inbound policy: until then the proxy is not ready.
    pub fn has_inbound_policy(&self) -> bool {
        self.lock().inbound.applied.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The receiving end of the outbox, for the one client task.
    pub fn take_outbox(&self) -> Option<mpsc::UnboundedReceiver<ProxyMessage>> {
        self.outbox_receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// What a new stream sends after its hello: the inbound policy and every destination held,
    /// so the server sends fresh snapshots. The outbox is emptied under the same lock: what it
    /// held is in this list, and what comes after is not.
    pub fn subscriptions(&self, outbox: &mut mpsc::UnboundedReceiver<ProxyMessage>) -> Vec<ProxyMessage> {
        let state = self.lock();
        while outbox.try_recv().is_ok() {}
        std::iter::once(Resource::Inbound)
            .chain(state.destinations.keys().map(|name| Resource::Destination(name.clone())))
            .map(ProxyMessage::Subscribe)
            .collect()
    }

    /// `error` is why the stream ended; it stays on /config until a newer one replaces it.
    pub fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut state = self.lock();
        state.connected = connected;
        if error.is_some() {
            state.last_error = error;
        }
    }

    /// Called by a connection whose original destination the table does not know: subscribes
    /// to it (once, whoever asks first) and waits for its first answer until the shared
    /// deadline. Returns at once for a destination already answered, refused or timed out.
    pub async fn resolve(&self, metrics: &Metrics, addr: SocketAddr) {
        if self.settled.contains(&addr) {
            return;
        }
        let (mut answered, deadline) = {
            let mut state = self.lock();
            let name = addr.to_string();
            match state.destinations.get(&name) {
                Some(destination) => match &destination.waiting {
                    Some(waiting) => (waiting.answered.subscribe(), waiting.deadline),
                    None => return,
                },
                None => {
                    let (answered, receiver) = watch::channel(false);
                    let deadline = Instant::now() + self.config.initial_timeout;
                    let destination =
                        Destination { waiting: Some(Waiting { answered, deadline }), ..Default::default() };
                    state.destinations.insert(name.clone(), destination);
                    debug!(destination = %name, "subscribing to a new destination");
                    // Sent on the open stream; with none open, the next stream subscribes it.
                    let _ = self.outbox.send(ProxyMessage::Subscribe(Resource::Destination(name)));
                    (receiver, deadline)
                }
            }
        };
        let in_time = tokio::time::timeout_at(deadline, answered.wait_for(|answered| *answered)).await;
        if in_time.is_err() {
            self.time_out(metrics, addr);
        }
    }

    fn time_out(&self, metrics: &Metrics, addr: SocketAddr) {
        let mut state = self.lock();
        let connected = state.connected;
        let Some(destination) = state.destinations.get_mut(&addr.to_string()) else { return };
        // Only the first waiter past the deadline finds it waiting: one log line per destination.
        if destination.waiting.take().is_none() {
            return;
        }
        destination.timed_out = true;
        metrics.discovery_lookup_timeouts.inc();
        warn!(
            destination = %addr,
            timeout = ?self.config.initial_timeout,
            connected,
            "no discovery answer in time: forwarding connections to it unchanged until one comes"
        );
        drop(state);
        self.settle(addr);
    }

    /// Marks a connection open to `addr`, a discovered destination (else `None`): the
    /// destination is not evicted while it is held. Lock-free for destinations settled a while.
    pub fn in_use(&self, addr: &SocketAddr) -> Option<InUse> {
        self.settled.in_use(addr)
    }

    /// Lets go of every answered destination that has had no connection open for
    /// `idle_timeout`: it leaves the table, the server is told (unsubscribe), and the next
    /// connection to it subscribes and waits again. Returns how many went.
    pub fn evict_idle(&self, table: &LiveTable, metrics: &Metrics) -> usize {
        let mut state = self.lock();
        let idle: Vec<(String, SocketAddr)> = state
            .destinations
            .iter()
            .filter(|(_, destination)| destination.waiting.is_none())
            .filter_map(|(name, _)| name.parse::<SocketAddr>().ok().map(|addr| (name.clone(), addr)))
            .filter(|(_, addr)| self.settled.is_idle(addr, self.config.idle_timeout))
            .collect();
        if idle.is_empty() {
            return 0;
        }
        let evicted: Vec<(String, Destination)> =
            idle.iter().filter_map(|(name, _)| state.destinations.remove_entry(name)).collect();
        if let Err(reason) = rebuild(table, compose(&state, None, None).0) {
            // Only removals, so this should not happen; if it does, nothing is let go.
            warn!(%reason, "the table without idle destinations was refused; keeping them");
            state.destinations.extend(evicted);
            return 0;
        }
        // Forgotten under the state lock, so a connection that misses the new table subscribes
        // again rather than finding the destination settled.
        self.settled.remove(&idle.iter().map(|(_, addr)| *addr).collect::<HashSet<_>>());
        drop(state);
        for (name, _) in &evicted {
            let _ = self.outbox.send(ProxyMessage::Unsubscribe(Resource::Destination(name.clone())));
        }
        metrics.discovery_evictions.inc_by(evicted.len() as u64);
        debug!(
            evicted = evicted.len(), idle_timeout = ?self.config.idle_timeout,
            "let go of discovered destinations with no connection open"
        );
        evicted.len()
    }

    /// Evicts idle destinations (`evict_idle`) at a quarter of the idle timeout until shutdown.
    pub async fn evict_idle_until(
        &self,
        table: &LiveTable,
        metrics: &Metrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let every = (self.config.idle_timeout / 4)
            .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    self.evict_idle(table, metrics);
                }
            }
        }
    }

    fn settle(&self, addr: SocketAddr) {
        self.settled.insert(addr);
    }

    fn answered(&self, name: &str, destination: &mut Destination) {
        if let Some(waiting) = destination.waiting.take() {
            waiting.answered.send_replace(true);
        }
        destination.timed_out = false;
        if let Ok(addr) = name.parse::<SocketAddr>() {
            self.settle(addr);
        }
    }

    /// One message from the server; the answers to send back. `Err` ends the stream (the server
    /// refused the whole stream).
    pub fn handle(
        &self,
        table: &LiveTable,
        metrics: &Metrics,
        message: ControlMessage,
    ) -> Result<Option<ProxyMessage>, String> {
        match message {
            ControlMessage::Destination(update) => Ok(self.apply_destination(table, metrics, update)),
            ControlMessage::Inbound(update) => Ok(Some(self.apply_inbound(table, metrics, update))),
            ControlMessage::Refused(refusal) => match refusal.resource {
                None => Err(refusal.reason),
                Some(Resource::Inbound) => {
                    warn!(reason = %refusal.reason, "the discovery server refused the inbound policy; keeping the current one");
                    self.lock().inbound.refused = Some(refusal.reason);
                    Ok(None)
                }
                Some(Resource::Destination(name)) => {
                    warn!(
                        destination = %name, reason = %refusal.reason,
                        "the discovery server refused a destination: its connections are forwarded unchanged"
                    );
                    let mut state = self.lock();
                    if let Some(mut destination) = state.destinations.remove(&name) {
                        destination.snapshot.refused = Some(refusal.reason);
                        self.answered(&name, &mut destination);
                        state.destinations.insert(name, destination);
                    }
                    Ok(None)
                }
            },
        }
    }

    fn apply_destination(
        &self,
        table: &LiveTable,
        metrics: &Metrics,
        update: DestinationUpdate,
    ) -> Option<ProxyMessage> {
        let mut state = self.lock();
        let name = update.destination;
        let Some(mut destination) = state.destinations.remove(&name) else {
            debug!(destination = %name, "an update for a destination not subscribed: ignored");
            return None;
        };
        let version = update.version;
        let service = update.service.map(|service| with_own_address(&name, service));
        let seq = if destination.snapshot.applied.is_some() { destination.seq } else { state.next_seq };
        let result = check_service(&state.file, service.as_ref()).and_then(|()| {
            let candidate = (name.as_str(), seq, service.as_ref());
            let (config, shadowed) = compose(&state, Some(candidate), None);
            if let Some(shadowed) = shadowed.iter().find(|s| s.destination == name) {
                return Err(shadowed.reason.clone());
            }
            rebuild(table, config)
        });
        let resource = Resource::Destination(name.clone());
        let answer = match result {
            Ok(()) => {
                count(metrics, ReloadResult::applied);
                info!(
                    destination = %name, version,
                    service = service.as_ref().map(|s| s.name.as_str()),
                    "discovered destination applied"
                );
                if destination.snapshot.applied.is_none() {
                    state.next_seq += 1;
                }
                destination.seq = seq;
                destination.snapshot.applied = Some((version, service));
                destination.snapshot.last = Some((version, None));
                destination.snapshot.refused = None;
                destination.shadowed = None;
                ProxyMessage::Ack(Ack { resource, version })
            }
            Err(reason) => {
                count(metrics, ReloadResult::rejected);
                warn!(destination = %name, version, %reason, "discovered destination refused; keeping the previous state");
                destination.snapshot.last = Some((version, Some(reason.clone())));
                ProxyMessage::Nack(Nack { resource, version, reason })
            }
        };
        // Any answer ends the first wait: a refused first snapshot means passthrough.
        self.answered(&name, &mut destination);
        state.destinations.insert(name, destination);
        Some(answer)
    }

    fn apply_inbound(&self, table: &LiveTable, metrics: &Metrics, update: InboundUpdate) -> ProxyMessage {
        let mut state = self.lock();
        let version = update.version;
        let check = Config {
            inbound: braid_api::config::InboundConfig { policy: update.policy.clone(), ..Default::default() },
            ..Config::empty()
        };
        let previous_tracing = std::mem::replace(&mut state.tracing, update.tracing);
        let result = check
            .validate()
            .map_err(|e| e.to_string())
            .and_then(|()| rebuild(table, compose(&state, None, Some(update.policy.as_ref())).0));
        match result {
            Ok(()) => {
                count(metrics, ReloadResult::applied);
                info!(
                    version,
                    policy = update.policy.is_some(),
                    tracing = state.tracing.is_some(),
                    "discovered inbound policy applied"
                );
                state.inbound = Snapshot {
                    applied: Some((version, update.policy)),
                    last: Some((version, None)),
                    refused: None,
                };
                ProxyMessage::Ack(Ack { resource: Resource::Inbound, version })
            }
            Err(reason) => {
                count(metrics, ReloadResult::rejected);
                warn!(version, %reason, "discovered inbound policy refused; keeping the previous one");
                state.tracing = previous_tracing;
                state.inbound.last = Some((version, Some(reason.clone())));
                ProxyMessage::Nack(Nack { resource: Resource::Inbound, version, reason })
            }
        }
    }

    /// A changed configuration file, composed with what discovery holds. The file wins every
    /// collision: a discovered service it shadows leaves the table (and is nacked), one it no
    /// longer shadows comes back (and is acked).
    pub fn set_file(&self, table: &LiveTable, mut file: Config) -> Result<(), String> {
        let mut state = self.lock();
        // Identity and discovery connect at start; the file's changes to them wait for a restart.
        if file.discovery != state.file.discovery {
            warn!("the discovery settings changed; they take effect when the proxy restarts");
        }
        file.discovery = state.file.discovery.clone();
        if file.identity.is_none() {
            file.identity = state.file.identity.clone();
        }
        let previous = std::mem::replace(&mut state.file, file);
        let (config, shadowed) = compose(&state, None, None);
        if let Err(error) = rebuild(table, config) {
            state.file = previous;
            return Err(error);
        }
        let shadowed: HashMap<String, String> =
            shadowed.into_iter().map(|s| (s.destination, s.reason)).collect();
        for (name, destination) in &mut state.destinations {
            let Some((version, _)) = &destination.snapshot.applied else { continue };
            let resource = Resource::Destination(name.clone());
            let now = shadowed.get(name).cloned();
            let message = match (&destination.shadowed, &now) {
                (None, Some(reason)) => {
                    warn!(destination = %name, %reason, "a file service now shadows a discovered one");
                    ProxyMessage::Nack(Nack { resource, version: *version, reason: reason.clone() })
                }
                (Some(_), None) => ProxyMessage::Ack(Ack { resource, version: *version }),
                _ => continue,
            };
            destination.snapshot.last = Some((*version, now.clone()));
            destination.shadowed = now;
            let _ = self.outbox.send(message);
        }
        Ok(())
    }
}

fn count(metrics: &Metrics, result: ReloadResult) {
    metrics.discovery_updates.get_or_create(&DiscoveryUpdateLabels { result }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Table;
    use braid_api::config::DefaultInboundPolicy;
    use braid_api::config::{BackendConfig, EndpointConfig, RouteConfig, WeightedBackend};
    use std::sync::Arc;

    fn service(name: &str, endpoint: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            hosts: Vec::new(),
            addresses: Vec::new(),
            listen: None,
            protocol: Default::default(),
            backends: vec![BackendConfig {
                name: "b".into(),
                endpoints: vec![EndpointConfig {
                    address: endpoint.parse().unwrap(),
                    meshed: false,
                    http2: false,
                    identity: None,
                    local: false,
                    pod: None,
                }],
            }],
            routes: vec![RouteConfig {
                backends: vec![WeightedBackend { name: "b".into(), weight: 1 }],
                ..Default::default()
            }],
            load_balancer: Default::default(),
            retry_budget: Default::default(),
            max_requests: None,
            max_requests_per_connection: None,
            max_connections: None,
            max_pending_requests: None,
            egress: None,
        }
    }

    /// What discovery is given by the proxy: its table and its metrics.
    struct Given {
        table: LiveTable,
        metrics: Metrics,
    }

    fn setup(file: &str) -> (Discovery, Given) {
        setup_with(file, None)
    }

    fn setup_with(file: &str, startup_policy: Option<PolicyConfig>) -> (Discovery, Given) {
        let file = Config::parse(file).unwrap();
        let discovery = DiscoveryConfig {
            endpoint: "discovery.test:8086".into(),
            server_name: None,
            pod_namespace: "shop".into(),
            pod_name: "web-0".into(),
            initial_timeout: std::time::Duration::from_millis(200),
            idle_timeout: std::time::Duration::from_secs(60),
            pod_ips: vec!["10.0.0.9".parse().unwrap()],
            startup_policy,
        };
        let shared = Given {
            table: LiveTable::new(Table::build(file.clone(), None, None).unwrap(), None, None),
            metrics: Metrics::new(),
        };
        (Discovery::new(discovery, file), shared)
    }

    fn update(destination: &str, version: u64, service: Option<ServiceConfig>) -> ControlMessage {
        ControlMessage::Destination(DestinationUpdate { destination: destination.into(), version, service })
    }

    const FILE: &str = "services:\n  - name: file.svc\n    addresses: [\"10.96.0.1:80\"]\n    backends: [{ name: b, endpoints: [{ address: \"10.0.0.1:80\" }] }]\n    routes: [{ backends: [{ name: b }] }]\n";

    #[tokio::test(start_paused = true)]
    async fn a_first_connection_waits_for_the_snapshot_and_others_share_the_wait() {
        let (discovery, shared) = setup(FILE);
        let discovery = Arc::new(discovery);
        let shared = Arc::new(shared);
        let mut outbox = discovery.take_outbox().unwrap();
        let addr: SocketAddr = "10.96.0.2:80".parse().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (discovery, shared) = (discovery.clone(), shared.clone());
                tokio::spawn(async move { discovery.resolve(&shared.metrics, addr).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(
            outbox.try_recv().unwrap(),
            ProxyMessage::Subscribe(Resource::Destination("10.96.0.2:80".into()))
        );
        assert!(outbox.try_recv().is_err(), "one subscription for three connections");
        let answer = discovery.handle(
            &shared.table,
            &shared.metrics,
            update("10.96.0.2:80", 4, Some(service("web.svc", "10.0.0.2:80"))),
        );
        assert_eq!(
            answer.unwrap(),
            Some(ProxyMessage::Ack(Ack {
                resource: Resource::Destination("10.96.0.2:80".into()),
                version: 4
            }))
        );
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let table = shared.table.load();
        assert_eq!(table.service_by_address(addr).unwrap().name.as_str(), "web.svc");
        assert!(table.service_by_name("file.svc").is_some());
        // A later connection does not wait, and a reconnect resubscribes everything held.
        discovery.resolve(&shared.metrics, addr).await;
        let subscriptions = discovery.subscriptions(&mut outbox);
        assert_eq!(
            subscriptions,
            vec![
                ProxyMessage::Subscribe(Resource::Inbound),
                ProxyMessage::Subscribe(Resource::Destination("10.96.0.2:80".into()))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn destinations_idle_for_the_timeout_are_let_go_and_asked_for_again_on_next_use() {
        let (discovery, shared) = setup(FILE);
        let mut outbox = discovery.take_outbox().unwrap();
        let (used, idle): (SocketAddr, SocketAddr) =
            ("10.96.0.7:80".parse().unwrap(), "10.96.0.8:80".parse().unwrap());
        for (addr, name) in [(used, "used.svc"), (idle, "idle.svc")] {
            let answer = async {
                tokio::task::yield_now().await;
                discovery
                    .handle(
                        &shared.table,
                        &shared.metrics,
                        update(&addr.to_string(), 1, Some(service(name, "10.0.0.7:80"))),
                    )
                    .unwrap()
            };
            let ((), _) = tokio::join!(discovery.resolve(&shared.metrics, addr), answer);
        }
        while outbox.try_recv().is_ok() {}
        let connection = discovery.in_use(&used).expect("a discovered destination");
        assert!(
            discovery.in_use(&"10.96.0.1:80".parse().unwrap()).is_none(),
            "the file's service is not discovery's"
        );

        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert_eq!(discovery.evict_idle(&shared.table, &shared.metrics), 0, "not idle long enough");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(discovery.evict_idle(&shared.table, &shared.metrics), 1);
        assert_eq!(
            outbox.try_recv().unwrap(),
            ProxyMessage::Unsubscribe(Resource::Destination("10.96.0.8:80".into()))
        );
        let table = shared.table.load();
        assert!(table.service_by_address(idle).is_none(), "gone from the table");
        assert!(table.service_by_address(used).is_some(), "an open connection holds its destination");
        assert!(table.service_by_name("file.svc").is_some(), "the file's services stay");
        assert_eq!(shared.metrics.discovery_evictions.get(), 1);
        assert_eq!(
            discovery.subscriptions(&mut outbox),
            vec![
                ProxyMessage::Subscribe(Resource::Inbound),
                ProxyMessage::Subscribe(Resource::Destination("10.96.0.7:80".into()))
            ],
            "a reconnect resubscribes only what is held"
        );

        // The next connection to the evicted one subscribes and waits again.
        let resolving = discovery.resolve(&shared.metrics, idle);
        let answer = async {
            tokio::task::yield_now().await;
            assert_eq!(
                outbox.try_recv().unwrap(),
                ProxyMessage::Subscribe(Resource::Destination("10.96.0.8:80".into()))
            );
            discovery
                .handle(
                    &shared.table,
                    &shared.metrics,
                    update("10.96.0.8:80", 2, Some(service("idle.svc", "10.0.0.8:80"))),
                )
                .unwrap()
        };
        let ((), answer) = tokio::join!(resolving, answer);
        assert!(matches!(answer, Some(ProxyMessage::Ack(_))));
        assert!(shared.table.load().service_by_address(idle).is_some());

        drop(connection);
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_eq!(discovery.evict_idle(&shared.table, &shared.metrics), 2, "both idle now");
        assert!(discovery.status().destinations.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_in_time_means_passthrough_without_waiting_again() {
        let (discovery, shared) = setup("{}");
        let addr: SocketAddr = "10.96.0.3:80".parse().unwrap();
        let start = Instant::now();
        discovery.resolve(&shared.metrics, addr).await;
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(200));
        discovery.resolve(&shared.metrics, addr).await;
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(200), "no second wait");
        assert_eq!(shared.metrics.discovery_lookup_timeouts.get(), 1);
        assert_eq!(discovery.status().destinations[0].state, "timed-out");
        // The answer still counts when it comes.
        discovery
            .handle(
                &shared.table,
                &shared.metrics,
                update("10.96.0.3:80", 1, Some(service("late.svc", "10.0.0.3:80"))),
            )
            .unwrap();
        assert!(shared.table.load().service_by_address(addr).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn bad_and_colliding_updates_are_nacked_and_change_nothing() {
        let (discovery, shared) = setup(FILE);
        let addr: SocketAddr = "10.96.0.4:80".parse().unwrap();
        let resolving = discovery.resolve(&shared.metrics, addr);
        let good = service("web.svc", "10.0.0.4:80");
        let answer = async {
            discovery
                .handle(&shared.table, &shared.metrics, update("10.96.0.4:80", 1, Some(good.clone())))
                .unwrap()
        };
        let ((), answer) = tokio::join!(resolving, answer);
        assert!(matches!(answer, Some(ProxyMessage::Ack(_))));

        let mut bad = good.clone();
        bad.routes[0].backends[0].name = "missing".into();
        let Some(ProxyMessage::Nack(nack)) =
            discovery.handle(&shared.table, &shared.metrics, update("10.96.0.4:80", 2, Some(bad))).unwrap()
        else {
            panic!("not a nack")
        };
        assert_eq!(nack.version, 2);
        assert!(
            nack.reason.contains("service web.svc.routes[0].backends[0].name: no backend named"),
            "{}",
            nack.reason
        );

        let colliding = service("file.svc", "10.0.0.5:80");
        let Some(ProxyMessage::Nack(nack)) = discovery
            .handle(&shared.table, &shared.metrics, update("10.96.0.4:80", 3, Some(colliding)))
            .unwrap()
        else {
            panic!("not a nack")
        };
        assert!(
            nack.reason.contains("the configuration file's service file.svc, which wins"),
            "{}",
            nack.reason
        );
        let table = shared.table.load();
        let endpoint = table.service_by_address(addr).unwrap().backends[0].endpoints[0].addr;
        assert_eq!(endpoint, "10.0.0.4:80".parse::<SocketAddr>().unwrap(), "version 1 still serves");
        let status = discovery.status();
        assert_eq!(status.destinations[0].snapshot.version, Some(1));
        assert!(!status.destinations[0].snapshot.acked);
        assert_eq!(
            shared
                .metrics
                .discovery_updates
                .get_or_create(&DiscoveryUpdateLabels { result: ReloadResult::rejected })
                .get(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_change_that_takes_a_discovered_name_shadows_it_and_nacks() {
        let (discovery, shared) = setup("{}");
        let mut outbox = discovery.take_outbox().unwrap();
        let addr: SocketAddr = "10.96.0.6:80".parse().unwrap();
        let answer = async {
            tokio::task::yield_now().await;
            discovery
                .handle(
                    &shared.table,
                    &shared.metrics,
                    update("10.96.0.6:80", 7, Some(service("web.svc", "10.0.0.6:80"))),
                )
                .unwrap()
        };
        let ((), _) = tokio::join!(discovery.resolve(&shared.metrics, addr), answer);
        while outbox.try_recv().is_ok() {}
        let file = Config::parse(&FILE.replace("file.svc", "web.svc")).unwrap();
        discovery.set_file(&shared.table, file).unwrap();
        let table = shared.table.load();
        assert!(table.service_by_address(addr).is_none(), "the file's service wins");
        assert!(table.service_by_address("10.96.0.1:80".parse().unwrap()).is_some());
        assert!(matches!(outbox.try_recv().unwrap(), ProxyMessage::Nack(Nack { version: 7, .. })));
        discovery.set_file(&shared.table, Config::parse("{}").unwrap()).unwrap();
        assert!(shared.table.load().service_by_address(addr).is_some(), "back when the file lets go");
        assert!(matches!(outbox.try_recv().unwrap(), ProxyMessage::Ack(Ack { version: 7, .. })));
    }

    #[test]
    fn a_stream_refusal_ends_the_stream_and_a_destination_refusal_settles_it() {
        let (discovery, shared) = setup("{}");
        let refusal = |resource| {
            ControlMessage::Refused(braid_api::discovery::Refusal { resource, reason: "not yours".into() })
        };
        assert_eq!(discovery.handle(&shared.table, &shared.metrics, refusal(None)), Err("not yours".into()));
        assert_eq!(
            discovery.handle(&shared.table, &shared.metrics, refusal(Some(Resource::Inbound))),
            Ok(None)
        );
        assert_eq!(discovery.status().inbound.error.as_deref(), Some("not yours"));
    }

    #[test]
    fn the_discovered_inbound_policy_replaces_the_files() {
        let (discovery, shared) = setup("inbound: { policy: { mtls: PERMISSIVE, rules: [{}] } }");
        let policy = PolicyConfig {
            mtls: braid_api::config::MtlsMode::Strict,
            rules: Vec::new(),
            probes: Vec::new(),
            source: None,
        };
        let answer = discovery.handle(
            &shared.table,
            &shared.metrics,
            ControlMessage::Inbound(InboundUpdate {
                version: 2,
                policy: Some(policy.clone()),
                tracing: None,
            }),
        );
        assert_eq!(answer, Ok(Some(ProxyMessage::Ack(Ack { resource: Resource::Inbound, version: 2 }))));
        assert_eq!(shared.table.load().config.inbound.policy.as_ref(), Some(&policy));
        let answer = discovery.handle(
            &shared.table,
            &shared.metrics,
            ControlMessage::Inbound(InboundUpdate { version: 3, policy: None, tracing: None }),
        );
        assert!(matches!(answer, Ok(Some(ProxyMessage::Ack(_)))));
        assert_eq!(
            shared.table.load().config.inbound.policy,
            None,
            "no MeshPolicy: every client may connect"
        );
    }

    #[test]
    fn until_the_server_sends_a_policy_inbound_admits_only_the_pods_default() {
        let closed = DefaultInboundPolicy::Deny.policy(Vec::new());
        let (discovery, _) = setup("{}");
        assert_eq!(discovery.initial_config().inbound.policy, Some(closed), "no default given: closed");
        assert!(!discovery.has_inbound_policy());

        let meshed_only = DefaultInboundPolicy::AllAuthenticated.policy(Vec::new());
        let (discovery, shared) = setup_with("{}", Some(meshed_only.clone()));
        assert_eq!(discovery.initial_config().inbound.policy.as_ref(), Some(&meshed_only));
        // A file reload before the first policy keeps the startup one rather than opening up.
        discovery.set_file(&shared.table, Config::empty()).unwrap();
        assert_eq!(shared.table.load().config.inbound.policy.as_ref(), Some(&meshed_only));

        let allow = DefaultInboundPolicy::AllUnauthenticated.policy(Vec::new());
        let answer = discovery.handle(
            &shared.table,
            &shared.metrics,
            ControlMessage::Inbound(InboundUpdate { version: 1, policy: Some(allow.clone()), tracing: None }),
        );
        assert!(matches!(answer, Ok(Some(ProxyMessage::Ack(_)))));
        assert!(discovery.has_inbound_policy());
        assert_eq!(shared.table.load().config.inbound.policy, Some(allow));

        let (discovery, _) = setup("inbound: { policy: { mtls: PERMISSIVE, rules: [{}] } }");
        let file_policy = discovery.initial_config().inbound.policy.expect("the file's");
        assert_eq!(
            file_policy.mtls,
            braid_api::config::MtlsMode::Permissive,
            "a file's policy is the operator's choice"
        );
    }
}
