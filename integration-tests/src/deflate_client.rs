//! [`DeflateClient`]: a WebSocket client written frame by frame over TCP that offers
//! permessage-deflate, so that the hub's compression is tested apart from any client library
//! (tokio-tungstenite has no deflate): it sends compressed or plain frames, and tells for each
//! frame it reads whether it came compressed.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_protocol::deflate::{Compressor, FramesFrom, Inflater};

use crate::within;

/// One frame the hub sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The opcode (1 text, 2 binary, 8 close, ...).
    pub opcode: u8,
    /// The payload, inflated if it came compressed.
    pub payload: Vec<u8>,
    /// Whether it came compressed (RSV1).
    pub compressed: bool,
    /// Its size on the wire, header included.
    pub wire_len: usize,
}

/// A client that offers permessage-deflate.
#[derive(Debug)]
pub struct DeflateClient {
    tcp: TcpStream,
    /// Bytes read and not yet parsed.
    buffer: Vec<u8>,
    /// The hub's `Sec-WebSocket-Extensions` answer, if any.
    pub extensions: Option<String>,
}

impl DeflateClient {
    /// Upgrades with `offer` as `Sec-WebSocket-Extensions` (none if `None`).
    ///
    /// # Errors
    /// If the connection or the upgrade fails.
    pub async fn connect(addr: SocketAddr, offer: Option<&str>) -> Result<Self> {
        let mut tcp = within("connect", TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let mut request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = within("the upgrade answer", tcp.read(&mut chunk)).await??;
            ensure!(n > 0, "the hub closed during the upgrade");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        buffer.drain(..end);
        Ok(Self {
            tcp,
            buffer,
            extensions,
        })
    }

    /// Sends one text message, compressed if `compress`.
    ///
    /// # Errors
    /// If the write fails.
    pub async fn send_text(&mut self, text: &str, compress: bool) -> Result<()> {
        let mut payload = Vec::new();
        let first = if compress {
            ensure!(Compressor::new().compress(text.as_bytes(), &mut payload));
            0xc1
        } else {
            payload.extend_from_slice(text.as_bytes());
            0x81
        };
        self.send_frame(first, &payload).await
    }

    /// Sends one frame with first header byte `first` (FIN, RSV1, opcode) and `payload`,
    /// masked as a client must.
    ///
    /// # Errors
    /// If the write fails.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) -> Result<()> {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else if let Ok(short) = u16::try_from(payload.len()) {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&short.to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        within("a write", self.tcp.write_all(&frame)).await??;
        Ok(())
    }

    /// The next frame from the hub.
    ///
    /// # Errors
    /// If none comes in time, the connection ends, or the frame is malformed.
    pub async fn recv(&mut self) -> Result<Received> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = within("a frame", self.tcp.read(&mut chunk)).await??;
            if n == 0 {
                bail!("the hub closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text message from the hub, skipping pings.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), or if a frame other than text or ping comes.
    pub async fn recv_text(&mut self) -> Result<(String, Received)> {
        loop {
            let frame = self.recv().await?;
            match frame.opcode {
                0x1 => return Ok((String::from_utf8(frame.payload.clone())?, frame)),
                0x9 | 0xa => continue,
                other => bail!("expected a text frame, got opcode {other}: {frame:?}"),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Received>> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        ensure!(b[1] & 0x80 == 0, "the hub masked a frame");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (usize::try_from(u64::from_be_bytes(n))?, 10)
            }
            126 | 127 => return Ok(None),
            short => (usize::from(short), 2),
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let wire: Vec<u8> = self.buffer.drain(..at + len).collect();
        let compressed = wire[0] & 0x40 != 0;
        ensure!(wire[0] & 0x80 != 0, "the hub fragmented a message");
        let mut plain = Vec::new();
        Inflater::new(FramesFrom::Server, 64 << 20)
            .feed(&wire, &mut plain)
            .context("inflating the hub's frame")?;
        let skip = match plain[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        Ok(Some(Received {
            opcode: wire[0] & 0x0f,
            payload: plain[skip..].to_vec(),
            compressed,
            wire_len: wire.len(),
        }))
    }
}

/// `total` bytes of spaces deflated at the best level, made a MiB at a time, as a
/// permessage-deflate payload: a decompression bomb (32 MiB make about 32 KiB).
///
/// # Errors
/// If the compressor fails.
pub fn bomb(total: usize) -> Result<Vec<u8>> {
    let mut deflate = Compress::new(Compression::best(), false);
    let chunk = vec![b' '; 1 << 20];
    let mut out = Vec::with_capacity(64 * 1024);
    for _ in 0..total / chunk.len() {
        let before = deflate.total_in();
        while deflate.total_in() - before < chunk.len() as u64 {
            let at = usize::try_from(deflate.total_in() - before)?;
            out.reserve(4096);
            deflate.compress_vec(&chunk[at..], &mut out, FlushCompress::None)?;
        }
    }
    loop {
        out.reserve(4096);
        deflate.compress_vec(&[], &mut out, FlushCompress::Sync)?;
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
    }
    out.truncate(out.len() - 4);
    Ok(out)
}

/// A memory figure of this process in KiB from `/proc/self/status` (`VmRSS`, `VmHWM`).
///
/// # Errors
/// If the file or the field cannot be read.
pub fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a number")?
        .parse()?)
}
