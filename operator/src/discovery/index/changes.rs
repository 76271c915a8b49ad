//! What each change of the index touches, so that the discovery server wakes only the streams
//! subscribed to it: a change costs in proportion to the proxies it concerns, not to the mesh.
//!
//! Each mutation of the index names the topics whose answers it may change; the server takes
//! them after each batch (`Index::take_changes`). A change that could alter any answer (trust
//! domain, default policy, tracing, egress, ReferenceGrants) names everything. Naming too much
//! only costs a wasted wake; naming too little would leave a proxy with a stale answer, so when
//! in doubt a mutation names more.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use super::{Index, Key};

/// Something a stream's answers are computed from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The answers for a Service's ports, and whether a name or cluster IP resolves to it.
    Service(Key),
    /// The answer for an `IP:PORT` that is no cluster IP: who holds the IP, which Services list
    /// it, and whether a Service takes it as a cluster IP.
    Address(IpAddr),
    /// A pod's inbound policy (its labels, annotations, probes).
    Pod(Key),
    /// The inbound policies of a namespace's pods (its MeshPolicies).
    Policies(String),
}

impl Topic {
    pub fn id(&self) -> TopicId {
        match self {
            Topic::Service(key) => TopicId::service(key),
            Topic::Address(ip) => TopicId::address(*ip),
            Topic::Pod(key) => TopicId::pod(key),
            Topic::Policies(namespace) => TopicId::policies(namespace),
        }
    }
}

/// A topic's fingerprint, which is what streams watch: 8 bytes per topic a stream holds, made
/// without copying a name. Two topics that collide only wake each other's streams for nothing
/// (a wasted wake, never a missed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(u64);

impl TopicId {
    pub fn service(key: &Key) -> Self {
        Self::of(0, |hasher| key.hash(hasher))
    }

    pub fn address(ip: IpAddr) -> Self {
        Self::of(1, |hasher| ip.hash(hasher))
    }

    pub fn pod(key: &Key) -> Self {
        Self::of(2, |hasher| key.hash(hasher))
    }

    pub fn policies(namespace: &str) -> Self {
        Self::of(3, |hasher| namespace.hash(hasher))
    }

    fn of(kind: u8, write: impl FnOnce(&mut DefaultHasher)) -> Self {
        // Fixed keys: the same topic gets the same id in every part of the process.
        let mut hasher = DefaultHasher::new();
        kind.hash(&mut hasher);
        write(&mut hasher);
        TopicId(hasher.finish())
    }
}

/// The topics changed since the last `Index::take_changes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Any answer may have changed.
    pub everything: bool,
    pub topics: HashSet<Topic>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.topics.is_empty()
    }
}

impl Index {
    /// From now on, the index records what each change touches, for `take_changes`. Off until
    /// then: an index built before anyone serves from it has no one to tell.
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
    }

    /// The topics changed since the last call, and forgets them.
    pub fn take_changes(&mut self) -> Changes {
        self.changes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Where to add the topics a change touches: nowhere while changes are not recorded, or
    /// once everything changed.
    fn recording(&mut self) -> Option<&mut HashSet<Topic>> {
        self.changes.as_mut().filter(|changes| !changes.everything).map(|changes| &mut changes.topics)
    }

    /// A change that only the status writers see (a policy's generation).
    pub(super) fn touch_status(&mut self) {
        self.revision += 1;
    }

    pub(super) fn touch_everything(&mut self) {
        self.revision += 1;
        if let Some(changes) = &mut self.changes {
            changes.everything = true;
            changes.topics.clear();
        }
    }

    pub(super) fn touch(&mut self, topic: Topic) {
        self.revision += 1;
        if let Some(topics) = self.recording() {
            topics.insert(topic);
        }
    }

    /// Service `key` changed (itself, a slice, a route of it, a pod behind it): its answers, and
    /// the answers for its endpoints' IPs, which carry its protocol, routes and export-to.
    pub(super) fn touch_service(&mut self, key: &Key) {
        self.revision += 1;
        if self.recording().is_none() {
            return;
        }
        let addresses: Vec<IpAddr> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
            .flat_map(|slice| slice.endpoints.iter().flat_map(|e| e.addresses.iter().copied()))
            .collect();
        if let Some(topics) = self.recording() {
            topics.insert(Topic::Service(key.clone()));
            topics.extend(addresses.into_iter().map(Topic::Address));
        }
    }

    /// Pod `key`, holding `ips`, changed: its inbound policy, the answers for its IPs, and the
    /// Services whose slices list it (its identity, labels and meshed ports are in their answers).
    pub(super) fn touch_pod(&mut self, key: &Key, ips: &[IpAddr]) {
        self.revision += 1;
        if self.recording().is_none() {
            return;
        }
        let slices = ips
            .iter()
            .filter_map(|ip| self.slices_by_ip.get(ip))
            .flatten()
            .chain(self.slices_by_pod.get(key).into_iter().flatten());
        let services: HashSet<Key> = slices
            .filter_map(|slice| Some((slice.0.clone(), self.slices.get(slice)?.service.clone())))
            .collect();
        if let Some(topics) = self.recording() {
            topics.insert(Topic::Pod(key.clone()));
            topics.extend(ips.iter().copied().map(Topic::Address));
            topics.extend(services.into_iter().map(Topic::Service));
        }
    }

    /// The answers for these IPs changed (a slice listing them came or went, a Service took or
    /// left them as cluster IPs).
    pub(super) fn touch_addresses(&mut self, ips: impl IntoIterator<Item = IpAddr>) {
        if let Some(topics) = self.recording() {
            topics.extend(ips.into_iter().map(Topic::Address));
        }
    }
}
