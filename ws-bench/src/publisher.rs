//! One publisher connection: sends bench payloads at a target rate or as fast as its in-flight
//! window allows, batching frames into one write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::subscriber::{Progress, Protocol, WindowWait};
use crate::wire::{self, OP_TEXT};

/// Frames written per write call at most.
const BATCH: u64 = 64;

/// One publisher's settings.
pub(crate) struct Publisher {
    /// Its index, carried in every payload.
    pub id: u32,
    /// The server.
    pub addr: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The channel (hub only).
    pub channel: String,
    /// Payload bytes.
    pub size: usize,
    /// Messages per second; `None`: as fast as the window allows.
    pub rate: Option<f64>,
    /// Messages in flight (published, not yet received by every reading subscriber).
    pub window: Option<u64>,
}

impl Publisher {
    /// Publishes until `duration` has passed; returns how many messages it sent.
    pub(crate) async fn run(
        &self,
        duration: Duration,
        subscribers: Arc<Vec<Arc<Progress>>>,
        window_wait: Arc<WindowWait>,
        published: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Result<u64> {
        let (stream, _) = wire::connect(self.addr, None, None).await?;
        let (mut reader, mut writer) = stream.into_split();
        // Drain whatever the server sends the publisher (Connected, pings); the bench does not
        // need it, and an unread socket would eventually block the server.
        let drain_stop = stop.clone();
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    () = drain_stop.cancelled() => break,
                    read = reader.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { break },
                }
            }
        });
        let prefix = format!(r#"{{"type":"Publish","channel":"{}","data":"#, self.channel);
        let mut frames = Vec::with_capacity(64 * 1024);
        let mut body = Vec::with_capacity(self.size + prefix.len() + 1);
        let start = Instant::now();
        let end = start + duration;
        let mut seq = 0u64;
        let mut min_seen = 0u64;
        let idx = self.id as usize;
        while Instant::now() < end && !stop.is_cancelled() {
            let due = match self.rate {
                Some(rate) => ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(seq),
                None => BATCH,
            };
            let mut room = due.min(BATCH);
            if let Some(window) = self.window {
                if seq - min_seen >= window {
                    min_seen = subscribers
                        .iter()
                        .map(|p| p.last[idx].load(Ordering::Relaxed))
                        .min()
                        .unwrap_or(seq);
                }
                room = room.min((min_seen + window).saturating_sub(seq));
                if room == 0 {
                    window_wait
                        .wanted
                        .store(seq + 1 - window, Ordering::Relaxed);
                    let wait = window_wait.notify.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(1), wait).await;
                    window_wait.wanted.store(u64::MAX, Ordering::Relaxed);
                    continue;
                }
            }
            if room == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            frames.clear();
            for _ in 0..room {
                seq += 1;
                body.clear();
                if self.protocol == Protocol::Hub {
                    body.extend_from_slice(prefix.as_bytes());
                }
                // A baseline gets frames of the same size on the wire as the hub's, whose
                // Publication envelope wraps the payload: equal bytes, equal work to read.
                let size = match self.protocol {
                    Protocol::Hub => self.size,
                    Protocol::Raw => self.size + envelope_len(&self.channel, seq),
                };
                payload::write(&mut body, self.id, seq, payload::now_ns(), size);
                if self.protocol == Protocol::Hub {
                    body.push(b'}');
                }
                wire::write_client_frame(&mut frames, OP_TEXT, &body);
            }
            writer.write_all(&frames).await?;
            published.store(seq, Ordering::Relaxed);
            if self.rate.is_none() && self.window.is_none() {
                tokio::task::yield_now().await;
            }
        }
        // Keep the connection open until the run ends, so that the server does not see the
        // publisher leave while it still delivers.
        stop.cancelled().await;
        drain.abort();
        Ok(seq)
    }
}

/// Bytes the hub's `Publication` envelope adds around a payload.
fn envelope_len(channel: &str, seq: u64) -> usize {
    format!(r#"{{"type":"Publication","channel":"{channel}","seq":{seq},"data":}}"#).len()
}
