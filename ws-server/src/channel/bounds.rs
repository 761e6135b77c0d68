//! The registry's bounds: the hub-wide history budget (`WS_HISTORY_MAX_BYTES`), the channel
//! budget (`WS_MAX_CHANNELS`), the sweep that forgets idle channels, and the figures
//! `/metrics` shows.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::state::Channel;
use super::{Channels, SHARDS};

impl Channels {
    /// Forgets channels with no subscribers whose history has expired, one shard at a time
    /// (the server's sweep does the same with a yield between shards).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn sweep(&self) {
        for shard in 0..SHARDS {
            self.sweep_shard(shard, true);
        }
    }

    /// How many shards [`Channels::sweep_shard`] takes.
    pub(crate) const SHARDS: usize = SHARDS;

    /// Sweeps one shard: trims every channel's history by age under a read lock, then takes
    /// the write lock only to remove the channels that are idle, if `forget_idle` (not with
    /// Redis, whose broker forgets the channels it mirrors once they have no subscribers and
    /// their attach is old enough: a channel seeded for a `Subscribe` is idle until the
    /// subscription is made, and forgetting it here would restart it in a local epoch).
    pub(crate) fn sweep_shard(&self, shard: usize, forget_idle: bool) {
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<Arc<str>> = Self::read(shard)
            .iter()
            .filter(|(_, channel)| {
                let mut state = channel.lock();
                state.trim(self.limits, &self.history_bytes, now);
                state.expire_keys(self.limits.key_window, &self.keys_held, now);
                state.is_idle()
            })
            .map(|(name, _)| name.clone())
            .collect();
        if idle.is_empty() || !forget_idle {
            return;
        }
        let mut map = Self::write(shard);
        for name in idle {
            let forgotten = map.get(&name).is_some_and(|c| {
                let mut state = c.lock();
                state.forgotten = state.is_idle();
                state.forgotten
            });
            if forgotten {
                map.remove(&name);
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Every channel, shard by shard (each shard's read lock held only while it is copied).
    pub(super) fn all(&self) -> Vec<Arc<Channel>> {
        let mut all = Vec::with_capacity(self.held.load(Ordering::Relaxed));
        for shard in &*self.shards {
            all.extend(Self::read(shard).values().cloned());
        }
        all
    }

    /// Keeps the history within `max_bytes`: once past it, forgets the oldest publications
    /// until a tenth below it, so that the work is done once per tenth of the budget rather
    /// than on every publication. The history of channels nobody subscribes to goes first,
    /// oldest first, then that of channels with subscribers, oldest first: what fills memory
    /// is usually publications nobody listens to, and the subscribers of the others need
    /// their channel's history to fill a gap or recover after a reconnect. One thread at a
    /// time; others go on.
    pub(super) fn bound_history(&self) {
        let max = self.limits.max_bytes;
        if self.history_bytes.load(Ordering::Relaxed) <= max
            || self.evicting_history.swap(true, Ordering::Acquire)
        {
            return;
        }
        let target = max - max / 10;
        // The oldest entry of every channel with history: channels without subscribers
        // first, then by age, oldest first (a max-heap of reversed keys).
        type Key = (std::cmp::Reverse<bool>, std::cmp::Reverse<Instant>, usize);
        let mut heap: BinaryHeap<Key> = BinaryHeap::new();
        let channels = self.all();
        for (i, channel) in channels.iter().enumerate() {
            let state = channel.lock();
            if let Some(at) = state.history.oldest_at() {
                let subscribed = !state.subscribers.is_empty();
                heap.push((std::cmp::Reverse(subscribed), std::cmp::Reverse(at), i));
            }
        }
        let mut evicted = 0;
        while self.history_bytes.load(Ordering::Relaxed) > target {
            let Some((subscribed, _, i)) = heap.pop() else {
                break;
            };
            let mut state = channels[i].lock();
            if state.history.pop_front(&self.history_bytes) {
                evicted += 1;
            }
            if let Some(at) = state.history.oldest_at() {
                heap.push((subscribed, std::cmp::Reverse(at), i));
            }
        }
        self.evicted_publications
            .fetch_add(evicted, Ordering::Relaxed);
        // Channels left with neither subscribers nor history go at once.
        for channel in &channels {
            if channel.lock().is_idle() {
                self.forget_if_idle(&channel.name, channel);
            }
        }
        self.evicting_history.store(false, Ordering::Release);
    }

    /// Makes room for new channels: forgets the channels held only for their history, least
    /// recently published first, down to a tenth below `max_channels` (at least one).
    pub(super) fn forget_history_only_channels(&self) {
        if self.evicting_channels.swap(true, Ordering::Acquire) {
            return;
        }
        let max = self.limits.max_channels;
        let excess = self.held.load(Ordering::Relaxed) + 1;
        let excess = excess.saturating_sub(max - max / 10).max(1);
        let mut candidates: Vec<(Instant, Arc<Channel>)> = self
            .all()
            .into_iter()
            .filter_map(|channel| {
                let state = channel.lock();
                let newest = state.history.newest_at();
                let candidate = state.subscribers.is_empty();
                drop(state);
                candidate.then(|| (newest.unwrap_or_else(Instant::now), channel))
            })
            .collect();
        candidates.sort_by_key(|(at, _)| *at);
        let mut forgotten = 0;
        for (_, channel) in candidates.into_iter().take(excess) {
            let mut map = Self::write(self.shard_of(&channel.name));
            if !map
                .get(&channel.name)
                .is_some_and(|c| Arc::ptr_eq(c, &channel))
            {
                continue;
            }
            let mut state = channel.lock();
            if !state.subscribers.is_empty() {
                continue;
            }
            state.history.clear(&self.history_bytes);
            state.clear_keys(&self.keys_held);
            state.forgotten = true;
            drop(state);
            map.remove(&channel.name);
            self.held.fetch_sub(1, Ordering::Relaxed);
            forgotten += 1;
        }
        self.evicted_channels
            .fetch_add(forgotten, Ordering::Relaxed);
        self.evicting_channels.store(false, Ordering::Release);
    }

    /// The registry's figures for `/metrics`.
    pub(crate) fn usage(&self) -> ChannelUsage {
        ChannelUsage {
            held: self.held.load(Ordering::Relaxed),
            history_bytes: self.history_bytes.load(Ordering::Relaxed),
            evicted_publications: self.evicted_publications.load(Ordering::Relaxed),
            evicted_channels: self.evicted_channels.load(Ordering::Relaxed),
            idempotency_keys: self.keys_held.load(Ordering::Relaxed),
            idempotency_refused: self.keys_refused.load(Ordering::Relaxed),
            idempotency_evicted: self.keys_evicted.load(Ordering::Relaxed),
        }
    }
}

/// What the registry holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChannelUsage {
    /// Channels held (with subscribers or history).
    pub(crate) held: usize,
    /// Bytes of history over all channels.
    pub(crate) history_bytes: usize,
    /// Publications forgotten to stay within `WS_HISTORY_MAX_BYTES`.
    pub(crate) evicted_publications: u64,
    /// Channels forgotten to stay within `WS_MAX_CHANNELS`.
    pub(crate) evicted_channels: u64,
    /// Idempotency keys remembered.
    pub(crate) idempotency_keys: usize,
    /// Keyed publications refused because `WS_IDEMPOTENCY_MAX_KEYS` keys were held.
    pub(crate) idempotency_refused: u64,
    /// Keys forgotten before their window ended, to stay within `WS_IDEMPOTENCY_MAX_KEYS`.
    pub(crate) idempotency_evicted: u64,
}
