//! A count of what is in flight with a limit: take a slot, or be refused; the slot comes back
//! when it is dropped, however the work ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Things in flight over the whole proxy (mirrored copies), counted against a limit.
#[derive(Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One place among those in flight, given back when it ends, however it ends.
pub struct Slot(Arc<AtomicUsize>);

impl InFlight {
    /// A place for one more, unless `limit` are in flight already.
    pub fn take(&self, limit: usize) -> Option<Slot> {
        let taken =
            self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < limit).then_some(now + 1));
        taken.ok().map(|_| Slot(self.0.clone()))
    }

    pub fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_slots_than_the_limit_and_each_comes_back() {
        let in_flight = InFlight::default();
        let slots: Vec<Slot> = (0..3).map_while(|_| in_flight.take(3)).collect();
        assert_eq!((slots.len(), in_flight.now()), (3, 3));
        assert!(in_flight.take(3).is_none(), "a fourth copy over a limit of 3");
        drop(slots);
        assert_eq!(in_flight.now(), 0);
        assert!(in_flight.take(3).is_some());
    }
}
