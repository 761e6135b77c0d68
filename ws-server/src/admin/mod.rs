//! The operators' HTTP surface on its own address (`WS_ADMIN_ADDR`), apart from the public
//! WebSocket port (which may be TLS): `GET /health` (200 while accepting, 503 while
//! draining or while the hub broker, Redis, is unreachable), `GET /metrics` (Prometheus text), and `GET /` a status page that updates
//! itself from `GET /status.json`. A deliberately small HTTP/1.1 responder:
//! one GET per connection, head bounded in size and time, at most [`MAX_CONNECTIONS`] at
//! once (more are closed at once), and a pause after an accept error (such as running out of
//! file descriptors) instead of spinning.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
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
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
