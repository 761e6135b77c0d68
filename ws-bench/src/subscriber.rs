//! One subscriber connection of the load: subscribe, then read every frame, note each bench
//! payload's latency and sequence, and answer pings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::stats::Shared;
use crate::wire::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// What the server under test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub(crate) enum Protocol {
    /// Our hub: subscribers send `Subscribe`, publishers send `Publish`.
    Hub,
    /// A baseline that forwards every frame a client sends to every other client.
    Raw,
}

/// How far one subscriber got in each publisher's sequence; read by the publishers to keep
/// their in-flight window.
pub(crate) struct Progress {
    /// Last sequence received from each publisher (0: none yet).
    pub last: Vec<AtomicU64>,
}

impl Progress {
    /// Progress for `publishers` publishers.
    pub(crate) fn new(publishers: usize) -> Self {
        Self {
            last: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Wakes a publisher waiting for its window once some subscriber passes `wanted`.
#[derive(Default)]
pub(crate) struct WindowWait {
    /// The sequence a blocked publisher waits for (u64::MAX: nobody waits).
    pub wanted: AtomicU64,
    /// Notified when a subscriber reaches `wanted`.
    pub notify: Notify,
}

/// One subscriber's settings.
pub(crate) struct Subscriber {
    /// The server.
    pub addr: SocketAddr,
    /// The local address to connect from.
    pub source: Option<IpAddr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The channel (hub only).
    pub channel: String,
    /// `false` for a subscriber that never reads after subscribing.
    pub reads: bool,
}

impl Subscriber {
    /// Connects and subscribes.
    pub(crate) async fn connect(&self) -> Result<(tokio::net::TcpStream, BytesMut)> {
        let recv_buffer = (!self.reads).then_some(4096);
        let (mut stream, mut buf) = wire::connect(self.addr, self.source, recv_buffer)
            .await
            .with_context(|| format!("connect to {}", self.addr))?;
        if self.protocol == Protocol::Hub {
            let mut out = Vec::new();
            let subscribe = format!(r#"{{"type":"Subscribe","channels":["{}"]}}"#, self.channel);
            wire::write_client_frame(&mut out, OP_TEXT, subscribe.as_bytes());
            stream.write_all(&out).await?;
            // Wait for Subscribed: from then on every publication reaches us.
            loop {
                let mut at = 0;
                while let Some(frame) = wire::parse_frame(&buf, at)? {
                    at = frame.next;
                    if frame.opcode == OP_TEXT
                        && memchr::memmem::find(
                            &buf[frame.start..frame.end],
                            br#""type":"Subscribed""#,
                        )
                        .is_some()
                    {
                        buf.advance(at);
                        return Ok((stream, buf));
                    }
                }
                buf.advance(at);
                if stream.read_buf(&mut buf).await? == 0 {
                    bail!("closed before Subscribed");
                }
            }
        }
        Ok((stream, buf))
    }

    /// Reads until `stop`, recording into `shared` and `progress`.
    pub(crate) async fn run(
        &self,
        mut stream: tokio::net::TcpStream,
        mut buf: BytesMut,
        shared: Arc<Shared>,
        progress: Arc<Progress>,
        window: Arc<WindowWait>,
        stop: CancellationToken,
    ) -> Result<()> {
        if !self.reads {
            stop.cancelled().await;
            return Ok(());
        }
        let mut latencies = Vec::with_capacity(1024);
        let mut expected: Vec<u64> = vec![1; progress.last.len()];
        let mut out = Vec::new();
        buf.reserve(64 * 1024);
        loop {
            let mut at = 0;
            while let Some(frame) = wire::parse_frame(&buf, at)? {
                at = frame.next;
                match frame.opcode {
                    OP_TEXT => {
                        let Some((publisher, seq, sent)) =
                            payload::scan(&buf[frame.start..frame.end])
                        else {
                            continue;
                        };
                        let publisher = publisher as usize;
                        let Some(next) = expected.get_mut(publisher) else {
                            continue;
                        };
                        if seq >= *next {
                            if seq > *next {
                                shared.gaps.fetch_add(seq - *next, Ordering::Relaxed);
                            }
                            *next = seq + 1;
                            progress.last[publisher].store(seq, Ordering::Relaxed);
                        } else {
                            shared.reordered.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies.push(payload::now_ns().saturating_sub(sent));
                        if latencies.len() >= 1024 {
                            shared.record(&mut latencies);
                        }
                    }
                    OP_PING => {
                        let data = buf[frame.start..frame.end].to_vec();
                        wire::write_client_frame(&mut out, OP_PONG, &data);
                    }
                    OP_CLOSE => {
                        shared.record(&mut latencies);
                        if !stop.is_cancelled() {
                            shared.disconnected.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(());
                    }
                    _ => {}
                }
            }
            buf.advance(at);
            shared.record(&mut latencies);
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            let wanted = window.wanted.load(Ordering::Relaxed);
            if wanted != u64::MAX
                && progress
                    .last
                    .iter()
                    .any(|l| l.load(Ordering::Relaxed) >= wanted)
            {
                window.notify.notify_waiters();
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let read = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                read = stream.read_buf(&mut buf) => read,
            };
            match read {
                Ok(0) | Err(_) => {
                    if !stop.is_cancelled() {
                        shared.disconnected.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Ok(_) => {}
            }
        }
    }
}
