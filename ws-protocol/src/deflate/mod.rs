//! permessage-deflate (RFC 7692) as this toolkit speaks it, without I/O: the negotiation
//! ([`agree`]), compressing one message ([`Compressor`]), and inflating the compressed
//! messages of an inbound byte stream under a size cap ([`Inflater`]).
//!
//! Both directions run without context takeover: each message is compressed on its own. A
//! hub (`server_no_context_takeover`) can then compress a publication once and send the same
//! bytes to every subscriber that agreed to compression; and a connection
//! (`client_no_context_takeover`) keeps no inflate window between the messages it receives,
//! so an idle connection holds nothing for compression.
//!
//! Files: this one, `negotiate.rs` (the `Sec-WebSocket-Extensions` offer and answer),
//! `compress.rs`, `inflate.rs` (the inbound frame rewriter).

mod compress;
mod inflate;
mod negotiate;

pub use compress::{COMPRESS_AT_LEAST, Compressor};
pub use inflate::{FramesFrom, InflateError, Inflater};
pub use negotiate::{Agreement, Answer, CLIENT_OFFER, agree, read_answer};
