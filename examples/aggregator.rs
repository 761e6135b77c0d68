//! An aggregator: merges several sources (hubs and channels) into one stream, prints it with
//! each update's source, and republishes the merged stream on `prices:merged` of the first hub.
//!     cargo run --example aggregator -- --hub ws://127.0.0.1:8080 --channel prices:SOL-USDC \
//!         --channel prices:BONK-USDC
//! Several `--hub` options connect to several hubs (each source is hub × channel).
//! Ctrl-C closes every connection.

use anyhow::Result;
use examples::{SOL_USDC_CHANNEL, args, init_logging};
use tokio::sync::mpsc;
use ws_client::{Event, WebSocketClient};
use ws_protocol::Payload;

const MERGED_CHANNEL: &str = "prices:merged";

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let mut hubs = args("--hub");
    if hubs.is_empty() {
        hubs.push(examples::DEFAULT_HUB.to_owned());
    }
    let mut channels = args("--channel");
    if channels.is_empty() {
        channels.push(SOL_USDC_CHANNEL.to_owned());
    }

    // Bounded: if printing falls behind, the sources stop reading and the hubs see it.
    let (merged_tx, mut merged) = mpsc::channel::<(String, Payload)>(1024);
    let mut clients = Vec::new();
    let mut sources = tokio::task::JoinSet::new();
    for hub in &hubs {
        let client = WebSocketClient::connect(hub).await?;
        client.subscribe(channels.iter().cloned()).await?;
        println!("aggregator: {hub} subscribed to {channels:?}");
        let (client2, tx, hub) = (client.clone(), merged_tx.clone(), hub.clone());
        sources.spawn(async move {
            while let Some(event) = client2.next_event().await {
                if let Event::Publication { channel, data, .. } = event
                    && tx.send((format!("{hub} {channel}"), data)).await.is_err()
                {
                    break;
                }
            }
        });
        clients.push(client);
    }
    drop(merged_tx);

    let mut count = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = merged.recv() => {
                let Some((source, data)) = next else { break };
                count += 1;
                println!("#{count:<6} {source}: {data}");
                if let Err(e) = clients[0].publish_unacknowledged(MERGED_CHANNEL, data.as_raw()).await {
                    println!("not republished: {e}");
                }
            }
        }
    }
    println!("aggregator: {count} updates merged; closing");
    for client in &clients {
        client.close().await;
    }
    sources.shutdown().await;
    Ok(())
}
