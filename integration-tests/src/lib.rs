//! Helpers for the cross-crate tests: a hub on `127.0.0.1:0` and a plain tokio-tungstenite
//! client that speaks the protocol frame by frame, so the hub is tested apart from our client.

pub mod deflate_client;
pub mod proxy;
pub mod proxy_servers;
pub mod redis;
pub mod redis_cluster;
pub mod self_signed;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ws_protocol::WsMessage;
use ws_server::{ServerBuilder, WebSocketServer};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts a hub on `127.0.0.1:0` with `builder`'s settings.
///
/// # Errors
/// If the port cannot be bound.
pub async fn spawn_server(builder: ServerBuilder) -> Result<WebSocketServer> {
    Ok(builder.bind("127.0.0.1:0").await?)
}

/// Awaits `fut` for at most [`WAIT`].
///
/// # Errors
/// If it takes longer, naming `what`.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// Polls `condition` every few milliseconds until it holds, for at most [`WAIT`].
///
/// # Errors
/// If it does not hold in time, naming `what`.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A plain WebSocket client that speaks the protocol frame by frame.
#[derive(Debug)]
pub struct RawClient {
    /// The underlying socket, for tests that need protocol-level frames.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `connection_id` of the `Connected` frame.
    pub connection_id: u64,
}

impl RawClient {
    /// Connects to the hub and reads the `Connected` frame.
    ///
    /// # Errors
    /// If the connection fails or the first frame is not `Connected`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let (ws, _) = within(
            "connect",
            tokio_tungstenite::connect_async(format!("ws://{addr}")),
        )
        .await??;
        Self::after_upgrade(ws).await
    }

    /// Connects to `url` (a hub's address with a path or query, such as `?token=…`) and
    /// reads the `Connected` frame.
    ///
    /// # Errors
    /// If the connection fails or the first frame is not `Connected`.
    pub async fn connect_url(url: String) -> Result<Self> {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url)).await??;
        Self::after_upgrade(ws).await
    }

    /// Connects with a small TCP receive buffer, so that a client that stops reading fills
    /// the hub's queue quickly.
    ///
    /// # Errors
    /// If the connection fails or the first frame is not `Connected`.
    pub async fn connect_with_small_receive_buffer(addr: SocketAddr) -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = within(
            "upgrade",
            tokio_tungstenite::client_async(format!("ws://{addr}"), MaybeTlsStream::Plain(stream)),
        )
        .await??;
        Self::after_upgrade(ws).await
    }

    async fn after_upgrade(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Result<Self> {
        let mut client = Self {
            ws,
            connection_id: 0,
        };
        match client.recv().await? {
            WsMessage::Connected { connection_id, .. } => client.connection_id = connection_id,
            other => bail!("first frame was {other:?}, not Connected"),
        }
        Ok(client)
    }

    /// Sends one protocol message.
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn send(&mut self, message: &WsMessage) -> Result<()> {
        self.send_text(&message.to_json()).await
    }

    /// Sends one raw text frame.
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        within("send", self.ws.send(Message::text(text))).await??;
        Ok(())
    }

    /// The next text frame, decoded; skips protocol pings and pongs.
    ///
    /// # Errors
    /// If none arrives in time, the connection closes, or the frame is not a protocol message.
    pub async fn recv(&mut self) -> Result<WsMessage> {
        loop {
            match self.next_frame().await? {
                Message::Text(text) => return Ok(WsMessage::from_json(text.as_str())?),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => bail!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of any kind.
    ///
    /// # Errors
    /// If none arrives in time or the connection ended.
    pub async fn next_frame(&mut self) -> Result<Message> {
        match within("a frame", self.ws.next()).await? {
            Some(frame) => Ok(frame?),
            None => bail!("connection ended"),
        }
    }

    /// Subscribes and waits for `Subscribed`.
    ///
    /// # Errors
    /// If the hub answers anything else.
    pub async fn subscribe(&mut self, channels: &[&str]) -> Result<()> {
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        self.send(&WsMessage::Subscribe {
            rewind: None,
            channels: channels.clone(),
            since: Default::default(),
        })
        .await?;
        match self.recv().await? {
            WsMessage::Subscribed {
                channels: confirmed,
                ..
            } if confirmed == channels => Ok(()),
            other => bail!("expected Subscribed, got {other:?}"),
        }
    }

    /// Publishes on `channel`, which this client follows, and reads the publication back:
    /// the hub still serves it (after something went wrong on another connection).
    ///
    /// # Errors
    /// If the publication does not come back intact.
    pub async fn still_served(&mut self, channel: &str) -> Result<()> {
        let data = r#"{"still":"here"}"#;
        self.publish(channel, data).await?;
        match self.recv().await? {
            WsMessage::Publication { data: got, .. } if got.as_raw().get() == data => Ok(()),
            other => bail!("expected the publication {data} back, got {other:?}"),
        }
    }

    /// Publishes `data` (JSON text) on `channel`.
    ///
    /// # Errors
    /// If the socket fails or `data` is not JSON.
    pub async fn publish(&mut self, channel: &str, data: &str) -> Result<()> {
        let data = ws_protocol::Payload::from_json(data)?;
        self.send(&WsMessage::Publish {
            id: None,
            key: None,
            channel: channel.to_owned(),
            data,
            ack_range: false,
        })
        .await
    }

    /// Reads until the hub's close frame and returns it, skipping other frames.
    ///
    /// # Errors
    /// If the connection ends without a close frame or nothing arrives in time.
    pub async fn close_frame(&mut self) -> Result<Option<CloseFrame>> {
        loop {
            match self.next_frame().await? {
                Message::Close(frame) => return Ok(frame),
                _ => continue,
            }
        }
    }
}

/// Seconds since the Unix epoch, for JWT `exp` and `nbf` claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `claims` signed with HS256 under `secret`, as a hub configured with that secret accepts.
///
/// # Panics
/// If the claims cannot be encoded (they are JSON already, so never).
#[allow(clippy::expect_used)] // a test helper: the claims are JSON already
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encodable")
}

/// The README's Rust samples, compiled as doctests so that they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// `GET path` on `addr` over HTTP/1.1: the whole response, head and body.
///
/// # Errors
/// If the connection or the exchange fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
