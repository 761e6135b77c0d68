//! [`Connections`]: every open connection by id, for `broadcast`, `send_to` and counting.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::outbox::{Outbox, Outgoing};

/// The hub's identifier of one connection, unique for the life of the server. The client
/// learns it from the `Connected` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number, as the `Connected` frame's `connection_id` carries it.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<ConnectionId> for u64 {
    fn from(id: ConnectionId) -> Self {
        id.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The registry of open connections.
#[derive(Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    open: RwLock<HashMap<ConnectionId, Arc<Outbox>>>,
}

impl Connections {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ConnectionId, Arc<Outbox>>> {
        self.open.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ConnectionId, Arc<Outbox>>> {
        self.open.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id; ids start at 1.
    pub(crate) fn next_id(&self) -> ConnectionId {
        ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(crate) fn insert(&self, id: ConnectionId, outbox: Arc<Outbox>) {
        self.write().insert(id, outbox);
    }

    pub(crate) fn remove(&self, id: ConnectionId) {
        self.write().remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Queues the same encoded frame to every connection; returns how many accepted it.
    pub(crate) fn broadcast(&self, item: &Outgoing) -> usize {
        self.read()
            .values()
            .filter(|outbox| outbox.push(item.clone()))
            .count()
    }

    /// Every open connection's outbox, in id order.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Outbox>> {
        let open = self.read();
        let mut all: Vec<(ConnectionId, Arc<Outbox>)> =
            open.iter().map(|(id, o)| (*id, o.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, o)| o).collect()
    }

    /// Closes every outbox, which wakes every connection to close (shutdown).
    pub(crate) fn close_all(&self) {
        for outbox in self.read().values() {
            outbox.close();
        }
    }

    /// Queues a frame to one connection; `None` if it is not open.
    pub(crate) fn send_to(&self, id: ConnectionId, item: Outgoing) -> Option<bool> {
        let outbox = self.read().get(&id).cloned()?;
        Some(outbox.push(item))
    }
}
