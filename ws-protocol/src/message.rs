//! [`WsMessage`]: every frame of the protocol.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::decode::{Fields, PublishFields};
use crate::error::DecodeError;
use crate::payload::Payload;

/// A position in a channel: which incarnation of its history (`epoch`) and which `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Changes whenever the channel's history is lost (hub restart, channel forgotten).
    pub epoch: String,
    /// A publication's `seq` in that epoch.
    pub seq: u64,
}

/// A channel's position as the hub reports it in `Subscribed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPosition {
    /// The channel's current epoch.
    pub epoch: String,
    /// The channel's latest `seq` (0: nothing published yet).
    pub seq: u64,
    /// `true` when every publication after the requested `since` follows this frame (or no
    /// `since` was given); `false` when the history no longer reaches back that far or the
    /// epoch differs: take a fresh snapshot.
    pub recovered: bool,
    /// The `seq` of the first publication the hub replays after this frame, when it replays
    /// from somewhere other than the requested `since`: the start of a `rewind`, or `1` when
    /// the epoch changed and the history still holds the new epoch from its beginning.
    /// Absent when nothing is replayed or the replay starts right after `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<u64>,
}

/// The longest idempotency `key` a `Publish` may carry, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// One frame of the protocol: a JSON object tagged by `"type"`, field names in snake_case.
///
/// Market data (`PriceUpdate`, `AccountUpdate`) travels as the `data` of a `Publication` or
/// directly; the rest is the hub's control protocol. `docs/PROTOCOL.md` shows each frame.
///
/// Decoding ignores fields it does not know, so newer peers can add fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum WsMessage {
    /// A price of one token pair.
    PriceUpdate {
        /// Mint address of the input token.
        input_mint: String,
        /// Mint address of the output token.
        output_mint: String,
        /// Price of one input token in output tokens.
        price: f64,
        /// Traded volume.
        volume: u64,
        /// Unix time in milliseconds when the price was observed.
        timestamp: i64,
    },
    /// A change of one account.
    AccountUpdate {
        /// The account's public key.
        pubkey: String,
        /// Balance in lamports.
        lamports: u64,
        /// Slot of the change.
        slot: u64,
        /// Unix time in milliseconds of the change.
        timestamp: i64,
    },
    /// Client → hub: start receiving publications on these channels. Answered by `Subscribed`.
    Subscribe {
        /// Channel names, such as `prices:SOL-USDC`.
        channels: Vec<String>,
        /// The last position seen per channel: the hub replays what came after it, if its
        /// history still holds it. Empty (and not sent) for a plain subscribe.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        since: BTreeMap<String, Position>,
        /// Replay the last `rewind` publications the history still holds before live ones
        /// (for channels without a `since`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewind: Option<u64>,
    },
    /// Client → hub: stop receiving these channels. Answered by `Unsubscribed`.
    Unsubscribe {
        /// Channel names.
        channels: Vec<String>,
    },
    /// Client → hub: publish `data` to every subscriber of `channel`.
    Publish {
        /// The channel to publish on.
        channel: String,
        /// Any JSON value; forwarded as is.
        data: Payload,
        /// A number the client chooses: the hub answers `Published` (or an `Error`) with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// An idempotency key (at most [`MAX_IDEMPOTENCY_KEY_LEN`] bytes): a second `Publish`
        /// with the same channel and key within `WS_IDEMPOTENCY_WINDOW` is not published again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// With an `id`: the hub may acknowledge this publication together with the ones
        /// that follow it on the connection in one `Published` with a `count`.
        #[serde(default, skip_serializing_if = "is_false")]
        ack_range: bool,
    },
    /// Hub → client: the `Publish` with this `id` has its `seq`; with a `count` above 1, the
    /// `Publish`es with ids `id` to `id + count - 1` (all sent with `ack_range`) have `seq` to
    /// `seq + count - 1`, one each, none a duplicate.
    Published {
        /// The `id` of the `Publish`.
        id: u64,
        /// Its channel.
        channel: String,
        /// Its `seq` in the channel (the first one's, for a duplicate).
        seq: u64,
        /// `true` when the key was seen before: this `Publish` was not published again.
        #[serde(default)]
        duplicate: bool,
        /// How many publications this acknowledges: 1 (and omitted) unless they asked with
        /// `ack_range`.
        #[serde(skip_serializing_if = "is_one")]
        count: u64,
    },
    /// Client → hub: a request for the application embedding the hub, answered by `Reply`
    /// or by an `Error` with the same `id`.
    Request {
        /// A number the client chooses.
        id: u64,
        /// What is asked, such as `orders.place`.
        method: String,
        /// Any JSON value.
        data: Payload,
    },
    /// Hub → client: the application's answer to the `Request` with this `id`.
    Reply {
        /// The `id` of the `Request`.
        id: u64,
        /// Any JSON value.
        data: Payload,
    },
    /// Client → hub: authenticate with a token (when it was not given at the upgrade).
    /// Answered by `Authenticated`, or `Error { code: "unauthorized" }` and close 1008.
    Authenticate {
        /// The token, such as a JWT.
        token: String,
    },
    /// Hub → client: the token was accepted.
    Authenticated {
        /// The subject the token names.
        user_id: String,
    },
    /// Either way: are you there? Answered by `Pong`.
    Ping,
    /// Either way: the answer to `Ping`.
    Pong,
    /// Hub → client: the first frame on every connection.
    Connected {
        /// The hub's identifier for this connection.
        connection_id: u64,
        /// The hub's clock, Unix time in milliseconds.
        server_time: i64,
    },
    /// Hub → client: the subscription is in effect; publications on these channels follow.
    Subscribed {
        /// The channels now subscribed.
        channels: Vec<String>,
        /// Where each channel stands: its epoch, its latest `seq`, and whether everything
        /// after the requested `since` follows. Empty (and not sent) from hubs without it.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        positions: BTreeMap<String, ChannelPosition>,
    },
    /// Hub → client: these channels are no longer delivered.
    Unsubscribed {
        /// The channels no longer subscribed.
        channels: Vec<String>,
    },
    /// Hub → client: a frame could not be acted on. The connection stays open unless a close
    /// frame follows.
    Error {
        /// A stable snake_case identifier; see [`codes`](crate::codes).
        code: String,
        /// A human-readable explanation naming the problem.
        message: String,
        /// When it refuses a `Subscribe`: that frame's channels, none of which was
        /// subscribed. Empty (and absent on the wire) otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        channels: Vec<String>,
        /// The `id` of the `Publish` or `Request` it refuses, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Hub → client: one message published on a channel the client subscribed to.
    Publication {
        /// The channel it was published on.
        channel: String,
        /// Counts the channel's publications from 1, one by one.
        seq: u64,
        /// The published JSON value.
        data: Payload,
    },
    /// Hub → client: `missed` older publications of `channel` were dropped because this
    /// connection did not read fast enough (slow-consumer policy `drop_oldest`).
    Lagged {
        /// The channel that lost publications.
        channel: String,
        /// How many were dropped.
        missed: u64,
    },
    /// Hub → client: `skipped` queued publications of `channel` were replaced by newer ones
    /// with the same key because this connection did not read fast enough (slow-consumer
    /// policy `conflate`). Sent before the publications that skip over them.
    Conflated {
        /// The channel.
        channel: String,
        /// How many publications were replaced.
        skipped: u64,
    },
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_one(value: &u64) -> bool {
    *value == 1
}

impl WsMessage {
    /// Decodes one text frame.
    ///
    /// # Errors
    /// [`DecodeError`] says whether the text is not JSON, has no or an unknown `type`, or lacks
    /// a field; [`DecodeError::code`] gives the matching [`codes`](crate::codes) value.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        if let Some(message) =
            crate::canonical::publish(text).or_else(|| crate::canonical::publication(text))
        {
            return Ok(message);
        }
        if text.starts_with(r#"{"type":"Publish""#)
            && let Some(publish) = serde_json::from_str::<PublishFields<'_>>(text)
                .ok()
                .and_then(PublishFields::into_message)
        {
            return Ok(publish);
        }
        let fields: Fields<'_> =
            serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        fields.into_message()
    }

    /// Encodes the message as one JSON text frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string, and non-finite
        // floats are written as `null` by serde_json.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The value of the `"type"` field, such as `"Subscribe"`.
    pub fn kind(&self) -> &'static str {
        self.message_type().name()
    }

    /// The same frame answering the `Publish` or `Request` with `id` (for an `Error`; other
    /// frames are returned unchanged).
    #[must_use]
    pub fn with_id(mut self, id: Option<u64>) -> Self {
        if let Self::Error { id: slot, .. } = &mut self {
            *slot = id;
        }
        self
    }

    /// An `Error` frame with the given code and message; the message is cut to
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes, so that an error quoting hostile input stays small.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            id: None,
            code: code.to_owned(),
            message: capped(message.into()),
            channels: Vec::new(),
        }
    }

    /// An `Error` frame refusing a `Subscribe` of `channels` (the message cut as in
    /// [`WsMessage::error`]). A name longer than any channel name ([`MAX_CHANNEL_NAME_LEN`](crate::MAX_CHANNEL_NAME_LEN))
    /// is echoed cut to that length and marked `…`, so that a refusal never repeats all of
    /// hostile input; every valid name is echoed exactly.
    pub fn subscribe_refused(code: &str, message: impl Into<String>, channels: &[String]) -> Self {
        Self::Error {
            id: None,
            code: code.to_owned(),
            message: capped(message.into()),
            channels: channels
                .iter()
                .map(|name| {
                    if name.len() <= crate::MAX_CHANNEL_NAME_LEN {
                        return name.clone();
                    }
                    let mut end = crate::MAX_CHANNEL_NAME_LEN;
                    while !name.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!("{}…", &name[..end])
                })
                .collect(),
        }
    }
}

/// The longest `message` of an `Error` frame, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 512;

/// `message` cut to [`MAX_ERROR_MESSAGE_LEN`] bytes at a character boundary, ending in `…`
/// when cut.
fn capped(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_LEN {
        let mut end = MAX_ERROR_MESSAGE_LEN - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// `text` quoted for an error message (as `{:?}` does), showing at most its first 64
/// characters: errors name what they refuse without echoing all of hostile input.
pub fn excerpt(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

impl<'de> Deserialize<'de> for WsMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Fields::deserialize(deserializer)?
            .into_message()
            .map_err(D::Error::custom)
    }
}

/// Encodes a `Publication` frame without copying `data` into an intermediate value.
///
/// This is what the hub calls once per publication; every subscriber then gets the same bytes.
///
/// ```
/// use ws_protocol::{Payload, WsMessage, encode_publication};
///
/// let data = Payload::from_json(r#"{"price":101.5}"#)?;
/// let text = encode_publication("prices:SOL-USDC", 7, data.as_raw());
/// assert_eq!(text, r#"{"type":"Publication","channel":"prices:SOL-USDC","seq":7,"data":{"price":101.5}}"#);
/// assert_eq!(
///     WsMessage::from_json(&text).unwrap(),
///     WsMessage::Publication { channel: "prices:SOL-USDC".into(), seq: 7, data },
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn encode_publication(channel: &str, seq: u64, data: &RawValue) -> String {
    let mut out = Vec::with_capacity(channel.len() + data.get().len() + 64);
    write_publication(&mut out, channel, seq, data);
    // serde_json writes valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends a `Publication` frame's JSON to `out`, as [`encode_publication`] returns it.
pub fn write_publication(out: &mut Vec<u8>, channel: &str, seq: u64, data: &RawValue) {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "Publication")]
    struct PublicationRef<'a> {
        channel: &'a str,
        seq: u64,
        data: &'a RawValue,
    }
    let start = out.len();
    // Writing into a Vec cannot fail and the fields are all serializable; should it ever
    // fail, nothing half-written is left behind.
    if serde_json::to_writer(&mut *out, &PublicationRef { channel, seq, data }).is_err() {
        out.truncate(start);
    }
}

/// The start of every `Publication` frame of `channel`, up to its `seq`
/// (`{"type":"Publication","channel":"…","seq":`): made once per channel, so that
/// [`write_publication_after`] escapes nothing.
pub fn publication_prefix(channel: &str) -> String {
    let mut out = Vec::with_capacity(channel.len() + 48);
    out.extend_from_slice(br#"{"type":"Publication","channel":"#);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, channel);
    out.extend_from_slice(br#","seq":"#);
    // serde_json writes valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends a `Publication` frame's JSON to `out`, as [`write_publication`] writes it, given
/// its channel's [`publication_prefix`]. `data` must be one valid JSON value (a
/// [`RawValue`]'s text, or a [`PublishRef`](crate::PublishRef)'s data): it is copied as is.
pub fn write_publication_after(out: &mut Vec<u8>, prefix: &str, seq: u64, data: &str) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
}

/// A `Published` frame's JSON, as [`WsMessage::Published`] encodes it, written directly
/// (the hub answers every acknowledged publication, or run of them, with one).
pub fn encode_published(id: u64, channel: &str, seq: u64, duplicate: bool, count: u64) -> String {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "Published")]
    struct PublishedRef<'a> {
        id: u64,
        channel: &'a str,
        seq: u64,
        duplicate: bool,
        #[serde(skip_serializing_if = "is_one")]
        count: u64,
    }
    let published = PublishedRef {
        id,
        channel,
        seq,
        duplicate,
        count,
    };
    let mut out = Vec::with_capacity(80 + channel.len());
    // Writing into a Vec cannot fail and every field is serializable.
    let _ = serde_json::to_writer(&mut out, &published);
    // serde_json writes valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;
    use crate::message_type::MessageType;

    fn round_trip(message: WsMessage) {
        let text = message.to_json();
        assert_eq!(WsMessage::from_json(&text), Ok(message.clone()), "{text}");
        let via_serde: WsMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(via_serde, message);
    }

    #[test]
    fn the_publish_fast_path_accepts_and_refuses_what_the_general_one_does() {
        let general = |text: &str| {
            serde_json::from_str::<Fields<'_>>(text)
                .map_err(|e| DecodeError::Malformed(e.to_string()))
                .and_then(Fields::into_message)
        };
        for text in [
            r#"{"type":"Publish","channel":"a","data":{"p":1}}"#,
            r#"{"type":"Publish","channel":"a","data":null,"id":7,"key":"k-1"}"#,
            r#"{"type":"Publish","channel":"a","data":[1],"id":null,"key":null}"#,
            r#"{"type":"Publish","channel":"a","data":1,"seq":5}"#,
            r#"{"type":"Publish","channel":"a","data":1,"seq":"five"}"#,
            r#"{"type":"Publish","channel":"a","data":1,"channel":"b"}"#,
            r#"{"type":"Publish","channel":"a","data":1,"id":-1}"#,
            r#"{"type":"Publish","channel":"a","data":1e400}"#,
            r#"{"type":"Publish","channel":"a"}"#,
            r#"{"type":"Publish","data":1}"#,
            r#"{"type":"Publish","channel":"a","data":1"#,
            r#"{"type":"Publisher","channel":"a","data":1}"#,
        ] {
            assert_eq!(WsMessage::from_json(text), general(text), "{text}");
        }
    }

    #[test]
    fn a_publication_written_after_its_prefix_is_the_one_serde_writes() {
        let data = Payload::from_json(r#"{"p":[1,"\u00e9\""]}"#).unwrap();
        for channel in ["prices:SOL-USDC", "a\"b\\c", "é\u{1}\n", ""] {
            for seq in [0, 7, u64::MAX] {
                let mut serde = Vec::new();
                write_publication(&mut serde, channel, seq, data.as_raw());
                let mut direct = Vec::new();
                write_publication_after(
                    &mut direct,
                    &publication_prefix(channel),
                    seq,
                    data.as_str(),
                );
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }

    #[test]
    fn published_is_encoded_as_the_message_is() {
        for (id, channel, seq, duplicate, count) in [
            (7, "orders", 12, false, 1),
            (0, "a\"b", 1, true, 1),
            (9, "c", 4, false, 30),
        ] {
            let message = WsMessage::Published {
                id,
                channel: channel.to_owned(),
                seq,
                duplicate,
                count,
            };
            assert_eq!(
                encode_published(id, channel, seq, duplicate, count),
                message.to_json()
            );
        }
    }

    #[test]
    fn every_variant_round_trips() {
        let data = Payload::from_json(r#"{"a":[1,2,{"b":null}]}"#).unwrap();
        for message in [
            WsMessage::PriceUpdate {
                input_mint: "SOL".into(),
                output_mint: "USDC".into(),
                price: 101.25,
                volume: 7,
                timestamp: 1_700_000_000_000,
            },
            WsMessage::AccountUpdate {
                pubkey: "abc".into(),
                lamports: 5,
                slot: 9,
                timestamp: -1,
            },
            WsMessage::Subscribe {
                rewind: None,
                channels: vec!["a".into(), "b".into()],
                since: Default::default(),
            },
            WsMessage::Unsubscribe { channels: vec![] },
            WsMessage::Publish {
                id: None,
                key: None,
                channel: "a".into(),
                data: data.clone(),
                ack_range: false,
            },
            WsMessage::Authenticate { token: "t".into() },
            WsMessage::Authenticated {
                user_id: "u".into(),
            },
            WsMessage::Ping,
            WsMessage::Pong,
            WsMessage::Connected {
                connection_id: 3,
                server_time: 4,
            },
            WsMessage::Subscribed {
                channels: vec!["a".into()],
                positions: Default::default(),
            },
            WsMessage::Unsubscribed {
                channels: vec!["a".into()],
            },
            WsMessage::error(codes::BAD_REQUEST, "nope"),
            WsMessage::Publication {
                channel: "a".into(),
                seq: 1,
                data,
            },
            WsMessage::Lagged {
                channel: "a".into(),
                missed: 2,
            },
            WsMessage::Conflated {
                channel: "a".into(),
                skipped: 3,
            },
        ] {
            assert!(MessageType::from_name(message.kind()).is_some());
            assert!(
                message
                    .to_json()
                    .starts_with(&format!(r#"{{"type":"{}""#, message.kind()))
            );
            round_trip(message);
        }
    }

    #[test]
    fn documented_frames_decode() {
        assert_eq!(
            WsMessage::from_json(r#"{"type":"Ping"}"#),
            Ok(WsMessage::Ping)
        );
        assert_eq!(
            WsMessage::from_json(
                r#"{"channels":["prices:SOL-USDC"],"type":"Subscribe","extra":1}"#
            ),
            Ok(WsMessage::Subscribe {
                rewind: None,
                channels: vec!["prices:SOL-USDC".into()],
                since: Default::default()
            })
        );
    }

    #[test]
    fn acknowledged_publishing_requests_and_rewind_round_trip() {
        let data = Payload::from_json(r#"{"px":1.5}"#).unwrap();
        round_trip(WsMessage::Publish {
            channel: "c".into(),
            data: data.clone(),
            id: Some(7),
            key: Some("k-1".into()),
            ack_range: false,
        });
        round_trip(WsMessage::Publish {
            channel: "c".into(),
            data: data.clone(),
            id: Some(8),
            key: Some("k-2".into()),
            ack_range: true,
        });
        round_trip(WsMessage::Published {
            id: 7,
            channel: "c".into(),
            seq: 3,
            duplicate: true,
            count: 1,
        });
        round_trip(WsMessage::Published {
            id: 8,
            channel: "c".into(),
            seq: 4,
            duplicate: false,
            count: 25,
        });
        round_trip(WsMessage::Request {
            id: 9,
            method: "orders.place".into(),
            data: data.clone(),
        });
        round_trip(WsMessage::Reply { id: 9, data });
        round_trip(WsMessage::error(codes::TIMEOUT, "no answer").with_id(Some(9)));
        round_trip(WsMessage::Subscribe {
            channels: vec!["c".into()],
            since: Default::default(),
            rewind: Some(5),
        });
        // Optional fields stay off the wire when absent, so older peers see what they knew.
        let plain = r#"{"type":"Publish","channel":"c","data":1}"#;
        assert_eq!(WsMessage::from_json(plain).unwrap().to_json(), plain);
        let published =
            WsMessage::from_json(r#"{"type":"Published","id":1,"channel":"c","seq":2}"#);
        assert!(matches!(
            published,
            Ok(WsMessage::Published {
                duplicate: false,
                ..
            })
        ));
    }

    #[test]
    fn null_data_is_a_value_not_a_missing_field() {
        let message = WsMessage::from_json(r#"{"type":"Publish","channel":"c","data":null}"#);
        assert_eq!(
            message,
            Ok(WsMessage::Publish {
                id: None,
                key: None,
                channel: "c".into(),
                data: Payload::from_json("null").unwrap(),
                ack_range: false,
            })
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            WsMessage::from_json("{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            WsMessage::from_json("[]"),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            WsMessage::from_json(r#"{"channels":[]}"#),
            Err(DecodeError::MissingType)
        );
        assert_eq!(
            WsMessage::from_json(r#"{"type":"Teleport"}"#),
            Err(DecodeError::UnknownType("Teleport".into()))
        );
        let missing = WsMessage::from_json(r#"{"type":"Subscribe"}"#).unwrap_err();
        assert_eq!(
            missing,
            DecodeError::MissingField {
                kind: "Subscribe",
                field: "channels"
            }
        );
        assert_eq!(missing.code(), codes::BAD_REQUEST);
        assert!(missing.to_string().contains("channels"), "{missing}");
        let wrong = WsMessage::from_json(r#"{"type":"Subscribe","channels":"a"}"#).unwrap_err();
        assert_eq!(wrong.code(), codes::BAD_REQUEST);
        assert_eq!(
            DecodeError::UnknownType("X".into()).code(),
            codes::UNKNOWN_TYPE
        );
    }

    #[test]
    fn escaped_type_still_matches() {
        assert_eq!(
            WsMessage::from_json(r#"{"type":"P\u0069ng"}"#),
            Ok(WsMessage::Ping)
        );
    }
}
