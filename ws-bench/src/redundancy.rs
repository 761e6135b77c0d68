//! Scenario S11, the latency gain of redundancy: one subscriber reaches the hub over 1, 2
//! or 3 connections, each through its own delaying proxy that models a wide-area path (a
//! little base delay, and now and then a spike that also holds back what follows, as a
//! retransmission does). A publisher stamps each message with the time it was sent; the
//! subscriber's `ws-client` with `redundancy(k)` delivers the first copy, and the bench
//! records publish-to-delivery latency per k.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use ws_client::{Event, ServerProtocol, WebSocketClient};

use crate::load::socket_addr;
use crate::payload;

/// Settings of S11.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RedundancyArgs {
    /// The hub, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// The numbers of connections to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub legs: Vec<usize>,
    /// Messages published per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Base one-way delay of each path, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub base_ms: f64,
    /// Chance that a chunk hits a delay spike.
    #[arg(long, default_value_t = 0.02)]
    pub spike_chance: f64,
    /// Longest spike, milliseconds (spikes are uniform up to it).
    #[arg(long, default_value_t = 50.0)]
    pub spike_ms: f64,
    /// Race a plain numbered feed (`ws-bench serve blast` at `--url`) with `sequence_by`
    /// instead of the hub: the feed sends `--rate` numbers per second on every connection.
    #[arg(long)]
    pub feed: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one run (one number of connections) measured.
#[derive(Debug, Serialize)]
pub(crate) struct RedundancyRun {
    /// Connections.
    pub legs: usize,
    /// Messages published.
    pub published: u64,
    /// Messages delivered (each once).
    pub delivered: u64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Worst.
    pub max_us: u64,
    /// Publications each connection delivered first.
    pub wins: Vec<u64>,
}

/// What S11 measured.
#[derive(Debug, Serialize)]
pub(crate) struct RedundancyReport {
    /// One entry per number of connections.
    pub runs: Vec<RedundancyRun>,
}

/// The payload: when it was sent, in microseconds since the run started.
#[derive(Serialize, Deserialize)]
struct Stamp {
    us: u64,
}

/// Relays `from` to `to`, holding each chunk back by the path's delay; a chunk never
/// overtakes the one before it.
async fn delayed(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    args: Arc<RedundancyArgs>,
    mut rng: fastrand::Rng,
) {
    // Chunks wait in a bounded queue; a full queue makes this side stop reading (TCP
    // backpressure), as a slow path would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut release = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut delay = args.base_ms;
        if rng.f64() < args.spike_chance {
            delay += rng.f64() * args.spike_ms;
        }
        release = release.max(Instant::now() + Duration::from_secs_f64(delay / 1000.0));
        if tx.send((release, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One path's proxy: relays every connection to the hub, delaying the hub's side.
async fn proxy(listener: TcpListener, hub: SocketAddr, args: Arc<RedundancyArgs>) {
    let mut relays = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(hub).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        relays.spawn(async move {
            let (mut from, mut to) = (client_read, server_write);
            let _ = tokio::io::copy(&mut from, &mut to).await;
        });
        relays.spawn(delayed(
            server_read,
            client_write,
            args.clone(),
            fastrand::Rng::new(),
        ));
    }
}

/// Runs S11 for one number of connections.
async fn run_one(args: &Arc<RedundancyArgs>, legs: usize) -> Result<RedundancyRun> {
    let hub = socket_addr(&args.url)?;
    let mut proxies = JoinSet::new();
    let mut urls = Vec::new();
    for _ in 0..legs {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("ws://{}", listener.local_addr()?));
        proxies.spawn(proxy(listener, hub, args.clone()));
    }
    if args.feed {
        let rate = args.rate.max(1.0) as u64;
        let urls = urls.into_iter().map(|url| format!("{url}/?rate={rate}"));
        let run = run_feed(args, legs, urls).await;
        proxies.abort_all();
        return run;
    }
    let channel = format!("redundancy-{legs}");
    let subscriber = WebSocketClient::builder()
        .urls(urls)
        .redundancy(legs)
        .build()
        .await?;
    subscriber.subscribe([channel.as_str()]).await?;
    let publisher = WebSocketClient::connect(&args.url).await?;
    let started = Instant::now();
    let reader = {
        let subscriber = subscriber.clone();
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut delivered = 0u64;
            while let Some(event) = subscriber.next_event().await {
                if let Event::Publication { data, .. } = event {
                    let sent = data.decode::<Stamp>()?.us;
                    let now = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(now.saturating_sub(sent).max(1));
                    delivered += 1;
                }
            }
            anyhow::Ok((latency, delivered))
        })
    };
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    let mut published = 0u64;
    while started.elapsed().as_secs_f64() < args.duration {
        tick.tick().await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        publisher
            .publish_unacknowledged(&channel, &Stamp { us })
            .await?;
        published += 1;
    }
    // Let the slowest path deliver what is in flight.
    tokio::time::sleep(Duration::from_millis(
        (args.base_ms + args.spike_ms) as u64 + 500,
    ))
    .await;
    let wins = subscriber.metrics().wins;
    subscriber.close().await;
    publisher.close().await;
    let (latency, delivered) = reader.await??;
    proxies.abort_all();
    if delivered != published {
        bail!("{legs} connections: delivered {delivered} of {published}");
    }
    Ok(RedundancyRun {
        legs,
        published,
        delivered,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
        wins,
    })
}

/// S11 against a plain feed: the first copy of each number wins by `sequence_by`; latency
/// from the moment the feed had the number due to its delivery.
async fn run_feed(
    args: &Arc<RedundancyArgs>,
    legs: usize,
    urls: impl Iterator<Item = String>,
) -> Result<RedundancyRun> {
    let subscriber = WebSocketClient::builder()
        .urls(urls)
        .redundancy(legs)
        .protocol(ServerProtocol::Raw)
        .sequence_by(|frame: &str| {
            let (_, seq, _) = payload::scan(frame.as_bytes())?;
            Some(("feed", seq))
        })
        .build()
        .await?;
    let started = Instant::now();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut first, mut last, mut delivered) = (None, 0u64, 0u64);
    let duration = Duration::from_secs_f64(args.duration);
    while started.elapsed() < duration {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(5), subscriber.next_event()).await
        else {
            bail!("{legs} connections: nothing from the feed for 5 s");
        };
        match event {
            Some(Event::Message(text)) => {
                let Some((_, seq, due)) = payload::scan(text.as_bytes()) else {
                    bail!("not a feed frame: {text}");
                };
                if first.is_some() && seq != last + 1 {
                    bail!("{legs} connections: {seq} after {last}");
                }
                first.get_or_insert(seq);
                last = seq;
                delivered += 1;
                let us = payload::unix_ns().saturating_sub(due) / 1_000;
                latency.saturating_record(us.max(1));
            }
            Some(Event::Gap {
                expected, received, ..
            }) => {
                bail!("{legs} connections: gap {expected}..{received}");
            }
            Some(_) => {}
            None => bail!("the client ended"),
        }
    }
    let wins = subscriber.metrics().wins;
    subscriber.close().await;
    Ok(RedundancyRun {
        legs,
        published: first.map_or(0, |first| last - first + 1),
        delivered,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
        wins,
    })
}

/// Runs S11.
pub(crate) async fn run(args: &RedundancyArgs) -> Result<RedundancyReport> {
    let args = Arc::new(args.clone());
    let mut runs = Vec::new();
    for &legs in &args.legs {
        let run = run_one(&args, legs.max(1)).await?;
        eprintln!(
            "S11: {} connection(s): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, wins {:?}",
            run.legs, run.p50_us, run.p99_us, run.p999_us, run.max_us, run.wins
        );
        runs.push(run);
    }
    Ok(RedundancyReport { runs })
}
