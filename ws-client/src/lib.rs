//! The resilient client of the ws toolkit.
//!
//! A [`WebSocketClient`] keeps one WebSocket connection alive for a strategy: it reconnects
//! with jittered exponential backoff, buffers what is sent while disconnected (bounded, with a
//! maximum age), detects dead connections with a heartbeat, and restores its hub
//! subscriptions after every reconnect before handing over anything new. It speaks the hub's
//! protocol ([`ws_protocol`]) and, with the same resilience, plain JSON servers such as an
//! exchange's feed ([`ServerProtocol::Raw`]).
//!
//! ```no_run
//! use serde::Deserialize;
//! use ws_client::WebSocketClient;
//!
//! #[derive(Debug, Deserialize)]
//! struct Price { price: f64 }
//!
//! # async fn demo() -> ws_client::Result<()> {
//! let client = WebSocketClient::connect("ws://127.0.0.1:8080").await?;
//! client.subscribe(["prices:SOL-USDC"]).await?;
//! while let Some(price) = client.receive::<Price>().await? {
//!     tracing::info!(price = price.price, "SOL-USDC");
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod buffer;
mod builder;
mod client;
mod connection;
mod error;
mod event;
mod heartbeat;
mod metrics;
mod settings;
mod state;
mod tls;

pub use builder::{
    ClientBuilder, DEFAULT_BACKOFF_RESET_AFTER, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_BUFFER_AGE,
    DEFAULT_MAX_MESSAGE_SIZE,
};
pub use client::WebSocketClient;
pub use error::{Error, Result};
pub use event::Event;
pub use metrics::Metrics;
pub use settings::ServerProtocol;
pub use state::{ConnectionState, StateChanges};
pub use ws_protocol::{self, WsMessage};
