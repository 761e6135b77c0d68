//! [`Sequencer`]: turns what every connection of the client received into one stream for the
//! application: each channel's publications in `seq` order, each exactly once, with gaps
//! filled from the hub's history or reported.
//!
//! Every connection (one, or several with redundancy, or two during a rotation) hands its
//! arrivals to one bounded queue; the sequencer runs on the application's side of that queue
//! (inside `next_event`), so it needs no task and no lock of its own. Per channel it keeps
//! the epoch, the last `seq` delivered and, while a gap is open, the publications that came
//! after it (bounded in number and in time). The first copy of a publication wins; later
//! copies are dropped by `(channel, seq)`, so deduplication costs one integer per channel.
//!
//! A gap (a publication beyond the next expected `seq`) is held open while the hub is asked
//! for the missing ones (`Subscribe` with `since`, answered from its history); another
//! connection may deliver them first. When the hub cannot replay them, or nothing fills the
//! gap within the gap timeout, the application is told with [`Event::Gap`] and delivery goes
//! on after it. A connection that resumed in another epoch (the hub lost its history) ends
//! in [`Event::Unrecovered`]. Publications the hub conflated on purpose (`Conflated`) are not
//! gaps.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;
use ws_protocol::{ChannelPosition, Payload, Position};

pub(crate) use crate::driver::arrival::{Arrival, Asked};
use crate::epochs::Epochs;
use crate::event::Event;
use crate::feed::FeedSequencer;
use crate::metrics::Counters;
use crate::stamped::Stamped;

mod track;

use track::Track;

/// Default for [`ClientBuilder::gap_timeout`](crate::ClientBuilder::gap_timeout).
pub const DEFAULT_GAP_TIMEOUT: Duration = Duration::from_secs(3);
/// The most publications held back behind gaps, over all channels.
pub(crate) const MAX_HELD: usize = 16_384;

/// A request to a connection to ask the hub for the publications after `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FillRequest {
    pub(crate) connection: usize,
    pub(crate) channel: String,
    pub(crate) since: Position,
}

/// The ordering, deduplicating, gap-filling stage. See the module documentation.
pub(crate) struct Sequencer {
    tracks: HashMap<String, Track>,
    held: usize,
    /// Set when a gap opens; cleared by `deadline` once none is left open.
    gaps_opened: bool,
    gap_timeout: Duration,
    ready: VecDeque<Stamped>,
    fills: Vec<FillRequest>,
    counters: Arc<Counters>,
    /// Messages of a server that is not the hub, deduplicated by their own numbers
    /// ([`ClientBuilder::sequence_by`](crate::ClientBuilder::sequence_by)).
    feed: Option<FeedSequencer>,
    /// Several connections race: copies that lose are timed against the winner.
    racing: bool,
    /// Each followed channel's epoch, for [`WebSocketClient::epoch`](crate::WebSocketClient::epoch).
    epochs: Arc<Epochs>,
}

impl Sequencer {
    pub(crate) fn new(
        gap_timeout: Duration,
        counters: Arc<Counters>,
        feed: Option<FeedSequencer>,
        epochs: Arc<Epochs>,
    ) -> Self {
        Self {
            tracks: HashMap::new(),
            held: 0,
            gaps_opened: false,
            gap_timeout,
            ready: VecDeque::new(),
            fills: Vec::new(),
            racing: counters.connections() > 1,
            counters,
            feed,
            epochs,
        }
    }

    /// The next event for the application, if one is ready.
    pub(crate) fn pop(&mut self) -> Option<Stamped> {
        self.ready.pop_front()
    }

    /// Takes in one arrival and gives the next event, if one is ready then. A message that
    /// needs no sequencing (no feed sequencer) with nothing ready before it goes straight
    /// back, without a trip through the queue of ready events.
    pub(crate) fn accept_next(&mut self, arrival: Arrival, now: Instant) -> Option<Stamped> {
        if self.passes_messages_through()
            && let Arrival::Message {
                connection,
                event,
                received_at,
            } = arrival
        {
            return Some(Stamped::arrived(event, connection, received_at));
        }
        self.accept(arrival, now);
        self.pop()
    }

    /// Takes the plain messages at the front of `arrivals` into `into`, at most `room` of
    /// them, while nothing else waits in the sequencer (the shortcut of
    /// [`accept_next`](Self::accept_next), a run at a time: what a busy feed brings);
    /// returns how many.
    pub(crate) fn accept_messages(
        &mut self,
        arrivals: &mut std::vec::IntoIter<Arrival>,
        into: &mut Vec<Stamped>,
        room: usize,
    ) -> usize {
        if !self.passes_messages_through() {
            return 0;
        }
        let mut taken = 0;
        while taken < room && matches!(arrivals.as_slice().first(), Some(Arrival::Message { .. })) {
            if let Some(Arrival::Message {
                connection,
                event,
                received_at,
            }) = arrivals.next()
            {
                into.push(Stamped::arrived(event, connection, received_at));
                taken += 1;
            }
        }
        taken
    }

    /// Whether a plain message goes to the application as it came: no feed sequence to
    /// deduplicate it by, and nothing ready that must go first.
    fn passes_messages_through(&self) -> bool {
        self.feed.is_none() && self.ready.is_empty()
    }

    /// An event the client made itself, for the application.
    fn emit(&mut self, event: Event) {
        self.ready.push_back(Stamped::unstamped(event));
    }

    /// The gap fills to ask for now.
    pub(crate) fn take_fills(&mut self) -> Vec<FillRequest> {
        std::mem::take(&mut self.fills)
    }

    /// When the oldest open gap times out. Asked before every wait, so without a gap it
    /// answers without looking at any channel.
    pub(crate) fn deadline(&mut self) -> Option<Instant> {
        let feed = self.feed.as_ref().and_then(FeedSequencer::deadline);
        if !self.gaps_opened {
            return feed;
        }
        let oldest = self.tracks.values().filter_map(|t| t.gap_since).min();
        self.gaps_opened = oldest.is_some();
        let hub = oldest.map(|at| at + self.gap_timeout);
        hub.into_iter().chain(feed).min()
    }

    /// Stops tracking `channel` (the application unsubscribed).
    pub(crate) fn forget(&mut self, channel: &str) {
        self.epochs.remove(channel);
        if let Some(track) = self.tracks.remove(channel) {
            self.held -= track.held.len();
        }
    }

    /// Takes in one arrival.
    pub(crate) fn accept(&mut self, arrival: Arrival, now: Instant) {
        match arrival {
            Arrival::Publication {
                connection,
                epoch,
                channel,
                seq,
                data,
                received_at,
            } => {
                let from = (connection, received_at);
                self.publication(from, epoch.as_deref(), channel, seq, data, now);
            }
            Arrival::Message {
                connection,
                event,
                received_at,
            } => match &mut self.feed {
                Some(feed) => feed.accept(connection, event, received_at, now, &mut self.ready),
                None => {
                    let stamped = Stamped::arrived(event, connection, received_at);
                    self.ready.push_back(stamped);
                }
            },
            Arrival::Position {
                connection,
                channel,
                position,
                asked,
            } => self.position(connection, channel, position, asked, now),
            Arrival::Conflated {
                connection,
                channel,
                skipped,
            } => {
                if let Some(track) = self.tracks.get_mut(&channel) {
                    if track.conflated.len() <= connection {
                        track.conflated.resize(connection + 1, 0);
                    }
                    track.conflated[connection] += skipped;
                }
                self.emit(Event::Conflated {
                    channel: channel.clone(),
                    skipped,
                });
                self.release(&channel);
            }
            Arrival::Event(event) => self.emit(event),
        }
    }

    /// Gives up on every gap open longer than the gap timeout.
    pub(crate) fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.gap_since.is_some_and(|at| now >= at + self.gap_timeout))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            warn!(%channel, timeout = ?self.gap_timeout, "gap not filled in time");
            self.give_up(&channel);
        }
        if let Some(feed) = &mut self.feed {
            feed.expire(now, &mut self.ready);
        }
    }

    /// Every connection has ended: deliver whatever is held, reporting its gaps.
    pub(crate) fn finish(&mut self) {
        let channels: Vec<String> = self.tracks.keys().cloned().collect();
        for channel in channels {
            self.give_up(&channel);
        }
        if let Some(feed) = &mut self.feed {
            feed.finish(&mut self.ready);
        }
    }

    fn deliver(
        &mut self,
        (connection, at): (usize, Instant),
        channel: String,
        seq: u64,
        data: Payload,
    ) {
        self.counters.won(connection);
        let event = Event::Publication { channel, seq, data };
        self.ready
            .push_back(Stamped::arrived(event, connection, at));
    }

    fn publication(
        &mut self,
        (connection, at): (usize, Instant),
        epoch: Option<&str>,
        channel: String,
        seq: u64,
        data: Payload,
        now: Instant,
    ) {
        let Some(track) = self.tracks.get_mut(&channel) else {
            // Not tracked (no Subscribed seen, or unsubscribed meanwhile): as it comes.
            return self.deliver((connection, at), channel, seq, data);
        };
        if epoch.is_some_and(|e| e != track.epoch) {
            // Another incarnation of the channel.
            return;
        }
        if seq <= track.delivered || track.held.contains_key(&seq) {
            // A copy already delivered or held: timed against the winner when racing.
            if self.racing {
                let lead = track.won_at(seq).map(|won| at - won);
                self.counters.copy_lost(lead);
            }
            return;
        }
        if seq == track.delivered + 1
            || (track.held.is_empty() && track.conflated_over(connection, seq))
        {
            track.delivered = seq;
            track.remember(self.racing, seq, at);
            if track.held.is_empty() {
                return self.deliver((connection, at), channel, seq, data);
            }
            // It filled a gap: what was held behind it may follow.
            self.deliver((connection, at), channel.clone(), seq, data);
            return self.release(&channel);
        }
        track.held.insert(seq, (data, connection, at));
        self.held += 1;
        if track.gap_since.is_none() {
            track.gap_since = Some(now);
            self.gaps_opened = true;
            self.fills.push(FillRequest {
                connection,
                channel: channel.clone(),
                since: Position {
                    epoch: track.epoch.clone(),
                    seq: track.delivered,
                },
            });
        }
        if self.held > MAX_HELD {
            warn!(%channel, held = self.held, "too many publications held behind a gap");
            self.give_up(&channel);
        }
    }

    fn position(
        &mut self,
        connection: usize,
        channel: String,
        position: ChannelPosition,
        asked: Asked,
        now: Instant,
    ) {
        // Where delivery goes on from: after the hub's latest `seq`, or before the first
        // publication it replays (a rewind, or a new epoch replayed from its start).
        let start = position
            .replay_from
            .map_or(position.seq, |first| first.saturating_sub(1));
        let Some(track) = self.tracks.get_mut(&channel) else {
            // A new channel. Subscribed from a position of the application's own, the replay
            // follows from there, or the application is told that it cannot.
            match asked {
                Asked::Resumed { since } if position.recovered => {
                    let from = position
                        .replay_from
                        .map_or(since, |first| first.saturating_sub(1));
                    self.start_track(channel, position.epoch, from);
                }
                Asked::Resumed { since } => {
                    warn!(%channel, since, "the hub cannot replay from the position asked for");
                    self.start_track(channel.clone(), position.epoch.clone(), start);
                    self.emit(Event::Unrecovered {
                        channel,
                        epoch: position.epoch,
                        seq: start,
                    });
                }
                _ => self.start_track(channel, position.epoch, start),
            }
            return;
        };
        if track.epoch != position.epoch {
            // The channel's history was lost (hub restart, or it expired): what was held
            // belongs to the old sequence; start again from the hub's position.
            warn!(%channel, "missed publications could not be recovered (new epoch)");
            self.held -= track.held.len();
            self.start_track(channel.clone(), position.epoch.clone(), start);
            self.emit(Event::Unrecovered {
                channel,
                epoch: position.epoch,
                seq: start,
            });
            return;
        }
        match (asked, position.recovered) {
            (Asked::Resumed { .. }, _) if track.gap_since.is_some() => {
                // A gap is open and this connection is back: ask it too.
                self.fills.push(FillRequest {
                    connection,
                    since: Position {
                        epoch: track.epoch.clone(),
                        seq: track.delivered,
                    },
                    channel,
                });
            }
            (Asked::Resumed { .. }, false) if position.seq > track.delivered => {
                // This connection cannot replay from its own position, but what the
                // application has seen may be older and still in the history: ask for that.
                track.gap_since = Some(now);
                self.gaps_opened = true;
                self.fills.push(FillRequest {
                    connection,
                    since: Position {
                        epoch: track.epoch.clone(),
                        seq: track.delivered,
                    },
                    channel,
                });
            }
            (Asked::Fill, false) => {
                if track.held.is_empty() && position.seq > track.delivered {
                    warn!(%channel, "missed publications could not be recovered");
                    track.delivered = position.seq;
                    track.gap_since = None;
                    self.emit(Event::Unrecovered {
                        channel,
                        epoch: position.epoch,
                        seq: position.seq,
                    });
                } else {
                    self.give_up(&channel);
                }
            }
            // Recovered: the replay follows. Fresh on a known channel: nothing changes.
            _ => {}
        }
    }

    /// Starts following `channel` in `epoch`, delivered up to `delivered`.
    fn start_track(&mut self, channel: String, epoch: String, delivered: u64) {
        self.epochs.set(&channel, &epoch);
        self.tracks.insert(channel, Track::new(epoch, delivered));
    }

    /// Delivers held publications that have become next in line.
    fn release(&mut self, channel: &str) {
        let racing = self.racing;
        let Some(track) = self.tracks.get_mut(channel) else {
            return;
        };
        let mut released = Vec::new();
        while let Some((&seq, &(_, connection, _))) = track.held.first_key_value() {
            if seq != track.delivered + 1 && !track.conflated_over(connection, seq) {
                break;
            }
            let Some((seq, (data, connection, at))) = track.held.pop_first() else {
                break;
            };
            track.delivered = seq;
            track.remember(racing, seq, at);
            released.push(((connection, at), seq, data));
        }
        if track.held.is_empty() {
            track.gap_since = None;
        }
        self.held -= released.len();
        for (from, seq, data) in released {
            self.deliver(from, channel.to_owned(), seq, data);
        }
    }

    /// Reports every hole before the held publications and delivers them.
    fn give_up(&mut self, channel: &str) {
        loop {
            self.release(channel);
            let Some(track) = self.tracks.get_mut(channel) else {
                return;
            };
            track.gap_since = None;
            let Some(&next) = track.held.keys().next() else {
                return;
            };
            let expected = track.delivered + 1;
            track.delivered = next - 1;
            self.emit(Event::Gap {
                channel: channel.to_owned(),
                expected,
                received: next,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequencer() -> Sequencer {
        Sequencer::new(
            Duration::from_secs(1),
            Arc::new(Counters::new(3)),
            None,
            Arc::default(),
        )
    }

    fn publication(connection: usize, seq: u64) -> Arrival {
        Arrival::Publication {
            connection,
            epoch: Some(Arc::from("e")),
            channel: "c".into(),
            seq,
            data: Payload::from_json(seq.to_string()).unwrap(),
            received_at: Instant::now(),
        }
    }

    fn position(
        connection: usize,
        epoch: &str,
        seq: u64,
        recovered: bool,
        asked: Asked,
    ) -> Arrival {
        Arrival::Position {
            connection,
            channel: "c".into(),
            position: ChannelPosition {
                replay_from: None,
                epoch: epoch.into(),
                seq,
                recovered,
            },
            asked,
        }
    }

    /// Takes in every arrival at `now`.
    fn feed(s: &mut Sequencer, now: Instant, arrivals: impl IntoIterator<Item = Arrival>) {
        for arrival in arrivals {
            s.accept(arrival, now);
        }
    }

    /// Drains the ready events as short strings.
    fn out(s: &mut Sequencer) -> Vec<String> {
        std::iter::from_fn(|| s.pop())
            .map(|e| match e.event {
                Event::Publication { seq, .. } => seq.to_string(),
                Event::Gap {
                    expected, received, ..
                } => format!("gap {expected}..{received}"),
                Event::Unrecovered { epoch, seq, .. } => format!("unrecovered {epoch}@{seq}"),
                Event::Conflated { skipped, .. } => format!("conflated {skipped}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn copies_from_several_connections_are_delivered_once_in_order() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [
                position(0, "e", 0, true, Asked::Fresh),
                position(1, "e", 0, true, Asked::Fresh),
            ],
        );
        for (connection, seq) in [(0, 1), (1, 1), (1, 2), (0, 2), (0, 3), (1, 3), (1, 4)] {
            s.accept(publication(connection, seq), now);
        }
        assert_eq!(out(&mut s), ["1", "2", "3", "4"]);
        assert!(s.take_fills().is_empty());
        let metrics = s.counters.snapshot(0);
        assert_eq!(metrics.wins, [2, 2, 0]);
        // Three copies lost the race, each timed against its winner (microseconds apart).
        assert_eq!(metrics.copies_dropped, 3);
        assert!(
            metrics
                .lead_p99
                .is_some_and(|lead| lead < Duration::from_secs(1))
        );
    }

    #[test]
    fn a_gap_is_held_asked_for_and_filled() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [
                position(0, "e", 10, true, Asked::Fresh),
                publication(0, 11),
                publication(0, 14),
                publication(0, 15),
            ],
        );
        assert_eq!(out(&mut s), ["11"]);
        let fills = s.take_fills();
        assert_eq!(
            fills,
            [FillRequest {
                connection: 0,
                channel: "c".into(),
                since: Position {
                    epoch: "e".into(),
                    seq: 11
                }
            }]
        );
        s.accept(position(0, "e", 15, true, Asked::Fill), now);
        for seq in 12..=15 {
            s.accept(publication(0, seq), now);
        }
        s.accept(publication(0, 16), now);
        assert_eq!(out(&mut s), ["12", "13", "14", "15", "16"]);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_gap_the_hub_cannot_fill_is_reported_then_delivery_goes_on() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [
                position(0, "e", 0, true, Asked::Fresh),
                publication(0, 1),
                publication(0, 5),
                publication(0, 7),
                position(0, "e", 7, false, Asked::Fill),
            ],
        );
        assert_eq!(out(&mut s), ["1", "gap 2..5", "5", "gap 6..7", "7"]);
    }

    #[test]
    fn a_gap_nobody_fills_times_out() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [position(0, "e", 0, true, Asked::Fresh), publication(0, 3)],
        );
        assert!(out(&mut s).is_empty());
        assert_eq!(s.deadline(), Some(now + Duration::from_secs(1)));
        s.expire(now + Duration::from_millis(999));
        assert!(out(&mut s).is_empty());
        s.expire(now + Duration::from_secs(1));
        assert_eq!(out(&mut s), ["gap 1..3", "3"]);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_replay_from_the_start_of_a_new_epoch_is_delivered_after_the_unrecovered() {
        let mut s = sequencer();
        let now = Instant::now();
        s.accept(position(0, "e", 5, true, Asked::Fresh), now);
        let mut restarted = position(0, "f", 2, false, Asked::Resumed { since: 1 });
        if let Arrival::Position { position, .. } = &mut restarted {
            position.replay_from = Some(1);
        }
        s.accept(restarted, now);
        for seq in 1..=3 {
            s.accept(
                Arrival::Publication {
                    connection: 0,
                    epoch: Some(Arc::from("f")),
                    channel: "c".into(),
                    seq,
                    data: Payload::from_json(seq.to_string()).unwrap(),
                    received_at: now,
                },
                now,
            );
        }
        assert_eq!(out(&mut s), ["unrecovered f@0", "1", "2", "3"]);
    }

    #[test]
    fn a_rewind_on_a_new_subscription_is_delivered() {
        let mut s = sequencer();
        let now = Instant::now();
        let mut rewound = position(0, "e", 5, true, Asked::Fresh);
        if let Arrival::Position { position, .. } = &mut rewound {
            position.replay_from = Some(4);
        }
        s.accept(rewound, now);
        feed(
            &mut s,
            now,
            [publication(0, 4), publication(0, 5), publication(0, 6)],
        );
        assert_eq!(out(&mut s), ["4", "5", "6"]);
    }

    #[test]
    fn a_new_epoch_is_unrecovered_and_old_copies_are_dropped() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [
                position(0, "e", 5, true, Asked::Fresh),
                position(0, "f", 2, false, Asked::Resumed { since: 1 }),
            ],
        );
        s.accept(publication(1, 6), now); // a connection still in epoch "e"
        s.accept(
            Arrival::Publication {
                connection: 0,
                epoch: Some(Arc::from("f")),
                channel: "c".into(),
                seq: 3,
                data: Payload::from_json("3").unwrap(),
                received_at: now,
            },
            now,
        );
        assert_eq!(out(&mut s), ["unrecovered f@2", "3"]);
    }

    #[test]
    fn a_resume_that_cannot_replay_asks_from_what_was_delivered() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [position(0, "e", 0, true, Asked::Fresh), publication(1, 1)],
        );
        // Connection 0 comes back unable to replay from its own (older) position.
        s.accept(position(0, "e", 9, false, Asked::Resumed { since: 1 }), now);
        assert_eq!(s.take_fills()[0].since.seq, 1);
        s.accept(position(0, "e", 9, false, Asked::Fill), now);
        assert_eq!(out(&mut s), ["1", "unrecovered e@9"]);
        s.accept(publication(0, 10), now);
        assert_eq!(out(&mut s), ["10"]);
    }

    #[test]
    fn conflated_publications_are_not_gaps() {
        let mut s = sequencer();
        let now = Instant::now();
        feed(
            &mut s,
            now,
            [position(0, "e", 0, true, Asked::Fresh), publication(0, 1)],
        );
        s.accept(
            Arrival::Conflated {
                connection: 0,
                channel: "c".into(),
                skipped: 2,
            },
            now,
        );
        feed(&mut s, now, [publication(0, 3), publication(0, 5)]);
        assert_eq!(out(&mut s), ["1", "conflated 2", "3", "5"]);
        assert!(s.take_fills().is_empty());
        s.accept(publication(0, 7), now);
        assert!(out(&mut s).is_empty(), "the cover is used up: 6 is a gap");
    }

    #[test]
    fn held_publications_are_bounded() {
        let mut s = sequencer();
        let now = Instant::now();
        s.accept(position(0, "e", 0, true, Asked::Fresh), now);
        for seq in 2..=(MAX_HELD as u64 + 2) {
            s.accept(publication(0, seq), now);
        }
        let events = out(&mut s);
        assert_eq!(events[0], "gap 1..2");
        assert_eq!(events.len(), MAX_HELD + 2);
        assert_eq!(s.held, 0);
    }

    fn message(connection: usize, text: &str) -> Arrival {
        Arrival::Message {
            connection,
            event: Event::Message(text.into()),
            received_at: Instant::now(),
        }
    }

    #[test]
    fn a_run_of_plain_messages_is_taken_up_to_the_room_and_stops_at_anything_else() {
        let mut s = sequencer();
        let mut arrivals = vec![
            message(0, "a"),
            message(1, "b"),
            message(0, "c"),
            Arrival::Event(Event::Message("event".into())),
            message(0, "d"),
        ]
        .into_iter();
        let mut into = Vec::new();
        assert_eq!(s.accept_messages(&mut arrivals, &mut into, 2), 2);
        assert_eq!(s.accept_messages(&mut arrivals, &mut into, 10), 1);
        let taken: Vec<(String, Option<usize>)> = into
            .iter()
            .map(|st| (format!("{:?}", st.event), st.connection))
            .collect();
        assert_eq!(
            taken,
            [
                (r#"Message("a")"#.to_owned(), Some(0)),
                (r#"Message("b")"#.to_owned(), Some(1)),
                (r#"Message("c")"#.to_owned(), Some(0)),
            ]
        );
        assert!(into.iter().all(|st| st.received_at.is_some()));
        // Not a message: left for `accept_next`, which keeps the order.
        assert_eq!(s.accept_messages(&mut arrivals, &mut into, 10), 0);
        assert_eq!(arrivals.len(), 2);
    }

    #[test]
    fn no_run_is_taken_past_what_the_sequencer_holds_or_through_a_feed() {
        let mut s = sequencer();
        s.emit(Event::Message("made by the client".into()));
        let mut arrivals = vec![message(0, "a")].into_iter();
        let mut into = Vec::new();
        assert_eq!(s.accept_messages(&mut arrivals, &mut into, 10), 0);
        assert_eq!(s.pop().map(|st| st.connection), Some(None));
        assert_eq!(s.accept_messages(&mut arrivals, &mut into, 10), 1);

        let by = crate::feed::SequenceBy {
            text: Some(Arc::new(|frame: &str| Some((frame, 1)))),
            binary: None,
        };
        let feed = FeedSequencer::new(by, Duration::from_secs(1), Arc::new(Counters::new(2)));
        let mut s = Sequencer::new(
            Duration::from_secs(1),
            Arc::new(Counters::new(2)),
            Some(feed),
            Arc::default(),
        );
        let mut arrivals = vec![message(0, "a")].into_iter();
        assert_eq!(
            s.accept_messages(&mut arrivals, &mut into, 10),
            0,
            "deduplicated first"
        );
    }
}
