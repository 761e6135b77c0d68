//! [`ServerBuilder`]: configure the hub, then `bind` or `serve`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};
use ws_protocol::{SlowConsumerPolicy, WebSocketConfig};

use crate::auth::Authenticator;
use crate::error::{Result, ServerError};
use crate::hub::{Hub, HubOptions};
use crate::server::WebSocketServer;

/// Pending connections the kernel holds for the accept loop (capped by the system's
/// `somaxconn`). Thousands of clients reconnecting at once must not overflow it, or their
/// SYNs are dropped and retried only after seconds.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `addr` resolves to that can be bound, with `SO_REUSEADDR` and a
/// large backlog.
async fn listen(addr: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Default capacity of the queue behind [`Incoming`](crate::Incoming).
pub const DEFAULT_INCOMING_CAPACITY: usize = 1024;

/// Builds a [`WebSocketServer`]. Start from [`WebSocketServer::builder`] or
/// [`ServerBuilder::from_config`].
///
/// ```no_run
/// use std::time::Duration;
/// use ws_protocol::SlowConsumerPolicy;
/// use ws_server::WebSocketServer;
///
/// # async fn demo() -> Result<(), ws_server::ServerError> {
/// let server = WebSocketServer::builder()
///     .max_message_size(16 * 1024)
///     .send_queue_size(4096)
///     .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
///     .ping_interval(Duration::from_secs(10))
///     .bind("127.0.0.1:0")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct ServerBuilder {
    config: WebSocketConfig,
    incoming_capacity: usize,
    authenticator: Option<Arc<dyn Authenticator>>,
    #[cfg(feature = "conformance")]
    echo: bool,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("incoming_capacity", &self.incoming_capacity)
            .field("custom_authenticator", &self.authenticator.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::from_config(WebSocketConfig::default())
    }
}

impl ServerBuilder {
    /// Starts from a loaded configuration (for example `WebSocketConfig::from_env()`).
    pub fn from_config(config: WebSocketConfig) -> Self {
        Self {
            config,
            incoming_capacity: DEFAULT_INCOMING_CAPACITY,
            authenticator: None,
            #[cfg(feature = "conformance")]
            echo: false,
        }
    }

    /// The largest frame accepted, in bytes; larger ones are answered with close 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// Whether permessage-deflate is agreed when a client offers it (`WS_COMPRESSION`,
    /// default [`Compression::On`](ws_protocol::Compression::On)).
    pub fn compression(mut self, compression: ws_protocol::Compression) -> Self {
        self.config.compression = compression;
        self
    }

    /// Messages queued per connection before the slow-consumer policy applies.
    pub fn send_queue_size(mut self, messages: usize) -> Self {
        self.config.send_queue_size = messages;
        self
    }

    /// Bytes of frames queued per connection before the slow-consumer policy applies
    /// (`WS_SEND_QUEUE_BYTES`).
    pub fn send_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.send_queue_bytes = bytes;
        self
    }

    /// How long a write may make no progress before the connection is cut as a slow
    /// consumer (`WS_WRITE_TIMEOUT`).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// Connections still upgrading held at once (`WS_MAX_PENDING_UPGRADES`).
    pub fn max_pending_upgrades(mut self, upgrades: usize) -> Self {
        self.config.max_pending_upgrades = upgrades;
        self
    }

    /// What happens to a connection whose queue is full.
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer_policy = policy;
        self
    }

    /// The field of a publication's data that names what it is about, for the `conflate`
    /// slow-consumer policy (`WS_CONFLATE_KEY`, default `symbol`).
    pub fn conflate_key(mut self, field: impl Into<String>) -> Self {
        self.config.conflate_key = field.into();
        self
    }

    /// Share channels with other hubs through the Redis at `url` (`WS_REDIS_URL`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// Share channels with other hubs through the Redis Cluster that these seed nodes
    /// (`redis://host:port`) belong to (`WS_REDIS_CLUSTER_NODES`), instead of one Redis.
    pub fn redis_cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.redis_cluster_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Acknowledge a publication only once this many replicas of its Redis primary have it
    /// (`WS_REDIS_WAIT_REPLICAS`, Redis `WAIT` up to 1 s): where a primary can fail over to
    /// a replica, 1 or more keeps a failover from losing an acknowledged publication.
    pub fn redis_wait_replicas(mut self, replicas: usize) -> Self {
        self.config.redis_wait_replicas = replicas;
        self
    }

    /// For protocol-conformance testing only (the Autobahn cases): every text or binary frame
    /// is sent back as it came, through the same upgrade, read loop, limits and write path as
    /// the hub's; the hub protocol is not spoken. Only with the `conformance` feature.
    #[cfg(feature = "conformance")]
    pub fn echo(mut self, enabled: bool) -> Self {
        self.echo = enabled;
        self
    }

    /// How often the hub pings each client.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval;
        self
    }

    /// How long a connection may stay silent before it is closed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// How long a TCP connection may take to complete the WebSocket upgrade.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Connections held at once; further upgrades get HTTP 503. 0 (the default): no limit of
    /// the hub's own, the process's open-file limit bounds them. The library does not change
    /// that limit; the `ws-server` binary raises it to its hard limit and, with 0, takes it
    /// (less what it keeps for its own files) as the limit.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// Checks every connection's token with `authenticator` instead of the JWT settings of
    /// the configuration (`WS_JWT_SECRET`, `WS_JWT_PUBLIC_KEY`).
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Connections may subscribe to this many channels each (`WS_MAX_SUBSCRIPTIONS`).
    pub fn max_subscriptions(mut self, subscriptions: usize) -> Self {
        self.config.max_subscriptions = subscriptions;
        self
    }

    /// Inbound frames per second and burst per connection (`WS_RATE_LIMIT`,
    /// `WS_RATE_LIMIT_BURST`).
    pub fn rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.config.rate_limit = per_second;
        self.config.rate_limit_burst = burst;
        self
    }

    /// Browser origins allowed to connect (`WS_ALLOWED_ORIGINS`); empty: any.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Time a connection without a token has to send `Authenticate` (`WS_AUTH_TIMEOUT`).
    pub fn auth_timeout(mut self, timeout: Duration) -> Self {
        self.config.auth_timeout = timeout;
        self
    }

    /// Serves `GET /health`, `GET /metrics`, the status page and the HTTP publish API
    /// (`POST /publish`, `POST /broadcast`) on this address (`WS_ADMIN_ADDR`).
    pub fn admin_addr(mut self, addr: impl Into<String>) -> Self {
        self.config.admin_addr = Some(addr.into());
        self
    }

    /// Answers the HTTP publish API on the public port too, to requests with
    /// `Authorization: apikey <key>` (`WS_API_KEY`; at least 16 bytes, checked by `serve`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(ws_protocol::Secret::new(key));
        self
    }

    /// Publications kept per channel for recovery, and for how long (`WS_HISTORY_SIZE`,
    /// `WS_HISTORY_TTL`).
    pub fn history(mut self, size: usize, ttl: Duration) -> Self {
        self.config.history_size = size;
        self.config.history_ttl = ttl;
        self
    }

    /// Bounds on the history of all channels together: bytes kept (`WS_HISTORY_MAX_BYTES`)
    /// and channels held (`WS_MAX_CHANNELS`).
    pub fn history_bounds(mut self, max_bytes: usize, max_channels: usize) -> Self {
        self.config.history_max_bytes = max_bytes;
        self.config.max_channels = max_channels;
        self
    }

    /// The wait the hub's 1012 close asks clients for during a drain (`WS_RECONNECT_HINT`).
    pub fn reconnect_hint(mut self, hint: Duration) -> Self {
        self.config.reconnect_hint = hint;
        self
    }

    /// How long the application has to answer a client's `Request` (`WS_REQUEST_TIMEOUT`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Capacity of the queues behind [`Incoming`](crate::Incoming) and
    /// [`Requests`](crate::Requests).
    pub fn incoming_capacity(mut self, frames: usize) -> Self {
        self.incoming_capacity = frames;
        self
    }

    /// Binds `addr` and starts accepting.
    ///
    /// # Errors
    /// [`ServerError::Bind`](crate::ServerError::Bind) if the address cannot be bound,
    /// [`ServerError::Config`](crate::ServerError::Config) if a setting is out of range.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<WebSocketServer> {
        self.config.validate()?;
        let listener = listen(addr).await?;
        self.serve(listener)
    }

    /// Binds the address of the configuration (`WS_HOST`:`WS_PORT`) and starts accepting.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn bind_configured(self) -> Result<WebSocketServer> {
        let addr = self.config.bind_address();
        self.config.validate()?;
        let listener = listen(addr.as_str())
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{addr} (WS_HOST:WS_PORT): {e}")))?;
        self.serve(listener)
    }

    /// Starts accepting on an already bound listener. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Config`](crate::ServerError::Config) if a setting is out of range,
    /// [`ServerError::Bind`](crate::ServerError::Bind) if the listener has no local address.
    pub fn serve(self, listener: TcpListener) -> Result<WebSocketServer> {
        let options = HubOptions {
            incoming_capacity: self.incoming_capacity,
            authenticator: self.authenticator,
            #[cfg(feature = "conformance")]
            echo: self.echo,
        };
        let hub = Hub::new(self.config, options)?;
        let tls = crate::tls::acceptor_from_config(&hub.config)?;
        let admin = match &hub.config.admin_addr {
            None => None,
            Some(addr) => Some(bind_admin(addr)?),
        };
        WebSocketServer::start(hub, listener, admin, tls)
    }
}

impl WebSocketServer {
    /// Binds `addr` with the default configuration and starts accepting connections.
    ///
    /// # Errors
    /// [`ServerError::Bind`](crate::ServerError::Bind) if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        ServerBuilder::default().bind(addr).await
    }

    /// A builder to set the configuration before binding.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Binds the admin endpoint's address (`WS_ADMIN_ADDR`).
fn bind_admin(addr: &str) -> Result<TcpListener> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|e| {
            ServerError::Bind(std::io::Error::new(
                e.kind(),
                format!("WS_ADMIN_ADDR={addr}: {e}"),
            ))
        })
}
