//! The destinations that no longer wait for discovery, found on every table miss without a lock,
//! with how each is used: the connections open to it and since when it has had none (what the
//! eviction of idle destinations reads).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

type Uses = HashMap<SocketAddr, Arc<Use>>;

/// The destinations that no longer wait: a map read without a lock, plus the few settled since
/// it was last rebuilt, under a lock. The map is rebuilt when the recent ones reach an eighth of
/// it, so settling n destinations copies O(n) entries in all (copying the whole map on each
/// would be O(n²) for a proxy that calls thousands of addresses).
pub(super) struct Settled {
    frozen: ArcSwap<Uses>,
    recent: Mutex<Uses>,
    /// Use times are kept as milliseconds since this instant, so they fit in an atomic.
    epoch: Instant,
}

/// How one destination is used.
pub(super) struct Use {
    open: AtomicUsize,
    /// Milliseconds since the epoch when the last connection closed (or the destination settled).
    idle_since_ms: AtomicU64,
}

/// A connection open to a discovered destination: while one is held, the destination is not
/// evicted; dropping it marks the destination used now.
pub struct InUse {
    used: Arc<Use>,
    epoch: Instant,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.used.idle_since_ms.store(millis_since(self.epoch), Ordering::Relaxed);
        self.used.open.fetch_sub(1, Ordering::Release);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Default for Settled {
    fn default() -> Self {
        Self { frozen: ArcSwap::default(), recent: Mutex::default(), epoch: Instant::now() }
    }
}

impl Settled {
    pub(super) fn contains(&self, addr: &SocketAddr) -> bool {
        self.frozen.load().contains_key(addr) || self.lock_recent().contains_key(addr)
    }

    pub(super) fn insert(&self, addr: SocketAddr) {
        let mut recent = self.lock_recent();
        if self.frozen.load().contains_key(&addr) || recent.contains_key(&addr) {
            return;
        }
        let used = Use { open: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(millis_since(self.epoch)) };
        recent.insert(addr, Arc::new(used));
        let frozen = self.frozen.load_full();
        if recent.len() >= frozen.len() / 8 + 16 {
            let mut merged = HashMap::with_capacity(frozen.len() + recent.len());
            merged.extend(frozen.iter().map(|(addr, used)| (*addr, used.clone())));
            merged.extend(recent.drain());
            self.frozen.store(Arc::new(merged));
        }
    }

    /// How `addr` is used, if it is a settled destination.
    fn uses(&self, addr: &SocketAddr) -> Option<Arc<Use>> {
        match self.frozen.load().get(addr) {
            Some(used) => Some(used.clone()),
            None => self.lock_recent().get(addr).cloned(),
        }
    }

    /// Marks a connection open to `addr`, if it is a settled destination.
    pub(super) fn in_use(&self, addr: &SocketAddr) -> Option<InUse> {
        let used = self.uses(addr)?;
        used.open.fetch_add(1, Ordering::Acquire);
        Some(InUse { used, epoch: self.epoch })
    }

    /// Whether `addr` has had no connection open for `idle_for` or longer.
    pub(super) fn is_idle(&self, addr: &SocketAddr, idle_for: Duration) -> bool {
        let Some(used) = self.uses(addr) else { return false };
        let idle_since = used.idle_since_ms.load(Ordering::Relaxed);
        used.open.load(Ordering::Acquire) == 0
            && millis_since(self.epoch).saturating_sub(idle_since)
                >= u64::try_from(idle_for.as_millis()).unwrap_or(u64::MAX)
    }

    /// Forgets `addrs`: the next connection to one of them waits for discovery again.
    pub(super) fn remove(&self, addrs: &HashSet<SocketAddr>) {
        let mut recent = self.lock_recent();
        recent.retain(|addr, _| !addrs.contains(addr));
        let frozen = self.frozen.load_full();
        if addrs.iter().any(|addr| frozen.contains_key(addr)) {
            let kept = frozen.iter().filter(|(addr, _)| !addrs.contains(addr));
            self.frozen.store(Arc::new(kept.map(|(addr, used)| (*addr, used.clone())).collect()));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.frozen.load().len() + self.lock_recent().len()
    }

    fn lock_recent(&self) -> MutexGuard<'_, Uses> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 80))
    }

    #[test]
    fn settled_destinations_are_found_whether_recent_or_merged() {
        let settled = Settled::default();
        for i in 0..5_000 {
            settled.insert(addr(i));
            settled.insert(addr(i));
        }
        assert!((0..5_000).all(|i| settled.contains(&addr(i))));
        assert!(!settled.contains(&addr(5_000)));
        let (frozen, recent) = (settled.frozen.load().len(), settled.lock_recent().len());
        assert_eq!(frozen + recent, 5_000, "each address once");
        assert!(recent < frozen / 8 + 16, "most are in the lock-free set: {recent} recent, {frozen} merged");

        let gone: HashSet<_> = (0..5_000).filter(|i| i % 2 == 0).map(addr).collect();
        settled.remove(&gone);
        assert_eq!(settled.len(), 2_500);
        assert!((0..5_000).all(|i| settled.contains(&addr(i)) == (i % 2 == 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_destination_is_idle_only_with_no_connection_open_for_the_whole_time() {
        let settled = Settled::default();
        let idle_for = Duration::from_secs(60);
        settled.insert(addr(1));
        assert!(settled.in_use(&addr(2)).is_none(), "not settled: nothing to mark");
        assert!(!settled.is_idle(&addr(2), idle_for), "not settled: never evicted");

        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!settled.is_idle(&addr(1), idle_for));
        let open = settled.in_use(&addr(1)).unwrap();
        let second = settled.in_use(&addr(1)).unwrap();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!settled.is_idle(&addr(1), idle_for), "held open for ten minutes: in use");
        drop(second);
        assert!(!settled.is_idle(&addr(1), idle_for), "one still open");
        drop(open);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!settled.is_idle(&addr(1), idle_for), "counted from when the last one closed");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(settled.is_idle(&addr(1), idle_for));
    }
}
