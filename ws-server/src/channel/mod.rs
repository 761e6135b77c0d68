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

mod bounds;
mod outcome;
mod replay;
mod state;

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use ws_protocol::{
    ChannelPosition, Position, WsMessage, publication_prefix, write_publication_after,
};

use crate::conflation_key::ConflationKey;
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::{Outbox, Outgoing};

pub(crate) use self::bounds::ChannelUsage;
pub use self::outcome::Published;
pub(crate) use self::outcome::{ChannelsFull, PublishRefused};
use self::replay::replay;
use self::state::{Channel, ChannelState, History};

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = ws_protocol::MAX_CHANNEL_NAME_LEN;

/// Shards of the registry.
const SHARDS: usize = 64;
/// What one kept publication costs besides its frame's bytes (the entry and the frame's
/// allocation), counted against `WS_HISTORY_MAX_BYTES`.
const ENTRY_OVERHEAD: usize = 64;

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
    /// How long an idempotency key is remembered.
    pub(crate) key_window: Duration,
    /// Idempotency keys remembered at once, over all channels.
    pub(crate) max_keys: usize,
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
            key_window: defaults.idempotency_window,
            max_keys: defaults.idempotency_max_keys,
        }
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
    /// Idempotency keys remembered over all channels, and keyed publications refused
    /// because `max_keys` were held.
    keys_held: AtomicUsize,
    keys_refused: AtomicU64,
    /// Keys forgotten before their window ended, to stay within `max_keys`.
    keys_evicted: AtomicU64,
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
            keys_held: AtomicUsize::new(0),
            keys_refused: AtomicU64::new(0),
            keys_evicted: AtomicU64::new(0),
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
                    prefix: publication_prefix(key).into_boxed_str(),
                    state: Mutex::new(ChannelState {
                        epoch: Arc::from(format!("{}-{generation}", self.hub_epoch)),
                        seq: 0,
                        subscribers: Vec::new(),
                        index: HashMap::new(),
                        history: History::default(),
                        keys: None,
                        forgotten: false,
                    }),
                })
            })
            .clone();
        Ok(channel)
    }

    /// Adds a subscriber and queues what the history holds of what it asks for (see
    /// [`replay`]): what followed `since`, or the last `rewind` publications. Returns the
    /// channel's shared name and position.
    ///
    /// # Errors
    /// [`ChannelsFull`] if the channel is new and there is no room for it.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        id: ConnectionId,
        outbox: &Arc<Outbox>,
        since: Option<&Position>,
        rewind: Option<u64>,
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
            let (recovered, replay_from) = replay(&state, &channel.name, outbox, since, rewind);
            let position = ChannelPosition {
                epoch: state.epoch.to_string(),
                seq: state.seq,
                recovered,
                replay_from,
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

    /// Publishes `data` on `name` without an idempotency key (see [`Self::publish_keyed`]).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn publish(&self, name: &str, data: &str) -> Published {
        // Only a key can be refused.
        self.publish_keyed(name, data, None, Instant::now())
            .unwrap_or_else(|_| Published::new(0, Some(0)))
    }

    /// Publishes `data` (one valid, portable JSON value) on `name` to every current
    /// subscriber, and keeps it in the history; `now` is the time of the frame that brought
    /// it (one clock read per frame serves the rate limit, the keys and the history).
    ///
    /// With `key`, a key seen on this channel within the idempotency window makes it a
    /// duplicate: nothing is published and the first publication's `seq` is returned. The
    /// check and the publication happen under the channel's lock, so two publishers racing
    /// with one key publish once.
    ///
    /// # Errors
    /// With a key only: [`PublishRefused`] when the key cannot be remembered.
    pub(crate) fn publish_keyed(
        &self,
        name: &str,
        data: &str,
        key: Option<&str>,
        now: Instant,
    ) -> Result<Published, PublishRefused> {
        loop {
            let channel = match self.channel(name) {
                Some(channel) => Some(channel),
                // A key needs the channel to be remembered in.
                None if key.is_some() => Some(
                    self.channel_or_create(name)
                        .map_err(|full| PublishRefused::ChannelsFull(full.0))?,
                ),
                // Kept for late subscribers only when there is a history to keep it in, and
                // room for one more channel.
                None if self.limits.size > 0 => self.channel_or_create(name).ok(),
                None => None,
            };
            let Some(channel) = channel else {
                return Ok(Published::new(0, Some(0)));
            };
            let mut state = channel.lock();
            if state.forgotten {
                // Forgotten since the lookup: its successor (if any) is the channel now.
                continue;
            }
            if let Some(key) = key {
                state.expire_keys(self.limits.key_window, &self.keys_held, now);
                let hash = state.key_hash(key);
                if let Some(first) = state.key_seq(hash) {
                    return Ok(Published::duplicate_of(first));
                }
                if self.keys_held.load(Ordering::Relaxed) >= self.limits.max_keys {
                    // Full: this channel's oldest key goes, so that a publisher at any rate
                    // keeps going (a key is needed only while its publication may still be
                    // sent again, which is never long). Refused only when other channels
                    // hold every key.
                    if !state.forget_oldest_key(&self.keys_held) {
                        self.keys_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(PublishRefused::KeysFull(self.limits.max_keys));
                    }
                    self.keys_evicted.fetch_add(1, Ordering::Relaxed);
                }
                let next = state.seq + 1;
                state.remember_key(hash, next, now, &self.keys_held);
            }
            state.seq += 1;
            let seq = state.seq;
            let recipients = Some(self.fan_out(&channel, &mut state, seq, data, now));
            drop(state);
            self.bound_history();
            return Ok(Published::new(seq, recipients));
        }
    }

    /// Delivers a publication sequenced elsewhere (the Redis broker): `seq` in `epoch`,
    /// already in order. A copy at or below the channel's `seq` is dropped. A new epoch (the
    /// cluster lost the channel's history) restarts the channel there and tells every
    /// subscriber with an unsolicited `Subscribed` (`recovered: false`) before the
    /// publication. Returns how many subscribers it was queued to; `None` if the channel is
    /// unknown here (nobody subscribes on this hub).
    pub(crate) fn deliver(&self, name: &str, epoch: &str, seq: u64, data: &str) -> Option<usize> {
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
                        replay_from: None,
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
        let recipients = self.fan_out(&channel, &mut state, seq, data, Instant::now());
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
                let frame = Self::encode(&channel, seq, data.get());
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

    /// Publication `seq` of `channel`, as it goes on the wire.
    fn encode(channel: &Channel, seq: u64, data: &str) -> Frame {
        let prefix = &channel.prefix;
        Frame::text_with(prefix.len() + data.len() + 32, |buf| {
            write_publication_after(buf, prefix, seq, data);
        })
    }

    /// Encodes publication `seq`, keeps it in the history and queues it to every subscriber.
    fn fan_out(
        &self,
        channel: &Channel,
        state: &mut ChannelState,
        seq: u64,
        data: &str,
        now: Instant,
    ) -> usize {
        let frame = Self::encode(channel, seq, data);
        if self.limits.size > 0 {
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

    /// How many channels have at least one subscriber.
    pub(crate) fn len(&self) -> usize {
        self.subscribed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
