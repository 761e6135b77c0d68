//! Following the mirrored channels: one reader delivers the publications their
//! announcements carried when they continue where a channel stands here, and otherwise reads
//! the streams announced as moved (and, every [`SWEEP_EVERY`], all of them) with `XREAD` from
//! the last `seq` delivered, fanning each entry out locally; attaching a channel reads its
//! position and recent history; the keys of mirrored channels are kept from expiring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::{HashMap, HashSet, VecDeque};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::{RedisResult, Value};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::warn;

use super::announcements::Carried;
use super::schema::{channel_of, entry_seq, key, moved, new_epoch, now_ms, number, text};
use super::stream_reply::streams;
use super::target::Connection;
use super::{ATTACH_GRACE, RedisBroker};
use crate::broker::BrokerError;
use crate::channel::Channels;

/// How often a round reads every mirrored stream, announced or not: the backstop for an
/// announcement lost in a way the hub did not see (see `announcements.rs` for those it
/// sees). Rare, since on 10,000 followed channels a sweep costs what 10,000 moved ones do.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The most entries one `XREAD` returns per stream.
const READ_COUNT: usize = 1024;
/// How often the follower checks its link while nothing moves (`PING`; on a cluster,
/// `CLUSTER NODES` for the shards' state in `/metrics`).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How many `XREAD`s are in flight at once (a cluster reads per hash slot).
const READS_IN_FLIGHT: usize = 64;
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
        // Entry times are the publishing hubs' clocks (see `now_ms`).
        let now_ms = now_ms();
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

    /// Delivers the mirrored channels' publications, until Redis fails; returns why. Each
    /// pass takes the channels announced since the last one (`announcements.rs`), so its cost
    /// follows the channels that moved, not the channels followed: a channel whose
    /// announcements carried every publication after its last `seq` gets them delivered
    /// without a read, the others' streams are read from their last `seq`; every
    /// [`SWEEP_EVERY`] a pass reads every mirrored stream, which catches a lost
    /// announcement. Reads do not wait for each other: a channel announced while other
    /// channels' reads are in flight is read at once (on a cluster a pass may be many
    /// `XREAD`s, one per hash slot, and a hot channel does not wait for them), but a channel
    /// has one read in flight at most (what it carried meanwhile is read after it), so its
    /// publications are delivered in order.
    pub(super) async fn follow(&self, mut reader: Connection, channels: &Channels) -> BrokerError {
        let mut refreshed = Instant::now();
        // The first pass after (re)connecting reads everything.
        let mut next_sweep = Instant::now();
        let mut next_check = Instant::now() + CHECK_EVERY;
        let mut reads = FuturesUnordered::new();
        // Groups of streams waiting for a place among the reads in flight.
        let mut waiting: VecDeque<Vec<(String, u64)>> = VecDeque::new();
        // Channels with a read in flight or waiting, and those announced meanwhile.
        let mut reading: HashSet<String> = HashSet::new();
        let mut deferred: HashSet<String> = HashSet::new();
        // Channels announced before this hub followed them (an attach between its history
        // read and its mirror), kept by name for `ATTACH_GRACE`: read once followed.
        let mut early: HashMap<String, Instant> = HashMap::new();
        loop {
            if self.announcements.take_lost() {
                return BrokerError::Unavailable(
                    "the connection for announcements closed".to_owned(),
                );
            }
            if let Err(error) = self.apply_unfollows().await {
                return error;
            }
            if let Err(error) = self.follow_again().await {
                return error;
            }
            let sweep = Instant::now() >= next_sweep;
            let mut moved = self.announcements.take();
            let mut carried = Vec::new();
            let wanted: Vec<(String, u64)> = {
                let mut mirrors = self.mirrors();
                early.retain(|name, at| {
                    let followed = mirrors.contains_key(name);
                    if followed {
                        moved.entry(name.clone()).or_default().read = true;
                    }
                    !followed && at.elapsed() < ATTACH_GRACE
                });
                let mut wanted = Vec::with_capacity(moved.len());
                for (name, moved) in moved {
                    let Some(mirror) = mirrors.get_mut(&name) else {
                        early.entry(name).or_insert_with(Instant::now);
                        continue;
                    };
                    if let Some(epoch) = moved.epoch.as_deref()
                        && epoch != mirror.epoch
                    {
                        // Redis started the channel over while this hub stayed connected
                        // (its keys were lost: a FLUSHALL, an eviction, a failover to an
                        // empty replica): from here on the mirror stands before the new
                        // epoch's first entry, so what was carried is delivered, or the new
                        // stream read, from its start.
                        mirror.restart(epoch.to_owned(), 0);
                    }
                    mirror.announced = mirror.announced.max(moved.highest);
                    if reading.contains(&name) {
                        // Read again when that read is done.
                        deferred.insert(name);
                        continue;
                    }
                    match moved.continuing(mirror.last, &mirror.epoch) {
                        Some(publications) => {
                            // The announcements carried what comes next: no read needed.
                            if let Some(newest) = publications.last() {
                                mirror.last = newest.seq;
                            }
                            carried.push((name, publications));
                        }
                        None => wanted.push((name, mirror.last)),
                    }
                }
                if sweep {
                    wanted = mirrors.iter().map(|(n, m)| (n.clone(), m.last)).collect();
                }
                wanted
                    .into_iter()
                    .filter(|(name, _)| {
                        let busy = reading.contains(name);
                        if busy {
                            deferred.insert(name.clone());
                        }
                        !busy
                    })
                    .collect()
            };
            for (name, publications) in carried {
                self.rounds.carried(publications.len());
                for publication in publications {
                    let Carried { seq, epoch, data } = publication;
                    channels.deliver(&name, &epoch, seq, data.get());
                }
            }
            if sweep {
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            if !wanted.is_empty() {
                self.rounds.count(sweep, wanted.len());
                reading.extend(wanted.iter().map(|(name, _)| name.clone()));
                // One `XREAD` per hash slot on a cluster (one for all on one Redis).
                waiting.extend(self.target.by_slot(wanted, |(name, _)| name.as_str()));
            }
            while reads.len() < READS_IN_FLIGHT
                && let Some(group) = waiting.pop_front()
            {
                reads.push(read_streams(reader.clone(), group));
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + CHECK_EVERY;
                if let Err(error) = self.check_link(&mut reader).await {
                    return error;
                }
            }
            if refreshed.elapsed() >= REFRESH_EVERY {
                refreshed = Instant::now();
                if let Err(error) = self.refresh(&reader).await {
                    return error;
                }
            }
            tokio::select! {
                Some((names, read)) = reads.next() => {
                    match read {
                        Ok(reply) => self.deliver(reply, channels),
                        Err(error) => return self.lost(&error),
                    }
                    for name in names {
                        reading.remove(&name);
                        if deferred.remove(&name) {
                            // Announced while it was being read: read it again.
                            self.announcements.announce(&name, 0);
                        }
                    }
                }
                () = self.announcements.wait() => {}
                () = tokio::time::sleep_until(next_sweep.min(next_check)) => {}
            }
        }
    }

    /// Fans out what one `XREAD` returned, in each stream's order.
    fn deliver(&self, reply: Value, channels: &Channels) {
        for stream in streams(reply) {
            let Some(name) = channel_of(&stream.key, "stream") else {
                continue;
            };
            if stream.returned >= READ_COUNT {
                // More than one read's worth: read on in the next round.
                self.announcements.announce(name, 0);
            }
            for id in &stream.malformed {
                warn!(channel = %name, id, "malformed stream entry skipped");
            }
            // Entries come in stream order: the mirror stands at the newest once they are out.
            let Some(newest) = stream.entries.last() else {
                continue;
            };
            {
                let mut mirrors = self.mirrors();
                let Some(mirror) = mirrors.get_mut(name) else {
                    continue;
                };
                if mirror.epoch == newest.epoch {
                    mirror.last = mirror.last.max(newest.seq);
                } else {
                    // A new epoch: what was read and announced in the old one means nothing.
                    mirror.restart(newest.epoch.clone(), newest.seq);
                }
            }
            for entry in stream.entries {
                channels.deliver(name, &entry.epoch, entry.seq, entry.data.get());
            }
        }
    }

    /// Checks the link (see [`CHECK_EVERY`]): a dead Redis is noticed even when nothing moves.
    async fn check_link(&self, reader: &mut Connection) -> Result<(), BrokerError> {
        if self.target.is_cluster() {
            self.refresh_shards(reader).await;
            return Ok(());
        }
        redis::cmd("PING")
            .query_async::<()>(reader)
            .await
            .map_err(|error| self.lost(&error))
    }

    /// Publications announced on the followed channels and not yet delivered here.
    pub(super) fn follow_lag(&self) -> u64 {
        let mirrors = self.mirrors();
        let behind: u64 = mirrors
            .values()
            .map(|m| m.announced.saturating_sub(m.last))
            .sum();
        behind
            + self
                .announcements
                .pending_lag(|c| mirrors.get(c).map(|m| m.announced.max(m.last)))
    }

    /// Subscribes to the announcements of `names` on the announcements' connection.
    pub(super) async fn follow_announcements(&self, names: &[String]) -> Result<(), BrokerError> {
        if names.is_empty() {
            return Ok(());
        }
        let connection = self.notices().ok_or_else(|| {
            BrokerError::Unavailable("no connection to Redis for announcements".to_owned())
        })?;
        self.per_slot(connection, names.iter().cloned(), |group| {
            announcements_command("SSUBSCRIBE", group)
        })
        .await
    }

    /// Runs the pipeline `command` makes for each hash slot's group of `names` (one group on
    /// one Redis), [`READS_IN_FLIGHT`] at a time; the first failure is returned.
    async fn per_slot(
        &self,
        connection: Connection,
        names: impl IntoIterator<Item = String>,
        command: impl Fn(&[String]) -> redis::Pipeline,
    ) -> Result<(), BrokerError> {
        let groups = self.target.by_slot(names, String::as_str);
        let mut sent = futures_util::stream::iter(groups)
            .map(|group| {
                let pipe = command(&group);
                let mut connection = connection.clone();
                async move { pipe.exec_async(&mut connection).await }
            })
            .buffer_unordered(READS_IN_FLIGHT);
        while let Some(result) = sent.next().await {
            result.map_err(|e| self.lost(&e))?;
        }
        Ok(())
    }

    /// Subscribes again to the announcements of followed channels whose subscription Redis
    /// ended (a slot moved, a primary failed over), then marks them as moved: what was
    /// announced meanwhile is read in this round.
    async fn follow_again(&self) -> Result<(), BrokerError> {
        let ended = self.announcements.take_unsubscribed();
        if ended.is_empty() {
            return Ok(());
        }
        let followed: Vec<String> = {
            let mirrors = self.mirrors();
            ended
                .into_iter()
                .filter(|name| mirrors.contains_key(name))
                .collect()
        };
        if followed.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            channels = followed.len(),
            "Redis ended announcements: following them again"
        );
        self.follow_announcements(&followed).await?;
        for name in &followed {
            self.announcements.announce(name, 0);
        }
        Ok(())
    }

    /// Stops the announcements of channels the sweep dropped (unless followed again since).
    async fn apply_unfollows(&self) -> Result<(), BrokerError> {
        let dropped: Vec<String> = {
            let mut unfollow = self.unfollow.lock().unwrap_or_else(|p| p.into_inner());
            if unfollow.is_empty() {
                return Ok(());
            }
            let mirrors = self.mirrors();
            unfollow
                .drain(..)
                .filter(|name| !mirrors.contains_key(name))
                .collect()
        };
        if dropped.is_empty() {
            return Ok(());
        }
        let Some(connection) = self.notices() else {
            return Ok(());
        };
        self.per_slot(connection, dropped, |group| {
            announcements_command("SUNSUBSCRIBE", group)
        })
        .await
    }

    /// Keeps mirrored channels' keys from expiring while they have subscribers here.
    pub(super) async fn refresh(&self, connection: &Connection) -> Result<(), BrokerError> {
        let names: Vec<String> = self.mirrors().keys().cloned().collect();
        self.per_slot(connection.clone(), names, |group| {
            let mut pipe = redis::pipe();
            for name in group {
                for part in ["epoch", "seq", "stream"] {
                    pipe.cmd("PEXPIRE")
                        .arg(key(name, part))
                        .arg(self.expiry_ms())
                        .ignore();
                }
            }
            pipe
        })
        .await
    }
}

/// `command` (`SSUBSCRIBE` or `SUNSUBSCRIBE`) of the announcements of `channels` (one hash
/// slot on a cluster), as a pipeline.
fn announcements_command(command: &str, channels: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd(command)
        .arg(channels.iter().map(|n| moved(n)).collect::<Vec<_>>())
        .ignore();
    pipe
}

/// Reads `streams` (one hash slot on a cluster), each from after its last `seq` delivered;
/// returns their names with what was read.
async fn read_streams(
    mut reader: Connection,
    streams: Vec<(String, u64)>,
) -> (Vec<String>, RedisResult<Value>) {
    let (keys, ids): (Vec<String>, Vec<String>) = streams
        .iter()
        .map(|(name, last)| (key(name, "stream"), format!("0-{last}")))
        .unzip();
    let read = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("STREAMS")
        .arg(&keys)
        .arg(&ids)
        .query_async(&mut reader)
        .await;
    (streams.into_iter().map(|(name, _)| name).collect(), read)
}

/// The follower's rounds, for `/metrics`: how many, and how many streams they read; and the
/// publications delivered from their announcements, without a read.
#[derive(Debug, Default)]
pub(super) struct Rounds {
    carried: AtomicU64,
    moved: AtomicU64,
    moved_streams: AtomicU64,
    sweeps: AtomicU64,
    swept_streams: AtomicU64,
}

impl Rounds {
    /// One round read `streams` streams; `sweep`: all of them, else the announced ones.
    fn count(&self, sweep: bool, streams: usize) {
        let (rounds, read) = if sweep {
            (&self.sweeps, &self.swept_streams)
        } else {
            (&self.moved, &self.moved_streams)
        };
        rounds.fetch_add(1, Ordering::Relaxed);
        read.fetch_add(streams as u64, Ordering::Relaxed);
    }

    /// `publications` were delivered from their announcements.
    fn carried(&self, publications: usize) {
        self.carried
            .fetch_add(publications as u64, Ordering::Relaxed);
    }

    /// Publications delivered from their announcements.
    pub(super) fn carried_total(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// `(rounds, streams read)` of announced rounds, then of sweeps.
    pub(super) fn totals(&self) -> [(u64, u64); 2] {
        [
            (
                self.moved.load(Ordering::Relaxed),
                self.moved_streams.load(Ordering::Relaxed),
            ),
            (
                self.sweeps.load(Ordering::Relaxed),
                self.swept_streams.load(Ordering::Relaxed),
            ),
        ]
    }
}
