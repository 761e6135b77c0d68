//! Several hubs sharing channels through a real Redis (`WS_REDIS_URL`).

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use integration_tests::proxy::TcpProxy;
use integration_tests::redis::RedisServer;
use integration_tests::{RawClient, eventually, http_get, spawn_server, within};
use ws_client::{Event, WebSocketClient};
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

async fn hub(redis_url: &str) -> Result<WebSocketServer> {
    spawn_server(
        WebSocketServer::builder()
            .redis_url(redis_url)
            .admin_addr("127.0.0.1:0")
            .history(1000, Duration::from_secs(60)),
    )
    .await
}

/// `(seq, n)` of the next publication a raw client receives.
async fn next_publication(client: &mut RawClient) -> Result<(u64, u64)> {
    loop {
        match client.recv().await? {
            WsMessage::Publication { seq, data, .. } => return Ok((seq, data.decode()?)),
            WsMessage::Subscribed { .. } => {}
            other => bail!("expected a publication, got {other:?}"),
        }
    }
}

/// Publishes `n` on `hub`, retrying while Redis is unreachable; how many tries it took.
async fn publish_retrying(hub: &WebSocketServer, channel: &str, n: u64) -> Result<u32> {
    within("a publish accepted", async {
        let mut tries = 1;
        while hub.publish(channel, &n).await.is_err() {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tries
    })
    .await
}

#[tokio::test]
async fn a_publication_on_one_hub_reaches_the_others_in_one_order() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let (a, b, c) = (
        hub(&redis.url()).await?,
        hub(&redis.url()).await?,
        hub(&redis.url()).await?,
    );
    let mut on_b = RawClient::connect(b.local_addr()).await?;
    let mut on_c = RawClient::connect(c.local_addr()).await?;
    on_b.subscribe(&["book"]).await?;
    on_c.subscribe(&["book"]).await?;
    // Publishers on two hubs at once: one order for everyone, decided by Redis.
    let mut on_a = RawClient::connect(a.local_addr()).await?;
    for n in 0..100u64 {
        on_a.publish("book", &n.to_string()).await?;
        ensure!(b.publish("book", &(1000 + n)).await?.seq > 0);
    }
    let mut seen_b = Vec::new();
    let mut seen_c = Vec::new();
    for expected in 1..=200u64 {
        let (seq_b, n_b) = within("hub B", next_publication(&mut on_b)).await??;
        let (seq_c, n_c) = within("hub C", next_publication(&mut on_c)).await??;
        ensure!(
            seq_b == expected && seq_c == expected,
            "seq {seq_b}/{seq_c}, expected {expected}"
        );
        seen_b.push(n_b);
        seen_c.push(n_c);
    }
    ensure!(seen_b == seen_c, "hubs B and C delivered different orders");
    let from_a: Vec<u64> = seen_b.iter().copied().filter(|n| *n < 1000).collect();
    ensure!(
        from_a == (0..100).collect::<Vec<_>>(),
        "A's publications out of order"
    );
    // Hub A has no subscriber for `book`: it does not follow the channel.
    ensure!(a.channel_count() == 0);
    Ok(())
}

#[tokio::test]
async fn a_channels_keys_in_redis_expire_after_a_day_idle() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let hub = hub(&redis.url()).await?;
    // A channel nobody follows, and one a hub follows; each published on a few times.
    let mut subscriber = RawClient::connect(hub.local_addr()).await?;
    subscriber.subscribe(&["followed"]).await?;
    for n in 0..3u64 {
        hub.publish("lonely", &n).await?;
        hub.publish("followed", &n).await?;
    }
    for channel in ["lonely", "followed"] {
        for part in ["epoch", "seq", "stream"] {
            let ttl = redis
                .query(&format!("PTTL ws:{{{channel}}}:{part}"))
                .await?;
            let ms: i64 = ttl.trim_start_matches(':').parse()?;
            ensure!(
                (23 * 3600 * 1000..=24 * 3600 * 1000).contains(&ms),
                "{channel} {part}: PTTL {ttl}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_client_moving_from_hub_a_to_hub_b_recovers_every_publication() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let (a, b) = (hub(&redis.url()).await?, hub(&redis.url()).await?);
    // The "load balancer": sends the client to A, later to B.
    let balancer = TcpProxy::start(a.local_addr()).await?;
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", balancer.addr()))
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_delay(Duration::from_millis(200))
        .build()
        .await?;
    client.subscribe(["book"]).await?;
    const COUNT: u64 = 300;
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            for n in 1..=COUNT {
                b.publish("book", &n).await?;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    balancer.redirect(b.local_addr());
    balancer.cut_existing();
    let mut next = 1u64;
    while next <= COUNT {
        match within("event", client.next_event()).await? {
            Some(Event::Publication { seq, data, .. }) => {
                ensure!(seq == next, "expected {next}, got {seq}");
                ensure!(data.decode::<u64>()? == next);
                next += 1;
            }
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    within("publisher", publisher).await???;
    ensure!(client.metrics().reconnects >= 1, "the client never moved");
    eventually("hub A forgets the channel", || a.channel_count() == 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_dropped_redis_connection_loses_no_accepted_publication() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    // Hub B reaches Redis through a proxy that drops its connections now and then.
    let link = TcpProxy::start(redis.addr()).await?;
    let a = hub(&redis.url()).await?;
    let b = hub(&format!("redis://{}", link.addr())).await?;
    let mut on_b = RawClient::connect(b.local_addr()).await?;
    on_b.subscribe(&["ticks"]).await?;
    const COUNT: u64 = 500;
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 1..=COUNT {
                a.publish("ticks", &n).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        link.cut_existing();
    }
    for expected in 1..=COUNT {
        let (seq, n) = within("publication on B", next_publication(&mut on_b)).await??;
        ensure!(
            (seq, n) == (expected, expected),
            "got {seq}/{n}, expected {expected}"
        );
    }
    within("publisher", publisher).await???;
    let metrics = http_get(b.admin_addr().expect("admin"), "/metrics").await?;
    ensure!(
        !metrics.contains("ws_broker_outages_total 0\n"),
        "the dropped connections were not counted: {metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_redis_restart_is_reported_survived_and_told_to_clients() -> Result<()> {
    let Some(mut redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let (a, b) = (hub(&redis.url()).await?, hub(&redis.url()).await?);
    let client = WebSocketClient::connect(format!("ws://{}", b.local_addr())).await?;
    client.subscribe(["ticks"]).await?;
    for n in 1..=50u64 {
        a.publish("ticks", &n).await?;
    }
    let mut n = 1u64;
    while n <= 50 {
        match within("event", client.next_event()).await? {
            Some(Event::Publication { seq, .. }) => {
                ensure!(seq == n);
                n += 1;
            }
            Some(Event::Connected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    let admin = b.admin_addr().expect("admin");
    ensure!(
        http_get(admin, "/health")
            .await?
            .starts_with("HTTP/1.1 200")
    );

    redis.stop().await?;
    eventually("a publish is refused while Redis is down", || {
        futures_util::FutureExt::now_or_never(a.publish("ticks", &0u64)).is_none_or(|r| r.is_err())
    })
    .await?;
    within("/health turns 503", async {
        while !http_get(admin, "/health")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 503") && r.contains("redis unavailable"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    ensure!(
        a.publish("ticks", &0u64).await.is_err(),
        "published without Redis"
    );

    // Redis comes back empty (no persistence): the channel starts over in a new epoch.
    redis.restart().await?;
    let tries = publish_retrying(&a, "ticks", 51).await?;
    for n in 52..=60u64 {
        a.publish("ticks", &n).await?;
    }
    let mut unrecovered = false;
    let mut next = 51u64;
    while next <= 60 {
        match within("event", client.next_event()).await? {
            Some(Event::Unrecovered { channel, .. }) => {
                ensure!(channel == "ticks");
                unrecovered = true;
            }
            Some(Event::Publication { data, .. }) => {
                ensure!(
                    unrecovered,
                    "a new-epoch publication came before Unrecovered"
                );
                ensure!(data.decode::<u64>()? == next);
                next += 1;
            }
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        http_get(admin, "/health")
            .await?
            .starts_with("HTTP/1.1 200")
    );
    let metrics = http_get(admin, "/metrics").await?;
    ensure!(metrics.contains("ws_broker_up 1\n"), "{metrics}");
    ensure!(
        !metrics.contains("ws_broker_outages_total 0\n"),
        "{metrics}"
    );
    eprintln!("the first publish after the restart took {tries} tries");
    Ok(())
}

/// The value of the metric line starting with `name` in the hub's `/metrics`.
async fn metric(hub: &WebSocketServer, name: &str) -> Result<f64> {
    let admin = hub
        .admin_addr()
        .ok_or_else(|| anyhow::anyhow!("no admin address"))?;
    let text = within("the metrics", http_get(admin, "/metrics")).await??;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in the metrics"))
}

#[tokio::test]
async fn a_hub_following_many_channels_reads_only_those_that_moved() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    const COLD: usize = 10_000;
    let publisher = hub(&redis.url()).await?;
    let follower = spawn_server(
        WebSocketServer::builder()
            .redis_url(redis.url())
            .admin_addr("127.0.0.1:0")
            .max_subscriptions(COLD + 1),
    )
    .await?;
    let mut subscriber = RawClient::connect(follower.local_addr()).await?;
    let names: Vec<String> = (0..COLD).map(|i| format!("cold:{i}")).collect();
    for chunk in names.chunks(1000) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        subscriber.subscribe(&chunk).await?;
    }
    subscriber.subscribe(&["hot"]).await?;
    ensure!(metric(&follower, "ws_broker_followed_channels").await? == (COLD + 1) as f64);
    let rounds = r#"ws_broker_follow_rounds_total{kind="moved"}"#;
    let streams = r#"ws_broker_streams_read_total{kind="moved"}"#;
    let carried = "ws_broker_carried_total";
    let (rounds_before, streams_before, carried_before) = (
        metric(&follower, rounds).await?,
        metric(&follower, streams).await?,
        metric(&follower, carried).await?,
    );

    // One hot channel moving, one cold one once: every publication arrives, in order.
    for n in 1..=2000u64 {
        publisher.publish("hot", &n).await?;
    }
    publisher.publish("cold:7", &7u64).await?;
    let mut hot = 0;
    let mut cold = 0;
    while hot < 2000 || cold < 1 {
        match within("a publication", subscriber.recv()).await?? {
            WsMessage::Publication { channel, seq, .. } if channel == "hot" => {
                hot += 1;
                ensure!(seq == hot, "hot: seq {seq}, expected {hot}");
            }
            WsMessage::Publication { channel, .. } if channel == "cold:7" => cold += 1,
            other => bail!("unexpected {other:?}"),
        }
    }
    // Announcements carry the publications (delivered without reading the stream), and the
    // rounds that read streams read the channels that moved, not all 10,001.
    let rounds_done = metric(&follower, rounds).await? - rounds_before;
    let streams_read = metric(&follower, streams).await? - streams_before;
    let carried_done = metric(&follower, carried).await? - carried_before;
    ensure!(
        carried_done >= 1.0,
        "no publication delivered from its announcement"
    );
    ensure!(
        carried_done + streams_read >= 2.0,
        "{carried_done} carried, {streams_read} streams read"
    );
    ensure!(
        streams_read <= 2.0 * rounds_done,
        "{streams_read} streams read in {rounds_done} rounds"
    );
    within("the follow lag to drain", async {
        while metric(&follower, "ws_broker_follow_lag").await.ok() != Some(0.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_channel_whose_keys_vanish_while_connected_starts_over_on_every_hub() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let (a, b) = (hub(&redis.url()).await?, hub(&redis.url()).await?);
    let mut on_b = RawClient::connect(b.local_addr()).await?;
    on_b.subscribe(&["ticks"]).await?;
    for n in 1..=20u64 {
        a.publish("ticks", &n).await?;
    }
    for expected in 1..=20u64 {
        let (seq, n) = within("before", next_publication(&mut on_b)).await??;
        ensure!(seq == expected && n == expected, "seq {seq} n {n}");
    }
    // The keys go (an operator's FLUSHALL, an eviction) while every connection stays up.
    ensure!(redis.query("FLUSHALL").await? == "+OK");
    for n in 21..=25u64 {
        a.publish("ticks", &n).await?;
    }
    // Hub B tells its subscriber the channel started over, then delivers the new epoch.
    let mut got = Vec::new();
    let mut told = false;
    while got.len() < 5 {
        match within("a publication of the new epoch", on_b.recv()).await?? {
            WsMessage::Publication { seq, data, .. } => {
                ensure!(told, "a new-epoch publication came before the notice");
                got.push((seq, data.decode::<u64>()?));
            }
            WsMessage::Subscribed { positions, .. } => {
                ensure!(positions.get("ticks").is_some_and(|p| !p.recovered));
                told = true;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        got == (1..=5).zip(21..=25).collect::<Vec<_>>(),
        "after the keys vanished: {got:?}"
    );
    Ok(())
}
