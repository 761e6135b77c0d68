//! The `ws-toolkit.msgpack` subprotocol at the seam. The connection's task speaks the hub's
//! JSON whichever encoding the upgrade agreed; on a connection that agreed to MessagePack,
//! each outbound JSON text frame leaves as one binary MessagePack frame and each inbound
//! MessagePack frame arrives as its JSON text. The application's `data` is JSON either way.

use tokio_tungstenite::tungstenite::Message;
use ws_protocol::{json_to_msgpack, msgpack_to_json};

/// An inbound frame of a MessagePack connection as the task reads it: MessagePack as JSON
/// text. A binary frame that is not MessagePack JSON can carry goes on as it came (the
/// application receives it as binary: nothing is dropped), with a warning.
pub(super) fn inbound(frame: Message) -> Message {
    match frame {
        Message::Binary(bytes) => match msgpack_to_json(&bytes) {
            Ok(json) => Message::text(json),
            Err(error) => {
                tracing::warn!(%error, len = bytes.len(), "a binary frame that is not MessagePack, delivered as binary");
                Message::Binary(bytes)
            }
        },
        other => other,
    }
}

/// An outbound frame of a MessagePack connection as it goes on the wire: JSON text as
/// MessagePack. Text that is not JSON (the application's own, sent with
/// [`send_text`](crate::WebSocketClient::send_text)) goes as text; the hub reads text frames
/// as JSON on any connection.
pub(super) fn outbound(frame: Message) -> Message {
    match frame {
        Message::Text(text) => match json_to_msgpack(text.as_str()) {
            Ok(bytes) => Message::binary(bytes),
            Err(_) => Message::Text(text),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_crosses_as_msgpack_and_comes_back_the_same() {
        let json = r#"{"type":"Publish","channel":"p","data":{"bid":1.5,"levels":[[1,2]]}}"#;
        let wire = outbound(Message::text(json));
        let Message::Binary(bytes) = &wire else {
            panic!("binary on the wire: {wire:?}")
        };
        assert!(bytes.len() < json.len());
        assert_eq!(inbound(wire), Message::text(json));
    }

    #[test]
    fn what_is_not_json_or_msgpack_passes_unchanged() {
        assert_eq!(outbound(Message::text("hello")), Message::text("hello"));
        let bad = Message::binary(vec![0xc1u8]); // a reserved marker
        assert_eq!(inbound(bad.clone()), bad);
        let ping = Message::Ping(vec![1u8].into());
        assert_eq!(outbound(ping.clone()), ping);
        assert_eq!(inbound(ping.clone()), ping);
    }
}
