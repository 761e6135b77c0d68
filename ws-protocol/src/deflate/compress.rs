//! [`Compressor`]: one message compressed on its own, as a permessage-deflate payload.

use flate2::{Compress, Compression, FlushCompress};

/// Messages shorter than this many bytes are sent uncompressed (RSV1 clear, as RFC 7692
/// allows per message): deflate saves next to nothing on them (a 100-byte price update
/// shrinks by a few bytes) and each costs a compression.
pub const COMPRESS_AT_LEAST: usize = 256;

/// A raw-deflate compressor (window 2^15) that compresses each message without context
/// takeover. Reusable: one per thread serves every message that thread compresses.
pub struct Compressor {
    deflate: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    /// A compressor at level 1 (miniz_oxide): an order book compresses within a few percent
    /// of the default level's size at half its CPU (docs/BENCHMARKS.md, S13).
    pub fn new() -> Self {
        Self {
            deflate: Compress::new(Compression::fast(), false),
        }
    }

    /// Appends to `out` the permessage-deflate payload of `message`: the message deflated on
    /// its own, flushed, without the final `00 00 ff ff` (RFC 7692, section 7.2.1).
    /// `false` (with `out` as it was) if the compressor failed, which zlib does only for a
    /// broken state: the message then goes uncompressed.
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) -> bool {
        self.deflate.reset();
        let start = out.len();
        let mut consumed = 0;
        loop {
            out.reserve(message.len() / 2 + 64);
            let before = self.deflate.total_in();
            if self
                .deflate
                .compress_vec(&message[consumed..], out, FlushCompress::Sync)
                .is_err()
            {
                out.truncate(start);
                return false;
            }
            consumed += usize::try_from(self.deflate.total_in() - before).unwrap_or(0);
            // Done once all input is in and the flush did not fill the room it had.
            if consumed >= message.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
            true
        } else {
            out.truncate(start);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(1 << 20);
        Decompress::new(false)
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn each_message_inflates_on_its_own() {
        let mut compressor = Compressor::new();
        let book = r#"{"bids":[[187.42,10.5],[187.41,3.2]],"asks":[[187.43,1.0]]}"#.repeat(20);
        for message in [book.as_bytes(), b"", b"x", &vec![b' '; 200_000]] {
            let mut out = vec![9u8]; // appended after what is there
            assert!(compressor.compress(message, &mut out));
            assert_eq!(out[0], 9);
            assert_eq!(
                inflate(&out[1..]),
                message,
                "no context from the last message"
            );
        }
        let mut out = Vec::new();
        compressor.compress(book.as_bytes(), &mut out);
        assert!(
            out.len() * 5 < book.len(),
            "{} of {}",
            out.len(),
            book.len()
        );
        out.clear();
        compressor.compress(b"", &mut out);
        assert_eq!(
            out,
            [0],
            "an empty message is one empty block (RFC 7692, 7.2.3.6)"
        );
    }
}
