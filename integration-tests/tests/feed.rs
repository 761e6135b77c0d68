//! Racing a feed that is not our hub (issue 16): a plain WebSocket server numbering its JSON
//! messages, several connections to it through proxies that delay and cut, and a client
//! that delivers each number once, in order, by `sequence_by`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use futures_util::SinkExt;
use integration_tests::proxy::TcpProxy;
use integration_tests::within;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use ws_client::{Event, WebSocketClient};

/// The feed's messages: `{"key":"BTC","seq":17}`.
#[derive(Deserialize)]
struct Numbered<'a> {
    #[serde(borrow)]
    key: &'a str,
    seq: u64,
}

/// The key and number of a feed message, borrowed from it.
fn numbered(frame: &str) -> Option<(&str, u64)> {
    let message: Numbered<'_> = serde_json::from_str(frame).ok()?;
    Some((message.key, message.seq))
}

/// How a feed server numbers what it sends to its `n`-th connection (from 0).
#[derive(Clone, Copy)]
enum Numbering {
    /// One sequence for everyone, from the generator.
    Shared,
    /// Every connection gets 1, 2, 3, … of its own (a feed restarting its session).
    PerConnection,
}

/// A plain feed: every connection gets the generator's numbers (`Shared`), each message
/// after a random delay of its own, or its own numbers (`PerConnection`).
async fn feed_server(numbers: broadcast::Sender<u64>, numbering: Numbering) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut seed = 1;
        while let Ok((stream, _)) = listener.accept().await {
            let mut numbers = numbers.subscribe();
            seed += 1;
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut own = 0;
                while let Ok(n) = numbers.recv().await {
                    let seq = match numbering {
                        Numbering::Shared => n,
                        Numbering::PerConnection => {
                            own += 1;
                            own
                        }
                    };
                    if rng.u8(..8) == 0 {
                        tokio::time::sleep(Duration::from_millis(rng.u64(1..4))).await;
                    }
                    let text = format!(r#"{{"key":"BTC","seq":{seq}}}"#);
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Publishes `count` numbers from `first`, skipping `skip`, one every `every`.
async fn generate(
    numbers: &broadcast::Sender<u64>,
    first: u64,
    count: u64,
    skip: Option<u64>,
    every: Duration,
) {
    for n in first..first + count {
        if Some(n) != skip {
            let _ = numbers.send(n);
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the feed has `n` connections.
async fn connections(numbers: &broadcast::Sender<u64>, n: usize) -> Result<()> {
    within("the feed's connections", async {
        while numbers.receiver_count() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn racer(proxies: &[TcpProxy]) -> ws_client::ClientBuilder {
    WebSocketClient::builder()
        .urls(proxies.iter().map(|p| format!("ws://{}", p.addr())))
        .reconnect_interval(Duration::from_millis(20))
        .max_reconnect_delay(Duration::from_millis(100))
        .gap_timeout(Duration::from_millis(300))
        .sequence_by(numbered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_racing_connections_deliver_every_number_once_in_order_through_a_cut() -> Result<()> {
    let (numbers, _) = broadcast::channel(8192);
    let feed = feed_server(numbers.clone(), Numbering::Shared).await?;
    let proxies = vec![
        TcpProxy::start(feed).await?,
        TcpProxy::start(feed).await?,
        TcpProxy::start(feed).await?,
    ];
    let client = racer(&proxies).build().await?;
    connections(&numbers, 3).await?;
    const N: u64 = 3_000;
    let generator = {
        let numbers = numbers.clone();
        tokio::spawn(async move {
            generate(&numbers, 1, N / 2, None, Duration::from_micros(200)).await;
            generate(&numbers, N / 2 + 1, N / 2, None, Duration::from_micros(200)).await;
        })
    };
    let (mut next, mut cut) = (1, false);
    while next <= N {
        let Some(stamped) = within("the next number", client.next_stamped()).await? else {
            bail!("the client ended at {next}");
        };
        match &stamped.event {
            Event::Message(text) => {
                let Some((_, seq)) = numbered(text) else {
                    bail!("not a feed message: {text}");
                };
                ensure!(seq == next, "got {seq}, expected {next}");
                ensure!(stamped.connection.is_some_and(|c| c < 3));
                ensure!(
                    stamped
                        .received_at
                        .is_some_and(|at| at <= std::time::Instant::now()),
                    "{stamped:?}"
                );
                next += 1;
                if next == N / 3 && !cut {
                    // One connection is cut mid-stream; the other two carry on.
                    proxies[1].cut_existing();
                    cut = true;
                }
            }
            Event::Connected { .. } | Event::Disconnected { .. } => {}
            other => bail!("unexpected {other:?} at {next}"),
        }
    }
    within("the generator", generator).await??;
    let metrics = client.metrics();
    ensure!(
        metrics.wins.iter().sum::<u64>() == N,
        "wins {:?} do not sum to {N}",
        metrics.wins
    );
    ensure!(
        metrics.copies_dropped > N,
        "{} copies dropped",
        metrics.copies_dropped
    );
    ensure!(metrics.lead_p50.is_some() && metrics.lead_p99 >= metrics.lead_p50);
    ensure!(
        proxies[1].connections() >= 2,
        "the cut connection came back"
    );
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_number_no_connection_brings_is_a_gap_after_the_hold_and_delivery_goes_on() -> Result<()>
{
    let (numbers, _) = broadcast::channel(1024);
    let feed = feed_server(numbers.clone(), Numbering::Shared).await?;
    let proxies = vec![TcpProxy::start(feed).await?, TcpProxy::start(feed).await?];
    let client = racer(&proxies).build().await?;
    connections(&numbers, 2).await?;
    generate(&numbers, 1, 100, Some(50), Duration::from_micros(100)).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&"100".to_owned()) {
        let Some(event) = within("the feed", client.next_event()).await? else {
            bail!("the client ended");
        };
        match event {
            Event::Message(text) => match numbered(&text) {
                Some((_, seq)) => seen.push(seq.to_string()),
                None => bail!("not a feed message: {text}"),
            },
            Event::Gap {
                channel,
                expected,
                received,
            } => seen.push(format!("gap {channel} {expected}..{received}")),
            Event::Connected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> = (1..50)
        .map(|n| n.to_string())
        .chain(["gap BTC 50..51".to_owned()])
        .chain((51..=100).map(|n| n.to_string()))
        .collect();
    ensure!(seen == expected, "{seen:?}");
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_feed_that_restarts_its_numbering_after_a_reconnect_is_reported_not_stuck() -> Result<()>
{
    let (numbers, _) = broadcast::channel(1024);
    let feed = feed_server(numbers.clone(), Numbering::PerConnection).await?;
    let proxies = vec![TcpProxy::start(feed).await?];
    let client = racer(&proxies).build().await?;
    connections(&numbers, 1).await?;
    generate(&numbers, 1, 40, None, Duration::from_micros(100)).await;
    let mut last = 0;
    while last < 40 {
        if let Some(Event::Message(text)) = within("the first session", client.next_event()).await?
            && let Some((_, seq)) = numbered(&text)
        {
            ensure!(seq == last + 1, "{seq} after {last}");
            last = seq;
        }
    }
    // The connection is cut; the feed numbers the new one from 1 again.
    proxies[0].cut_existing();
    within("the reconnect", async {
        // The new connection's place in the feed, beside the old one's (which goes at its
        // next send).
        while proxies[0].connections() < 2 || numbers.receiver_count() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    generate(&numbers, 41, 10, None, Duration::from_micros(100)).await;
    let mut after = Vec::new();
    while after.len() < 11 {
        match within("the new session", client.next_event()).await? {
            Some(Event::Unrecovered { channel, seq, .. }) => {
                after.push(format!("restart {channel} after {seq}"));
            }
            Some(Event::Message(text)) => match numbered(&text) {
                Some((_, seq)) => after.push(seq.to_string()),
                None => bail!("not a feed message: {text}"),
            },
            Some(_) => {}
            None => bail!("the client ended"),
        }
    }
    let expected: Vec<String> = ["restart BTC after 0".to_owned()]
        .into_iter()
        .chain((1..=10).map(|n| n.to_string()))
        .collect();
    ensure!(after == expected, "{after:?}");
    client.close().await;
    Ok(())
}

/// Reads the numbers 1 to `n` with `next_stamped_many`, `limit` at a time, checking that each
/// comes once and in order, from one of `connections`; returns the most one call took.
async fn read_many(
    client: &WebSocketClient,
    n: u64,
    limit: usize,
    connections: usize,
) -> Result<usize> {
    let (mut events, mut next, mut most) = (Vec::new(), 1, 0);
    while next <= n {
        let taken = within(
            "the next numbers",
            client.next_stamped_many(&mut events, limit),
        )
        .await?;
        ensure!(taken > 0, "the client ended at {next}");
        ensure!(
            taken == events.len() && taken <= limit,
            "{taken} of {}",
            events.len()
        );
        most = most.max(taken);
        for stamped in events.drain(..) {
            match &stamped.event {
                Event::Message(text) => {
                    let Some((_, seq)) = numbered(text) else {
                        bail!("not a feed message: {text}");
                    };
                    ensure!(seq == next, "got {seq}, expected {next}");
                    ensure!(stamped.connection.is_some_and(|c| c < connections));
                    ensure!(stamped.received_at.is_some(), "{stamped:?}");
                    next += 1;
                }
                Event::Connected { .. } => {}
                other => bail!("unexpected {other:?} at {next}"),
            }
        }
    }
    Ok(most)
}

/// After `close`: what is left (the connections' ends, no message) comes out, then 0 for good.
async fn read_many_to_the_end(client: &WebSocketClient) -> Result<()> {
    let mut events = Vec::new();
    client.close().await;
    within("the end", async {
        while client.next_stamped_many(&mut events, 64).await > 0 {
            for stamped in events.drain(..) {
                if let Event::Message(text) = &stamped.event {
                    bail!("a message after every number was taken: {text}");
                }
            }
        }
        Ok(())
    })
    .await??;
    ensure!(client.next_stamped_many(&mut events, 64).await == 0);
    Ok(())
}

#[tokio::test]
async fn many_at_a_time_from_racing_connections_gives_each_number_once_in_order_in_batches()
-> Result<()> {
    let (numbers, _) = broadcast::channel(1024);
    let feed = feed_server(numbers.clone(), Numbering::Shared).await?;
    let proxies = vec![TcpProxy::start(feed).await?, TcpProxy::start(feed).await?];
    let client = racer(&proxies).build().await?;
    connections(&numbers, 2).await?;
    const N: u64 = 500;
    // Sent before the application reads: they wait in the client, to be taken many at once.
    generate(&numbers, 1, N, None, Duration::from_micros(10)).await;
    let most = read_many(&client, N, 64, 2).await?;
    ensure!(most > 1, "no call took more than one event");
    ensure!(client.metrics().wins.iter().sum::<u64>() == N);
    let mut none = Vec::new();
    ensure!(client.next_stamped_many(&mut none, 0).await == 0 && none.is_empty());
    read_many_to_the_end(&client).await
}

#[tokio::test]
async fn many_at_a_time_from_one_plain_connection_takes_runs_of_messages_in_order() -> Result<()> {
    let (numbers, _) = broadcast::channel(4096);
    let feed = feed_server(numbers.clone(), Numbering::Shared).await?;
    // No `sequence_by`: every message as it comes, the sequencer's shortcut for runs of them.
    let client = WebSocketClient::builder()
        .url(format!("ws://{feed}"))
        .build()
        .await?;
    connections(&numbers, 1).await?;
    const N: u64 = 2_000;
    generate(&numbers, 1, N, None, Duration::from_micros(10)).await;
    let most = read_many(&client, N, 100, 1).await?;
    ensure!(most > 1, "no call took more than one event");
    read_many_to_the_end(&client).await
}
