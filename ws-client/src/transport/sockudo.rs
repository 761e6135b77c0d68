//! Opening a connection with sockudo-ws (the `sockudo` feature), and the frames and errors
//! translated at the seam: sockudo-ws frames in and out as tungstenite's `Message`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use sockudo_ws::client::WebSocketClient as Upgrade;
use sockudo_ws::error::CloseReason;
use sockudo_ws::{Config, Http1, Message as SockudoMessage, WebSocketStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::read_clock::ReadClock;
use super::{ByteStream, open_stream, parse_url, refused_subprotocol, subprotocol};
use crate::settings::Settings;

/// A sockudo-ws connection, seen as a stream and sink of tungstenite `Message`s.
pub(crate) struct SockudoSocket {
    ws: WebSocketStream<ByteStream>,
}

/// TCP (no Nagle), TLS for `wss://` with the settings' roots, the upgrade with the
/// settings' headers. sockudo-ws's own keepalive and idle timeout are off: the client's
/// heartbeat does that job on either transport.
pub(super) async fn connect(
    settings: &Settings,
    url: &str,
    clock: Arc<ReadClock>,
) -> Result<SockudoSocket, String> {
    let (parsed, secure) = parse_url(url)?;
    let host = parsed
        .host()
        .ok_or_else(|| format!("no host in URL {url:?}"))?;
    // sockudo-ws's client offers no extensions: the builder refuses compression with it.
    let stream = open_stream(settings, &parsed, secure, clock).await?;
    // The Host header: the authority as the URL gives it (brackets around IPv6, the port
    // unless it is the scheme's default).
    let authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let target = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let headers = settings
        .headers
        .iter()
        .map(|(name, value)| {
            value
                .to_str()
                .map(|value| (name.as_str().to_owned(), value.to_owned()))
                .map_err(|_| format!("header {name} is not visible ASCII"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Text is checked as UTF-8 once, at the seam (tungstenite's `Utf8Bytes` needs that check
    // to be made in safe code), rather than by sockudo-ws and again here.
    let config = Config::builder()
        .validate_text_utf8(false)
        .max_message_size(settings.max_message_size)
        .max_frame_size(settings.max_message_size)
        .idle_timeout(0)
        .auto_ping(false)
        .ping_interval(0)
        .pong_timeout(0)
        .close_timeout(1)
        .build();
    let asked = subprotocol(settings);
    let (ws, agreed) = Upgrade::<Http1>::new(config)
        .connect_raw_with_headers(stream, &authority, &target, asked, Some(&headers))
        .await
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    if agreed.protocol.as_deref() != asked {
        return Err(match asked {
            Some(asked) => refused_subprotocol(asked, agreed.protocol.as_deref()),
            None => format!(
                "the server chose the subprotocol {:?}, none was asked for",
                agreed.protocol
            ),
        });
    }
    Ok(SockudoSocket { ws })
}

/// An inbound sockudo-ws frame as tungstenite's. Text is checked as UTF-8 here (sockudo-ws
/// is told not to): invalid text fails the connection, as on tokio-tungstenite.
fn inbound(frame: SockudoMessage) -> Result<Message, WsError> {
    Ok(match frame {
        SockudoMessage::Text(bytes) => {
            Message::Text(Utf8Bytes::try_from(bytes).map_err(|e| WsError::Utf8(e.to_string()))?)
        }
        SockudoMessage::Binary(bytes) => Message::Binary(bytes),
        SockudoMessage::Ping(bytes) => Message::Ping(bytes),
        SockudoMessage::Pong(bytes) => Message::Pong(bytes),
        SockudoMessage::Close(reason) => Message::Close(reason.map(|r| CloseFrame {
            code: r.code.into(),
            reason: r.reason.into(),
        })),
    })
}

/// An outbound tungstenite frame as sockudo-ws's.
fn outbound(frame: Message) -> Result<SockudoMessage, WsError> {
    Ok(match frame {
        Message::Text(text) => SockudoMessage::Text(Bytes::from(text)),
        Message::Binary(bytes) => SockudoMessage::Binary(bytes),
        Message::Ping(bytes) => SockudoMessage::Ping(bytes),
        Message::Pong(bytes) => SockudoMessage::Pong(bytes),
        Message::Close(frame) => SockudoMessage::Close(
            frame.map(|f| CloseReason::new(u16::from(f.code), f.reason.as_str())),
        ),
        Message::Frame(_) => {
            return Err(WsError::Io(std::io::Error::other(
                "raw frames are not sent through sockudo-ws",
            )));
        }
    })
}

/// A sockudo-ws error as tungstenite's: I/O errors as they are, the end of the connection
/// as `ConnectionClosed`, the rest with sockudo-ws's words.
fn error(error: sockudo_ws::Error) -> WsError {
    match error {
        sockudo_ws::Error::Io(e) => WsError::Io(e),
        sockudo_ws::Error::ConnectionClosed | sockudo_ws::Error::Closed(_) => {
            WsError::ConnectionClosed
        }
        other => WsError::Io(std::io::Error::other(other.to_string())),
    }
}

impl Stream for SockudoSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.ws)
            .poll_next(cx)
            .map(|next| next.map(|frame| frame.map_err(error).and_then(inbound)))
    }
}

impl Sink<Message> for SockudoSocket {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(error)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Message) -> Result<(), WsError> {
        let frame = outbound(frame)?;
        Pin::new(&mut self.ws).start_send(frame).map_err(error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(error)
    }
}
