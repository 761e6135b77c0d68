//! [`Stamped`]: an [`Event`] with the connection that delivered it and the instant its frame
//! was read from the socket, from [`WebSocketClient::next_stamped`](crate::WebSocketClient::next_stamped).

use std::time::Instant;

use crate::event::Event;

/// An event with where and when it arrived.
///
/// For a publication (hub) or a message (any server), `connection` is the connection whose
/// copy was delivered (the first to arrive, with [`redundancy`](crate::ClientBuilder::redundancy))
/// and `received_at` the instant its frame was read from that connection's socket (when
/// the read that brought the frame's last bytes returned: one read often brings many
/// frames, and they share its instant): the difference to [`Instant::now`] when the
/// application gets it is the time spent in the client, a wait behind earlier frames of
/// the same read included. Both are `None` for events the client makes itself (connection
/// changes, gaps).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stamped {
    /// The event.
    pub event: Event,
    /// The connection that delivered it.
    pub connection: Option<usize>,
    /// When its frame was read from the socket.
    pub received_at: Option<Instant>,
}

impl Stamped {
    /// An event the client made itself: no connection, no time.
    pub(crate) fn unstamped(event: Event) -> Self {
        Self {
            event,
            connection: None,
            received_at: None,
        }
    }

    /// An event that arrived on `connection` at `at`.
    pub(crate) fn arrived(event: Event, connection: usize, at: tokio::time::Instant) -> Self {
        Self {
            event,
            connection: Some(connection),
            received_at: Some(at.into_std()),
        }
    }
}
