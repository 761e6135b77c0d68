//! Hubs sharing channels through a real Redis Cluster (`WS_REDIS_CLUSTER_NODES`), made by
//! the test: three primaries (and a replica each where a primary fails over).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use integration_tests::proxy::TcpProxy;
use integration_tests::redis_cluster::RedisCluster;
use integration_tests::{RawClient, http_get, spawn_server, within};
use ws_client::{Event, WebSocketClient};
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

async fn hub(cluster: &RedisCluster, wait_replicas: usize) -> Result<WebSocketServer> {
    spawn_server(
        WebSocketServer::builder()
            .redis_cluster_nodes(cluster.urls())
            .redis_wait_replicas(wait_replicas)
            .admin_addr("127.0.0.1:0")
            .history(1000, Duration::from_secs(60)),
    )
    .await
}

/// Channel names whose keys spread over every primary of `cluster`, `per_primary` each.
async fn channels_on_every_primary(
    cluster: &RedisCluster,
    per_primary: usize,
) -> Result<Vec<String>> {
    let primaries = cluster.primaries().await?;
    ensure!(primaries.len() == 3, "expected 3 primaries: {primaries:?}");
    let mut by_primary: HashMap<u16, Vec<String>> = HashMap::new();
    for i in 0..500 {
        let name = format!("book:{i}");
        let primary = cluster.primary_of(&format!("ws:{{{name}}}:seq")).await?;
        let names = by_primary.entry(primary).or_default();
        if names.len() < per_primary {
            names.push(name);
        }
        if by_primary.len() == primaries.len()
            && by_primary.values().all(|n| n.len() == per_primary)
        {
            return Ok(by_primary.into_values().flatten().collect());
        }
    }
    bail!("500 names did not cover every primary: {by_primary:?}")
}

/// Reads publications until `count` arrived: per channel, `(seq, n)` in arrival order.
async fn read_publications(
    client: &mut RawClient,
    count: usize,
) -> Result<BTreeMap<String, Vec<(u64, u64)>>> {
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for _ in 0..count {
        loop {
            match within("a publication", client.recv()).await?? {
                WsMessage::Publication { channel, seq, data } => {
                    seen.entry(channel).or_default().push((seq, data.decode()?));
                    break;
                }
                WsMessage::Subscribed { .. } => {}
                other => bail!("expected a publication, got {other:?}"),
            }
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn hubs_on_a_3_primary_cluster_deliver_one_order_per_channel() -> Result<()> {
    let Some(cluster) = RedisCluster::start(3, 0).await? else {
        return Ok(());
    };
    let channels = channels_on_every_primary(&cluster, 2).await?;
    let (a, b) = (hub(&cluster, 0).await?, hub(&cluster, 0).await?);
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut on_a = RawClient::connect(a.local_addr()).await?;
    let mut on_b = RawClient::connect(b.local_addr()).await?;
    on_a.subscribe(&names).await?;
    on_b.subscribe(&names).await?;
    // Publishers on both hubs at once, on every channel: Redis decides one order each.
    const PER_HUB: u64 = 40;
    let publish = |hub: WebSocketServer, base: u64, channels: Vec<String>| {
        tokio::spawn(async move {
            for n in 0..PER_HUB {
                for channel in &channels {
                    hub.publish(channel, &(base + n)).await?;
                }
            }
            anyhow::Ok(())
        })
    };
    let from_a = publish(a.clone(), 0, channels.clone());
    let from_b = publish(b.clone(), 1000, channels.clone());
    let total = channels.len() * 2 * PER_HUB as usize;
    let seen_a = read_publications(&mut on_a, total).await?;
    let seen_b = read_publications(&mut on_b, total).await?;
    within("publishers", from_a).await???;
    within("publishers", from_b).await???;
    ensure!(seen_a == seen_b, "the hubs delivered different orders");
    for (channel, seen) in &seen_a {
        let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
        ensure!(
            seqs == (1..=2 * PER_HUB).collect::<Vec<_>>(),
            "{channel}: seqs {seqs:?}"
        );
        for base in [0, 1000] {
            let mine: Vec<u64> = seen
                .iter()
                .map(|(_, n)| *n)
                .filter(|n| (base..base + PER_HUB).contains(n))
                .collect();
            ensure!(
                mine == (base..base + PER_HUB).collect::<Vec<_>>(),
                "{channel}: one hub's publications out of order: {mine:?}"
            );
        }
    }
    // /metrics names each primary as a shard, up.
    let metrics = http_get(a.admin_addr().expect("admin"), "/metrics").await?;
    for port in cluster.primaries().await? {
        ensure!(
            metrics.contains(&format!(
                "ws_broker_shard_up{{shard=\"127.0.0.1:{port}\"}} 1"
            )),
            "primary {port} missing from /metrics: {metrics}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_client_moving_between_hubs_on_a_cluster_recovers_every_publication() -> Result<()> {
    let Some(cluster) = RedisCluster::start(3, 0).await? else {
        return Ok(());
    };
    let channels = channels_on_every_primary(&cluster, 1).await?;
    let (a, b) = (hub(&cluster, 0).await?, hub(&cluster, 0).await?);
    let balancer = TcpProxy::start(a.local_addr()).await?;
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", balancer.addr()))
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_delay(Duration::from_millis(200))
        .build()
        .await?;
    client.subscribe(channels.clone()).await?;
    const COUNT: u64 = 100;
    let publisher = {
        let (b, channels) = (b.clone(), channels.clone());
        tokio::spawn(async move {
            for n in 1..=COUNT {
                for channel in &channels {
                    b.publish(channel, &n).await?;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    balancer.redirect(b.local_addr());
    balancer.cut_existing();
    let mut next: HashMap<String, u64> = channels.iter().map(|c| (c.clone(), 1)).collect();
    while next.values().any(|n| *n <= COUNT) {
        match within("event", client.next_event()).await? {
            Some(Event::Publication {
                channel, seq, data, ..
            }) => {
                let expected = next.get_mut(&channel).expect("a subscribed channel");
                ensure!(
                    seq == *expected,
                    "{channel}: expected {expected}, got {seq}"
                );
                ensure!(data.decode::<u64>()? == seq);
                *expected += 1;
            }
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    within("publisher", publisher).await???;
    ensure!(client.metrics().reconnects >= 1, "the client never moved");
    Ok(())
}

#[tokio::test]
async fn a_primary_failing_over_loses_no_acknowledged_publication() -> Result<()> {
    let Some(mut cluster) = RedisCluster::start(3, 1).await? else {
        return Ok(());
    };
    let channel = "ticks";
    // Publications are acknowledged once the primary's replica has them.
    let (a, b) = (hub(&cluster, 1).await?, hub(&cluster, 1).await?);
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", b.local_addr()))
        .reconnect_interval(Duration::from_millis(50))
        .build()
        .await?;
    client.subscribe([channel]).await?;
    const COUNT: u64 = 300;
    let (acknowledged_tx, mut acknowledged) = tokio::sync::mpsc::unbounded_channel();
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 1..=COUNT {
                // Retried until acknowledged, under one idempotency key: once at most.
                let seq = loop {
                    match a.publish_with_key(channel, &format!("n{n}"), &n).await {
                        Ok(published) => break published.seq,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                let _ = acknowledged_tx.send((n, seq));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Mid-stream, the channel's primary dies; its replica takes over.
    within("100 acknowledged", async {
        let mut count = 0;
        while count < 100 && acknowledged.recv().await.is_some() {
            count += 1;
        }
    })
    .await?;
    let killed = cluster.fail_over(&format!("ws:{{{channel}}}:seq")).await?;
    // The promoted replica has no replica of its own: publications wait (and are refused
    // after 1 s, then retried) until the old primary rejoins as its replica.
    cluster.rejoin(killed).await?;
    tokio::time::timeout(Duration::from_secs(60), publisher).await??;
    let mut delivered = BTreeSet::new();
    let mut last_seq = 0;
    while delivered.len() < COUNT as usize {
        match within(
            "every acknowledged publication delivered",
            client.next_event(),
        )
        .await?
        {
            Some(Event::Publication { seq, data, .. }) => {
                ensure!(seq == last_seq + 1, "after {last_seq} came {seq}");
                last_seq = seq;
                let n: u64 = data.decode()?;
                ensure!(delivered.insert(n), "{n} delivered twice");
            }
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("unexpected {other:?} (killed primary {killed})"),
        }
    }
    ensure!(delivered == (1..=COUNT).collect::<BTreeSet<_>>());
    let metrics = http_get(a.admin_addr().expect("admin"), "/metrics").await?;
    ensure!(
        !metrics.contains(&format!("shard=\"127.0.0.1:{killed}\"}} 1")),
        "the old primary (now a replica) is still reported as a shard: {metrics}"
    );
    ensure!(
        metrics.contains("ws_broker_up 1"),
        "the hub did not reconnect: {metrics}"
    );
    Ok(())
}
