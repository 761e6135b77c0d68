//! [`Text`]: the text of a frame, shared rather than copied where the transport allows.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The text of a frame ([`Event::Message`](crate::Event::Message)), UTF-8. Use it as a
/// `&str` (it dereferences to one) or turn it into a `String` with [`Text::into_string`] or
/// `String::from`; cloning it is cheap (a reference count). On sockudo-ws
/// ([`Transport::Sockudo`](crate::Transport)) it shares the buffer the frame was read into
/// instead of being copied out of it; on tokio-tungstenite it is a copy (sharing would keep
/// that transport reading in ever smaller pieces).
///
/// ```
/// use ws_client::Text;
///
/// let text = Text::from("{\"price\":1.5}");
/// let value: serde_json::Value = serde_json::from_str(&text).unwrap();
/// assert_eq!(value["price"], 1.5);
/// assert_eq!(text, "{\"price\":1.5}");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Utf8Bytes);

impl Text {
    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text as an owned `String` (a copy).
    pub fn into_string(self) -> String {
        self.0.as_str().to_owned()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The transport's own text, shared, without a copy.
    pub(crate) fn shared(text: Utf8Bytes) -> Self {
        Self(text)
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(text.to_owned().into())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.into_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_the_text_it_was_made_from() {
        let text = Text::from(String::from("héllo"));
        assert_eq!(text.as_str(), "héllo");
        assert_eq!(text.len(), "héllo".len());
        assert!(!text.is_empty());
        assert_eq!(text, "héllo");
        assert_eq!("héllo", text);
        assert_eq!(text, String::from("héllo"));
        assert_eq!(format!("{text}"), "héllo");
        assert_eq!(format!("{text:?}"), "\"héllo\"");
        assert_eq!(String::from(text.clone()), "héllo");
        assert!(text.starts_with("hé"));
        assert!(Text::default().is_empty());
    }

    #[test]
    fn a_shared_text_and_its_clones_share_the_bytes() {
        let read = Utf8Bytes::from(String::from("shared"));
        let text = Text::shared(read.clone());
        let copy = text.clone();
        assert_eq!(text.as_str().as_ptr(), read.as_str().as_ptr());
        assert_eq!(text.as_str().as_ptr(), copy.as_str().as_ptr());
    }
}
