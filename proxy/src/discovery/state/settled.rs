//! The destinations that no longer wait for discovery, found on every table miss without a lock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use arc_swap::ArcSwap;

/// The destinations that no longer wait: a set read without a lock, plus the few settled since
/// it was last rebuilt, under a lock. The set is rebuilt when the recent ones reach an eighth of
/// it, so settling n destinations copies O(n) addresses in all (copying the whole set on each,
/// as before, was O(n²) for a proxy that calls thousands of addresses).
#[derive(Default)]
pub(super) struct Settled {
    frozen: ArcSwap<HashSet<SocketAddr>>,
    recent: Mutex<HashSet<SocketAddr>>,
}

impl Settled {
    pub(super) fn contains(&self, addr: &SocketAddr) -> bool {
        self.frozen.load().contains(addr) || self.lock_recent().contains(addr)
    }

    pub(super) fn insert(&self, addr: SocketAddr) {
        let mut recent = self.lock_recent();
        if self.frozen.load().contains(&addr) || !recent.insert(addr) {
            return;
        }
        let frozen = self.frozen.load_full();
        if recent.len() >= frozen.len() / 8 + 16 {
            let mut merged = HashSet::with_capacity(frozen.len() + recent.len());
            merged.extend(frozen.iter().copied());
            merged.extend(recent.drain());
            self.frozen.store(std::sync::Arc::new(merged));
        }
    }

    fn lock_recent(&self) -> MutexGuard<'_, HashSet<SocketAddr>> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_destinations_are_found_whether_recent_or_merged() {
        let settled = Settled::default();
        let addr = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 80));
        for i in 0..5_000 {
            settled.insert(addr(i));
            settled.insert(addr(i));
        }
        assert!((0..5_000).all(|i| settled.contains(&addr(i))));
        assert!(!settled.contains(&addr(5_000)));
        let (frozen, recent) = (settled.frozen.load().len(), settled.lock_recent().len());
        assert_eq!(frozen + recent, 5_000, "each address once");
        assert!(recent < frozen / 8 + 16, "most are in the lock-free set: {recent} recent, {frozen} merged");
    }
}
