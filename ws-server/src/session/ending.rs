//! How a connection ends: why ([`End`]), what the client is sent (an `Error` where it helps,
//! then a close frame with its code), and the close handshake, bounded in time.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};
use tracing::{debug, warn};
use ws_protocol::deflate::InflateError;
use ws_protocol::{WsMessage, close, codes};

use super::Session;
use super::writer::write_counted;

/// How long the hub tries to deliver its close frame and wait for the client's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many bytes the hub reads and discards after closing, so that unread input does not
/// turn the close into a TCP reset that could destroy the close frame in flight.
const LINGER_BYTES: usize = 1 << 20;

/// Why a connection ends.
pub(super) enum End {
    /// The client closed or the socket failed; nothing more can be sent.
    Gone(String),
    /// The server is shutting down: close 1001.
    Shutdown,
    /// The server drains before a restart: close 1012 with a reconnect hint.
    Restart,
    /// The outbox overflowed under the `disconnect` policy: `Error`, then close 1008.
    SlowConsumer,
    /// A write made no progress for `WS_WRITE_TIMEOUT` (the client neither reads nor
    /// closes): treated as a slow consumer under any policy.
    Stalled,
    /// A frame exceeded the maximum message size: close 1009.
    TooBig,
    /// Nothing arrived within the idle timeout: close 1000.
    Idle,
    /// Authentication failed or never came: `Error`, then close 1008.
    Unauthorized(String),
    /// The token expired: close 1008.
    Expired,
    /// The connection kept sending past its rate limit: close 1008.
    Abuse,
    /// The client broke the WebSocket protocol: close 1002 (1007 for invalid UTF-8).
    Protocol { code: u16, why: String },
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone(why) => f.write_str(why),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::Restart => f.write_str("server restarting"),
            Self::SlowConsumer => f.write_str("slow consumer"),
            Self::Stalled => f.write_str("slow consumer (write timeout)"),
            Self::TooBig => f.write_str("message too large"),
            Self::Idle => f.write_str("idle timeout"),
            Self::Unauthorized(why) => write!(f, "unauthorized: {why}"),
            Self::Expired => f.write_str("token expired"),
            Self::Abuse => f.write_str("rate limit exceeded"),
            Self::Protocol { code, why } => write!(f, "protocol error ({code}): {why}"),
        }
    }
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].into(),
    }))
}

pub(super) fn read_error(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            warn!(size, max_size, "frame over the maximum message size");
            End::TooBig
        }
        WsError::Protocol(error) => End::Protocol {
            code: close::PROTOCOL_ERROR,
            why: error.to_string(),
        },
        WsError::Utf8(error) => End::Protocol {
            code: close::INVALID_PAYLOAD,
            why: format!("invalid UTF-8: {error}"),
        },
        // What the inflater under tungstenite refused (permessage-deflate).
        WsError::Io(error) if inflate_error(&error).is_some() => match inflate_error(&error) {
            Some(InflateError::TooLarge { limit }) => {
                warn!(limit, "compressed message over the maximum message size");
                End::TooBig
            }
            Some(other) => End::Protocol {
                code: other.close_code(),
                why: other.to_string(),
            },
            None => End::Gone(format!("read failed: {error}")),
        },
        other => End::Gone(format!("read failed: {other}")),
    }
}

/// The inflater's refusal an I/O error carries, if it is one.
fn inflate_error(error: &std::io::Error) -> Option<&InflateError> {
    error.get_ref()?.downcast_ref::<InflateError>()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Sends what the ending calls for, then waits briefly for the client's close reply.
    pub(super) async fn close(&mut self, end: &End) {
        let frames: Vec<Message> = match end {
            End::Gone(_) => return,
            End::Shutdown => vec![close_frame(close::GOING_AWAY, "server shutting down")],
            End::Restart => {
                let hint = self.core.hub.config.reconnect_hint.as_millis();
                vec![close_frame(
                    close::SERVICE_RESTART,
                    &format!("service restart; {}{hint} ms", close::RETRY_AFTER_PREFIX),
                )]
            }
            End::Idle => vec![close_frame(close::NORMAL, "idle timeout")],
            End::Unauthorized(why) => vec![
                self.core
                    .message(WsMessage::error(codes::UNAUTHORIZED, why.clone()).to_json()),
                close_frame(close::POLICY_VIOLATION, "unauthorized"),
            ],
            End::Expired => vec![close_frame(close::POLICY_VIOLATION, "token expired")],
            End::Abuse => vec![close_frame(close::POLICY_VIOLATION, "rate limit exceeded")],
            End::Protocol { code, why } => vec![close_frame(*code, why)],
            End::TooBig => {
                let limit = self.core.hub.config.max_message_size;
                vec![close_frame(
                    close::MESSAGE_TOO_BIG,
                    &format!("message too large: the limit is {limit} bytes"),
                )]
            }
            End::SlowConsumer | End::Stalled => vec![
                self.core.message(
                    WsMessage::error(
                        codes::SLOW_CONSUMER,
                        "the connection fell too far behind its publications",
                    )
                    .to_json(),
                ),
                close_frame(close::POLICY_VIOLATION, "slow consumer"),
            ],
        };
        // After an oversized frame the parser cannot go on; a flood would keep the close
        // reply behind its frames. Either way, the hub does not wait for the reply: it ends
        // its side (FIN) and drains the raw socket for a while, so that closing it does not
        // send a TCP reset that could destroy the close frame in flight.
        // Acknowledgements not sent yet go first: their publications are published.
        let run = self
            .ack_run
            .take()
            .map(|run| self.core.message(run.into_text()));
        let linger = matches!(end, End::TooBig | End::Abuse);
        let Self {
            ws, out, out_sent, ..
        } = self;
        let goodbye = async {
            // A batch the cut interrupted is finished first: its frames were queued before
            // the cut, and a half-written one would turn the goodbye into garbage.
            ws.flush().await?;
            write_counted(ws.get_mut(), out, out_sent).await?;
            for frame in run.into_iter().chain(frames) {
                ws.feed(frame).await?;
            }
            ws.flush().await?;
            if linger {
                ws.get_mut().shutdown().await?;
            } else {
                // Wait for the client's close reply; tungstenite ends the stream after it.
                while let Some(Ok(_)) = ws.next().await {}
            }
            Ok::<_, WsError>(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await {
            debug!(connection = %self.core.id, %error, "close handshake failed");
        }
        if linger {
            let tcp = self.ws.get_mut();
            let mut sink = vec![0u8; 8192];
            let mut drained = 0;
            let drain = async {
                while drained < LINGER_BYTES {
                    match tcp.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        }
    }
}
