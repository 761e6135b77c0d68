//! [`Subscriptions`]: what one connection is subscribed to, the `subscribe` calls waiting for
//! the hub's answer, where the connection stands in each channel, and what each outstanding
//! `Subscribe` asked for. One owner for all four, so that they cannot disagree. No I/O: it
//! returns the frames to send and the arrivals for the sequencer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use ws_protocol::{ChannelPosition, Position, WsMessage};

use super::arrival::{Arrival, Asked};
use crate::error::{Error, Result};

/// A `subscribe` call waiting for the hub's `Subscribed` (or its refusal).
struct PendingSubscribe {
    channels: Vec<String>,
    /// The channels it added to the subscriptions (not subscribed before).
    added: Vec<String>,
    done: oneshot::Sender<Result<()>>,
}

/// Where this connection stands in a channel: the epoch it subscribed in and the highest
/// `seq` it received.
struct Standing {
    epoch: Arc<str>,
    seq: u64,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Subscriptions {
    /// How many of the latest publications a new subscription asks for (the builder's
    /// `rewind`), unless its call says otherwise.
    rewind: Option<u64>,
    /// The rewind each channel was subscribed with, for the resubscribe of channels that
    /// have no position yet.
    rewinds: HashMap<String, u64>,
    channels: BTreeSet<String>,
    pending: Vec<PendingSubscribe>,
    standing: HashMap<String, Standing>,
    /// What each outstanding `Subscribe` asked for, by channel.
    asked: HashMap<String, Asked>,
}

impl Subscriptions {
    /// No subscriptions yet; new ones ask for the last `rewind` publications.
    pub(crate) fn new(rewind: Option<u64>) -> Self {
        Self {
            rewind,
            ..Self::default()
        }
    }

    /// Whether the connection is subscribed to nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// A `subscribe` call of `channels`, answered through `done` once the hub confirms or
    /// refuses; channels in `since` not yet subscribed start from their position there.
    /// Returns the `Subscribe` frame to send now (connected); while disconnected the call
    /// waits for the resubscribe after the reconnect (see [`Self::resubscribe`]), which
    /// carries those positions.
    pub(crate) fn subscribe(
        &mut self,
        channels: Vec<String>,
        rewind: Option<u64>,
        mut since: BTreeMap<String, Position>,
        done: oneshot::Sender<Result<()>>,
        connected: bool,
    ) -> Option<String> {
        let rewind = rewind.or(self.rewind).filter(|n| *n > 0);
        if let Some(n) = rewind {
            for channel in &channels {
                self.rewinds.insert(channel.clone(), n);
            }
        }
        // A channel already subscribed keeps its own position.
        since.retain(|channel, _| !self.channels.contains(channel));
        for (channel, position) in &since {
            self.standing.insert(
                channel.clone(),
                Standing {
                    epoch: Arc::from(position.epoch.as_str()),
                    seq: position.seq,
                },
            );
        }
        let frame = connected.then(|| {
            for channel in &channels {
                self.asked
                    .insert(channel.clone(), Asked::by(&since, channel));
            }
            WsMessage::Subscribe {
                channels: channels.clone(),
                since,
                rewind,
            }
            .to_json()
        });
        let added = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .cloned()
            .collect();
        self.channels.extend(channels.iter().cloned());
        self.pending.push(PendingSubscribe {
            channels,
            added,
            done,
        });
        frame
    }

    /// Forgets `channels` (an `unsubscribe` call); the hub is told by the caller if connected.
    pub(crate) fn unsubscribe(&mut self, channels: &[String]) {
        for channel in channels {
            self.channels.remove(channel);
            self.standing.remove(channel);
            self.rewinds.remove(channel);
        }
    }

    /// The `Subscribe` asking the hub for `channel`'s publications after `since` (a gap the
    /// sequencer wants filled), if the connection is subscribed to it.
    pub(crate) fn fill(&mut self, channel: String, since: Position) -> Option<String> {
        if !self.channels.contains(&channel) {
            return None;
        }
        self.asked.insert(channel.clone(), Asked::Fill);
        let frame = WsMessage::Subscribe {
            rewind: None,
            channels: vec![channel.clone()],
            since: BTreeMap::from([(channel, since)]),
        };
        Some(frame.to_json())
    }

    /// The `Subscribe` restoring every subscription (after a reconnect, or on a rotation's new
    /// connection), with this connection's positions so that the hub replays what was
    /// missed; and those positions.
    pub(crate) fn resubscribe(&mut self) -> (String, BTreeMap<String, Position>) {
        let channels: Vec<String> = self.channels.iter().cloned().collect();
        let since: BTreeMap<String, Position> = channels
            .iter()
            .filter_map(|c| {
                self.standing.get(c).map(|p| {
                    let position = Position {
                        epoch: p.epoch.to_string(),
                        seq: p.seq,
                    };
                    (c.clone(), position)
                })
            })
            .collect();
        for channel in &channels {
            self.asked
                .insert(channel.clone(), Asked::by(&since, channel));
        }
        // Channels without a position yet get the rewind they were subscribed with.
        let rewind = channels
            .iter()
            .filter(|c| !since.contains_key(*c))
            .filter_map(|c| self.rewinds.get(c).copied())
            .max();
        let frame = WsMessage::Subscribe {
            channels,
            since: since.clone(),
            rewind,
        }
        .to_json();
        (frame, since)
    }

    /// Takes in a `Subscribed` on `connection`: remembers where each channel stands (a
    /// recovered position keeps counting from what was seen, as the replay follows), queues
    /// each position for the sequencer in `out`, and resolves the `subscribe` calls it
    /// confirms.
    pub(crate) fn on_subscribed(
        &mut self,
        connection: usize,
        channels: &[String],
        positions: BTreeMap<String, ChannelPosition>,
        out: &mut VecDeque<Arrival>,
    ) {
        for (channel, position) in positions {
            let asked = self.asked.remove(&channel).unwrap_or(Asked::Fresh);
            if !self.channels.contains(&channel) {
                continue;
            }
            let keep = position.recovered
                && self
                    .standing
                    .get(&channel)
                    .is_some_and(|p| *p.epoch == position.epoch);
            if !keep {
                // A replay from elsewhere than our position follows: count from its start.
                let seq = position
                    .replay_from
                    .map_or(position.seq, |first| first.saturating_sub(1));
                self.standing.insert(
                    channel.clone(),
                    Standing {
                        epoch: Arc::from(position.epoch.as_str()),
                        seq,
                    },
                );
            }
            out.push_back(Arrival::Position {
                connection,
                channel,
                position,
                asked,
            });
        }
        self.confirm(channels);
    }

    /// A publication `seq` of `channel` arrived: returns the epoch the connection subscribed
    /// in (`None` if it is not subscribed).
    pub(crate) fn on_publication(&mut self, channel: &str, seq: u64) -> Option<Arc<str>> {
        self.standing.get_mut(channel).map(|p| {
            p.seq = p.seq.max(seq);
            p.epoch.clone()
        })
    }

    /// The hub refused a `Subscribe` of `channels`: the `subscribe` calls it answers fail with
    /// the hub's reason, and the channels they added are dropped.
    pub(crate) fn refused(&mut self, channels: &[String], code: &str, message: &str) {
        let mut i = 0;
        while i < self.pending.len() {
            if !self.pending[i]
                .channels
                .iter()
                .any(|c| channels.contains(c))
            {
                i += 1;
                continue;
            }
            let pending = self.pending.remove(i);
            for channel in &pending.added {
                self.channels.remove(channel);
                self.standing.remove(channel);
                self.asked.remove(channel);
            }
            let reason = format!("the hub refused: {code}: {message}");
            let _ = pending.done.send(Err(Error::Subscribe(reason)));
        }
    }

    /// Resolves every pending `subscribe` whose channels the hub confirmed.
    fn confirm(&mut self, confirmed: &[String]) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i]
                .channels
                .iter()
                .all(|c| confirmed.contains(c))
            {
                let pending = self.pending.remove(i);
                let _ = pending.done.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    /// Fails every pending `subscribe` call with `error` (the connection ended for good).
    pub(crate) fn fail_pending(&mut self, error: &Error) {
        for pending in self.pending.drain(..) {
            let _ = pending.done.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(epoch: &str, seq: u64, recovered: bool) -> ChannelPosition {
        ChannelPosition {
            replay_from: None,
            epoch: epoch.to_owned(),
            seq,
            recovered,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_subscribe_is_answered_when_the_hub_confirms_all_its_channels() {
        let mut subs = Subscriptions::default();
        let (done, mut answer) = oneshot::channel();
        let frame = subs
            .subscribe(names(&["a", "b"]), None, BTreeMap::new(), done, true)
            .unwrap();
        assert!(frame.contains("\"Subscribe\""));
        let mut out = VecDeque::new();
        let positions = BTreeMap::from([("a".to_owned(), position("e", 3, false))]);
        subs.on_subscribed(0, &names(&["a"]), positions, &mut out);
        assert!(answer.try_recv().is_err(), "b is not confirmed yet");
        let positions = BTreeMap::from([
            ("a".to_owned(), position("e", 3, false)),
            ("b".to_owned(), position("e", 0, false)),
        ]);
        subs.on_subscribed(0, &names(&["a", "b"]), positions, &mut out);
        assert!(answer.try_recv().unwrap().is_ok());
        assert_eq!(out.len(), 3);
        assert!(matches!(
            &out[0],
            Arrival::Position { channel, asked: Asked::Fresh, .. } if channel == "a"
        ));
    }

    #[test]
    fn a_refusal_fails_the_call_and_drops_only_what_it_added() {
        let mut subs = Subscriptions::default();
        let (first, _) = oneshot::channel();
        subs.subscribe(names(&["a"]), None, BTreeMap::new(), first, true);
        let positions = BTreeMap::from([("a".to_owned(), position("e", 0, true))]);
        subs.on_subscribed(0, &names(&["a"]), positions, &mut VecDeque::new());
        let (second, mut answer) = oneshot::channel();
        subs.subscribe(
            names(&["a", "forbidden"]),
            None,
            BTreeMap::new(),
            second,
            true,
        );
        subs.refused(&names(&["a", "forbidden"]), "forbidden", "no");
        let error = answer.try_recv().unwrap().unwrap_err();
        assert!(error.to_string().contains("forbidden: no"), "{error}");
        let (frame, _) = subs.resubscribe();
        assert!(frame.contains("\"a\""), "a was subscribed before: {frame}");
        assert!(!frame.contains("forbidden"), "{frame}");
    }

    #[test]
    fn resubscribe_resumes_from_the_last_seq_seen_in_the_same_epoch() {
        let mut subs = Subscriptions::default();
        let (done, _) = oneshot::channel();
        subs.subscribe(names(&["a", "b"]), None, BTreeMap::new(), done, true);
        let mut out = VecDeque::new();
        let positions = BTreeMap::from([("a".to_owned(), position("e1", 5, false))]);
        subs.on_subscribed(1, &names(&["a"]), positions, &mut out);
        assert_eq!(subs.on_publication("a", 7).as_deref(), Some("e1"));
        assert_eq!(subs.on_publication("a", 6).as_deref(), Some("e1"));
        assert_eq!(subs.on_publication("b", 1), None, "b has no position yet");

        let (frame, since) = subs.resubscribe();
        assert_eq!(since["a"].seq, 7);
        assert_eq!(since["a"].epoch, "e1");
        assert!(!since.contains_key("b"));
        assert!(frame.contains("\"since\""));
        // A recovered answer keeps counting from what was seen, as the replay follows.
        let positions = BTreeMap::from([("a".to_owned(), position("e1", 9, true))]);
        out.clear();
        subs.on_subscribed(1, &names(&["a"]), positions, &mut out);
        assert!(matches!(
            &out[0],
            Arrival::Position {
                asked: Asked::Resumed { since: 7 },
                connection: 1,
                ..
            }
        ));
        let (_, since) = subs.resubscribe();
        assert_eq!(since["a"].seq, 7);
        // A new epoch starts over.
        let positions = BTreeMap::from([("a".to_owned(), position("e2", 2, false))]);
        subs.on_subscribed(1, &names(&["a"]), positions, &mut out);
        let (_, since) = subs.resubscribe();
        assert_eq!((since["a"].epoch.as_str(), since["a"].seq), ("e2", 2));
    }

    #[test]
    fn fills_and_unsubscribes_only_touch_subscribed_channels() {
        let mut subs = Subscriptions::default();
        let since = Position {
            epoch: "e".to_owned(),
            seq: 1,
        };
        assert!(subs.fill("a".to_owned(), since.clone()).is_none());
        let (done, _) = oneshot::channel();
        assert!(
            subs.subscribe(names(&["a"]), None, BTreeMap::new(), done, false)
                .is_none()
        );
        let frame = subs.fill("a".to_owned(), since).unwrap();
        assert!(frame.contains("\"since\""));
        subs.unsubscribe(&names(&["a"]));
        assert!(subs.is_empty());
    }

    #[test]
    fn pending_calls_fail_with_the_connections_error() {
        let mut subs = Subscriptions::default();
        let (done, mut answer) = oneshot::channel();
        subs.subscribe(names(&["a"]), None, BTreeMap::new(), done, false);
        subs.fail_pending(&Error::Closed);
        assert!(matches!(answer.try_recv().unwrap(), Err(Error::Closed)));
    }
}
