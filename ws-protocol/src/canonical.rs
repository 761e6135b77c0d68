//! The two most frequent frames in the exact form [`WsMessage::to_json`] and
//! [`encode_publication`](crate::encode_publication) write them, read by matching their fixed
//! parts instead of through serde's struct machinery: a `Publish` (the hub's every
//! publication: `{"type":"Publish","channel":"…","data":…}`, then `"id"`, `"key"` and
//! `"ack_range":true` when present, in that order) and a `Publication` (a client's every
//! message from the hub: `{"type":"Publication","channel":"…","seq":…,"data":…}`), without
//! whitespace. `data` is still read by serde_json, which validates it; a `Publish`'s is
//! checked for portability as the general decoder checks it.
//!
//! The hub reads a `Publish` without making a [`WsMessage`] at all: [`PublishRef`] borrows
//! its parts from the frame, and its data is proven valid and portable by one quick pass
//! (`plain_json.rs`) instead of serde_json and the portability check, for the data of the
//! usual shape; other data is left to the general decoder.
//!
//! Anything else (another order, whitespace, an escape in the channel or key, a field it does
//! not expect) is not taken here: [`publish`] and [`publication`] return `None` and the
//! general decoder decides, so this path accepts a subset of the frames that decoder
//! accepts, decoded the same way.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::message::WsMessage;

/// A `Publish` frame's fields, borrowed from its text: what the hub needs to forward a
/// publication without decoding it into a [`WsMessage`].
///
/// [`PublishRef::parse`] takes only a `Publish` in the canonical form whose `data` one quick
/// pass proves valid and portable; for any other frame it returns `None` and
/// [`WsMessage::from_json`] decides, so a frame it takes is one `from_json` decodes to the
/// same fields.
///
/// ```
/// use ws_protocol::{Payload, PublishRef, WsMessage};
///
/// let frame = WsMessage::Publish {
///     channel: "prices".into(),
///     data: Payload::from_json(r#"{"px":1.5}"#)?,
///     id: Some(7),
///     key: None,
///     ack_range: false,
/// }
/// .to_json();
/// let publish = PublishRef::parse(&frame).expect("canonical");
/// assert_eq!((publish.channel, publish.data, publish.id), ("prices", r#"{"px":1.5}"#, Some(7)));
/// // Not canonical (a space): left to `WsMessage::from_json`.
/// assert!(PublishRef::parse(r#"{"type":"Publish", "channel":"prices","data":1}"#).is_none());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    /// The channel, as sent (it held no escape).
    pub channel: &'a str,
    /// The data: one valid JSON value, portable (see [`check_portable_data`](crate::check_portable_data)).
    pub data: &'a str,
    /// The client's `id`.
    pub id: Option<u64>,
    /// The idempotency key, as sent (it held no escape).
    pub key: Option<&'a str>,
    /// Whether the client accepts its `Published` in a run.
    pub ack_range: bool,
}

impl<'a> PublishRef<'a> {
    /// The `Publish` that `text` is, if it is one in the canonical form with plainly valid,
    /// portable data (see the type's documentation); `None` leaves it to
    /// [`WsMessage::from_json`].
    #[must_use]
    pub fn parse(text: &'a str) -> Option<Self> {
        let (channel, data, id, key, ack_range) = fields(text, |rest| {
            let len = crate::plain_json::plain_portable_len(rest)?;
            Some((&rest[..len], len))
        })?;
        Some(Self {
            channel,
            data,
            id,
            key,
            ack_range,
        })
    }
}

/// The `Publish` that `text` is, if it is one in the canonical form with portable data.
pub(crate) fn publish(text: &str) -> Option<WsMessage> {
    let (channel, data, id, key, ack_range) = fields(text, |rest| {
        let data = value(rest)?;
        Some((data, data.get().len()))
    })?;
    crate::decode::publish(
        channel.to_owned(),
        data,
        id,
        key.map(str::to_owned),
        ack_range,
    )
    .ok()
}

/// A canonical `Publish`'s parts: channel, data (as `fields`' reader made it), id, key,
/// `ack_range`.
type Parts<'a, D> = (&'a str, D, Option<u64>, Option<&'a str>, bool);

/// Matches the fixed parts of a canonical `Publish`; `data` reads its data at the start of
/// the text it is given and returns it with its length.
fn fields<'a, D>(
    text: &'a str,
    data: impl FnOnce(&'a str) -> Option<(D, usize)>,
) -> Option<Parts<'a, D>> {
    let rest = text.strip_prefix(r#"{"type":"Publish","channel":""#)?;
    let (channel, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(r#","data":"#)?;
    let (data, len) = data(rest)?;
    let mut rest = rest.get(len..)?;
    let mut id = None;
    if let Some(after) = rest.strip_prefix(r#","id":"#) {
        let (number, after) = json_u64(after)?;
        id = Some(number);
        rest = after;
    }
    let mut key = None;
    if let Some(after) = rest.strip_prefix(r#","key":""#) {
        let (text, after) = plain_string(after)?;
        key = Some(text);
        rest = after;
    }
    let ack_range = match rest.strip_prefix(r#","ack_range":true"#) {
        Some(after) => {
            rest = after;
            true
        }
        None => false,
    };
    if rest != "}" {
        return None;
    }
    Some((channel, data, id, key, ack_range))
}

/// The `Publication` that `text` is, if it is one in the canonical form.
pub(crate) fn publication(text: &str) -> Option<WsMessage> {
    let rest = text.strip_prefix(r#"{"type":"Publication","channel":""#)?;
    let (channel, rest) = plain_string(rest)?;
    let (seq, rest) = json_u64(rest.strip_prefix(r#","seq":"#)?)?;
    let rest = rest.strip_prefix(r#","data":"#)?;
    let data = value(rest)?;
    if &rest[data.get().len()..] != "}" {
        return None;
    }
    Some(WsMessage::Publication {
        channel: channel.to_owned(),
        seq,
        data: data.to_owned().into(),
    })
}

/// A JSON string's content up to its closing quote, when it holds no escape and no control
/// character (so its text is its value), and what follows the quote.
fn plain_string(text: &str) -> Option<(&str, &str)> {
    let end = text
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
    if text.as_bytes()[end] != b'"' {
        return None;
    }
    Some((&text[..end], &text[end + 1..]))
}

/// The JSON value at the very start of `text` (no whitespace before it), validated by
/// serde_json, which stops at its end.
fn value(text: &str) -> Option<&RawValue> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let value = <&RawValue>::deserialize(&mut reader).ok()?;
    // serde_json skips whitespace before a value; the canonical form has none, and the
    // value must start where `text` does for the caller's slicing to hold.
    std::ptr::eq(value.get().as_ptr(), text.as_ptr()).then_some(value)
}

/// A non-negative JSON integer that fits in a `u64` at the start of `text`, and the rest.
/// Leading zeros (not JSON), signs, fractions and exponents are not taken.
fn json_u64(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || (digits > 1 && text.starts_with('0')) {
        return None;
    }
    let mut number = 0u64;
    for digit in text[..digits].bytes() {
        number = number
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some((number, &text[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Payload;

    fn publish_message(id: Option<u64>, key: Option<&str>, ack_range: bool) -> WsMessage {
        WsMessage::Publish {
            channel: "prices:SOL-USDC".into(),
            data: Payload::from_json(r#"{"px":1.5,"s":"a\"b","n":[1,{"x":null}]}"#)
                .unwrap_or_else(|e| panic!("{e}")),
            id,
            key: key.map(str::to_owned),
            ack_range,
        }
    }

    /// Every frame `to_json` writes for a `Publish` is taken here, whole.
    #[test]
    fn the_canonical_forms_decode_to_what_was_encoded() {
        for message in [
            publish_message(None, None, false),
            publish_message(Some(7), None, false),
            publish_message(Some(u64::MAX), Some("k-1"), true),
            publish_message(None, Some("k"), false),
            publish_message(Some(0), None, true),
        ] {
            let json = message.to_json();
            assert_eq!(publish(&json), Some(message), "{json}");
        }
    }

    /// What is not canonical is left to the general decoder, which gives the same answer
    /// for what it accepts and an error for the rest.
    #[test]
    fn anything_else_is_left_to_the_general_decoder() {
        let d = r#"{"a":1}"#;
        for json in [
            format!(r#"{{"type":"Publish","channel":"c","data":{d} }}"#),
            format!(r#"{{"type":"Publish","channel":"c","data": {d}}}"#),
            format!(r#"{{"type":"Publish","channel":"c\u0041","data":{d}}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":01}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":-1}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":1.0}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":18446744073709551616}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":null}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":1,"id":2}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"key":"a\nb"}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"ack_range":false}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"extra":1}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d},"channel":"e"}}"#),
            format!(r#"{{"type":"Publish","channel":"c","data":{d}}}x"#),
            format!("{{\"type\":\"Publish\",\"channel\":\"a\tb\",\"data\":{d}}}"),
            r#"{"type":"Publish","channel":"c","data":{"a":1e400}}"#.to_owned(),
            r#"{"type":"Publish","channel":"c","data":{"a":}}"#.to_owned(),
            r#"{"type":"Publish","channel":"c","data":"#.to_owned(),
            r#"{"type":"Publish","channel":"c"}"#.to_owned(),
        ] {
            assert_eq!(publish(&json), None, "{json}");
        }
        // The general decoder's view of a few of them: the same message, or an error.
        let spaced = format!(r#"{{"type":"Publish","channel":"c","data": {d}}}"#);
        assert!(matches!(
            WsMessage::from_json(&spaced),
            Ok(WsMessage::Publish { ref channel, .. }) if channel == "c"
        ));
        let escaped = format!(r#"{{"type":"Publish","channel":"c\u0041","data":{d}}}"#);
        assert!(matches!(
            WsMessage::from_json(&escaped),
            Ok(WsMessage::Publish { ref channel, .. }) if channel == "cA"
        ));
        let twice = format!(r#"{{"type":"Publish","channel":"c","data":{d},"id":1,"id":2}}"#);
        assert!(WsMessage::from_json(&twice).is_err());
    }

    /// The borrowed view takes the canonical forms with plain data, with the fields the
    /// general decoder gives them, and leaves the rest to it.
    #[test]
    fn the_borrowed_view_agrees_with_the_decoder() {
        for message in [
            publish_message(None, None, false),
            publish_message(Some(7), None, false),
            publish_message(Some(u64::MAX), Some("k-1"), true),
            publish_message(None, Some("k"), false),
        ] {
            let json = message.to_json();
            let view = PublishRef::parse(&json).unwrap_or_else(|| panic!("{json}"));
            let WsMessage::Publish {
                channel,
                data,
                id,
                key,
                ack_range,
            } = message
            else {
                unreachable!()
            };
            assert_eq!(view.channel, channel);
            assert_eq!(view.data, data.as_str());
            assert_eq!(
                (view.id, view.key, view.ack_range),
                (id, key.as_deref(), ack_range)
            );
        }
        for json in [
            r#"{"type":"Publish","channel":"c","data":{"a":1e5}}"#,
            r#"{"type":"Publish","channel":"c","data":{"a":1e400}}"#,
            r#"{"type":"Publish","channel":"c","data":"\u0041"}"#,
            r#"{"type":"Publish","channel":"c","data":{"a":}}"#,
            r#"{"type":"Publish","channel":"c","data":1 }"#,
            r#"{"type":"Publish","channel":"c","data":01}"#,
        ] {
            assert_eq!(PublishRef::parse(json), None, "{json}");
        }
        // What the view leaves, the decoder decides: the exponent is fine, 1e400 is refused.
        assert!(
            WsMessage::from_json(r#"{"type":"Publish","channel":"c","data":{"a":1e5}}"#).is_ok()
        );
        assert!(
            WsMessage::from_json(r#"{"type":"Publish","channel":"c","data":{"a":1e400}}"#).is_err()
        );
    }

    /// A `Publication` as the hub writes it is taken whole; anything else is left to the
    /// general decoder.
    #[test]
    fn publications_as_the_hub_writes_them_are_read_here() {
        let data = Payload::from_json(r#"{"px":1.5,"s":"a\"b"}"#).unwrap_or_else(|e| panic!("{e}"));
        for (channel, seq) in [("prices:SOL-USDC", 1), ("c", u64::MAX), ("é", 0)] {
            let json = crate::encode_publication(channel, seq, data.as_raw());
            let expected = WsMessage::Publication {
                channel: channel.to_owned(),
                seq,
                data: data.clone(),
            };
            assert_eq!(publication(&json), Some(expected), "{json}");
        }
        for json in [
            r#"{"type":"Publication","channel":"c","seq":1,"data":1,"x":2}"#,
            r#"{"type":"Publication","channel":"c","seq":01,"data":1}"#,
            r#"{"type":"Publication","channel":"c","seq":-1,"data":1}"#,
            r#"{"type":"Publication","channel":"c","seq":1,"data":[1,}"#,
            r#"{"type":"Publication","channel":"c","seq":1,"data":1} "#,
            r#"{"type":"Publication","channel":"c\"d","seq":1,"data":1}"#,
            r#"{"type":"Publication","seq":1,"channel":"c","data":1}"#,
        ] {
            assert_eq!(publication(json), None, "{json}");
        }
    }
}
