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
//! A channel lives while it has subscribers or history; the history is bounded by count and
//! by age, and a channel with neither is forgotten (then its `seq` starts again from 1 in a
//! new epoch, so clients never mistake the new sequence for the old one).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use ws_protocol::{ChannelPosition, Position, WsMessage, write_publication};

use crate::conflation_key::ConflationKey;
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::{Outbox, Outgoing};

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 256;

/// Whether `name` is a channel name the hub accepts: 1 to [`MAX_CHANNEL_NAME_LEN`] bytes.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_NAME_LEN
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The publication's `seq` in its channel; 0 when nothing kept or received it.
    pub seq: u64,
    /// How many subscribers on this hub it was queued to; `None` with the Redis broker, where
    /// every hub delivers it as it reads it back from Redis.
    pub recipients: Option<usize>,
}

/// How much history each channel keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    /// Publications kept per channel (0: no history, no recovery).
    pub(crate) size: usize,
    /// How long a publication is kept.
    pub(crate) ttl: Duration,
}

struct Channel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    /// The incarnation of the channel's sequence: this hub's (embedded broker) or the
    /// cluster's (Redis broker).
    epoch: Arc<str>,
    seq: u64,
    /// A vector, iterated on every publication; `index` finds an entry to remove it.
    subscribers: Vec<(ConnectionId, Arc<Outbox>)>,
    index: HashMap<ConnectionId, usize>,
    /// Recent publications, oldest first: `(seq, when, frame)`.
    history: VecDeque<(u64, Instant, Frame)>,
}

impl ChannelState {
    fn insert(&mut self, id: ConnectionId, outbox: &Arc<Outbox>) -> bool {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(id) {
            slot.insert(self.subscribers.len());
            self.subscribers.push((id, outbox.clone()));
            return true;
        }
        false
    }

    fn remove(&mut self, id: ConnectionId) {
        if let Some(i) = self.index.remove(&id) {
            self.subscribers.swap_remove(i);
            if let Some((moved, _)) = self.subscribers.get(i) {
                self.index.insert(*moved, i);
            }
        }
    }

    fn trim(&mut self, limits: HistoryLimits, now: Instant) {
        while self.history.len() > limits.size {
            self.history.pop_front();
        }
        while self
            .history
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) > limits.ttl)
        {
            self.history.pop_front();
        }
    }

    /// Forgettable: nobody listens and nothing is kept.
    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The channel registry.
pub(crate) struct Channels {
    map: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    limits: HistoryLimits,
    /// Reads each publication's key when the hub conflates for slow consumers.
    conflation: Option<ConflationKey>,
    /// This hub's incarnation, part of every epoch: a restarted hub never repeats one.
    hub_epoch: String,
    generation: AtomicU64,
}

impl Default for Channels {
    fn default() -> Self {
        Self::new(
            HistoryLimits {
                size: 0,
                ttl: Duration::ZERO,
            },
            None,
        )
    }
}

impl Channels {
    pub(crate) fn new(limits: HistoryLimits, conflation: Option<ConflationKey>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            map: RwLock::default(),
            limits,
            conflation,
            hub_epoch: format!("{:x}{:x}", nanos, std::process::id()),
            generation: AtomicU64::new(0),
        }
    }

    fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The channel, created if missing.
    fn channel_or_create(&self, name: &str) -> Arc<Channel> {
        if let Some(channel) = self.channel(name) {
            return channel;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.entry(Arc::from(name))
            .or_insert_with_key(|key| {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                Arc::new(Channel {
                    name: key.clone(),
                    state: Mutex::new(ChannelState {
                        epoch: Arc::from(format!("{}-{generation}", self.hub_epoch)),
                        seq: 0,
                        subscribers: Vec::new(),
                        index: HashMap::new(),
                        history: VecDeque::new(),
                    }),
                })
            })
            .clone()
    }

    /// Adds a subscriber and, when `since` is given and the history still reaches back to it,
    /// queues the publications it missed. Returns the channel's shared name and position.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        id: ConnectionId,
        outbox: &Arc<Outbox>,
        since: Option<&Position>,
    ) -> (Arc<str>, ChannelPosition) {
        loop {
            let channel = self.channel_or_create(name);
            // Locks are always taken map first, then channel (as `unsubscribe` and `sweep`
            // do). Holding the map's read lock keeps the channel from being forgotten while
            // the subscriber is added; if it was forgotten since the lookup, start again.
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if !map.get(name).is_some_and(|c| Arc::ptr_eq(c, &channel)) {
                continue;
            }
            let mut state = channel.lock();
            state.trim(self.limits, Instant::now());
            state.insert(id, outbox);
            // With `since` (a reconnect, or a gap noticed by a client already subscribed),
            // replay what came after it if the history still reaches back that far.
            let recovered = match since {
                None => true,
                Some(position) => {
                    let oldest = state
                        .history
                        .front()
                        .map_or(state.seq + 1, |(seq, _, _)| *seq);
                    let reachable = *position.epoch == *state.epoch
                        && position.seq <= state.seq
                        && oldest <= position.seq + 1;
                    // History seqs are consecutive, so the first one to replay is an index.
                    let skip = usize::try_from(position.seq + 1 - oldest.min(position.seq + 1))
                        .unwrap_or(usize::MAX);
                    reachable
                        && outbox.push_replay(
                            &channel.name,
                            state
                                .history
                                .range(skip.min(state.history.len())..)
                                .map(|(_, _, frame)| frame.clone()),
                        )
                }
            };
            let position = ChannelPosition {
                epoch: state.epoch.to_string(),
                seq: state.seq,
                recovered,
            };
            return (channel.name.clone(), position);
        }
    }

    /// Removes a subscriber; the channel is forgotten once it has neither subscribers nor
    /// history.
    pub(crate) fn unsubscribe(&self, name: &str, id: ConnectionId) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(channel) = map.get(name) else { return };
        let idle = {
            let mut state = channel.lock();
            state.remove(id);
            state.trim(self.limits, Instant::now());
            state.is_idle()
        };
        if idle {
            map.remove(name);
        }
    }

    /// Forgets channels with no subscribers whose history has expired.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, channel| {
            let mut state = channel.lock();
            state.trim(self.limits, now);
            !state.is_idle()
        });
    }

    /// Publishes `data` on `name` to every current subscriber, and keeps it in the history.
    pub(crate) fn publish(&self, name: &str, data: &RawValue) -> Published {
        let channel = match self.channel(name) {
            Some(channel) => channel,
            // Kept for late subscribers only when there is a history to keep it in.
            None if self.limits.size > 0 => self.channel_or_create(name),
            None => {
                return Published {
                    seq: 0,
                    recipients: Some(0),
                };
            }
        };
        let mut state = channel.lock();
        state.seq += 1;
        let seq = state.seq;
        let recipients = Some(self.fan_out(&channel, &mut state, seq, data));
        Published { seq, recipients }
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
        if *state.epoch != *epoch {
            state.epoch = Arc::from(epoch);
            state.seq = seq.saturating_sub(1);
            state.history.clear();
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
        Some(self.fan_out(&channel, &mut state, seq, data))
    }

    /// Starts (or restarts) a channel mirrored from elsewhere at `epoch`/`seq` with the
    /// recent publications `history` (`(seq, age, data)`, oldest first), unless it already
    /// stands there or further.
    pub(crate) fn seed(
        &self,
        name: &str,
        epoch: &str,
        seq: u64,
        history: Vec<(u64, Duration, Box<RawValue>)>,
    ) {
        let channel = self.channel_or_create(name);
        let mut state = channel.lock();
        if *state.epoch == *epoch && state.seq >= seq {
            return;
        }
        state.epoch = Arc::from(epoch);
        state.seq = seq;
        state.history.clear();
        let now = Instant::now();
        for (seq, age, data) in history {
            let frame = Self::encode(&channel.name, seq, &data);
            state
                .history
                .push_back((seq, now.checked_sub(age).unwrap_or(now), frame));
        }
        state.trim(self.limits, now);
    }

    /// Drops a channel's history and position (it is no longer mirrored here) unless it has
    /// subscribers; returns whether it had none.
    pub(crate) fn forget_if_unused(&self, name: &str) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let unused = map
            .get(name)
            .is_none_or(|channel| channel.lock().subscribers.is_empty());
        if unused {
            map.remove(name);
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
            state.history.push_back((seq, now, frame.clone()));
            state.trim(self.limits, now);
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
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| !c.lock().subscribers.is_empty())
            .count()
    }
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
        outbox.take(&mut batch, &mut Vec::new());
        batch
            .iter()
            .map(|o| o.frame().payload().to_owned())
            .collect()
    }

    #[test]
    fn publications_reach_only_subscribers_with_consecutive_seq() {
        let channels = Channels::default();
        let (a, b) = (outbox(), outbox());
        channels.subscribe("x", ConnectionId(1), &a, None);
        channels.subscribe("y", ConnectionId(2), &b, None);
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
        channels.subscribe("x", ConnectionId(1), &a, None);
        channels.subscribe("x", ConnectionId(2), &b, None);
        channels.subscribe("x", ConnectionId(2), &b, None);
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
        let channels = Channels::new(
            HistoryLimits {
                size: 3,
                ttl: Duration::from_secs(10),
            },
            None,
        );
        let a = outbox();
        let data = Payload::from_json("0").unwrap();
        let (_, start) = channels.subscribe("x", ConnectionId(1), &a, None);
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
        let (_, position) = channels.subscribe("x", ConnectionId(1), &a, Some(&since));
        assert_eq!((position.seq, position.recovered), (5, true));
        assert_eq!(texts(&a).len(), 3);
        channels.unsubscribe("x", ConnectionId(1));
        let too_old = Position {
            epoch: start.epoch.clone(),
            seq: 1,
        };
        let (_, position) = channels.subscribe("x", ConnectionId(1), &a, Some(&too_old));
        assert!(!position.recovered);
        assert!(texts(&a).is_empty());
        channels.unsubscribe("x", ConnectionId(1));
        let other_epoch = Position {
            epoch: "elsewhere".into(),
            seq: 4,
        };
        let (_, position) = channels.subscribe("x", ConnectionId(1), &a, Some(&other_epoch));
        assert!(!position.recovered);
        channels.unsubscribe("x", ConnectionId(1));
        // Once the history expires the channel is forgotten, and a new epoch begins.
        tokio::time::advance(Duration::from_secs(11)).await;
        channels.sweep();
        let (_, fresh) = channels.subscribe("x", ConnectionId(1), &a, None);
        assert_ne!(fresh.epoch, start.epoch);
        assert_eq!(fresh.seq, 0);
    }

    #[test]
    fn concurrent_subscribes_unsubscribes_publishes_and_sweeps_do_not_deadlock() {
        let channels = Arc::new(Channels::new(
            HistoryLimits {
                size: 8,
                ttl: Duration::ZERO,
            },
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
                                channels.subscribe(&name, ConnectionId(t), &outbox, None);
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
        assert!(
            channels.map.read().unwrap().is_empty(),
            "idle channels were not forgotten"
        );
    }
}
