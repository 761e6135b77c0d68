//! permessage-deflate in an upgrade: the hub agrees when the client offers it and
//! `WS_COMPRESSION` is `on` (see `ws_protocol::deflate` for what is agreed and why).

use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_EXTENSIONS;
use ws_protocol::{Compression, deflate};

/// Answers the client's `Sec-WebSocket-Extensions` offer; `true` if compression was agreed.
pub(super) fn negotiate(
    setting: Compression,
    request: &Request,
    mut response: Response,
) -> (Response, bool) {
    if setting == Compression::Off {
        return (response, false);
    }
    let offers = request
        .headers()
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok());
    match deflate::agree(offers).and_then(|answer| HeaderValue::from_str(&answer).ok()) {
        Some(answer) => {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_EXTENSIONS, answer);
            (response, true)
        }
        None => (response, false),
    }
}
