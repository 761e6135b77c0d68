//! The Redis schema: a channel's three keys (hash-tagged so that they share a slot), the two
//! scripts that touch them, and reading a stream entry back.

use redis::Value;

/// The start of both scripts: the channel's epoch, created (with a fresh sequence and stream)
/// if Redis does not know the channel (`fresh` is then true). KEYS: epoch, seq, stream;
/// ARGV\[1\]: the new epoch.
macro_rules! epoch_or_new {
    () => {
        r"
local fresh = false
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  fresh = true
  redis.call('SET', KEYS[1], epoch)
  for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
end
"
    };
}

/// Takes the next `seq`, appends the publication (the stream trimmed to about the history
/// size: `MAXLEN ~` trims whole nodes, which costs Redis far less than an exact trim on every
/// append; the history read back is cut to the size), and tells the hubs following the
/// channel that it moved: `SPUBLISH` on the channel's shard channel ARGV\[6\]
/// (`ws:{channel}:moved`, in the keys' slot) of `<seq> <epoch> <data>`, the publication
/// itself, which a follower that stands at `seq - 1` delivers without reading the stream.
/// The keys' expiry is refreshed when ARGV\[8\] is 1 (the publishing hub asks for it at most
/// once a [`EXPIRY_REFRESH`](super::publisher) period per channel: three `PEXPIRE`s on
/// every publication were a fifth of the script's cost) or the channel is new. The entry's
/// time is the publishing hub's clock (ARGV\[7\], ms), not `TIME` (another fifth).
/// With an idempotency key (ARGV\[9\]) the channel's keys (KEYS\[4\], a sorted set of key →
/// `seq`) are looked at first: a key seen before publishes nothing and returns the first
/// `seq`; a new one is remembered, the channel keeping its latest ARGV\[10\] keys for
/// ARGV\[5\] ms after its last keyed publication.
/// KEYS: epoch, seq, stream, and the channel's keys if the publication has one. ARGV: epoch
/// if none yet, data, history size, expiry ms, idempotency window ms, shard channel, time ms,
/// refresh expiry, key, keys kept. Returns `{epoch, seq, duplicate}`.
pub(super) const PUBLISH: &str = concat!(
    epoch_or_new!(),
    r"
if KEYS[4] then
  local first = redis.call('ZSCORE', KEYS[4], ARGV[9])
  if first then return {epoch, tonumber(first), 1} end
end
local seq = redis.call('INCR', KEYS[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'e', epoch, 't', ARGV[7], 'd', ARGV[2])
end
if fresh or ARGV[8] == '1' then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('SPUBLISH', ARGV[6], seq .. ' ' .. epoch .. ' ' .. ARGV[2])
if KEYS[4] then
  redis.call('ZADD', KEYS[4], seq, ARGV[9])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[10])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {epoch, seq, 0}
"
);

/// The channel's epoch (created if none), `seq`, and the stream's tail (at most the history
/// size), newest first as `id, t, d` triples. KEYS: epoch, seq, stream. ARGV: epoch if none
/// yet, history size, expiry ms.
pub(super) const ATTACH: &str = concat!(
    epoch_or_new!(),
    r"
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
"
);

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
