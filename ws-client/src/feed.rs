//! [`FeedSequencer`]: first arrival wins for any server's feed, deduplicated by the sequence
//! number inside its messages ([`ClientBuilder::sequence_by`](crate::ClientBuilder::sequence_by)).
//!
//! A feed that is not our hub numbers its messages itself, per stream (a symbol, a channel:
//! the key). With several connections to it ([`redundancy`](crate::ClientBuilder::redundancy))
//! every message comes once per connection: the first copy of each `(key, seq)` is
//! delivered, and the later ones are dropped and counted, with how much earlier the winner
//! was ([`Metrics`](crate::Metrics)). Per key the sequencer keeps the last `seq` delivered,
//! the last one each connection brought, when the latest [`RECENT`] deliveries arrived (to
//! time the copies that lose) and, while a gap is open, the messages after it, at most
//! [`WINDOW`]:
//! - a jump in the numbers is held open for the gap timeout, for a copy from another
//!   connection to fill it; then [`Event::Gap`] and delivery goes on (at once when
//!   [`WINDOW`] messages wait behind the gap);
//! - a connection whose numbers go back below what was delivered started a new session of
//!   the feed: [`Event::Unrecovered`] (its `epoch` counts the key's sessions) and delivery
//!   goes on from the new numbers;
//! - a frame the function gives no `(key, seq)` passes as it is, and so does a frame of a
//!   new key once [`MAX_KEYS`] keys are followed (counted as a warning).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::event::Event;
use crate::metrics::Counters;
use crate::stamped::Stamped;

/// Messages of one key held behind a gap, at most.
pub(crate) const WINDOW: usize = 1024;
/// Deliveries per key whose arrival time is kept to time the copies that lose.
pub(crate) const RECENT: usize = 64;
/// Keys followed at most; frames of further keys pass undeduplicated.
pub(crate) const MAX_KEYS: usize = 65_536;

/// Finds a text frame's key and sequence number.
pub(crate) type TextSequence = dyn Fn(&str) -> Option<(&str, u64)> + Send + Sync;
/// Finds a binary frame's key and sequence number.
pub(crate) type BinarySequence = dyn Fn(&[u8]) -> Option<(&[u8], u64)> + Send + Sync;

/// How the feed's frames are numbered: for text frames, binary frames, or both.
#[derive(Clone, Default)]
pub(crate) struct SequenceBy {
    pub(crate) text: Option<Arc<TextSequence>>,
    pub(crate) binary: Option<Arc<BinarySequence>>,
}

impl std::fmt::Debug for SequenceBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceBy")
            .field("text", &self.text.is_some())
            .field("binary", &self.binary.is_some())
            .finish()
    }
}

impl SequenceBy {
    pub(crate) fn is_set(&self) -> bool {
        self.text.is_some() || self.binary.is_some()
    }
}

/// A message held behind a gap.
struct Held {
    event: Event,
    connection: usize,
    at: Instant,
}

/// One key's state.
#[derive(Default)]
struct Track {
    /// The last `seq` delivered; `None` before the first.
    delivered: Option<u64>,
    held: BTreeMap<u64, Held>,
    gap_since: Option<Instant>,
    /// Per connection, the last `seq` it brought.
    brought: Vec<Option<u64>>,
    /// `(seq, when it arrived)` of the latest deliveries, oldest first.
    recent: VecDeque<(u64, Instant)>,
    /// Sessions of the feed seen for this key, for [`Event::Unrecovered`].
    sessions: u64,
}

impl Track {
    fn remember(&mut self, seq: u64, at: Instant) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, at));
    }

    /// When the winning copy of `seq` arrived, if it is still known.
    fn won_at(&self, seq: u64) -> Option<Instant> {
        if let Some(held) = self.held.get(&seq) {
            return Some(held.at);
        }
        let index = self.recent.binary_search_by_key(&seq, |&(s, _)| s).ok()?;
        self.recent.get(index).map(|&(_, at)| at)
    }
}

/// See the module documentation.
pub(crate) struct FeedSequencer {
    by: SequenceBy,
    tracks: HashMap<Box<[u8]>, Track>,
    /// Keys with a gap open.
    open: usize,
    gap_timeout: Duration,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FeedSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSequencer")
            .field("keys", &self.tracks.len())
            .field("open", &self.open)
            .finish()
    }
}

impl FeedSequencer {
    pub(crate) fn new(by: SequenceBy, gap_timeout: Duration, counters: Arc<Counters>) -> Self {
        Self {
            by,
            tracks: HashMap::new(),
            open: 0,
            gap_timeout,
            counters,
        }
    }

    /// When the oldest open gap times out.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.open == 0 {
            return None;
        }
        let oldest = self.tracks.values().filter_map(|t| t.gap_since).min();
        oldest.map(|at| at + self.gap_timeout)
    }

    /// Takes in a message that arrived on `connection` at `at`; what is ready goes to `ready`.
    pub(crate) fn accept(
        &mut self,
        connection: usize,
        event: Event,
        at: Instant,
        now: Instant,
        ready: &mut VecDeque<Stamped>,
    ) {
        let numbered = match &event {
            Event::Message(text) => self
                .by
                .text
                .as_ref()
                .and_then(|f| f(text))
                .map(|(key, seq)| (key.as_bytes(), seq)),
            Event::Binary(bytes) => self.by.binary.as_ref().and_then(|f| f(bytes)),
            _ => None,
        };
        let Some((key, seq)) = numbered else {
            ready.push_back(Stamped::arrived(event, connection, at));
            return;
        };
        if !self.tracks.contains_key(key) {
            if self.tracks.len() >= MAX_KEYS {
                warn!(
                    keys = MAX_KEYS,
                    "too many feed keys: a new one passes undeduplicated"
                );
                ready.push_back(Stamped::arrived(event, connection, at));
                return;
            }
            self.tracks.insert(key.into(), Track::default());
        }
        let Some(track) = self.tracks.get_mut(key) else {
            return;
        };
        if track.brought.len() <= connection {
            track.brought.resize(connection + 1, None);
        }
        let before = track.brought[connection].replace(seq);
        let Some(delivered) = track.delivered else {
            // The key's first message.
            deliver(track, &self.counters, ready, (event, connection, at), seq);
            return;
        };
        if seq <= delivered {
            if before.is_some_and(|before| seq < before) {
                // This connection went back: the feed began a new session.
                let name = String::from_utf8_lossy(key).into_owned();
                let was_open = track.gap_since.is_some();
                give_up(track, &name, ready);
                self.open -= usize::from(was_open);
                track.sessions += 1;
                track.recent.clear();
                warn!(key = %name, seq, "the feed restarted its numbering");
                ready.push_back(Stamped::unstamped(Event::Unrecovered {
                    channel: name,
                    epoch: track.sessions.to_string(),
                    seq: seq.saturating_sub(1),
                }));
                deliver(track, &self.counters, ready, (event, connection, at), seq);
                return;
            }
            self.counters
                .copy_lost(track.won_at(seq).map(|won| at - won));
            return;
        }
        if seq == delivered + 1 {
            deliver(track, &self.counters, ready, (event, connection, at), seq);
            if release(track, &self.counters, ready) {
                self.open -= 1;
            }
            return;
        }
        if track.held.contains_key(&seq) {
            self.counters
                .copy_lost(track.won_at(seq).map(|won| at - won));
            return;
        }
        // Named now, while the frame that holds the key is still here.
        let overflow =
            (track.held.len() >= WINDOW).then(|| String::from_utf8_lossy(key).into_owned());
        track.held.insert(
            seq,
            Held {
                event,
                connection,
                at,
            },
        );
        if track.gap_since.is_none() {
            track.gap_since = Some(now);
            self.open += 1;
        }
        if let Some(name) = overflow {
            warn!(key = %name, held = WINDOW, "too many messages behind a gap");
            give_up(track, &name, ready);
            self.open -= 1;
        }
    }

    /// Gives up on every gap open longer than the gap timeout.
    pub(crate) fn expire(&mut self, now: Instant, ready: &mut VecDeque<Stamped>) {
        if self.open == 0 {
            return;
        }
        for (key, track) in &mut self.tracks {
            if track
                .gap_since
                .is_some_and(|at| now >= at + self.gap_timeout)
            {
                let name = String::from_utf8_lossy(key);
                warn!(key = %name, timeout = ?self.gap_timeout, "feed gap not filled in time");
                give_up(track, &name, ready);
                self.open -= 1;
            }
        }
    }

    /// Every connection has ended: deliver what is held, reporting its gaps.
    pub(crate) fn finish(&mut self, ready: &mut VecDeque<Stamped>) {
        for (key, track) in &mut self.tracks {
            if track.gap_since.is_some() {
                give_up(track, &String::from_utf8_lossy(key), ready);
            }
        }
        self.open = 0;
    }

    /// Messages held behind gaps, over all keys.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.tracks.values().map(|t| t.held.len()).sum()
    }
}

fn deliver(
    track: &mut Track,
    counters: &Counters,
    ready: &mut VecDeque<Stamped>,
    (event, connection, at): (Event, usize, Instant),
    seq: u64,
) {
    counters.won(connection);
    track.delivered = Some(seq);
    track.remember(seq, at);
    ready.push_back(Stamped::arrived(event, connection, at));
}

/// Delivers the held messages that are next in line; `true` if that closed the gap.
fn release(track: &mut Track, counters: &Counters, ready: &mut VecDeque<Stamped>) -> bool {
    while let Some(entry) = track.held.first_entry() {
        if Some(*entry.key()) != track.delivered.map(|d| d + 1) {
            break;
        }
        let (seq, held) = entry.remove_entry();
        deliver(
            track,
            counters,
            ready,
            (held.event, held.connection, held.at),
            seq,
        );
    }
    if track.held.is_empty() && track.gap_since.is_some() {
        track.gap_since = None;
        return true;
    }
    false
}

/// Reports every hole before the held messages and delivers them, closing the gap.
fn give_up(track: &mut Track, key: &str, ready: &mut VecDeque<Stamped>) {
    while let Some((seq, held)) = track.held.pop_first() {
        let expected = track.delivered.map_or(seq, |d| d + 1);
        if seq > expected {
            ready.push_back(Stamped::unstamped(Event::Gap {
                channel: key.to_owned(),
                expected,
                received: seq,
            }));
        }
        track.delivered = Some(seq);
        track.remember(seq, held.at);
        ready.push_back(Stamped::arrived(held.event, held.connection, held.at));
    }
    track.gap_since = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequencer() -> FeedSequencer {
        let by = SequenceBy {
            text: Some(Arc::new(|text: &str| {
                let (key, seq) = text.split_once(':')?;
                Some((key, seq.parse().ok()?))
            })),
            binary: None,
        };
        FeedSequencer::new(by, Duration::from_millis(100), Arc::new(Counters::new(3)))
    }

    fn accept(
        s: &mut FeedSequencer,
        out: &mut VecDeque<Stamped>,
        connection: usize,
        text: &str,
        now: Instant,
    ) {
        s.accept(connection, Event::Message(text.into()), now, now, out);
    }

    fn drain(out: &mut VecDeque<Stamped>) -> Vec<String> {
        out.drain(..)
            .map(|stamped| match stamped.event {
                Event::Message(text) => text.into_string(),
                Event::Gap {
                    channel,
                    expected,
                    received,
                } => format!("gap {channel} {expected}..{received}"),
                Event::Unrecovered { channel, seq, .. } => format!("restart {channel} after {seq}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_first_copy_wins_and_gaps_wait_for_another_connection() {
        let (mut s, mut out, now) = (sequencer(), VecDeque::new(), Instant::now());
        // Each connection brings the numbers in order, as a socket does.
        for (connection, text) in [
            (0, "a:1"),
            (1, "a:1"),
            (1, "a:2"),
            (0, "a:2"),
            (0, "b:7"),
            (0, "a:4"),
            (1, "a:3"),
            (1, "a:4"),
            (2, "pass through"),
            (2, "a:3"),
        ] {
            accept(&mut s, &mut out, connection, text, now);
        }
        assert_eq!(
            drain(&mut out),
            ["a:1", "a:2", "b:7", "a:3", "a:4", "pass through"]
        );
        let metrics = s.counters.snapshot(0);
        assert_eq!(metrics.wins, [3, 2, 0]);
        assert_eq!(metrics.copies_dropped, 4);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_binary_feed_is_raced_by_its_own_numbers_and_text_passes() {
        // Frames of a binary feed: one key byte, then a big-endian u64.
        let by = SequenceBy {
            text: None,
            binary: Some(Arc::new(|frame: &[u8]| {
                let (key, seq) = frame.split_at_checked(1)?;
                Some((key, u64::from_be_bytes(seq.try_into().ok()?)))
            })),
        };
        let mut s = FeedSequencer::new(by, Duration::from_millis(100), Arc::new(Counters::new(2)));
        let (mut out, now) = (VecDeque::new(), Instant::now());
        let frame = |key: u8, seq: u64| {
            let mut bytes = vec![key];
            bytes.extend_from_slice(&seq.to_be_bytes());
            Event::Binary(bytes)
        };
        for (connection, event) in [
            (0, frame(b'a', 1)),
            (1, frame(b'a', 1)),
            (1, frame(b'a', 2)),
            (0, frame(b'a', 2)),
            (0, Event::Message("a:1".into())),
        ] {
            s.accept(connection, event, now, now, &mut out);
        }
        let delivered: Vec<Event> = out.drain(..).map(|s| s.event).collect();
        assert_eq!(
            delivered,
            [frame(b'a', 1), frame(b'a', 2), Event::Message("a:1".into())]
        );
        assert_eq!(s.counters.snapshot(0).copies_dropped, 2);
    }

    #[test]
    fn an_unfilled_gap_is_reported_after_the_timeout_and_delivery_goes_on() {
        let (mut s, mut out, now) = (sequencer(), VecDeque::new(), Instant::now());
        for text in ["a:1", "a:3", "a:4"] {
            accept(&mut s, &mut out, 0, text, now);
        }
        assert_eq!(drain(&mut out), ["a:1"]);
        assert_eq!(s.deadline(), Some(now + Duration::from_millis(100)));
        s.expire(now + Duration::from_millis(50), &mut out);
        assert!(out.is_empty());
        s.expire(now + Duration::from_millis(100), &mut out);
        assert_eq!(drain(&mut out), ["gap a 2..3", "a:3", "a:4"]);
        accept(&mut s, &mut out, 0, "a:5", now);
        accept(&mut s, &mut out, 1, "a:2", now);
        assert_eq!(
            drain(&mut out),
            ["a:5"],
            "a copy after the gap was given up is late"
        );
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_feed_that_restarts_its_numbering_is_reported_not_stuck() {
        let (mut s, mut out, now) = (sequencer(), VecDeque::new(), Instant::now());
        for text in ["a:41", "a:42", "a:43", "a:1", "a:2"] {
            accept(&mut s, &mut out, 0, text, now);
        }
        assert_eq!(
            drain(&mut out),
            ["a:41", "a:42", "a:43", "restart a after 0", "a:1", "a:2"]
        );
    }

    /// Counts the messages delivered and the numbers reported missing.
    fn count(out: &mut VecDeque<Stamped>, delivered: &mut usize, gaps: &mut usize) {
        for stamped in out.drain(..) {
            match stamped.event {
                Event::Message(_) => *delivered += 1,
                Event::Gap {
                    expected, received, ..
                } => *gaps += usize::try_from(received - expected).unwrap_or(usize::MAX),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_million_messages_with_ten_keys() {
        let (mut s, mut out, now) = (sequencer(), VecDeque::new(), Instant::now());
        let (mut delivered, mut gaps) = (0usize, 0usize);
        // Connection 0 misses every hundredth number; connection 1 brings every number, in
        // order, 3,000 behind: more than the window, so gaps are given up before it fills
        // them and its copies come late (dropped, counted).
        for n in 1..=50_000u64 {
            for key in 0..10 {
                if n % 100 != 0 {
                    accept(&mut s, &mut out, 0, &format!("k{key}:{n}"), now);
                }
                if n > 3_000 {
                    accept(&mut s, &mut out, 1, &format!("k{key}:{}", n - 3_000), now);
                }
            }
            count(&mut out, &mut delivered, &mut gaps);
            assert!(s.held() <= 10 * (WINDOW + 1));
            assert!(s.tracks.values().all(|t| t.recent.len() <= RECENT));
        }
        s.finish(&mut out);
        count(&mut out, &mut delivered, &mut gaps);
        // The last number of each key never came, and nothing after it tells it is missing.
        assert_eq!(
            delivered + gaps,
            10 * 49_999,
            "every number delivered or reported"
        );
        let metrics = s.counters.snapshot(0);
        assert!(
            metrics.copies_dropped >= 10 * 40_000,
            "{}",
            metrics.copies_dropped
        );
    }
}
