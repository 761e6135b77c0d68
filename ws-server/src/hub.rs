//! [`Hub`]: what every connection of one server shares (configuration, the channel registry,
//! the broker, the connection registry, metrics, the shutdown token) and the operations whose
//! order matters: a channel is attached to the broker before anyone subscribes to it, and a
//! subscription ends everywhere at once (registry, queued frames, gauge).
//!
//! The handle ([`WebSocketServer`](crate::WebSocketServer)), the accept loop, the connection
//! tasks and the admin endpoint each hold an `Arc<Hub>`; none of them imports another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use ws_protocol::{ChannelPosition, Position, SlowConsumerPolicy, WebSocketConfig, WsMessage};

use crate::auth::{Authenticator, Grant, JwtAuthenticator};
use crate::broker::{Broker, BrokerError, BrokerFuture, EmbeddedBroker, RedisBroker, Submission};
use crate::channel::{Channels, ChannelsFull, HistoryLimits, Published};
use crate::conflation_key::ConflationKey;
use crate::connections::{ConnectionId, Connections};
use crate::error::{Result, ServerError};
use crate::metrics::{Gauges, HubMetrics};
use crate::outbox::Outbox;
use crate::requests::Request;

/// A pass of [`Hub::attach`] over a `Subscribe`'s channels longer than this is made again,
/// well within the Redis broker's 2 s grace for attached channels without subscribers.
const REATTACH_BELOW: Duration = Duration::from_millis(500);
/// How many channels of one `Subscribe` [`Hub::attach`] attaches at once.
const ATTACHING_AT_ONCE: usize = 32;

/// tungstenite's read buffer per connection, allocated up front and kept. Small, because the
/// socket is read in large chunks through a scratch buffer per thread ([`ReadAhead`]), so
/// this size no longer sets how many system calls a publisher costs; a larger frame is still
/// read (the buffer grows for it).
///
/// [`ReadAhead`]: crate::read_ahead::ReadAhead
const READ_BUFFER_SIZE: usize = 512;
/// Bytes tungstenite collects before writing to the socket; a batch is always flushed whole.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// State shared by the handle, the accept loop, the admin endpoint and every connection task.
pub(crate) struct Hub {
    pub(crate) config: WebSocketConfig,
    pub(crate) ws_config: TungsteniteConfig,
    pub(crate) channels: Arc<Channels>,
    /// Conformance testing: echo data frames instead of speaking the hub protocol.
    #[cfg(feature = "conformance")]
    pub(crate) echo: bool,
    /// Where publications get their `seq` and how they reach every hub.
    pub(crate) broker: Arc<dyn Broker>,
    /// The Redis broker again, typed, for its background tasks; `None` without Redis.
    redis: Option<Arc<RedisBroker>>,
    pub(crate) connections: Connections,
    /// Places among the open connections (`WS_MAX_CONNECTIONS`), taken at the upgrade.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// Places among the connections still upgrading (`WS_MAX_PENDING_UPGRADES`), taken at
    /// accept and given back once the upgrade is done.
    pub(crate) upgrading: Arc<Semaphore>,
    incoming: RwLock<Option<mpsc::Sender<(ConnectionId, WsMessage)>>>,
    /// Where client requests go, while the application takes them.
    requests: RwLock<Option<mpsc::Sender<Request>>>,
    incoming_capacity: usize,
    /// Cancelled at shutdown: every task of the hub ends.
    pub(crate) token: CancellationToken,
    /// Cancelled to stop accepting (drain or shutdown); a child of `token`.
    pub(crate) accepting: CancellationToken,
    /// The hub's tasks, waited for at shutdown.
    pub(crate) tracker: TaskTracker,
    /// `None`: the hub is open and every connection gets [`Grant::open`].
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// The grant of every connection to an open hub, shared.
    pub(crate) open_grant: Arc<Grant>,
    /// Counters for `GET /metrics`.
    pub(crate) metrics: Arc<HubMetrics>,
    /// Set when shutdown begins: `/health` answers 503.
    draining: AtomicBool,
    started: StdInstant,
}

/// Proof that the channels of a `Subscribe` were attached to the broker: [`Hub::subscribe`]
/// takes it, so that no connection subscribes to a channel whose publications may not reach
/// this hub.
pub(crate) struct Attached(());

/// What a subscriber asks to have replayed before live publications.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replay<'a> {
    /// What followed this position.
    pub(crate) since: Option<&'a Position>,
    /// Without `since`: the last this many publications.
    pub(crate) rewind: Option<u64>,
}

/// A channel [`Hub::attach`] could not attach.
pub(crate) struct AttachError {
    /// The channel.
    pub(crate) channel: String,
    /// Why.
    pub(crate) error: BrokerError,
}

/// What [`Hub::new`] needs besides the configuration.
pub(crate) struct HubOptions {
    /// Frames the application's [`Incoming`](crate::Incoming) may hold before senders wait.
    pub(crate) incoming_capacity: usize,
    /// A custom authenticator; `None`: JWTs as the configuration says, or an open hub.
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// Conformance testing: echo data frames.
    #[cfg(feature = "conformance")]
    pub(crate) echo: bool,
}

impl Hub {
    /// A hub for `config` (validated here), with no listener and no task running yet: the
    /// caller starts them ([`Hub::start_background`], the accept loop).
    ///
    /// `config.max_connections` 0 means no limit of the hub's own: the process's open-file
    /// limit bounds the connections (the `ws-server` binary turns 0 into that limit first).
    pub(crate) fn new(config: WebSocketConfig, options: HubOptions) -> Result<Self> {
        config.validate()?;
        let authenticator = match options.authenticator {
            Some(custom) => Some(custom),
            None => jwt_from_config(&config)?,
        };
        if authenticator.is_none() {
            warn!(
                "NO AUTHENTICATION: the hub is open, anyone may subscribe and publish on any \
                 channel; set WS_JWT_SECRET or WS_JWT_PUBLIC_KEY to require tokens"
            );
        }
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
            key_window: config.idempotency_window,
            max_keys: config.idempotency_max_keys,
        };
        let conflation = (config.slow_consumer_policy == SlowConsumerPolicy::Conflate)
            .then(|| ConflationKey::new(config.conflate_key.clone()));
        let redis = RedisBroker::from_config(&config, history)?.map(Arc::new);
        let broker: Arc<dyn Broker> = match &redis {
            Some(redis) => redis.clone(),
            None => Arc::new(EmbeddedBroker),
        };
        let connection_slots = match config.max_connections {
            0 => Semaphore::MAX_PERMITS,
            limit => limit.min(Semaphore::MAX_PERMITS),
        };
        let pending_upgrades = config.max_pending_upgrades.min(Semaphore::MAX_PERMITS);
        let token = CancellationToken::new();
        Ok(Self {
            ws_config,
            channels: Arc::new(Channels::new(history, conflation)),
            #[cfg(feature = "conformance")]
            echo: options.echo,
            broker,
            redis,
            connections: Connections::default(),
            connection_slots: Arc::new(Semaphore::new(connection_slots)),
            upgrading: Arc::new(Semaphore::new(pending_upgrades)),
            incoming: RwLock::new(None),
            requests: RwLock::new(None),
            incoming_capacity: options.incoming_capacity.max(1),
            accepting: token.child_token(),
            token,
            tracker: TaskTracker::new(),
            authenticator,
            open_grant: Arc::new(Grant::open()),
            metrics: Arc::new(HubMetrics::default()),
            draining: AtomicBool::new(false),
            started: StdInstant::now(),
            config,
        })
    }

    /// Starts the tasks every hub runs besides its connections: the registry's sweep and,
    /// with Redis, the stream follower and the publish pipeline.
    pub(crate) fn start_background(self: &Arc<Self>) {
        if self.config.history_size > 0 || self.redis.is_some() {
            self.tracker.spawn(sweep_loop(self.clone()));
        }
        if let Some(redis) = &self.redis {
            tracing::info!("sharing channels through Redis ({})", redis.variable());
            self.tracker
                .spawn(redis.clone().run(self.channels.clone(), self.token.clone()));
            self.tracker.spawn(
                redis
                    .clone()
                    .publish_loop(self.metrics.clone(), self.token.clone()),
            );
        }
    }

    /// Publishes through the broker and waits until it is done; with `key`, at most once per
    /// key and channel within `WS_IDEMPOTENCY_WINDOW`.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &str,
        key: Option<&str>,
    ) -> std::result::Result<Published, BrokerError> {
        match self
            .submit(channel, data, key, tokio::time::Instant::now())
            .await?
        {
            Submission::Done(published) => Ok(published),
            Submission::Queued(reply) => reply
                .await
                .unwrap_or_else(|_| Err(BrokerError::Unavailable("the broker stopped".to_owned()))),
        }
    }

    /// Hands a publication (`data`: one valid, portable JSON value) to the broker without
    /// waiting for it to be done; `now` is the time of the frame that brought it.
    pub(crate) fn submit<'a>(
        &'a self,
        channel: &'a str,
        data: &'a str,
        key: Option<&'a str>,
        now: tokio::time::Instant,
    ) -> BrokerFuture<'a, Submission> {
        self.broker
            .submit(&self.channels, &self.metrics, channel, data, key, now)
    }

    /// Makes sure the publications of every one of `channels` reach this hub (with Redis,
    /// their position and recent history are fetched), so that they can be subscribed to.
    ///
    /// # Errors
    /// The first channel that could not be attached, and why.
    pub(crate) async fn attach(
        &self,
        channels: &[String],
    ) -> std::result::Result<Attached, AttachError> {
        // The broker stops following a channel without subscribers once its attach is older
        // than a grace period (2 s for Redis); attaching many channels one after another can
        // take longer than that, and the subscription comes only after the last. So the
        // channels are attached again (at once for those still attached; anew for one dropped
        // meanwhile) until a whole pass takes less than `REATTACH_BELOW`.
        loop {
            let started = tokio::time::Instant::now();
            // Several at once: with Redis each attach is two round trips, which the shared
            // connection pipelines.
            for chunk in channels.chunks(ATTACHING_AT_ONCE) {
                let attached =
                    futures_util::future::join_all(chunk.iter().map(|c| self.attach_one(c))).await;
                attached
                    .into_iter()
                    .collect::<std::result::Result<(), _>>()?;
            }
            if started.elapsed() < REATTACH_BELOW {
                return Ok(Attached(()));
            }
        }
    }

    /// Attaches one channel (see [`attach`](Self::attach)).
    async fn attach_one(&self, channel: &str) -> std::result::Result<(), AttachError> {
        self.broker
            .attach(&self.channels, channel)
            .await
            .map_err(|error| AttachError {
                channel: channel.to_owned(),
                error,
            })
    }

    /// Subscribes connection `id` to `channel`, attached before (see [`Attached`]); its
    /// publications are queued to `outbox` from now on. Returns the channel's shared name and
    /// its position, after replaying to `outbox` what followed `since` if the history has it
    /// (or, without `since`, the last `rewind` publications).
    /// `new` says whether the connection was not subscribed yet (counted in the gauge).
    pub(crate) fn subscribe(
        &self,
        _attached: &Attached,
        channel: &str,
        id: ConnectionId,
        outbox: &Arc<Outbox>,
        replay: Replay<'_>,
        new: bool,
    ) -> std::result::Result<(Arc<str>, ChannelPosition), ChannelsFull> {
        let subscribed =
            self.channels
                .subscribe(channel, id, outbox, replay.since, replay.rewind)?;
        if new {
            HubMetrics::add(&self.metrics.subscriptions, 1);
        }
        Ok(subscribed)
    }

    /// Ends connection `id`'s subscription to `channel`: nothing of it is queued to `outbox`
    /// any more, and what was queued is dropped.
    pub(crate) fn unsubscribe(&self, channel: &str, id: ConnectionId, outbox: &Outbox) {
        self.channels.unsubscribe(channel, id);
        HubMetrics::add_signed(&self.metrics.subscriptions, -1);
        outbox.purge(channel);
    }

    /// Takes connection `id` out of every channel of `subscriptions` and out of the
    /// connection registry, at its end.
    pub(crate) fn leave(
        &self,
        subscriptions: impl ExactSizeIterator<Item = Arc<str>>,
        id: ConnectionId,
    ) {
        let left = subscriptions.len() as i64;
        HubMetrics::add_signed(&self.metrics.subscriptions, -left);
        for channel in subscriptions {
            self.channels.unsubscribe(&channel, id);
        }
        self.connections.remove(id);
    }

    /// Whether the hub is draining or shutting down.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the hub as draining: `/health` answers 503 from now on.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
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

    /// The text of `GET /metrics`.
    pub(crate) fn render_metrics(&self) -> String {
        let usage = self.channels.usage();
        let mut text = self.metrics.render(&Gauges {
            connections: self.connections.len(),
            pending_upgrades: self.pending_upgrades(),
            channels: self.channels.len(),
            usage,
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
        if let Some(following) = &broker.following {
            text.push_str(&following.render());
        }
        text
    }

    /// Spawns a task the hub owns (tracked, waited for at shutdown).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Where application frames go, if the application reads them.
    pub(crate) fn incoming_sender(&self) -> Option<mpsc::Sender<(ConnectionId, WsMessage)>> {
        self.incoming
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// A new queue of application frames, replacing (and ending) the previous one.
    pub(crate) fn open_incoming(&self) -> mpsc::Receiver<(ConnectionId, WsMessage)> {
        let (tx, rx) = mpsc::channel(self.incoming_capacity);
        *self.incoming.write().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Ends the queues of application frames and requests.
    pub(crate) fn close_incoming(&self) {
        *self.incoming.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self.requests.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Where client requests go, if the application takes them.
    pub(crate) fn request_sender(&self) -> Option<mpsc::Sender<Request>> {
        self.requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// A new queue of client requests, replacing (and ending) the previous one.
    pub(crate) fn open_requests(&self) -> mpsc::Receiver<Request> {
        let (tx, rx) = mpsc::channel(self.incoming_capacity);
        *self.requests.write().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

/// Forgets channels whose history expired and that nobody listens to, once a second, one
/// shard of the registry at a time with a yield between shards, so that a registry of
/// hundreds of thousands of channels never holds a lock, or this thread, for long.
async fn sweep_loop(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = hub.token.cancelled() => break,
            _ = tick.tick() => {}
        }
        // With Redis the broker's sweep forgets channels (see `sweep_shard`).
        let forget_idle = hub.redis.is_none();
        for shard in 0..Channels::SHARDS {
            hub.channels.sweep_shard(shard, forget_idle);
            tokio::task::yield_now().await;
        }
        hub.broker.sweep(&hub.channels);
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
