//! A strategy: subscribes to `prices:SOL-USDC` and prints each update with its latency
//! (receive time minus the publisher's timestamp). It rides through hub restarts by itself,
//! and skips (and counts) payloads on the channel that are not price updates.
//!     cargo run --example strategy -- --hub ws://127.0.0.1:8080
//! Ctrl-C closes it.

use anyhow::Result;
use examples::{SOL_USDC_CHANNEL, arg, init_logging, unix_millis};
use ws_client::{Error, WebSocketClient};
use ws_protocol::WsMessage;

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let hub = arg("--hub").unwrap_or_else(|| examples::DEFAULT_HUB.to_owned());
    let client = WebSocketClient::connect(&hub).await?;
    client.subscribe([SOL_USDC_CHANNEL]).await?;
    println!("strategy: subscribed to {SOL_USDC_CHANNEL} on {hub}");
    let mut foreign = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            update = client.receive::<WsMessage>() => match update {
                Ok(Some(WsMessage::PriceUpdate { price, volume, timestamp, .. })) => {
                    let latency = unix_millis() - timestamp;
                    println!("SOL-USDC {price:>10.4}  volume {volume:>5}  latency {latency} ms");
                }
                Ok(Some(other)) => println!("other message: {other:?}"),
                Ok(None) => break,
                // Someone published a payload that is not a WsMessage: skip it, count it.
                Err(Error::Decode { text, reason }) => {
                    foreign += 1;
                    eprintln!("skipped a foreign payload ({reason}): {text}");
                }
                Err(other) => return Err(other.into()),
            },
        }
    }
    println!(
        "strategy: closing, {foreign} foreign payloads skipped ({:?})",
        client.metrics()
    );
    client.close().await;
    Ok(())
}
