//! permessage-deflate in an upgrade: the hub agrees when the client offers it and
//! `WS_COMPRESSION` is `on` (see `ws_protocol::deflate` for what is agreed and why).

use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_EXTENSIONS;
use ws_protocol::Compression;
use ws_protocol::deflate::{self, Agreement};

/// Answers the client's `Sec-WebSocket-Extensions` offer; what was agreed, if anything.
pub(super) fn negotiate(
    setting: Compression,
    request: &Request,
    mut response: Response,
) -> (Response, Option<Agreement>) {
    if setting == Compression::Off {
        return (response, None);
    }
    let offers = request
        .headers()
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let agreed = deflate::agree(offers);
    match agreed
        .as_ref()
        .and_then(|agreed| HeaderValue::from_str(&agreed.answer).ok())
    {
        Some(answer) => {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_EXTENSIONS, answer);
            (response, agreed)
        }
        None => (response, None),
    }
}
