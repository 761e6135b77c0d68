//! The permessage-deflate offer and answer in `Sec-WebSocket-Extensions` (RFC 7692,
//! section 7.1).

/// The extension's name.
const NAME: &str = "permessage-deflate";

/// What a client of this toolkit offers: permessage-deflate, with no context takeover and
/// any window for what it sends (it sends its messages uncompressed, so it can agree to
/// whatever the server asks of its compressor).
pub const CLIENT_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; client_max_window_bits";

/// The hub's answer, before any `server_max_window_bits`: no context takeover either way.
const SERVER_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What a server agreed to ([`agree`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The `Sec-WebSocket-Extensions` answer.
    pub answer: String,
    /// The largest window the server may use, as a power of two (8 to 15; 15 unless the
    /// client asked for less). Messages compressed on their own use no more window than
    /// their length, so a message of at most `1 << server_max_window_bits` bytes may go
    /// compressed; a longer one goes uncompressed.
    pub server_max_window_bits: u8,
}

impl Agreement {
    /// Whether a message of `len` bytes may go compressed under this agreement.
    pub fn may_compress(&self, len: usize) -> bool {
        len <= 1 << self.server_max_window_bits
    }
}

/// The answer to the first permessage-deflate offer among a client's
/// `Sec-WebSocket-Extensions` header values that this toolkit can accept, or `None` if there
/// is none (the connection then goes uncompressed).
///
/// The answer always asks for no context takeover both ways. An offer is declined (the next
/// one is tried) if it repeats a parameter, or has one RFC 7692 does not define or a value
/// out of range.
///
/// ```
/// use ws_protocol::deflate::agree;
///
/// // What browsers and Python's websockets offer.
/// let agreed = agree(["permessage-deflate; client_max_window_bits"]).unwrap();
/// assert_eq!(
///     agreed.answer,
///     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
/// );
/// assert_eq!(agreed.server_max_window_bits, 15);
/// assert_eq!(agree(["permessage-deflate; mystery"]), None);
/// assert_eq!(agree(["x-webkit-deflate-frame"]), None);
/// ```
pub fn agree<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    offers
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(answer)
}

/// A server's answer to [`CLIENT_OFFER`], as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No extension: the connection goes uncompressed.
    Uncompressed,
    /// permessage-deflate; `context_takeover` if the server may compress a message with
    /// the window of the ones before (it did not answer `server_no_context_takeover`).
    Deflate {
        /// Whether the inflater must keep its window from one message to the next.
        context_takeover: bool,
    },
    /// An answer the client must fail the connection on: an extension it did not offer, or
    /// parameters RFC 7692 does not allow there.
    Invalid,
}

/// Reads a server's `Sec-WebSocket-Extensions` answer (`None` if absent) to [`CLIENT_OFFER`].
pub fn read_answer(answer: Option<&str>) -> Answer {
    let Some(answer) = answer else {
        return Answer::Uncompressed;
    };
    let mut extensions = split_outside_quotes(answer, ',');
    let (Some(extension), None) = (extensions.next(), extensions.next()) else {
        return Answer::Invalid;
    };
    let mut parts = split_outside_quotes(extension, ';');
    if parts.next().map(str::trim) != Some(NAME) {
        return Answer::Invalid;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut context_takeover = true;
    for param in parts {
        let Some((name, value)) = parameter(param) else {
            return Answer::Invalid;
        };
        if seen.contains(&name) {
            return Answer::Invalid;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => context_takeover = false,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits" | "client_max_window_bits", Some(bits))
                if window_bits(bits).is_some() => {}
            _ => return Answer::Invalid,
        }
    }
    Answer::Deflate { context_takeover }
}

/// The answer to one offered extension, if it is permessage-deflate and acceptable.
fn answer(offer: &str) -> Option<Agreement> {
    let mut parts = split_outside_quotes(offer, ';');
    if parts.next()?.trim() != NAME {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_window = None;
    for param in parts {
        let (name, value) = parameter(param)?;
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => server_window = Some(window_bits(bits)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None,
        }
    }
    let mut answer = String::from(SERVER_ANSWER);
    if let Some(bits) = server_window {
        answer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement {
        answer,
        server_max_window_bits: server_window.unwrap_or(15),
    })
}

/// A parameter's name and value (quotes removed), if well formed.
fn parameter(param: &str) -> Option<(&str, Option<&str>)> {
    let (name, value) = match param.split_once('=') {
        Some((name, value)) => {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (name.trim(), Some(value))
        }
        None => (param.trim(), None),
    };
    (!name.is_empty()).then_some((name, value))
}

/// A window size parameter's value: 8 to 15, digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// `value` split at `separator` where it is not inside double quotes.
fn split_outside_quotes(value: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        for (at, c) in text.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&text[at + c.len_utf8()..]);
                    return Some(&text[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_answered_or_declined_by_the_rfc() {
        // Chrome, Firefox, Python's websockets, and variants.
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits=12; server_no_context_takeover",
            "permessage-deflate;client_no_context_takeover",
        ] {
            let agreed = agree([offer]).unwrap();
            assert_eq!(agreed.answer, SERVER_ANSWER, "{offer}");
            assert_eq!(agreed.server_max_window_bits, 15);
        }
        let small = agree(["permessage-deflate; server_max_window_bits=\"9\""]).unwrap();
        assert_eq!(
            small.answer,
            format!("{SERVER_ANSWER}; server_max_window_bits=9")
        );
        assert!(small.may_compress(512) && !small.may_compress(513));
        for declined in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=0015",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "deflate-frame",
            "",
        ] {
            assert_eq!(agree([declined]), None, "{declined}");
        }
        // The first acceptable of several, across repeated headers and quoted commas.
        assert_eq!(
            agree([
                "foo; a=\"x,y\", permessage-deflate; server_max_window_bits=99",
                "permessage-deflate",
            ])
            .map(|a| a.answer)
            .as_deref(),
            Some(SERVER_ANSWER)
        );
    }

    #[test]
    fn a_client_reads_the_answer() {
        assert_eq!(read_answer(None), Answer::Uncompressed);
        assert_eq!(
            read_answer(Some(SERVER_ANSWER)),
            Answer::Deflate {
                context_takeover: false
            }
        );
        assert_eq!(
            read_answer(Some("permessage-deflate; client_max_window_bits=15")),
            Answer::Deflate {
                context_takeover: true
            }
        );
        for refused in [
            "permessage-deflate; server_no_context_takeover; mystery",
            "x-other",
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
            "permessage-deflate; server_max_window_bits=20",
        ] {
            assert_eq!(read_answer(Some(refused)), Answer::Invalid, "{refused}");
        }
    }
}
