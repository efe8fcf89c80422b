//! The stream commands' replies (XREADGROUP, XRANGE, XAUTOCLAIM, XPENDING), read with the crate's
//! reply toolkit ([`crate::script::reply`]) without trusting them: any shape mismatch is
//! [`Error::UnexpectedReply`](crate::Error::UnexpectedReply), never a panic. Handles RESP2 and
//! RESP3 shapes, and the nil entries Redis 6.2 puts in history reads and XAUTOCLAIM replies.

use redis::Value;

use super::Fields;
use crate::Result;

/// One entry as read: its ID and fields, or `None` when its data was trimmed or deleted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawEntry {
    pub id: String,
    pub fields: Option<Fields>,
}

pub(crate) use crate::script::reply::{bad, bytes, int, items, text};

/// A flat `[field, value, …]` array (or a RESP3 map) as [`Fields`].
pub(crate) fn fields(command: &str, v: &Value) -> Result<Fields> {
    let mut out = Fields::new();
    match v {
        Value::Map(pairs) => {
            for (k, val) in pairs {
                let (Some(k), Some(val)) = (bytes(k), bytes(val)) else {
                    return Err(bad(command, "field/value strings", v));
                };
                out.push(k, val);
            }
        }
        other => {
            let flat = items(command, other)?;
            if flat.len() % 2 != 0 {
                return Err(bad(command, "an even field/value list", other));
            }
            for pair in flat.chunks(2) {
                let (Some(k), Some(val)) = (bytes(&pair[0]), bytes(&pair[1])) else {
                    return Err(bad(command, "field/value strings", other));
                };
                out.push(k, val);
            }
        }
    }
    Ok(out)
}

/// `[id, fields]`, where fields may be nil (data gone).
pub(crate) fn entry(command: &str, v: &Value) -> Result<RawEntry> {
    let parts = items(command, v)?;
    let id = parts.first().and_then(text).ok_or_else(|| bad(command, "[id, fields]", v))?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(f) => Some(fields(command, f)?),
    };
    Ok(RawEntry { id, fields })
}

/// An array of entries (XRANGE, one stream of XREADGROUP); nil is empty.
pub(crate) fn entries(command: &str, v: &Value) -> Result<Vec<RawEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => items(command, other)?.iter().map(|e| entry(command, e)).collect(),
    }
}

/// An XREADGROUP/XREAD reply for one stream: nil (timeout), `[[key, entries]]` or `{key: entries}`.
pub(crate) fn read_reply(v: &Value) -> Result<Vec<RawEntry>> {
    const CMD: &str = "XREADGROUP";
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Map(pairs) => {
            for (_, e) in pairs {
                out.extend(entries(CMD, e)?);
            }
        }
        other => {
            for stream in items(CMD, other)? {
                let parts = items(CMD, stream)?;
                let e = parts.get(1).ok_or_else(|| bad(CMD, "[key, entries]", stream))?;
                out.extend(entries(CMD, e)?);
            }
        }
    }
    Ok(out)
}

/// An XAUTOCLAIM reply.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AutoClaim {
    /// The cursor for the next call; `0-0` when the scan wrapped.
    pub next: String,
    /// Entries now owned by the caller, with their data.
    pub claimed: Vec<RawEntry>,
    /// Nil entries (Redis 6.2 reports deleted entries so, without their IDs).
    pub unreadable: usize,
    /// Entries whose data was gone; Redis 7+ removed them from the pending list.
    pub deleted: Vec<String>,
}

/// `[next, [entry | nil …], [deleted-id …]?]`.
pub(crate) fn autoclaim(v: &Value) -> Result<AutoClaim> {
    const CMD: &str = "XAUTOCLAIM";
    let parts = items(CMD, v)?;
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad(CMD, "[next, entries, deleted?]", v));
    }
    let next = text(&parts[0]).ok_or_else(|| bad(CMD, "a cursor ID", v))?;
    let mut out = AutoClaim { next, ..AutoClaim::default() };
    for e in items(CMD, &parts[1])? {
        match e {
            Value::Nil => out.unreadable += 1,
            e => {
                let raw = entry(CMD, e)?;
                if raw.fields.is_some() {
                    out.claimed.push(raw);
                } else {
                    out.deleted.push(raw.id);
                }
            }
        }
    }
    if let Some(deleted) = parts.get(2) {
        for id in items(CMD, deleted)? {
            out.deleted.push(text(id).ok_or_else(|| bad(CMD, "deleted IDs", v))?);
        }
    }
    Ok(out)
}

/// One row of the extended XPENDING form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingRow {
    pub id: String,
    pub consumer: String,
    pub deliveries: u64,
}

/// `[[id, consumer, idle-ms, deliveries] …]`.
pub(crate) fn pending_rows(v: &Value) -> Result<Vec<PendingRow>> {
    const CMD: &str = "XPENDING";
    items(CMD, v)?
        .iter()
        .map(|row| {
            let r = items(CMD, row)?;
            match (r.first().and_then(text), r.get(1).and_then(text), r.get(3).and_then(int)) {
                (Some(id), Some(consumer), Some(d)) => {
                    Ok(PendingRow { id, consumer, deliveries: d.max(0) as u64 })
                }
                _ => Err(bad(CMD, "[id, consumer, idle, deliveries]", row)),
            }
        })
        .collect()
}

/// A pipeline's replies: exactly one per command sent.
pub(crate) fn replies(command: &str, v: Value, sent: usize) -> Result<Vec<Value>> {
    match v {
        Value::Array(replies) if replies.len() == sent => Ok(replies),
        other => Err(bad(command, &format!("{sent} replies"), &other)),
    }
}

/// The milliseconds part of a stream ID.
pub(crate) fn id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Whether `s` is a full stream ID `<ms>-<seq>` (or `<ms>` when `partial_ok`), each part a
/// 64-bit unsigned number, as Redis takes it.
pub(crate) fn is_stream_id(s: &str, partial_ok: bool) -> bool {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok();
    match s.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => partial_ok && digits(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_in_both_protocols() {
        let e = Value::Array(vec![b("1-0"), Value::Array(vec![b("k"), b("v")])]);
        let resp2 = Value::Array(vec![Value::Array(vec![b("s"), Value::Array(vec![e.clone()])])]);
        let resp3 = Value::Map(vec![(b("s"), Value::Array(vec![e]))]);
        for v in [resp2, resp3] {
            let got = read_reply(&v).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].id, "1-0");
            assert_eq!(got[0].fields.as_ref().unwrap().get_str("k"), Some("v"));
        }
        assert!(read_reply(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for v in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![b("s")])]),
            Value::Array(vec![Value::Array(vec![b("s"), Value::Array(vec![Value::Array(vec![])])])]),
            Value::Array(vec![Value::Array(vec![
                b("s"),
                Value::Array(vec![Value::Array(vec![b("1-0"), Value::Array(vec![b("odd")])])]),
            ])]),
        ] {
            assert!(read_reply(&v).is_err(), "{v:?}");
        }
        assert!(autoclaim(&Value::Array(vec![b("0-0")])).is_err());
        assert!(autoclaim(&Value::Nil).is_err());
        assert!(pending_rows(&Value::Array(vec![Value::Array(vec![b("1-0")])])).is_err());
    }

    #[test]
    fn autoclaim_separates_gone_entries() {
        let live = Value::Array(vec![b("1-0"), Value::Array(vec![b("k"), b("v")])]);
        let v62 = Value::Array(vec![b("0-0"), Value::Array(vec![live.clone(), Value::Nil])]);
        let got = autoclaim(&v62).unwrap();
        assert_eq!((got.claimed.len(), got.unreadable, got.deleted.len()), (1, 1, 0));
        let v7 = Value::Array(vec![b("5-0"), Value::Array(vec![live]), Value::Array(vec![b("2-0")])]);
        let got = autoclaim(&v7).unwrap();
        assert_eq!(got.next, "5-0");
        assert_eq!(got.deleted, vec!["2-0".to_owned()]);
    }

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("1-0", false));
        assert!(is_stream_id("17", true));
        assert!(!is_stream_id("17", false));
        assert!(!is_stream_id("1-", true));
        assert!(!is_stream_id("a-1", true));
        assert!(!is_stream_id("*", true));
        assert!(!is_stream_id("+1-0", true));
        assert!(is_stream_id("18446744073709551615-18446744073709551615", false));
        assert!(!is_stream_id("18446744073709551616-0", false));
        assert_eq!(id_millis("1700-3"), Some(1700));
    }
}
