//! What a request to upgrade must hold, checked before tungstenite reads it, so that every
//! refused upgrade gets an HTTP status that names the problem (tungstenite closes the socket
//! without a word on a malformed request): 400 for a malformed request or key, 405 for a
//! method other than GET, 426 for a plain HTTP request or a WebSocket version other than 13,
//! 431 for a head too large.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The largest request head accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The most header fields accepted.
const MAX_HEADERS: usize = 64;

/// Why an upgrade request is refused, as the HTTP response that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The status line's code and reason phrase, such as `426 Upgrade Required`.
    pub(crate) status: &'static str,
    /// Extra header lines, each ending in `\r\n`.
    pub(crate) headers: &'static str,
    /// The body: what was wrong, for a human.
    pub(crate) why: &'static str,
}

impl Refusal {
    const fn new(status: &'static str, headers: &'static str, why: &'static str) -> Self {
        Self {
            status,
            headers,
            why,
        }
    }

    /// Writes the response; the caller then closes the connection.
    pub(crate) async fn write<W: AsyncWrite + Unpin>(&self, stream: &mut W) {
        let response = format!(
            "HTTP/1.1 {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n{}\r\n{}",
            self.status,
            self.why.len(),
            self.headers,
            self.why
        );
        // The client may already be gone; there is nothing more to do either way.
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }
}

/// Checks the request head `head` (the bytes read so far; complete when it holds an empty
/// line). `Ok` means tungstenite can take it from here.
pub(crate) fn check(head: &[u8]) -> Result<(), Refusal> {
    const TOO_LARGE: Refusal = Refusal::new(
        "431 Request Header Fields Too Large",
        "",
        "the upgrade request's head is too large (8 KiB, 64 fields at most)\n",
    );
    const MALFORMED: Refusal = Refusal::new("400 Bad Request", "", "malformed HTTP request\n");
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => return Err(TOO_LARGE),
        // The stream ended (or the time ran out) before the head did.
        Ok(httparse::Status::Partial) => return Err(MALFORMED),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) => return Err(MALFORMED),
    }
    if request.method != Some("GET") {
        return Err(Refusal::new(
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "a WebSocket upgrade is a GET request\n",
        ));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(
            "505 HTTP Version Not Supported",
            "",
            "a WebSocket upgrade needs HTTP/1.1\n",
        ));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(
            "426 Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "this port speaks WebSocket only: send Upgrade: websocket and Connection: Upgrade\n",
        ));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(Refusal::new(
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "unsupported WebSocket version: this hub speaks version 13 (RFC 6455)\n",
        ));
    }
    let key_ok = header("sec-websocket-key").is_some_and(|key| {
        key.len() == 24
            && key.ends_with("==")
            && key[..22]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if !key_ok {
        return Err(Refusal::new(
            "400 Bad Request",
            "",
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)\n",
        ));
    }
    Ok(())
}

/// The response to a connection closed at once because too many are upgrading; written
/// without reading the request, in one non-blocking attempt.
pub(crate) const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Retry-After: 1\r\nContent-Length: 0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut text = lines.join("\r\n");
        text.push_str("\r\n\r\n");
        text.into_bytes()
    }

    const GOOD: [&str; 6] = [
        "GET /?token=x HTTP/1.1",
        "Host: hub",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    fn status(lines: &[&str]) -> Option<&'static str> {
        check(&request(lines)).err().map(|r| r.status)
    }

    #[test]
    fn each_malformed_upgrade_gets_the_status_that_names_it() {
        assert_eq!(status(&GOOD), None);
        let with = |i: usize, line: &'static str| {
            let mut lines = GOOD.to_vec();
            lines[i] = line;
            lines
        };
        assert_eq!(
            status(&with(0, "POST / HTTP/1.1")),
            Some("405 Method Not Allowed")
        );
        assert_eq!(
            status(&with(2, "Upgrade: h2c")),
            Some("426 Upgrade Required")
        );
        assert_eq!(
            status(&with(3, "Connection: close")),
            Some("426 Upgrade Required")
        );
        assert_eq!(
            status(&with(5, "Sec-WebSocket-Version: 8")),
            Some("426 Upgrade Required")
        );
        assert_eq!(
            status(&with(4, "Sec-WebSocket-Key: short")),
            Some("400 Bad Request")
        );
        assert_eq!(status(&["GARBAGE"]), Some("400 Bad Request"));
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap_err().status,
            "400 Bad Request",
            "a head that never ends"
        );
        let many: Vec<String> = (0..100).map(|i| format!("X-{i}: y")).collect();
        let mut lines: Vec<&str> = GOOD.to_vec();
        lines.extend(many.iter().map(String::as_str));
        assert_eq!(status(&lines), Some("431 Request Header Fields Too Large"));
        let huge = vec![b'a'; MAX_HEAD];
        assert_eq!(
            check(&[b"GET / HTTP/1.1\r\nX: ".as_slice(), &huge].concat())
                .unwrap_err()
                .status,
            "431 Request Header Fields Too Large"
        );
    }
}
