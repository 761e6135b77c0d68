//! What a connection hands to the [`Sequencer`](crate::sequencer::Sequencer): each frame it
//! received, decoded and stamped with the connection it came on.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use ws_protocol::{ChannelPosition, Payload, Position};

use crate::event::Event;

/// What a subscribe that produced a position asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// A new subscription: no `since`.
    Fresh,
    /// A subscribe from a position, `since`: a resubscribe after a reconnect or for a
    /// rotation (the connection's own position), or the application's
    /// [`subscribe_since`](crate::WebSocketClient::subscribe_since).
    Resumed { since: u64 },
    /// A request to fill a gap, with the sequencer's position.
    Fill,
}

impl Asked {
    /// What a `Subscribe` with `since` asks for `channel`: from its position there, if any.
    pub(crate) fn by(since: &BTreeMap<String, Position>, channel: &str) -> Self {
        since
            .get(channel)
            .map_or(Self::Fresh, |p| Self::Resumed { since: p.seq })
    }
}

/// What a connection hands over at once: every arrival one burst of reads brought (at most
/// `READ_AHEAD` of them, or one lifecycle event), so that the queue between the connections
/// and the application costs one operation per burst rather than one per frame.
pub(crate) type Batch = Vec<Arrival>;

/// One thing a connection received, for the sequencer.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A hub publication, with the epoch the connection subscribed in.
    Publication {
        connection: usize,
        epoch: Option<Arc<str>>,
        channel: String,
        seq: u64,
        data: Payload,
        /// When its frame was read from the socket.
        received_at: Instant,
    },
    /// A text or binary frame that is not part of the hub's protocol
    /// ([`Event::Message`] or [`Event::Binary`]), for the application or, with
    /// `sequence_by`, for the feed sequencer first.
    Message {
        connection: usize,
        event: Event,
        /// When its frame was read from the socket.
        received_at: Instant,
    },
    /// A channel's position from a `Subscribed`.
    Position {
        connection: usize,
        channel: String,
        position: ChannelPosition,
        asked: Asked,
    },
    /// The hub replaced `skipped` queued publications of `channel` on this connection.
    Conflated {
        connection: usize,
        channel: String,
        skipped: u64,
    },
    /// Anything else, for the application as it is.
    Event(Event),
}
