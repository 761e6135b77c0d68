//! Following the mirrored channels: one reader reads every mirrored stream with `XREAD
//! BLOCK` from the last `seq` delivered and fans each entry out locally; attaching a channel
//! reads its position and recent history; the keys of mirrored channels are kept from
//! expiring.

use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::warn;

use super::RedisBroker;
use super::schema::{entry_seq, key, new_epoch, number, text};
use crate::broker::BrokerError;
use crate::channel::Channels;

/// How long one `XREAD` waits for new entries; also how soon a newly attached channel is
/// followed (its history is seeded at once, so nothing is missed meanwhile).
const BLOCK: Duration = Duration::from_millis(100);
/// The most entries one `XREAD` returns per stream.
const READ_COUNT: usize = 1024;
/// How often the expiry of mirrored channels is refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

impl RedisBroker {
    /// Reads a channel's epoch, `seq` and recent history from Redis.
    pub(super) async fn read_channel(
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

    /// Reads every mirrored stream from where it stopped and fans entries out, until Redis
    /// fails; returns why.
    pub(super) async fn follow(
        &self,
        mut reader: MultiplexedConnection,
        channels: &Channels,
    ) -> BrokerError {
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

    /// Keeps mirrored channels' keys from expiring while they have subscribers here.
    pub(super) async fn refresh(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), BrokerError> {
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
