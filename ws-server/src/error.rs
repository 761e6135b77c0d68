//! Errors of the hub's public API.

use thiserror::Error;

/// What went wrong in a [`WebSocketServer`](crate::WebSocketServer) call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be bound or read. Fatal for `bind`.
    #[error("cannot bind or read the listening socket: {0}")]
    Bind(#[from] std::io::Error),
    /// The configuration is out of range. Fatal: fix the `WS_*` variable it names.
    #[error(transparent)]
    Config(#[from] ws_protocol::ConfigError),
    /// The value given to `publish`, `broadcast` or `send_to` could not be serialized to JSON.
    /// Nothing was sent.
    #[error("cannot encode the message as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// `send_to` named a connection that is not (or no longer) open.
    #[error("connection {0} is not open")]
    UnknownConnection(crate::ConnectionId),
    /// The authentication settings cannot be used (an unreadable or invalid key). Fatal.
    #[error("authentication setup: {0}")]
    Auth(String),
    /// The TLS certificate or key cannot be used. Fatal.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The shared broker (Redis) cannot be reached: nothing was published.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// The channel name is empty or longer than the hub accepts.
    #[error("{}", ws_protocol::invalid_channel_name(.0))]
    InvalidChannel(String),
}

/// `Result` with [`ServerError`] as the default error.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
