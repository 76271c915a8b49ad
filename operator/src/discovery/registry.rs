//! The proxies connected to this operator, what each was sent and what it acknowledged: the
//! source of the Programmed condition ("12/12 proxies") and of the Mesh's proxy count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::index::{Key, RouteRef, Snapshot, Target};

/// How many proxies route to a Service, and how many of them run a route's generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programming {
    pub total: usize,
    pub acked: usize,
    /// Why proxies refused the generation (distinct reasons, sorted).
    pub refusals: Vec<String>,
}

/// Connected proxies and their versions, for the Mesh status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub connected: usize,
    pub versions: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct Subscription {
    target: Target,
    sent: Option<(u64, Arc<Snapshot>)>,
    acked: Option<Arc<Snapshot>>,
    nacked: Option<String>,
}

#[derive(Debug)]
struct Proxy {
    proxy_version: String,
    subscriptions: HashMap<String, Subscription>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    proxies: HashMap<u64, Proxy>,
    /// Services whose counts changed since the status writer last looked.
    dirty: HashSet<Key>,
    mesh_dirty: bool,
}

#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { inner: Mutex::default(), changed: watch::channel(0).0 }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark(&self, inner: &mut Inner, target: &Target) {
        if let Target::Service { key, .. } = target {
            inner.dirty.insert(key.clone());
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes whenever counts may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The Services whose counts changed since the last call, and whether the Mesh summary did.
    pub fn take_dirty(&self) -> (HashSet<Key>, bool) {
        let mut inner = self.lock();
        let mesh = std::mem::take(&mut inner.mesh_dirty);
        (std::mem::take(&mut inner.dirty), mesh)
    }

    pub fn connect(&self, proxy_version: &str) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner
            .proxies
            .insert(id, Proxy { proxy_version: proxy_version.to_owned(), subscriptions: HashMap::new() });
        inner.mesh_dirty = true;
        self.changed.send_modify(|n| *n += 1);
        id
    }

    pub fn disconnect(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(proxy) = inner.proxies.remove(&id) {
            for subscription in proxy.subscriptions.values() {
                if let Target::Service { key, .. } = &subscription.target {
                    inner.dirty.insert(key.clone());
                }
            }
        }
        inner.mesh_dirty = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records that `destination` (resolved to `target`) was sent at `version`.
    pub fn sent(&self, id: u64, destination: &str, target: Target, version: u64, snapshot: Arc<Snapshot>) {
        let mut inner = self.lock();
        let Some(proxy) = inner.proxies.get_mut(&id) else { return };
        let subscription = proxy.subscriptions.entry(destination.to_owned()).or_insert_with(|| {
            Subscription { target: target.clone(), sent: None, acked: None, nacked: None }
        });
        let old = std::mem::replace(&mut subscription.target, target.clone());
        subscription.sent = Some((version, snapshot));
        if old != target {
            subscription.acked = None;
            self.mark(&mut inner, &old);
        }
        self.mark(&mut inner, &target);
    }

    pub fn unsubscribe(&self, id: u64, destination: &str) {
        let mut inner = self.lock();
        let Some(proxy) = inner.proxies.get_mut(&id) else { return };
        if let Some(subscription) = proxy.subscriptions.remove(destination) {
            self.mark(&mut inner, &subscription.target);
        }
    }

    /// The proxy applied `version` of `destination`; an ack of anything but the last version
    /// sent is stale and ignored.
    pub fn ack(&self, id: u64, destination: &str, version: u64) {
        let mut inner = self.lock();
        let Some(subscription) =
            inner.proxies.get_mut(&id).and_then(|p| p.subscriptions.get_mut(destination))
        else {
            return;
        };
        if let Some((sent, snapshot)) = &subscription.sent
            && *sent == version
        {
            subscription.acked = Some(snapshot.clone());
            subscription.nacked = None;
            let target = subscription.target.clone();
            self.mark(&mut inner, &target);
        }
    }

    pub fn nack(&self, id: u64, destination: &str, version: u64, reason: &str) {
        let mut inner = self.lock();
        let Some(subscription) =
            inner.proxies.get_mut(&id).and_then(|p| p.subscriptions.get_mut(destination))
        else {
            return;
        };
        if subscription.sent.as_ref().is_some_and(|(sent, _)| *sent == version) {
            subscription.nacked = Some(reason.to_owned());
            let target = subscription.target.clone();
            self.mark(&mut inner, &target);
        }
    }

    /// Proxies that route to port `port` (any, when `None`) of Service `service`, and how many of
    /// them acknowledged a configuration that carries `route`.
    pub fn programming(&self, service: &Key, port: Option<u16>, route: &RouteRef) -> Programming {
        let inner = self.lock();
        let mut result = Programming::default();
        let mut refusals = std::collections::BTreeSet::new();
        for proxy in inner.proxies.values() {
            let mut routes_here = false;
            let mut acked = false;
            for subscription in proxy.subscriptions.values() {
                let Target::Service { key, port: p } = &subscription.target else { continue };
                if key != service || port.is_some_and(|port| port != *p) {
                    continue;
                }
                routes_here = true;
                if subscription.acked.as_ref().is_some_and(|s| s.routes.contains(route)) {
                    acked = true;
                } else if let Some(reason) = &subscription.nacked {
                    refusals.insert(reason.clone());
                }
            }
            if routes_here {
                result.total += 1;
                result.acked += usize::from(acked);
            }
        }
        result.refusals = refusals.into_iter().collect();
        result
    }

    pub fn summary(&self) -> Summary {
        let inner = self.lock();
        let mut summary = Summary { connected: inner.proxies.len(), versions: BTreeMap::new() };
        for proxy in inner.proxies.values() {
            *summary.versions.entry(proxy.proxy_version.clone()).or_default() += 1;
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        ("shop".to_owned(), "reviews".to_owned())
    }

    fn route(generation: i64) -> RouteRef {
        RouteRef { kind: None, namespace: "shop".into(), name: "split".into(), generation }
    }

    fn snapshot(generation: i64) -> Arc<Snapshot> {
        Arc::new(Snapshot { routes: vec![route(generation)], ..Snapshot::UNKNOWN })
    }

    fn target() -> Target {
        Target::Service { key: key(), port: 80 }
    }

    #[test]
    fn a_proxy_counts_as_programmed_once_it_acks_the_generation() {
        let registry = Registry::default();
        let a = registry.connect("0.1.0");
        let b = registry.connect("0.1.0");
        registry.sent(a, "10.96.0.10:80", target(), 5, snapshot(2));
        registry.sent(b, "reviews.shop:80", target(), 5, snapshot(2));
        assert_eq!(
            registry.programming(&key(), None, &route(2)),
            Programming { total: 2, acked: 0, refusals: vec![] }
        );
        registry.ack(a, "10.96.0.10:80", 5);
        registry.nack(b, "reviews.shop:80", 5, "services[0]: bad");
        let counts = registry.programming(&key(), None, &route(2));
        assert_eq!((counts.total, counts.acked), (2, 1));
        assert_eq!(counts.refusals, ["services[0]: bad"]);
        assert_eq!(
            registry.programming(&key(), None, &route(3)).acked,
            0,
            "an older generation does not count"
        );
        registry.ack(b, "reviews.shop:80", 4);
        assert_eq!(registry.programming(&key(), None, &route(2)).acked, 1, "a stale ack is ignored");
        let (dirty, mesh) = registry.take_dirty();
        assert!(dirty.contains(&key()) && mesh);
        registry.disconnect(b);
        assert_eq!(registry.programming(&key(), None, &route(2)).total, 1);
        assert_eq!(
            registry.summary(),
            Summary { connected: 1, versions: BTreeMap::from([("0.1.0".into(), 1)]) }
        );
    }

    #[test]
    fn a_route_for_one_port_counts_only_proxies_of_that_port() {
        let registry = Registry::default();
        let a = registry.connect("0.1.0");
        registry.sent(a, "10.96.0.10:9090", Target::Service { key: key(), port: 9090 }, 1, snapshot(1));
        assert_eq!(registry.programming(&key(), Some(80), &route(1)).total, 0);
        assert_eq!(registry.programming(&key(), None, &route(1)).total, 1);
    }
}
