//! The sender of S12: after a hand-written upgrade, every connection gets bench payloads as
//! text frames, as fast as the socket takes them (`/?rate=0`, the default) or at a fixed
//! rate (`/?rate=N` frames per second, sent each millisecond with the wall-clock time they
//! were due in them, so that the reader can time them; at a rate every connection carries the
//! same numbers: one feed, for racing). `&size=N` sets the payload size (128); `&spaced=1`
//! sends each frame alone at the moment it is due rather than a millisecond's worth on each
//! tick (the sender spins between frames: for one reader on a core of its own).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::payload;
use crate::wire::{self, OP_TEXT};

/// Serves until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A reader going away is the normal end of a bench connection.
            let _ = connection(stream).await;
        });
    }
}

/// The value of `name` in the request line's query, if any.
fn query(head: &str, name: &str) -> Option<u64> {
    let target = head.lines().next()?.split_whitespace().nth(1)?;
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok())?
    })
}

async fn connection(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let head = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during upgrade");
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 4);
            break head;
        }
    };
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .context("no Sec-WebSocket-Key")?;
    let rate = query(&head, "rate").unwrap_or(0);
    let size = usize::try_from(query(&head, "size").unwrap_or(128)).unwrap_or(128);
    let spaced = query(&head, "spaced").unwrap_or(0) == 1;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    let (mut reader, mut writer) = stream.into_split();
    // Whatever the reader sends (a close, pings) is read and ignored; its end ends this.
    let draining = tokio::spawn(async move {
        let mut sink = vec![0u8; 4096];
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    let (mut out, mut body) = (Vec::with_capacity(256 * 1024), Vec::with_capacity(size));
    let mut seq = 0u64;
    let mut frame = |out: &mut Vec<u8>, seq: u64| {
        body.clear();
        payload::write(&mut body, 0, seq, payload::unix_ns(), size);
        wire::write_server_frame(out, OP_TEXT, &body);
    };
    if rate == 0 {
        while !draining.is_finished() {
            out.clear();
            while out.len() < 128 * 1024 {
                seq += 1;
                frame(&mut out, seq);
            }
            writer.write_all(&out).await?;
        }
        return Ok(());
    }
    // At a rate, number `n` is due at `n / rate` seconds of the Unix clock: every connection
    // carries the same numbers at the same moments, one feed seen through several
    // connections, each frame stamped with the moment it was due.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let period_ns = (1_000_000_000 / rate).max(1);
    let mut next = payload::unix_ns() / period_ns + 1;
    while !draining.is_finished() {
        tick.tick().await;
        if spaced {
            // Each frame alone at the moment it is due, up to the next tick: the sender
            // spins between them (it runs alone on its core for S12), so that a reader sees
            // one frame at a time rather than a millisecond's worth at once.
            let horizon = payload::unix_ns() + 1_000_000;
            while next * period_ns <= horizon {
                let at = next * period_ns;
                while payload::unix_ns() < at {
                    std::hint::spin_loop();
                }
                out.clear();
                body.clear();
                payload::write(&mut body, 0, next, at, size);
                wire::write_server_frame(&mut out, OP_TEXT, &body);
                writer.write_all(&out).await?;
                next += 1;
            }
            continue;
        }
        // Frames due by now, so that the rate holds whatever the timer's granularity.
        let due = payload::unix_ns() / period_ns;
        out.clear();
        while next <= due {
            body.clear();
            payload::write(&mut body, 0, next, next * period_ns, size);
            wire::write_server_frame(&mut out, OP_TEXT, &body);
            next += 1;
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
        }
    }
    Ok(())
}
