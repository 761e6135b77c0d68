//! The publish pipeline: publications queue to one task that sends them to Redis in order,
//! many per round trip (`EVALSHA` of the publish script), and answers each with its `seq`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RedisBroker;
use super::schema::{key, moved, new_epoch};
use crate::broker::BrokerError;
use crate::channel::Published;
use crate::metrics::HubMetrics;

/// Publications waiting for Redis, over all connections of this hub; a full queue makes
/// publishers wait (TCP backpressure).
pub(super) const PUBLISH_QUEUE: usize = 4096;
/// The most publications sent to Redis in one pipeline.
const PIPELINE_MAX: usize = 256;

/// A publication waiting to be sent to Redis.
pub(super) struct PublishRequest {
    pub(super) channel: String,
    pub(super) data: Box<RawValue>,
    /// The idempotency key, if the publication has one.
    pub(super) key: Option<String>,
    pub(super) reply: oneshot::Sender<Result<Published, BrokerError>>,
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
                    for (request, (seq, duplicate)) in batch.drain(..).zip(seqs) {
                        let published = if duplicate {
                            Published::duplicate_of(seq)
                        } else {
                            Published::new(seq, None)
                        };
                        let _ = request.reply.send(Ok(published));
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

    /// Sends `batch` as one pipeline; the `seq` each got, and whether it was a duplicate.
    async fn send_batch(&self, batch: &[PublishRequest]) -> Result<Vec<(u64, bool)>, Retry> {
        let mut connection = self.connection().await.map_err(Retry::Failed)?;
        let mut pipe = redis::pipe();
        let window_ms = u64::try_from(self.limits.key_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        for request in batch {
            let command = pipe
                .cmd("EVALSHA")
                .arg(self.publish.get_hash())
                .arg(if request.key.is_some() { 4 } else { 3 })
                .arg(key(&request.channel, "epoch"))
                .arg(key(&request.channel, "seq"))
                .arg(key(&request.channel, "stream"));
            if request.key.is_some() {
                command.arg(key(&request.channel, "keys"));
            }
            command
                .arg(new_epoch())
                .arg(request.data.get())
                .arg(self.limits.size)
                .arg(self.expiry_ms())
                .arg(window_ms)
                .arg(moved(&request.channel));
            if let Some(idempotency) = &request.key {
                command.arg(idempotency).arg(self.limits.max_keys.max(1));
            }
        }
        match pipe
            .query_async::<Vec<(String, u64, u8)>>(&mut connection)
            .await
        {
            Ok(replies) => Ok(replies
                .into_iter()
                .map(|(_, seq, duplicate)| (seq, duplicate == 1))
                .collect()),
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                Err(Retry::NoScript)
            }
            Err(error) => Err(Retry::Failed(self.lost(&error))),
        }
    }
}
