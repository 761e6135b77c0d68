//! [`Payload`]: the `data` of a publication, kept as raw JSON text.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Any JSON value, kept as the exact text it arrived as.
///
/// The hub never parses a payload it only forwards: it copies the text into the
/// `Publication` it encodes once for all subscribers. Decode it into your own type with
/// [`Payload::decode`].
///
/// ```
/// use ws_protocol::Payload;
///
/// let payload = Payload::from_value(&[1, 2, 3])?;
/// assert_eq!(payload.as_str(), "[1,2,3]");
/// assert_eq!(payload.decode::<Vec<u8>>()?, vec![1, 2, 3]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Serializes `value` into a payload.
    ///
    /// # Errors
    /// Fails if `value`'s `Serialize` implementation fails or produces a map with non-string keys.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Checks that `json` is one valid JSON value and wraps it without re-encoding it.
    ///
    /// # Errors
    /// Fails if `json` is not exactly one valid JSON value.
    pub fn from_json(json: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.into()).map(Self)
    }

    /// Decodes the payload into `T`.
    ///
    /// # Errors
    /// Fails if the JSON does not have the shape of `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The payload's JSON text, exactly as received.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The payload as serde_json's raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
