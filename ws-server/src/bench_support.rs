//! Not part of the API (behind the `bench` feature): the channel registry without sockets,
//! for the criterion micro-benchmarks in `ws-bench` and the `channels` fuzz target. May
//! change at any time.

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

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("channels", &self.channel_count)
            .field("subscribers", &self.outboxes.len())
            .finish_non_exhaustive()
    }
}

impl FanOut {
    /// Builds the registry; every subscriber's queue holds `queue` frames.
    pub fn new(channels: usize, subscribers: usize, queue: usize) -> Self {
        // No bound on channels, so that every subscribe below succeeds.
        let registry = Channels::new(
            crate::channel::HistoryLimits {
                size: 0,
                ttl: std::time::Duration::ZERO,
                max_bytes: usize::MAX,
                max_channels: usize::MAX,
                key_window: std::time::Duration::ZERO,
                max_keys: 0,
            },
            None,
        );
        let mut outboxes = Vec::new();
        let mut id = 0;
        for c in 0..channels {
            for _ in 0..subscribers {
                id += 1;
                let outbox = Arc::new(Outbox::new(queue, 0, SlowConsumerPolicy::DropOldest));
                if registry
                    .subscribe(&format!("c{c}"), ConnectionId(id), &outbox, None, None)
                    .is_ok()
                {
                    outboxes.push(outbox);
                }
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
        self.channels.publish(channel, data.get())
    }

    /// Empties the queues of channel `c{channel}`'s subscribers, as their writers would.
    pub fn drain(&self, channel: usize) {
        let per_channel = self.outboxes.len() / self.channel_count.max(1);
        let (mut batch, mut lagged) = (VecDeque::new(), Vec::new());
        let start = channel * per_channel;
        for outbox in self.outboxes.iter().skip(start).take(per_channel) {
            outbox.take(&mut batch, &mut lagged, usize::MAX);
            batch.clear();
            lagged.clear();
        }
    }
}

/// Drives the channel registry (subscribe with and without `since`, publish, unsubscribe,
/// sweep, drain) through the operations `data` encodes, checking on the way that queues stay
/// within their bounds and each channel's `seq` rises one by one. For the `channels` fuzz
/// target; panics on a broken invariant.
pub fn exercise_channels(data: &[u8]) {
    use std::time::Duration;

    use ws_protocol::Position;

    use crate::channel::HistoryLimits;
    use crate::conflation_key::ConflationKey;
    use crate::outbox::Notice;

    const QUEUE: usize = 4;
    const HISTORY: usize = 8;
    let policy = match data.first().map_or(0, |b| b % 3) {
        0 => SlowConsumerPolicy::Disconnect,
        1 => SlowConsumerPolicy::DropOldest,
        _ => SlowConsumerPolicy::Conflate,
    };
    let channels = Channels::new(
        HistoryLimits::per_channel(HISTORY, Duration::from_secs(60)),
        Some(ConflationKey::new("symbol")),
    );
    let outboxes: Vec<Arc<Outbox>> = (0..4)
        .map(|_| Arc::new(Outbox::new(QUEUE, HISTORY, policy)))
        .collect();
    let names = ["a", "b", "c"];
    let mut last_seq = [0u64; 3];
    let (mut batch, mut notices) = (VecDeque::new(), Vec::<Notice>::new());
    for op in data.chunks_exact(4) {
        let (conn, ch, arg) = (usize::from(op[1] % 4), usize::from(op[2] % 3), op[3]);
        let id = ConnectionId(conn as u64);
        match op[0] % 6 {
            0 => {
                let json = format!(r#"{{"symbol":"s{}","n":{arg}}}"#, arg % 3);
                let Ok(raw) = RawValue::from_string(json) else {
                    continue;
                };
                let published = channels.publish(names[ch], raw.get());
                if published.seq != 0 {
                    assert!(
                        published.seq == last_seq[ch] + 1 || published.seq == 1,
                        "seq {} after {}",
                        published.seq,
                        last_seq[ch]
                    );
                    last_seq[ch] = published.seq;
                }
            }
            1 => {
                // Three channels never reach the bound on channels.
                let subscribed = channels.subscribe(names[ch], id, &outboxes[conn], None, None);
                assert!(subscribed.is_ok());
            }
            2 => {
                let epoch = match channels.position(names[ch]) {
                    Some((epoch, _)) if arg & 1 == 0 => epoch.to_string(),
                    _ => "elsewhere".to_owned(),
                };
                let since = Position {
                    epoch,
                    seq: u64::from(arg / 2),
                };
                let Ok((_, position)) =
                    channels.subscribe(names[ch], id, &outboxes[conn], Some(&since), None)
                else {
                    panic!("three channels never reach the bound on channels");
                };
                if position.recovered {
                    assert!(since.seq <= position.seq);
                }
            }
            3 => channels.unsubscribe(names[ch], id),
            4 => channels.sweep(),
            _ => {
                batch.clear();
                outboxes[conn].take(&mut batch, &mut notices, usize::MAX);
                assert!(batch.len() <= QUEUE + HISTORY, "{} queued", batch.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_channel_registry_keeps_its_invariants_under_random_operations() {
        // The fuzz target's check, on seeded random inputs, for every `cargo test`.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let data: Vec<u8> = (0..rng.usize(0..256)).map(|_| rng.u8(..)).collect();
            super::exercise_channels(&data);
        }
    }
}
