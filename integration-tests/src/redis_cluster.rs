//! [`RedisCluster`]: a real Redis Cluster on loopback (`redis-server --cluster-enabled yes`
//! per node, joined by `redis-cli --cluster create`), for the tests of hubs sharing channels
//! through `WS_REDIS_CLUSTER_NODES`; its primaries can be killed to make a replica take over.
//!
//! Like [`RedisServer`](crate::redis::RedisServer), without `redis-server` (and `redis-cli`)
//! installed [`RedisCluster::start`] returns `None` after printing `SKIPPED`, unless
//! `WS_REQUIRE_REDIS=1`, which makes it a failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::within;

/// One node: its port and process (`None` once killed).
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A Redis Cluster of child processes without persistence, in a temporary folder; killed
/// and removed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    folder: PathBuf,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until the
    /// cluster serves every slot.
    ///
    /// # Errors
    /// If a node does not start, the cluster does not form in time, or Redis is not
    /// installed while `WS_REQUIRE_REDIS=1`.
    pub async fn start(primaries: usize, replicas: usize) -> Result<Option<Self>> {
        if !crate::redis::installed(&["redis-server", "redis-cli"])? {
            return Ok(None);
        }
        let folder = std::env::temp_dir().join(format!(
            "ws-redis-cluster-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&folder).context("creating the cluster's folder")?;
        let mut cluster = Self {
            nodes: Vec::new(),
            folder,
        };
        for _ in 0..primaries * (1 + replicas) {
            let port = free_port_with_bus()?;
            let child = cluster.spawn(port)?;
            cluster.nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        for node in &cluster.nodes {
            within("a cluster node to answer PING", async {
                while cli(node.port, &["PING"]).await.ok().as_deref() != Some("PONG") {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("running redis-cli --cluster create")?;
        if !created.success() {
            bail!("redis-cli --cluster create failed: {created}");
        }
        cluster.wait_until_serving().await?;
        Ok(Some(cluster))
    }

    fn spawn(&self, port: u16) -> Result<Child> {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.folder)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")
    }

    /// The nodes still running, as `redis://127.0.0.1:PORT` (for `WS_REDIS_CLUSTER_NODES`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of the primaries serving slots, as a live node sees them.
    ///
    /// # Errors
    /// If no node answers.
    pub async fn primaries(&self) -> Result<Vec<u16>> {
        let nodes = self.ask(&["CLUSTER", "NODES"]).await?;
        Ok(serving_primaries(&nodes)
            .into_iter()
            .map(|(port, _)| port)
            .collect())
    }

    /// The port of the primary serving the slot of `key`.
    ///
    /// # Errors
    /// If no node answers or none serves the slot.
    pub async fn primary_of(&self, key: &str) -> Result<u16> {
        let slot: u16 = self.ask(&["CLUSTER", "KEYSLOT", key]).await?.parse()?;
        let nodes = self.ask(&["CLUSTER", "NODES"]).await?;
        serving_primaries(&nodes)
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|range| range.contains(&slot)))
            .map(|(port, _)| port)
            .with_context(|| format!("no primary serves slot {slot} of {key}"))
    }

    /// Kills the primary serving `key`'s slot and waits until a replica serves it instead
    /// (and the cluster serves every slot again); the port of the primary killed.
    ///
    /// # Errors
    /// If the failover does not happen in time.
    pub async fn fail_over(&mut self, key: &str) -> Result<u16> {
        let killed = self.primary_of(key).await?;
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == killed)
            && let Some(mut child) = node.child.take()
        {
            child.kill().await?;
        }
        within("a replica to take over the killed primary's slots", async {
            loop {
                if let Ok(port) = self.primary_of(key).await
                    && port != killed
                    && self.serving().await
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        Ok(killed)
    }

    /// Starts the killed node on `port` again: it rejoins the cluster (its `nodes.conf` is
    /// kept) as a replica of the primary that took its place. Waits until every slot is
    /// served and the node replicates.
    ///
    /// # Errors
    /// If it does not start or rejoin in time.
    pub async fn rejoin(&mut self, port: u16) -> Result<()> {
        let child = self.spawn(port)?;
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.child = Some(child);
        }
        within("the restarted node to replicate its new primary", async {
            loop {
                if let Ok(info) = cli(port, &["INFO", "replication"]).await
                    && info.contains("role:slave")
                    && info.contains("master_link_status:up")
                    && self.serving().await
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// Asks a live node.
    async fn ask(&self, args: &[&str]) -> Result<String> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(reply) = cli(node.port, args).await {
                return Ok(reply);
            }
        }
        bail!("no cluster node answers {args:?}")
    }

    /// Whether every live replica's link to its primary is up.
    async fn replicas_in_sync(&self) -> bool {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match cli(node.port, &["INFO", "replication"]).await {
                Ok(info) if info.contains("role:master") => {}
                Ok(info) if info.contains("master_link_status:up") => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether every live node says `cluster_state:ok`.
    async fn serving(&self) -> bool {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match cli(node.port, &["CLUSTER", "INFO"]).await {
                Ok(info) if info.contains("cluster_state:ok") => {}
                _ => return false,
            }
        }
        true
    }

    async fn wait_until_serving(&self) -> Result<()> {
        within(
            "the cluster to serve every slot, its replicas in sync",
            async {
                while !self.serving().await || !self.replicas_in_sync().await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The primaries serving slots in a `CLUSTER NODES` reply (not marked failing): each one's
/// port and slot ranges.
fn serving_primaries(nodes: &str) -> Vec<(u16, Vec<std::ops::RangeInclusive<u16>>)> {
    nodes
        .lines()
        .filter_map(|line| {
            // id addr flags primary ping pong epoch link slot…
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if fields.len() <= 8
                || !flags.split(',').any(|f| f == "master")
                || flags.contains("fail")
            {
                return None;
            }
            let port = fields[1]
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let ranges = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    Some(from.parse().ok()?..=to.parse().ok()?)
                })
                .collect();
            Some((port, ranges))
        })
        .collect()
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_port_with_bus() -> Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port with a free cluster bus port")
}

/// `redis-cli -p PORT ARGS…`, its output trimmed.
async fn cli(port: u16, args: &[&str]) -> Result<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        bail!("redis-cli {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
