//! [`Channels`]: named channels, their subscribers and their publication counters.
//!
//! One publication takes the channel's own lock (not a global one), takes the next `seq`,
//! encodes the `Publication` once and queues the same bytes to every subscriber without
//! waiting, all in that one short critical section, so every subscriber sees the channel in
//! `seq` order. A channel with no subscribers is removed and takes no memory; its `seq` then
//! starts again from 1 with its next subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::value::RawValue;
use ws_protocol::write_publication;

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
    /// The publication's `seq` in its channel; 0 when the channel had no subscriber.
    pub seq: u64,
    /// How many subscribers it was queued to.
    pub recipients: usize,
}

struct Channel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    seq: u64,
    /// A vector, iterated on every publication; `index` finds an entry to remove it.
    subscribers: Vec<(ConnectionId, Arc<Outbox>)>,
    index: HashMap<ConnectionId, usize>,
}

impl ChannelState {
    fn insert(&mut self, id: ConnectionId, outbox: &Arc<Outbox>) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(id) {
            slot.insert(self.subscribers.len());
            self.subscribers.push((id, outbox.clone()));
        }
    }

    fn remove(&mut self, id: ConnectionId) {
        if let Some(i) = self.index.remove(&id) {
            self.subscribers.swap_remove(i);
            if let Some((moved, _)) = self.subscribers.get(i) {
                self.index.insert(*moved, i);
            }
        }
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The channel registry.
#[derive(Default)]
pub(crate) struct Channels {
    map: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
}

impl Channels {
    /// Adds a subscriber; returns the channel's shared name. Idempotent.
    pub(crate) fn subscribe(&self, name: &str, id: ConnectionId, outbox: &Arc<Outbox>) -> Arc<str> {
        {
            // The common case: the channel exists. Holding the read lock while inserting keeps
            // `unsubscribe` (which needs the write lock to remove an empty channel) from
            // removing the channel under us.
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(channel) = map.get(name) {
                channel.lock().insert(id, outbox);
                return channel.name.clone();
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let channel = map.entry(Arc::from(name)).or_insert_with_key(|key| {
            Arc::new(Channel {
                name: key.clone(),
                state: Mutex::new(ChannelState {
                    seq: 0,
                    subscribers: Vec::new(),
                    index: HashMap::new(),
                }),
            })
        });
        channel.lock().insert(id, outbox);
        channel.name.clone()
    }

    /// Removes a subscriber, and the channel with it if it was the last.
    pub(crate) fn unsubscribe(&self, name: &str, id: ConnectionId) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(channel) = map.get(name) else { return };
        let empty = {
            let mut state = channel.lock();
            state.remove(id);
            state.subscribers.is_empty()
        };
        if empty {
            map.remove(name);
        }
    }

    /// Publishes `data` on `name` to every current subscriber.
    pub(crate) fn publish(&self, name: &str, data: &RawValue) -> Published {
        let channel = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            match map.get(name) {
                Some(channel) => channel.clone(),
                None => {
                    return Published {
                        seq: 0,
                        recipients: 0,
                    };
                }
            }
        };
        let mut state = channel.lock();
        state.seq += 1;
        let seq = state.seq;
        let item = Outgoing {
            channel: Some(channel.name.clone()),
            frame: Frame::text_with(channel.name.len() + data.get().len() + 64, |buf| {
                write_publication(buf, &channel.name, seq, data);
            }),
        };
        let recipients = state
            .subscribers
            .iter()
            .filter(|(_, outbox)| outbox.push(item.clone()))
            .count();
        Published { seq, recipients }
    }

    /// How many channels have at least one subscriber.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use ws_protocol::{Payload, SlowConsumerPolicy};

    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(16, SlowConsumerPolicy::Disconnect))
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        outbox.take(&mut batch, &mut Vec::new());
        batch.iter().map(|o| o.frame.payload().to_owned()).collect()
    }

    #[test]
    fn publications_reach_only_subscribers_with_consecutive_seq() {
        let channels = Channels::default();
        let (a, b) = (outbox(), outbox());
        channels.subscribe("x", ConnectionId(1), &a);
        channels.subscribe("y", ConnectionId(2), &b);
        let data = Payload::from_json("1").unwrap();
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 1,
                recipients: 1
            }
        );
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 2,
                recipients: 1
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
        channels.subscribe("x", ConnectionId(1), &a);
        channels.subscribe("x", ConnectionId(2), &b);
        channels.subscribe("x", ConnectionId(2), &b);
        channels.unsubscribe("x", ConnectionId(1));
        assert_eq!(channels.len(), 1);
        let data = Payload::from_json("2").unwrap();
        assert_eq!(channels.publish("x", data.as_raw()).recipients, 1);
        assert!(texts(&a).is_empty());
        assert_eq!(texts(&b).len(), 1);
        channels.unsubscribe("x", ConnectionId(2));
        assert_eq!(channels.len(), 0);
        let data = Payload::from_json("1").unwrap();
        assert_eq!(
            channels.publish("x", data.as_raw()),
            Published {
                seq: 0,
                recipients: 0
            }
        );
        assert_eq!(channels.len(), 0);
    }
}
