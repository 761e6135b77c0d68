//! Scenario S13: what each wire costs. `--subscribers` connections on one wire (JSON,
//! JSON + permessage-deflate, MessagePack, MessagePack + permessage-deflate) follow one
//! channel while one publisher sends realistic market data at a fixed rate; the run reports
//! the bytes on the wire per delivery (frame headers included) and the hub's CPU time per
//! delivery. The subscribers only count frames and bytes: what a client does with them is
//! not the hub's cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use clap::ValueEnum;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::load::socket_addr;
use crate::process::CpuMark;
use crate::wire::{OP_TEXT, parse_frame, write_client_frame};

/// Settings of an S13 run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EncodingsArgs {
    /// The hub, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// The hub's pid, for its CPU time (required: it is half of what S13 measures).
    #[arg(long)]
    pub server_pid: u32,
    /// Subscribers per wire.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// The wires to measure, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Wire::Json, Wire::JsonDeflate, Wire::Msgpack, Wire::MsgpackDeflate])]
    pub wires: Vec<Wire>,
    /// What is published.
    #[arg(long, value_enum, default_value = "book")]
    pub payload: Payload,
    /// Publications per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of publishing per wire.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Write the reports as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// How the subscribers' connections are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub(crate) enum Wire {
    /// JSON text frames.
    Json,
    /// JSON, permessage-deflate.
    JsonDeflate,
    /// MessagePack binary frames (`ws-toolkit.msgpack`).
    Msgpack,
    /// MessagePack, permessage-deflate.
    MsgpackDeflate,
}

impl Wire {
    fn headers(self) -> &'static str {
        match self {
            Self::Json => "",
            Self::JsonDeflate => {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            }
            Self::Msgpack => "Sec-WebSocket-Protocol: ws-toolkit.msgpack\r\n",
            Self::MsgpackDeflate => {
                "Sec-WebSocket-Protocol: ws-toolkit.msgpack\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            }
        }
    }

    fn deflate(self) -> bool {
        matches!(self, Self::JsonDeflate | Self::MsgpackDeflate)
    }
}

/// Realistic market data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub(crate) enum Payload {
    /// A price update, about 200 bytes of JSON.
    Price,
    /// A 50-level order-book snapshot in Binance's depth format (prices and sizes as strings
    /// with 8 decimals), about 4 KB of JSON.
    Book,
    /// The same book with prices and sizes as JSON numbers, sizes random to the thousandth
    /// (about 1.8 KB of JSON, less to compress).
    BookNumbers,
}

/// `count` distinct payloads of `kind`, prices walking at random.
fn payloads(kind: Payload, count: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(17);
    let mut mid = 187.42f64;
    (0..count)
        .map(|n| {
            mid += (rng.f64() - 0.5) * 0.05;
            match kind {
                Payload::Price => format!(
                    r#"{{"symbol":"SOL-USDC","venue":"binance","bid":{:.2},"ask":{:.2},"bid_size":{:.3},"ask_size":{:.3},"last":{:.2},"volume_24h":{:.1},"ts":{},"seq":{n}}}"#,
                    mid - 0.01,
                    mid + 0.01,
                    rng.f64() * 500.0,
                    rng.f64() * 500.0,
                    mid,
                    1_250_000.0 + rng.f64() * 10_000.0,
                    1_764_600_000_000u64 + n as u64 * 5
                ),
                Payload::Book | Payload::BookNumbers => {
                    let strings = kind == Payload::Book;
                    let side = |sign: f64, rng: &mut fastrand::Rng| {
                        (0..50)
                            .map(|level| {
                                let price = mid + sign * (0.01 + f64::from(level) * 0.01);
                                let size = rng.f64() * 800.0;
                                if strings {
                                    format!(r#"["{price:.8}","{:.8}"]"#, (size * 1000.0).round() / 1000.0)
                                } else {
                                    format!("[{price:.2},{size:.3}]")
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let bids = side(-1.0, &mut rng);
                    let asks = side(1.0, &mut rng);
                    format!(
                        r#"{{"symbol":"SOL-USDC","venue":"binance","ts":{},"seq":{n},"bids":[{bids}],"asks":[{asks}]}}"#,
                        1_764_600_000_000u64 + n as u64 * 5
                    )
                }
            }
        })
        .collect()
}

/// One wire's figures.
#[derive(Debug, Serialize)]
pub(crate) struct WireReport {
    wire: Wire,
    payload: Payload,
    payload_json_bytes: f64,
    subscribers: usize,
    published: u64,
    deliveries: u64,
    bytes_per_delivery: f64,
    hub_cpu_ns_per_delivery: f64,
    hub_cpu_cores: f64,
}

/// Runs every wire of `args` in turn.
pub(crate) async fn run(args: &EncodingsArgs) -> Result<Vec<WireReport>> {
    let addr = socket_addr(&args.url)?;
    let bodies = payloads(args.payload, 256);
    let mean = bodies.iter().map(String::len).sum::<usize>() as f64 / bodies.len() as f64;
    let mut reports = Vec::new();
    for &wire in &args.wires {
        reports.push(one_wire(args, addr, wire, &bodies, mean).await?);
    }
    Ok(reports)
}

async fn one_wire(
    args: &EncodingsArgs,
    addr: SocketAddr,
    wire: Wire,
    bodies: &[String],
    mean: f64,
) -> Result<WireReport> {
    // The same length on every wire: the channel's name is in every frame.
    let channel = format!("s13-{}-{}", wire as u8, args.payload as u8);
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(args.subscribers + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..args.subscribers {
        let (frames, bytes, ready, channel) = (
            frames.clone(),
            bytes.clone(),
            ready.clone(),
            channel.clone(),
        );
        tasks.spawn(async move { subscriber(addr, wire, &channel, &frames, &bytes, &ready).await });
    }
    tokio::time::timeout(Duration::from_secs(60), ready.wait())
        .await
        .context("the subscribers did not all subscribe within 60 s")?;

    let (publisher, _) = connect(addr, Wire::Json).await?;
    let (mut read_half, mut write_half) = publisher.into_split();
    let cpu = CpuMark::now(args.server_pid).context("reading the hub's CPU time")?;
    let cpu_ticks_start = crate::process::cpu_ticks(args.server_pid).unwrap_or(0);
    let started = Instant::now();
    let total = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut out = Vec::new();
    let mut discard = vec![0u8; 64 * 1024];
    for n in 0..total {
        let publish = format!(
            r#"{{"type":"Publish","channel":"{channel}","data":{}}}"#,
            bodies[n as usize % bodies.len()]
        );
        out.clear();
        write_client_frame(&mut out, OP_TEXT, publish.as_bytes());
        write_half.write_all(&out).await?;
        let due = started + interval * u32::try_from(n + 1).unwrap_or(u32::MAX);
        // Drain whatever the hub answers the publisher while waiting for the next slot.
        let _ = tokio::time::timeout_at(due, read_half.read(&mut discard)).await;
        tokio::time::sleep_until(due).await;
    }
    let expected = total * args.subscribers as u64;
    let drain_until = Instant::now() + Duration::from_secs(30);
    while frames.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_cores = cpu.share_since(args.server_pid).unwrap_or(0.0);
    let cpu_ticks = crate::process::cpu_ticks(args.server_pid).unwrap_or(0) - cpu_ticks_start;
    let deliveries = frames.load(Ordering::Relaxed);
    if deliveries < expected {
        bail!("{wire:?}: {deliveries} of {expected} deliveries arrived within 30 s");
    }
    tasks.abort_all();
    let cpu_ns = cpu_ticks as f64 * 1e9 / crate::process::TICKS_PER_SECOND;
    Ok(WireReport {
        wire,
        payload: args.payload,
        payload_json_bytes: mean,
        subscribers: args.subscribers,
        published: total,
        deliveries,
        bytes_per_delivery: bytes.load(Ordering::Relaxed) as f64 / deliveries as f64,
        hub_cpu_ns_per_delivery: cpu_ns / deliveries as f64,
        hub_cpu_cores: cpu_cores,
    })
}

/// Upgrades asking for `wire`; the stream and the bytes read past the answer. Fails if the
/// hub does not agree to what was asked.
async fn connect(addr: SocketAddr, wire: Wire) -> Result<(TcpStream, BytesMut)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        wire.headers()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during the upgrade");
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            if !head.starts_with("http/1.1 101") {
                bail!(
                    "upgrade refused: {}",
                    head.lines().next().unwrap_or_default()
                );
            }
            if wire.deflate() && !head.contains("permessage-deflate") {
                bail!("the hub did not agree to permessage-deflate (WS_COMPRESSION=off?)");
            }
            let _ = buf.split_to(end + 4);
            return Ok((stream, buf));
        }
    }
}

/// One subscriber: subscribes, then counts every frame after `Subscribed` and its bytes.
async fn subscriber(
    addr: SocketAddr,
    wire: Wire,
    channel: &str,
    frames: &AtomicU64,
    bytes: &AtomicU64,
    ready: &Barrier,
) -> Result<()> {
    let (mut stream, mut buf) = connect(addr, wire).await?;
    let mut out = Vec::new();
    let subscribe = format!(r#"{{"type":"Subscribe","channels":["{channel}"]}}"#);
    write_client_frame(&mut out, OP_TEXT, subscribe.as_bytes());
    stream.write_all(&out).await?;
    let mut subscribed = false;
    loop {
        let mut at = 0;
        let (mut count, mut size) = (0u64, 0u64);
        while let Some(frame) = parse_frame(&buf, at)? {
            if subscribed {
                count += 1;
                size += (frame.next - at) as u64;
            } else if memchr::memmem::find(&buf[frame.start..frame.end], b"Subscribed").is_some() {
                subscribed = true;
                ready.wait().await;
            }
            at = frame.next;
        }
        let _ = buf.split_to(at);
        if count > 0 {
            frames.fetch_add(count, Ordering::Relaxed);
            bytes.fetch_add(size, Ordering::Relaxed);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

impl WireReport {
    /// One line of the S13 table.
    pub(crate) fn line(&self) -> String {
        format!(
            "{:<16} {:<6} json {:>6.0} B  {:>8.1} B/delivery  {:>7.0} ns hub CPU/delivery  ({} deliveries, hub {:.0} % of a core)",
            format!("{:?}", self.wire),
            format!("{:?}", self.payload),
            self.payload_json_bytes,
            self.bytes_per_delivery,
            self.hub_cpu_ns_per_delivery,
            self.deliveries,
            self.hub_cpu_cores * 100.0
        )
    }
}
