//! MessagePack: the protocol's messages in binary frames, the same shapes as the JSON ones
//! (a map with a `"type"` key and the same fields), for connections that negotiate the
//! `ws-toolkit.msgpack` subprotocol (see [`Encoding`](crate::Encoding)).
//!
//! JSON stays the hub's own form: a MessagePack frame is turned into the JSON text of the same
//! value as it comes in ([`msgpack_to_json`]), and a frame going out is turned from its JSON
//! ([`json_to_msgpack`]), once per frame whatever the number of recipients. Only values that
//! both forms carry alike pass: MessagePack's binary and extension types, maps with other keys
//! than strings, and non-finite floats are refused with an error naming them. Turning
//! MessagePack into JSON streams (no tree of values is built from what a peer sent): its
//! memory is the JSON text, at most a few times the frame, and nesting is bounded by
//! [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH) like JSON's.
//!
//! ```
//! use ws_protocol::{WsMessage, json_to_msgpack, msgpack_to_json};
//!
//! let subscribe = WsMessage::Subscribe {
//!     channels: vec!["prices:SOL-USDC".into()],
//!     since: Default::default(),
//!     rewind: None,
//! };
//! let bytes = subscribe.to_msgpack();
//! assert_eq!(WsMessage::from_msgpack(&bytes)?, subscribe);
//! // The same value as the JSON text.
//! assert_eq!(msgpack_to_json(&bytes)?, subscribe.to_json());
//! assert_eq!(json_to_msgpack(&subscribe.to_json())?, bytes);
//! # Ok::<(), ws_protocol::DecodeError>(())
//! ```

use rmp::Marker;
use rmp::encode;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::DecodeError;
use crate::message::WsMessage;
use crate::payload::MAX_DATA_DEPTH;

/// The most levels of arrays and maps a frame may nest, its outer map included (the JSON
/// form of the same frame must stay within [`MAX_DATA_DEPTH`] inside `data`).
const MAX_DEPTH: usize = MAX_DATA_DEPTH + 2;

impl WsMessage {
    /// The message as a MessagePack map (the `ws-toolkit.msgpack` form).
    pub fn to_msgpack(&self) -> Vec<u8> {
        // The JSON of a message always turns: its keys are strings and its numbers finite
        // (serde_json writes non-finite floats as null).
        json_to_msgpack(&self.to_json()).unwrap_or_default()
    }

    /// Decodes one MessagePack frame (the `ws-toolkit.msgpack` form).
    ///
    /// # Errors
    /// [`DecodeError::MalformedMsgpack`] if the bytes are not one MessagePack value that JSON
    /// can carry, then as [`from_json`](Self::from_json) for the value.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_json(&msgpack_to_json(bytes)?)
    }
}

/// The JSON text of the one MessagePack value in `bytes`.
///
/// # Errors
/// [`DecodeError::MalformedMsgpack`], naming the problem: truncated or trailing bytes, a
/// reserved marker, a binary or extension value, a map key that is not a string, a float
/// that is not finite, a string that is not UTF-8, or nesting deeper than the protocol
/// allows.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, DecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut json = String::with_capacity(bytes.len() * 2);
    reader.value(&mut json, 0)?;
    if reader.at != bytes.len() {
        return Err(malformed(format!(
            "{} bytes after the value",
            bytes.len() - reader.at
        )));
    }
    Ok(json)
}

/// The MessagePack form of the JSON value in `json`, its maps' keys in the same order.
///
/// # Errors
/// [`DecodeError::Malformed`] if `json` is not one JSON value.
pub fn json_to_msgpack(json: &str) -> Result<Vec<u8>, DecodeError> {
    let node: Node =
        serde_json::from_str(json).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(json.len());
    node.write(&mut out);
    Ok(out)
}

fn malformed(why: impl Into<String>) -> DecodeError {
    DecodeError::MalformedMsgpack(why.into())
}

/// A JSON value as read, its maps' entries in the order of the text (serde_json's `Value`
/// sorts them): the `"type"` key of a message stays first.
enum Node {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    String(String),
    Array(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// Writes the value as MessagePack. Writing to a `Vec` cannot fail.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Null => {
                let _ = encode::write_nil(out);
            }
            Self::Bool(b) => {
                let _ = encode::write_bool(out, *b);
            }
            Self::Unsigned(u) => {
                let _ = encode::write_uint(out, *u);
            }
            Self::Signed(i) => {
                let _ = encode::write_sint(out, *i);
            }
            Self::Float(x) => {
                let _ = encode::write_f64(out, *x);
            }
            Self::String(s) => {
                let _ = encode::write_str(out, s);
            }
            Self::Array(items) => {
                let _ = encode::write_array_len(out, len32(items.len()));
                for item in items {
                    item.write(out);
                }
            }
            Self::Map(entries) => {
                let _ = encode::write_map_len(out, len32(entries.len()));
                for (key, item) in entries {
                    let _ = encode::write_str(out, key);
                    item.write(out);
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Node, E> {
        Ok(Node::Unsigned(u))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Node, E> {
        Ok(Node::Signed(i))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Node, E> {
        Ok(Node::Float(x))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(Node::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Node, E> {
        Ok(Node::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Node>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

/// A length as MessagePack writes it (no JSON value the hub accepts comes near `u32::MAX`).
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads MessagePack from a slice and writes the same value as JSON.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| malformed(format!("truncated at byte {}", self.at)))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A length of items each taking at least one byte: refused at once if the frame cannot
    /// hold them (no loop over a count the bytes do not back).
    fn count(&mut self, len: usize, per_item: usize) -> Result<usize, DecodeError> {
        let left = self.bytes.len() - self.at;
        if len.saturating_mul(per_item) > left {
            return Err(malformed(format!(
                "{len} items announced with {left} bytes left"
            )));
        }
        Ok(len)
    }

    fn value(&mut self, json: &mut String, depth: usize) -> Result<(), DecodeError> {
        let at = self.at;
        match Marker::from_u8(self.u8()?) {
            Marker::Null => json.push_str("null"),
            Marker::True => json.push_str("true"),
            Marker::False => json.push_str("false"),
            Marker::FixPos(n) => push_int(json, n),
            Marker::FixNeg(n) => push_int(json, n),
            Marker::U8 => push_int(json, self.u8()?),
            Marker::U16 => push_int(json, self.u16()?),
            Marker::U32 => push_int(json, self.u32()?),
            Marker::U64 => push_int(json, self.array().map(u64::from_be_bytes)?),
            Marker::I8 => push_int(json, self.array().map(i8::from_be_bytes)?),
            Marker::I16 => push_int(json, self.array().map(i16::from_be_bytes)?),
            Marker::I32 => push_int(json, self.array().map(i32::from_be_bytes)?),
            Marker::I64 => push_int(json, self.array().map(i64::from_be_bytes)?),
            Marker::F32 => push_float(json, f64::from(self.array().map(f32::from_be_bytes)?), at)?,
            Marker::F64 => push_float(json, self.array().map(f64::from_be_bytes)?, at)?,
            marker @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                let len = self.length(marker)?;
                self.string(json, len)?;
            }
            marker @ (Marker::FixArray(_) | Marker::Array16 | Marker::Array32) => {
                let len = self.length(marker)?;
                self.items(json, len, depth)?;
            }
            marker @ (Marker::FixMap(_) | Marker::Map16 | Marker::Map32) => {
                let len = self.length(marker)?;
                self.entries(json, len, depth)?;
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                return Err(malformed(format!(
                    "binary value at byte {at}: JSON has no binary type (send a string or an array)"
                )));
            }
            Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32
            | Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16 => {
                return Err(malformed(format!(
                    "extension value at byte {at}: not part of the protocol"
                )));
            }
            Marker::Reserved => {
                return Err(malformed(format!("reserved marker 0xc1 at byte {at}")));
            }
        }
        Ok(())
    }

    /// The length a string, array or map marker gives, its length bytes read (0 for any
    /// other marker: callers pass only these).
    fn length(&mut self, marker: Marker) -> Result<usize, DecodeError> {
        Ok(match marker {
            Marker::FixStr(n) | Marker::FixArray(n) | Marker::FixMap(n) => usize::from(n),
            Marker::Str8 => usize::from(self.u8()?),
            Marker::Str16 | Marker::Array16 | Marker::Map16 => usize::from(self.u16()?),
            // Beyond what any frame holds if it does not fit: `count` and `take` refuse it.
            Marker::Str32 | Marker::Array32 | Marker::Map32 => {
                usize::try_from(self.u32()?).unwrap_or(usize::MAX)
            }
            _ => 0,
        })
    }

    fn string(&mut self, json: &mut String, len: usize) -> Result<(), DecodeError> {
        let at = self.at;
        let text = std::str::from_utf8(self.take(len)?)
            .map_err(|_| malformed(format!("string at byte {at} is not UTF-8")))?;
        push_string(json, text);
        Ok(())
    }

    fn nest(&self, depth: usize) -> Result<usize, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(malformed(format!(
                "nested deeper than {MAX_DEPTH} levels at byte {}",
                self.at
            )));
        }
        Ok(depth + 1)
    }

    fn items(&mut self, json: &mut String, len: usize, depth: usize) -> Result<(), DecodeError> {
        let depth = self.nest(depth)?;
        let len = self.count(len, 1)?;
        json.push('[');
        for i in 0..len {
            if i > 0 {
                json.push(',');
            }
            self.value(json, depth)?;
        }
        json.push(']');
        Ok(())
    }

    fn entries(&mut self, json: &mut String, len: usize, depth: usize) -> Result<(), DecodeError> {
        let depth = self.nest(depth)?;
        let len = self.count(len, 2)?;
        json.push('{');
        for i in 0..len {
            if i > 0 {
                json.push(',');
            }
            let at = self.at;
            let key = match Marker::from_u8(self.u8()?) {
                marker @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                    self.length(marker)?
                }
                _ => {
                    return Err(malformed(format!(
                        "map key at byte {at} is not a string (JSON keys are strings)"
                    )));
                }
            };
            self.string(json, key)?;
            json.push(':');
            self.value(json, depth)?;
        }
        json.push('}');
        Ok(())
    }
}

fn push_int(json: &mut String, n: impl itoa::Integer) {
    json.push_str(itoa::Buffer::new().format(n));
}

fn push_float(json: &mut String, x: f64, at: usize) -> Result<(), DecodeError> {
    let number = serde_json::Number::from_f64(x)
        .ok_or_else(|| malformed(format!("float at byte {at} is not finite ({x})")))?;
    json.push_str(&number.to_string());
    Ok(())
}

fn push_string(json: &mut String, text: &str) {
    // serde_json's escaping, so both forms agree on every character.
    let escaped = serde_json::to_string(text).unwrap_or_default();
    json.push_str(&escaped);
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::Payload;

    fn roundtrip(json: &str) -> String {
        msgpack_to_json(&json_to_msgpack(json).unwrap()).unwrap()
    }

    #[test]
    fn every_json_value_goes_there_and_back() {
        for json in [
            "null",
            "true",
            "false",
            "0",
            "127",
            "128",
            "65536",
            "18446744073709551615",
            "-1",
            "-33",
            "-9223372036854775808",
            "1.5",
            "-0.25",
            "1e300",
            r#""""#,
            r#""héllo \"q\" \\ \n \u0001""#,
            "[]",
            "{}",
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
        ] {
            let expected: Value = serde_json::from_str(json).unwrap();
            let back: Value = serde_json::from_str(&roundtrip(json)).unwrap();
            assert_eq!(back, expected, "{json}");
        }
    }

    #[test]
    fn a_publication_keeps_its_data() {
        let message = WsMessage::Publication {
            channel: "book:SOL-USDC".into(),
            seq: 42,
            data: Payload::from_json(r#"{"bids":[[187.02,12.5],[187.01,3]],"ts":1796136376384}"#)
                .unwrap(),
        };
        let back = WsMessage::from_msgpack(&message.to_msgpack()).unwrap();
        assert_eq!(back.to_json(), message.to_json());
    }

    #[test]
    fn what_json_cannot_carry_is_refused_by_name() {
        let cases: [(&[u8], &str); 8] = [
            (&[0xc4, 0x01, 0x00], "binary value"),
            (&[0xd4, 0x01, 0x00], "extension value"),
            (&[0xc1], "reserved marker"),
            (&[0x81, 0x01, 0xc0], "not a string"),
            (&[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], "not finite"),
            (&[0xa2, 0xff, 0xfe], "not UTF-8"),
            (&[0xc0, 0xc0], "after the value"),
            (&[0xdd, 0xff, 0xff, 0xff, 0xff], "items announced"),
        ];
        for (bytes, why) in cases {
            let error = msgpack_to_json(bytes).unwrap_err();
            assert!(
                matches!(&error, DecodeError::MalformedMsgpack(m) if m.contains(why)),
                "{bytes:?}: {error}"
            );
        }
        assert!(
            msgpack_to_json(&[0xcd, 0x01])
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = vec![0x91u8; MAX_DEPTH + 1];
        let error = msgpack_to_json(&deep).unwrap_err();
        assert!(error.to_string().contains("nested deeper"), "{error}");
        let mut fits = vec![0x91u8; MAX_DEPTH];
        fits.push(0xc0);
        assert!(msgpack_to_json(&fits).is_ok());
    }

    #[test]
    fn a_frame_that_is_not_a_message_says_why() {
        // A map without "type".
        let error =
            WsMessage::from_msgpack(&json_to_msgpack(r#"{"channels":[]}"#).unwrap()).unwrap_err();
        assert_eq!(error, DecodeError::MissingType);
    }
}
