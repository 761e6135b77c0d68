//! [`MessageType`]: the `type` of a frame. The names are written once, in the list below:
//! serde tags [`WsMessage`] by its variant names, and [`MessageType::name`],
//! [`MessageType::from_name`] and [`WsMessage::kind`] come from the same list.

use crate::message::WsMessage;

/// Declares [`MessageType`] with one variant per [`WsMessage`] variant of the same name.
macro_rules! message_types {
    ($($name:ident),* $(,)?) => {
        /// The `type` of a frame: one per [`WsMessage`] variant, with the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageType {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                $name,
            )*
        }

        impl MessageType {
            /// Every type, in the order [`WsMessage`] declares them.
            pub const ALL: &'static [MessageType] = &[$(Self::$name),*];

            /// The value of the `"type"` field.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }

            /// The type named `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(Self::$name),)*
                    _ => None,
                }
            }
        }

        impl WsMessage {
            /// The frame's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Self::$name { .. } => MessageType::$name,)*
                }
            }
        }
    };
}

message_types! {
    PriceUpdate,
    AccountUpdate,
    Subscribe,
    Unsubscribe,
    Publish,
    Published,
    Request,
    Reply,
    Authenticate,
    Authenticated,
    Ping,
    Pong,
    Connected,
    Subscribed,
    Unsubscribed,
    Error,
    Publication,
    Lagged,
    Conflated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde_tags() {
        for kind in MessageType::ALL {
            assert_eq!(MessageType::from_name(kind.name()), Some(*kind));
        }
        assert_eq!(MessageType::from_name("Teleport"), None);
        let ping = WsMessage::Ping;
        assert_eq!(ping.to_json(), format!(r#"{{"type":"{}"}}"#, ping.kind()));
    }
}
