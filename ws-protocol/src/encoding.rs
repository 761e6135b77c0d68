//! [`Encoding`]: how a connection's messages are written, agreed in the upgrade through the
//! `Sec-WebSocket-Protocol` header (RFC 6455, section 4.1).

/// How a connection's messages are written.
///
/// The client offers subprotocols in its order of preference; the server answers with the
/// first it supports ([`Encoding::choose`]). Without an offer the connection speaks JSON, as
/// it always has.
///
/// ```
/// use ws_protocol::Encoding;
///
/// let offer = ["ws-toolkit.msgpack, ws-toolkit.json"];
/// assert_eq!(Encoding::choose(offer), Some(Encoding::MessagePack));
/// assert_eq!(Encoding::choose(["chat"]), None);
/// assert_eq!(Encoding::MessagePack.subprotocol(), "ws-toolkit.msgpack");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Encoding {
    /// Text frames of JSON (`ws-toolkit.json`, and what a connection without a subprotocol
    /// speaks).
    #[default]
    Json,
    /// Binary frames of MessagePack with the same shapes (`ws-toolkit.msgpack`; see
    /// [`WsMessage::to_msgpack`](crate::WsMessage::to_msgpack)).
    MessagePack,
}

impl Encoding {
    /// Every encoding, in the server's order of preference when a client's offer ties.
    pub const ALL: [Self; 2] = [Self::Json, Self::MessagePack];

    /// The subprotocol that names this encoding in `Sec-WebSocket-Protocol`.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => "ws-toolkit.json",
            Self::MessagePack => "ws-toolkit.msgpack",
        }
    }

    /// The encoding a subprotocol names (exactly: subprotocol names are case-sensitive).
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.subprotocol() == name)
    }

    /// The encoding a server picks from a client's `Sec-WebSocket-Protocol` header values
    /// (each a comma-separated list, the header possibly repeated): the first offered that
    /// this protocol knows, or `None` if it knows none of them. With no header at all a
    /// connection speaks JSON and the server sends no `Sec-WebSocket-Protocol`.
    pub fn choose<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        offers
            .into_iter()
            .flat_map(|value| value.split(','))
            .find_map(|name| Self::from_subprotocol(name.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_known_offer_wins_across_repeated_headers() {
        assert_eq!(
            Encoding::choose(["chat, ws-toolkit.json", "ws-toolkit.msgpack"]),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::choose(["chat", " ws-toolkit.msgpack ,ws-toolkit.json"]),
            Some(Encoding::MessagePack)
        );
        assert_eq!(Encoding::choose([] as [&str; 0]), None);
        assert_eq!(Encoding::choose(["", " , "]), None);
        assert_eq!(
            Encoding::choose(["WS-TOOLKIT.JSON"]),
            None,
            "case-sensitive"
        );
    }

    #[test]
    fn every_encoding_is_named_back() {
        for encoding in Encoding::ALL {
            assert_eq!(
                Encoding::from_subprotocol(encoding.subprotocol()),
                Some(encoding)
            );
        }
        assert_eq!(Encoding::default(), Encoding::Json);
    }
}
