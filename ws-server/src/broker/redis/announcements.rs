//! [`Announcements`]: which followed channels moved, and what was published on them. The
//! publish script announces each publication on the channel's shard channel (`SPUBLISH
//! ws:{channel}:moved`) with the publication itself (`<seq> <epoch> <data>`); the hub
//! subscribes (`SSUBSCRIBE`) to the shard channels of the channels it follows, on a RESP3
//! connection whose pushes land here. The follower delivers the publications an
//! announcement carried when they continue where the channel stands here (no read from
//! Redis at all, the common case), and reads the stream from its last `seq` otherwise: a
//! publication missing in between, a carried one dropped because the buffer was full, or an
//! announcement without one. The stream stays the source of truth; an announcement is a
//! shortcut past one read. An announcement in an epoch the hub does not stand in (the
//! channel's keys were lost in Redis while the hub stayed connected) makes the follower read
//! the new stream from its start.
//!
//! What is kept is one entry per moved channel (the highest `seq` announced, whether the
//! stream must be read, and the publications carried, their total size bounded by
//! [`CARRIED_BYTES`]: beyond it a channel's carried publications are dropped and its stream
//! read instead), so it is bounded however fast the followed channels move.
//!
//! Pub/sub delivers at most once, and it loses announcements in two ways the hub sees: the
//! connection closes (redis-rs pushes `Disconnection`; the follower reconnects and its first
//! round reads every followed stream), or Redis ends a subscription itself (a shard
//! unsubscribes its subscribers when the slot moves to another node or its primary fails
//! over: an `SUNSUBSCRIBE` push for a channel still followed), after which the follower
//! subscribes again and reads that stream. A rare sweep of every followed stream is the
//! backstop.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::{PushInfo, PushKind, Value};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::schema::{channel_of, number, text};

/// The most bytes of carried publications kept between two takes of the follower, over all
/// channels; past it, a channel's carried publications are dropped and its stream is read.
pub(super) const CARRIED_BYTES: usize = 8 << 20;

/// A publication an announcement carried.
#[derive(Debug)]
pub(super) struct Carried {
    pub(super) seq: u64,
    pub(super) epoch: String,
    pub(super) data: Box<RawValue>,
}

impl Carried {
    /// The bytes it holds, as [`CARRIED_BYTES`] counts them.
    fn size(&self) -> usize {
        self.data.get().len() + self.epoch.len()
    }
}

/// What moved on one channel since the follower last took it.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// The highest `seq` announced.
    pub(super) highest: u64,
    /// The stream must be read: something moved that `carried` does not hold.
    pub(super) read: bool,
    /// The publications carried, in the order they were announced.
    pub(super) carried: Vec<Carried>,
    /// The epoch of the last publication announced with its data (kept when the carried
    /// publications are dropped): one the follower does not stand in means Redis started
    /// the channel over.
    pub(super) epoch: Option<String>,
}

impl Moved {
    /// The carried publications after `last` if they continue it without a gap, in
    /// `epoch`, up to the highest `seq` announced; `None` when the stream must be read.
    pub(super) fn continuing(self, last: u64, epoch: &str) -> Option<Vec<Carried>> {
        if self.read || self.highest <= last {
            return None;
        }
        let mut expected = last + 1;
        let mut after = Vec::with_capacity(self.carried.len());
        for carried in self.carried {
            if carried.seq < expected {
                continue;
            }
            if carried.seq != expected || carried.epoch != epoch {
                return None;
            }
            expected += 1;
            after.push(carried);
        }
        (expected == self.highest + 1).then_some(after)
    }
}

#[derive(Debug, Default)]
struct Board {
    moved: HashMap<String, Moved>,
    /// The size of the carried publications in `moved`.
    carried_bytes: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Announcements {
    board: Mutex<Board>,
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
                let mut data = push.data.into_iter();
                let (Some(name), Some(message)) = (data.next(), data.next()) else {
                    return;
                };
                // Borrowed, not copied: this runs once per publication.
                let Value::BulkString(name) = &name else {
                    return;
                };
                let Some(channel) = std::str::from_utf8(name)
                    .ok()
                    .and_then(|name| channel_of(name, "moved"))
                else {
                    return;
                };
                match parse_announcement(message) {
                    Some(Announced::Carried(carried)) => self.carry(channel, carried),
                    Some(Announced::Seq(seq)) => self.announce(channel, seq),
                    None => {}
                }
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

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `channel` moved to `seq`, and its stream must be read (the announcement carried
    /// nothing, or the follower asks for a read).
    pub(super) fn announce(&self, channel: &str, seq: u64) {
        let mut board = self.board();
        let moved = entry(&mut board.moved, channel);
        moved.highest = moved.highest.max(seq);
        moved.read = true;
        drop(board);
        self.wake.notify_one();
    }

    /// `channel` moved to `carried.seq`, which the announcement carried.
    fn carry(&self, channel: &str, carried: Carried) {
        let size = carried.size();
        let mut board = self.board();
        let room = board.carried_bytes + size <= CARRIED_BYTES;
        let Board {
            moved,
            carried_bytes,
        } = &mut *board;
        let moved = entry(moved, channel);
        moved.highest = moved.highest.max(carried.seq);
        if moved.epoch.as_deref() != Some(carried.epoch.as_str()) {
            // Once per channel and take, or when the epoch changes: not per publication.
            moved.epoch = Some(carried.epoch.clone());
        }
        if room && !moved.read {
            moved.carried.push(carried);
            *carried_bytes += size;
        } else if !moved.read {
            // No room: the stream has it; drop what this channel carried and read it.
            moved.read = true;
            let freed: usize = moved.carried.drain(..).map(|c| c.size()).sum();
            *carried_bytes -= freed;
        }
        drop(board);
        self.wake.notify_one();
    }

    /// Wakes the follower without announcing anything (a channel is followed now).
    pub(super) fn poke(&self) {
        self.wake.notify_one();
    }

    /// The channels moved since the last call, with what moved on each.
    pub(super) fn take(&self) -> HashMap<String, Moved> {
        let mut board = self.board();
        board.carried_bytes = 0;
        std::mem::take(&mut board.moved)
    }

    /// Announced channels not yet taken, and the publications they are ahead by at most
    /// (`seq` announced minus `last(channel)` delivered).
    pub(super) fn pending_lag(&self, last: impl Fn(&str) -> Option<u64>) -> u64 {
        let board = self.board();
        board
            .moved
            .iter()
            .filter_map(|(channel, moved)| Some(moved.highest.saturating_sub(last(channel)?)))
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

/// `channel`'s entry in `moved`, made if missing (its name allocated only then).
fn entry<'a>(moved: &'a mut HashMap<String, Moved>, channel: &str) -> &'a mut Moved {
    if !moved.contains_key(channel) {
        moved.insert(channel.to_owned(), Moved::default());
    }
    match moved.get_mut(channel) {
        Some(found) => found,
        None => unreachable!("inserted above"),
    }
}

/// What one announcement says.
enum Announced {
    /// A publication, carried whole.
    Carried(Carried),
    /// Only that the channel reached this `seq`.
    Seq(u64),
}

/// An announcement's message: `<seq> <epoch> <data>` (the publish script's), or a bare `seq`.
fn parse_announcement(message: Value) -> Option<Announced> {
    let bytes = match message {
        Value::BulkString(bytes) => bytes,
        other => return number(&other).map(Announced::Seq),
    };
    let mut text = String::from_utf8(bytes).ok()?;
    let Some((seq, rest)) = text.split_once(' ') else {
        return text.parse().ok().map(Announced::Seq);
    };
    let seq: u64 = seq.parse().ok()?;
    let (epoch, _) = rest.split_once(' ')?;
    let epoch = epoch.to_owned();
    let start = text.len() - rest.len() + epoch.len() + 1;
    // The data is the rest: move it to the front of the buffer instead of copying it.
    text.drain(..start);
    let data = RawValue::from_string(text).ok()?;
    Some(Announced::Carried(Carried { seq, epoch, data }))
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    /// A push as redis-rs hands it over.
    fn smessage(name: &str, message: Value) -> PushInfo {
        PushInfo {
            kind: PushKind::SMessage,
            data: vec![Value::BulkString(name.as_bytes().to_vec()), message],
        }
    }

    fn carried(seq: u64, data: &str) -> Value {
        Value::BulkString(format!("{seq} E1 {data}").into_bytes())
    }

    #[test]
    fn announcements_keep_one_entry_per_channel_with_its_highest_seq() {
        let board = Announcements::default();
        board.push(smessage("ws:{a}:moved", Value::Int(3)));
        board.push(smessage("ws:{a}:moved", Value::Int(2)));
        board.push(smessage("ws:{b}:moved", Value::Int(7)));
        board.push(smessage("not ours", Value::Int(9)));
        assert_eq!(
            board.pending_lag(|c| (c == "a").then_some(1).or(Some(0))),
            2 + 7
        );
        let moved = board.take();
        assert_eq!(moved.len(), 2);
        assert_eq!((moved["a"].highest, moved["b"].highest), (3, 7));
        // A bare `seq` carries nothing: the stream must be read.
        assert!(moved["a"].read && moved["a"].carried.is_empty());
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

    #[test]
    fn carried_publications_are_delivered_only_when_they_continue_the_channel() {
        let board = Announcements::default();
        for seq in 5..=7 {
            board.push(smessage(
                "ws:{a}:moved",
                carried(seq, &format!(r#"{{"n": {seq}}}"#)),
            ));
        }
        // Malformed ones are ignored: not JSON, no epoch.
        board.push(smessage("ws:{b}:moved", carried(1, "not json")));
        board.push(smessage(
            "ws:{b}:moved",
            Value::BulkString(b"2 E1".to_vec()),
        ));
        let mut moved = board.take();
        assert!(!moved.contains_key("b"));
        let a = moved.remove("a").unwrap_or_default();
        assert_eq!((a.highest, a.read, a.carried.len()), (7, false, 3));
        let from_4: Vec<(u64, String)> = a
            .continuing(4, "E1")
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.seq, c.data.get().to_owned()))
            .collect();
        assert_eq!(
            from_4,
            [
                (5, r#"{"n": 5}"#.into()),
                (6, r#"{"n": 6}"#.into()),
                (7, r#"{"n": 7}"#.into())
            ]
        );
        let again = |seqs: &[u64]| {
            let board = Announcements::default();
            for &seq in seqs {
                board.push(smessage("ws:{a}:moved", carried(seq, "1")));
            }
            board.take().remove("a").unwrap_or_default()
        };
        // Copies already delivered are skipped.
        assert_eq!(
            again(&[5, 6, 7]).continuing(5, "E1").map(|c| c.len()),
            Some(2)
        );
        // A gap (4 was not carried), another epoch, or nothing new: read the stream.
        assert!(again(&[5, 6, 7]).continuing(3, "E1").is_none());
        assert!(again(&[5, 7]).continuing(4, "E1").is_none());
        assert!(again(&[5, 6]).continuing(4, "E0").is_none());
        assert!(again(&[5, 6]).continuing(6, "E1").is_none());
        // A later bare announcement, or a read asked for, makes it a read too.
        let board = Announcements::default();
        board.push(smessage("ws:{a}:moved", carried(5, "1")));
        board.announce("a", 0);
        assert!(
            board
                .take()
                .remove("a")
                .unwrap_or_default()
                .continuing(4, "E1")
                .is_none()
        );
    }

    #[test]
    fn carried_publications_beyond_the_bound_are_dropped_for_a_read() {
        let board = Announcements::default();
        let big = format!("\"{}\"", "x".repeat(1 << 20));
        let fits = CARRIED_BYTES / (big.len() + 2);
        for seq in 1..=fits as u64 + 1 {
            board.push(smessage("ws:{a}:moved", carried(seq, &big)));
        }
        board.push(smessage("ws:{b}:moved", carried(1, "1")));
        let moved = board.take();
        // `a` overflowed: nothing carried, its stream is read; `b` still fitted.
        assert!(moved["a"].read && moved["a"].carried.is_empty());
        assert_eq!(moved["a"].highest, fits as u64 + 1);
        assert_eq!(moved["b"].carried.len(), 1);
        // The bound counts only what is held: after a take, there is room again.
        board.push(smessage("ws:{a}:moved", carried(9, &big)));
        assert_eq!(board.take()["a"].carried.len(), 1);
    }
}
