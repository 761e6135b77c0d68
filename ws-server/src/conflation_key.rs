//! [`ConflationKey`]: what a publication is about, for the `conflate` slow-consumer policy.
//!
//! The key is one top-level field of the publication's data (`WS_CONFLATE_KEY`, `symbol` by
//! default): `{"symbol":"SOL-USDC","price":101.5}` has the key `SOL-USDC`. It is read once
//! per publication, before the fan-out, and kept as a 64-bit hash so that queued frames
//! compare without holding the text.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Reads the conflation key of publications. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct ConflationKey {
    field: String,
}

impl ConflationKey {
    /// Keys taken from the top-level field `field`.
    pub(crate) fn new(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
        }
    }

    /// The hash of `data`'s key: `None` when `data` is not an object or the field is missing
    /// or null. A string key hashes its text; any other value hashes its JSON.
    pub(crate) fn of(&self, data: &str) -> Option<u64> {
        let mut de = serde_json::Deserializer::from_str(data);
        de.deserialize_any(FindField { field: &self.field })
            .ok()
            .flatten()
    }
}

/// Visits the top-level object and hashes the one field's value.
struct FindField<'f> {
    field: &'f str,
}

impl<'de> Visitor<'de> for FindField<'_> {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && name == self.field {
                found = map.next_value_seed(HashValue)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    // Anything but an object has no key.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Hashes one field value: a string by its text, anything else by its JSON text.
struct HashValue;

impl<'de> DeserializeSeed<'de> for HashValue {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw: &RawValue = serde::Deserialize::deserialize(d)?;
        let text = raw.get();
        if text == "null" {
            return Ok(None);
        }
        let mut hasher = DefaultHasher::new();
        match serde_json::from_str::<std::borrow::Cow<'_, str>>(text) {
            Ok(string) => string.hash(&mut hasher),
            Err(_) => text.hash(&mut hasher),
        }
        Ok(Some(hasher.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(field: &str, json: &str) -> Option<u64> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        ConflationKey::new(field).of(raw.get())
    }

    #[test]
    fn the_key_is_the_fields_value() {
        let sol = key(
            "symbol",
            r#"{"price":1.5,"symbol":"SOL-USDC","x":{"symbol":"no"}}"#,
        );
        assert!(sol.is_some());
        assert_eq!(sol, key("symbol", r#"{"symbol":"SOL-USDC"}"#));
        assert_eq!(
            sol,
            key("symbol", r#"{"symbol":"SOL\u002dUSDC"}"#),
            "escapes"
        );
        assert_ne!(sol, key("symbol", r#"{"symbol":"BTC-USDC"}"#));
        assert_eq!(
            key("id", r#"{"id":7}"#),
            key("id", r#"{"id":7,"a":[1,{}]}"#)
        );
    }

    #[test]
    fn no_object_no_field_or_null_has_no_key() {
        for json in [
            r#"{"price":1}"#,
            r#"{"symbol":null}"#,
            r#"[{"symbol":"a"}]"#,
            r#""symbol""#,
            "42",
            "true",
            "null",
            r#"{"nested":{"symbol":"a"}}"#,
        ] {
            assert_eq!(key("symbol", json), None, "{json}");
        }
    }
}
