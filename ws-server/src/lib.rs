//! The fan-out hub of the ws toolkit.
//!
//! A [`WebSocketServer`] accepts WebSocket connections that speak the
//! [`ws_protocol`] JSON protocol: clients `Subscribe` to channels and `Publish` on them, and
//! the application can [`publish`](WebSocketServer::publish) and
//! [`broadcast`](WebSocketServer::broadcast) too, and read what clients send through
//! [`incoming`](WebSocketServer::incoming).
//!
//! Each publication is encoded once and the same bytes are queued to every subscriber without
//! waiting; each connection has a bounded queue and a [`SlowConsumerPolicy`] for when it
//! fills. The `ws-server` binary of this crate is a standalone hub configured by `WS_*`
//! variables.
//!
//! ```no_run
//! use ws_server::WebSocketServer;
//!
//! # async fn demo() -> Result<(), ws_server::ServerError> {
//! let server = WebSocketServer::bind("127.0.0.1:8080").await?;
//! let mut incoming = server.incoming();
//! while let Some((connection, message)) = incoming.recv().await {
//!     // Fan every price a client sends out to the subscribers of one channel.
//!     server.publish("prices:all", &message).await?;
//!     tracing::info!(%connection, "re-published a {}", message.kind());
//! }
//! # Ok(()) }
//! ```

// A library logs through `tracing`; printing is for binaries.
#![cfg_attr(not(test), warn(clippy::print_stdout, clippy::print_stderr))]

mod accept;
mod admin;
mod auth;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_support;
mod broker;
mod builder;
mod channel;
mod conflation_key;
mod connections;
mod error;
mod frame;
mod hub;
mod incoming;
mod metrics;
mod outbox;
mod rate_limit;
mod read_ahead;
mod requests;
mod server;
mod session;
mod tls;
mod upgrade_request;

pub use auth::{AuthError, Authenticator, Grant, JwtAuthenticator};
pub use broker::BrokerError;
pub use builder::{DEFAULT_INCOMING_CAPACITY, ServerBuilder};
pub use channel::{MAX_CHANNEL_NAME_LEN, Published};
pub use connections::ConnectionId;
pub use error::{Result, ServerError};
pub use incoming::Incoming;
pub use requests::{Request, Requests};
pub use server::WebSocketServer;
pub use ws_protocol::{self, SlowConsumerPolicy, WebSocketConfig, WsMessage};
