//! [`Frame`]: a complete WebSocket frame (header and payload), encoded once and shared by
//! every recipient, so that a connection's writer only copies bytes: a text frame of JSON, or
//! a binary frame of the same message as MessagePack, either possibly compressed
//! (permessage-deflate).

use std::cell::RefCell;

use bytes::Bytes;
use ws_protocol::deflate::{COMPRESS_AT_LEAST, Compressor};
use ws_protocol::json_to_msgpack;

/// Room kept in front of the payload for the longest header (2 + 8 bytes).
const MAX_HEADER: usize = 10;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
/// The bit of the first header byte that marks a compressed message (RFC 7692).
const RSV1: u8 = 0x40;

thread_local! {
    /// One compressor per thread: each message is compressed on its own.
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new());
}

/// An unmasked, unfragmented server frame. Cloning shares the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Frame(Bytes);

impl Frame {
    /// Builds a text frame whose payload `write` appends to the buffer it is given (UTF-8
    /// JSON).
    pub(crate) fn text_with(capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        Self::with(OPCODE_TEXT, capacity, write)
    }

    /// A binary frame carrying `bytes` (a message as MessagePack).
    pub(crate) fn binary(bytes: &[u8]) -> Self {
        Self::with(OPCODE_BINARY, bytes.len(), |buf| {
            buf.extend_from_slice(bytes);
        })
    }

    /// The same message as a MessagePack binary frame, from this text frame's JSON.
    pub(crate) fn to_msgpack(&self) -> Self {
        let json = std::str::from_utf8(self.payload_bytes()).unwrap_or_default();
        Self::binary(&json_to_msgpack(json).unwrap_or_default())
    }

    /// The payload's length.
    pub(crate) fn payload_len(&self) -> usize {
        self.payload_bytes().len()
    }

    /// Whether the payload is long enough for [`deflated`](Self::deflated) to try.
    pub(crate) fn worth_compressing(&self) -> bool {
        self.payload_len() >= COMPRESS_AT_LEAST
    }

    /// The same message compressed (RSV1 set), or this frame again when compressing does not
    /// pay: a payload under [`COMPRESS_AT_LEAST`] bytes, or one that does not shrink.
    pub(crate) fn deflated(&self) -> Self {
        if !self.worth_compressing() {
            return self.clone();
        }
        let payload = self.payload_bytes();
        let opcode = self.0.first().map_or(OPCODE_TEXT, |b| b & 0x0f);
        let packed = COMPRESSOR.with(|compressor| {
            let mut buf = Vec::with_capacity(MAX_HEADER + payload.len() / 2);
            buf.resize(MAX_HEADER, 0);
            let shrunk = compressor.borrow_mut().compress(payload, &mut buf)
                && buf.len() - MAX_HEADER < payload.len();
            shrunk.then_some(buf)
        });
        match packed {
            Some(buf) => Self::headed(RSV1 | opcode, buf),
            None => self.clone(),
        }
    }

    fn with(opcode: u8, capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + capacity);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        Self::headed(opcode, buf)
    }

    /// The frame whose payload follows [`MAX_HEADER`] bytes of room in `buf`; `first` is the
    /// header's first byte but FIN (RSV1 and the opcode).
    fn headed(first: u8, mut buf: Vec<u8>) -> Self {
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | first; // FIN, RSV1 if compressed, the opcode
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

    /// The payload's bytes (server frames are unmasked).
    fn payload_bytes(&self) -> &[u8] {
        let b = &self.0[..];
        let skip = match b.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        b.get(skip..).unwrap_or_default()
    }

    /// The payload (for tests).
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &str {
        std::str::from_utf8(self.payload_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

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

    #[test]
    fn a_text_frame_turns_into_the_same_message_as_a_binary_msgpack_frame() {
        for len in [0usize, 200, 70_000] {
            let message = ws_protocol::WsMessage::error("bad_request", "x".repeat(len));
            let packed = Frame::text(&message.to_json()).to_msgpack();
            let mut cursor = std::io::Cursor::new(packed.as_bytes());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert!(header.is_final);
            let payload = &packed.as_bytes()[cursor.position() as usize..];
            assert_eq!(payload.len() as u64, payload_len);
            assert_eq!(
                ws_protocol::WsMessage::from_msgpack(payload).unwrap(),
                message
            );
        }
    }
}
