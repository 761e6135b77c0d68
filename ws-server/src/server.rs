//! [`WebSocketServer`]: the hub's handle: publish, broadcast, receive, count, shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::info;
use ws_protocol::{Payload, WebSocketConfig, is_valid_channel_name as is_valid_name};

use crate::accept;
use crate::channel::Published;
use crate::connections::ConnectionId;
use crate::error::{Result, ServerError};
use crate::frame::Frame;
use crate::hub::Hub;
use crate::incoming::Incoming;
use crate::outbox::Outgoing;
use crate::requests::Requests;

/// The fan-out hub.
///
/// Cheap to clone; every clone controls the same server. The server runs until
/// [`shutdown`](Self::shutdown) is called or the last clone is dropped.
///
/// ```no_run
/// use ws_server::WebSocketServer;
///
/// # async fn demo() -> Result<(), ws_server::ServerError> {
/// let server = WebSocketServer::bind("127.0.0.1:8080").await?;
/// server.publish("prices:SOL-USDC", &serde_json::json!({ "price": 101.5 })).await?;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebSocketServer {
    hub: Arc<Hub>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// Stops the server when the last handle is dropped.
    _guard: Arc<StopOnDrop>,
}

/// Stops accepting and closes every connection when dropped.
struct StopOnDrop(Arc<Hub>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.token.cancel();
        self.0.connections.close_all();
    }
}

impl std::fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl WebSocketServer {
    /// Starts serving `hub` on `listener` (and its admin endpoint on `admin`, connections
    /// over TLS with `tls`). Must be called within a Tokio runtime.
    pub(crate) fn start(
        hub: Hub,
        listener: TcpListener,
        admin: Option<TcpListener>,
        tls: Option<TlsAcceptor>,
    ) -> Result<Self> {
        let local_addr = listener.local_addr()?;
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let hub = Arc::new(hub);
        hub.start_background();
        if let Some(admin) = admin {
            hub.spawn(crate::admin::serve(hub.clone(), admin));
        }
        let secure = tls.is_some();
        hub.spawn(accept::accept_loop(hub.clone(), listener, tls));
        info!(address = %local_addr, tls = secure, "hub listening");
        if hub.config.api_key.is_some() {
            info!(
                address = %local_addr,
                "HTTP publish API (POST /publish, /broadcast) on the public port, with WS_API_KEY"
            );
        }
        Ok(Self {
            _guard: Arc::new(StopOnDrop(hub.clone())),
            hub,
            local_addr,
            admin_addr,
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /health` and `GET /metrics` are served (`WS_ADMIN_ADDR`), if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &WebSocketConfig {
        &self.hub.config
    }

    /// Sends `message` as it is (not wrapped) to every open connection. It is serialized once
    /// and the same bytes are queued to each connection without waiting. Returns how many
    /// connections accepted it (a connection being cut as a slow consumer does not).
    ///
    /// # Errors
    /// [`ServerError::Encode`] if `message` cannot be serialized; nothing was sent.
    pub fn broadcast<T: Serialize + ?Sized>(&self, message: &T) -> Result<usize> {
        let item = Outgoing::direct(Frame::text(&serde_json::to_string(message)?));
        Ok(self.hub.connections.broadcast(&item))
    }

    /// Publishes `data` on `channel`: every subscriber receives
    /// `{"type":"Publication","channel":..,"seq":..,"data":..}`, encoded once for all of them.
    ///
    /// With the embedded broker it is queued to every subscriber before this returns; with
    /// Redis (`WS_REDIS_URL`) it returns once Redis has sequenced and kept it, and every hub
    /// with subscribers, this one included, delivers it as it reads it back.
    ///
    /// # Errors
    /// [`ServerError::Encode`] if `data` cannot be serialized, [`ServerError::InvalidChannel`]
    /// if the channel name is empty or too long, [`ServerError::Broker`] if Redis cannot be
    /// reached; nothing was published.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Published> {
        if !is_valid_name(channel) {
            return Err(ServerError::InvalidChannel(channel.to_owned()));
        }
        let payload = Payload::from_value(data)?;
        Ok(self.hub.publish(channel, payload.as_str(), None).await?)
    }

    /// Publishes like [`publish`](Self::publish), at most once per `key` on `channel` within
    /// `WS_IDEMPOTENCY_WINDOW` (on every hub, with Redis): publishing again with a key already
    /// used returns the first publication's `seq` with
    /// [`duplicate`](Published::duplicate) set, and publishes nothing. A data utility that
    /// retries after an error or a restart cannot publish twice.
    ///
    /// # Errors
    /// As [`publish`](Self::publish); also [`ServerError::Broker`] if the key is empty or
    /// longer than 128 bytes, or if `WS_IDEMPOTENCY_MAX_KEYS` keys are held.
    pub async fn publish_with_key<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        key: &str,
        data: &T,
    ) -> Result<Published> {
        if !is_valid_name(channel) {
            return Err(ServerError::InvalidChannel(channel.to_owned()));
        }
        if key.is_empty() || key.len() > ws_protocol::MAX_IDEMPOTENCY_KEY_LEN {
            return Err(ServerError::Broker(crate::BrokerError::Unavailable(
                format!(
                    "an idempotency key must be 1 to {} bytes, not {}",
                    ws_protocol::MAX_IDEMPOTENCY_KEY_LEN,
                    key.len()
                ),
            )));
        }
        let payload = Payload::from_value(data)?;
        Ok(self
            .hub
            .publish(channel, payload.as_str(), Some(key))
            .await?)
    }

    /// Sends `message` as it is to one connection, queued like a broadcast.
    ///
    /// # Errors
    /// [`ServerError::UnknownConnection`] if it is not open (or is being cut as a slow
    /// consumer); [`ServerError::Encode`] if `message` cannot be serialized.
    pub fn send_to<T: Serialize + ?Sized>(&self, id: ConnectionId, message: &T) -> Result<()> {
        let item = Outgoing::direct(Frame::text(&serde_json::to_string(message)?));
        match self.hub.connections.send_to(id, item) {
            Some(true) => Ok(()),
            _ => Err(ServerError::UnknownConnection(id)),
        }
    }

    /// Starts receiving the application frames clients send (`PriceUpdate`,
    /// `AccountUpdate`). A later call replaces the earlier `Incoming`, which then ends.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            rx: self.hub.open_incoming(),
        }
    }

    /// Starts receiving clients' `Request` frames, to answer each with
    /// [`Request::reply`](crate::Request::reply) or [`Request::fail`](crate::Request::fail)
    /// within `WS_REQUEST_TIMEOUT`. A later call replaces the earlier `Requests`, which then
    /// ends. Without one, requests are answered `Error { code: "unsupported" }`.
    pub fn requests(&self) -> Requests {
        Requests {
            rx: self.hub.open_requests(),
        }
    }

    /// How many connections are open (upgraded and not yet closed).
    pub fn connection_count(&self) -> usize {
        self.hub.connections.len()
    }

    /// How many subscriptions (connection × channel) are in effect.
    pub fn subscription_count(&self) -> u64 {
        self.hub
            .metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many channels have at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.hub.channels.len()
    }

    /// Drains before a restart: stops accepting, turns `/health` to 503, then closes the
    /// clients in batches spread over `window` with close 1012 and a reconnect hint
    /// (`WS_RECONNECT_HINT`), so that thousands of clients do not all come back in the same
    /// second; finally [`shutdown`](Self::shutdown). Returns within about `window` + 2 s.
    pub async fn drain(&self, window: Duration) {
        info!(
            ?window,
            connections = self.connection_count(),
            "hub draining"
        );
        self.hub.set_draining();
        self.hub.accepting.cancel();
        let outboxes = self.hub.connections.snapshot();
        let batches = (window.as_millis() / 100).clamp(1, 100) as usize;
        let per_batch = outboxes.len().div_ceil(batches).max(1);
        let pause = window / batches as u32;
        for (i, batch) in outboxes.chunks(per_batch).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            for outbox in batch {
                outbox.close_as(crate::outbox::OutboxState::Restart);
            }
        }
        self.shutdown().await;
    }

    /// Stops accepting, sends Close 1001 to every client and waits until every connection
    /// task has ended (each gets at most about a second to complete its close handshake).
    pub async fn shutdown(&self) {
        info!("hub shutting down");
        self.hub.set_draining();
        // Stop accepting and upgrading first, then wake every open connection to close.
        self.hub.token.cancel();
        self.hub.connections.close_all();
        self.hub.tracker.close();
        self.hub.tracker.wait().await;
        self.hub.close_incoming();
        info!("hub stopped");
    }
}
