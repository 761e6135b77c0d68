//! The subprotocol of an upgrade: the encoding a client offers in `Sec-WebSocket-Protocol`
//! (JSON text frames, or the same messages as MessagePack binary frames), answered with the
//! one the hub picks.

use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use ws_protocol::Encoding;

/// Picks the encoding from the client's offer (the first it offers that the protocol knows)
/// and names it in the response. Without an offer, or with none the hub knows, the
/// connection speaks JSON and the response names no subprotocol (RFC 6455, 4.2.2: a client
/// that required one then fails the connection itself).
pub(super) fn negotiate(request: &Request, mut response: Response) -> (Response, Encoding) {
    let offers = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok());
    match Encoding::choose(offers) {
        Some(encoding) => {
            response.headers_mut().insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(encoding.subprotocol()),
            );
            (response, encoding)
        }
        None => (response, Encoding::Json),
    }
}
