//! A service's `maxConnections` and `maxPendingRequests`, per endpoint: the HTTP/1.1 and opaque
//! TCP connections this proxy has open to the endpoint, and the requests that wait for one of
//! them when all are busy and no more may be opened. A request beyond those waiting is refused at
//! once (503 `overloaded`): the circuit breaker Envoy calls connection-pool overflow. HTTP/2
//! carries every request to an endpoint on one connection, so these do not apply to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A waiting request looks for a returned connection this often too: a streamed response gives
/// its hyper connection back when hyper has read it, which nothing here is told of.
const RECHECK: Duration = Duration::from_millis(5);

pub struct ConnectionLimit {
    pub max_connections: u32,
    pub max_pending: u32,
    open: Arc<Semaphore>,
    pending: AtomicU32,
    /// Woken when a connection goes back to the pool.
    returned: Notify,
}

/// One open connection's place under the limit, given back when the connection closes.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    limit: Arc<ConnectionLimit>,
}

impl ConnectionSlot {
    /// The connection went back to the pool: a waiting request may take it.
    pub fn returned(&self) {
        self.limit.connection_returned();
    }

    pub fn limit(&self) -> Arc<ConnectionLimit> {
        self.limit.clone()
    }
}

/// What a waiting request got.
pub enum Waited<T> {
    /// A connection of the pool came free.
    Idle(T),
    /// A new connection may be opened.
    Slot(ConnectionSlot),
}

/// No connection and no place to wait.
#[derive(Debug, Clone, Copy)]
pub struct Overflow {
    pub max_connections: u32,
    pub max_pending: u32,
}

impl ConnectionLimit {
    pub fn new(max_connections: u32, max_pending: u32) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            max_pending,
            open: Arc::new(Semaphore::new(max_connections as usize)),
            pending: AtomicU32::new(0),
            returned: Notify::new(),
        })
    }

    /// A place for a new connection, if one is free.
    pub fn try_slot(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        Some(ConnectionSlot { _permit: permit, limit: self.clone() })
    }

    /// Waits, as one of at most `max_pending`, until `take_idle` finds a connection back in the
    /// pool or a new one may be opened.
    pub async fn wait<T>(
        self: &Arc<Self>,
        mut take_idle: impl FnMut() -> Option<T>,
    ) -> Result<Waited<T>, Overflow> {
        let overflow = Overflow { max_connections: self.max_connections, max_pending: self.max_pending };
        let mut waiting = self.pending.load(Ordering::Relaxed);
        loop {
            if waiting >= self.max_pending {
                return Err(overflow);
            }
            match self.pending.compare_exchange_weak(
                waiting,
                waiting + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => waiting = now,
            }
        }
        let _waiting = Pending(self);
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a return between the look and the wait is not missed.
            returned.as_mut().enable();
            if let Some(idle) = take_idle() {
                return Ok(Waited::Idle(idle));
            }
            tokio::select! {
                permit = self.open.clone().acquire_owned() => {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        return Ok(Waited::Slot(ConnectionSlot { _permit: permit, limit: self.clone() }));
                    }
                }
                () = &mut returned => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// A connection went back to the pool: a waiting request may take it.
    pub fn connection_returned(&self) {
        self.returned.notify_one();
    }

    pub fn open_connections(&self) -> u32 {
        self.max_connections - self.open.available_permits() as u32
    }
}

/// Counts a request among those waiting until it is done waiting.
struct Pending<'a>(&'a ConnectionLimit);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_capped_and_waiters_beyond_the_pending_bound_are_refused() {
        let limit = ConnectionLimit::new(1, 1);
        let first = limit.try_slot().expect("the first connection");
        assert!(limit.try_slot().is_none(), "a second connection");
        assert_eq!(limit.open_connections(), 1);
        // One request may wait; a second waiter is refused at once.
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.wait(|| None::<()>).await.map(|w| matches!(w, Waited::Slot(_))) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = limit.wait(|| None::<()>).await;
        assert!(matches!(refused, Err(Overflow { max_connections: 1, max_pending: 1 })));
        // The connection closes: the waiter may open one.
        drop(first);
        assert!(waiter.await.unwrap().unwrap(), "the waiter got a slot");
        assert_eq!(limit.pending.load(Ordering::Relaxed), 0, "nobody is counted as waiting");
    }

    #[tokio::test]
    async fn a_returned_connection_goes_to_a_waiter() {
        let limit = ConnectionLimit::new(1, 4);
        let slot = limit.try_slot().expect("the connection");
        let pool = Arc::new(std::sync::Mutex::new(None::<u32>));
        let waiter = {
            let (limit, pool) = (limit.clone(), pool.clone());
            tokio::spawn(async move {
                limit.wait(|| pool.lock().unwrap().take()).await.ok().map(|w| matches!(w, Waited::Idle(7)))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        *pool.lock().unwrap() = Some(7);
        slot.returned();
        assert_eq!(waiter.await.unwrap(), Some(true));
        assert_eq!(limit.open_connections(), 1, "the connection stays open, reused");
    }
}
