//! ws-client's acknowledged publishing, requests and rewind (issue 15), through real sockets:
//! publications survive connection cuts exactly once and in order, every `publish` resolves
//! with its `seq`; a request is answered, refused, timed out, or, cut before its reply,
//! reported as of unknown outcome and never sent twice; `subscribe_with_rewind` starts with
//! the latest publications.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use integration_tests::proxy::TcpProxy;
use integration_tests::redis::RedisServer;
use integration_tests::{RawClient, spawn_server, within};
use serde::{Deserialize, Serialize};
use ws_client::{Error, WebSocketClient};
use ws_protocol::WsMessage;
use ws_server::{ServerBuilder, WebSocketServer};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Numbered {
    n: u64,
}

/// Reads `count` publications of `channel` from a raw subscriber: `(seq, n)` each.
async fn collect(subscriber: &mut RawClient, count: usize) -> Result<Vec<(u64, u64)>> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let received = within("a publication", subscriber.recv()).await;
        let Ok(Ok(received)) = received else {
            bail!(
                "{} of {count} publications arrived; the last: {:?}",
                seen.len(),
                seen.last()
            );
        };
        match received {
            WsMessage::Publication { seq, data, .. } => {
                let numbered: Numbered = serde_json::from_str(data.as_raw().get())?;
                seen.push((seq, numbered.n));
            }
            other => bail!("expected a Publication, got {other:?}"),
        }
    }
    Ok(seen)
}

/// Publishes 0..total through `publisher`, pipelined (up to 64 in flight), cutting the
/// publisher's connection (`cut`) every `total / cuts` publications; returns each seq.
async fn publish_through_cuts(
    publisher: &WebSocketClient,
    total: u64,
    cuts: u64,
    cut: impl Fn(),
) -> Result<BTreeMap<u64, u64>> {
    let mut seqs = BTreeMap::new();
    let mut in_flight = FuturesOrdered::new();
    let every = total / (cuts + 1);
    for n in 0..total {
        if n > 0 && n % every == 0 && n / every <= cuts {
            cut();
        }
        let client = publisher.clone();
        in_flight.push_back(async move { (n, client.publish("orders", &Numbered { n }).await) });
        while in_flight.len() >= 64 {
            if let Some((n, seq)) = in_flight.next().await {
                seqs.insert(n, seq?);
            }
        }
    }
    while let Some((n, seq)) = within("acknowledgements", in_flight.next()).await? {
        seqs.insert(n, seq?);
    }
    Ok(seqs)
}

fn exactly_once_in_order(seen: &[(u64, u64)], seqs: &BTreeMap<u64, u64>, total: u64) -> Result<()> {
    let numbers: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    ensure!(
        numbers == (0..total).collect::<Vec<_>>(),
        "not each exactly once and in order: first difference at {:?}",
        numbers.iter().enumerate().find(|(i, n)| **n != *i as u64)
    );
    for (seq, n) in seen {
        ensure!(
            seqs.get(n) == Some(seq),
            "publish of {n} resolved with {:?}, delivered as {seq}",
            seqs.get(n)
        );
    }
    Ok(())
}

#[tokio::test]
async fn ten_thousand_publications_through_twenty_cuts_arrive_once_each_in_order() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    let mut subscriber = RawClient::connect(hub.local_addr()).await?;
    subscriber.subscribe(&["orders"]).await?;
    let proxy = TcpProxy::start(hub.local_addr()).await?;
    let publisher = WebSocketClient::builder()
        .url(format!("ws://{}", proxy.addr()))
        .reconnect_interval(Duration::from_millis(20))
        // Cut every few hundred milliseconds, a connection never counts as healthy: keep the
        // backoff short so that the test measures delivery, not waiting.
        .max_reconnect_delay(Duration::from_millis(100))
        .build()
        .await?;
    let seqs = publish_through_cuts(&publisher, 10_000, 20, || proxy.cut_existing()).await?;
    ensure!(
        proxy.connections() > 20,
        "the cuts did not happen: {} connections",
        proxy.connections()
    );
    let seen = collect(&mut subscriber, 10_000).await?;
    exactly_once_in_order(&seen, &seqs, 10_000)?;
    // Nothing more: no publication was delivered twice.
    subscriber.send(&WsMessage::Ping).await?;
    ensure!(matches!(
        within("pong", subscriber.recv()).await??,
        WsMessage::Pong
    ));
    publisher.close().await;
    Ok(())
}

#[tokio::test]
async fn across_two_hubs_on_redis_the_publisher_moving_between_them() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    // A stream long enough for the whole run: a hub whose follower falls further behind than
    // the stream keeps (WS_HISTORY_SIZE) sees a jump in `seq`, which is not this test's subject.
    let hub = || {
        ServerBuilder::default()
            .redis_url(redis.url())
            .history(4096, Duration::from_secs(60))
    };
    let a = spawn_server(hub()).await?;
    let b = spawn_server(hub()).await?;
    let mut subscriber = RawClient::connect(b.local_addr()).await?;
    subscriber.subscribe(&["orders"]).await?;
    // The publisher's connection is moved between hubs A and B at every cut.
    let proxy = TcpProxy::start(a.local_addr()).await?;
    let on_a = Arc::new(AtomicUsize::new(1));
    let publisher = WebSocketClient::builder()
        .url(format!("ws://{}", proxy.addr()))
        .reconnect_interval(Duration::from_millis(20))
        // Cut every few hundred milliseconds, a connection never counts as healthy: keep the
        // backoff short so that the test measures delivery, not waiting.
        .max_reconnect_delay(Duration::from_millis(100))
        .build()
        .await?;
    let move_and_cut = || {
        let next = if on_a.fetch_xor(1, Ordering::Relaxed) == 1 {
            b.local_addr()
        } else {
            a.local_addr()
        };
        proxy.redirect(next);
        proxy.cut_existing();
    };
    let seqs = publish_through_cuts(&publisher, 2_000, 10, move_and_cut).await?;
    let seen = collect(&mut subscriber, 2_000).await?;
    exactly_once_in_order(&seen, &seqs, 2_000)?;
    publisher.close().await;
    Ok(())
}

async fn answering_hub() -> Result<WebSocketServer> {
    let hub =
        spawn_server(ServerBuilder::default().request_timeout(Duration::from_secs(5))).await?;
    let mut requests = hub.requests();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = requests.recv().await {
            match request.method.as_str() {
                "double" => {
                    let n: u64 = serde_json::from_str(request.data.as_raw().get()).unwrap_or(0);
                    let _ = request.reply(&(2 * n));
                }
                "refuse" => request.fail("insufficient_funds", "not enough SOL"),
                _ => held.push(request),
            }
        }
    });
    Ok(hub)
}

#[tokio::test]
async fn requests_are_answered_refused_or_timed_out() -> Result<()> {
    let hub = answering_hub().await?;
    let client = WebSocketClient::connect(format!("ws://{}", hub.local_addr())).await?;
    let reply = client
        .request("double", &21, Duration::from_secs(5))
        .await?;
    ensure!(reply.as_raw().get() == "42", "{}", reply.as_raw().get());
    match client.request("refuse", &1, Duration::from_secs(5)).await {
        Err(Error::Refused { code, message }) => {
            ensure!(code == "insufficient_funds" && message == "not enough SOL");
        }
        other => bail!("expected the application's refusal, got {other:?}"),
    }
    match client.request("hold", &1, Duration::from_millis(200)).await {
        Err(Error::OutcomeUnknown(why)) => ensure!(why.contains("in time"), "{why}"),
        other => bail!("expected an unknown outcome, got {other:?}"),
    }
    // A hub with nothing to answer.
    let plain = spawn_server(ServerBuilder::default()).await?;
    let other = WebSocketClient::connect(format!("ws://{}", plain.local_addr())).await?;
    match other.request("double", &1, Duration::from_secs(5)).await {
        Err(Error::Refused { code, .. }) => ensure!(code == "unsupported"),
        other => bail!("expected unsupported, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_publication_the_hub_refuses_for_its_data_is_refused_at_once_not_left_to_time_out()
-> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    // A publish timeout far beyond the test's wait: only the hub's answer can end it.
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", hub.local_addr()))
        .publish_timeout(Duration::from_secs(600))
        .build()
        .await?;
    let deep = ws_protocol::Payload::from_json(format!("{}{}", "[".repeat(65), "]".repeat(65)))?;
    match within("the refusal", client.publish("prices:deep", &deep)).await? {
        Err(Error::Refused { code, message }) => {
            ensure!(code == "bad_request", "{code}");
            ensure!(message.contains("nested"), "{message}");
        }
        other => bail!("expected the hub's refusal, got {other:?}"),
    }
    // The connection goes on: the next publication is published.
    let seq = within("the next", client.publish("prices:deep", &1)).await??;
    ensure!(seq == 1, "seq {seq}");
    Ok(())
}

#[tokio::test]
async fn a_request_cut_before_its_reply_is_of_unknown_outcome_and_not_sent_again() -> Result<()> {
    let hub =
        spawn_server(ServerBuilder::default().request_timeout(Duration::from_secs(30))).await?;
    let mut requests = hub.requests();
    let proxy = TcpProxy::start(hub.local_addr()).await?;
    let client = WebSocketClient::builder()
        .url(format!("ws://{}", proxy.addr()))
        .reconnect_interval(Duration::from_millis(20))
        // Cut every few hundred milliseconds, a connection never counts as healthy: keep the
        // backoff short so that the test measures delivery, not waiting.
        .max_reconnect_delay(Duration::from_millis(100))
        .build()
        .await?;
    let asking = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request("orders.place", &5, Duration::from_secs(10))
                .await
        })
    };
    // The application has the request; the connection dies before it answers.
    let held = within("the request", requests.recv()).await?;
    proxy.cut_existing();
    match within("the outcome", asking).await?? {
        Err(Error::OutcomeUnknown(why)) => ensure!(why.contains("not sent again"), "{why}"),
        other => bail!("expected an unknown outcome, got {other:?}"),
    }
    drop(held);
    // After the reconnect, the hub sees no second copy of the request.
    let publisher_back = within("the reconnect", async {
        while client.publish("probe", &1).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    publisher_back.await?;
    ensure!(
        tokio::time::timeout(Duration::from_millis(300), requests.recv())
            .await
            .is_err(),
        "the request was sent again"
    );
    Ok(())
}

#[tokio::test]
async fn subscribe_with_rewind_starts_with_the_latest_publications() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    for n in 1..=5u64 {
        hub.publish("prices", &Numbered { n }).await?;
    }
    let client = WebSocketClient::connect(format!("ws://{}", hub.local_addr())).await?;
    client.subscribe_with_rewind(["prices"], 2).await?;
    hub.publish("prices", &Numbered { n: 6 }).await?;
    for expected in [4, 5, 6] {
        let got: Numbered = within("a price", client.receive())
            .await??
            .ok_or_else(|| anyhow::anyhow!("ended"))?;
        ensure!(got.n == expected, "got {got:?}, expected {expected}");
    }
    // The builder's rewind applies to every subscribe.
    let rewound = WebSocketClient::builder()
        .url(format!("ws://{}", hub.local_addr()))
        .rewind(1)
        .build()
        .await?;
    rewound.subscribe(["prices"]).await?;
    let got: Numbered = within("the latest", rewound.receive())
        .await??
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    ensure!(got.n == 6, "{got:?}");
    Ok(())
}
