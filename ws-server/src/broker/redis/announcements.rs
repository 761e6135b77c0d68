//! [`Announcements`]: which followed channels moved. The publish script announces each
//! publication's `seq` on the channel's shard channel (`SPUBLISH ws:{channel}:moved`); the
//! hub subscribes (`SSUBSCRIBE`) to the shard channels of the channels it follows, on a RESP3
//! connection whose pushes land here, and the follower reads only the streams announced
//! since its last round. What is kept is one entry per moved channel (the highest `seq`
//! announced), so it is bounded by the followed channels however fast they move.
//!
//! Pub/sub delivers at most once, and it loses announcements in two ways the hub sees: the
//! connection closes (redis-rs pushes `Disconnection`; the follower reconnects and its first
//! round reads every followed stream), or Redis ends a subscription itself (a shard
//! unsubscribes its subscribers when the slot moves to another node or its primary fails
//! over: an `SUNSUBSCRIBE` push for a channel still followed), after which the follower
//! subscribes again and reads that stream. A rare sweep of every followed stream is the
//! backstop. Nothing is read from an announcement but the fact that a stream has something
//! new.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::{PushInfo, PushKind};
use tokio::sync::Notify;

use super::schema::{channel_of, number, text};

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Announcements {
    /// Channel → the highest `seq` announced since the follower last took it.
    moved: Mutex<HashMap<String, u64>>,
    /// Wakes the follower when something moved.
    wake: Notify,
    /// Set when the connection the pushes come on closed; the follower then reconnects.
    lost: AtomicBool,
    /// Channels whose subscription Redis ended (or this hub did: the follower checks which
    /// are still followed); one entry per channel.
    unsubscribed: Mutex<HashSet<String>>,
}

impl Announcements {
    /// Takes one push from the announcements' connection (called by redis-rs; it must not
    /// block).
    pub(super) fn push(&self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = push.data.iter();
                let (Some(name), Some(seq)) = (data.next().and_then(text), data.next()) else {
                    return;
                };
                let (Some(channel), Some(seq)) = (channel_of(&name, "moved"), number(seq)) else {
                    return;
                };
                self.announce(channel, seq);
            }
            PushKind::SUnsubscribe => {
                let mut ended = self.unsubscribed.lock().unwrap_or_else(|p| p.into_inner());
                let names = push.data.iter().filter_map(text);
                ended.extend(names.filter_map(|n| channel_of(&n, "moved").map(str::to_owned)));
                drop(ended);
                self.wake.notify_one();
            }
            PushKind::Disconnection => {
                self.lost.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
            _ => {}
        }
    }

    /// `channel` moved to `seq`.
    pub(super) fn announce(&self, channel: &str, seq: u64) {
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        match moved.get_mut(channel) {
            Some(highest) => *highest = (*highest).max(seq),
            None => {
                moved.insert(channel.to_owned(), seq);
            }
        }
        drop(moved);
        self.wake.notify_one();
    }

    /// The channels announced since the last call, with the highest `seq` of each.
    pub(super) fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Announced channels not yet taken, and the publications they are ahead by at most
    /// (`seq` announced minus `last(channel)` delivered).
    pub(super) fn pending_lag(&self, last: impl Fn(&str) -> Option<u64>) -> u64 {
        let moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        moved
            .iter()
            .filter_map(|(channel, seq)| Some(seq.saturating_sub(last(channel)?)))
            .sum()
    }

    /// Resolves when something was announced (or the connection was lost) since the last
    /// wait.
    pub(super) async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The channels whose subscription ended since the last call.
    pub(super) fn take_unsubscribed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.unsubscribed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the announcements' connection closed since the last call.
    pub(super) fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    /// A push as redis-rs hands it over.
    fn smessage(name: &str, seq: i64) -> PushInfo {
        PushInfo {
            kind: PushKind::SMessage,
            data: vec![Value::BulkString(name.as_bytes().to_vec()), Value::Int(seq)],
        }
    }

    #[test]
    fn announcements_keep_one_entry_per_channel_with_its_highest_seq() {
        let board = Announcements::default();
        board.push(smessage("ws:{a}:moved", 3));
        board.push(smessage("ws:{a}:moved", 2));
        board.push(smessage("ws:{b}:moved", 7));
        board.push(smessage("not ours", 9));
        assert_eq!(
            board.pending_lag(|c| (c == "a").then_some(1).or(Some(0))),
            2 + 7
        );
        let moved = board.take();
        assert_eq!(moved.len(), 2);
        assert_eq!((moved["a"], moved["b"]), (3, 7));
        assert!(board.take().is_empty());
        assert!(!board.take_lost());
        board.push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        assert!(board.take_lost() && !board.take_lost());
        board.push(PushInfo {
            kind: PushKind::SUnsubscribe,
            data: vec![Value::BulkString(b"ws:{a}:moved".to_vec()), Value::Int(0)],
        });
        assert_eq!(board.take_unsubscribed(), HashSet::from(["a".to_owned()]));
        assert!(board.take_unsubscribed().is_empty());
    }
}
