//! One channel: its subscribers, its `seq` counter and its recent history, behind the
//! channel's own lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{ENTRY_OVERHEAD, HistoryLimits};
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::Outbox;

/// A channel's idempotency keys: each key's `seq`, and the keys oldest first for expiry.
#[derive(Default)]
pub(super) struct Keys {
    seqs: HashMap<Arc<str>, u64>,
    order: VecDeque<(Instant, Arc<str>)>,
}

/// A channel of the registry.
pub(super) struct Channel {
    pub(super) name: Arc<str>,
    pub(super) state: Mutex<ChannelState>,
}

/// A channel's recent publications, oldest first: `(seq, when, frame)`, and what they cost.
#[derive(Default)]
pub(super) struct History {
    pub(super) entries: VecDeque<(u64, Instant, Frame)>,
    pub(super) bytes: usize,
}

impl History {
    pub(super) fn cost(frame: &Frame) -> usize {
        frame.as_bytes().len() + ENTRY_OVERHEAD
    }

    pub(super) fn push(&mut self, total: &AtomicUsize, seq: u64, at: Instant, frame: Frame) {
        let cost = Self::cost(&frame);
        self.bytes += cost;
        total.fetch_add(cost, Ordering::Relaxed);
        self.entries.push_back((seq, at, frame));
    }

    pub(super) fn pop_front(&mut self, total: &AtomicUsize) -> bool {
        let Some((_, _, frame)) = self.entries.pop_front() else {
            return false;
        };
        let cost = Self::cost(&frame);
        self.bytes -= cost;
        total.fetch_sub(cost, Ordering::Relaxed);
        true
    }

    pub(super) fn clear(&mut self, total: &AtomicUsize) {
        total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.entries.clear();
    }

    pub(super) fn oldest_at(&self) -> Option<Instant> {
        self.entries.front().map(|(_, at, _)| *at)
    }

    pub(super) fn newest_at(&self) -> Option<Instant> {
        self.entries.back().map(|(_, at, _)| *at)
    }
}

pub(super) struct ChannelState {
    /// The incarnation of the channel's sequence: this hub's (embedded broker) or the
    /// cluster's (Redis broker).
    pub(super) epoch: Arc<str>,
    pub(super) seq: u64,
    /// A vector, iterated on every publication; `index` finds an entry to remove it.
    pub(super) subscribers: Vec<(ConnectionId, Arc<Outbox>)>,
    pub(super) index: HashMap<ConnectionId, usize>,
    pub(super) history: History,
    /// Idempotency keys seen within the window; `None` until the first keyed publication.
    pub(super) keys: Option<Box<Keys>>,
    /// Removed from the registry: a publisher that found the channel just before must look
    /// it up again rather than keep history nobody can reach.
    pub(super) forgotten: bool,
}

impl ChannelState {
    /// Adds a subscriber; `true` if it was not one already.
    pub(super) fn insert(&mut self, id: ConnectionId, outbox: &Arc<Outbox>) -> bool {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(id) {
            slot.insert(self.subscribers.len());
            self.subscribers.push((id, outbox.clone()));
            return true;
        }
        false
    }

    /// Removes a subscriber; `true` if it was one.
    pub(super) fn remove(&mut self, id: ConnectionId) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        self.subscribers.swap_remove(i);
        if let Some((moved, _)) = self.subscribers.get(i) {
            self.index.insert(*moved, i);
        }
        true
    }

    pub(super) fn trim(&mut self, limits: HistoryLimits, total: &AtomicUsize, now: Instant) {
        while self.history.entries.len() > limits.size {
            self.history.pop_front(total);
        }
        while self
            .history
            .oldest_at()
            .is_some_and(|at| now.duration_since(at) > limits.ttl)
        {
            self.history.pop_front(total);
        }
    }

    /// Forgettable: nobody listens and nothing is kept.
    pub(super) fn is_idle(&self) -> bool {
        self.subscribers.is_empty()
            && self.history.entries.is_empty()
            && self.keys.as_ref().is_none_or(|keys| keys.seqs.is_empty())
    }

    /// The `seq` of the publication that carried `key`, if it is remembered.
    pub(super) fn key_seq(&self, key: &str) -> Option<u64> {
        self.keys.as_ref()?.seqs.get(key).copied()
    }

    /// Remembers that `key` was published as `seq` at `now`.
    pub(super) fn remember_key(&mut self, key: &str, seq: u64, now: Instant, held: &AtomicUsize) {
        let keys = self.keys.get_or_insert_with(Box::default);
        let key: Arc<str> = Arc::from(key);
        if keys.seqs.insert(key.clone(), seq).is_none() {
            held.fetch_add(1, Ordering::Relaxed);
        }
        keys.order.push_back((now, key));
    }

    /// Forgets the keys older than `window`.
    pub(super) fn expire_keys(&mut self, window: Duration, held: &AtomicUsize, now: Instant) {
        let Some(keys) = &mut self.keys else {
            return;
        };
        while let Some((at, _)) = keys.order.front() {
            if now.duration_since(*at) <= window {
                break;
            }
            if let Some((_, key)) = keys.order.pop_front()
                && keys.seqs.remove(&key).is_some()
            {
                held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if keys.order.is_empty() {
            self.keys = None;
        }
    }

    /// Forgets the oldest key; `false` if the channel has none.
    pub(super) fn forget_oldest_key(&mut self, held: &AtomicUsize) -> bool {
        let Some(keys) = &mut self.keys else {
            return false;
        };
        while let Some((_, key)) = keys.order.pop_front() {
            if keys.seqs.remove(&key).is_some() {
                held.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Forgets every key (the channel is forgotten).
    pub(super) fn clear_keys(&mut self, held: &AtomicUsize) {
        if let Some(keys) = self.keys.take() {
            held.fetch_sub(keys.seqs.len(), Ordering::Relaxed);
        }
    }
}

impl Channel {
    pub(super) fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
