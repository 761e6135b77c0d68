//! Opening a connection with tokio-tungstenite: TLS and the upgrade over the seam's TCP.

use std::sync::Arc;

use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use ws_protocol::deflate;

use super::read_clock::ReadClock;
use super::{ByteStream, open_stream, parse_url, refused_subprotocol, subprotocol};
use crate::settings::Settings;

/// TCP, TLS for `wss://` (with the settings' roots), the upgrade with the settings' headers
/// (and the permessage-deflate offer if the settings make it).
pub(super) async fn connect(
    settings: &Settings,
    url: &str,
    clock: Arc<ReadClock>,
) -> Result<WebSocketStream<ByteStream>, String> {
    let (parsed, secure) = parse_url(url)?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in &settings.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    if settings.compression {
        request.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate::CLIENT_OFFER),
        );
    }
    let asked = subprotocol(settings);
    if let Some(asked) = asked {
        // tungstenite fails the upgrade if the answer does not name it.
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(asked));
    }
    let config = TungsteniteConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(64 * 1024 + 2 * settings.max_message_size)
        .read_buffer_size(64 * 1024);
    let stream = open_stream(settings, &parsed, secure, clock).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|error| match (asked, &error) {
            (Some(asked), Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_))) => {
                refused_subprotocol(asked, None)
            }
            _ => error.to_string(),
        })?;
    Ok(ws)
}
