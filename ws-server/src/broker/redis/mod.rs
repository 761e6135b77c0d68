//! [`RedisBroker`]: hubs share channels through Redis.
//!
//! Per channel, three keys (hash-tagged so they live together in a Redis Cluster):
//! `ws:{channel}:epoch` (the incarnation of the channel's sequence), `ws:{channel}:seq` and
//! `ws:{channel}:stream`, a stream capped at `WS_HISTORY_SIZE` whose entry IDs are `0-<seq>`
//! and whose fields are the epoch `e`, the publishing hub's time `t` (ms) and the data `d`.
//!
//! - A publication runs one script: take the next `seq`, append to the stream, refresh the
//!   keys' expiry; so `seq` is assigned once for the whole cluster and the stream holds the
//!   channel in `seq` order. The hub answers the publisher when Redis has it: a publication
//!   accepted is never lost by a hub that drops its Redis connection afterwards.
//! - A hub mirrors only the channels it has subscribers for. Attaching a channel reads its
//!   epoch, `seq` and the stream's tail in one script and seeds the local channel (so a client
//!   that moves between hubs recovers by `seq` from the local history, under the local lock);
//!   one reader task then follows the mirrored channels: each publication is announced with
//!   its data on the channel's shard channel, and the reader delivers what continues where
//!   the channel stands here; otherwise (a gap, or after a lost connection) it reads the
//!   stream with `XREAD` from the last `seq` delivered (`announcements.rs`, `follower.rs`).
//!   Reading a stream from a position means nothing is lost while a hub's connection is
//!   down: it reads on from where it stopped. Channels without local subscribers are dropped
//!   from the mirror by the sweep.
//! - When Redis is lost the hub reports it (`/health` 503, `ws_broker_up 0`), refuses
//!   publishes and subscribes with `Error { code: "unavailable" }`, and reconnects with
//!   backoff; then it checks each mirrored channel's epoch: if Redis lost the channel (a
//!   restart without persistence), the local channel starts over in the new epoch and its
//!   subscribers are told (`Subscribed` with `recovered: false`).
//!
//! Files: `schema.rs` (the keys and the two scripts), `link.rs` (connecting, reconnecting,
//! reporting outages), `follower.rs` (reading the mirrored streams), `publisher.rs` (the
//! publish pipeline); this file holds the broker's state and its [`Broker`] side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod announcements;
mod expiry_refresh;
mod follower;
mod link;
mod publisher;
mod schema;
mod shards;
mod stream_reply;
mod target;

use self::announcements::Announcements;
use self::follower::Rounds;
use self::publisher::{PUBLISH_QUEUE, PublishRequest};
use self::schema::{ATTACH, PUBLISH};
use self::target::{Connection, Target};
use super::{Broker, BrokerError, BrokerFuture, BrokerStatus, Following, Submission};
use crate::channel::{Channels, HistoryLimits};
use crate::metrics::HubMetrics;
use ws_protocol::WebSocketConfig;

/// Keys of a channel idle this long expire (a later publication starts a new epoch).
const IDLE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// A channel attached this recently is not swept (its subscriber is about to be added).
const ATTACH_GRACE: Duration = Duration::from_secs(2);
/// How long a publish or subscribe waits for Redis to come (back) before it is refused.
const WAIT_FOR_REDIS: Duration = Duration::from_secs(2);

/// Where this hub stands in a mirrored channel.
struct Mirror {
    epoch: String,
    /// The last `seq` read from the stream.
    last: u64,
    /// The highest `seq` announced (see `announcements.rs`); ahead of `last` by the
    /// publications still to be read.
    announced: u64,
    attached_at: Instant,
}

impl Mirror {
    /// A mirror standing at `seq` of `epoch`, attached now.
    fn at(epoch: String, seq: u64) -> Self {
        Self {
            epoch,
            last: seq,
            announced: seq,
            attached_at: Instant::now(),
        }
    }

    /// The channel starts over at `seq` in another incarnation, `epoch`: what was read and
    /// announced in the old one means nothing.
    fn restart(&mut self, epoch: String, seq: u64) {
        self.epoch = epoch;
        self.last = seq;
        self.announced = seq;
    }
}

/// See the module documentation.
pub(crate) struct RedisBroker {
    target: Target,
    /// Replicas that must have a publication before it is acknowledged
    /// (`WS_REDIS_WAIT_REPLICAS`).
    wait_replicas: usize,
    /// The shards' state, for `/metrics`: `host:port` of each primary (no credentials) and
    /// whether the cluster sees it serving (one Redis: always; see `shards.rs`).
    shards: Mutex<Vec<(String, bool)>>,
    commands: RwLock<Option<Connection>>,
    /// The connection subscribed to the followed channels' announcements.
    notices: RwLock<Option<Connection>>,
    announcements: Arc<Announcements>,
    /// Channels the sweep stopped mirroring, whose announcements the follower unsubscribes.
    unfollow: Mutex<Vec<String>>,
    rounds: Rounds,
    mirrors: Mutex<HashMap<String, Mirror>>,
    limits: HistoryLimits,
    /// Run with `EVALSHA` from the publish pipeline.
    publish: Script,
    attach: Script,
    queue: mpsc::Sender<PublishRequest>,
    /// Taken by [`publish_loop`](RedisBroker::publish_loop).
    queued: Mutex<Option<mpsc::Receiver<PublishRequest>>>,
    up: AtomicBool,
    /// A command failed on a dead connection: the reader reconnects at once.
    broken: tokio::sync::Notify,
    /// Tells waiting publishes and subscribes when Redis is (back) up.
    up_changes: tokio::sync::watch::Sender<bool>,
    outages: AtomicU64,
}

impl RedisBroker {
    /// The broker `config` asks for (`WS_REDIS_URL` or `WS_REDIS_CLUSTER_NODES`), if any;
    /// it connects in [`run`](Self::run).
    ///
    /// # Errors
    /// If the URL or a node is not a Redis URL.
    pub(crate) fn from_config(
        config: &WebSocketConfig,
        limits: HistoryLimits,
    ) -> Result<Option<Self>, BrokerError> {
        let announcements = Arc::<Announcements>::default();
        let target = match &config.redis_url {
            Some(url) => Target::single(url)?,
            None if !config.redis_cluster_nodes.is_empty() => {
                Target::cluster(&config.redis_cluster_nodes, announcements.clone())?
            }
            None => return Ok(None),
        };
        let (queue, queued) = mpsc::channel(PUBLISH_QUEUE);
        Ok(Some(Self {
            queue,
            queued: Mutex::new(Some(queued)),
            shards: Mutex::new(vec![(target.name(), true)]),
            target,
            wait_replicas: config.redis_wait_replicas,
            commands: RwLock::new(None),
            notices: RwLock::new(None),
            announcements,
            unfollow: Mutex::new(Vec::new()),
            rounds: Rounds::default(),
            mirrors: Mutex::new(HashMap::new()),
            limits,
            publish: Script::new(PUBLISH),
            attach: Script::new(ATTACH),
            up: AtomicBool::new(false),
            up_changes: tokio::sync::watch::Sender::new(false),
            broken: tokio::sync::Notify::new(),
            outages: AtomicU64::new(0),
        }))
    }

    fn mirrors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mirror>> {
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command connection, waiting up to [`WAIT_FOR_REDIS`] for one (at start, or
    /// during a short outage).
    async fn connection(&self) -> Result<Connection, BrokerError> {
        let current = || {
            self.commands
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        if let Some(connection) = current() {
            return Ok(connection);
        }
        let mut changes = self.up_changes.subscribe();
        let _ = tokio::time::timeout(WAIT_FOR_REDIS, changes.wait_for(|up| *up)).await;
        current().ok_or_else(|| {
            BrokerError::Unavailable(format!(
                "no connection to Redis ({}) for {WAIT_FOR_REDIS:?}",
                self.target.variable()
            ))
        })
    }

    /// The announcements' connection, if connected.
    fn notices(&self) -> Option<Connection> {
        self.notices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The variable that names the Redis shared (`WS_REDIS_URL` or `WS_REDIS_CLUSTER_NODES`).
    pub(crate) fn variable(&self) -> &'static str {
        self.target.variable()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.up_changes.send_replace(up);
    }

    fn expiry_ms(&self) -> u64 {
        u64::try_from(IDLE_EXPIRY.max(self.limits.ttl).as_millis()).unwrap_or(u64::MAX)
    }

    fn lost(&self, error: &redis::RedisError) -> BrokerError {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || (self.target.is_cluster() && topology_changed(error))
        {
            self.broken.notify_one();
        }
        BrokerError::Unavailable(error.to_string())
    }
}

/// Whether `error` says the cluster's primaries are not where the connection thinks: a
/// primary that failed over and came back as a replica answers `READONLY` (and refuses
/// `WAIT`), which redis-rs does not take as a reason to re-read the slots; connecting again
/// does.
fn topology_changed(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ) | ErrorKind::ClusterConnectionNotFound
    ) || error.to_string().contains("used with replica")
}

impl Broker for RedisBroker {
    fn submit<'a>(
        &'a self,
        _channels: &'a Channels,
        _metrics: &'a HubMetrics,
        channel: &'a str,
        data: &'a str,
        key: Option<&'a str>,
        _now: Instant,
    ) -> BrokerFuture<'a, Submission> {
        Either::Right(
            async move {
                if !self.up.load(Ordering::Relaxed) {
                    // Wait a little for Redis (at start, or a short outage) before refusing.
                    self.connection().await?;
                }
                let (reply, result) = oneshot::channel();
                let request = PublishRequest {
                    channel: channel.to_owned(),
                    data: data.into(),
                    key: key.map(str::to_owned),
                    refresh_expiry: true,
                    reply,
                };
                self.queue
                    .send(request)
                    .await
                    .map_err(|_| BrokerError::Unavailable("the hub is stopping".to_owned()))?;
                // Every hub with subscribers, this one included, delivers it when it reads
                // the channel's stream.
                Ok(Submission::Queued(result))
            }
            .boxed(),
        )
    }

    fn attach<'a>(&'a self, channels: &'a Channels, channel: &'a str) -> BrokerFuture<'a, ()> {
        let known = channels.position(channel).is_some();
        if let Some(mirror) = self.mirrors().get_mut(channel)
            && known
        {
            mirror.attached_at = Instant::now();
            return Either::Left(std::future::ready(Ok(())));
        }
        Either::Right(
            async move {
                // Announcements first: a publication after the history read is announced.
                // (Waiting, as every command does, for Redis at start or in a short outage.)
                self.connection().await?;
                self.follow_announcements(&[channel.to_owned()]).await?;
                let (epoch, seq, history) = self.read_channel(channel).await?;
                channels
                    .seed(channel, &epoch, seq, history)
                    .map_err(|full| BrokerError::Unavailable(full.to_string()))?;
                let mut mirrors = self.mirrors();
                let mirror = mirrors
                    .entry(channel.to_owned())
                    .or_insert_with(|| Mirror::at(epoch.clone(), seq));
                mirror.attached_at = Instant::now();
                if mirror.epoch != epoch {
                    mirror.restart(epoch, seq);
                } else if mirror.last < seq {
                    mirror.last = seq;
                }
                drop(mirrors);
                // A publication between the history read and the line above was announced
                // before the follower knew the channel: it kept the name, and reads the
                // stream now that it is followed.
                self.announcements.poke();
                Ok(())
            }
            .boxed(),
        )
    }

    fn sweep(&self, channels: &Channels) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        self.mirrors().retain(|name, mirror| {
            let keep = now.duration_since(mirror.attached_at) < ATTACH_GRACE
                || !channels.forget_if_unused(name);
            if !keep {
                dropped.push(name.clone());
            }
            keep
        });
        if !dropped.is_empty() {
            self.unfollow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(dropped);
        }
    }

    fn status(&self) -> BrokerStatus {
        let up = self.up.load(Ordering::Relaxed);
        let [(rounds, streams_read), (sweeps, streams_swept)] = self.rounds.totals();
        // Each its own statement: the mirrors' lock is taken once at a time.
        let followed = self.mirrors().len();
        let lag = self.follow_lag();
        BrokerStatus {
            kind: "redis",
            up,
            outages: self.outages.load(Ordering::Relaxed),
            following: Some(Following {
                shards: self.shard_states(up),
                channels: followed,
                lag,
                carried: self.rounds.carried_total(),
                rounds,
                streams_read,
                sweeps,
                streams_swept,
            }),
        }
    }
}
