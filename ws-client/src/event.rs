//! [`Event`]: what [`WebSocketClient::next_event`](crate::WebSocketClient::next_event) yields.

use ws_protocol::Payload;

use crate::text::Text;

/// One thing that happened on the client, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A publication on a subscribed channel (hub servers).
    Publication {
        /// The channel it was published on.
        channel: String,
        /// Its position in the channel, counting from 1.
        seq: u64,
        /// The published value.
        data: Payload,
    },
    /// A text frame that is not part of the hub's control protocol: a message the hub
    /// broadcast as is, or any frame from a server that does not speak the hub protocol.
    /// On sockudo-ws it shares the buffer it was read into (see [`Text`]).
    Message(Text),
    /// A binary frame (servers that do not speak the hub protocol).
    Binary(Vec<u8>),
    /// A connection is established (and, on a hub, every subscription is in effect again).
    Connected {
        /// Which of the client's connections (0 unless it has several, see
        /// [`redundancy`](crate::ClientBuilder::redundancy)).
        connection: usize,
        /// The hub's id for this connection; `None` on a server that is not our hub.
        connection_id: Option<u64>,
        /// `true` when this replaced a lost connection.
        reconnected: bool,
    },
    /// The connection was lost; the client reconnects unless it says otherwise.
    Disconnected {
        /// Which of the client's connections.
        connection: usize,
        /// Why, for logs and people.
        reason: String,
    },
    /// The hub dropped `missed` publications of `channel` because this client read too slowly
    /// (hub policy `drop_oldest`). The client asks the hub's history for them; a
    /// [`Gap`](Self::Gap) follows if they cannot be had.
    Lagged {
        /// The channel.
        channel: String,
        /// How many publications were dropped.
        missed: u64,
    },
    /// After a reconnect the hub could not replay everything missed on `channel` (its
    /// history no longer reaches back, or the hub restarted and the channel is in a new
    /// epoch): take a fresh snapshot. Delivery continues after `seq`: when the hub still holds
    /// the new epoch from its beginning, `seq` is 0 and every publication of the new epoch
    /// follows.
    Unrecovered {
        /// The channel.
        channel: String,
        /// The channel's epoch now.
        epoch: String,
        /// The `seq` delivery continues after.
        seq: u64,
    },
    /// Publications of `channel` from `expected` to `received - 1` could not be had: they
    /// were missing from the live stream, and neither the hub's history nor another
    /// connection supplied them within the gap timeout. Delivery goes on with `received`.
    Gap {
        /// The channel.
        channel: String,
        /// The `seq` that should have come.
        expected: u64,
        /// The `seq` that came.
        received: u64,
    },
    /// The hub replaced `skipped` publications of `channel` queued for this client by newer
    /// ones with the same key, because the client read too slowly (hub policy `conflate`):
    /// the application gets the newest value per key, and the `seq`s in between are skipped
    /// on purpose (not a [`Gap`](Self::Gap)).
    Conflated {
        /// The channel.
        channel: String,
        /// How many publications were replaced.
        skipped: u64,
    },
    /// Buffered outbound frames older than the maximum buffer age were dropped, unsent.
    Expired {
        /// How many.
        count: usize,
    },
    /// The server answered a frame with an `Error`.
    ServerError {
        /// The stable error code, such as `invalid_channel`.
        code: String,
        /// The server's explanation.
        message: String,
    },
}
