//! The bench payload: `{"i":PUBLISHER,"s":SEQ,"t":SENT_NS,"p":"xx…"}`, padded to a size, and a
//! scanner that finds those three numbers in a frame without parsing the JSON around them
//! (a hub `Publication` wraps the payload; a baseline forwards it bare).

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the bench process started; publishers and subscribers share the clock.
pub(crate) fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the Unix epoch: comparable between the bench's processes on one
/// machine (S12's sender and reader).
pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes a payload of at least `size` bytes (exactly `size` when `size` is large enough).
pub(crate) fn write(out: &mut Vec<u8>, publisher: u32, seq: u64, sent_ns: u64, size: usize) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, r#"{{"i":{publisher},"s":{seq},"t":{sent_ns},"p":""#);
    let used = out.len() - start + 2;
    out.extend(std::iter::repeat_n(b'x', size.saturating_sub(used)));
    out.extend_from_slice(b"\"}");
}

/// The searcher for the payload's start, built once: building it per frame cost the load
/// generator about 12 % of its time (perf), which S2, bound by the generator, counted against
/// every server.
static PAYLOAD_START: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#"{"i":"#));

/// Finds `(publisher, seq, sent_ns)` in a frame that contains a bench payload.
pub(crate) fn scan(frame: &[u8]) -> Option<(u32, u64, u64)> {
    let at = PAYLOAD_START.find(frame)?;
    let rest = &frame[at + 5..];
    let (publisher, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","s":"#)?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","t":"#)?;
    let (sent, _) = number(rest)?;
    Some((u32::try_from(publisher).ok()?, seq, sent))
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for b in &bytes[..digits] {
        n = n * 10 + u64::from(b - b'0');
    }
    Some((n, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_size_and_scan_back() {
        let mut out = Vec::new();
        write(&mut out, 3, 42, 123_456_789, 128);
        assert_eq!(out.len(), 128);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        assert_eq!(scan(&out), Some((3, 42, 123_456_789)));
        let wrapped = format!(
            r#"{{"type":"Publication","channel":"bench","seq":9,"data":{}}}"#,
            String::from_utf8(out).unwrap()
        );
        assert_eq!(scan(wrapped.as_bytes()), Some((3, 42, 123_456_789)));
        assert_eq!(scan(br#"{"type":"Subscribed","channels":["bench"]}"#), None);
    }
}
