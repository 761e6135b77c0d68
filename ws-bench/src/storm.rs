//! Scenario S9, reconnect storm: many of our clients subscribed to one hub; the hub is
//! stopped and started again; how long until every client is resubscribed and receiving, and
//! how the reconnects spread over time (peak accept rate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use ws_client::{Event, WebSocketClient};

use crate::hub_process::HubProcess;

/// Settings of S9.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StormArgs {
    /// Where the hub listens, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:9100")]
    pub url: String,
    /// How to start the hub (run with `sh -c`; WS_HOST and WS_PORT are set from the URL).
    #[arg(long, default_value = "taskset -c 0 target/release/ws-server")]
    pub hub_cmd: String,
    /// Clients.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// The clients' first reconnect delay, seconds (jittered into [d/2, d]).
    #[arg(long, default_value_t = 0.5)]
    pub reconnect_interval: f64,
    /// The clients' reconnect delay cap, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub max_reconnect_delay: f64,
    /// Seconds the hub stays down.
    #[arg(long, default_value_t = 0.0)]
    pub downtime: f64,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What S9 measured.
#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    /// Clients.
    pub clients: usize,
    /// Seconds to connect and subscribe every client at the start.
    pub initial_connect_s: f64,
    /// Seconds from the hub accepting again until the last client received a publication.
    pub all_back_s: f64,
    /// Median of that per client.
    pub median_back_s: f64,
    /// Clients that never came back within the timeout.
    pub missing: usize,
    /// The most reconnects completed in any 100 ms, scaled to per second.
    pub peak_reconnects_per_s: f64,
}

/// Runs S9.
pub(crate) async fn run(args: &StormArgs) -> Result<StormReport> {
    let mut hub = HubProcess::start(&args.hub_cmd, &args.url).await?;
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(256));
    let mut clients = Vec::with_capacity(args.clients);
    let mut connecting = JoinSet::new();
    for _ in 0..args.clients {
        let (url, slots) = (args.url.clone(), slots.clone());
        let (interval, max) = (args.reconnect_interval, args.max_reconnect_delay);
        connecting.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let client = WebSocketClient::builder()
                .url(url)
                .reconnect_interval(Duration::from_secs_f64(interval))
                .max_reconnect_delay(Duration::from_secs_f64(max))
                .build()
                .await?;
            client.subscribe(["storm"]).await?;
            anyhow::Ok(client)
        });
    }
    while let Some(done) = connecting.join_next().await {
        clients.push(done??);
    }
    let initial_connect_s = started.elapsed().as_secs_f64();
    eprintln!(
        "S9: {} clients subscribed in {initial_connect_s:.2} s; restarting the hub",
        clients.len()
    );

    hub.stop().await?;
    tokio::time::sleep(Duration::from_secs_f64(args.downtime)).await;
    hub.restart().await?;
    let back_at = Instant::now();

    // Each client reports when it first receives a publication after the restart, and when
    // its reconnect completed.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<f64>, Option<f64>)>();
    let mut watchers = JoinSet::new();
    for client in &clients {
        let (client, tx) = (client.clone(), tx.clone());
        watchers.spawn(async move {
            let mut reconnected = None;
            while let Some(event) = client.next_event().await {
                match event {
                    Event::Connected {
                        reconnected: true, ..
                    } => {
                        reconnected = Some(back_at.elapsed().as_secs_f64());
                    }
                    Event::Publication { .. } => {
                        let _ = tx.send((reconnected, Some(back_at.elapsed().as_secs_f64())));
                        return;
                    }
                    _ => {}
                }
            }
            let _ = tx.send((reconnected, None));
        });
    }
    drop(tx);
    // Publish on the channel until every client has received something (or 30 s).
    let publisher = {
        let url = args.url.clone();
        tokio::spawn(async move {
            let client = WebSocketClient::builder().url(url).build().await?;
            let mut n = 0u64;
            loop {
                n += 1;
                client.publish_unacknowledged("storm", &n).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };
    let mut back = Vec::new();
    let mut reconnects = Vec::new();
    let deadline = back_at + Duration::from_secs(30);
    while back.len() + (args.clients - clients.len()) < args.clients {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((reconnected, received))) => {
                reconnects.extend(reconnected);
                match received {
                    Some(t) => back.push(t),
                    None => break,
                }
            }
            _ => break,
        }
    }
    publisher.abort();
    watchers.abort_all();
    for client in &clients {
        client.close().await;
    }
    hub.stop().await?;
    if back.is_empty() {
        bail!("no client came back");
    }
    back.sort_by(f64::total_cmp);
    let mut buckets = std::collections::HashMap::<u64, u32>::new();
    for t in &reconnects {
        *buckets.entry((t * 10.0) as u64).or_default() += 1;
    }
    Ok(StormReport {
        clients: args.clients,
        initial_connect_s,
        all_back_s: back.last().copied().unwrap_or_default(),
        median_back_s: back[back.len() / 2],
        missing: args.clients - back.len(),
        peak_reconnects_per_s: f64::from(buckets.values().copied().max().unwrap_or(0)) * 10.0,
    })
}
