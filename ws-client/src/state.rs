//! [`ConnectionState`] and [`StateChanges`].

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_stream::wrappers::WatchStream;

/// Where the client's connection stands.
///
/// `Disconnected → Connecting → Connected → Reconnecting → Connected …`; `Failed` when the
/// reconnect attempts are used up or the server refused for good; `Disconnected` again after
/// [`close`](crate::WebSocketClient::close).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected and not trying: before the first connect, or after `close()`.
    Disconnected,
    /// The first connection attempt is under way.
    Connecting,
    /// Connected, and on a hub every subscription is in effect.
    Connected,
    /// The connection was lost; waiting for the next attempt or attempting.
    Reconnecting {
        /// Failed attempts since the connection was last healthy.
        attempt: u32,
    },
    /// Given up for good; `send` and `receive` return [`Error::Failed`](crate::Error::Failed).
    Failed {
        /// Why.
        reason: String,
    },
}

/// The client's state each time it changes, starting with the current one. Rapid changes may
/// be coalesced: it always ends on the latest state.
#[derive(Debug)]
pub struct StateChanges {
    pub(crate) inner: WatchStream<ConnectionState>,
}

impl Stream for StateChanges {
    type Item = ConnectionState;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
