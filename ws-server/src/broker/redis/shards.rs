//! The shards' state for `/metrics` (`ws_broker_shard_up{shard}`): one Redis is one shard,
//! up while the hub's link is; on a Redis Cluster each primary serving slots is a shard,
//! read from `CLUSTER NODES` once a second by the follower (`follower.rs`), up while the hub's link is and
//! the cluster does not mark it failing.

use redis::aio::ConnectionLike;

use super::RedisBroker;

impl RedisBroker {
    /// Re-reads the cluster's primaries (on one Redis, nothing to read).
    pub(super) async fn refresh_shards(&self, connection: &mut impl ConnectionLike) {
        if !self.target.is_cluster() {
            return;
        }
        match redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(connection)
            .await
        {
            Ok(nodes) => {
                let shards = primaries(&nodes);
                if !shards.is_empty() {
                    *self.shards.lock().unwrap_or_else(|p| p.into_inner()) = shards;
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the cluster's nodes"),
        }
    }

    /// Each shard and whether it serves, with the hub's link `up`.
    pub(super) fn shard_states(&self, up: bool) -> Vec<(String, bool)> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards
            .iter()
            .map(|(name, serving)| (name.clone(), up && *serving))
            .collect()
    }
}

/// The primaries serving slots in a `CLUSTER NODES` reply: `host:port`, and whether the
/// cluster sees them well (not `fail`, not `fail?`, link connected).
fn primaries(nodes: &str) -> Vec<(String, bool)> {
    let mut primaries: Vec<(String, bool)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // id addr flags primary ping pong epoch link slot…
            let (addr, flags, link) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || fields.len() <= 8 {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            let failing = flags.iter().any(|f| *f == "fail" || *f == "fail?");
            Some((addr.to_owned(), !failing && *link == "connected"))
        })
        .collect();
    primaries.sort();
    primaries
}

#[cfg(test)]
mod tests {
    use super::primaries;

    #[test]
    fn primaries_with_slots_are_the_shards_and_a_failing_one_is_down() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail? - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected
e7d1 127.0.0.1:30001@40001,host-a myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            primaries(nodes),
            [
                ("127.0.0.1:30001".to_owned(), true),
                ("127.0.0.1:30002".to_owned(), true),
                ("127.0.0.1:30003".to_owned(), false),
            ]
        );
    }
}
