//! [`Target`]: the Redis the hubs share, one server (`WS_REDIS_URL`) or a Redis Cluster
//! (`WS_REDIS_CLUSTER_NODES`), and [`Connection`], a connection to either that the rest of
//! the broker uses alike.
//!
//! On a cluster every command and pipeline must stay within one hash slot: a channel's keys
//! and shard channel share one (`schema.rs`), and [`Target::by_slot`] splits what names many
//! channels (a publish batch, an `XREAD`, an `SSUBSCRIBE`) into one group per slot. On one
//! server everything is one group, as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, RedisResult,
    Value,
};

use super::announcements::Announcements;
use crate::broker::BrokerError;

/// How long connecting, and each command, may take before Redis counts as lost.
const TIMEOUT: Duration = Duration::from_secs(2);

/// See the module documentation.
pub(super) enum Target {
    /// One Redis: a RESP2 client for commands and reading, a RESP3 one for announcements.
    Single {
        client: Box<redis::Client>,
        notices: Box<redis::Client>,
    },
    /// A Redis Cluster: the same pair over its nodes (redis-rs follows `MOVED`, refreshes
    /// the slots after a failover, and subscribes again after a node's reconnect).
    Cluster {
        client: Box<ClusterClient>,
        notices: Box<ClusterClient>,
        /// The seed nodes, `host:port` without credentials (for logs).
        seeds: String,
    },
}

impl Target {
    /// One Redis at `url`.
    pub(super) fn single(url: &str) -> Result<Self, BrokerError> {
        let invalid =
            |e: redis::RedisError| BrokerError::Unavailable(format!("invalid WS_REDIS_URL: {e}"));
        let client = redis::Client::open(url).map_err(invalid)?;
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let notices = redis::Client::open(info.set_redis_settings(resp3)).map_err(invalid)?;
        Ok(Self::Single {
            client: Box::new(client),
            notices: Box::new(notices),
        })
    }

    /// A Redis Cluster known by its seed `nodes`, whose announcements land on `board`.
    pub(super) fn cluster(
        nodes: &[String],
        board: Arc<Announcements>,
    ) -> Result<Self, BrokerError> {
        let invalid = |e: redis::RedisError| {
            BrokerError::Unavailable(format!("invalid WS_REDIS_CLUSTER_NODES: {e}"))
        };
        let builder = || {
            ClusterClientBuilder::new(nodes.to_vec())
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
        };
        let client = builder().build().map_err(invalid)?;
        let notices = builder()
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(pushes_to(board))
            .build()
            .map_err(invalid)?;
        let seeds = nodes
            .iter()
            .filter_map(|node| {
                redis::Client::open(node.as_str())
                    .ok()
                    .map(|c| c.get_connection_info().addr().to_string())
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self::Cluster {
            client: Box::new(client),
            notices: Box::new(notices),
            seeds,
        })
    }

    /// Whether this is a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The variable that names this target, for errors.
    pub(super) fn variable(&self) -> &'static str {
        match self {
            Self::Single { .. } => "WS_REDIS_URL",
            Self::Cluster { .. } => "WS_REDIS_CLUSTER_NODES",
        }
    }

    /// `host:port` of the Redis (or the cluster's seed nodes), without credentials.
    pub(super) fn name(&self) -> String {
        match self {
            Self::Single { client, .. } => client.get_connection_info().addr().to_string(),
            Self::Cluster { seeds, .. } => seeds.clone(),
        }
    }

    /// A connection for commands (and one more for the follower's reads).
    pub(super) async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Self::Single { client, .. } => client
                .get_multiplexed_async_connection_with_config(&config())
                .await
                .map(Connection::Single),
            Self::Cluster { client, .. } => client
                .get_async_connection()
                .await
                .map(|c| Connection::Cluster(Box::new(c))),
        }
    }

    /// The RESP3 connection the announcements come on; on one server its pushes land on
    /// `board` (a cluster's client was built with it).
    pub(super) async fn connect_notices(
        &self,
        board: &Arc<Announcements>,
    ) -> RedisResult<Connection> {
        match self {
            Self::Single { notices, .. } => {
                let config = config().set_push_sender(pushes_to(board.clone()));
                notices
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Single)
            }
            Self::Cluster { notices, .. } => notices
                .get_async_connection()
                .await
                .map(|c| Connection::Cluster(Box::new(c))),
        }
    }

    /// `items` in groups that each stay within one hash slot (on a cluster; one group on one
    /// server), each group in the order the items came, `key` naming an item's channel.
    pub(super) fn by_slot<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        channel: impl Fn(&T) -> &str,
    ) -> Vec<Vec<T>> {
        if !self.is_cluster() {
            let all: Vec<T> = items.into_iter().collect();
            return if all.is_empty() {
                Vec::new()
            } else {
                vec![all]
            };
        }
        let mut groups: Vec<Vec<T>> = Vec::new();
        let mut index: HashMap<Slot, usize> = HashMap::new();
        for item in items {
            // The channel's keys are `ws:{channel}:…`: their slot is the channel's.
            let slot = Slot::for_key(super::schema::key(channel(&item), ""));
            let at = *index.entry(slot).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[at].push(item);
        }
        groups
    }
}

/// A push sender for redis-rs that hands every push to `board`.
fn pushes_to(
    board: Arc<Announcements>,
) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    move |push| {
        board.push(push);
        Ok(())
    }
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
}

/// A connection to the [`Target`]: to one Redis, or to a cluster (routing each command by
/// its keys).
#[derive(Clone)]
pub(super) enum Connection {
    Single(MultiplexedConnection),
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_groups_by_slot_keeping_each_channels_order_and_one_server_does_not() {
        let cluster = Target::cluster(&["redis://127.0.0.1:1".to_owned()], Arc::default())
            .expect("a valid node URL");
        let items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)];
        let groups = cluster.by_slot(items, |(c, _)| c);
        for group in &groups {
            let slot = Slot::for_key(super::super::schema::key(group[0].0, ""));
            assert!(
                group
                    .iter()
                    .all(|(c, _)| Slot::for_key(super::super::schema::key(c, "")) == slot)
            );
        }
        let of_a: Vec<i32> = groups
            .iter()
            .flatten()
            .filter(|(c, _)| *c == "a")
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(of_a, [1, 2, 3]);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), items.len());
        let single = Target::single("redis://127.0.0.1:1").expect("a valid URL");
        assert_eq!(single.by_slot(items, |(c, _)| c).len(), 1);
        assert!(
            single
                .by_slot(Vec::<(&str, i32)>::new(), |(c, _)| c)
                .is_empty()
        );
    }
}
