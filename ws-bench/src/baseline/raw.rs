//! The raw-frame fan-out: after a hand-written upgrade it works on bytes only. Each incoming
//! frame is unmasked and framed for sending once; the same `Bytes` go into every other
//! connection's bounded queue (a full queue drops, counted as loss by the bench), and each
//! connection's writer takes everything queued and writes it with one call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::wire::{self, OP_CLOSE, OP_TEXT};

/// Frames queued per connection before new ones are dropped.
const QUEUE: usize = 4096;

type Peers = Arc<RwLock<Vec<(u64, mpsc::Sender<Bytes>)>>>;

/// Serves until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> Result<()> {
    let peers: Peers = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (peers, id) = (peers.clone(), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            // A connection's end (EOF, reset) is the normal end of a bench connection.
            let _ = connection(stream, id, peers.clone()).await;
            peers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(i, _)| *i != id);
        });
    }
}

async fn connection(mut stream: TcpStream, id: u64, peers: Peers) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let key = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during upgrade");
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 4);
            break head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_owned())
                })
                .context("no Sec-WebSocket-Key")?;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;

    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, tx));
    let writing = tokio::spawn(async move {
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            out.clear();
            out.extend_from_slice(&first);
            while out.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => out.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if writer.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let mut payload = Vec::new();
    loop {
        let mut at = 0;
        while let Some(frame) = wire::parse_frame(&buf, at)? {
            at = frame.next;
            match frame.opcode {
                OP_TEXT => {
                    payload.clear();
                    payload.extend_from_slice(&buf[frame.start..frame.end]);
                    if let Some(key) = frame.mask {
                        for (i, byte) in payload.iter_mut().enumerate() {
                            *byte ^= key[i & 3];
                        }
                    }
                    let mut framed = Vec::with_capacity(payload.len() + 10);
                    wire::write_server_frame(&mut framed, OP_TEXT, &payload);
                    let framed = Bytes::from(framed);
                    for (peer, queue) in peers.read().unwrap_or_else(|p| p.into_inner()).iter() {
                        if *peer != id {
                            let _ = queue.try_send(framed.clone());
                        }
                    }
                }
                OP_CLOSE => {
                    writing.abort();
                    return Ok(());
                }
                _ => {}
            }
        }
        buf.advance(at);
        buf.reserve(16 * 1024);
        if reader.read_buf(&mut buf).await? == 0 {
            writing.abort();
            return Ok(());
        }
    }
}
