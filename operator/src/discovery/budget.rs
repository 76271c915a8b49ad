//! How many discovery connections the server holds: in all, and from one address. A pod needs
//! one (two for a moment while it reconnects), so a client that opens more is refused rather than
//! allowed to take the slots of every other proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct ConnectionBudget {
    total: usize,
    per_address: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Which bound refused a connection; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "connections",
            Refused::PerAddress => "connections_per_address",
        }
    }
}

/// Held while the connection is open; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<ConnectionBudget>,
    address: IpAddr,
}

impl ConnectionBudget {
    pub fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self { total, per_address, open: Mutex::default() })
    }

    pub fn take(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().sum::<usize>() >= self.total {
            return Err(Refused::Total);
        }
        let count = open.entry(address).or_default();
        if *count >= self.per_address {
            return Err(Refused::PerAddress);
        }
        *count += 1;
        Ok(Slot { budget: self.clone(), address })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.budget.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_in_all_and_come_back_when_dropped() {
        let budget = ConnectionBudget::new(3, 2);
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let b: IpAddr = "10.1.0.2".parse().unwrap();
        let first = budget.take(a).unwrap();
        let _second = budget.take(a).unwrap();
        assert_eq!(budget.take(a).unwrap_err(), Refused::PerAddress);
        let _third = budget.take(b).unwrap();
        assert_eq!(budget.take(b).unwrap_err(), Refused::Total);
        drop(first);
        assert!(budget.take(a).is_ok(), "a closed connection frees its slot");
    }
}
