//! Decoding a frame: every field any frame may carry is read in one pass, then checked
//! against the frame's `type`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::message::{ChannelPosition, Position, WsMessage};
use crate::message_type::MessageType;

/// Every field any frame may carry; decoded in one pass, then checked against the `type`.
///
/// A flat struct (rather than serde's internally tagged enum) lets `data` stay a borrowed
/// [`RawValue`] and lets errors say which field of which type is missing.
#[derive(Deserialize)]
pub(crate) struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    input_mint: Option<String>,
    output_mint: Option<String>,
    price: Option<f64>,
    volume: Option<u64>,
    timestamp: Option<i64>,
    pubkey: Option<String>,
    lamports: Option<u64>,
    slot: Option<u64>,
    channels: Option<Vec<String>>,
    since: Option<BTreeMap<String, Position>>,
    positions: Option<BTreeMap<String, ChannelPosition>>,
    channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    connection_id: Option<u64>,
    server_time: Option<i64>,
    code: Option<String>,
    message: Option<String>,
    seq: Option<u64>,
    missed: Option<u64>,
    skipped: Option<u64>,
    token: Option<String>,
    user_id: Option<String>,
    id: Option<u64>,
    key: Option<String>,
    rewind: Option<u64>,
    method: Option<String>,
    duplicate: Option<bool>,
    ack_range: Option<bool>,
    count: Option<u64>,
}

/// Exactly the fields of a `Publish`, for the hub's most frequent frame when it is not in the
/// canonical form `crate::canonical` reads without serde: a struct of five
/// fields decodes in a fraction of the time of [`Fields`]. Any frame it does not take whole
/// (another `type`, an extra or a duplicate field, a wrong type) goes through [`Fields`],
/// which decides, so both paths accept the same frames and only [`Fields`] words errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    id: Option<u64>,
    key: Option<String>,
    ack_range: Option<bool>,
}

impl PublishFields<'_> {
    /// The `Publish` these fields make, if they are one and its data is portable.
    pub(crate) fn into_message(self) -> Option<WsMessage> {
        if self.kind != "Publish" {
            return None;
        }
        publish(
            self.channel,
            self.data,
            self.id,
            self.key,
            self.ack_range.unwrap_or_default(),
        )
        .ok()
    }
}

/// The `Publish` of `data` on `channel`, if its data is portable; else what is wrong with it.
/// The two quick decoders end here ([`Fields`] checks in its own order, to word errors).
pub(crate) fn publish(
    channel: String,
    data: &RawValue,
    id: Option<u64>,
    key: Option<String>,
    ack_range: bool,
) -> Result<WsMessage, String> {
    crate::payload::check_portable(data.get())?;
    Ok(WsMessage::Publish {
        channel,
        data: data.to_owned().into(),
        id,
        key,
        ack_range,
    })
}

/// Keeps `"data": null` as the JSON value `null` rather than as an absent field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Fields<'_> {
    /// The message these fields make for their `type`.
    pub(crate) fn into_message(self) -> Result<WsMessage, DecodeError> {
        let name = self.kind.ok_or(DecodeError::MissingType)?;
        let Some(kind) = MessageType::from_name(&name) else {
            return Err(DecodeError::UnknownType(name.into_owned()));
        };
        let need = |field: &'static str| DecodeError::MissingField {
            kind: kind.name(),
            field,
        };
        Ok(match kind {
            MessageType::PriceUpdate => WsMessage::PriceUpdate {
                input_mint: self.input_mint.ok_or_else(|| need("input_mint"))?,
                output_mint: self.output_mint.ok_or_else(|| need("output_mint"))?,
                price: self.price.ok_or_else(|| need("price"))?,
                volume: self.volume.ok_or_else(|| need("volume"))?,
                timestamp: self.timestamp.ok_or_else(|| need("timestamp"))?,
            },
            MessageType::AccountUpdate => WsMessage::AccountUpdate {
                pubkey: self.pubkey.ok_or_else(|| need("pubkey"))?,
                lamports: self.lamports.ok_or_else(|| need("lamports"))?,
                slot: self.slot.ok_or_else(|| need("slot"))?,
                timestamp: self.timestamp.ok_or_else(|| need("timestamp"))?,
            },
            MessageType::Subscribe => WsMessage::Subscribe {
                channels: self.channels.ok_or_else(|| need("channels"))?,
                since: self.since.unwrap_or_default(),
                rewind: self.rewind,
            },
            MessageType::Unsubscribe => WsMessage::Unsubscribe {
                channels: self.channels.ok_or_else(|| need("channels"))?,
            },
            MessageType::Publish => {
                let data = self.data.ok_or_else(|| need("data"))?;
                crate::payload::check_portable(data.get()).map_err(DecodeError::UnportableData)?;
                WsMessage::Publish {
                    channel: self.channel.ok_or_else(|| need("channel"))?,
                    data: data.into(),
                    id: self.id,
                    key: self.key,
                    ack_range: self.ack_range.unwrap_or_default(),
                }
            }
            MessageType::Published => WsMessage::Published {
                id: self.id.ok_or_else(|| need("id"))?,
                channel: self.channel.ok_or_else(|| need("channel"))?,
                seq: self.seq.ok_or_else(|| need("seq"))?,
                duplicate: self.duplicate.unwrap_or_default(),
                count: self.count.unwrap_or(1),
            },
            MessageType::Request => {
                let data = self.data.ok_or_else(|| need("data"))?;
                crate::payload::check_portable(data.get()).map_err(DecodeError::UnportableData)?;
                WsMessage::Request {
                    id: self.id.ok_or_else(|| need("id"))?,
                    method: self.method.ok_or_else(|| need("method"))?,
                    data: data.into(),
                }
            }
            MessageType::Reply => WsMessage::Reply {
                id: self.id.ok_or_else(|| need("id"))?,
                data: self.data.ok_or_else(|| need("data"))?.into(),
            },
            MessageType::Authenticate => WsMessage::Authenticate {
                token: self.token.ok_or_else(|| need("token"))?,
            },
            MessageType::Authenticated => WsMessage::Authenticated {
                user_id: self.user_id.ok_or_else(|| need("user_id"))?,
            },
            MessageType::Ping => WsMessage::Ping,
            MessageType::Pong => WsMessage::Pong,
            MessageType::Connected => WsMessage::Connected {
                connection_id: self.connection_id.ok_or_else(|| need("connection_id"))?,
                server_time: self.server_time.ok_or_else(|| need("server_time"))?,
            },
            MessageType::Subscribed => WsMessage::Subscribed {
                channels: self.channels.ok_or_else(|| need("channels"))?,
                positions: self.positions.unwrap_or_default(),
            },
            MessageType::Unsubscribed => WsMessage::Unsubscribed {
                channels: self.channels.ok_or_else(|| need("channels"))?,
            },
            MessageType::Error => WsMessage::Error {
                code: self.code.ok_or_else(|| need("code"))?,
                message: self.message.ok_or_else(|| need("message"))?,
                channels: self.channels.unwrap_or_default(),
                id: self.id,
            },
            MessageType::Publication => WsMessage::Publication {
                channel: self.channel.ok_or_else(|| need("channel"))?,
                seq: self.seq.ok_or_else(|| need("seq"))?,
                data: self.data.ok_or_else(|| need("data"))?.into(),
            },
            MessageType::Lagged => WsMessage::Lagged {
                channel: self.channel.ok_or_else(|| need("channel"))?,
                missed: self.missed.ok_or_else(|| need("missed"))?,
            },
            MessageType::Conflated => WsMessage::Conflated {
                channel: self.channel.ok_or_else(|| need("channel"))?,
                skipped: self.skipped.ok_or_else(|| need("skipped"))?,
            },
        })
    }
}
