//! [`decode`]: what one inbound WebSocket frame is, without acting on it. The connection's
//! task then does what each kind calls for (see `Driver::receive`).

use std::collections::BTreeMap;

use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use ws_protocol::{ChannelPosition, Payload, WsMessage};

use crate::text::Text;

/// One inbound frame, classified.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A publication of the hub.
    Publication {
        channel: String,
        seq: u64,
        data: Payload,
    },
    /// The hub confirmed a `Subscribe`, with each channel's position.
    Subscribed {
        channels: Vec<String>,
        positions: BTreeMap<String, ChannelPosition>,
    },
    /// The hub dropped `missed` publications of `channel` for this connection.
    Lagged { channel: String, missed: u64 },
    /// The hub replaced `skipped` queued publications of `channel` on purpose.
    Conflated { channel: String, skipped: u64 },
    /// The hub refused something; `channels` names the refused subscriptions, if any, and
    /// `id` the refused publication or request.
    Error {
        code: String,
        message: String,
        channels: Vec<String>,
        id: Option<u64>,
    },
    /// The hub acknowledged publications `id` to `id + count - 1` as `seq` to
    /// `seq + count - 1`.
    Published { id: u64, seq: u64, count: u64 },
    /// The application answered request `id`.
    Reply { id: u64, data: Payload },
    /// The hub's protocol-level `Ping`: answer `Pong`.
    Ping,
    /// A hub frame that needs nothing (`Unsubscribed`, `Pong`, `Connected`,
    /// `Authenticated`).
    Control,
    /// A text frame for the application as it is (from a server that is not the hub, or a
    /// frame the hub protocol does not know, such as a broadcast `PriceUpdate`).
    Text(Text),
    /// A binary frame for the application.
    Binary(Bytes),
    /// A WebSocket pong, with its payload.
    WebSocketPong(Bytes),
    /// Another WebSocket control frame (ping, close): nothing to do but note it arrived.
    WebSocketControl,
}

/// How the hub writes a `Published` frame (serde writes the tag first).
const PUBLISHED_PREFIX: &str = r#"{"type":"Published","#;

/// The fields of a `Published` frame the client needs.
#[derive(serde::Deserialize)]
struct Acknowledgement<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    id: u64,
    seq: u64,
    count: Option<u64>,
}

/// A text frame as the application gets it: the transport's buffer itself if `share`, else
/// a copy (see [`Text`]).
#[inline]
pub(crate) fn application_text(text: Utf8Bytes, share: bool) -> Text {
    if share {
        Text::shared(text)
    } else {
        Text::from(text.as_str().to_owned())
    }
}

/// Classifies `frame`; `hub` says whether the server speaks the hub protocol (otherwise
/// every text frame is the application's), `share` whether the application's text may keep
/// the transport's buffer (see [`Text`]) or gets a copy.
pub(crate) fn decode(frame: Message, hub: bool, share: bool) -> Inbound {
    let application = |text: Utf8Bytes| Inbound::Text(application_text(text, share));
    let text = match frame {
        Message::Text(text) => text,
        Message::Binary(bytes) => return Inbound::Binary(bytes),
        Message::Pong(payload) => return Inbound::WebSocketPong(payload),
        Message::Ping(_) | Message::Close(_) | Message::Frame(_) => {
            return Inbound::WebSocketControl;
        }
    };
    if !hub {
        return application(text);
    }
    // An acknowledgement, one per acknowledged publication: read its two numbers without
    // decoding every field a frame may carry.
    if text.as_str().starts_with(PUBLISHED_PREFIX)
        && let Ok(ack) = serde_json::from_str::<Acknowledgement<'_>>(text.as_str())
        && ack.kind == "Published"
    {
        return Inbound::Published {
            id: ack.id,
            seq: ack.seq,
            count: ack.count.unwrap_or(1),
        };
    }
    match WsMessage::from_json(text.as_str()) {
        Ok(WsMessage::Publication { channel, seq, data }) => {
            Inbound::Publication { channel, seq, data }
        }
        Ok(WsMessage::Subscribed {
            channels,
            positions,
        }) => Inbound::Subscribed {
            channels,
            positions,
        },
        Ok(WsMessage::Lagged { channel, missed }) => Inbound::Lagged { channel, missed },
        Ok(WsMessage::Conflated { channel, skipped }) => Inbound::Conflated { channel, skipped },
        Ok(WsMessage::Error {
            code,
            message,
            channels,
            id,
        }) => Inbound::Error {
            code,
            message,
            channels,
            id,
        },
        Ok(WsMessage::Published { id, seq, count, .. }) => Inbound::Published { id, seq, count },
        Ok(WsMessage::Reply { id, data }) => Inbound::Reply { id, data },
        Ok(WsMessage::Ping) => Inbound::Ping,
        Ok(
            WsMessage::Unsubscribed { .. }
            | WsMessage::Pong
            | WsMessage::Connected { .. }
            | WsMessage::Authenticated { .. },
        ) => Inbound::Control,
        _ => application(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str) -> Message {
        Message::text(json.to_owned())
    }

    #[test]
    fn hub_frames_are_classified() {
        let publication = r#"{"type":"Publication","channel":"p","seq":4,"data":{"x":1}}"#;
        match decode(text(publication), true, false) {
            Inbound::Publication { channel, seq, data } => {
                assert_eq!((channel.as_str(), seq), ("p", 4));
                assert_eq!(data.as_raw().get(), r#"{"x":1}"#);
            }
            other => panic!("{other:?}"),
        }
        let subscribed = r#"{"type":"Subscribed","channels":["p"],"positions":{"p":{"epoch":"e","seq":2,"recovered":true}}}"#;
        assert!(matches!(
            decode(text(subscribed), true, false),
            Inbound::Subscribed { positions, .. } if positions["p"].seq == 2
        ));
        let refused = r#"{"type":"Error","code":"forbidden","message":"no","channels":["p"]}"#;
        assert!(matches!(
            decode(text(refused), true, false),
            Inbound::Error { code, channels, .. } if code == "forbidden" && channels == ["p"]
        ));
        assert!(matches!(
            decode(text(r#"{"type":"Ping"}"#), true, false),
            Inbound::Ping
        ));
        assert!(matches!(
            decode(
                text(r#"{"type":"Connected","connection_id":1,"server_time":2}"#),
                true,
                false
            ),
            Inbound::Control
        ));
        assert!(matches!(
            decode(
                text(r#"{"type":"Lagged","channel":"p","missed":3}"#),
                true,
                false
            ),
            Inbound::Lagged { missed: 3, .. }
        ));
        assert!(matches!(
            decode(
                text(r#"{"type":"Conflated","channel":"p","skipped":2}"#),
                true,
                false
            ),
            Inbound::Conflated { skipped: 2, .. }
        ));
    }

    #[test]
    fn the_applications_text_is_shared_or_copied_as_asked() {
        let read = Utf8Bytes::from(String::from("price 1"));
        let at = read.as_str().as_ptr();
        let Inbound::Text(shared) = decode(Message::Text(read.clone()), false, true) else {
            panic!("text");
        };
        assert_eq!(shared.as_str().as_ptr(), at);
        let Inbound::Text(copied) = decode(Message::Text(read), false, false) else {
            panic!("text");
        };
        assert_ne!(copied.as_str().as_ptr(), at);
        assert_eq!(copied, "price 1");
    }

    #[test]
    fn what_the_hub_protocol_does_not_know_is_the_applications() {
        assert!(
            matches!(decode(text("not json"), true, false), Inbound::Text(t) if t == "not json")
        );
        let price = r#"{"type":"PriceUpdate","input_mint":"a","output_mint":"b","price":1.0,"volume":1,"timestamp":1}"#;
        assert!(matches!(decode(text(price), true, false), Inbound::Text(_)));
        // From a server that is not the hub, even hub-shaped JSON is the application's.
        assert!(matches!(
            decode(text(r#"{"type":"Ping"}"#), false, false),
            Inbound::Text(_)
        ));
        assert!(matches!(
            decode(Message::binary(vec![1u8, 2]), true, false),
            Inbound::Binary(b) if b.as_ref() == [1, 2]
        ));
        assert!(matches!(
            decode(Message::Pong(Bytes::from_static(b"n")), true, false),
            Inbound::WebSocketPong(_)
        ));
    }
}
