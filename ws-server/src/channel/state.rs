//! One channel: its subscribers, its `seq` counter and its recent history, behind the
//! channel's own lock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::time::Instant;

use super::{ENTRY_OVERHEAD, HistoryLimits};
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::Outbox;

/// A channel's idempotency keys: each key's `seq`, found by the key's 128-bit digest, and the
/// keys oldest first for expiry.
///
/// A key is kept as its digest, two SipHash-1-3 values under secret keys chosen at random
/// per channel, not as its text: nothing is allocated per key, and expiry neither hashes nor
/// reads a key again (it finds the entry by its hash and its `seq`, unique per key in a
/// channel). Two different keys would be taken for one only if both 64-bit values collided:
/// about 10^-34 per publication with 100,000 keys held, and nobody outside knows the secret
/// keys to aim for it.
#[derive(Default)]
pub(super) struct Keys {
    hasher: RandomState,
    checker: RandomState,
    table: HashTable<Remembered>,
    /// `(when, hash, seq)`, oldest first.
    order: VecDeque<(Instant, u64, u64)>,
}

/// One remembered key: its digest and the `seq` it was published as.
struct Remembered {
    hash: u64,
    check: u64,
    seq: u64,
}

impl Keys {
    fn len(&self) -> usize {
        self.table.len()
    }

    fn digest(&self, key: &str) -> KeyHash {
        KeyHash {
            hash: self.hasher.hash_one(key),
            check: self.checker.hash_one(key),
        }
    }

    fn seq(&self, key: KeyHash) -> Option<u64> {
        self.table
            .find(key.hash, |r| r.check == key.check)
            .map(|r| r.seq)
    }

    fn insert(&mut self, key: KeyHash, seq: u64, now: Instant) {
        let KeyHash { hash, check } = key;
        self.table
            .insert_unique(hash, Remembered { hash, check, seq }, |r| r.hash);
        self.order.push_back((now, hash, seq));
    }

    /// Forgets the oldest key; `false` if there is none.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, hash, seq)) = self.order.pop_front() else {
            return false;
        };
        if let Ok(entry) = self.table.find_entry(hash, |r| r.seq == seq) {
            entry.remove();
        }
        true
    }
}

/// A key's digest in one channel's key table, computed once per publication by
/// [`ChannelState::key_hash`].
#[derive(Clone, Copy)]
pub(super) struct KeyHash {
    hash: u64,
    check: u64,
}

/// A channel of the registry.
pub(super) struct Channel {
    pub(super) name: Arc<str>,
    /// Every `Publication` frame of the channel begins with this (its name escaped once).
    pub(super) prefix: Box<str>,
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
            && self.keys.as_ref().is_none_or(|keys| keys.len() == 0)
    }

    /// `key`'s hash in this channel's key table (made on the first keyed publication).
    pub(super) fn key_hash(&mut self, key: &str) -> KeyHash {
        self.keys.get_or_insert_with(Box::default).digest(key)
    }

    /// The `seq` of the publication that carried `key`, if it is remembered.
    pub(super) fn key_seq(&self, hash: KeyHash) -> Option<u64> {
        self.keys.as_ref()?.seq(hash)
    }

    /// Remembers that the key with digest `hash` was published as `seq` at `now` (it is not
    /// remembered yet).
    pub(super) fn remember_key(
        &mut self,
        hash: KeyHash,
        seq: u64,
        now: Instant,
        held: &AtomicUsize,
    ) {
        let keys = self.keys.get_or_insert_with(Box::default);
        keys.insert(hash, seq, now);
        held.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the keys older than `window`.
    pub(super) fn expire_keys(&mut self, window: Duration, held: &AtomicUsize, now: Instant) {
        let Some(keys) = &mut self.keys else {
            return;
        };
        while let Some((at, _, _)) = keys.order.front() {
            if now.duration_since(*at) <= window {
                break;
            }
            if keys.forget_oldest() {
                held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if keys.order.is_empty() {
            self.keys = None;
        }
    }

    /// Forgets the oldest key; `false` if the channel has none.
    pub(super) fn forget_oldest_key(&mut self, held: &AtomicUsize) -> bool {
        let forgot = self.keys.as_mut().is_some_and(|keys| keys.forget_oldest());
        if forgot {
            held.fetch_sub(1, Ordering::Relaxed);
        }
        forgot
    }

    /// Forgets every key (the channel is forgotten).
    pub(super) fn clear_keys(&mut self, held: &AtomicUsize) {
        if let Some(keys) = self.keys.take() {
            held.fetch_sub(keys.len(), Ordering::Relaxed);
        }
    }
}

impl Channel {
    pub(super) fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
