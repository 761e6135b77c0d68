//! The wire contract of the ws toolkit.
//!
//! Every frame on the wire is one UTF-8 text frame holding one JSON object tagged by `"type"`
//! (or, on a connection that agreed on MessagePack, the same object in a binary frame):
//! `{"type":"Subscribe","channels":["prices:SOL-USDC"]}`. This crate holds that contract and no
//! networking, so it can be tested (and fuzzed) without a runtime; the one thing it reads is
//! the configuration, from the environment and a `.env` file ([`WebSocketConfig::from_env`]):
//!
//! - [`WsMessage`]: every frame a client or the hub sends, and [`Payload`], the raw JSON `data`
//!   of a publication, kept as text so the hub forwards it without parsing it;
//! - the same messages as MessagePack ([`WsMessage::to_msgpack`], [`msgpack_to_json`]): the
//!   same shapes for binary frames, turned to and from their JSON, and [`Encoding`], the
//!   `Sec-WebSocket-Protocol` names that choose between the two forms (the hub speaks
//!   MessagePack to clients that offer it, `ws-client` when asked);
//! - [`deflate`]: permessage-deflate (RFC 7692) without I/O: the offer and answer, one
//!   message compressed, and the rewriter that inflates compressed frames under a size cap;
//! - [`close`]: the WebSocket close codes the hub uses and what a client should do on each;
//! - [`codes`]: the `code` of every `Error` frame;
//! - [`is_valid_channel_name`]: the rule for channel names, shared by both sides;
//! - [`WebSocketConfig`]: the `WS_*` environment variables shared by the client and the hub;
//! - [`backoff`]: the jittered exponential delays between reconnect attempts, used by the
//!   client's connections and the hub's link to Redis alike.
//!
//! ```
//! use ws_protocol::WsMessage;
//!
//! let frame = r#"{"type":"Subscribe","channels":["prices:SOL-USDC"]}"#;
//! let message = WsMessage::from_json(frame)?;
//! assert_eq!(
//!     message,
//!     WsMessage::Subscribe {
//!         channels: vec!["prices:SOL-USDC".into()],
//!         since: Default::default(),
//!         rewind: None,
//!     },
//! );
//! assert_eq!(message.to_json(), frame);
//! # Ok::<(), ws_protocol::DecodeError>(())
//! ```

// A library logs through `tracing`; printing is for binaries.
#![cfg_attr(not(test), warn(clippy::print_stdout, clippy::print_stderr))]

pub mod backoff;
mod canonical;
mod channel;
pub mod close;
pub mod codes;
mod config;
mod decode;
pub mod deflate;
mod encoding;
mod error;
mod message;
mod message_type;
mod msgpack;
mod payload;
mod plain_json;
mod swar;

pub use canonical::PublishRef;
pub use channel::{MAX_CHANNEL_NAME_LEN, invalid_channel_name, is_valid_channel_name};
pub use config::{ClientTransport, Compression, Secret, SlowConsumerPolicy, WebSocketConfig};
pub use encoding::Encoding;
pub use error::{ConfigError, DecodeError};
pub use message::{
    ChannelPosition, MAX_ERROR_MESSAGE_LEN, MAX_IDEMPOTENCY_KEY_LEN, Position, WsMessage,
    encode_publication, encode_published, excerpt, publication_prefix, write_publication,
    write_publication_after,
};
pub use message_type::MessageType;
pub use msgpack::{json_to_msgpack, msgpack_to_json};
pub use payload::{MAX_DATA_DEPTH, Payload, check_portable_data};
