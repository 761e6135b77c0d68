//! A strategy: subscribes to `prices:SOL-USDC` and prints each update with its latency
//! (receive time minus the publisher's timestamp). It rides through hub restarts by itself.
//!     cargo run --example strategy -- --hub ws://127.0.0.1:8080
//! Ctrl-C closes it.

use anyhow::Result;
use examples::{SOL_USDC_CHANNEL, arg, init_logging, unix_millis};
use ws_client::WebSocketClient;
use ws_protocol::WsMessage;

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let hub = arg("--hub").unwrap_or_else(|| examples::DEFAULT_HUB.to_owned());
    let client = WebSocketClient::connect(&hub).await?;
    client.subscribe([SOL_USDC_CHANNEL]).await?;
    println!("strategy: subscribed to {SOL_USDC_CHANNEL} on {hub}");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            update = client.receive::<WsMessage>() => match update? {
                Some(WsMessage::PriceUpdate { price, volume, timestamp, .. }) => {
                    let latency = unix_millis() - timestamp;
                    println!("SOL-USDC {price:>10.4}  volume {volume:>5}  latency {latency} ms");
                }
                Some(other) => println!("other message: {other:?}"),
                None => break,
            },
        }
    }
    println!("strategy: closing ({:?})", client.metrics());
    client.close().await;
    Ok(())
}
