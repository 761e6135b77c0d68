//! Scenario S10, delivery under jitter: every client reaches the hub through its own proxy,
//! which cuts the client's connection every ~15 s and refuses it for ~2 s; a publisher sends
//! 2 messages a second; how much of what was published does each client receive? After the
//! last publication the cuts stop and clients get up to 10 s to reconnect and catch up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ws_client::{Event, WebSocketClient};

use crate::load::socket_addr;

/// Settings of S10.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct JitterArgs {
    /// The hub, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Clients, each behind its own cutting proxy.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Mean seconds between cuts of one client.
    #[arg(long, default_value_t = 15.0)]
    pub cut_every: f64,
    /// Seconds a cut lasts (connections refused).
    #[arg(long, default_value_t = 2.0)]
    pub cut_for: f64,
    /// Messages published per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What S10 measured.
#[derive(Debug, Serialize)]
pub(crate) struct JitterReport {
    /// Clients.
    pub clients: usize,
    /// Messages published.
    pub published: u64,
    /// Publications delivered over all clients.
    pub delivered: u64,
    /// Delivered / (published × clients), percent.
    pub delivered_percent: f64,
    /// The worst client's percentage.
    pub worst_client_percent: f64,
    /// Cuts made.
    pub cuts: u64,
}

/// One client's proxy: relays to the hub; a cut closes the live connection and refuses new
/// ones for `cut_for`.
async fn proxy(
    listener: TcpListener,
    hub: SocketAddr,
    args: JitterArgs,
    cuts: Arc<AtomicU64>,
    calm: CancellationToken,
    stop: CancellationToken,
) {
    let mut rng = fastrand::Rng::new();
    // Random phase, then cuts every `cut_every` ± 20 %.
    let mut next_cut = Instant::now() + Duration::from_secs_f64(rng.f64() * args.cut_every);
    let mut down_until = Instant::now();
    let mut live: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(next_cut), if !calm.is_cancelled() => {
                if let Some(task) = live.take() {
                    task.abort();
                }
                cuts.fetch_add(1, Ordering::Relaxed);
                down_until = Instant::now() + Duration::from_secs_f64(args.cut_for);
                next_cut = Instant::now() + Duration::from_secs_f64(args.cut_every * (0.8 + 0.4 * rng.f64()));
            }
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                if Instant::now() < down_until {
                    drop(client);
                    continue;
                }
                if let Some(task) = live.take() {
                    task.abort();
                }
                live = Some(tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(hub).await {
                        let _ = copy_bidirectional(&mut client, &mut upstream).await;
                    }
                }));
            }
        }
    }
    if let Some(task) = live {
        task.abort();
    }
}

/// Runs S10.
pub(crate) async fn run(args: &JitterArgs) -> Result<JitterReport> {
    let hub = socket_addr(&args.url)?;
    let stop = CancellationToken::new();
    // Cancelled when publishing ends: no more cuts, so every client can catch up.
    let calm = CancellationToken::new();
    let cuts = Arc::new(AtomicU64::new(0));
    let mut proxies = JoinSet::new();
    let mut clients = Vec::new();
    let mut counters = Vec::new();
    let mut readers = JoinSet::new();
    for _ in 0..args.clients {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        proxies.spawn(proxy(
            listener,
            hub,
            args.clone(),
            cuts.clone(),
            calm.clone(),
            stop.clone(),
        ));
        let client = WebSocketClient::builder()
            .url(format!("ws://{addr}"))
            .reconnect_interval(Duration::from_millis(500))
            .max_reconnect_delay(Duration::from_secs(2))
            .build()
            .await;
        // A client whose proxy is in a cut at start retries by building again.
        let client = match client {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs_f64(args.cut_for + 0.5)).await;
                WebSocketClient::builder()
                    .url(format!("ws://{addr}"))
                    .reconnect_interval(Duration::from_millis(500))
                    .max_reconnect_delay(Duration::from_secs(2))
                    .build()
                    .await?
            }
        };
        client.subscribe(["jitter"]).await?;
        let count = Arc::new(AtomicU64::new(0));
        let (reader, c) = (client.clone(), count.clone());
        readers.spawn(async move {
            while let Some(event) = reader.next_event().await {
                if matches!(event, Event::Publication { .. }) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        clients.push(client);
        counters.push(count);
    }
    eprintln!(
        "S10: {} clients subscribed through cutting proxies",
        clients.len()
    );
    let publisher = WebSocketClient::connect(&args.url).await?;
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
    let mut published = 0u64;
    let mut tick = tokio::time::interval(period);
    while started.elapsed().as_secs_f64() < args.duration {
        tick.tick().await;
        published += 1;
        publisher
            .publish_unacknowledged("jitter", &published)
            .await?;
        if published.is_multiple_of(20) {
            let delivered: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            eprintln!(
                "{:>5.1} s published {published} delivered {delivered} cuts {}",
                started.elapsed().as_secs_f64(),
                cuts.load(Ordering::Relaxed)
            );
        }
    }
    // Let clients cut near the end reconnect and recover (up to 10 s), without new cuts.
    calm.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && counters
            .iter()
            .any(|c| c.load(Ordering::Relaxed) < published)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let per_client: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for client in &clients {
        client.close().await;
    }
    publisher.close().await;
    readers.abort_all();
    while proxies.join_next().await.is_some() {}
    let delivered: u64 = per_client.iter().sum();
    let expected = (published * args.clients as u64).max(1);
    let worst = per_client.iter().copied().min().unwrap_or(0);
    Ok(JitterReport {
        clients: args.clients,
        published,
        delivered,
        delivered_percent: 100.0 * delivered as f64 / expected as f64,
        worst_client_percent: 100.0 * worst as f64 / published.max(1) as f64,
        cuts: cuts.load(Ordering::Relaxed),
    })
}
