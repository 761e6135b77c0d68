//! A data utility: publishes synthetic SOL-USDC prices on `prices:SOL-USDC`.
//!
//! Through a running hub (with our client, which reconnects and buffers on its own):
//!     cargo run --example price_feed -- --hub ws://127.0.0.1:8080 --rate 10
//! Or as its own hub, embedding the server on WS_HOST:WS_PORT (default 0.0.0.0:8080):
//!     cargo run --example price_feed -- --embedded --rate 10
//! Ctrl-C stops it.

use std::time::Duration;

use anyhow::Result;
use examples::{SOL_USDC_CHANNEL, SyntheticPrices, arg, init_logging, period};
use ws_client::{Error, WebSocketClient};
use ws_server::{ServerBuilder, WebSocketConfig};

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let rate: f64 = arg("--rate")
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(10.0);
    let mut prices = SyntheticPrices::default();
    let mut tick = tokio::time::interval(period(rate));

    if std::env::args().any(|a| a == "--embedded") {
        let server = ServerBuilder::from_config(WebSocketConfig::from_env()?)
            .bind_configured()
            .await?;
        println!(
            "price_feed: embedded hub on ws://{}, publishing {SOL_USDC_CHANNEL} at {rate}/s",
            server.local_addr()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    let update = prices.next_update();
                    let published = server.publish(SOL_USDC_CHANNEL, &update).await?;
                    let recipients = published
                        .recipients
                        .map_or_else(|| "every hub's".to_owned(), |n| n.to_string());
                    println!("seq {:>6} to {recipients} subscriber(s): {}", published.seq, update.to_json());
                }
            }
        }
        println!("price_feed: shutting down");
        server.shutdown().await;
        return Ok(());
    }

    let hub = arg("--hub").unwrap_or_else(|| examples::DEFAULT_HUB.to_owned());
    // Prices buffered while the hub is unreachable are worth sending only while they are
    // fresh: older than 2 s, they are dropped (and counted in the metrics), never delivered
    // late to strategies.
    let client = WebSocketClient::builder()
        .url(&hub)
        .max_buffer_age(Duration::from_secs(2))
        .build()
        .await?;
    println!("price_feed: connected to {hub}, publishing {SOL_USDC_CHANNEL} at {rate}/s");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let update = prices.next_update();
                // Prices go stale: not acknowledged, no retry (`publish` would wait for the hub).
                match client.publish_unacknowledged(SOL_USDC_CHANNEL, &update).await {
                    Ok(()) => println!("published {} ({:?})", update.to_json(), client.state()),
                    // Disconnected for longer than the buffer holds: say so, keep going.
                    Err(Error::BufferFull(_)) => println!("buffer full while {:?}; price skipped", client.state()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    println!("price_feed: closing");
    client.close().await;
    Ok(())
}
