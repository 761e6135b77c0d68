//! Acknowledged and idempotent publishing over the wire (issue 15), against the embedded
//! broker and against two hubs sharing a real Redis: `Publish` with an `id` is answered with
//! `Published` (or an `Error` carrying the `id`); a repeated `key` on a channel is published
//! once, and its `Published` says `duplicate` with the first `seq`.

use std::collections::HashMap;

use anyhow::{Result, bail, ensure};
use integration_tests::redis::RedisServer;
use integration_tests::{RawClient, spawn_server, within};
use ws_protocol::{Payload, WsMessage, codes};
use ws_server::{ServerBuilder, WebSocketServer};

fn publish(channel: &str, data: &str, id: Option<u64>, key: Option<&str>) -> WsMessage {
    WsMessage::Publish {
        channel: channel.to_owned(),
        data: Payload::from_json(data).unwrap_or_else(|e| panic!("{data}: {e}")),
        id,
        key: key.map(str::to_owned),
        ack_range: false,
    }
}

/// The next frame that is not a publication (a publisher also subscribed sees its own).
async fn answer(client: &mut RawClient) -> Result<WsMessage> {
    loop {
        match within("an answer", client.recv()).await?? {
            WsMessage::Publication { .. } => continue,
            other => return Ok(other),
        }
    }
}

/// The `seq` and data of the next publication `client` receives.
async fn next_publication(client: &mut RawClient) -> Result<(u64, String)> {
    loop {
        match within("a publication", client.recv()).await?? {
            WsMessage::Publication { seq, data, .. } => {
                return Ok((seq, data.as_raw().get().to_owned()));
            }
            WsMessage::Published { .. } => continue,
            other => bail!("expected a Publication, got {other:?}"),
        }
    }
}

async fn acknowledged_and_idempotent(
    publisher_hub: &WebSocketServer,
    subscriber_hub: &WebSocketServer,
) -> Result<()> {
    let mut subscriber = RawClient::connect(subscriber_hub.local_addr()).await?;
    subscriber.subscribe(&["orders"]).await?;
    let mut publisher = RawClient::connect(publisher_hub.local_addr()).await?;

    publisher
        .send(&publish("orders", r#"{"n":1}"#, Some(7), Some("k-1")))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Published {
            id: 7,
            channel,
            seq: 1,
            duplicate: false,
            count: 1,
        } if channel == "orders" => {}
        other => bail!("expected Published id 7 seq 1, got {other:?}"),
    }
    // The same key again, even with other data: not published, answered with the first seq.
    publisher
        .send(&publish("orders", r#"{"n":"again"}"#, Some(8), Some("k-1")))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Published {
            id: 8,
            seq: 1,
            duplicate: true,
            ..
        } => {}
        other => bail!("expected a duplicate of seq 1, got {other:?}"),
    }
    // Another key, and a publication without an id (not answered), in order.
    publisher
        .send(&publish("orders", r#"{"n":2}"#, Some(9), Some("k-2")))
        .await?;
    publisher
        .send(&publish("orders", r#"{"n":3}"#, None, None))
        .await?;
    publisher
        .send(&publish("orders", r#"{"n":4}"#, Some(10), None))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Published {
            id: 9,
            seq: 2,
            duplicate: false,
            ..
        } => {}
        other => bail!("expected Published id 9 seq 2, got {other:?}"),
    }
    match answer(&mut publisher).await? {
        WsMessage::Published { id: 10, seq: 4, .. } => {}
        other => bail!("expected Published id 10 seq 4, got {other:?}"),
    }
    // Refusals carry the id.
    publisher.send(&publish("", "1", Some(11), None)).await?;
    match answer(&mut publisher).await? {
        WsMessage::Error {
            code, id: Some(11), ..
        } if code == codes::INVALID_CHANNEL => {}
        other => bail!("expected invalid_channel for id 11, got {other:?}"),
    }
    let long_key = "k".repeat(129);
    publisher
        .send(&publish("orders", "1", Some(12), Some(&long_key)))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Error {
            code,
            id: Some(12),
            message,
            ..
        } if code == codes::BAD_REQUEST => {
            ensure!(message.contains("128"), "{message}");
        }
        other => bail!("expected bad_request for id 12, got {other:?}"),
    }
    // The subscriber got each publication once, in order: the duplicate was not delivered.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_publication(&mut subscriber).await?);
    }
    ensure!(
        seen == [
            (1, r#"{"n":1}"#.to_owned()),
            (2, r#"{"n":2}"#.to_owned()),
            (3, r#"{"n":3}"#.to_owned()),
            (4, r#"{"n":4}"#.to_owned()),
        ],
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn embedded_publishes_are_acknowledged_and_keys_publish_once() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    acknowledged_and_idempotent(&hub, &hub).await?;
    // A key is per channel: the same key on another channel is a new publication.
    let mut publisher = RawClient::connect(hub.local_addr()).await?;
    publisher
        .send(&publish("fills", "1", Some(1), Some("k-1")))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Published {
            seq: 1,
            duplicate: false,
            ..
        } => {}
        other => bail!("expected a new publication on another channel, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn past_the_key_bound_a_channels_oldest_keys_go_and_only_a_full_hub_refuses() -> Result<()> {
    let mut config = ws_protocol::WebSocketConfig::default();
    config.idempotency_max_keys = 2;
    let hub = spawn_server(ServerBuilder::from_config(config).admin_addr("127.0.0.1:0")).await?;
    let mut publisher = RawClient::connect(hub.local_addr()).await?;
    for (id, key) in [(1, "a"), (2, "b"), (3, "c")] {
        publisher
            .send(&publish("c", "1", Some(id), Some(key)))
            .await?;
        ensure!(matches!(
            answer(&mut publisher).await?,
            WsMessage::Published {
                duplicate: false,
                ..
            }
        ));
    }
    // "a" was the channel's oldest: forgotten to make room for "c"; "b" is still known.
    publisher
        .send(&publish("c", "1", Some(4), Some("b")))
        .await?;
    ensure!(matches!(
        answer(&mut publisher).await?,
        WsMessage::Published {
            seq: 2,
            duplicate: true,
            ..
        }
    ));
    // Another channel with no key of its own cannot take one while "c" holds them all.
    publisher
        .send(&publish("d", "1", Some(5), Some("x")))
        .await?;
    match answer(&mut publisher).await? {
        WsMessage::Error {
            code,
            id: Some(5),
            message,
            ..
        } if code == codes::UNAVAILABLE => {
            ensure!(message.contains("WS_IDEMPOTENCY_MAX_KEYS"), "{message}");
        }
        other => bail!("expected unavailable past the key bound, got {other:?}"),
    }
    // A publication without a key still goes.
    publisher.send(&publish("d", "1", Some(6), None)).await?;
    ensure!(matches!(
        answer(&mut publisher).await?,
        WsMessage::Published { seq: 1, .. }
    ));
    let metrics = hub_metrics(&hub).await?;
    ensure!(metrics.contains("ws_idempotency_keys 2"), "{metrics}");
    ensure!(
        metrics.contains("ws_idempotency_evicted_total 1"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("ws_idempotency_refused_total 1"),
        "{metrics}"
    );
    Ok(())
}

/// `GET /metrics` of `hub`'s admin endpoint.
async fn hub_metrics(hub: &WebSocketServer) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(admin) = hub.admin_addr() else {
        bail!("the hub has no admin address");
    };
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    within("the metrics", stream.read_to_string(&mut response)).await??;
    Ok(response)
}

#[tokio::test]
async fn across_hubs_on_redis_a_key_publishes_once_cluster_wide() -> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let a = spawn_server(ServerBuilder::default().redis_url(redis.url())).await?;
    let b = spawn_server(ServerBuilder::default().redis_url(redis.url())).await?;
    acknowledged_and_idempotent(&a, &b).await?;
    // The same key through the other hub: the cluster remembers it.
    let mut on_b = RawClient::connect(b.local_addr()).await?;
    on_b.send(&publish("orders", "1", Some(1), Some("k-2")))
        .await?;
    match answer(&mut on_b).await? {
        WsMessage::Published {
            seq: 2,
            duplicate: true,
            ..
        } => {}
        other => bail!("expected the cluster to know k-2 as seq 2, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn through_redis_a_burst_mixing_channels_and_repeated_keys_publishes_each_key_once()
-> Result<()> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(());
    };
    let hub = spawn_server(ServerBuilder::default().redis_url(redis.url())).await?;
    // 300 publications at once (so that they share the hub's pipelines and script calls):
    // on 3 channels, unkeyed ones between keyed ones, each key sent twice on its channel
    // (`i` and `i + 6`).
    let sends = (0..300u64).map(|i| {
        let hub = hub.clone();
        async move {
            let channel = format!("burst:{}", i % 3);
            let result = if i % 2 == 0 {
                hub.publish_with_key(&channel, &format!("k{}", i / 12), &i)
                    .await
            } else {
                hub.publish(&channel, &i).await
            };
            result.map(|published| (i, channel, published))
        }
    });
    let published = within("300 publications", futures_util::future::join_all(sends)).await?;
    let mut keyed: HashMap<(String, u64), Vec<(u64, bool)>> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for result in published {
        let (i, channel, published) = result?;
        if i % 2 == 0 {
            keyed
                .entry((channel.clone(), i / 12))
                .or_default()
                .push((published.seq, published.duplicate));
        }
        if !published.duplicate {
            seqs.entry(channel).or_default().push(published.seq);
        }
    }
    // Each key: published once, the other send answered as its duplicate with its `seq`.
    ensure!(keyed.len() == 75, "{} keys", keyed.len());
    for (key, answers) in &keyed {
        let originals = answers.iter().filter(|(_, duplicate)| !duplicate).count();
        ensure!(
            originals == 1 && answers.len() == 2 && answers[0].0 == answers[1].0,
            "{key:?}: {answers:?}"
        );
    }
    // Each channel's publications got 1..n without a gap or a repeat.
    for (channel, mut got) in seqs {
        got.sort_unstable();
        let n = got.len() as u64;
        ensure!(got == (1..=n).collect::<Vec<_>>(), "{channel}: {got:?}");
    }
    Ok(())
}

#[tokio::test]
async fn in_process_publishing_with_a_key_is_idempotent_too() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    let mut subscriber = RawClient::connect(hub.local_addr()).await?;
    subscriber.subscribe(&["fills"]).await?;
    let first = hub.publish_with_key("fills", "fill-1", &1).await?;
    let again = hub.publish_with_key("fills", "fill-1", &1).await?;
    ensure!(first.seq == 1 && !first.duplicate, "{first:?}");
    ensure!(again.seq == 1 && again.duplicate, "{again:?}");
    hub.publish("fills", &2).await?;
    ensure!(next_publication(&mut subscriber).await? == (1, "1".to_owned()));
    ensure!(next_publication(&mut subscriber).await? == (2, "2".to_owned()));
    ensure!(hub.publish_with_key("fills", "", &3).await.is_err());
    Ok(())
}

/// Sends `messages` with one flush, so that the hub reads them as one burst.
async fn send_burst(client: &mut RawClient, messages: &[WsMessage]) -> Result<()> {
    use futures_util::SinkExt;
    for message in messages {
        let text = message.to_json();
        client
            .ws
            .feed(tokio_tungstenite::tungstenite::Message::text(text))
            .await?;
    }
    client.ws.flush().await?;
    Ok(())
}

fn ranged(channel: &str, id: u64, key: &str) -> WsMessage {
    let mut message = publish(channel, "1", Some(id), Some(key));
    if let WsMessage::Publish { ack_range, .. } = &mut message {
        *ack_range = true;
    }
    message
}

#[tokio::test]
async fn publications_sent_with_ack_range_are_acknowledged_in_runs_one_seq_each() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    let mut publisher = RawClient::connect(hub.local_addr()).await?;
    let burst: Vec<WsMessage> = (1..=50)
        .map(|id| ranged("r", id, &format!("k{id}")))
        .collect();
    send_burst(&mut publisher, &burst).await?;
    // Every id answered once, at its own seq, in fewer frames than publications.
    let (mut next, mut frames) = (1u64, 0);
    while next <= 50 {
        match answer(&mut publisher).await? {
            WsMessage::Published {
                id,
                channel,
                seq,
                duplicate: false,
                count,
            } if channel == "r" && id == next && seq == next && count >= 1 => {
                next += count;
                frames += 1;
            }
            other => bail!("expected Published from id {next}, got {other:?}"),
        }
    }
    ensure!(next == 51, "acknowledged past the last id: {next}");
    ensure!(
        frames < 50,
        "50 publications in one burst took {frames} frames"
    );

    // A run ends at a publication that did not ask for one, at a duplicate, and at another
    // channel; every answer keeps its place.
    let mut plain = publish("r", "1", Some(52), Some("k52"));
    if let WsMessage::Publish { ack_range, .. } = &mut plain {
        *ack_range = false;
    }
    send_burst(
        &mut publisher,
        &[
            ranged("r", 51, "k51"),
            plain,
            ranged("r", 53, "k1"),
            ranged("s", 54, "k54"),
            ranged("r", 55, "k55"),
        ],
    )
    .await?;
    let expected = [
        (51, "r", 51, false),
        (52, "r", 52, false),
        (53, "r", 1, true),
        (54, "s", 1, false),
        (55, "r", 53, false),
    ];
    for (want_id, want_channel, want_seq, want_duplicate) in expected {
        match answer(&mut publisher).await? {
            WsMessage::Published {
                id,
                channel,
                seq,
                duplicate,
                count: 1,
            } if id == want_id
                && channel == want_channel
                && seq == want_seq
                && duplicate == want_duplicate => {}
            other => {
                bail!("expected Published {want_id} ({want_channel} seq {want_seq}), got {other:?}")
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_run_is_not_held_back_by_the_publishers_own_deliveries() -> Result<()> {
    // The publisher subscribes to its channel: its deliveries are written (and flushed) as a
    // batch, which must take the pending run of acknowledgements along.
    let hub = spawn_server(ServerBuilder::default()).await?;
    let mut publisher = RawClient::connect(hub.local_addr()).await?;
    publisher.subscribe(&["own"]).await?;
    for id in 1..=20 {
        publisher
            .send(&ranged("own", id, &format!("own-{id}")))
            .await?;
        match answer(&mut publisher).await? {
            WsMessage::Published { id: got, seq, .. } if got == id && seq == id => {}
            other => bail!("expected Published {id}, got {other:?}"),
        }
    }
    Ok(())
}
