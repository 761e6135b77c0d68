//! What a subscribe replays before live publications (issue 15): `rewind: N` gives the last N
//! publications the history holds; after an epoch change (a restarted hub), a subscriber
//! that comes back with its old position gets `recovered: false` and then everything the new
//! epoch accepted, from `seq` 1, when the history still holds it.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use integration_tests::{RawClient, spawn_server, within};
use ws_protocol::{ChannelPosition, Position, WsMessage};
use ws_server::ServerBuilder;

async fn subscribed(client: &mut RawClient, channel: &str) -> Result<ChannelPosition> {
    match within("Subscribed", client.recv()).await?? {
        WsMessage::Subscribed { mut positions, .. } => positions
            .remove(channel)
            .ok_or_else(|| anyhow::anyhow!("no position for {channel}")),
        other => bail!("expected Subscribed, got {other:?}"),
    }
}

async fn seqs(client: &mut RawClient, n: usize) -> Result<Vec<u64>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match within("a publication", client.recv()).await?? {
            WsMessage::Publication { seq, .. } => seen.push(seq),
            other => bail!("expected a Publication, got {other:?}"),
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn rewind_replays_the_latest_then_live_ones_without_a_seam() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    for n in 1..=5u64 {
        hub.publish("prices", &n).await?;
    }
    let mut client = RawClient::connect(hub.local_addr()).await?;
    client
        .send(&WsMessage::Subscribe {
            channels: vec!["prices".into()],
            since: Default::default(),
            rewind: Some(3),
        })
        .await?;
    let position = subscribed(&mut client, "prices").await?;
    ensure!(position.seq == 5 && position.recovered, "{position:?}");
    ensure!(position.replay_from == Some(3), "{position:?}");
    hub.publish("prices", &6).await?;
    ensure!(seqs(&mut client, 4).await? == [3, 4, 5, 6]);

    // More than the history holds: what it holds, from its oldest.
    let mut all = RawClient::connect(hub.local_addr()).await?;
    all.send(&WsMessage::Subscribe {
        channels: vec!["prices".into()],
        since: Default::default(),
        rewind: Some(1000),
    })
    .await?;
    let position = subscribed(&mut all, "prices").await?;
    ensure!(position.replay_from == Some(1), "{position:?}");
    ensure!(seqs(&mut all, 6).await? == [1, 2, 3, 4, 5, 6]);
    Ok(())
}

#[tokio::test]
async fn after_an_epoch_change_the_new_epoch_is_replayed_from_its_first_seq() -> Result<()> {
    let hub = spawn_server(ServerBuilder::default()).await?;
    for n in 1..=3u64 {
        hub.publish("prices", &n).await?;
    }
    // A client of an earlier incarnation of the hub comes back with its old position.
    let mut client = RawClient::connect(hub.local_addr()).await?;
    let old = Position {
        epoch: "an-epoch-of-a-hub-that-was-killed".into(),
        seq: 41,
    };
    client
        .send(&WsMessage::Subscribe {
            channels: vec!["prices".into()],
            since: [("prices".to_owned(), old)].into(),
            rewind: None,
        })
        .await?;
    let position = subscribed(&mut client, "prices").await?;
    ensure!(
        !position.recovered,
        "another epoch cannot be recovered: {position:?}"
    );
    ensure!(position.replay_from == Some(1), "{position:?}");
    hub.publish("prices", &4).await?;
    ensure!(seqs(&mut client, 4).await? == [1, 2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn a_strategy_loses_nothing_the_restarted_hub_accepted_before_it_came_back() -> Result<()> {
    use ws_client::{Event, WebSocketClient};
    // The hub the strategy first talks to.
    let first = spawn_server(ServerBuilder::default()).await?;
    let addr = first.local_addr();
    let client = WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .reconnect_interval(Duration::from_millis(200))
        .build()
        .await?;
    client.subscribe(["prices"]).await?;
    for n in 1..=3u64 {
        first.publish("prices", &n).await?;
    }
    let mut n = 1;
    while n <= 3 {
        match within("a price", client.next_event()).await? {
            Some(Event::Publication { seq, .. }) => {
                ensure!(seq == n);
                n += 1;
            }
            Some(Event::Connected { .. }) => {}
            other => bail!("expected publication {n}, got {other:?}"),
        }
    }
    // The hub goes away and another takes its port, accepting five prices before the
    // strategy is back (or while it comes back: either order must deliver all five).
    first.shutdown().await;
    drop(first);
    let second = ServerBuilder::default().bind(addr).await?;
    for n in 1..=5u64 {
        second.publish("prices", &(100 + n)).await?;
    }
    let mut unrecovered = false;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match within("the new epoch", client.next_event()).await? {
            Some(Event::Unrecovered { seq, .. }) => {
                ensure!(
                    seq == 0,
                    "delivery goes on from the new epoch's start, not {seq}"
                );
                unrecovered = true;
            }
            Some(Event::Publication { seq, data, .. }) => seen.push((seq, data.decode::<u64>()?)),
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(unrecovered, "the lost epoch was not reported");
    ensure!(
        seen == [(1, 101), (2, 102), (3, 103), (4, 104), (5, 105)],
        "{seen:?}"
    );
    client.close().await;
    second.shutdown().await;
    Ok(())
}
