//! [`WebSocketServer`]: the hub's handle: publish, broadcast, receive, count, shut down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use ws_protocol::{Payload, SlowConsumerPolicy, WebSocketConfig, WsMessage};

use crate::auth::{Authenticator, Grant, JwtAuthenticator};
use crate::broker::{Broker, BrokerError, BrokerFuture, EmbeddedBroker, RedisBroker, Submission};
use crate::builder::ServerBuilder;
use crate::channel::{Channels, HistoryLimits, Published};
use crate::conflation_key::ConflationKey;
use crate::connections::{ConnectionId, Connections};
use crate::error::{Result, ServerError};
use crate::frame::Frame;
use crate::incoming::Incoming;
use crate::metrics::{Gauges, HubMetrics};
use crate::outbox::Outgoing;
use crate::session;
use tokio_rustls::TlsAcceptor;
use ws_protocol::is_valid_channel_name as is_valid_name;

/// tungstenite's read buffer per connection, allocated up front and kept. Small, because the
/// socket is read in large chunks through a scratch buffer per thread ([`ReadAhead`]), so
/// this size no longer sets how many system calls a publisher costs; a larger frame is still
/// read (the buffer grows for it).
///
/// [`ReadAhead`]: crate::read_ahead::ReadAhead
const READ_BUFFER_SIZE: usize = 512;
/// Bytes tungstenite collects before writing to the socket; a batch is always flushed whole.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;
/// How long the accept loop pauses after an accept error (such as running out of file
/// descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// State shared by the handle, the accept loop and every connection task.
pub(crate) struct Shared {
    pub(crate) config: WebSocketConfig,
    pub(crate) ws_config: TungsteniteConfig,
    pub(crate) channels: Arc<Channels>,
    /// Conformance testing: echo data frames instead of speaking the hub protocol.
    pub(crate) echo: bool,
    /// Where publications get their `seq` and how they reach every hub.
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) connections: Connections,
    /// Places among the open connections (`WS_MAX_CONNECTIONS`), taken at the upgrade.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// Places among the connections still upgrading (`WS_MAX_PENDING_UPGRADES`), taken at
    /// accept and given back once the upgrade is done.
    upgrading: Arc<Semaphore>,
    incoming: RwLock<Option<mpsc::Sender<(ConnectionId, WsMessage)>>>,
    incoming_capacity: usize,
    pub(crate) token: CancellationToken,
    /// Cancelled to stop accepting (drain or shutdown); a child of `token`.
    accepting: CancellationToken,
    tracker: TaskTracker,
    local_addr: SocketAddr,
    /// `None`: the hub is open and every connection gets [`Grant::open`].
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// The grant of every connection to an open hub, shared.
    pub(crate) open_grant: Arc<Grant>,
    /// `Some`: connections speak TLS (`wss://`).
    tls: Option<TlsAcceptor>,
    /// Counters for `GET /metrics`.
    pub(crate) metrics: Arc<HubMetrics>,
    /// Set when shutdown begins: `/health` answers 503.
    draining: AtomicBool,
    /// Where the admin HTTP listens, if it does.
    admin_addr: Option<SocketAddr>,
    started: std::time::Instant,
}

impl Shared {
    /// Publishes through the broker and waits until it is done.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &serde_json::value::RawValue,
    ) -> std::result::Result<Published, BrokerError> {
        match self.submit(channel, data).await? {
            Submission::Done(published) => Ok(published),
            Submission::Queued(reply) => reply
                .await
                .unwrap_or_else(|_| Err(BrokerError::Unavailable("the broker stopped".to_owned()))),
        }
    }

    /// Hands a publication to the broker without waiting for it to be done.
    pub(crate) fn submit<'a>(
        &'a self,
        channel: &'a str,
        data: &'a serde_json::value::RawValue,
    ) -> BrokerFuture<'a, Submission> {
        self.broker
            .submit(&self.channels, &self.metrics, channel, data)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The numbers of the status page.
    pub(crate) fn status_json(&self) -> String {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": self.connections.len(),
            "channels": self.channels.len(),
            "subscriptions": get(&self.metrics.subscriptions),
            "publications": get(&self.metrics.publications),
            "slow_consumer_disconnects": get(&self.metrics.slow_consumer_disconnects),
            "draining": self.is_draining(),
            "broker": self.broker.status().kind,
            "broker_up": self.broker.status().up,
            "uptime_s": self.started.elapsed().as_secs(),
        })
        .to_string()
    }

    /// Connections still upgrading.
    pub(crate) fn pending_upgrades(&self) -> usize {
        self.config.max_pending_upgrades.min(Semaphore::MAX_PERMITS)
            - self.upgrading.available_permits()
    }

    pub(crate) fn render_metrics(&self) -> String {
        let usage = self.channels.usage();
        let mut text = self.metrics.render(&Gauges {
            connections: self.connections.len(),
            pending_upgrades: self.pending_upgrades(),
            channels: self.channels.len(),
            channels_held: usage.held,
            history_bytes: usage.history_bytes,
            evicted_publications: usage.evicted_publications,
            evicted_channels: usage.evicted_channels,
            draining: self.is_draining(),
        });
        let broker = self.broker.status();
        text.push_str(&format!(
            "# HELP ws_broker_up 1 while the broker ({}) can be used.\n# TYPE ws_broker_up gauge\nws_broker_up {}\n\
             # HELP ws_broker_outages_total Times the broker was lost.\n# TYPE ws_broker_outages_total counter\nws_broker_outages_total {}\n",
            broker.kind,
            u8::from(broker.up),
            broker.outages
        ));
        text
    }

    /// Spawns a task the server owns (tracked, waited for at shutdown).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    pub(crate) fn incoming_sender(&self) -> Option<mpsc::Sender<(ConnectionId, WsMessage)>> {
        self.incoming
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }
}

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
    shared: Arc<Shared>,
    /// Stops the server when the last handle is dropped.
    _guard: Arc<StopOnDrop>,
}

/// Stops accepting and closes every connection when dropped.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.token.cancel();
        self.0.connections.close_all();
    }
}

impl std::fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("local_addr", &self.shared.local_addr)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl WebSocketServer {
    /// Binds `addr` with the default configuration and starts accepting connections.
    ///
    /// # Errors
    /// [`ServerError::Bind`] if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        ServerBuilder::default().bind(addr).await
    }

    /// A builder to set the configuration before binding.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Starts serving on an already bound listener. Must be called within a Tokio runtime.
    pub(crate) fn start(
        config: WebSocketConfig,
        listener: TcpListener,
        incoming_capacity: usize,
        authenticator: Option<Arc<dyn Authenticator>>,
        echo: bool,
    ) -> Result<Self> {
        config.validate()?;
        let mut config = config;
        config.max_connections = connection_limit(config.max_connections);
        let authenticator = match authenticator {
            Some(custom) => Some(custom),
            None => jwt_from_config(&config)?,
        };
        let tls = crate::tls::acceptor_from_config(&config)?;
        let admin = match &config.admin_addr {
            None => None,
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr.as_str())
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|e| {
                        ServerError::Bind(std::io::Error::new(
                            e.kind(),
                            format!("WS_ADMIN_ADDR={addr}: {e}"),
                        ))
                    })?;
                Some(listener)
            }
        };
        if authenticator.is_none() {
            warn!(
                "NO AUTHENTICATION: the hub is open, anyone may subscribe and publish on any \
                 channel; set WS_JWT_SECRET or WS_JWT_PUBLIC_KEY to require tokens"
            );
        }
        let local_addr = listener.local_addr()?;
        let ws_config = TungsteniteConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(WRITE_BUFFER_SIZE)
            // One batch of the outbox plus a little: the writer flushes every batch, so the
            // buffer only grows past this while the client does not read, and then the
            // outbox's slow-consumer policy takes over.
            .max_write_buffer_size(WRITE_BUFFER_SIZE + 2 * config.max_message_size)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let history = HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
            max_bytes: config.history_max_bytes,
            max_channels: config.max_channels,
        };
        let conflation = (config.slow_consumer_policy == SlowConsumerPolicy::Conflate)
            .then(|| ConflationKey::new(config.conflate_key.clone()));
        let token = CancellationToken::new();
        let redis = match &config.redis_url {
            Some(url) => Some(Arc::new(RedisBroker::new(url, history)?)),
            None => None,
        };
        let broker: Arc<dyn Broker> = match &redis {
            Some(redis) => redis.clone(),
            None => Arc::new(EmbeddedBroker),
        };
        let connection_slots = config.max_connections.min(Semaphore::MAX_PERMITS);
        let pending_upgrades = config.max_pending_upgrades.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            config,
            ws_config,
            channels: Arc::new(Channels::new(history, conflation)),
            echo,
            broker,
            connections: Connections::default(),
            connection_slots: Arc::new(Semaphore::new(connection_slots)),
            upgrading: Arc::new(Semaphore::new(pending_upgrades)),
            incoming: RwLock::new(None),
            incoming_capacity: incoming_capacity.max(1),
            token: token.clone(),
            accepting: token.child_token(),
            tracker: TaskTracker::new(),
            local_addr,
            authenticator,
            open_grant: Arc::new(Grant::open()),
            tls,
            metrics: Arc::new(HubMetrics::default()),
            draining: AtomicBool::new(false),
            admin_addr: admin.as_ref().and_then(|l| l.local_addr().ok()),
            started: std::time::Instant::now(),
        });
        if shared.config.history_size > 0 || redis.is_some() {
            shared.tracker.spawn(sweep_loop(shared.clone()));
        }
        if let Some(redis) = redis {
            info!("sharing channels through Redis (WS_REDIS_URL)");
            shared.tracker.spawn(
                redis
                    .clone()
                    .run(shared.channels.clone(), shared.token.clone()),
            );
            shared
                .tracker
                .spawn(redis.publish_loop(shared.metrics.clone(), shared.token.clone()));
        }
        if let Some(admin) = admin {
            shared
                .tracker
                .spawn(crate::admin::serve(shared.clone(), admin));
        }
        shared.tracker.spawn(accept_loop(shared.clone(), listener));
        info!(address = %local_addr, tls = shared.tls.is_some(), "hub listening");
        Ok(Self {
            _guard: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where `GET /health` and `GET /metrics` are served (`WS_ADMIN_ADDR`), if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.admin_addr
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &WebSocketConfig {
        &self.shared.config
    }

    /// Sends `message` as it is (not wrapped) to every open connection. It is serialized once
    /// and the same bytes are queued to each connection without waiting. Returns how many
    /// connections accepted it (a connection being cut as a slow consumer does not).
    ///
    /// # Errors
    /// [`ServerError::Encode`] if `message` cannot be serialized; nothing was sent.
    pub fn broadcast<T: Serialize + ?Sized>(&self, message: &T) -> Result<usize> {
        let item = Outgoing::direct(Frame::text(&serde_json::to_string(message)?));
        Ok(self.shared.connections.broadcast(&item))
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
        Ok(self.shared.publish(channel, payload.as_raw()).await?)
    }

    /// Sends `message` as it is to one connection, queued like a broadcast.
    ///
    /// # Errors
    /// [`ServerError::UnknownConnection`] if it is not open (or is being cut as a slow
    /// consumer); [`ServerError::Encode`] if `message` cannot be serialized.
    pub fn send_to<T: Serialize + ?Sized>(&self, id: ConnectionId, message: &T) -> Result<()> {
        let item = Outgoing::direct(Frame::text(&serde_json::to_string(message)?));
        match self.shared.connections.send_to(id, item) {
            Some(true) => Ok(()),
            _ => Err(ServerError::UnknownConnection(id)),
        }
    }

    /// Starts receiving the application frames clients send (`PriceUpdate`,
    /// `AccountUpdate`). A later call replaces the earlier `Incoming`, which then ends.
    pub fn incoming(&self) -> Incoming {
        let (tx, rx) = mpsc::channel(self.shared.incoming_capacity);
        *self
            .shared
            .incoming
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Incoming { rx }
    }

    /// How many connections are open (upgraded and not yet closed).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.len()
    }

    /// How many subscriptions (connection × channel) are in effect.
    pub fn subscription_count(&self) -> u64 {
        self.shared
            .metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many channels have at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.shared.channels.len()
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
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.accepting.cancel();
        let outboxes = self.shared.connections.snapshot();
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
        self.shared.draining.store(true, Ordering::Relaxed);
        // Stop accepting and upgrading first, then wake every open connection to close.
        self.shared.token.cancel();
        self.shared.connections.close_all();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        *self
            .shared
            .incoming
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        info!("hub stopped");
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "accept failed; pausing");
                tokio::select! {
                    () = shared.token.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(upgrading) = shared.upgrading.clone().try_acquire_owned() else {
            // Too many sockets are upgrading (or pretending to): this one is told so in one
            // non-blocking write and closed, costing no task and no wait.
            HubMetrics::add(&shared.metrics.upgrades_refused, 1);
            debug!(%peer, limit = shared.config.max_pending_upgrades, "too many pending upgrades (WS_MAX_PENDING_UPGRADES)");
            let _ = stream.try_write(crate::upgrade_request::BUSY);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let shared2 = shared.clone();
        // Two task types: a plain connection's task does not carry the size of a TLS
        // session (rustls' state is kilobytes) in every idle connection.
        match shared.tls.clone() {
            None => {
                shared
                    .tracker
                    .spawn(session::run(shared2, stream, peer, upgrading));
            }
            Some(tls) => {
                shared.tracker.spawn(async move {
                    let handshake =
                        tokio::time::timeout(shared2.config.handshake_timeout, tls.accept(stream));
                    match Box::pin(handshake).await {
                        Ok(Ok(stream)) => session::run(shared2, stream, peer, upgrading).await,
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    debug!("accept loop ended");
}

/// Descriptors kept for the hub's own files (listeners, Redis, admin, logs) when the
/// connection limit follows the open-file limit.
const RESERVED_FILES: u64 = 64;

/// The connection limit for `WS_MAX_CONNECTIONS` (`configured`, 0 when unset). Every
/// connection is a file descriptor, so the open-file limit is first raised to its hard limit;
/// unset, the limit follows it (less what the hub keeps for itself), and a configured limit
/// above it is warned about.
fn connection_limit(configured: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "cannot raise the open-file limit; using the current one");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let may_open =
        usize::try_from(limit.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    if configured == 0 {
        info!(
            connections = may_open,
            open_file_limit = limit,
            "accepting up to {may_open} connections: WS_MAX_CONNECTIONS is unset, so the limit \
             follows the open-file limit ({limit}) less {RESERVED_FILES} kept for the hub's own files"
        );
        return may_open;
    }
    if configured > may_open {
        warn!(
            open_file_limit = limit,
            max_connections = configured,
            "the open-file limit is below WS_MAX_CONNECTIONS; raise the hard limit (ulimit -Hn)"
        );
    }
    configured
}

/// Forgets channels whose history expired and that nobody listens to, once a second, one
/// shard of the registry at a time with a yield between shards, so that a registry of
/// hundreds of thousands of channels never holds a lock, or this thread, for long.
async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shared.token.cancelled() => break,
            _ = tick.tick() => {}
        }
        for shard in 0..Channels::SHARDS {
            shared.channels.sweep_shard(shard);
            tokio::task::yield_now().await;
        }
        shared.broker.sweep(&shared.channels);
    }
}

/// The JWT authenticator the configuration asks for, if any.
fn jwt_from_config(config: &WebSocketConfig) -> Result<Option<Arc<dyn Authenticator>>> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(Some(Arc::new(JwtAuthenticator::hs256(
            secret.expose().as_bytes(),
        ))));
    }
    let Some(path) = &config.jwt_public_key else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| ServerError::Auth(format!("cannot read WS_JWT_PUBLIC_KEY={path}: {e}")))?;
    let jwt = match config.jwt_algorithm.as_str() {
        "ES256" => JwtAuthenticator::es256_pem(&pem),
        _ => JwtAuthenticator::rs256_pem(&pem),
    }
    .map_err(|e| ServerError::Auth(format!("WS_JWT_PUBLIC_KEY={path}: {e}")))?;
    Ok(Some(Arc::new(jwt)))
}

/// The current Unix time in milliseconds.
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
