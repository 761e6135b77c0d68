//! The publish pipeline: publications queue to one task that sends them to Redis in order,
//! many per round trip (`EVALSHA` of the publish script), and answers each with its `seq`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RedisBroker;
use super::expiry_refresh::ExpiryRefresh;
use super::schema::{key, moved, new_epoch, now_ms, number};
use crate::broker::BrokerError;
use crate::channel::Published;
use crate::metrics::HubMetrics;

/// Publications waiting for Redis, over all connections of this hub; a full queue makes
/// publishers wait (TCP backpressure).
pub(super) const PUBLISH_QUEUE: usize = 4096;
/// The most publications sent to Redis in one pipeline.
const PIPELINE_MAX: usize = 256;
/// The most publications one publish script call takes (a call holds Redis for its
/// duration; 64 is a few milliseconds at most).
const PER_CALL: usize = 64;
/// How long a pipeline waits for `WS_REDIS_WAIT_REPLICAS` replicas to have it (`WAIT`).
const WAIT_FOR_REPLICAS_MS: u64 = 1000;

/// A publication waiting to be sent to Redis.
pub(super) struct PublishRequest {
    pub(super) channel: String,
    pub(super) data: Box<str>,
    /// The idempotency key, if the publication has one.
    pub(super) key: Option<String>,
    /// Whether it refreshes the channel's keys' expiry (`expiry_refresh.rs`); set by the
    /// publish loop.
    pub(super) refresh_expiry: bool,
    pub(super) reply: oneshot::Sender<Result<Published, BrokerError>>,
}

/// A reply of the publish script that is not what it returns.
fn unexpected() -> Retry {
    Retry::Failed(BrokerError::Unavailable(
        "unexpected reply from the publish script".to_owned(),
    ))
}

/// Why a pipeline of publications failed.
enum Retry {
    /// Redis does not have the script (it was flushed): load it and try again.
    NoScript,
    Failed(BrokerError),
}

impl RedisBroker {
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
        let mut batch: Vec<PublishRequest> = Vec::with_capacity(PIPELINE_MAX);
        let mut refresh = ExpiryRefresh::new(Instant::now());
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
            let now = Instant::now();
            for request in &mut batch {
                request.refresh_expiry = refresh.due(&request.channel, now);
            }
            // One pipeline per hash slot on a cluster (one in all on one Redis), sent
            // together; a channel's publications stay in order within its slot's pipeline.
            let groups = self.target.by_slot(batch.drain(..), |r| r.channel.as_str());
            let answered = futures_util::future::join_all(
                groups
                    .into_iter()
                    .map(|group| self.send_with_scripts(group)),
            )
            .await;
            for (group, sent) in answered {
                match sent {
                    Ok(seqs) => {
                        metrics
                            .publications
                            .fetch_add(group.len() as u64, Ordering::Relaxed);
                        for (request, (seq, duplicate)) in group.into_iter().zip(seqs) {
                            let published = if duplicate {
                                Published::duplicate_of(seq)
                            } else {
                                Published::new(seq, None)
                            };
                            let _ = request.reply.send(Ok(published));
                        }
                    }
                    Err(error) => {
                        warn!(%error, refused = group.len(), "publications refused");
                        for request in &group {
                            refresh.failed(&request.channel);
                        }
                        for request in group {
                            let _ = request.reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Sends `group` (one hash slot) as one pipeline, loading the scripts again if Redis lost
    /// them (flushed, or a replica promoted without them) and sending once more.
    async fn send_with_scripts(
        &self,
        group: Vec<PublishRequest>,
    ) -> (Vec<PublishRequest>, Result<Vec<(u64, bool)>, BrokerError>) {
        let mut sent = self.send_batch(&group).await;
        if matches!(&sent, Err(Retry::NoScript))
            && let Ok(mut connection) = self.connection().await
            && self.load_scripts(&mut connection).await.is_ok()
        {
            sent = self.send_batch(&group).await;
        }
        let sent = sent.map_err(|retry| match retry {
            Retry::Failed(error) => error,
            Retry::NoScript => BrokerError::Unavailable("Redis lost the publish script".to_owned()),
        });
        (group, sent)
    }

    /// Sends `batch` (one hash slot) as one pipeline of publish script calls, each
    /// [`PER_CALL`] publications at most, then waits for `WS_REDIS_WAIT_REPLICAS` replicas
    /// to have it; the `seq` each got, and whether it was a duplicate.
    async fn send_batch(&self, batch: &[PublishRequest]) -> Result<Vec<(u64, bool)>, Retry> {
        let mut connection = self.connection().await.map_err(Retry::Failed)?;
        let mut pipe = redis::pipe();
        let window_ms = u64::try_from(self.limits.key_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let now_ms = now_ms();
        // Channels this batch creates share one fresh epoch name (unique per channel
        // incarnation is what matters).
        let epoch = new_epoch();
        for call in batch.chunks(PER_CALL) {
            let command = pipe
                .cmd("EVALSHA")
                .arg(self.publish.get_hash())
                .arg(call.len() * 4);
            for request in call {
                for part in ["epoch", "seq", "stream", "keys"] {
                    command.arg(key(&request.channel, part));
                }
            }
            command
                .arg(&epoch)
                .arg(self.limits.size)
                .arg(self.expiry_ms())
                .arg(window_ms)
                .arg(now_ms)
                .arg(self.limits.max_keys.max(1));
            for request in call {
                command
                    .arg(&*request.data)
                    .arg(moved(&request.channel))
                    .arg(u8::from(request.refresh_expiry))
                    .arg(request.key.as_deref().unwrap_or(""));
            }
        }
        if self.wait_replicas > 0 {
            // On a cluster the pipeline goes to the slot's primary, and so does its WAIT.
            pipe.cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(WAIT_FOR_REPLICAS_MS);
        }
        match pipe.query_async::<Vec<Value>>(&mut connection).await {
            Ok(mut replies) => {
                if self.wait_replicas > 0 {
                    let acknowledged = replies.pop().as_ref().and_then(number).unwrap_or(0);
                    if acknowledged < self.wait_replicas as u64 {
                        return Err(Retry::Failed(BrokerError::Unavailable(format!(
                            "Redis has the publication but only {acknowledged} of the \
                             {} replicas WS_REDIS_WAIT_REPLICAS asks for confirmed it within \
                             {WAIT_FOR_REPLICAS_MS} ms; retry with the same idempotency key",
                            self.wait_replicas
                        ))));
                    }
                }
                let mut answers = Vec::with_capacity(batch.len());
                for reply in &replies {
                    let Value::Array(fields) = reply else {
                        return Err(unexpected());
                    };
                    for answer in fields.chunks(3) {
                        let [_, seq, duplicate] = answer else {
                            return Err(unexpected());
                        };
                        let (Some(seq), Some(duplicate)) = (number(seq), number(duplicate)) else {
                            return Err(unexpected());
                        };
                        answers.push((seq, duplicate == 1));
                    }
                }
                if answers.len() == batch.len() {
                    Ok(answers)
                } else {
                    Err(unexpected())
                }
            }
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                Err(Retry::NoScript)
            }
            Err(error) => Err(Retry::Failed(self.lost(&error))),
        }
    }
}
