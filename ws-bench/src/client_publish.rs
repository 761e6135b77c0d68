//! Scenario S8: one `ws_client::WebSocketClient` publishing as fast as it can through the hub,
//! counted by one subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ws_client::{Error, WebSocketClient};

use crate::load::socket_addr;
use crate::payload;
use crate::stats::{Latency, Shared};
use crate::subscriber::{Progress, Protocol, Subscriber, WindowWait};

/// Settings of S8.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientPublishArgs {
    /// The hub, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The client's outbound buffer, in messages.
    #[arg(long, default_value_t = 65_536)]
    pub buffer: usize,
    /// Publish with `publish` (each acknowledged by the hub, this many in flight at once)
    /// instead of `publish_unacknowledged`.
    #[arg(long)]
    pub acknowledged: Option<usize>,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What S8 measured.
#[derive(Debug, Serialize)]
pub(crate) struct ClientPublishReport {
    /// Messages the client accepted.
    pub sent: u64,
    /// Times `publish` answered `BufferFull` (the caller retried).
    pub buffer_full: u64,
    /// Publications acknowledged by the hub (with `--acknowledged`).
    pub acknowledged: u64,
    /// Acknowledged publications per second.
    pub acknowledged_per_s: f64,
    /// Messages the subscriber received.
    pub received: u64,
    /// Received messages per second.
    pub received_per_s: f64,
    /// Publications sent that the measuring subscriber never received, 10 s after the last:
    /// one that falls behind by more than the hub's send queue is cut as a slow consumer and
    /// its count stops, so `received_per_s` measures the client only when this is 0.
    pub missed: u64,
    /// Seconds of publishing.
    pub duration_s: f64,
    /// One-way latency through client, hub and subscriber.
    pub latency_us: Latency,
}

/// Runs S8.
pub(crate) async fn run(args: &ClientPublishArgs) -> Result<ClientPublishReport> {
    let addr = socket_addr(&args.url)?;
    let shared = Arc::new(Shared::new());
    let stop = CancellationToken::new();
    let subscriber = Subscriber {
        addr,
        source: None,
        protocol: Protocol::Hub,
        channel: "bench".to_owned(),
        reads: true,
    };
    let (stream, buf) = subscriber.connect().await?;
    let progress = Arc::new(Progress::new(1));
    let reading = {
        let (shared, progress, stop) = (shared.clone(), progress.clone(), stop.clone());
        tokio::spawn(async move {
            subscriber
                .run(
                    stream,
                    buf,
                    shared,
                    progress,
                    Arc::new(WindowWait {
                        wanted: AtomicU64::new(u64::MAX),
                        ..Default::default()
                    }),
                    stop,
                )
                .await
        })
    };
    let client = WebSocketClient::builder()
        .url(&args.url)
        .message_buffer_size(args.buffer)
        .max_buffer_age(None)
        .build()
        .await?;
    let mut body = Vec::with_capacity(args.size);
    let (mut sent, mut full) = (0u64, 0u64);
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let mut acknowledged = 0u64;
    if let Some(in_flight) = args.acknowledged {
        // Pipelined: `in_flight` publishes awaiting their acknowledgement at once.
        let mut waiting = futures_util::stream::FuturesUnordered::new();
        let mut round = 0u32;
        // The clock is read every 64 acknowledgements: the bench's own cost stays small.
        while !round.is_multiple_of(64) || started.elapsed() < duration {
            round = round.wrapping_add(1);
            while waiting.len() < in_flight.max(1) {
                body.clear();
                payload::write(&mut body, 0, sent + 1, payload::now_ns(), args.size);
                let json = String::from_utf8(body.clone()).unwrap_or_default();
                let client = client.clone();
                sent += 1;
                waiting.push(async move { client.publish_json("bench", &json).await });
            }
            match futures_util::StreamExt::next(&mut waiting).await {
                Some(Ok(_)) => acknowledged += 1,
                Some(Err(Error::BufferFull(_))) => {
                    full += 1;
                    sent -= 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        while let Some(outcome) = futures_util::StreamExt::next(&mut waiting).await {
            if outcome.is_ok() {
                acknowledged += 1;
            }
        }
    }
    while args.acknowledged.is_none() && started.elapsed() < duration {
        for _ in 0..256 {
            body.clear();
            payload::write(&mut body, 0, sent + 1, payload::now_ns(), args.size);
            // The payload is ASCII JSON written by the bench.
            let json = std::str::from_utf8(&body).unwrap_or("{}");
            let raw: &serde_json::value::RawValue = serde_json::from_str(json)?;
            match client.publish_unacknowledged("bench", raw).await {
                Ok(()) => sent += 1,
                Err(Error::BufferFull(_)) => {
                    // Back off instead of spinning: the subscriber shares this core.
                    full += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    let received_in_window = shared.deliveries.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.last[0].load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    client.close().await;
    let _ = reading.await;
    let received = shared.deliveries.load(Ordering::Relaxed);
    Ok(ClientPublishReport {
        sent,
        buffer_full: full,
        acknowledged,
        acknowledged_per_s: acknowledged as f64 / duration_s,
        received,
        missed: sent.saturating_sub(received),
        received_per_s: received_in_window as f64 / duration_s,
        duration_s,
        latency_us: shared.latency_us(),
    })
}
