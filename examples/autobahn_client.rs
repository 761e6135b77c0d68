//! The Autobahn conformance cases against `ws-client`: connects to a fuzzing server
//! (`kosoku -m fuzzingserver`), runs every case by echoing each message back, then asks the
//! server to write its report. Used by `scripts/autobahn.sh`.
//!     cargo run --release --example autobahn_client -- ws://127.0.0.1:9002

use std::time::Duration;

use anyhow::{Context, Result};
use examples::init_logging;
use ws_client::{Event, ServerProtocol, WebSocketClient};

const AGENT: &str = "ws-client";

/// A client for one case: a plain server (no hub protocol), no reconnect, offering
/// permessage-deflate (cases 12.* and 13.*) on tokio-tungstenite (sockudo-ws's client cannot
/// offer it).
async fn connect(url: String) -> Result<WebSocketClient> {
    let sockudo = std::env::var("WS_CLIENT_TRANSPORT").is_ok_and(|t| t == "sockudo");
    Ok(WebSocketClient::builder()
        .url(url)
        .protocol(ServerProtocol::Raw)
        .compression(!sockudo)
        .auto_reconnect(false)
        .max_message_size(20 << 20)
        // No pings of its own in the middle of a case (see autobahn_server).
        .ping_interval(Duration::from_secs(600))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let base = std::env::args()
        .nth(1)
        .context("usage: autobahn_client ws://HOST:PORT")?;
    let counter = connect(format!("{base}/getCaseCount")).await?;
    let count: u32 = loop {
        match counter.next_event().await {
            Some(Event::Message(text)) => break text.trim().parse()?,
            Some(_) => continue,
            None => anyhow::bail!("no case count"),
        }
    };
    counter.close().await;
    println!("autobahn_client: {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        let Ok(client) = connect(url).await else {
            continue;
        };
        // Echo until the server ends the case.
        while let Some(event) = client.next_event().await {
            let sent = match event {
                Event::Message(text) => client.send_text(text).await,
                Event::Binary(bytes) => client.send_binary(bytes).await,
                Event::Disconnected { .. } => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        client.close().await;
    }
    let report = connect(format!("{base}/updateReports?agent={AGENT}")).await?;
    while report.next_event().await.is_some() {}
    println!("autobahn_client: done");
    Ok(())
}
