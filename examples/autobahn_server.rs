//! The Autobahn conformance cases against the hub's connection handling: an echo server built
//! with `ws-server` itself (`ServerBuilder::echo`), so the cases exercise the hub's upgrade,
//! read loop, limits and write path, not a separate implementation. Used by
//! `scripts/autobahn.sh`.
//!     cargo run --release --example autobahn_server -- 9001
//! Ctrl-C stops it.

use std::time::Duration;

use anyhow::{Context, Result};
use examples::init_logging;
use ws_server::WebSocketServer;

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let port: u16 = std::env::args()
        .nth(1)
        .context("usage: autobahn_server PORT")?
        .parse()
        .context("PORT must be a number")?;
    let server = WebSocketServer::builder()
        .echo(true)
        // The cases send messages of up to 16 MiB and bursts of thousands of frames.
        .max_message_size(20 << 20)
        .rate_limit(1e9, u32::MAX)
        .idle_timeout(Duration::from_secs(600))
        // Speaks only when spoken to: a ping of its own in the middle of a case (the 30 s
        // default) ends a long compression case early when the machine is slow.
        .ping_interval(Duration::from_secs(600))
        .bind(("127.0.0.1", port))
        .await?;
    println!("autobahn_server: echoing on ws://{}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
