//! Reading an `XREAD` reply into the entries the follower delivers, moving the bytes out of
//! redis-rs's reply instead of copying them through a map per entry (`StreamReadReply`): a
//! hub following many channels reads many small replies, and their allocations showed in
//! its profile.

use redis::Value;
use serde_json::value::RawValue;

use super::schema::entry_seq;

/// One stream's part of a reply.
#[derive(Debug)]
pub(super) struct StreamRead {
    /// The stream's key.
    pub(super) key: String,
    /// Entries returned, malformed ones included (to tell whether the read was full).
    pub(super) returned: usize,
    /// The well-formed entries, in stream order.
    pub(super) entries: Vec<StreamEntry>,
    /// The IDs of malformed entries (no `0-<seq>` ID, no epoch `e` or no JSON data `d`).
    pub(super) malformed: Vec<String>,
}

/// One publication read back from a stream.
#[derive(Debug)]
pub(super) struct StreamEntry {
    pub(super) seq: u64,
    pub(super) epoch: String,
    pub(super) data: Box<RawValue>,
}

/// The streams of an `XREAD` reply (RESP2 arrays or a RESP3 map; nil when nothing is new).
pub(super) fn streams(reply: Value) -> Vec<StreamRead> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(parts) => {
                    let mut parts = parts.into_iter();
                    Some((parts.next()?, parts.next()?))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(key, entries)| {
            let key = into_string(key)?;
            let Value::Array(entries) = entries else {
                return None;
            };
            let mut read = StreamRead {
                key,
                returned: entries.len(),
                entries: Vec::with_capacity(entries.len()),
                malformed: Vec::new(),
            };
            for entry in entries {
                match into_entry(entry) {
                    Ok(entry) => read.entries.push(entry),
                    Err(id) => read.malformed.push(id),
                }
            }
            Some(read)
        })
        .collect()
}

/// An entry `[id, [field, value, …]]`, or its ID (or `?`) if malformed.
fn into_entry(entry: Value) -> Result<StreamEntry, String> {
    let Value::Array(parts) = entry else {
        return Err("?".to_owned());
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .and_then(into_string)
        .unwrap_or_else(|| "?".to_owned());
    let fields: Vec<Value> = match parts.next() {
        Some(Value::Array(fields)) => fields,
        Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Err(id),
    };
    let (mut epoch, mut data) = (None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name {
            Value::BulkString(name) if name == b"e" => epoch = into_string(value),
            Value::BulkString(name) if name == b"d" => {
                data = into_string(value).and_then(|d| RawValue::from_string(d).ok());
            }
            _ => {}
        }
    }
    match (entry_seq(&id), epoch, data) {
        (Some(seq), Some(epoch), Some(data)) => Ok(StreamEntry { seq, epoch, data }),
        _ => Err(id),
    }
}

/// The text of a string reply, moved out.
fn into_string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn a_reply_becomes_entries_in_order_with_malformed_ones_named() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("ws:{a}:stream"),
            Value::Array(vec![
                entry("0-1", &[("e", "E"), ("t", "5"), ("d", r#"{"n":1}"#)]),
                entry("0-2", &[("e", "E"), ("d", "not json")]),
                entry("1700000000000-0", &[("e", "E"), ("d", "2")]),
                entry("0-4", &[("d", "4"), ("e", "F")]),
            ]),
        ])]);
        let read = streams(reply);
        assert_eq!(read.len(), 1);
        let read = &read[0];
        assert_eq!((read.key.as_str(), read.returned), ("ws:{a}:stream", 4));
        let got: Vec<(u64, &str, &str)> = read
            .entries
            .iter()
            .map(|e| (e.seq, e.epoch.as_str(), e.data.get()))
            .collect();
        assert_eq!(got, [(1, "E", r#"{"n":1}"#), (4, "F", "4")]);
        assert_eq!(read.malformed, ["0-2", "1700000000000-0"]);
        // RESP3 gives a map of streams; nil is nothing new.
        let resp3 = Value::Map(vec![(
            bulk("ws:{b}:stream"),
            Value::Array(vec![entry("0-9", &[("e", "E"), ("d", "9")])]),
        )]);
        assert_eq!(streams(resp3)[0].entries[0].seq, 9);
        assert!(streams(Value::Nil).is_empty());
    }
}
