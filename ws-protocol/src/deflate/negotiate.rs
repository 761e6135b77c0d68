//! The permessage-deflate offer and answer in `Sec-WebSocket-Extensions` (RFC 7692,
//! section 7.1).

/// The extension's name.
const NAME: &str = "permessage-deflate";

/// What a client of this toolkit offers: no context takeover either way, so that each
/// message stands alone.
pub const CLIENT_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to the first permessage-deflate offer among a client's
/// `Sec-WebSocket-Extensions` header values that this toolkit can accept, or `None` if there
/// is none (the connection then goes uncompressed).
///
/// The answer always asks for no context takeover both ways. An offer is declined (the next
/// one is tried) if it repeats a parameter, has one RFC 7692 does not define or a value out
/// of range, or limits the server's window below 2^15 (`server_max_window_bits` under 15:
/// one compressed form of a publication serves every subscriber).
///
/// ```
/// use ws_protocol::deflate::agree;
///
/// // What browsers and Python's websockets offer.
/// assert_eq!(
///     agree(["permessage-deflate; client_max_window_bits"]).as_deref(),
///     Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
/// );
/// assert_eq!(agree(["permessage-deflate; server_max_window_bits=10"]), None);
/// assert_eq!(agree(["x-webkit-deflate-frame"]), None);
/// ```
pub fn agree<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    offers
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(answer)
}

/// Whether a server's answer (its `Sec-WebSocket-Extensions`, `None` if absent) agrees to
/// [`CLIENT_OFFER`]: `Some(true)` for permessage-deflate with no context takeover from the
/// server, `Some(false)` for no extension, `None` for an answer the client must fail the
/// connection on (an extension it did not offer, or parameters outside its offer).
pub fn accepts_response(answer: Option<&str>) -> Option<bool> {
    let Some(answer) = answer else {
        return Some(false);
    };
    let mut extensions = split_outside_quotes(answer, ',');
    let extension = extensions.next()?;
    if extensions.next().is_some() {
        return None;
    }
    let mut parts = split_outside_quotes(extension, ';');
    if parts.next()?.trim() != NAME {
        return None;
    }
    let mut server_no_context_takeover = false;
    for param in parts {
        let (name, value) = parameter(param)?;
        match (name, value) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits" | "client_max_window_bits", Some(bits))
                if window_bits(bits).is_some() => {}
            _ => return None,
        }
    }
    // The client offered server_no_context_takeover, and inflates each message on its own.
    server_no_context_takeover.then_some(true)
}

/// The answer to one offered extension, if it is permessage-deflate and acceptable.
fn answer(offer: &str) -> Option<String> {
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
    let mut response = String::from(CLIENT_OFFER);
    match server_window {
        None => {}
        Some(15) => response.push_str("; server_max_window_bits=15"),
        Some(_) => return None,
    }
    Some(response)
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
        // Chrome, Firefox, Python's websockets.
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits=12; server_no_context_takeover",
            "permessage-deflate;client_no_context_takeover",
        ] {
            assert_eq!(agree([offer]).as_deref(), Some(CLIENT_OFFER), "{offer}");
        }
        assert_eq!(
            agree(["permessage-deflate; server_max_window_bits=\"15\""]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"
            )
        );
        for declined in [
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits",
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
                "foo; a=\"x,y\", permessage-deflate; server_max_window_bits=10",
                "permessage-deflate",
            ])
            .as_deref(),
            Some(CLIENT_OFFER)
        );
    }

    #[test]
    fn a_client_reads_the_answer() {
        assert_eq!(accepts_response(None), Some(false));
        assert_eq!(accepts_response(Some(CLIENT_OFFER)), Some(true));
        assert_eq!(
            accepts_response(Some(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"
            )),
            Some(true)
        );
        for refused in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; mystery",
            "x-other",
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
        ] {
            assert_eq!(accepts_response(Some(refused)), None, "{refused}");
        }
    }
}
