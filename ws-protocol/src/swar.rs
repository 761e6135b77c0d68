//! Tests on the eight bytes of a `u64` at once (SWAR: SIMD within a register), for the
//! scans of JSON text that look for a few byte values.

/// `byte` in each of a word's eight bytes.
pub(crate) const fn repeated(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit set in (at least) the lowest byte of `word` that is zero; 0 if none is.
/// A false flag can only sit above a real one, so the lowest flag is always real.
pub(crate) const fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(repeated(1)) & !word & repeated(0x80)
}

/// The high bit set in (at least) the lowest byte of `word` below `limit` (at most 0x80); 0
/// if none is. As with [`zero_bytes`], the lowest flag is always real.
pub(crate) const fn below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(repeated(limit)) & !word & repeated(0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_flag_is_the_first_match() {
        for at in 0..8 {
            for value in [0u8, 0x1f] {
                let mut bytes = [b'a'; 8];
                bytes[at] = value;
                // Matches above the first must not move the lowest flag.
                if at < 7 {
                    bytes[7] = value;
                }
                let word = u64::from_le_bytes(bytes);
                assert_eq!(below(word, 0x20).trailing_zeros() / 8, at as u32);
                if value == 0 {
                    assert_eq!(zero_bytes(word).trailing_zeros() / 8, at as u32);
                }
            }
        }
        assert_eq!(
            below(
                u64::from_le_bytes([0x20, 0x7f, 0x80, 0xff, b'"', 0x21, 0xc3, 0xa9]),
                0x20
            ),
            0
        );
        assert_eq!(zero_bytes(repeated(1)), 0);
    }
}
