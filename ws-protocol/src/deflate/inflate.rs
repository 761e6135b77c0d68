//! [`Inflater`]: rewrites an inbound WebSocket byte stream so that a reader without
//! permessage-deflate can read it. Every frame passes as it came, except the frames of
//! compressed messages (RSV1 on the first): those are gathered, inflated as one message
//! under a size cap, and passed on as one frame with RSV1 clear. The reader behind it
//! (tungstenite) checks everything else about the frames as before.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// What is inflated in one step, into a buffer per thread.
const CHUNK: usize = 32 * 1024;

/// A gathered message's buffer larger than this is released after it, so that a connection
/// that once received a large compressed message does not keep the room.
const KEPT_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// One raw inflater (window 2^15) and output chunk per thread, reset for every message:
    /// without context takeover no message needs the last one's window.
    static INFLATE: RefCell<(Decompress, Box<[u8]>)> =
        RefCell::new((Decompress::new(false), vec![0; CHUNK].into_boxed_slice()));
}

/// Which side sent the frames: a client's are masked, a server's are not (RFC 6455, 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesFrom {
    /// A server reads a client's frames. Inflated messages are passed on masked with the
    /// key 0, so that the reader's check that client frames are masked holds.
    Client,
    /// A client reads a server's frames.
    Server,
}

/// Why the inflater stopped: the connection must end with [`close_code`](Self::close_code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// The message, inflated (or still compressed), is larger than the limit: close 1009.
    #[error("a compressed message inflates past the limit of {limit} bytes")]
    TooLarge {
        /// The limit (`WS_MAX_MESSAGE_SIZE`).
        limit: usize,
    },
    /// The frames break RFC 7692 or RFC 6455 in a way only the inflater sees: close 1002.
    #[error("permessage-deflate protocol error: {0}")]
    Protocol(&'static str),
    /// The compressed data is not valid deflate data: close 1007.
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
}

impl InflateError {
    /// The close code the connection ends with.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => crate::close::MESSAGE_TOO_BIG,
            Self::Protocol(_) => crate::close::PROTOCOL_ERROR,
            Self::Corrupt(_) => crate::close::INVALID_PAYLOAD,
        }
    }
}

/// Where the rewriter is in the byte stream.
#[derive(Debug)]
enum State {
    /// Reading a frame header into `header`.
    Header,
    /// Passing `left` more payload bytes on as they are.
    Pass { left: u64 },
    /// Gathering `left` more payload bytes of a compressed message, unmasked with `mask`
    /// from byte `at` of it; `fin` if the frame ends the message.
    Take {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
}

/// The inbound side of permessage-deflate for one connection (see the module docs). Holds
/// a few dozen bytes between messages; while a compressed message arrives, its compressed
/// bytes (at most the limit).
#[derive(Debug)]
pub struct Inflater {
    from: FramesFrom,
    limit: usize,
    state: State,
    header: [u8; MAX_HEADER],
    have: usize,
    /// The opcode of the compressed message being gathered.
    message: Option<u8>,
    compressed: Vec<u8>,
    /// The connection's own inflater, when the peer compresses with context takeover (its
    /// window carries from one message to the next); otherwise the thread's, reset for
    /// every message.
    own: Option<Box<Decompress>>,
}

impl Inflater {
    /// An inflater for frames sent by `from`, refusing messages larger than `limit` bytes
    /// (compressed or inflated).
    pub fn new(from: FramesFrom, limit: usize) -> Self {
        Self {
            from,
            limit,
            state: State::Header,
            header: [0; MAX_HEADER],
            have: 0,
            message: None,
            compressed: Vec::new(),
            own: None,
        }
    }

    /// An inflater for a server that compresses with context takeover (it did not agree to
    /// `server_no_context_takeover`): it keeps its own window, about 40 KiB, for the
    /// connection's life.
    pub fn with_context_takeover(limit: usize) -> Self {
        Self {
            own: Some(Box::new(Decompress::new(false))),
            ..Self::new(FramesFrom::Server, limit)
        }
    }

    /// Rewrites `input`, the next bytes read from the socket, appending to `out` what the
    /// reader should see.
    ///
    /// # Errors
    /// [`InflateError`]: the connection must end; nothing more should be fed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Header => {
                    let need = header_len(&self.header[..self.have]);
                    let take = (need - self.have).min(input.len());
                    self.header[self.have..self.have + take].copy_from_slice(&input[..take]);
                    self.have += take;
                    input = &input[take..];
                    if self.have == header_len(&self.header[..self.have]) {
                        self.start_frame(out)?;
                    }
                }
                State::Pass { left } => {
                    let n = input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Take {
                    left,
                    mask,
                    at,
                    fin,
                } => {
                    let n = input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    if self.compressed.len() + n > self.limit {
                        return Err(InflateError::TooLarge { limit: self.limit });
                    }
                    self.compressed.extend(
                        input[..n]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(*at + i) % 4]),
                    );
                    *at += n;
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        let fin = *fin;
                        self.state = State::Header;
                        if fin {
                            self.inflate_message(out)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A frame's header is complete: decide whether it passes or is gathered.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let bytes = self.header;
        let header = &bytes[..self.have];
        let fin = header[0] & 0x80 != 0;
        let rsv1 = header[0] & 0x40 != 0;
        let opcode = header[0] & 0x0f;
        let masked = header[1] & 0x80 != 0;
        let (len, mask) = length_and_mask(header);
        self.have = 0;
        let data = matches!(opcode, 0x1 | 0x2);
        let gather = match (rsv1, opcode, self.message) {
            // Control frames may come between a message's frames: they pass (with RSV1 set,
            // the reader refuses them).
            (_, 0x8..=0xf, _) => false,
            (true, 0x1 | 0x2, None) => true,
            (_, 0x1 | 0x2, Some(_)) => {
                return Err(InflateError::Protocol(
                    "a new message began before the compressed one ended",
                ));
            }
            (true, 0x0, _) => {
                return Err(InflateError::Protocol("RSV1 set on a continuation frame"));
            }
            (false, 0x0, Some(_)) => true,
            // Uncompressed frames, and reserved opcodes the reader refuses.
            _ => false,
        };
        if !gather {
            out.extend_from_slice(header);
            self.state = if len == 0 {
                State::Header
            } else {
                State::Pass { left: len }
            };
            return Ok(());
        }
        match (self.from, masked) {
            (FramesFrom::Client, false) => {
                return Err(InflateError::Protocol("an unmasked frame from a client"));
            }
            (FramesFrom::Server, true) => {
                return Err(InflateError::Protocol("a masked frame from a server"));
            }
            _ => {}
        }
        if data {
            self.message = Some(opcode);
        }
        if len > self.limit.saturating_sub(self.compressed.len()) as u64 {
            return Err(InflateError::TooLarge { limit: self.limit });
        }
        self.state = State::Take {
            left: len,
            mask,
            at: 0,
            fin,
        };
        if len == 0 {
            self.state = State::Header;
            if fin {
                self.inflate_message(out)?;
            }
        }
        Ok(())
    }

    /// The gathered message is complete: inflate it and pass it on as one frame.
    fn inflate_message(&mut self, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let opcode = self.message.take().unwrap_or(0x1);
        self.compressed.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let header_at = out.len();
        out.extend_from_slice(&[0; MAX_HEADER]);
        let payload_at = out.len();
        let (input, limit) = (&self.compressed[..], self.limit);
        let inflated = INFLATE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (shared, chunk) = &mut *cell;
            match self.own.as_deref_mut() {
                Some(own) => inflate_into(own, chunk, input, out, limit),
                None => {
                    shared.reset(false);
                    inflate_into(shared, chunk, input, out, limit)
                }
            }
        });
        self.compressed.clear();
        if self.compressed.capacity() > KEPT_CAPACITY {
            self.compressed = Vec::new();
        }
        inflated?;
        // The header, placed just before the payload; the room left over is removed.
        let len = out.len() - payload_at;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | opcode;
        let masked = if self.from == FramesFrom::Client {
            0x80
        } else {
            0
        };
        let mut n = if len < 126 {
            header[1] = masked | len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            header[1] = masked | 126;
            header[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            header[1] = masked | 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        if masked != 0 {
            n += 4; // the key 0: masking changes nothing
        }
        out[payload_at - n..payload_at].copy_from_slice(&header[..n]);
        out.drain(header_at..payload_at - n);
        Ok(())
    }
}

/// Inflates all of `input` with `inflater`, a chunk at a time, appending to `out`; more than
/// `limit` bytes is refused as soon as the inflater makes them.
fn inflate_into(
    inflater: &mut Decompress,
    chunk: &mut [u8],
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), InflateError> {
    let start = out.len();
    let mut consumed = 0;
    loop {
        let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress(&input[consumed..], chunk, FlushDecompress::Sync)
            .map_err(|e| InflateError::Corrupt(e.to_string()))?;
        let read = usize::try_from(inflater.total_in() - before_in).unwrap_or(0);
        let made = usize::try_from(inflater.total_out() - before_out).unwrap_or(0);
        consumed += read;
        if out.len() - start + made > limit {
            return Err(InflateError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk[..made]);
        if (consumed == input.len() && made < chunk.len()) || status == Status::StreamEnd {
            return Ok(());
        }
        if read == 0 && made == 0 {
            return Err(InflateError::Corrupt(
                "the inflater made no progress".into(),
            ));
        }
    }
}

/// The length of the header that starts with `have` (at least 2 bytes are needed to know).
fn header_len(have: &[u8]) -> usize {
    let Some(&second) = have.get(1) else {
        return 2;
    };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length and mask key (zeros if unmasked) of a complete header.
fn length_and_mask(header: &[u8]) -> (u64, [u8; 4]) {
    let (len, at) = match header[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        short => (u64::from(short), 2),
    };
    let mut mask = [0u8; 4];
    if header[1] & 0x80 != 0 {
        mask.copy_from_slice(&header[at..at + 4]);
    }
    (len, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::Compressor;

    /// A frame as a client (masked with `key`) or a server sends it.
    fn frame(first: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if key.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(masked | payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(masked | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(masked | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// The frames in `bytes`: (first byte, payload unmasked, was masked).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>, bool)> {
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let n = header_len(bytes);
            let (len, mask) = length_and_mask(&bytes[..n]);
            let len = len as usize;
            let payload = bytes[n..n + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            all.push((bytes[0], payload, bytes[1] & 0x80 != 0));
            bytes = &bytes[n + len..];
        }
        all
    }

    fn compressed(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(Compressor::new().compress(message, &mut out));
        out
    }

    const KEY: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

    #[test]
    fn compressed_messages_come_out_inflated_whatever_the_read_boundaries() {
        let book =
            br#"{"type":"Publish","channel":"book","data":{"bids":[[1,2],[3,4]]}}"#.repeat(30);
        let packed = compressed(&book);
        let (first, rest) = packed.split_at(packed.len() / 2);
        let mut input = frame(0x81, b"plain", KEY); // uncompressed text passes
        input.extend(frame(0x41, first, KEY)); // compressed text, not final
        input.extend(frame(0x89, b"ping", KEY)); // a ping between its frames
        input.extend(frame(0x80, rest, KEY)); // the final continuation
        input.extend(frame(0xc2, &compressed(b"\x00\x01binary"), KEY));
        for step in [1, 3, 7, input.len()] {
            let mut inflater = Inflater::new(FramesFrom::Client, 1 << 20);
            let mut out = Vec::new();
            for chunk in input.chunks(step) {
                inflater.feed(chunk, &mut out).unwrap();
            }
            let seen = frames(&out);
            assert_eq!(
                seen,
                vec![
                    (0x81, b"plain".to_vec(), true),
                    (0x89, b"ping".to_vec(), true),
                    (0x81, book.clone(), true),
                    (0x82, b"\x00\x01binary".to_vec(), true),
                ],
                "read {step} bytes at a time"
            );
            // The uncompressed frames pass byte for byte, mask included.
            assert_eq!(&out[..11], &frame(0x81, b"plain", KEY)[..]);
        }
    }

    #[test]
    fn a_server_frame_comes_out_unmasked() {
        let mut inflater = Inflater::new(FramesFrom::Server, 1 << 20);
        let mut out = Vec::new();
        let message = "é".repeat(500);
        inflater
            .feed(
                &frame(0xc1, &compressed(message.as_bytes()), None),
                &mut out,
            )
            .unwrap();
        assert_eq!(frames(&out), vec![(0x81, message.into_bytes(), false)]);
        let masked = frame(0xc1, &compressed(b"x"), KEY);
        assert_eq!(
            Inflater::new(FramesFrom::Server, 100).feed(&masked, &mut out),
            Err(InflateError::Protocol("a masked frame from a server"))
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_with_memory_bounded() {
        // 32 MiB of spaces: a few KiB compressed at the best level.
        let mut deflate = flate2::Compress::new(flate2::Compression::best(), false);
        let mut bomb = Vec::with_capacity(1 << 20);
        deflate
            .compress_vec(
                &vec![b' '; 32 << 20],
                &mut bomb,
                flate2::FlushCompress::Sync,
            )
            .unwrap();
        bomb.truncate(bomb.len() - 4);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let limit = 64 * 1024;
        let mut inflater = Inflater::new(FramesFrom::Client, 1 << 20);
        inflater.limit = limit;
        let mut out = Vec::new();
        let error = inflater.feed(&frame(0xc1, &bomb, KEY), &mut out);
        assert_eq!(error, Err(InflateError::TooLarge { limit }));
        assert_eq!(error.unwrap_err().close_code(), 1009);
        assert!(out.len() <= limit + MAX_HEADER, "{}", out.len());
        // Compressed bytes past the limit are refused from the header alone.
        let mut inflater = Inflater::new(FramesFrom::Client, 10);
        let error = inflater.feed(&frame(0x41, &[0; 11], KEY)[..8], &mut Vec::new());
        assert_eq!(error, Err(InflateError::TooLarge { limit: 10 }));
    }

    #[test]
    fn broken_frames_are_named() {
        let cases: [(Vec<u8>, InflateError); 4] = [
            (
                [frame(0x41, &compressed(b"ab"), KEY), frame(0xc0, b"x", KEY)].concat(),
                InflateError::Protocol("RSV1 set on a continuation frame"),
            ),
            (
                [frame(0x41, &compressed(b"ab"), KEY), frame(0x81, b"x", KEY)].concat(),
                InflateError::Protocol("a new message began before the compressed one ended"),
            ),
            (
                frame(0xc1, &compressed(b"ab"), None),
                InflateError::Protocol("an unmasked frame from a client"),
            ),
            (
                frame(0xc1, &[0xff, 0xff, 0xff], KEY),
                InflateError::Corrupt(String::new()),
            ),
        ];
        for (input, expected) in cases {
            let got = Inflater::new(FramesFrom::Client, 1 << 20).feed(&input, &mut Vec::new());
            match (&got, &expected) {
                (Err(InflateError::Corrupt(_)), InflateError::Corrupt(_)) => {}
                _ => assert_eq!(got, Err(expected)),
            }
        }
        // Control frames with RSV1 and reserved opcodes pass: the reader refuses them.
        let mut out = Vec::new();
        let odd = [frame(0xc9, b"p", KEY), frame(0x83, b"r", KEY)].concat();
        Inflater::new(FramesFrom::Client, 100)
            .feed(&odd, &mut out)
            .unwrap();
        assert_eq!(out, odd);
    }
}

#[cfg(test)]
mod context_tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    #[test]
    fn a_server_with_context_takeover_is_followed_across_messages() {
        // Two messages compressed with one window: the second refers back to the first.
        let mut deflate = Compress::new(Compression::default(), false);
        let text = br#"{"symbol":"SOL-USDC","bids":[[187.42,1.5],[187.41,2.5]]}"#;
        let mut input = Vec::new();
        for _ in 0..2 {
            let mut payload = Vec::with_capacity(256);
            deflate
                .compress_vec(text, &mut payload, FlushCompress::Sync)
                .unwrap();
            payload.truncate(payload.len() - 4);
            input.push(0xc1);
            input.push(payload.len() as u8);
            input.extend_from_slice(&payload);
        }
        let mut inflater = Inflater::with_context_takeover(1 << 20);
        let mut out = Vec::new();
        inflater.feed(&input, &mut out).unwrap();
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend_from_slice(&[0x81, text.len() as u8]);
            expected.extend_from_slice(text);
        }
        assert_eq!(out, expected);
    }
}

#[cfg(test)]
mod random_tests {
    use super::*;
    use crate::deflate::Compressor;

    /// Arbitrary bytes, fed in arbitrary pieces, never panic and never make more than the
    /// limit per message; whatever the inflater refuses, it names.
    #[test]
    fn byte_soup_is_refused_or_passed_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..3_000 {
            let len = rng.usize(0..600);
            let mut input: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Often start with a plausible compressed frame header.
            if rng.bool() && input.len() > 2 {
                input[0] = 0xc0 | rng.u8(0..3);
                input[1] = 0x80 | rng.u8(0..126);
            }
            let from = if rng.bool() {
                FramesFrom::Client
            } else {
                FramesFrom::Server
            };
            let mut inflater = Inflater::new(from, 4096);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                if inflater.feed(&rest[..n], &mut out).is_err() {
                    break;
                }
                rest = &rest[n..];
            }
            assert!(out.len() <= input.len() + 4096 + MAX_HEADER);
        }
    }

    /// Random messages, compressed and cut at random, come out as they went in.
    #[test]
    fn random_messages_round_trip_whatever_the_cuts() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut compressor = Compressor::new();
        for _ in 0..300 {
            let len = rng.usize(0..5000);
            let alphabet = b"0123456789.,[]{}\":abcdef";
            let message: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut payload = Vec::new();
            assert!(compressor.compress(&message, &mut payload));
            let mut input = vec![0xc2];
            if payload.len() < 126 {
                input.push(payload.len() as u8);
            } else {
                input.push(126);
                input.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            input.extend_from_slice(&payload);
            let mut inflater = Inflater::new(FramesFrom::Server, 1 << 20);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                inflater.feed(&rest[..n], &mut out).unwrap();
                rest = &rest[n..];
            }
            let skip = header_len(&out);
            assert_eq!(out[0], 0x82);
            assert_eq!(&out[skip..], &message[..]);
        }
    }
}
