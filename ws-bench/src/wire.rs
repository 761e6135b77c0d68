//! Just enough of the WebSocket client side for a load generator that must not be the
//! bottleneck: a hand-written upgrade, masked text frames out, and an in-place parser for the
//! server's unmasked frames, so one core can read millions of frames a second.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opcodes of the frames the bench reads and writes.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Connects (from `source` when given), upgrades, and returns the stream with any bytes read
/// past the upgrade response.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> io::Result<(TcpStream, BytesMut)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Err(io::Error::other(format!("upgrade refused: {status}")));
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("upgrade response too large"));
        }
    }
}

/// Appends one masked client frame. The mask is fixed per call site; servers must unmask
/// whatever key they get, and the bench has no intermediary to confuse.
pub(crate) fn write_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= MASK[i & 3];
    }
}

/// Appends one unmasked server frame (for the baseline servers).
pub(crate) fn write_server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// One parsed frame: its opcode and where its payload sits in the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRef {
    /// The opcode.
    pub opcode: u8,
    /// Payload start in the buffer.
    pub start: usize,
    /// Payload end in the buffer.
    pub end: usize,
    /// The whole frame's end (where the next frame starts).
    pub next: usize,
    /// The masking key, for frames sent by clients.
    pub mask: Option<[u8; 4]>,
}

/// Parses the frame at `buf[at..]`; `None` until it is complete.
///
/// # Errors
/// A frame too large to be plausible.
pub(crate) fn parse_frame(buf: &[u8], at: usize) -> io::Result<Option<FrameRef>> {
    let b = &buf[at..];
    if b.len() < 2 {
        return Ok(None);
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut header) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&b[2..10]);
            let len = u64::from_be_bytes(len);
            if len > 64 << 20 {
                return Err(io::Error::other(format!("frame of {len} bytes")));
            }
            (len as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    let mask = if masked {
        if b.len() < header + 4 {
            return Ok(None);
        }
        let key = [b[header], b[header + 1], b[header + 2], b[header + 3]];
        header += 4;
        Some(key)
    } else {
        None
    };
    if b.len() < header + len {
        return Ok(None);
    }
    Ok(Some(FrameRef {
        opcode,
        start: at + header,
        end: at + header + len,
        next: at + header + len,
        mask,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload = vec![b'x'; len];
            let mut out = Vec::new();
            write_server_frame(&mut out, OP_TEXT, &payload);
            let frame = parse_frame(&out, 0).unwrap().unwrap();
            assert_eq!(
                (frame.opcode, frame.end - frame.start, frame.next),
                (OP_TEXT, len, out.len())
            );
            assert!(parse_frame(&out[..out.len() - 1], 0).unwrap().is_none());

            let mut masked = Vec::new();
            write_client_frame(&mut masked, OP_TEXT, &payload);
            let frame = parse_frame(&masked, 0).unwrap().unwrap();
            let key = frame.mask.unwrap();
            let unmasked: Vec<u8> = masked[frame.start..frame.end]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }
}
