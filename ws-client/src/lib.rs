//! The resilient client of the ws toolkit.
//!
//! A [`WebSocketClient`] keeps one WebSocket connection alive for a strategy: it reconnects
//! with jittered exponential backoff, buffers what is sent while disconnected (bounded, with a
//! maximum age), detects dead connections with a heartbeat, and restores its hub
//! subscriptions after every reconnect before handing over anything new. It speaks the hub's
//! protocol ([`ws_protocol`]) and, with the same resilience, plain JSON servers such as an
//! exchange's feed ([`ServerProtocol::Raw`]).
//!
//! On a hub nothing is lost silently: each channel's publications reach the application in
//! `seq` order and exactly once, across reconnects (the hub replays what was missed from its
//! history) and live gaps (asked for again); what cannot be recovered is reported as an
//! [`Event`]. [`ClientBuilder::redundancy`] races several connections (to one hub or several
//! clustered hubs) and delivers whichever copy arrives first, and
//! [`ClientBuilder::max_connection_age`] replaces old connections make-before-break.
//!
//! Connections run on tokio-tungstenite. The `sockudo` cargo feature adds sockudo-ws, a
//! faster frame reader, as a choice ([`Transport`], [`ClientBuilder::transport`] or
//! `WS_CLIENT_TRANSPORT=sockudo`); turning the feature on does not by itself change the
//! transport.
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

// A library logs through `tracing`; printing is for binaries.
#![cfg_attr(not(test), warn(clippy::print_stdout, clippy::print_stderr))]

mod acks;
mod arrival_queue;
mod buffer;
mod builder;
mod client;
mod combined_state;
mod driver;
mod epochs;
mod error;
mod event;
mod feed;
mod heartbeat;
mod link;
mod metrics;
mod proxy;
mod rotation;
mod sequencer;
mod settings;
mod stamped;
mod state;
mod text;
mod tls;
mod transport;

pub use buffer::OutboundFrame;
pub use builder::{
    ClientBuilder, DEFAULT_BACKOFF_RESET_AFTER, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_BUFFER_AGE,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PUBLISH_TIMEOUT,
};
pub use client::WebSocketClient;
pub use error::{Error, Result};
pub use event::Event;
pub use metrics::{LEADS_KEPT, Metrics};
pub use sequencer::DEFAULT_GAP_TIMEOUT;
pub use settings::ServerProtocol;
pub use stamped::Stamped;
pub use state::{ConnectionState, StateChanges};
pub use text::Text;
pub use transport::Transport;
pub use ws_protocol::{self, Encoding, WsMessage};
