//! [`RedisBroker`]: hubs share channels through Redis.
//!
//! Per channel, three keys (hash-tagged so they live together in a Redis Cluster):
//! `ws:{channel}:epoch` (the incarnation of the channel's sequence), `ws:{channel}:seq` and
//! `ws:{channel}:stream`, a stream capped at `WS_HISTORY_SIZE` whose entry IDs are `0-<seq>`
//! and whose fields are the epoch `e`, Redis's time `t` (ms) and the data `d`.
//!
//! - A publication runs one script: take the next `seq`, append to the stream, refresh the
//!   keys' expiry; so `seq` is assigned once for the whole cluster and the stream holds the
//!   channel in `seq` order. The hub answers the publisher when Redis has it: a publication
//!   accepted is never lost by a hub that drops its Redis connection afterwards.
//! - A hub mirrors only the channels it has subscribers for. Attaching a channel reads its
//!   epoch, `seq` and the stream's tail in one script and seeds the local channel (so a client
//!   that moves between hubs recovers by `seq` from the local history, under the local lock);
//!   one reader task then follows every mirrored stream with `XREAD BLOCK` from the last
//!   `seq` delivered, and fans each entry out locally. Reading a stream from a position (not
//!   pub/sub) means nothing is lost while a hub's connection is down: it reads on from where
//!   it stopped. Channels without local subscribers are dropped from the mirror by the sweep.
//! - When Redis is lost the hub reports it (`/health` 503, `ws_broker_up 0`), refuses
//!   publishes and subscribes with `Error { code: "unavailable" }`, and reconnects with
//!   backoff; then it checks each mirrored channel's epoch: if Redis lost the channel (a
//!   restart without persistence), the local channel starts over in the new epoch and its
//!   subscribers are told (`Subscribed` with `recovered: false`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Script, Value};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Broker, BrokerError, BrokerFuture, BrokerStatus, Submission};
use crate::channel::{Channels, HistoryLimits, Published};
use crate::metrics::HubMetrics;

/// Keys of a channel idle this long expire (a later publication starts a new epoch).
const IDLE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How often the expiry of mirrored channels is refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How long one `XREAD` waits for new entries; also how soon a newly attached channel is
/// followed (its history is seeded at once, so nothing is missed meanwhile).
const BLOCK: Duration = Duration::from_millis(100);
/// The most entries one `XREAD` returns per stream.
const READ_COUNT: usize = 1024;
/// A channel attached this recently is not swept (its subscriber is about to be added).
const ATTACH_GRACE: Duration = Duration::from_secs(2);
/// How long a publish or subscribe waits for Redis to come (back) before it is refused.
const WAIT_FOR_REDIS: Duration = Duration::from_secs(2);
/// Publications waiting for Redis, over all connections of this hub; a full queue makes
/// publishers wait (TCP backpressure).
const PUBLISH_QUEUE: usize = 4096;
/// The most publications sent to Redis in one pipeline.
const PIPELINE_MAX: usize = 256;
/// Reconnect delays.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The start of both scripts: the channel's epoch, created (with a fresh sequence and stream)
/// if Redis does not know the channel. KEYS: epoch, seq, stream; ARGV[1]: the new epoch.
macro_rules! epoch_or_new {
    () => {
        r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"
    };
}

/// Takes the next `seq`, appends the publication, refreshes the expiry.
/// KEYS: epoch, seq, stream. ARGV: epoch if none yet, data, history size, expiry ms.
const PUBLISH: &str = concat!(
    epoch_or_new!(),
    r"
local seq = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '0-' .. seq, 'e', epoch, 't', ms, 'd', ARGV[2])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return {epoch, seq}
"
);

/// The channel's epoch (created if none), `seq`, Redis's time and the stream's tail,
/// newest first as `id, t, d` triples. KEYS: epoch, seq, stream. ARGV: epoch if none yet,
/// history size, expiry ms.
const ATTACH: &str = concat!(
    epoch_or_new!(),
    r"
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local now = redis.call('TIME')
local out = {epoch, seq, now[1] * 1000 + math.floor(now[2] / 1000)}
if tonumber(ARGV[2]) > 0 then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])) do
    local fields = entry[2]
    local t, d = '0', nil
    for i = 1, #fields, 2 do
      if fields[i] == 't' then t = fields[i + 1] elseif fields[i] == 'd' then d = fields[i + 1] end
    end
    table.insert(out, entry[1]); table.insert(out, t); table.insert(out, d)
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return out
"
);

fn key(channel: &str, part: &str) -> String {
    format!("ws:{{{channel}}}:{part}")
}

/// A fresh epoch name, for a channel Redis does not know.
fn new_epoch() -> String {
    format!("r{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// A publication waiting to be sent to Redis.
struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    reply: oneshot::Sender<Result<Published, BrokerError>>,
}

/// Where this hub stands in a mirrored channel.
struct Mirror {
    epoch: String,
    /// The last `seq` read from the stream.
    last: u64,
    attached_at: Instant,
}

/// See the module documentation.
pub(crate) struct RedisBroker {
    client: redis::Client,
    commands: RwLock<Option<MultiplexedConnection>>,
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
    /// A broker for `url`; it connects in [`run`](Self::run).
    ///
    /// # Errors
    /// If `url` is not a Redis URL.
    pub(crate) fn new(url: &str, limits: HistoryLimits) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Unavailable(format!("invalid WS_REDIS_URL: {e}")))?;
        let (queue, queued) = mpsc::channel(PUBLISH_QUEUE);
        Ok(Self {
            queue,
            queued: Mutex::new(Some(queued)),
            client,
            commands: RwLock::new(None),
            mirrors: Mutex::new(HashMap::new()),
            limits,
            publish: Script::new(PUBLISH),
            attach: Script::new(ATTACH),
            up: AtomicBool::new(false),
            up_changes: tokio::sync::watch::Sender::new(false),
            broken: tokio::sync::Notify::new(),
            outages: AtomicU64::new(0),
        })
    }

    fn mirrors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mirror>> {
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command connection, waiting up to [`WAIT_FOR_REDIS`] for one (at start, or
    /// during a short outage).
    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
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
            BrokerError::Unavailable(format!("no connection to Redis for {WAIT_FOR_REDIS:?}"))
        })
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
        {
            self.broken.notify_one();
        }
        BrokerError::Unavailable(error.to_string())
    }

    /// Reads a channel's epoch, `seq` and recent history from Redis.
    async fn read_channel(
        &self,
        channel: &str,
    ) -> Result<(String, u64, Vec<(u64, Duration, Box<RawValue>)>), BrokerError> {
        let mut connection = self.connection().await?;
        let reply: Vec<Value> = self
            .attach
            .key(key(channel, "epoch"))
            .key(key(channel, "seq"))
            .key(key(channel, "stream"))
            .arg(new_epoch())
            .arg(self.limits.size)
            .arg(self.expiry_ms())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.lost(&e))?;
        let bad = || BrokerError::Unavailable(format!("unexpected attach reply for {channel}"));
        let mut fields = reply.into_iter();
        let epoch: String = fields.next().and_then(|v| text(&v)).ok_or_else(bad)?;
        let seq = fields.next().and_then(|v| number(&v)).ok_or_else(bad)?;
        let now_ms = fields.next().and_then(|v| number(&v)).ok_or_else(bad)?;
        let mut history = Vec::new();
        while let (Some(id), Some(t), Some(d)) = (fields.next(), fields.next(), fields.next()) {
            let (Some(seq), Some(t), Some(data)) = (
                text(&id).and_then(|id| entry_seq(&id)),
                number(&t),
                text(&d).and_then(|d| RawValue::from_string(d).ok()),
            ) else {
                continue;
            };
            let age = Duration::from_millis(now_ms.saturating_sub(t));
            if age <= self.limits.ttl {
                history.push((seq, age, data));
            }
        }
        history.reverse();
        Ok((epoch, seq, history))
    }

    /// Follows every mirrored channel until `token` is cancelled, reconnecting whenever
    /// Redis is lost. Owned by the server's task tracker.
    pub(crate) async fn run(self: Arc<Self>, channels: Arc<Channels>, token: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        // When the current outage began, once it has been reported: one report per outage
        // (not one per retry), and one when it ends.
        let mut down_since: Option<Instant> = None;
        loop {
            let connected = tokio::select! {
                () = token.cancelled() => return,
                connected = self.connect() => connected,
            };
            match connected {
                Ok(reader) => {
                    backoff = MIN_BACKOFF;
                    if let Some(since) = down_since.take() {
                        info!(outage = ?since.elapsed(), "Redis is reachable again");
                    }
                    // A failure noticed before this connection says nothing about it.
                    let _ = self.broken.notified().now_or_never();
                    let why = tokio::select! {
                        () = token.cancelled() => return,
                        () = self.broken.notified() => {
                            BrokerError::Unavailable("a command found the connection dead".to_owned())
                        }
                        why = self.follow(reader, &channels) => why,
                    };
                    *self.commands.write().unwrap_or_else(|p| p.into_inner()) = None;
                    self.set_up(false);
                    self.outages.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %why, "lost Redis; publishing and subscribing are refused until it is back");
                    down_since = Some(Instant::now());
                }
                Err(error) if down_since.is_none() => {
                    error!(%error, "cannot reach Redis (WS_REDIS_URL); publishing and subscribing are refused until it is reachable; retrying");
                    down_since = Some(Instant::now());
                }
                Err(error) => debug!(%error, ?backoff, "cannot reach Redis yet"),
            }
            let delay = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens the command and reader connections, then checks the mirrored channels' epochs.
    async fn connect(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let commands = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.lost(&e))?;
        let reader = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.lost(&e))?;
        self.load_scripts(&mut commands.clone()).await?;
        *self.commands.write().unwrap_or_else(|p| p.into_inner()) = Some(commands);
        // A channel Redis lost meanwhile (restart without persistence) starts over.
        let names: Vec<String> = self.mirrors().keys().cloned().collect();
        for name in names {
            let (epoch, _, _) = self.read_channel(&name).await?;
            if let Some(mirror) = self.mirrors().get_mut(&name)
                && mirror.epoch != epoch
            {
                warn!(channel = %name, "Redis lost the channel's history: it starts over in a new epoch");
                mirror.epoch = epoch;
                mirror.last = 0;
            }
        }
        self.set_up(true);
        info!("connected to Redis");
        Ok(reader)
    }

    /// Reads every mirrored stream from where it stopped and fans entries out, until Redis
    /// fails; returns why.
    async fn follow(&self, mut reader: MultiplexedConnection, channels: &Channels) -> BrokerError {
        let mut refreshed = Instant::now();
        loop {
            let (keys, ids): (Vec<String>, Vec<String>) = self
                .mirrors()
                .iter()
                .map(|(name, m)| (key(name, "stream"), format!("0-{}", m.last)))
                .unzip();
            if keys.is_empty() {
                // Nothing to follow: still notice a lost Redis.
                if let Err(error) = redis::cmd("PING").query_async::<()>(&mut reader).await {
                    return self.lost(&error);
                }
                tokio::time::sleep(BLOCK).await;
                continue;
            }
            let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(100))
                .arg("STREAMS")
                .arg(&keys)
                .arg(&ids)
                .query_async(&mut reader)
                .await;
            let reply = match read {
                Ok(reply) => reply,
                Err(error) => return self.lost(&error),
            };
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(name) = stream
                    .key
                    .strip_prefix("ws:{")
                    .and_then(|k| k.strip_suffix("}:stream"))
                else {
                    continue;
                };
                for entry in stream.ids {
                    let Some(seq) = entry_seq(&entry.id) else {
                        continue;
                    };
                    let epoch = entry.map.get("e").and_then(text);
                    let data = entry
                        .map
                        .get("d")
                        .and_then(text)
                        .and_then(|d| RawValue::from_string(d).ok());
                    let (Some(epoch), Some(data)) = (epoch, data) else {
                        warn!(channel = %name, seq, "malformed stream entry skipped");
                        continue;
                    };
                    {
                        let mut mirrors = self.mirrors();
                        let Some(mirror) = mirrors.get_mut(name) else {
                            break;
                        };
                        mirror.last = mirror.last.max(seq);
                        mirror.epoch.clone_from(&epoch);
                    }
                    channels.deliver(name, &epoch, seq, &data);
                }
            }
            if refreshed.elapsed() >= REFRESH_EVERY {
                refreshed = Instant::now();
                if let Err(error) = self.refresh(&mut reader).await {
                    return error;
                }
            }
        }
    }

    /// Loads the scripts, so that pipelined `EVALSHA`s find them.
    async fn load_scripts(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), BrokerError> {
        for code in [PUBLISH, ATTACH] {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query_async::<String>(connection)
                .await
                .map_err(|e| self.lost(&e))?;
        }
        Ok(())
    }

    /// Sends queued publications to Redis in order, many per round trip, and answers each.
    /// Owned by the server's task tracker.
    pub(crate) async fn publish_loop(
        self: Arc<Self>,
        metrics: Arc<HubMetrics>,
        token: CancellationToken,
    ) {
        let Some(mut queued) = self.queued.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut batch = Vec::with_capacity(PIPELINE_MAX);
        loop {
            let first = tokio::select! {
                () = token.cancelled() => return,
                request = queued.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            batch.push(first);
            while batch.len() < PIPELINE_MAX {
                match queued.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let mut sent = self.send_batch(&batch).await;
            if matches!(&sent, Err(Retry::NoScript)) {
                // Someone flushed the scripts: load them and send once more.
                if let Ok(mut connection) = self.connection().await
                    && self.load_scripts(&mut connection).await.is_ok()
                {
                    sent = self.send_batch(&batch).await;
                }
            }
            match sent {
                Ok(seqs) => {
                    metrics
                        .publications
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for (request, seq) in batch.drain(..).zip(seqs) {
                        let _ = request.reply.send(Ok(Published {
                            seq,
                            recipients: None,
                        }));
                    }
                }
                Err(Retry::NoScript) | Err(Retry::Failed(_)) => {
                    let error = match sent {
                        Err(Retry::Failed(error)) => error,
                        _ => BrokerError::Unavailable("Redis lost the publish script".to_owned()),
                    };
                    warn!(%error, refused = batch.len(), "publications refused");
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Sends `batch` as one pipeline; the `seq` each got.
    async fn send_batch(&self, batch: &[PublishRequest]) -> Result<Vec<u64>, Retry> {
        let mut connection = self.connection().await.map_err(Retry::Failed)?;
        let mut pipe = redis::pipe();
        for request in batch {
            pipe.cmd("EVALSHA")
                .arg(self.publish.get_hash())
                .arg(3)
                .arg(key(&request.channel, "epoch"))
                .arg(key(&request.channel, "seq"))
                .arg(key(&request.channel, "stream"))
                .arg(new_epoch())
                .arg(request.data.get())
                .arg(self.limits.size)
                .arg(self.expiry_ms());
        }
        match pipe
            .query_async::<Vec<(String, u64)>>(&mut connection)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().map(|(_, seq)| seq).collect()),
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                Err(Retry::NoScript)
            }
            Err(error) => Err(Retry::Failed(self.lost(&error))),
        }
    }

    /// Keeps mirrored channels' keys from expiring while they have subscribers here.
    async fn refresh(&self, connection: &mut MultiplexedConnection) -> Result<(), BrokerError> {
        let names: Vec<String> = self.mirrors().keys().cloned().collect();
        let mut pipe = redis::pipe();
        for name in &names {
            for part in ["epoch", "seq", "stream"] {
                pipe.cmd("PEXPIRE")
                    .arg(key(name, part))
                    .arg(self.expiry_ms())
                    .ignore();
            }
        }
        pipe.query_async::<()>(connection)
            .await
            .map_err(|e| self.lost(&e))
    }
}

impl Broker for RedisBroker {
    fn submit<'a>(
        &'a self,
        _channels: &'a Channels,
        _metrics: &'a HubMetrics,
        channel: &'a str,
        data: &'a RawValue,
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
                    data: data.to_owned(),
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
                let (epoch, seq, history) = self.read_channel(channel).await?;
                channels
                    .seed(channel, &epoch, seq, history)
                    .map_err(|full| BrokerError::Unavailable(full.to_string()))?;
                let mut mirrors = self.mirrors();
                let mirror = mirrors.entry(channel.to_owned()).or_insert(Mirror {
                    epoch: epoch.clone(),
                    last: seq,
                    attached_at: Instant::now(),
                });
                mirror.attached_at = Instant::now();
                if mirror.epoch != epoch || mirror.last < seq {
                    mirror.epoch = epoch;
                    mirror.last = seq;
                }
                Ok(())
            }
            .boxed(),
        )
    }

    fn sweep(&self, channels: &Channels) {
        let now = Instant::now();
        self.mirrors().retain(|name, mirror| {
            now.duration_since(mirror.attached_at) < ATTACH_GRACE
                || !channels.forget_if_unused(name)
        });
    }

    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            kind: "redis",
            up: self.up.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
        }
    }
}

/// Why a pipeline of publications failed.
enum Retry {
    /// Redis does not have the script (it was flushed): load it and try again.
    NoScript,
    Failed(BrokerError),
}

/// The `seq` of a stream entry ID `0-<seq>`.
fn entry_seq(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_and_entry_ids_carry_the_seq() {
        assert_eq!(key("prices:SOL", "seq"), "ws:{prices:SOL}:seq");
        assert_eq!(entry_seq("0-42"), Some(42));
        assert_eq!(entry_seq("1700000000000-0"), None);
        assert_ne!(new_epoch(), new_epoch());
    }
}
