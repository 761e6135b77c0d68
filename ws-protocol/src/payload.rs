//! [`Payload`]: the `data` of a publication, kept as raw JSON text.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::swar::{repeated, zero_bytes};

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

/// The deepest nesting of arrays and objects a published `data` may have.
pub const MAX_DATA_DEPTH: usize = 64;

/// Checks that `json`, one valid JSON value, is data a `Publish` may carry: nested at most
/// [`MAX_DATA_DEPTH`] deep, every number finite as a 64-bit float (the rule the hub applies
/// to every publication, whatever way it comes).
///
/// # Errors
/// What is wrong, for the refusal's message.
pub fn check_portable_data(json: &str) -> Result<(), String> {
    check_portable(json)
}

/// Checks that `json` (one valid JSON value) is something every subscriber's parser can
/// read: nested at most [`MAX_DATA_DEPTH`] deep (deeper values overflow recursive parsers,
/// Rust's serde_json stops at 128), and every number finite as a 64-bit float (`1e400` is an
/// error for serde_json and infinity for Python). Returns what is wrong otherwise.
///
/// Most payloads are proven portable by a quick vectorised pass ([`plainly_portable`]); the
/// rest take one pass through their structure, strings skipped without decoding.
///
/// The caller has already checked that `json` is valid JSON, so a string always ends.
pub(crate) fn check_portable(json: &str) -> Result<(), String> {
    if plainly_portable(json.as_bytes()) {
        return Ok(());
    }
    walk(json)
}

/// [`check_portable`]'s exact answer: through `json`'s structure, skipping strings.
fn walk(json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(format!(
                        "data is nested more than {MAX_DATA_DEPTH} levels deep"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &json[start..=i];
                // Up to 15 digits without an exponent always fit; only longer ones or
                // exponents need a look.
                let plain = number.len() <= 16 && !number.contains(['e', 'E']);
                if !plain && !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    let shown: String = number.chars().take(32).collect();
                    return Err(format!(
                        "data holds the number {shown} which is outside the range of a \
                         64-bit float"
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The longest text in which no number can overflow a 64-bit float without an exponent: one
/// needs at least 309 digits before its point (`f64::MAX` is about 1.8e308).
pub(crate) const SHORTER_THAN_AN_OVERFLOW: usize = 308;

/// Whether `bytes`, one valid JSON value, is portable for reasons that need no walk through
/// its structure: short enough that no number can overflow without an exponent, no digit
/// followed by `e` or `E` anywhere (so no number has an exponent; strings may make this
/// answer a needless "no"), and no more `[` and `{` in all than [`MAX_DATA_DEPTH`] (so it
/// cannot nest deeper). Three passes that the compiler turns into vector code; `false`
/// sends the caller to the exact walk.
fn plainly_portable(bytes: &[u8]) -> bool {
    if bytes.len() > SHORTER_THAN_AN_OVERFLOW {
        return false;
    }
    // In blocks of 32 bytes, each counted in a byte-wide sum: what vectorises best.
    let openers: usize = bytes
        .chunks(32)
        .map(|block| {
            let count = block
                .iter()
                .fold(0u8, |n, &b| n + u8::from((b == b'[') | (b == b'{')));
            usize::from(count)
        })
        .sum();
    let after = bytes.get(1..).unwrap_or_default();
    let exponent = bytes.chunks(32).zip(after.chunks(32)).any(|(here, next)| {
        let found = here.iter().zip(next).fold(0u8, |found, (&a, &b)| {
            found | (u8::from(a.is_ascii_digit()) & u8::from((b | 0x20) == b'e'))
        });
        found != 0
    });
    openers <= MAX_DATA_DEPTH && !exponent
}

/// The index of the quote that ends the string starting at `from` (just after its opening
/// quote), or `bytes.len()` if none does. Eight bytes at a time (a word compared with every
/// byte at once), then byte by byte for the last few and past each escape: strings are most
/// of a payload's bytes.
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    loop {
        while let Some(word) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            let word = u64::from_le_bytes(*word);
            let found = zero_bytes(word ^ repeated(b'"')) | zero_bytes(word ^ repeated(b'\\'));
            if found != 0 {
                // The lowest flagged byte is always a real match (a false flag can only sit
                // above a real one), and little-endian puts the first byte lowest.
                i += (found.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match bytes.get(i) {
            Some(b'"') => return i,
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
            None => return bytes.len(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_and_huge_numbers_are_refused() {
        let deep = format!("{}{}", "[".repeat(32_000), "]".repeat(32_000));
        assert!(check_portable(&deep).unwrap_err().contains("nested"));
        let limit = format!(
            "{}{}",
            "[".repeat(MAX_DATA_DEPTH),
            "]".repeat(MAX_DATA_DEPTH)
        );
        assert!(check_portable(&limit).is_ok());
        for number in ["1e400", "-1e309", &"9".repeat(400)] {
            let json = format!(r#"{{"price":{number}}}"#);
            assert!(
                check_portable(&json).unwrap_err().contains("64-bit"),
                "{number}"
            );
        }
        for fine in [
            r#"{"p":1.5e10,"q":-0.25,"n":12345678901234567890,"s":"[[[[1e400"}"#,
            r#""a \" [[[ string""#,
            "[1,2,{\"a\":[true,null]}]",
            "-0",
            "1E-400",
        ] {
            assert_eq!(check_portable(fine), Ok(()), "{fine}");
        }
    }

    /// The string scan against the obvious byte-by-byte one, with a quote, an escape and
    /// multi-byte characters at every offset around the eight-byte words.
    #[test]
    fn string_ends_are_found_at_every_offset() {
        fn reference(bytes: &[u8], mut i: usize) -> usize {
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => return i,
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            bytes.len()
        }
        let pieces: [&[u8]; 6] = [b"\"", b"\\\"", b"\\\\", "é€".as_bytes(), b"\x7f\xff", b"\\"];
        for len in 0..40 {
            for at in 0..=len {
                for piece in pieces {
                    let mut bytes = vec![b'x'; len];
                    bytes.splice(at..at, piece.iter().copied());
                    for from in [0, 1, 7, 8, 9] {
                        assert_eq!(
                            string_end(&bytes, from),
                            reference(&bytes, from),
                            "{:?} from {from}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                }
            }
        }
        // A JSON text's strings, found through the whole check.
        let json = r#"{"a\"b":"\\","c":"xxxxxxxxxxxxxxxxxxxxxxxx\"[[[[1e400\\","d":1e400}"#;
        assert!(check_portable(json).unwrap_err().contains("1e400"));
    }

    /// The quick pass never says yes where the exact walk says no, and says yes for the
    /// common payloads; too many openers in a short text still go to the walk and are refused.
    #[test]
    fn the_quick_pass_agrees_with_the_walk() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_DATA_DEPTH + 1),
            "]".repeat(MAX_DATA_DEPTH + 1)
        );
        assert!(!plainly_portable(deep.as_bytes()));
        assert!(check_portable(&deep).unwrap_err().contains("nested"));
        let samples = [
            r#"{"type":"PriceUpdate","input_mint":"So11111111111111111111111111111111111111112","price":187.4213,"volume":1200}"#,
            r#"{"i":0,"s":1234567,"t":12345678901,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            r#"[1.5e3,2]"#,
            r#"{"hex":"1e400"}"#,
            r#"{"n":12345678901234567890123}"#,
            r#"[-0.000000000000000000000000001,1E-400]"#,
            "1e400",
            "[[[[[[[[[[1]]]]]]]]]]",
            r#""e""#,
        ];
        for sample in samples {
            if plainly_portable(sample.as_bytes()) {
                assert_eq!(walk(sample), Ok(()), "{sample}");
            }
        }
        assert!(plainly_portable(samples[0].as_bytes()));
        assert!(plainly_portable(samples[1].as_bytes()));
        assert!(!plainly_portable(samples[2].as_bytes()));
        assert!(!plainly_portable(samples[3].as_bytes()));
        assert!(!plainly_portable(b"1e400"));
    }
}
