//! The Redis schema: a channel's three keys (hash-tagged so that they share a slot), the two
//! scripts that touch them, and reading a stream entry back.

use redis::Value;

/// Publishes a batch of publications of one hash slot (one call instead of one per
/// publication: the call's own cost was a third of the script's under many channels). For
/// each publication, in order: its channel's epoch, created (with a fresh sequence, stream
/// and idempotency keys) if Redis does not know the channel; with an idempotency key, the
/// channel's keys (a sorted set of key → `seq`) are looked at first: a key seen before
/// publishes nothing and answers the first `seq`, a new one is remembered (the channel
/// keeping its latest ARGV\[6\] keys for ARGV\[4\] ms after its last keyed publication).
/// Then it takes the next `seq`, appends the publication to the stream (trimmed to about
/// the history size: `MAXLEN ~` trims whole nodes, far cheaper than an exact trim on every
/// append; what is read back is cut to the size), and tells the hubs following the channel:
/// `SPUBLISH` on its shard channel (`ws:{channel}:moved`, in the keys' slot) of
/// `<seq> <epoch> <data>`, the publication itself, which a follower that stands at
/// `seq - 1` delivers without reading the stream. The keys' expiry is refreshed when the
/// publication asks for it (the hub does at most once a minute per channel:
/// `expiry_refresh.rs`) or the channel is new. The entry's time is the publishing hub's
/// clock (ARGV\[5\], ms), not `TIME`.
///
/// KEYS: per publication, its channel's epoch, seq, stream and idempotency keys. ARGV:
/// the epoch of channels created by this batch, history size, expiry ms, idempotency
/// window ms, time ms, keys kept; then per publication its data, shard channel, `1` to
/// refresh the expiry (else `0`) and idempotency key (empty if none). Returns
/// `{epoch, seq, duplicate}` per publication, flattened.
pub(super) const PUBLISH: &str = r"
local out = {}
for j = 0, #KEYS / 4 - 1 do
  local k, a = j * 4, 6 + j * 4
  local data, key = ARGV[a + 1], ARGV[a + 4]
  local fresh = false
  local epoch = redis.call('GET', KEYS[k + 1])
  if not epoch then
    epoch = ARGV[1]
    fresh = true
    redis.call('SET', KEYS[k + 1], epoch)
    redis.call('DEL', KEYS[k + 2], KEYS[k + 3], KEYS[k + 4])
  end
  local first = nil
  if key ~= '' then first = redis.call('ZSCORE', KEYS[k + 4], key) end
  if first then
    table.insert(out, epoch); table.insert(out, tonumber(first)); table.insert(out, 1)
  else
    local seq = redis.call('INCR', KEYS[k + 2])
    if tonumber(ARGV[2]) > 0 then
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', ARGV[2], '0-' .. seq, 'e', epoch, 't', ARGV[5], 'd', data)
    end
    if fresh or ARGV[a + 3] == '1' then
      for i = 1, 3 do redis.call('PEXPIRE', KEYS[k + i], ARGV[3]) end
    end
    redis.call('SPUBLISH', ARGV[a + 2], seq .. ' ' .. epoch .. ' ' .. data)
    if key ~= '' then
      redis.call('ZADD', KEYS[k + 4], seq, key)
      local extra = redis.call('ZCARD', KEYS[k + 4]) - tonumber(ARGV[6])
      if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[k + 4], 0, extra - 1) end
      redis.call('PEXPIRE', KEYS[k + 4], ARGV[4])
    end
    table.insert(out, epoch); table.insert(out, seq); table.insert(out, 0)
  end
end
return out
";

/// The channel's epoch (created, with a fresh sequence and stream, if Redis does not know
/// the channel), `seq`, and the stream's tail (at most the history size), newest first as
/// `id, t, d` triples. KEYS: epoch, seq, stream. ARGV: epoch if none yet, history size,
/// expiry ms.
pub(super) const ATTACH: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = {epoch, seq}
if tonumber(ARGV[2]) > 0 then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])) do
    local fields = entry[2]
    local t, d = '0', nil
    for i = 1, #fields, 2 do
      if fields[i] == 't' then t = fields[i + 1] elseif fields[i] == 'd' then d = fields[i + 1] end
    end
    table.insert(out, entry[1]); table.insert(out, t); table.insert(out, d)
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return out
";

/// Now on this hub's clock, in ms since the Unix epoch: the time of stream entries, against
/// which `WS_HISTORY_TTL` is applied (hubs' clocks should agree, as NTP keeps them: a skew
/// between two hubs moves that cut by as much).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn key(channel: &str, part: &str) -> String {
    format!("ws:{{{channel}}}:{part}")
}

/// The shard channel a channel's publications are announced on (in its keys' slot).
pub(super) fn moved(channel: &str) -> String {
    key(channel, "moved")
}

/// The channel a stream key (`part` "stream") or shard channel (`part` "moved") belongs to.
pub(super) fn channel_of<'a>(name: &'a str, part: &str) -> Option<&'a str> {
    name.strip_prefix("ws:{")?
        .strip_suffix(part)?
        .strip_suffix("}:")
}

/// A fresh epoch name, for a channel Redis does not know.
pub(super) fn new_epoch() -> String {
    format!("r{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// The `seq` of a stream entry ID `0-<seq>`.
pub(super) fn entry_seq(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_and_entry_ids_carry_the_seq() {
        assert_eq!(key("prices:SOL", "seq"), "ws:{prices:SOL}:seq");
        assert_eq!(moved("prices:SOL"), "ws:{prices:SOL}:moved");
        assert_eq!(channel_of("ws:{a:b}}:moved", "moved"), Some("a:b}"));
        assert_eq!(channel_of("ws:{a}:stream", "stream"), Some("a"));
        assert_eq!(channel_of("ws:{a}:stream", "moved"), None);
        assert_eq!(entry_seq("0-42"), Some(42));
        assert_eq!(entry_seq("1700000000000-0"), None);
        assert_ne!(new_epoch(), new_epoch());
    }
}
