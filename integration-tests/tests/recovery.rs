//! Nothing lost: live gaps filled from the hub's history, a new client resuming from a kept
//! position, redundant connections, make-before-break rotation and conflation, over real
//! sockets.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use integration_tests::proxy::TcpProxy;
use integration_tests::{eventually, spawn_server, within};
use serde::{Deserialize, Serialize};
use ws_client::{Event, WebSocketClient};
use ws_protocol::SlowConsumerPolicy;
use ws_server::WebSocketServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u64,
    #[serde(default)]
    pad: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    n: u64,
    pad: String,
}

/// What a client saw while reading `count` publications of one channel.
#[derive(Debug, Default)]
struct Seen {
    lagged: u64,
    other: Vec<Event>,
}

/// Reads until publication `last` of `channel` arrives, checking that every `seq` from 1
/// comes exactly once and in order; other events are counted or kept.
async fn read_all_in_order(client: &WebSocketClient, last: u64) -> Result<Seen> {
    let mut seen = Seen::default();
    let mut next = 1u64;
    while next <= last {
        match within("event", client.next_event()).await? {
            Some(Event::Publication { seq, data, .. }) => {
                ensure!(seq == next, "expected seq {next}, got {seq}");
                ensure!(data.decode::<Tick>()?.n == seq, "wrong data for {seq}");
                next += 1;
            }
            Some(Event::Lagged { missed, .. }) => seen.lagged += missed,
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            Some(other) => seen.other.push(other),
            None => bail!("the client ended at seq {next}"),
        }
    }
    Ok(seen)
}

fn tick(n: u64, pad: usize) -> Tick {
    Tick {
        n,
        pad: "x".repeat(pad),
    }
}

/// Publishes ticks 1..=count on `channel`, one every `every`.
fn publish_ticks(
    server: &WebSocketServer,
    channel: &'static str,
    count: u64,
    every: Duration,
) -> tokio::task::JoinHandle<Result<()>> {
    let server = server.clone();
    tokio::spawn(async move {
        for n in 1..=count {
            server.publish(channel, &tick(n, 0)).await?;
            tokio::time::sleep(every).await;
        }
        Ok(())
    })
}

/// A hub with a tiny queue under `policy`, and a client subscribed to `channel` that keeps
/// one event at a time, so that it stops reading while the application does not.
async fn slow_reader(
    queue: usize,
    policy: SlowConsumerPolicy,
    channel: &str,
) -> Result<(WebSocketServer, WebSocketClient)> {
    let server = spawn_server(
        WebSocketServer::builder()
            .send_queue_size(queue)
            .slow_consumer_policy(policy)
            .history(10_000, Duration::from_secs(60)),
    )
    .await?;
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", server.local_addr()))
        .event_capacity(1)
        .build()
        .await?;
    client.subscribe([channel]).await?;
    Ok((server, client))
}

#[tokio::test]
async fn a_live_gap_is_detected_and_filled_from_the_history() -> Result<()> {
    // A tiny queue that drops the oldest when full, and a history that reaches back further.
    let (server, client) = slow_reader(8, SlowConsumerPolicy::DropOldest, "book").await?;
    // The application does not read while 20 MB are published: the socket buffers fill,
    // then the hub's queue, which drops publications for this client.
    const COUNT: u64 = 5_000;
    for n in 1..=COUNT {
        server.publish("book", &tick(n, 4096)).await?;
    }
    let seen = read_all_in_order(&client, COUNT).await?;
    ensure!(
        seen.lagged > 0,
        "the hub never dropped anything: no gap was made"
    );
    ensure!(seen.other.is_empty(), "unexpected events: {:?}", seen.other);
    Ok(())
}

#[tokio::test]
async fn redundancy_3_with_one_connection_cut_and_one_stalled_delivers_each_publication_once()
-> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(TcpProxy::start(server.local_addr()).await?);
    }
    let client = WebSocketClient::builder()
        .urls(proxies.iter().map(|p| format!("ws://{}", p.addr())))
        .redundancy(3)
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_delay(Duration::from_millis(200))
        .ping_interval(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(300))
        .build()
        .await?;
    client.subscribe(["book"]).await?;
    eventually("3 subscribers", || server.subscription_count() == 3).await?;
    const COUNT: u64 = 300;
    let publisher = publish_ticks(&server, "book", COUNT, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxies[0].cut_existing();
    proxies[1].freeze_existing();
    let seen = read_all_in_order(&client, COUNT).await?;
    within("publisher", publisher).await???;
    ensure!(seen.other.is_empty(), "unexpected events: {:?}", seen.other);
    let metrics = client.metrics();
    ensure!(metrics.wins.len() == 3, "{metrics:?}");
    ensure!(
        metrics.wins.iter().sum::<u64>() == COUNT,
        "wins must add up to the publications: {metrics:?}"
    );
    ensure!(
        metrics.messages_received > COUNT,
        "copies arrived: {metrics:?}"
    );
    ensure!(
        metrics.reconnects >= 1,
        "the cut was not noticed: {metrics:?}"
    );
    Ok(())
}

#[tokio::test]
async fn rotation_replaces_old_connections_without_gap_or_duplicate() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", server.local_addr()))
        .max_connection_age(Duration::from_millis(250))
        .build()
        .await?;
    client.subscribe(["book"]).await?;
    const COUNT: u64 = 400;
    let publisher = publish_ticks(&server, "book", COUNT, Duration::from_millis(4));
    let seen = read_all_in_order(&client, COUNT).await?;
    within("publisher", publisher).await???;
    ensure!(seen.other.is_empty(), "unexpected events: {:?}", seen.other);
    let metrics = client.metrics();
    ensure!(metrics.rotations >= 2, "{metrics:?}");
    ensure!(
        metrics.reconnects == 0,
        "rotation is not a reconnect: {metrics:?}"
    );
    eventually("the old connections are closed", || {
        server.connection_count() == 1
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn conflation_delivers_the_newest_per_key_and_accounts_for_every_publication() -> Result<()> {
    // The key field is `symbol` by default (`WS_CONFLATE_KEY`).
    let (server, client) = slow_reader(16, SlowConsumerPolicy::Conflate, "quotes").await?;
    const COUNT: u64 = 5_000;
    let symbols = ["SOL-USDC", "BTC-USDC", "ETH-USDC"];
    let mut newest = HashMap::new();
    for n in 1..=COUNT {
        let symbol = symbols[(n % 3) as usize];
        let quote = Quote {
            symbol: symbol.to_owned(),
            n,
            pad: "x".repeat(4096),
        };
        server.publish("quotes", &quote).await?;
        newest.insert(symbol, n);
    }
    let (mut received, mut skipped, mut last_seq) = (0u64, 0u64, 0u64);
    let mut last = HashMap::new();
    while received + skipped < COUNT {
        match within("event", client.next_event()).await? {
            Some(Event::Publication { seq, data, .. }) => {
                ensure!(seq > last_seq, "seq went from {last_seq} to {seq}");
                last_seq = seq;
                let quote: Quote = data.decode()?;
                ensure!(quote.n == seq);
                last.insert(symbols[(seq % 3) as usize], seq);
                received += 1;
            }
            Some(Event::Conflated {
                channel,
                skipped: n,
            }) => {
                ensure!(channel == "quotes");
                skipped += n;
            }
            Some(Event::Connected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(skipped > 0, "nothing was conflated");
    ensure!(
        received + skipped == COUNT,
        "{received} + {skipped} != {COUNT}"
    );
    ensure!(
        last == newest,
        "the newest per symbol: {last:?} vs {newest:?}"
    );
    ensure!(
        server.connection_count() == 1,
        "the slow client was not cut"
    );
    Ok(())
}

/// The next publication's `seq` on `client`, skipping lifecycle events; anything else fails.
async fn next_seq(client: &WebSocketClient) -> Result<u64> {
    loop {
        match within("a publication", client.next_event()).await? {
            Some(Event::Publication { seq, .. }) => return Ok(seq),
            Some(Event::Connected { .. }) => {}
            other => bail!("expected a publication, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_new_client_resumes_from_a_kept_position() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://{}", server.local_addr());
    let first = WebSocketClient::connect(&url).await?;
    first.subscribe(["book"]).await?;
    for n in 1..=5 {
        server.publish("book", &tick(n, 0)).await?;
    }
    for expected in 1..=3 {
        ensure!(next_seq(&first).await? == expected);
    }
    // What a strategy keeps before it stops: the epoch and the last seq it handled.
    let epoch = first
        .epoch("book")
        .ok_or_else(|| anyhow::anyhow!("no epoch"))?;
    first.close().await;

    let second = WebSocketClient::connect(&url).await?;
    second
        .subscribe_since([(
            "book",
            ws_protocol::Position {
                epoch: epoch.clone(),
                seq: 3,
            },
        )])
        .await?;
    server.publish("book", &tick(6, 0)).await?;
    for expected in 4..=6 {
        ensure!(next_seq(&second).await? == expected, "expected {expected}");
    }
    ensure!(second.epoch("book") == Some(epoch));
    second.close().await;

    // A position the hub cannot replay from (another epoch): said, then live delivery.
    let third = WebSocketClient::connect(&url).await?;
    let stale = ws_protocol::Position {
        epoch: "an-old-epoch".to_owned(),
        seq: 2,
    };
    third.subscribe_since([("book", stale)]).await?;
    loop {
        match within("the unrecovered event", third.next_event()).await? {
            Some(Event::Connected { .. }) => {}
            Some(Event::Unrecovered { channel, seq, .. }) => {
                ensure!(channel == "book" && seq <= 6, "{channel} {seq}");
                break;
            }
            other => bail!("expected Unrecovered, got {other:?}"),
        }
    }
    server.publish("book", &tick(7, 0)).await?;
    loop {
        // The hub may replay its new epoch's history first; 7 comes, once, in order.
        let seq = next_seq(&third).await?;
        if seq == 7 {
            break;
        }
        ensure!(seq < 7, "past 7: {seq}");
    }
    Ok(())
}
