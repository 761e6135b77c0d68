//! [`Channels`]: named channels, their subscribers, their publication counters and their
//! recent history.
//!
//! One publication takes the channel's own lock (not a global one), takes the next `seq`,
//! encodes the `Publication` once, keeps it in the channel's bounded history and queues the
//! same bytes to every subscriber without waiting, all in that one short critical section, so
//! every subscriber sees the channel in `seq` order. A subscribe may name the last position
//! its client saw: the missed publications still in the history are queued to it first, under
//! the same lock, so nothing is missed or repeated at the seam.
//!
//! A channel lives while it has subscribers or history. The history is bounded per channel
//! (count and age) and for the whole hub: past `WS_HISTORY_MAX_BYTES` the oldest publications
//! of any channel are forgotten first, and past `WS_MAX_CHANNELS` the channels held only for
//! their history are forgotten, least recently published first. A channel with neither
//! subscribers nor history is forgotten (then its `seq` starts again from 1 in a new epoch,
//! so clients never mistake the new sequence for the old one, and a recovery from before it
//! says `recovered: false`). Publishing to a channel nobody subscribes to keeps history, so
//! that a subscriber that reconnects (or a new one) can still get what it missed.
//!
//! The registry is split into shards, each with its own lock, so that creating, forgetting
//! and sweeping channels holds one shard at a time, never every channel at once.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use ws_protocol::{ChannelPosition, Position, WsMessage, write_publication};

use crate::conflation_key::ConflationKey;
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::{Outbox, Outgoing};

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = ws_protocol::MAX_CHANNEL_NAME_LEN;

/// Shards of the registry.
const SHARDS: usize = 64;
/// What one kept publication costs besides its frame's bytes (the entry and the frame's
/// allocation), counted against `WS_HISTORY_MAX_BYTES`.
const ENTRY_OVERHEAD: usize = 64;

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The publication's `seq` in its channel; 0 when nothing kept or received it.
    pub seq: u64,
    /// How many subscribers on this hub it was queued to; `None` with the Redis broker, where
    /// every hub delivers it as it reads it back from Redis.
    pub recipients: Option<usize>,
}

/// The hub holds `WS_MAX_CHANNELS` channels, all with subscribers: no new one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelsFull(pub(crate) usize);

impl std::fmt::Display for ChannelsFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the hub holds its maximum of {} channels (WS_MAX_CHANNELS), all with subscribers",
            self.0
        )
    }
}

/// How much history the hub keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    /// Publications kept per channel (0: no history, no recovery).
    pub(crate) size: usize,
    /// How long a publication is kept.
    pub(crate) ttl: Duration,
    /// Bytes of history kept over all channels.
    pub(crate) max_bytes: usize,
    /// Channels held at once.
    pub(crate) max_channels: usize,
}

impl HistoryLimits {
    /// Per-channel limits, with the hub-wide bounds at their defaults.
    pub(crate) fn per_channel(size: usize, ttl: Duration) -> Self {
        let defaults = ws_protocol::WebSocketConfig::default();
        Self {
            size,
            ttl,
            max_bytes: defaults.history_max_bytes,
            max_channels: defaults.max_channels,
        }
    }
}

struct Channel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

/// A channel's recent publications, oldest first: `(seq, when, frame)`, and what they cost.
#[derive(Default)]
struct History {
    entries: VecDeque<(u64, Instant, Frame)>,
    bytes: usize,
}

impl History {
    fn cost(frame: &Frame) -> usize {
        frame.as_bytes().len() + ENTRY_OVERHEAD
    }

    fn push(&mut self, total: &AtomicUsize, seq: u64, at: Instant, frame: Frame) {
        let cost = Self::cost(&frame);
        self.bytes += cost;
        total.fetch_add(cost, Ordering::Relaxed);
        self.entries.push_back((seq, at, frame));
    }

    fn pop_front(&mut self, total: &AtomicUsize) -> bool {
        let Some((_, _, frame)) = self.entries.pop_front() else {
            return false;
        };
        let cost = Self::cost(&frame);
        self.bytes -= cost;
        total.fetch_sub(cost, Ordering::Relaxed);
        true
    }

    fn clear(&mut self, total: &AtomicUsize) {
        total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.entries.clear();
    }

    fn oldest_at(&self) -> Option<Instant> {
        self.entries.front().map(|(_, at, _)| *at)
    }

    fn newest_at(&self) -> Option<Instant> {
        self.entries.back().map(|(_, at, _)| *at)
    }
}

struct ChannelState {
    /// The incarnation of the channel's sequence: this hub's (embedded broker) or the
    /// cluster's (Redis broker).
    epoch: Arc<str>,
    seq: u64,
    /// A vector, iterated on every publication; `index` finds an entry to remove it.
    subscribers: Vec<(ConnectionId, Arc<Outbox>)>,
    index: HashMap<ConnectionId, usize>,
    history: History,
    /// Removed from the registry: a publisher that found the channel just before must look
    /// it up again rather than keep history nobody can reach.
    forgotten: bool,
}

impl ChannelState {
    /// Adds a subscriber; `true` if it was not one already.
    fn insert(&mut self, id: ConnectionId, outbox: &Arc<Outbox>) -> bool {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(id) {
            slot.insert(self.subscribers.len());
            self.subscribers.push((id, outbox.clone()));
            return true;
        }
        false
    }

    /// Removes a subscriber; `true` if it was one.
    fn remove(&mut self, id: ConnectionId) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        self.subscribers.swap_remove(i);
        if let Some((moved, _)) = self.subscribers.get(i) {
            self.index.insert(*moved, i);
        }
        true
    }

    fn trim(&mut self, limits: HistoryLimits, total: &AtomicUsize, now: Instant) {
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
    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.entries.is_empty()
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Channel>>>;

/// The channel registry.
pub(crate) struct Channels {
    shards: Box<[Shard]>,
    limits: HistoryLimits,
    /// Reads each publication's key when the hub conflates for slow consumers.
    conflation: Option<ConflationKey>,
    /// This hub's incarnation, part of every epoch: a restarted hub never repeats one.
    hub_epoch: String,
    generation: AtomicU64,
    /// Bytes of history over all channels (see [`History::cost`]).
    history_bytes: AtomicUsize,
    /// Channels in the registry.
    held: AtomicUsize,
    /// Channels with at least one subscriber.
    subscribed: AtomicUsize,
    /// Publications forgotten to keep history within `max_bytes`, and channels forgotten to
    /// stay within `max_channels`.
    evicted_publications: AtomicU64,
    evicted_channels: AtomicU64,
    /// Set while one thread evicts history or channels, so that others do not wait for it.
    evicting_history: AtomicBool,
    evicting_channels: AtomicBool,
}

impl Default for Channels {
    fn default() -> Self {
        Self::new(HistoryLimits::per_channel(0, Duration::ZERO), None)
    }
}

impl Channels {
    pub(crate) fn new(limits: HistoryLimits, conflation: Option<ConflationKey>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            limits,
            conflation,
            hub_epoch: format!("{:x}{:x}", nanos, std::process::id()),
            generation: AtomicU64::new(0),
            history_bytes: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            evicted_publications: AtomicU64::new(0),
            evicted_channels: AtomicU64::new(0),
            evicting_history: AtomicBool::new(false),
            evicting_channels: AtomicBool::new(false),
        }
    }

    fn shard_of(&self, name: &str) -> &Shard {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    fn read(shard: &Shard) -> RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Channel>>> {
        shard.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<Channel>>> {
        shard.write().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        Self::read(self.shard_of(name)).get(name).cloned()
    }

    /// The channel, created if missing; `Err` if it is missing and no channel can be
    /// forgotten to make room for it.
    fn channel_or_create(&self, name: &str) -> Result<Arc<Channel>, ChannelsFull> {
        if let Some(channel) = self.channel(name) {
            return Ok(channel);
        }
        if self.held.load(Ordering::Relaxed) >= self.limits.max_channels {
            self.forget_history_only_channels();
            if self.held.load(Ordering::Relaxed) >= self.limits.max_channels {
                return Err(ChannelsFull(self.limits.max_channels));
            }
        }
        let mut map = Self::write(self.shard_of(name));
        let channel = map
            .entry(Arc::from(name))
            .or_insert_with_key(|key| {
                self.held.fetch_add(1, Ordering::Relaxed);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                Arc::new(Channel {
                    name: key.clone(),
                    state: Mutex::new(ChannelState {
                        epoch: Arc::from(format!("{}-{generation}", self.hub_epoch)),
                        seq: 0,
                        subscribers: Vec::new(),
                        index: HashMap::new(),
                        history: History::default(),
                        forgotten: false,
                    }),
                })
            })
            .clone();
        Ok(channel)
    }

    /// Adds a subscriber and, when `since` is given and the history still reaches back to it,
    /// queues the publications it missed. Returns the channel's shared name and position.
    ///
    /// # Errors
    /// [`ChannelsFull`] if the channel is new and there is no room for it.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        id: ConnectionId,
        outbox: &Arc<Outbox>,
        since: Option<&Position>,
    ) -> Result<(Arc<str>, ChannelPosition), ChannelsFull> {
        loop {
            let channel = self.channel_or_create(name)?;
            // Locks are always taken shard first, then channel (as `unsubscribe` and `sweep`
            // do). Holding the shard's read lock keeps the channel from being forgotten while
            // the subscriber is added; if it was forgotten since the lookup, start again.
            let map = Self::read(self.shard_of(name));
            if !map.get(name).is_some_and(|c| Arc::ptr_eq(c, &channel)) {
                continue;
            }
            let mut state = channel.lock();
            state.trim(self.limits, &self.history_bytes, Instant::now());
            if state.insert(id, outbox) && state.subscribers.len() == 1 {
                self.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            // With `since` (a reconnect, or a gap noticed by a client already subscribed),
            // replay what came after it if the history still reaches back that far.
            let recovered = match since {
                None => true,
                Some(position) => {
                    let oldest = state
                        .history
                        .entries
                        .front()
                        .map_or(state.seq + 1, |(seq, _, _)| *seq);
                    let reachable = *position.epoch == *state.epoch
                        && position.seq <= state.seq
                        && oldest <= position.seq + 1;
                    // History seqs are consecutive, so the first one to replay is an index.
                    let skip = usize::try_from(position.seq + 1 - oldest.min(position.seq + 1))
                        .unwrap_or(usize::MAX);
                    let entries = &state.history.entries;
                    reachable
                        && outbox.push_replay(
                            &channel.name,
                            entries
                                .range(skip.min(entries.len())..)
                                .map(|(_, _, frame)| frame.clone()),
                        )
                }
            };
            let position = ChannelPosition {
                epoch: state.epoch.to_string(),
                seq: state.seq,
                recovered,
            };
            return Ok((channel.name.clone(), position));
        }
    }

    /// Removes a subscriber; the channel is forgotten once it has neither subscribers nor
    /// history. Only a channel that became idle takes its shard's write lock.
    pub(crate) fn unsubscribe(&self, name: &str, id: ConnectionId) {
        let Some(channel) = self.channel(name) else {
            return;
        };
        let idle = {
            let mut state = channel.lock();
            if state.remove(id) && state.subscribers.is_empty() {
                self.subscribed.fetch_sub(1, Ordering::Relaxed);
            }
            state.trim(self.limits, &self.history_bytes, Instant::now());
            state.is_idle()
        };
        if idle {
            self.forget_if_idle(name, &channel);
        }
    }

    /// Removes `channel` from its shard if it is still the one registered under `name` and
    /// still idle.
    fn forget_if_idle(&self, name: &str, channel: &Arc<Channel>) {
        let mut map = Self::write(self.shard_of(name));
        if !map.get(name).is_some_and(|c| Arc::ptr_eq(c, channel)) {
            return;
        }
        let mut state = channel.lock();
        if state.is_idle() {
            state.forgotten = true;
            drop(state);
            map.remove(name);
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets channels with no subscribers whose history has expired, one shard at a time
    /// (the server's sweep does the same with a yield between shards).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn sweep(&self) {
        for shard in 0..SHARDS {
            self.sweep_shard(shard);
        }
    }

    /// How many shards [`Channels::sweep_shard`] takes.
    pub(crate) const SHARDS: usize = SHARDS;

    /// Sweeps one shard: trims every channel's history by age under a read lock, then takes
    /// the write lock only to remove the channels that are idle.
    pub(crate) fn sweep_shard(&self, shard: usize) {
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<Arc<str>> = Self::read(shard)
            .iter()
            .filter(|(_, channel)| {
                let mut state = channel.lock();
                state.trim(self.limits, &self.history_bytes, now);
                state.is_idle()
            })
            .map(|(name, _)| name.clone())
            .collect();
        if idle.is_empty() {
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

    /// Publishes `data` on `name` to every current subscriber, and keeps it in the history.
    pub(crate) fn publish(&self, name: &str, data: &RawValue) -> Published {
        loop {
            let channel = match self.channel(name) {
                Some(channel) => Some(channel),
                // Kept for late subscribers only when there is a history to keep it in, and
                // room for one more channel.
                None if self.limits.size > 0 => self.channel_or_create(name).ok(),
                None => None,
            };
            let Some(channel) = channel else {
                return Published {
                    seq: 0,
                    recipients: Some(0),
                };
            };
            let mut state = channel.lock();
            if state.forgotten {
                // Forgotten since the lookup: its successor (if any) is the channel now.
                continue;
            }
            state.seq += 1;
            let seq = state.seq;
            let recipients = Some(self.fan_out(&channel, &mut state, seq, data));
            drop(state);
            self.bound_history();
            return Published { seq, recipients };
        }
    }

    /// Delivers a publication sequenced elsewhere (the Redis broker): `seq` in `epoch`,
    /// already in order. A copy at or below the channel's `seq` is dropped. A new epoch (the
    /// cluster lost the channel's history) restarts the channel there and tells every
    /// subscriber with an unsolicited `Subscribed` (`recovered: false`) before the
    /// publication. Returns how many subscribers it was queued to; `None` if the channel is
    /// unknown here (nobody subscribes on this hub).
    pub(crate) fn deliver(
        &self,
        name: &str,
        epoch: &str,
        seq: u64,
        data: &RawValue,
    ) -> Option<usize> {
        let channel = self.channel(name)?;
        let mut state = channel.lock();
        if state.forgotten {
            // Nobody subscribes here any more.
            return None;
        }
        if *state.epoch != *epoch {
            state.epoch = Arc::from(epoch);
            state.seq = seq.saturating_sub(1);
            state.history.clear(&self.history_bytes);
            let notice = WsMessage::Subscribed {
                channels: vec![name.to_owned()],
                positions: [(
                    name.to_owned(),
                    ChannelPosition {
                        epoch: epoch.to_owned(),
                        seq: state.seq,
                        recovered: false,
                    },
                )]
                .into(),
            };
            let frame = Frame::text(&notice.to_json());
            for (_, outbox) in &state.subscribers {
                outbox.push(Outgoing::direct(frame.clone()));
            }
        }
        if seq <= state.seq {
            return Some(0);
        }
        state.seq = seq;
        let recipients = self.fan_out(&channel, &mut state, seq, data);
        drop(state);
        self.bound_history();
        Some(recipients)
    }

    /// Starts (or restarts) a channel mirrored from elsewhere at `epoch`/`seq` with the
    /// recent publications `history` (`(seq, age, data)`, oldest first), unless it already
    /// stands there or further.
    ///
    /// # Errors
    /// [`ChannelsFull`] if the channel is new and there is no room for it.
    pub(crate) fn seed(
        &self,
        name: &str,
        epoch: &str,
        seq: u64,
        history: Vec<(u64, Duration, Box<RawValue>)>,
    ) -> Result<(), ChannelsFull> {
        loop {
            let channel = self.channel_or_create(name)?;
            let mut state = channel.lock();
            if state.forgotten {
                continue;
            }
            if *state.epoch == *epoch && state.seq >= seq {
                return Ok(());
            }
            state.epoch = Arc::from(epoch);
            state.seq = seq;
            state.history.clear(&self.history_bytes);
            let now = Instant::now();
            for (seq, age, data) in history {
                let frame = Self::encode(&channel.name, seq, &data);
                let at = now.checked_sub(age).unwrap_or(now);
                state.history.push(&self.history_bytes, seq, at, frame);
            }
            state.trim(self.limits, &self.history_bytes, now);
            drop(state);
            self.bound_history();
            return Ok(());
        }
    }

    /// Drops a channel's history and position (it is no longer mirrored here) unless it has
    /// subscribers; returns whether it had none.
    pub(crate) fn forget_if_unused(&self, name: &str) -> bool {
        let mut map = Self::write(self.shard_of(name));
        let unused = match map.get(name) {
            None => true,
            Some(channel) => {
                let mut state = channel.lock();
                let unused = state.subscribers.is_empty();
                if unused {
                    state.history.clear(&self.history_bytes);
                    state.forgotten = true;
                }
                unused
            }
        };
        if unused && map.remove(name).is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        unused
    }

    /// The epoch and `seq` a channel stands at here, if it is known.
    pub(crate) fn position(&self, name: &str) -> Option<(Arc<str>, u64)> {
        let channel = self.channel(name)?;
        let state = channel.lock();
        Some((state.epoch.clone(), state.seq))
    }

    fn encode(name: &str, seq: u64, data: &RawValue) -> Frame {
        Frame::text_with(name.len() + data.get().len() + 64, |buf| {
            write_publication(buf, name, seq, data);
        })
    }

    /// Encodes publication `seq`, keeps it in the history and queues it to every subscriber.
    fn fan_out(
        &self,
        channel: &Channel,
        state: &mut ChannelState,
        seq: u64,
        data: &RawValue,
    ) -> usize {
        let frame = Self::encode(&channel.name, seq, data);
        if self.limits.size > 0 {
            let now = Instant::now();
            state
                .history
                .push(&self.history_bytes, seq, now, frame.clone());
            state.trim(self.limits, &self.history_bytes, now);
        }
        let key = self.conflation.as_ref().and_then(|k| k.of(data));
        let item = Outgoing::publication(channel.name.clone(), frame, key);
        state
            .subscribers
            .iter()
            .filter(|(_, outbox)| outbox.push(item.clone()))
            .count()
    }

    /// Every channel, shard by shard (each shard's read lock held only while it is copied).
    fn all(&self) -> Vec<Arc<Channel>> {
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
    fn bound_history(&self) {
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
    fn forget_history_only_channels(&self) {
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

    /// How many channels have at least one subscriber.
    pub(crate) fn len(&self) -> usize {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// The registry's figures for `/metrics`.
    pub(crate) fn usage(&self) -> ChannelUsage {
        ChannelUsage {
            held: self.held.load(Ordering::Relaxed),
            history_bytes: self.history_bytes.load(Ordering::Relaxed),
            evicted_publications: self.evicted_publications.load(Ordering::Relaxed),
            evicted_channels: self.evicted_channels.load(Ordering::Relaxed),
        }
    }
}

/// What the registry holds, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelUsage {
    /// Channels held (with subscribers or history).
    pub(crate) held: usize,
    /// Bytes of history over all channels.
    pub(crate) history_bytes: usize,
    /// Publications forgotten to stay within `WS_HISTORY_MAX_BYTES`.
    pub(crate) evicted_publications: u64,
    /// Channels forgotten to stay within `WS_MAX_CHANNELS`.
    pub(crate) evicted_channels: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use ws_protocol::{Payload, SlowConsumerPolicy};

    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(16, 16, SlowConsumerPolicy::Disconnect))
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        outbox.take(&mut batch, &mut Vec::new(), usize::MAX);
        batch
            .iter()
            .map(|o| o.frame().payload().to_owned())
            .collect()
    }

    #[test]
    fn publications_reach_only_subscribers_with_consecutive_seq() {
        let channels = Channels::default();
        let (a, b) = (outbox(), outbox());
        channels.subscribe("x", ConnectionId(1), &a, None).unwrap();
        channels.subscribe("y", ConnectionId(2), &b, None).unwrap();
        let data = Payload::from_json("1").unwrap();
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 1,
                recipients: Some(1)
            }
        );
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 2,
                recipients: Some(1)
            }
        );
        assert_eq!(
            texts(&a),
            [
                r#"{"type":"Publication","channel":"x","seq":1,"data":1}"#,
                r#"{"type":"Publication","channel":"x","seq":2,"data":1}"#
            ]
        );
        assert!(texts(&b).is_empty());
    }

    #[test]
    fn the_last_unsubscribe_removes_the_channel() {
        let channels = Channels::default();
        let (a, b) = (outbox(), outbox());
        channels.subscribe("x", ConnectionId(1), &a, None).unwrap();
        channels.subscribe("x", ConnectionId(2), &b, None).unwrap();
        channels.subscribe("x", ConnectionId(2), &b, None).unwrap();
        channels.unsubscribe("x", ConnectionId(1));
        assert_eq!(channels.len(), 1);
        let data = Payload::from_json("2").unwrap();
        assert_eq!(channels.publish("x", data.as_raw()).recipients, Some(1));
        assert!(texts(&a).is_empty());
        assert_eq!(texts(&b).len(), 1);
        channels.unsubscribe("x", ConnectionId(2));
        assert_eq!(channels.len(), 0);
        let data = Payload::from_json("1").unwrap();
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 0,
                recipients: Some(0)
            }
        );
        assert_eq!(channels.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscribe_with_since_replays_exactly_what_was_missed() {
        let channels = Channels::new(HistoryLimits::per_channel(3, Duration::from_secs(10)), None);
        let a = outbox();
        let data = Payload::from_json("0").unwrap();
        let (_, start) = channels.subscribe("x", ConnectionId(1), &a, None).unwrap();
        assert_eq!((start.seq, start.recovered), (0, true));
        for _ in 0..5 {
            channels.publish("x", data.as_raw());
        }
        texts(&a);
        channels.unsubscribe("x", ConnectionId(1));
        assert_eq!(channels.len(), 0, "no subscriber");
        // History holds 3..=5: from 3 on is recoverable, from 1 is not.
        let since = Position {
            epoch: start.epoch.clone(),
            seq: 2,
        };
        let (_, position) = channels
            .subscribe("x", ConnectionId(1), &a, Some(&since))
            .unwrap();
        assert_eq!((position.seq, position.recovered), (5, true));
        assert_eq!(texts(&a).len(), 3);
        channels.unsubscribe("x", ConnectionId(1));
        let too_old = Position {
            epoch: start.epoch.clone(),
            seq: 1,
        };
        let (_, position) = channels
            .subscribe("x", ConnectionId(1), &a, Some(&too_old))
            .unwrap();
        assert!(!position.recovered);
        assert!(texts(&a).is_empty());
        channels.unsubscribe("x", ConnectionId(1));
        let other_epoch = Position {
            epoch: "elsewhere".into(),
            seq: 4,
        };
        let (_, position) = channels
            .subscribe("x", ConnectionId(1), &a, Some(&other_epoch))
            .unwrap();
        assert!(!position.recovered);
        channels.unsubscribe("x", ConnectionId(1));
        // Once the history expires the channel is forgotten, and a new epoch begins.
        tokio::time::advance(Duration::from_secs(11)).await;
        channels.sweep();
        let (_, fresh) = channels.subscribe("x", ConnectionId(1), &a, None).unwrap();
        assert_ne!(fresh.epoch, start.epoch);
        assert_eq!(fresh.seq, 0);
    }

    #[test]
    fn concurrent_subscribes_unsubscribes_publishes_and_sweeps_do_not_deadlock() {
        let channels = Arc::new(Channels::new(
            HistoryLimits::per_channel(8, Duration::ZERO),
            None,
        ));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let channels = channels.clone();
                std::thread::spawn(move || {
                    let outbox = Arc::new(Outbox::new(
                        1 << 16,
                        1 << 16,
                        SlowConsumerPolicy::DropOldest,
                    ));
                    let data = Payload::from_json("1").unwrap();
                    for i in 0..3000u64 {
                        let name = format!("c{}", i % 5);
                        match (i + t) % 4 {
                            0 => {
                                channels
                                    .subscribe(&name, ConnectionId(t), &outbox, None)
                                    .unwrap();
                            }
                            1 => channels.unsubscribe(&name, ConnectionId(t)),
                            2 => {
                                channels.publish(&name, data.as_raw());
                            }
                            _ => channels.sweep(),
                        }
                    }
                    for c in 0..5 {
                        channels.unsubscribe(&format!("c{c}"), ConnectionId(t));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
        channels.sweep();
        assert_eq!(channels.len(), 0);
        assert_eq!(channels.usage().held, 0, "idle channels were not forgotten");
        assert_eq!(channels.usage().history_bytes, 0);
    }

    fn bounded(size: usize, max_bytes: usize, max_channels: usize) -> Channels {
        Channels::new(
            HistoryLimits {
                size,
                ttl: Duration::from_secs(60),
                max_bytes,
                max_channels,
            },
            None,
        )
    }

    #[test]
    fn history_over_all_channels_stays_within_its_bytes_oldest_forgotten_first() {
        let channels = bounded(100, 20_000, 1_000_000);
        let data = Payload::from_json(format!("\"{}\"", "x".repeat(100))).unwrap();
        // 1,000 channels nobody subscribes to, one publication each (~250 bytes with the
        // entry's cost): far past 20,000 bytes.
        for i in 0..1000 {
            assert_eq!(channels.publish(&format!("c{i}"), data.as_raw()).seq, 1);
        }
        let usage = channels.usage();
        assert!(usage.history_bytes <= 20_000, "{usage:?}");
        assert!(usage.evicted_publications > 900, "{usage:?}");
        assert!(
            usage.held < 100,
            "channels without history are forgotten: {usage:?}"
        );
        // The newest survive; the oldest are gone, and a recovery from them says so.
        assert!(channels.position("c999").is_some());
        assert!(channels.position("c0").is_none());
        let a = outbox();
        let since = Position {
            epoch: "any".into(),
            seq: 0,
        };
        let (_, position) = channels
            .subscribe("c0", ConnectionId(1), &a, Some(&since))
            .unwrap();
        assert!(!position.recovered);

        // A channel with a subscriber keeps its history while others can give theirs up.
        let channels = bounded(100, 20_000, 1_000_000);
        let b = outbox();
        let (_, start) = channels
            .subscribe("watched", ConnectionId(2), &b, None)
            .unwrap();
        for _ in 0..20 {
            channels.publish("watched", data.as_raw());
        }
        for i in 0..1000 {
            channels.publish(&format!("c{i}"), data.as_raw());
        }
        // (From 10: the test outbox replays at most 16.)
        let since = Position {
            epoch: start.epoch,
            seq: 10,
        };
        let (_, position) = channels
            .subscribe("watched", ConnectionId(3), &outbox(), Some(&since))
            .unwrap();
        assert!(
            position.recovered,
            "the watched channel's history was evicted: {position:?} {:?}",
            channels.usage()
        );
        assert!(channels.usage().history_bytes <= 20_000);
    }

    #[test]
    fn past_the_channel_bound_history_only_channels_go_first_and_subscribed_ones_stay() {
        let channels = bounded(10, usize::MAX, 100);
        let data = Payload::from_json("1").unwrap();
        let a = outbox();
        channels
            .subscribe("kept", ConnectionId(1), &a, None)
            .unwrap();
        for i in 0..1000 {
            channels.publish(&format!("c{i}"), data.as_raw());
        }
        let usage = channels.usage();
        assert!(usage.held <= 100, "{usage:?}");
        assert!(usage.evicted_channels >= 900, "{usage:?}");
        assert!(channels.position("kept").is_some());
        assert!(channels.position("c999").is_some(), "the newest stays");
        assert!(channels.position("c0").is_none(), "the oldest went");

        // When every channel has a subscriber, a new one is refused rather than evicting.
        let full = bounded(10, usize::MAX, 2);
        full.subscribe("a", ConnectionId(1), &a, None).unwrap();
        full.subscribe("b", ConnectionId(1), &a, None).unwrap();
        assert_eq!(
            full.subscribe("c", ConnectionId(1), &a, None).unwrap_err(),
            ChannelsFull(2)
        );
        assert_eq!(full.publish("c", data.as_raw()).seq, 0);
        assert_eq!(full.publish("a", data.as_raw()).seq, 1);
    }

    #[test]
    fn a_sweep_stuck_on_one_channel_holds_up_no_other_shard() {
        // One channel's lock is held (a long fan-out, say) while the sweep reaches it: the
        // sweep waits, holding only that channel's shard. Subscribing elsewhere, publishing
        // and unsubscribing must go on meanwhile; a sweep that held one lock over every
        // channel stalled them all (548 ms when 4,000 connections closed).
        let channels = Arc::new(Channels::new(
            HistoryLimits::per_channel(8, Duration::from_secs(60)),
            None,
        ));
        let a = outbox();
        channels
            .subscribe("busy", ConnectionId(1), &a, None)
            .unwrap();
        let busy = channels.channel("busy").unwrap();
        let busy_shard = (0..SHARDS)
            .find(|&i| Channels::read(&channels.shards[i]).contains_key("busy"))
            .unwrap();
        let held = busy.lock();
        let sweeper = {
            let channels = channels.clone();
            std::thread::spawn(move || channels.sweep_shard(busy_shard))
        };
        std::thread::sleep(Duration::from_millis(20));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = {
            let channels = channels.clone();
            std::thread::spawn(move || {
                let b = outbox();
                let data = Payload::from_json("1").unwrap();
                for i in 0..200 {
                    let name = format!("other:{i}");
                    if std::ptr::eq(channels.shard_of(&name), &channels.shards[busy_shard]) {
                        continue;
                    }
                    channels
                        .subscribe(&name, ConnectionId(2), &b, None)
                        .unwrap();
                    channels.publish(&name, data.as_raw());
                    channels.unsubscribe(&name, ConnectionId(2));
                }
                let _ = done_tx.send(());
            })
        };
        let went_on = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        drop(held);
        sweeper.join().unwrap();
        worker.join().unwrap();
        assert!(went_on, "the other shards waited for the stuck sweep");
    }
}
