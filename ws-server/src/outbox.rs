//! [`Outbox`]: one connection's bounded queue of outgoing publications and broadcasts, and
//! the one signal that wakes the connection's task.
//!
//! Publishers push without waiting (a short mutex, no await); the connection's task takes
//! everything queued at once and writes it with a single flush. When the queue already holds
//! `capacity` live frames the connection's [`SlowConsumerPolicy`] decides: `Disconnect` marks
//! the outbox overflowed (the connection is then cut), `DropOldest` drops the oldest entry and
//! counts it per channel (reported with `Lagged`), `Conflate` replaces the oldest queued
//! publication with the same channel and key by the new one (reported with `Conflated`), or
//! cuts like `Disconnect` when there is none. Replays of history (recovery, gap fills) are
//! queued beside the live frames within their own bound, so a replay never pushes a live
//! frame into the policy. Shutdown closes every outbox, which wakes its task through the
//! same signal, so the task's hot loop watches one waker and no lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use ws_protocol::{Encoding, SlowConsumerPolicy};

use crate::frame::Frame;

/// The channel name under which dropped broadcasts are reported in `Lagged`.
pub(crate) const BROADCAST_LAG_CHANNEL: &str = "*";

/// One encoded frame waiting to be written: a handle on an [`Entry`] shared by every
/// recipient, so that queueing a publication to a subscriber costs one reference count (the
/// channel name and the frame's bytes are not counted once per subscriber).
#[derive(Clone)]
pub(crate) struct Outgoing {
    entry: Arc<Entry>,
    /// Queued by a replay of history rather than live.
    pub(crate) replay: bool,
}

/// What every recipient of one frame shares.
struct Entry {
    /// The channel of a publication; `None` for broadcasts and direct sends.
    channel: Option<Arc<str>>,
    /// The encoded frame.
    frame: Frame,
    /// The frame's other forms (MessagePack, compressed), each made by the first recipient
    /// that needs it: once per frame whatever the number of such recipients, never for a
    /// frame only plain JSON speakers get (who then cost no room for them either).
    forms: OnceLock<Box<Forms>>,
    /// The publication's conflation key (a hash of its key field), when the hub conflates.
    key: Option<u64>,
}

/// The forms of a frame besides its JSON, each made at most once.
#[derive(Default)]
struct Forms {
    msgpack: OnceLock<Frame>,
    json_deflated: OnceLock<Frame>,
    msgpack_deflated: OnceLock<Frame>,
}

impl Outgoing {
    /// A live publication on `channel`.
    pub(crate) fn publication(channel: Arc<str>, frame: Frame, key: Option<u64>) -> Self {
        Self {
            entry: Arc::new(Entry {
                channel: Some(channel),
                frame,
                forms: OnceLock::new(),
                key,
            }),
            replay: false,
        }
    }

    /// A broadcast or a direct send: no channel, never conflated.
    pub(crate) fn direct(frame: Frame) -> Self {
        Self {
            entry: Arc::new(Entry {
                channel: None,
                frame,
                forms: OnceLock::new(),
                key: None,
            }),
            replay: false,
        }
    }

    /// A publication of `channel` replayed from its history.
    fn replayed(channel: &Arc<str>, frame: Frame) -> Self {
        Self {
            entry: Arc::new(Entry {
                channel: Some(channel.clone()),
                frame,
                forms: OnceLock::new(),
                key: None,
            }),
            replay: true,
        }
    }

    /// The channel of a publication; `None` for broadcasts and direct sends.
    pub(crate) fn channel(&self) -> Option<&Arc<str>> {
        self.entry.channel.as_ref()
    }

    /// The encoded frame.
    pub(crate) fn frame(&self) -> &Frame {
        &self.entry.frame
    }

    /// The encoded frame for a connection speaking `encoding`, compressed if the connection
    /// agreed to permessage-deflate (`deflate_window`: the largest window the hub may use, a
    /// power of two), compressing pays, and the message is no longer than that window (each
    /// message is compressed on its own: its window is at most its length).
    pub(crate) fn frame_in(&self, encoding: Encoding, deflate_window: Option<u8>) -> &Frame {
        let plain = &self.entry.frame;
        let deflate = deflate_window.is_some() && plain.worth_compressing();
        if encoding == Encoding::Json && !deflate {
            return plain;
        }
        let forms = self.entry.forms.get_or_init(Box::default);
        let uncompressed = match encoding {
            Encoding::MessagePack => forms.msgpack.get_or_init(|| plain.to_msgpack()),
            _ => plain,
        };
        let fits = deflate_window.is_some_and(|bits| uncompressed.payload_len() <= 1 << bits);
        if !deflate || !fits {
            return uncompressed;
        }
        match encoding {
            Encoding::MessagePack => forms
                .msgpack_deflated
                .get_or_init(|| uncompressed.deflated()),
            _ => forms.json_deflated.get_or_init(|| plain.deflated()),
        }
    }

    /// The publication's conflation key, when the hub conflates.
    fn key(&self) -> Option<u64> {
        self.entry.key
    }
}

/// What the client must be told about publications it will not get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoticeKind {
    /// Dropped under `DropOldest`.
    Lagged,
    /// Replaced by a newer one with the same key under `Conflate`.
    Conflated,
}

/// A count of publications of one channel the client will not get, not yet reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) kind: NoticeKind,
    pub(crate) channel: Arc<str>,
    pub(crate) count: u64,
}

/// What [`Outbox::take`] found besides the queued frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxState {
    /// Open; keep writing.
    Open,
    /// The queue overflowed and the policy could not make room: the connection must be cut.
    Overflowed,
    /// The server is shutting down: the connection must close.
    Closed,
    /// The server drains before a restart: close with 1012 and a reconnect hint.
    Restart,
}

struct Inner {
    queue: VecDeque<Outgoing>,
    /// How many entries of `queue` are replays.
    replayed: usize,
    /// Bytes of the live (not replayed) frames in `queue`.
    live_bytes: usize,
    /// Bytes of every frame in `queue`.
    bytes: usize,
    notices: Vec<Notice>,
    state: OutboxState,
}

impl Inner {
    fn note(&mut self, kind: NoticeKind, channel: Option<Arc<str>>) {
        let channel = channel.unwrap_or_else(|| Arc::from(BROADCAST_LAG_CHANNEL));
        match self
            .notices
            .iter_mut()
            .find(|n| n.kind == kind && n.channel == channel)
        {
            Some(notice) => notice.count += 1,
            None => self.notices.push(Notice {
                kind,
                channel,
                count: 1,
            }),
        }
    }

    /// Takes a frame that left the queue out of the counts.
    fn forget(&mut self, item: &Outgoing) {
        let len = item.frame().as_bytes().len();
        self.bytes -= len;
        if item.replay {
            self.replayed -= 1;
        } else {
            self.live_bytes -= len;
        }
    }

    /// Whether one more live frame of `len` bytes would pass the bounds. An empty queue
    /// takes any frame, so that a frame larger than the byte bound still goes out.
    fn is_full(&self, capacity: usize, max_bytes: usize, len: usize) -> bool {
        let live = self.queue.len() - self.replayed;
        live >= capacity || (live > 0 && self.live_bytes + len > max_bytes)
    }

    /// Makes room for one more live frame under `policy`; `false` if it cannot.
    fn make_room(&mut self, policy: SlowConsumerPolicy, item: &Outgoing) -> bool {
        match policy {
            SlowConsumerPolicy::DropOldest => {
                // The oldest live frame goes; replays the client asked for stay, so that the
                // live frames never exceed their bound (found by the `channels` fuzz target).
                let oldest_live = self.queue.iter().position(|queued| !queued.replay);
                match oldest_live.and_then(|i| self.queue.remove(i)) {
                    Some(dropped) => {
                        self.forget(&dropped);
                        self.note(NoticeKind::Lagged, dropped.channel().cloned());
                        true
                    }
                    None => false,
                }
            }
            SlowConsumerPolicy::Conflate => {
                let Some(key) = item.key() else { return false };
                let same = self.queue.iter().position(|queued| {
                    !queued.replay
                        && queued.key() == Some(key)
                        && queued.channel() == item.channel()
                });
                match same.and_then(|i| self.queue.remove(i)) {
                    Some(replaced) => {
                        self.forget(&replaced);
                        self.note(NoticeKind::Conflated, replaced.channel().cloned());
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }
}

/// A connection's bounded outbound queue. See the module documentation.
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    signaled: AtomicBool,
    waker: AtomicWaker,
    capacity: usize,
    /// Bytes of live frames queued before the policy applies.
    max_bytes: usize,
    replay_capacity: usize,
    policy: SlowConsumerPolicy,
}

impl Outbox {
    /// An outbox holding up to `capacity` live frames plus up to `replay_capacity` replayed
    /// ones.
    pub(crate) fn new(capacity: usize, replay_capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                replayed: 0,
                live_bytes: 0,
                bytes: 0,
                notices: Vec::new(),
                state: OutboxState::Open,
            }),
            signaled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            max_bytes: usize::MAX,
            replay_capacity,
            policy,
        }
    }

    /// The same outbox, also bounded to `max_bytes` of live frames (`WS_SEND_QUEUE_BYTES`).
    #[must_use]
    pub(crate) fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal(&self) {
        self.signaled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Queues `item` without waiting. Returns `false` if it was refused because the connection
    /// is being cut as a slow consumer or closed.
    pub(crate) fn push(&self, item: Outgoing) -> bool {
        let mut inner = self.lock();
        if inner.state != OutboxState::Open {
            return false;
        }
        let len = item.frame().as_bytes().len();
        while inner.is_full(self.capacity, self.max_bytes, len) {
            if !inner.make_room(self.policy, &item) {
                inner.state = OutboxState::Overflowed;
                inner.queue.clear();
                inner.replayed = 0;
                inner.live_bytes = 0;
                inner.bytes = 0;
                drop(inner);
                self.signal();
                return false;
            }
        }
        let was_empty = inner.queue.is_empty();
        inner.live_bytes += len;
        inner.bytes += len;
        inner.queue.push_back(item);
        drop(inner);
        if was_empty {
            // The writer drains the whole queue whenever it wakes, so only the transition from
            // empty needs a wake-up.
            self.signal();
        }
        true
    }

    /// Queues a replay of `frames` from `channel`'s history, all or nothing: `false` (and
    /// nothing queued) if the outbox is not open or the replays already queued leave too
    /// little room.
    pub(crate) fn push_replay<I>(&self, channel: &Arc<str>, frames: I) -> bool
    where
        I: ExactSizeIterator<Item = Frame>,
    {
        let mut inner = self.lock();
        if inner.state != OutboxState::Open || inner.replayed + frames.len() > self.replay_capacity
        {
            return false;
        }
        if frames.len() == 0 {
            return true;
        }
        let was_empty = inner.queue.is_empty();
        inner.replayed += frames.len();
        for frame in frames {
            inner.bytes += frame.as_bytes().len();
            inner.queue.push_back(Outgoing::replayed(channel, frame));
        }
        drop(inner);
        if was_empty {
            self.signal();
        }
        true
    }

    /// Closes the outbox for shutdown and wakes its connection.
    pub(crate) fn close(&self) {
        self.close_as(OutboxState::Closed);
    }

    /// Closes the outbox with `state` (`Closed` or `Restart`) and wakes its connection.
    pub(crate) fn close_as(&self, state: OutboxState) {
        let mut inner = self.lock();
        if inner.state == OutboxState::Open {
            inner.state = state;
        }
        drop(inner);
        self.signal();
    }

    /// Ready once something was queued (or the state changed) since the last time it was.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signaled.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signaled.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Moves the queued frames into `batch`, oldest first, until `max_bytes` are taken (one
    /// frame may pass it), and every notice into `notices`. Returns the state and whether
    /// frames are left for another batch.
    pub(crate) fn take(
        &self,
        batch: &mut VecDeque<Outgoing>,
        notices: &mut Vec<Notice>,
        max_bytes: usize,
    ) -> (OutboxState, bool) {
        let mut inner = self.lock();
        if inner.state != OutboxState::Open {
            return (inner.state, false);
        }
        notices.append(&mut inner.notices);
        if inner.bytes <= max_bytes {
            std::mem::swap(&mut inner.queue, batch);
            inner.replayed = 0;
            inner.live_bytes = 0;
            inner.bytes = 0;
            return (OutboxState::Open, false);
        }
        let mut taken = 0;
        while taken < max_bytes {
            let Some(item) = inner.queue.pop_front() else {
                break;
            };
            taken += item.frame().as_bytes().len();
            inner.forget(&item);
            batch.push_back(item);
        }
        (OutboxState::Open, !inner.queue.is_empty())
    }

    /// The outbox's state.
    pub(crate) fn state(&self) -> OutboxState {
        self.lock().state
    }

    /// Drops queued publications of `channel` (after an unsubscribe, none may be delivered).
    pub(crate) fn purge(&self, channel: &str) {
        let mut inner = self.lock();
        inner
            .queue
            .retain(|item| item.channel().map(|c| &**c) != Some(channel));
        inner.replayed = inner.queue.iter().filter(|item| item.replay).count();
        inner.bytes = inner.queue.iter().map(|i| i.frame().as_bytes().len()).sum();
        inner.live_bytes = inner
            .queue
            .iter()
            .filter(|i| !i.replay)
            .map(|i| i.frame().as_bytes().len())
            .sum();
        inner.notices.retain(|n| &*n.channel != channel);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn a_frame_is_turned_into_msgpack_once_for_all_its_recipients() {
        let first = item("a", r#"{"type":"Pong"}"#);
        let second = first.clone();
        let packed = first.frame_in(Encoding::MessagePack, None);
        assert!(std::ptr::eq(
            packed.as_bytes(),
            second.frame_in(Encoding::MessagePack, None).as_bytes()
        ));
        assert!(std::ptr::eq(
            first.frame_in(Encoding::Json, None).as_bytes(),
            first.frame().as_bytes()
        ));
    }

    #[test]
    fn a_frame_is_compressed_once_per_encoding_for_all_its_recipients() {
        let book = format!(
            r#"{{"type":"Publication","data":"{}"}}"#,
            "187.42,".repeat(100)
        );
        let first = item("a", &book);
        let second = first.clone();
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let packed = first.frame_in(encoding, Some(15));
            assert!(std::ptr::eq(
                packed.as_bytes(),
                second.frame_in(encoding, Some(15)).as_bytes()
            ));
            assert_eq!(packed.as_bytes()[0] & 0x40, 0x40, "RSV1: compressed");
            assert!(packed.as_bytes().len() < first.frame_in(encoding, None).as_bytes().len());
            // A window smaller than the message: it goes uncompressed.
            assert!(std::ptr::eq(
                first.frame_in(encoding, Some(8)).as_bytes(),
                first.frame_in(encoding, None).as_bytes()
            ));
        }
        // A short frame is not worth compressing: the same bytes as uncompressed.
        let short = item("a", r#"{"type":"Pong"}"#);
        assert!(std::ptr::eq(
            short.frame_in(Encoding::Json, Some(15)).as_bytes(),
            short.frame().as_bytes()
        ));
    }

    fn item(channel: &str, text: &str) -> Outgoing {
        Outgoing::publication(Arc::from(channel), Frame::text(text), None)
    }

    fn keyed(channel: &str, key: u64, text: &str) -> Outgoing {
        Outgoing::publication(Arc::from(channel), Frame::text(text), Some(key))
    }

    type Drained = (Vec<String>, Vec<(NoticeKind, String, u64)>, OutboxState);

    fn drain(outbox: &Outbox) -> Drained {
        let (mut batch, mut notices) = (VecDeque::new(), Vec::new());
        let (state, _) = outbox.take(&mut batch, &mut notices, usize::MAX);
        let texts = batch
            .iter()
            .map(|o| o.frame().payload().to_owned())
            .collect();
        let notices = notices
            .into_iter()
            .map(|n| (n.kind, n.channel.to_string(), n.count))
            .collect();
        (texts, notices, state)
    }

    fn ready(outbox: &Outbox) -> bool {
        outbox
            .poll_ready(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn disconnect_policy_cuts_when_full_and_refuses_more() {
        let outbox = Outbox::new(2, 0, SlowConsumerPolicy::Disconnect);
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("a", "2")));
        assert!(ready(&outbox));
        assert!(!outbox.push(item("a", "3")));
        assert!(ready(&outbox), "the overflow wakes the connection");
        assert_eq!(outbox.state(), OutboxState::Overflowed);
        assert!(!outbox.push(item("a", "4")));
        assert_eq!(drain(&outbox).2, OutboxState::Overflowed);
    }

    #[test]
    fn drop_oldest_policy_keeps_the_newest_and_counts_per_channel() {
        let outbox = Outbox::new(2, 0, SlowConsumerPolicy::DropOldest);
        for (channel, text) in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")] {
            assert!(outbox.push(item(channel, text)));
        }
        assert!(outbox.push(Outgoing::direct(Frame::text("5"))));
        let (texts, notices, state) = drain(&outbox);
        assert_eq!(state, OutboxState::Open);
        assert_eq!(texts, ["4", "5"]);
        assert_eq!(
            notices,
            vec![
                (NoticeKind::Lagged, "a".to_owned(), 2),
                (NoticeKind::Lagged, "b".to_owned(), 1)
            ]
        );
        let (texts, notices, _) = drain(&outbox);
        assert!(texts.is_empty() && notices.is_empty());
    }

    #[test]
    fn conflate_policy_keeps_the_newest_per_channel_and_key_in_seq_order() {
        let outbox = Outbox::new(3, 0, SlowConsumerPolicy::Conflate);
        for (channel, key, text) in [("p", 1, "sol-1"), ("p", 2, "btc-2"), ("q", 1, "q-3")] {
            assert!(outbox.push(keyed(channel, key, text)));
        }
        // Full: the newest SOL replaces the queued SOL of the same channel, at the end.
        assert!(outbox.push(keyed("p", 1, "sol-4")));
        assert!(outbox.push(keyed("p", 1, "sol-5")));
        let (texts, notices, state) = drain(&outbox);
        assert_eq!(state, OutboxState::Open);
        assert_eq!(texts, ["btc-2", "q-3", "sol-5"]);
        assert_eq!(notices, vec![(NoticeKind::Conflated, "p".to_owned(), 2)]);
        // Nothing with the same key queued, or no key at all: cut like Disconnect.
        for (key, text) in [(1, "a"), (2, "b"), (3, "c")] {
            assert!(outbox.push(keyed("p", key, text)));
        }
        assert!(!outbox.push(keyed("p", 4, "d")));
        assert_eq!(outbox.state(), OutboxState::Overflowed);
        let unkeyed = Outbox::new(1, 0, SlowConsumerPolicy::Conflate);
        assert!(unkeyed.push(item("p", "1")));
        assert!(!unkeyed.push(item("p", "2")));
    }

    #[test]
    fn replays_have_their_own_bound_and_do_not_trigger_the_policy() {
        let outbox = Outbox::new(2, 3, SlowConsumerPolicy::Disconnect);
        let channel: Arc<str> = Arc::from("a");
        let frames = |texts: &[&str]| {
            texts
                .iter()
                .map(|t| Frame::text(t))
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(outbox.push_replay(&channel, frames(&["1", "2", "3"])));
        assert!(
            !outbox.push_replay(&channel, frames(&["1"])),
            "replay bound"
        );
        assert!(outbox.push(item("a", "4")));
        assert!(outbox.push(item("a", "5")));
        assert_eq!(outbox.state(), OutboxState::Open);
        assert_eq!(drain(&outbox).0, ["1", "2", "3", "4", "5"]);
        assert!(
            outbox.push_replay(&channel, frames(&["6", "7", "8"])),
            "bound freed by take"
        );
        outbox.purge("a");
        assert!(
            outbox.push_replay(&channel, frames(&["9"])),
            "bound freed by purge"
        );
    }

    #[test]
    fn only_the_first_push_into_an_empty_queue_signals() {
        let outbox = Outbox::new(4, 0, SlowConsumerPolicy::Disconnect);
        assert!(!ready(&outbox));
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("a", "2")));
        assert!(ready(&outbox));
        assert!(!ready(&outbox));
        assert_eq!(drain(&outbox).0, ["1", "2"]);
        assert!(outbox.push(item("a", "3")));
        assert!(ready(&outbox));
    }

    #[test]
    fn close_and_purge() {
        let outbox = Outbox::new(4, 0, SlowConsumerPolicy::Disconnect);
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("b", "2")));
        outbox.purge("a");
        assert_eq!(drain(&outbox).0, ["2"]);
        outbox.close();
        assert!(ready(&outbox));
        assert!(!outbox.push(item("a", "3")));
        assert_eq!(drain(&outbox).2, OutboxState::Closed);
    }

    #[test]
    fn bytes_bound_the_queue_and_a_take_takes_a_bounded_batch() {
        // Four 100-byte frames fit in 400 bytes; a fifth overflows under disconnect.
        let big = |n: u32| item("c", &format!("{n:0>98}"));
        let frame_len = big(0).frame().as_bytes().len();
        assert_eq!(frame_len, 100);
        let outbox = Outbox::new(1000, 16, SlowConsumerPolicy::Disconnect).with_max_bytes(400);
        for n in 0..4 {
            assert!(outbox.push(big(n)));
        }
        assert!(!outbox.push(big(4)));
        assert_eq!(outbox.state(), OutboxState::Overflowed);

        // Under drop_oldest the oldest go, counted in Lagged.
        let outbox = Outbox::new(1000, 16, SlowConsumerPolicy::DropOldest).with_max_bytes(400);
        for n in 0..6 {
            assert!(outbox.push(big(n)));
        }
        let (mut batch, mut notices) = (VecDeque::new(), Vec::new());
        // A take of at most 150 bytes takes two frames (the second passes the mark).
        let (state, more) = outbox.take(&mut batch, &mut notices, 150);
        assert_eq!((state, more, batch.len()), (OutboxState::Open, true, 2));
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].count, 2);
        batch.clear();
        let (_, more) = outbox.take(&mut batch, &mut notices, 150);
        assert!(!more);
        assert_eq!(batch.len(), 2);
        // A single frame larger than the bound still goes into an empty queue.
        let outbox = Outbox::new(1000, 16, SlowConsumerPolicy::Disconnect).with_max_bytes(50);
        assert!(outbox.push(big(0)));
    }
}
