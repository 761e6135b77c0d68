//! [`plain_portable_len`]: one pass that proves the JSON value at the start of a text both
//! valid and portable, for the common shape of a payload, so that the hub can forward a
//! `Publish`'s data without serde_json's validation and the separate portability check.
//!
//! It takes a subset of what those two accept: any nesting of objects and arrays up to
//! [`MAX_DATA_DEPTH`], strings whose escapes are the two-character ones (`\"`, `\\`, `\/`,
//! `\b`, `\f`, `\n`, `\r`, `\t`), numbers without an exponent of at most 308 characters (so
//! always finite as a 64-bit float: an overflow needs 309 digits before the point), `true`, `false`, `null`, and whitespace between tokens.
//! Anything else (a `\u` escape, an exponent, a longer number, deeper nesting, or anything
//! that is not JSON) gets `None`, and the caller falls back to the exact checks, which
//! decide; so this pass can make a frame cheaper, never change its fate.

use crate::payload::{MAX_DATA_DEPTH, SHORTER_THAN_AN_OVERFLOW};
use crate::swar::{below, repeated, zero_bytes};

/// The length of the JSON value at the very start of `text` (no whitespace before it) if it
/// is valid, portable and of the plain shape described in the module documentation; the
/// value ends there, without the whitespace that may follow it.
pub(crate) fn plain_portable_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // Bit `d` is set when the container at depth `d + 1` is an object: one bit per level, so
    // a `u64` holds exactly the 64 levels a payload may nest.
    const _: () = assert!(MAX_DATA_DEPTH == 64);
    let mut objects = 0u64;
    let mut depth = 0usize;
    let mut i = 0;
    'value: loop {
        // A value starts at `i`.
        match *bytes.get(i)? {
            opener @ (b'{' | b'[') => {
                if depth == MAX_DATA_DEPTH {
                    return None;
                }
                let object = opener == b'{';
                if object {
                    objects |= 1 << depth;
                } else {
                    objects &= !(1 << depth);
                }
                depth += 1;
                i = skip_whitespace(bytes, i + 1);
                let closer = if object { b'}' } else { b']' };
                if *bytes.get(i)? == closer {
                    i += 1;
                    depth -= 1;
                } else {
                    if object {
                        i = member_value(bytes, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = string_end(bytes, i + 1)? + 1,
            b'-' | b'0'..=b'9' => i = number_end(bytes, i)?,
            b't' => i = literal_end(bytes, i, b"true")?,
            b'f' => i = literal_end(bytes, i, b"false")?,
            b'n' => i = literal_end(bytes, i, b"null")?,
            _ => return None,
        }
        // A value ended at `i`: what follows it in its container.
        loop {
            if depth == 0 {
                return Some(i);
            }
            let object = objects >> (depth - 1) & 1 == 1;
            let after = skip_whitespace(bytes, i);
            match *bytes.get(after)? {
                b',' => {
                    i = skip_whitespace(bytes, after + 1);
                    if object {
                        i = member_value(bytes, i)?;
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i = after + 1;
            depth -= 1;
        }
    }
}

/// Where the value of the object member whose key starts at `i` starts.
fn member_value(bytes: &[u8], i: usize) -> Option<usize> {
    if *bytes.get(i)? != b'"' {
        return None;
    }
    let colon = skip_whitespace(bytes, string_end(bytes, i + 1)? + 1);
    if *bytes.get(colon)? != b':' {
        return None;
    }
    Some(skip_whitespace(bytes, colon + 1))
}

/// The first index at or after `i` that is not JSON whitespace.
fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(i) {
        i += 1;
    }
    i
}

/// The index of the quote that ends the string whose content starts at `i`, if the string
/// ends and holds no control character and only two-character escapes. Eight bytes at a
/// time: strings are most of a payload's bytes.
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        while let Some(word) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            let word = u64::from_le_bytes(*word);
            let found = zero_bytes(word ^ repeated(b'"'))
                | zero_bytes(word ^ repeated(b'\\'))
                | below(word, 0x20);
            if found != 0 {
                // The lowest flagged byte is always a real match (a false flag can only sit
                // above a real one), and little-endian puts the first byte lowest.
                i += (found.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match *bytes.get(i)? {
            b'"' => return Some(i),
            b'\\' => match *bytes.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// Where the number starting at `i` ends, if it is a JSON number without an exponent of at
/// most [`SHORTER_THAN_AN_OVERFLOW`] characters: finite as a 64-bit float (`f64::MAX` has 309
/// digits before its point), as the exact check would find.
fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    match *bytes.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits_end(bytes, i + 1),
        _ => return None,
    }
    if bytes.get(i) == Some(&b'.') {
        let fraction = i + 1;
        i = digits_end(bytes, fraction);
        if i == fraction {
            return None;
        }
    }
    match bytes.get(i) {
        // An exponent, or a digit after a leading zero: the exact checks decide.
        Some(b'e' | b'E' | b'0'..=b'9') => None,
        _ => (i - start <= SHORTER_THAN_AN_OVERFLOW).then_some(i),
    }
}

/// The first index at or after `i` that is not an ASCII digit.
fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Where `literal` ends if `bytes` holds it at `i`.
fn literal_end(bytes: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    let end = i + literal.len();
    (bytes.get(i..end)? == literal).then_some(end)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::*;
    use crate::payload::check_portable;

    /// What the exact checks say: the length of the valid value at the start of `text`, if
    /// it is valid and portable.
    fn exact(text: &str) -> Option<usize> {
        let mut reader = serde_json::Deserializer::from_str(text);
        let value = <&RawValue>::deserialize(&mut reader).ok()?;
        if !std::ptr::eq(value.get().as_ptr(), text.as_ptr()) {
            return None;
        }
        check_portable(value.get()).ok()?;
        Some(value.get().len())
    }

    fn agrees(text: &str) {
        if let Some(len) = plain_portable_len(text) {
            assert_eq!(
                exact(text),
                Some(len),
                "accepted what the exact checks refuse: {text:?}"
            );
        }
    }

    #[test]
    fn takes_the_common_shapes() {
        for text in [
            r#"{"px":1.5,"s":"a\"b","n":[1,{"x":null}],"t":true,"f":false}"#,
            r#"{"type":"PriceUpdate","input_mint":"So1111","price":187.4213,"volume":1200}"#,
            "[]",
            "{}",
            r#"[ 1 , -0.5 , "é" , { "a" : [ ] } ]"#,
            "0",
            "-0",
            "123456789012345",
            "1764662400123456789",
            "-0.000000000000000000000001",
            "\"a\\/b\\\\c\\n\\t\\r\\b\\f\"",
            "null",
        ] {
            assert_eq!(plain_portable_len(text), Some(text.len()), "{text}");
            assert_eq!(exact(text), Some(text.len()), "{text}");
        }
        // The value ends where it ends, whatever follows.
        assert_eq!(plain_portable_len(r#"{"a":1},"id":3}"#), Some(7));
        assert_eq!(plain_portable_len("[1] "), Some(3));
        assert_eq!(plain_portable_len("12}"), Some(2));
    }

    #[test]
    fn leaves_the_rest_to_the_exact_checks() {
        for text in [
            "",
            " 1",
            "01",
            "1.",
            ".5",
            "-",
            "1e5",
            "1E-5",
            "\"\\u0041\"",
            "\"\\x\"",
            "\"a\u{1}b\"",
            "\"unterminated",
            "[1,]",
            "{\"a\"1}",
            "{\"a\":1,}",
            "{1:2}",
            "[1}",
            "{\"a\":1]",
            "tru",
            "nul",
            "[",
            "{\"a\":",
            "+1",
            "NaN",
        ] {
            assert_eq!(plain_portable_len(text), None, "{text:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(plain_portable_len(&deep(64)), Some(128));
        assert_eq!(plain_portable_len(&deep(65)), None);
        assert!(exact(&deep(65)).is_none());
        // The longest plain number is finite; one digit more is left to the exact check,
        // which refuses it (an overflow).
        let longest = "9".repeat(SHORTER_THAN_AN_OVERFLOW);
        assert_eq!(plain_portable_len(&longest), Some(longest.len()));
        assert_eq!(exact(&longest), Some(longest.len()));
        let overflow = "9".repeat(SHORTER_THAN_AN_OVERFLOW + 1);
        assert_eq!(plain_portable_len(&overflow), None);
        assert!(exact(&overflow).is_none());
    }

    #[test]
    fn never_accepts_what_the_exact_checks_refuse() {
        // Random texts from JSON's own alphabet, most of them broken somewhere, and mutations
        // of valid payloads: whatever the quick pass takes, the exact checks take with the
        // same length.
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", ",", ":", "\"", "\"a\"", "\"k\":", "1", "0", "-", ".", "5", "e",
            "E", "+", "true", "false", "null", " ", "\n", "\\", "\\\"", "\\n", "\\u00e9", "é",
            "\u{1}", "x", "12345678", "0.25",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200_000 {
            let pieces = rng.usize(1..16);
            let text: String = (0..pieces)
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            agrees(&text);
        }
        let base = r#"{"price":187.4213,"volume":1200,"book":[[1.5,2],[1.25,-3]],"s":"a\"b\\c","ok":true,"none":null}"#;
        for _ in 0..100_000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, b"{}[],:\"\\-.0e9 tfn"[rng.usize(..17)]),
                    _ => bytes[at] = b"{}[],:\"\\-.0e9 tfn"[rng.usize(..17)],
                }
            }
            if let Ok(text) = String::from_utf8(bytes) {
                agrees(&text);
            }
        }
    }
}
