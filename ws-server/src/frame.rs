//! [`Frame`]: a complete WebSocket text frame (header and payload), encoded once and shared by
//! every recipient, so that a connection's writer only copies bytes.

use bytes::Bytes;

/// Room kept in front of the payload for the longest header (2 + 8 bytes).
const MAX_HEADER: usize = 10;

/// An unmasked, unfragmented server text frame. Cloning shares the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Frame(Bytes);

impl Frame {
    /// Builds a frame whose payload `write` appends to the buffer it is given (UTF-8 JSON).
    pub(crate) fn text_with(capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + capacity);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x81; // FIN + text
        let header_len = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = MAX_HEADER - header_len;
        buf[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
        Self(Bytes::from(buf).slice(start..))
    }

    /// A frame carrying `text`.
    pub(crate) fn text(text: &str) -> Self {
        Self::text_with(text.len(), |buf| buf.extend_from_slice(text.as_bytes()))
    }

    /// The frame's bytes, ready for the socket.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The payload (for tests).
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &str {
        let b = &self.0[..];
        let skip = match b[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&b[skip..]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    use super::*;

    #[test]
    fn headers_match_what_tungstenite_parses() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 100_000] {
            let text = "a".repeat(len);
            let frame = Frame::text(&text);
            let mut cursor = std::io::Cursor::new(frame.as_bytes());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(header.mask, None);
            assert_eq!(payload_len, len as u64);
            assert_eq!(frame.as_bytes().len() - cursor.position() as usize, len);
            assert_eq!(frame.payload(), text);
        }
    }
}
