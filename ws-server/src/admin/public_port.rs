//! The HTTP publish API on the public port: with `WS_API_KEY` set, `POST /publish` and
//! `POST /broadcast` are answered there too (over TLS when the port is `wss://`), to requests
//! that carry `Authorization: apikey <key>`. A request without the key, or with another one,
//! gets 401; without `WS_API_KEY` these requests get 403 saying where the API is. Everything
//! else on the port is a WebSocket upgrade as before.
//!
//! Such a request holds one of the pending upgrades' places (`WS_MAX_PENDING_UPGRADES`)
//! while it is answered, and is bounded in time like the admin address's requests.

use tokio::io::{AsyncRead, AsyncWrite};
use ws_protocol::codes;

use super::publish_api::Answer;
use super::{answer_post, read_head, respond_with};
use crate::hub::Hub;

/// The request heads this module answers: a POST to one of the API's routes.
pub(crate) fn is_api_request(head: &[u8]) -> bool {
    ["/publish", "/broadcast"].iter().any(|route| {
        head.strip_prefix(b"POST ")
            .and_then(|rest| rest.strip_prefix(route.as_bytes()))
            .is_some_and(|rest| matches!(rest.first(), Some(b' ' | b'?')))
    })
}

/// Answers the API request on `stream` (its head not yet consumed) and ends the connection.
pub(crate) async fn answer_on_public_port<S>(hub: &Hub, stream: &mut S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = read_head(stream).await?;
    let Some(expected) = hub.config.api_key.as_ref() else {
        let answer = Answer::refused(
            "403 Forbidden",
            codes::FORBIDDEN,
            "the HTTP publish API is on the admin address (WS_ADMIN_ADDR); \
             on this port only when the hub has WS_API_KEY",
        );
        return respond_with(stream, answer.status, "", "application/json", &answer.body).await;
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let parsed = matches!(request.parse(&head), Ok(httparse::Status::Complete(_)));
    let given = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value);
    let authorized = parsed
        && given
            .and_then(|value| strip_scheme(value, b"apikey"))
            .is_some_and(|key| same_key(key, expected.expose().as_bytes()));
    if !authorized {
        let message = if given.is_some() {
            "the API key is not this hub's"
        } else {
            "the HTTP publish API needs Authorization: apikey <WS_API_KEY>"
        };
        let answer = Answer::refused("401 Unauthorized", codes::UNAUTHORIZED, message);
        return respond_with(
            stream,
            answer.status,
            "WWW-Authenticate: apikey\r\n",
            "application/json",
            &answer.body,
        )
        .await;
    }
    let route = request
        .path
        .and_then(|path| path.split('?').next())
        .unwrap_or("");
    let route = route.to_owned();
    answer_post(hub, stream, &head, &route).await
}

/// The credentials of an `Authorization` value with `scheme` (any case), trimmed.
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let value = value.trim_ascii();
    let (given, rest) = value.split_at_checked(scheme.len())?;
    (given.eq_ignore_ascii_case(scheme) && rest.first() == Some(&b' ')).then(|| rest.trim_ascii())
}

/// Compares keys in time that does not depend on where they differ.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differs, (a, b)| differs | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_the_api_routes_are_api_requests() {
        assert!(is_api_request(b"POST /publish HTTP/1.1\r\n"));
        assert!(is_api_request(b"POST /broadcast?x=1 HTTP/1.1\r\n"));
        assert!(!is_api_request(b"POST /publisher HTTP/1.1\r\n"));
        assert!(!is_api_request(b"GET /publish HTTP/1.1\r\n"));
        assert!(!is_api_request(b"POST / HTTP/1.1\r\n"));
    }

    #[test]
    fn the_key_is_read_from_its_scheme_and_compared_whole() {
        assert_eq!(strip_scheme(b"apikey  k1 ", b"apikey"), Some(&b"k1"[..]));
        assert_eq!(strip_scheme(b"ApiKey k1", b"apikey"), Some(&b"k1"[..]));
        assert_eq!(strip_scheme(b"Bearer k1", b"apikey"), None);
        assert_eq!(strip_scheme(b"apikeyk1", b"apikey"), None);
        assert_eq!(strip_scheme(b"api", b"apikey"), None);
        assert!(same_key(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_key(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!same_key(b"0123456789abcde", b"0123456789abcdef"));
    }
}
