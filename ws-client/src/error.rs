//! Errors of the client.

use std::sync::Arc;

use thiserror::Error;

use crate::buffer::OutboundFrame;

/// What went wrong in a [`WebSocketClient`](crate::WebSocketClient) call. `Clone`, so that
/// one failure can answer every call waiting on it.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a valid `ws://` or `wss://` URL, or a header is invalid. Fatal.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The first connection could not be made (refused, timed out, TLS or HTTP upgrade
    /// failure). Retryable by building again.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The outbound buffer is full; the frame is given back unsent. Retryable once the
    /// client reconnects and drains its buffer.
    #[error("outbound buffer full ({} bytes given back)", .0.len())]
    BufferFull(OutboundFrame),
    /// The client gave up (reconnect attempts used up, or the server refused for good).
    /// Fatal: build a new client.
    #[error("client failed: {0}")]
    Failed(String),
    /// The client was closed with `close()`. Fatal.
    #[error("client is closed")]
    Closed,
    /// A value could not be encoded, or a received frame could not be decoded as the
    /// requested type. The frame's text is given back. Not fatal: the next receive goes on.
    #[error("cannot decode {text:?}: {reason}")]
    Decode {
        /// The frame or payload text.
        text: String,
        /// Why it did not decode.
        reason: String,
    },
    /// A value could not be serialized to JSON. Nothing was sent.
    #[error("cannot encode the message as JSON: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    /// `subscribe` on a server that does not speak the hub protocol, or a channel name the hub
    /// would refuse.
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    /// The hub (or the application behind it) refused an acknowledged publication or a
    /// request: it was not done. `code` is the protocol's (see `ws_protocol::codes`) or the
    /// application's.
    #[error("refused: {code}: {message}")]
    Refused {
        /// Why, as a stable identifier.
        code: String,
        /// Why, for people.
        message: String,
    },
    /// A publication or request was sent but its answer never came (its timeout passed, or
    /// the connection was lost first): it may or may not have been done. A request is never
    /// sent again by itself; check before repeating it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A publication or request could not be sent in time (the client was not connected): it
    /// was not done, and may be tried again.
    #[error("not sent: {0}")]
    NotSent(String),
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::Encode(Arc::new(error))
    }
}

/// `Result` with the client's [`Error`](enum@Error) as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
