//! The link to Redis: connect (commands, reader, and the RESP3 connection the followed
//! channels' announcements come on), load the scripts, check the mirrored channels' epochs,
//! follow until Redis fails, then report the outage once and reconnect with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use ws_protocol::backoff::Backoff;

use super::RedisBroker;
use super::schema::{ATTACH, PUBLISH, text};
use super::target::Connection;
use crate::broker::BrokerError;
use crate::channel::Channels;

/// Reconnect delays.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl RedisBroker {
    /// Follows every mirrored channel until `token` is cancelled, reconnecting whenever
    /// Redis is lost. Owned by the server's task tracker.
    pub(crate) async fn run(self: Arc<Self>, channels: Arc<Channels>, token: CancellationToken) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF, None);
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
                    backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF, None);
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
                    *self.notices.write().unwrap_or_else(|p| p.into_inner()) = None;
                    self.set_up(false);
                    self.outages.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %why, "lost Redis; publishing and subscribing are refused until it is back");
                    down_since = Some(Instant::now());
                }
                Err(error) if down_since.is_none() => {
                    let variable = self.target.variable();
                    error!(%error, "cannot reach Redis ({variable}); publishing and subscribing are refused until it is reachable; retrying");
                    down_since = Some(Instant::now());
                }
                Err(error) => debug!(%error, "cannot reach Redis yet"),
            }
            // Without an attempt limit the delays never end.
            let delay = backoff.next().unwrap_or(MAX_BACKOFF);
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens the command and reader connections, then checks the mirrored channels' epochs.
    pub(super) async fn connect(&self) -> Result<Connection, BrokerError> {
        let commands = self.target.connect().await.map_err(|e| self.lost(&e))?;
        let mut reader = self.target.connect().await.map_err(|e| self.lost(&e))?;
        // One reply from one Redis; a map of each primary's from a cluster.
        let info: redis::Value = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut commands.clone())
            .await
            .map_err(|e| self.lost(&e))?;
        let infos = match info {
            redis::Value::Map(nodes) => nodes.into_iter().map(|(_, info)| info).collect(),
            one => vec![one],
        };
        if let Some(version) = infos
            .iter()
            .filter_map(text)
            .find_map(|i| too_old(&i).map(str::to_owned))
        {
            return Err(BrokerError::Unavailable(format!(
                "Redis {version} at {}: the hub needs Redis 7.0 or newer (sharded pub/sub, SPUBLISH)",
                self.target.variable()
            )));
        }
        let notices = self
            .target
            .connect_notices(&self.announcements)
            .await
            .map_err(|e| self.lost(&e))?;
        // A disconnection reported by an earlier connection says nothing about this one.
        let _ = self.announcements.take_lost();
        self.load_scripts(&mut commands.clone()).await?;
        *self.commands.write().unwrap_or_else(|p| p.into_inner()) = Some(commands);
        *self.notices.write().unwrap_or_else(|p| p.into_inner()) = Some(notices);
        let followed: Vec<String> = self.mirrors().keys().cloned().collect();
        self.follow_announcements(&followed).await?;
        // A channel Redis lost meanwhile (restart without persistence) starts over.
        let names: Vec<String> = self.mirrors().keys().cloned().collect();
        for name in names {
            let (epoch, _, _) = self.read_channel(&name).await?;
            if let Some(mirror) = self.mirrors().get_mut(&name)
                && mirror.epoch != epoch
            {
                warn!(channel = %name, "Redis lost the channel's history: it starts over in a new epoch");
                mirror.restart(epoch, 0);
            }
        }
        self.refresh_shards(&mut reader).await;
        self.set_up(true);
        info!(redis = %self.target.name(), cluster = self.target.is_cluster(), "connected to Redis");
        Ok(reader)
    }

    /// Loads the scripts, so that pipelined `EVALSHA`s find them.
    pub(super) async fn load_scripts(
        &self,
        connection: &mut Connection,
    ) -> Result<(), BrokerError> {
        // On a cluster, redis-rs sends `SCRIPT LOAD` to every primary.
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
}

/// The version `INFO server` reports, if it is older than 7.0.
fn too_old(info: &str) -> Option<&str> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?
        .trim();
    let major: u32 = version.split('.').next()?.parse().ok()?;
    (major < 7).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::too_old;

    #[test]
    fn a_redis_older_than_7_is_named() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert_eq!(too_old(&info("6.2.14")), Some("6.2.14"));
        assert_eq!(too_old(&info("7.0.15")), None);
        assert_eq!(too_old(&info("8.2.1")), None);
        assert_eq!(too_old("no version here"), None);
    }
}
