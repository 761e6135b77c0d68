//! The operators' HTTP surface on its own address (`WS_ADMIN_ADDR`), apart from the public
//! WebSocket port (which may be TLS): `GET /health` (200 while accepting, 503 while
//! draining or while the hub broker, Redis, is unreachable), `GET /metrics` (Prometheus text), and `GET /` a status page that updates
//! itself from `GET /status.json`; and the HTTP publish API, `POST /publish` and
//! `POST /broadcast` (`publish_api.rs`), also answered on the public port with `WS_API_KEY`
//! (`public_port.rs`). A deliberately small HTTP/1.1 responder: one request
//! per connection, head bounded in size and time, a body only with `Content-Length` and at
//! most [`MAX_BODY`] bytes of it, at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed at once), and a pause after an accept error (such as running out of file
//! descriptors) instead of spinning.

mod public_port;
mod publish_api;

pub(crate) use public_port::{answer_on_public_port, is_api_request};

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::hub::Hub;

/// The status page: live numbers from `/status.json`, refreshed every second.
const STATUS_PAGE: &str = include_str!("status.html");

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request, and then to take the response.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body (`POST /publish`, a batch of publications).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Admin connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// How long the accept loop pauses after an accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves until the hub's token is cancelled.
pub(crate) async fn serve(hub: Arc<Hub>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "admin HTTP (health, metrics) listening");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = hub.token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "admin accept failed; pausing");
                tokio::select! {
                    () = hub.token.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many admin connections; closed");
            let _ = stream.try_write(crate::upgrade_request::BUSY);
            continue;
        };
        let request_hub = hub.clone();
        // Bounded by READ_TIMEOUT twice; ends on its own.
        hub.spawn(async move {
            if let Err(error) = answer(&request_hub, stream).await {
                debug!(%peer, %error, "admin request failed");
            }
            drop(slot);
        });
    }
}

async fn answer(hub: &Hub, mut stream: TcpStream) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let line = String::from_utf8_lossy(&head).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let route = path.split('?').next().unwrap_or("");
    if method == "POST" {
        return answer_post(hub, &mut stream, &head, route).await;
    }
    let (status, content_type, body) = match (method, route) {
        ("GET", "/health") if hub.is_draining() => (
            "503 Service Unavailable",
            "text/plain",
            "draining\n".to_owned(),
        ),
        ("GET", "/health") if !hub.broker.status().up => (
            "503 Service Unavailable",
            "text/plain",
            "redis unavailable\n".to_owned(),
        ),
        ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", STATUS_PAGE.to_owned()),
        ("GET", "/status.json") => ("200 OK", "application/json", hub.status_json()),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", hub.render_metrics()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /, /health or /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET, and POST /publish or /broadcast\n".to_owned(),
        ),
    };
    respond(&mut stream, status, content_type, &body).await
}

/// Reads a request head: up to its empty line, at most [`MAX_HEAD`] bytes, within
/// [`READ_TIMEOUT`]. It may hold the start of the body.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(head)
}

/// Answers a POST whose head is `head` to `route`: the publish API.
async fn answer_post<S: AsyncRead + AsyncWrite + Unpin>(
    hub: &Hub,
    stream: &mut S,
    head: &[u8],
    route: &str,
) -> std::io::Result<()> {
    let answer = match request_body(stream, head).await? {
        Ok(body) => match route {
            "/publish" => publish_api::publish(hub, &body).await,
            "/broadcast" => publish_api::broadcast(hub, &body),
            _ => publish_api::Answer::refused(
                "404 Not Found",
                ws_protocol::codes::BAD_REQUEST,
                "not found: POST /publish or /broadcast",
            ),
        },
        Err(refused) => refused,
    };
    respond(stream, answer.status, "application/json", &answer.body).await
}

/// Writes the response and ends the connection.
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_with(stream, status, "", content_type, body).await
}

/// Writes the response with `headers` (lines each ending in `\r\n`) and ends the connection.
async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    headers: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(READ_TIMEOUT, write)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// The body of a POST whose head is in `head` (with whatever of the body came with it): up to
/// its `Content-Length`, at most [`MAX_BODY`] bytes, within [`READ_TIMEOUT`]. `Err` is the
/// refusal to send instead (no length: 411; too long: 413; malformed head: 400).
async fn request_body<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    head: &[u8],
) -> std::io::Result<Result<Vec<u8>, publish_api::Answer>> {
    let refuse =
        |status, code, message: &str| Ok(Err(publish_api::Answer::refused(status, code, message)));
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(end)) = request.parse(head) else {
        return refuse(
            "400 Bad Request",
            ws_protocol::codes::BAD_REQUEST,
            "a malformed request head",
        );
    };
    let length = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let Some(length) = length else {
        return refuse(
            "411 Length Required",
            ws_protocol::codes::BAD_REQUEST,
            "a POST needs a Content-Length (chunked bodies are not read)",
        );
    };
    if length > MAX_BODY {
        let message = format!("a body of {length} bytes: the limit is {MAX_BODY}");
        return refuse(
            "413 Payload Too Large",
            ws_protocol::codes::MESSAGE_TOO_LARGE,
            &message,
        );
    }
    let expects_continue = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
    });
    let mut body = head[end..].to_vec();
    body.truncate(length);
    if expects_continue && body.len() < length {
        // curl asks before sending a body over 1 KiB.
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let read = async {
        let mut chunk = vec![0u8; 16 * 1024];
        while body.len() < length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            let take = n.min(length - body.len());
            body.extend_from_slice(&chunk[..take]);
        }
        Ok(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(Ok(body))
}
