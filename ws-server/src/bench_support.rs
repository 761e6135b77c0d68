//! Not part of the API: the channel registry without sockets, for the criterion
//! micro-benchmarks in `ws-bench`. May change at any time.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;
use ws_protocol::SlowConsumerPolicy;

use crate::channel::{Channels, Published};
use crate::connections::ConnectionId;
use crate::outbox::Outbox;

/// A registry of `channels` channels named `c0`, `c1`, … with `subscribers` subscribers each.
pub struct FanOut {
    channels: Channels,
    channel_count: usize,
    outboxes: Vec<Arc<Outbox>>,
}

impl FanOut {
    /// Builds the registry; every subscriber's queue holds `queue` frames.
    pub fn new(channels: usize, subscribers: usize, queue: usize) -> Self {
        let registry = Channels::default();
        let mut outboxes = Vec::new();
        let mut id = 0;
        for c in 0..channels {
            for _ in 0..subscribers {
                id += 1;
                let outbox = Arc::new(Outbox::new(queue, 0, SlowConsumerPolicy::DropOldest));
                registry.subscribe(&format!("c{c}"), ConnectionId(id), &outbox, None);
                outboxes.push(outbox);
            }
        }
        Self {
            channels: registry,
            channel_count: channels,
            outboxes,
        }
    }

    /// Publishes on one channel: lookup, seq, encode once, queue to every subscriber.
    pub fn publish(&self, channel: &str, data: &RawValue) -> Published {
        self.channels.publish(channel, data)
    }

    /// Empties the queues of channel `c{channel}`'s subscribers, as their writers would.
    pub fn drain(&self, channel: usize) {
        let per_channel = self.outboxes.len() / self.channel_count.max(1);
        let (mut batch, mut lagged) = (VecDeque::new(), Vec::new());
        let start = channel * per_channel;
        for outbox in self.outboxes.iter().skip(start).take(per_channel) {
            outbox.take(&mut batch, &mut lagged);
            batch.clear();
            lagged.clear();
        }
    }
}
