//! Errors of decoding frames and loading configuration.

use thiserror::Error;

use crate::codes;

/// Why a text frame is not a valid [`WsMessage`](crate::WsMessage).
///
/// Never fatal for a connection: the hub answers with an `Error` frame carrying
/// [`DecodeError::code`] and keeps the connection open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text is not one JSON object (the message says where it broke).
    #[error("malformed JSON frame: {0}")]
    Malformed(String),
    /// A binary frame is not one MessagePack value that JSON can carry (the message says
    /// what and where).
    #[error("malformed MessagePack frame: {0}")]
    MalformedMsgpack(String),
    /// The object has no `"type"` field.
    #[error("frame has no \"type\" field")]
    MissingType,
    /// The `"type"` is not one the protocol knows.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A field the type needs is absent.
    #[error("{kind} frame is missing the field \"{field}\"")]
    MissingField {
        /// The frame's type.
        kind: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A `Publish` whose `data` not every subscriber could parse (nested too deep, a
    /// number out of range); the message says which.
    #[error("Publish refused: {0}")]
    UnportableData(String),
}

impl DecodeError {
    /// The `code` of the `Error` frame that answers this problem.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => codes::UNKNOWN_TYPE,
            _ => codes::BAD_REQUEST,
        }
    }
}

/// A `WS_*` variable (or `.env` entry) that could not be used. Fatal at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable did not parse; the message names the variable and the value.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A variable parsed but is outside the range it allows.
    #[error("invalid configuration: {variable}={value}: {reason}")]
    OutOfRange {
        /// The variable, such as `WS_PING_INTERVAL`.
        variable: &'static str,
        /// The value it had.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The `.env` file exists but could not be read.
    #[error("cannot read .env file: {0}")]
    DotEnv(String),
}
