//! Races N connections to any numbered feed (an exchange's, a sequencer's) and prints, each
//! second, the messages delivered, how often each connection won, and how much earlier the
//! winner was than the copies that lost.
//!     cargo run --example feed_racer -- --url wss://FEED --connections 10 --seq-field u \
//!         [--key-field s] [--send '{"method":"SUBSCRIBE",...}']...
//!
//! `--seq-field` names the field holding each message's sequence number, `--key-field` the
//! one naming its stream (a symbol) when the feed numbers streams apart; `--send` frames go
//! out after every (re)connect. Against the hub, as a stand-in feed (with `price_feed`
//! running):
//!     cargo run --example feed_racer -- --url ws://127.0.0.1:8080 --connections 3 \
//!         --seq-field seq --key-field channel \
//!         --send '{"type":"Subscribe","channels":["prices:SOL-USDC"]}'
//! Ctrl-C ends it.

use std::time::Duration;

use anyhow::{Context, Result};
use examples::{arg, args, init_logging};
use ws_client::{Event, ServerProtocol, WebSocketClient};

/// The number after `"field":` in `frame`.
fn number_after<'a>(frame: &'a str, pattern: &str) -> Option<(&'a str, u64)> {
    let start = frame.find(pattern)? + pattern.len();
    let rest = frame.get(start..)?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((rest, rest.get(..end)?.parse().ok()?))
}

/// The string after `"field":"` in `frame`.
fn string_after<'a>(frame: &'a str, pattern: &str) -> Option<&'a str> {
    let start = frame.find(pattern)? + pattern.len();
    let rest = frame.get(start..)?;
    rest.get(..rest.find('"')?)
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let url = arg("--url").context("--url FEED is needed")?;
    let connections: usize = arg("--connections").map_or(Ok(10), |n| n.parse())?;
    let seq_field = arg("--seq-field").context("--seq-field FIELD is needed")?;
    let seq_pattern = format!("\"{seq_field}\":");
    let key_pattern = arg("--key-field").map(|field| format!("\"{field}\":\""));
    let mut builder = WebSocketClient::builder()
        .url(&url)
        .redundancy(connections)
        .protocol(ServerProtocol::Raw)
        .gap_timeout(Duration::from_millis(500))
        .sequence_by(move |frame: &str| {
            let (_, seq) = number_after(frame, &seq_pattern)?;
            let key = match &key_pattern {
                Some(pattern) => string_after(frame, pattern)?,
                None => "feed",
            };
            Some((key, seq))
        });
    for frame in args("--send") {
        let frame: serde_json::Value = serde_json::from_str(&frame).context("--send takes JSON")?;
        builder = builder.on_connect(&frame);
    }
    let client = builder.build().await?;
    println!("feed_racer: {connections} connections to {url}, numbered by {seq_field}");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut delivered, mut gaps, mut restarts) = (0u64, 0u64, 0u64);
    let mut wins_before = vec![0u64; connections];
    let mut events = Vec::with_capacity(64);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let metrics = client.metrics();
                let wins: Vec<u64> = metrics
                    .wins
                    .iter()
                    .zip(&wins_before)
                    .map(|(now, before)| now - before)
                    .collect();
                wins_before.clone_from(&metrics.wins);
                println!(
                    "{delivered:>8} delivered  {gaps} gaps  {restarts} restarts  wins {wins:?}  \
                     lead p50 {:?} p99 {:?}  connections up {}",
                    metrics.lead_p50, metrics.lead_p99, metrics.connections_up
                );
                delivered = 0;
            }
            // Every event ready at once, up to 64: one call per burst of a busy feed.
            taken = client.next_stamped_many(&mut events, 64) => {
                if taken == 0 {
                    break;
                }
                for stamped in events.drain(..) {
                    match stamped.event {
                        Event::Message(_) | Event::Binary(_) => delivered += 1,
                        Event::Gap { channel, expected, received } => {
                            gaps += 1;
                            eprintln!("gap in {channel}: {expected}..{received}");
                        }
                        Event::Unrecovered { channel, .. } => {
                            restarts += 1;
                            eprintln!("{channel}: the feed restarted its numbering");
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    client.close().await;
    Ok(())
}
