//! Scenario S12: one client reading 128 B text frames from the `blast` baseline (its own
//! process): how many per second reach the application at the highest rate the sender
//! reaches, and at a fixed rate the latency from the sender's clock to the application, for
//! `ws-client` (`next_stamped`, which also gives the time from the frame's read to its
//! return: what the client adds) and for bare readers beside it: tokio-tungstenite,
//! fastwebsockets and sockudo-ws.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use ws_client::{Event, ServerProtocol, Transport, WebSocketClient};

use crate::payload;
use crate::stats::Latency;

/// Which reader S12 measures.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Reader {
    /// `ws_client::WebSocketClient::next_stamped` on its default transport (tokio-tungstenite).
    WsClient,
    /// The same on sockudo-ws (`Transport::Sockudo`).
    WsClientSockudo,
    /// A bare `tokio_tungstenite::connect_async` stream.
    Tungstenite,
    /// A bare `fastwebsockets::WebSocket` after a hand-written upgrade.
    Fastwebsockets,
    /// A bare `sockudo_ws` client stream (HTTP/1.1, no compression).
    Sockudo,
}

/// Settings of S12.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientReceiveArgs {
    /// The sender, `ws://HOST:PORT` (`ws-bench serve blast`).
    #[arg(long, default_value = "ws://127.0.0.1:9001")]
    pub url: String,
    /// The reader.
    #[arg(long, value_enum, default_value = "ws-client")]
    pub reader: Reader,
    /// Frames per second; 0: as fast as the sender can.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// At a rate: the sender writes each frame alone at its moment (spinning between
    /// them) instead of a millisecond's frames at once on its timer's tick.
    #[arg(long)]
    pub spaced: bool,
    /// Seconds of reading.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// `ws-client` readers: take up to this many events per call with `next_stamped_many`
    /// instead of one per `next_stamped` call (0).
    #[arg(long, default_value_t = 0)]
    pub many: usize,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What S12 measured.
#[derive(Debug, Serialize)]
pub(crate) struct ClientReceiveReport {
    /// The reader.
    pub reader: Reader,
    /// The sender's rate (0: as fast as it can).
    pub rate: u64,
    /// Whether the sender wrote each frame alone at its moment (`--spaced`).
    pub spaced: bool,
    /// Frames handed to the application.
    pub received: u64,
    /// Frames handed to the application per second.
    pub received_per_s: f64,
    /// Seconds of reading.
    pub duration_s: f64,
    /// From the sender's clock in the frame to the application (at a fixed rate).
    pub latency_us: Latency,
    /// `ws-client` only: from the frame's read off the socket to its return by
    /// `next_stamped`.
    pub added_us: Option<Latency>,
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn latency(hist: &Histogram<u64>) -> Latency {
    let at = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    Latency {
        samples: hist.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: hist.max() as f64 / 1_000.0,
    }
}

/// Opens a TCP connection to `url` and upgrades it by hand (what the feed reader this
/// scenario stands for did before fastwebsockets); returns the stream right after the
/// response's blank line, nothing of the first frames read.
async fn upgrade(url: &str) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = crate::load::socket_addr(url)?;
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    let path = rest.find('/').map_or("/", |at| &rest[at..]);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            bail!("no end to the upgrade response");
        }
        head.push(stream.read_u8().await?);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(stream)
}

/// Runs S12.
pub(crate) async fn run(args: &ClientReceiveArgs) -> Result<ClientReceiveReport> {
    let url = format!(
        "{}/?rate={}&size={}&spaced={}",
        args.url.trim_end_matches('/'),
        args.rate,
        args.size,
        u8::from(args.spaced)
    );
    let duration = Duration::from_secs_f64(args.duration);
    let (mut e2e, mut added) = (histogram()?, histogram()?);
    // Latency only at a fixed rate: as fast as it can, the sender's clock runs ahead of a
    // queue that only grows.
    let timed = args.rate > 0;
    let mut received = 0u64;
    let (started, duration_s);
    match args.reader {
        Reader::WsClient | Reader::WsClientSockudo => {
            let transport = match args.reader {
                Reader::WsClientSockudo => Transport::Sockudo,
                _ => Transport::Tungstenite,
            };
            let client = WebSocketClient::builder()
                .url(&url)
                .protocol(ServerProtocol::Raw)
                .transport(transport)
                .build()
                .await?;
            let mut record = |stamped: &ws_client::Stamped| {
                if let Event::Message(text) = &stamped.event {
                    received += 1;
                    if timed {
                        let now = payload::unix_ns();
                        if let Some((_, _, sent)) = payload::scan(text.as_bytes()) {
                            let _ = e2e.record(now.saturating_sub(sent).max(1));
                        }
                        if let Some(at) = stamped.received_at {
                            let took = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            let _ = added.record(took.max(1));
                        }
                    }
                }
            };
            let mut events = Vec::with_capacity(args.many);
            started = Instant::now();
            while started.elapsed() < duration {
                if args.many == 0 {
                    let Some(stamped) = client.next_stamped().await else {
                        bail!("the client ended");
                    };
                    record(&stamped);
                } else {
                    if client.next_stamped_many(&mut events, args.many).await == 0 {
                        bail!("the client ended");
                    }
                    // The clock is read per message, as every other reader's loop does.
                    for stamped in events.drain(..) {
                        if started.elapsed() >= duration {
                            break;
                        }
                        record(&stamped);
                    }
                }
            }
            duration_s = started.elapsed().as_secs_f64();
            client.close().await;
        }
        Reader::Tungstenite => {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            started = Instant::now();
            while started.elapsed() < duration {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        received += 1;
                        if timed && let Some((_, _, sent)) = payload::scan(text.as_bytes()) {
                            let now = payload::unix_ns();
                            let _ = e2e.record(now.saturating_sub(sent).max(1));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the sender closed"),
                }
            }
            duration_s = started.elapsed().as_secs_f64();
            let _ = ws.close(None).await;
        }
        Reader::Fastwebsockets => {
            use fastwebsockets::{OpCode, Role, WebSocket};
            let stream = upgrade(&url).await?;
            let mut ws = WebSocket::after_handshake(stream, Role::Client);
            ws.set_auto_close(true);
            ws.set_auto_pong(true);
            started = Instant::now();
            while started.elapsed() < duration {
                let frame = ws.read_frame().await?;
                match frame.opcode {
                    OpCode::Text => {
                        received += 1;
                        if timed && let Some((_, _, sent)) = payload::scan(&frame.payload) {
                            let now = payload::unix_ns();
                            let _ = e2e.record(now.saturating_sub(sent).max(1));
                        }
                    }
                    OpCode::Close => bail!("the sender closed"),
                    _ => {}
                }
            }
            duration_s = started.elapsed().as_secs_f64();
        }
        Reader::Sockudo => {
            use sockudo_ws::{Config, Message as SockudoMessage, WebSocketStream};
            // Its client handshake needs the http2 feature; the same hand-written upgrade
            // as fastwebsockets' instead.
            let stream = upgrade(&url).await?;
            let mut ws = WebSocketStream::client(stream, Config::default());
            started = Instant::now();
            while started.elapsed() < duration {
                match ws.next().await {
                    Some(Ok(SockudoMessage::Text(bytes))) => {
                        received += 1;
                        if timed && let Some((_, _, sent)) = payload::scan(&bytes) {
                            let now = payload::unix_ns();
                            let _ = e2e.record(now.saturating_sub(sent).max(1));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("sockudo-ws: {e}"),
                    None => bail!("the sender closed"),
                }
            }
            duration_s = started.elapsed().as_secs_f64();
        }
    }
    Ok(ClientReceiveReport {
        reader: args.reader,
        rate: args.rate,
        spaced: args.spaced,
        received,
        received_per_s: received as f64 / duration_s,
        duration_s,
        latency_us: latency(&e2e),
        added_us: matches!(args.reader, Reader::WsClient | Reader::WsClientSockudo)
            .then(|| latency(&added)),
    })
}
