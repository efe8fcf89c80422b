//! Dead-lettering (copy + ack in one atomic script) and the dead-letter stream's entries.

use super::wire::{self, RawEntry};
use super::{Fields, Stream, check_name};
use crate::script::{self, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

/// The largest reason the script takes; the worker truncates longer handler errors.
pub(crate) const MAX_REASON: usize = 65536;

/// What [`Stream::dead_letter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLettered {
    /// Copied to the dead-letter stream (as `dead_id`) and acked.
    Moved {
        /// The dead letter's ID in the dead-letter stream.
        dead_id: String,
        /// How often the group had delivered the entry.
        deliveries: u64,
    },
    /// The entry's data had been trimmed or deleted: it was only acked.
    Gone {
        /// How often the group had delivered the entry.
        deliveries: u64,
    },
    /// The entry is not pending for this consumer (acked, dead-lettered already, or claimed by
    /// another consumer): nothing was done.
    NotPending,
}

/// One call of the `stream.dead_letter` script: run it with
/// [`query_async`](ScriptCall::query_async) or [`query`](ScriptCall::query).
///
/// The dead letter holds `dead:id`, `dead:reason`, `dead:deliveries`, `dead:group`,
/// `dead:consumer`, then the original entry's fields; read it back with [`DeadLetter`].
///
/// ```
/// use redis_primitives::stream::Stream;
/// let s = Stream::new("orders").unwrap();
/// assert!(s.dead_letter_call("g", "c", "1-0", "boom", Some(1000)).is_ok());
/// assert!(s.dead_letter_call("g", "c", "1", "boom", None).is_err()); // a full ID only
/// assert!(s.dead_letter_call("", "c", "1-0", "boom", None).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetterCall {
    key: String,
    dead_key: String,
    group: String,
    consumer: String,
    id: String,
    reason: String,
    dead_maxlen: u64,
}

impl DeadLetterCall {
    pub(crate) fn new(
        stream: &Stream,
        group: &str,
        consumer: &str,
        id: &str,
        reason: &str,
        dead_maxlen: Option<u64>,
    ) -> Result<Self> {
        check_name("group", group)?;
        check_name("consumer", consumer)?;
        if !wire::is_stream_id(id, false) {
            return Err(Error::invalid("id", format!("`{id}` is not a stream ID <ms>-<seq>")));
        }
        if reason.len() > MAX_REASON {
            return Err(Error::invalid("reason", format!("must be at most {MAX_REASON} bytes")));
        }
        let dead_maxlen = match dead_maxlen {
            None => 0,
            Some(0) => return Err(Error::invalid("dead_maxlen", "must be at least 1 (None: unbounded)")),
            Some(n) if n >= 1_000_000_000_000_000 => {
                return Err(Error::invalid("dead_maxlen", "must be at most 15 digits"));
            }
            Some(n) => n,
        };
        Ok(DeadLetterCall {
            key: stream.key().to_owned(),
            dead_key: stream.dead_key().to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            id: id.to_owned(),
            reason: reason.to_owned(),
            dead_maxlen,
        })
    }
}

impl ScriptCall for DeadLetterCall {
    type Output = DeadLettered;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("stream.dead_letter")?
            .invoke()
            .key(self.key.as_str())
            .key(self.dead_key.as_str())
            .arg(self.group.as_str())
            .arg(self.consumer.as_str())
            .arg(self.id.as_str())
            .arg(self.reason.as_str())
            .arg(self.dead_maxlen))
    }

    fn parse(&self, reply: Reply) -> Result<DeadLettered> {
        let redis::Value::Array(parts) = reply.value() else {
            return Err(reply.unexpected("{status, dead id, deliveries}"));
        };
        let (Some(status), Some(dead_id), Some(deliveries)) = (
            parts.first().and_then(wire::int),
            parts.get(1).and_then(wire::text),
            parts.get(2).and_then(wire::int),
        ) else {
            return Err(reply.unexpected("{status, dead id, deliveries}"));
        };
        let deliveries = deliveries.max(0) as u64;
        match status {
            1 if !dead_id.is_empty() => Ok(DeadLettered::Moved { dead_id, deliveries }),
            2 => Ok(DeadLettered::Gone { deliveries }),
            0 => Ok(DeadLettered::NotPending),
            _ => Err(reply.unexpected("status 0, 1 (with an ID) or 2")),
        }
    }
}

/// One entry of the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its ID in the dead-letter stream.
    pub id: String,
    /// The original entry's ID.
    pub origin_id: String,
    /// Why it was dead-lettered (the handler's error, or a note that its consumers were lost).
    pub reason: String,
    /// How often the group had delivered it.
    pub deliveries: u64,
    /// The consumer group it failed in.
    pub group: String,
    /// The consumer that dead-lettered it.
    pub consumer: String,
    /// The original entry's fields.
    pub fields: Fields,
}

const META: [&str; 5] = ["dead:id", "dead:reason", "dead:deliveries", "dead:group", "dead:consumer"];

impl DeadLetter {
    pub(crate) fn from_raw(raw: RawEntry) -> Result<Self> {
        let bad = |detail: &str| {
            Error::unexpected("stream.dead_letter", format!("dead letter {}: {detail}", raw.id))
        };
        let fields = raw.fields.clone().ok_or_else(|| bad("no data"))?;
        if fields.len() < META.len() {
            return Err(bad("missing metadata fields"));
        }
        let (meta, fields) = fields.split_front(META.len());
        let mut values = Vec::with_capacity(META.len());
        for ((name, value), want) in meta.iter().zip(META) {
            if name != want.as_bytes() {
                return Err(bad(&format!("expected field {want}")));
            }
            values.push(String::from_utf8_lossy(value).into_owned());
        }
        let deliveries = values[2].parse().map_err(|_| bad("dead:deliveries is not a number"))?;
        Ok(DeadLetter {
            id: raw.id.clone(),
            origin_id: values[0].clone(),
            reason: values[1].clone(),
            deliveries,
            group: values[3].clone(),
            consumer: values[4].clone(),
            fields,
        })
    }
}

/// What [`Stream::retire_consumer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// The consumer is gone (deleted now, or it did not exist).
    Retired,
    /// Kept: it still owns this many pending entries.
    Kept {
        /// Its pending entries.
        pending: u64,
    },
}

/// One call of the `stream.retire_consumer` script: the pending check and `XGROUP DELCONSUMER`
/// in one atomic step, so a consumer that still owns entries is never deleted.
///
/// ```
/// use redis_primitives::stream::{RetireCall, Stream};
/// let s = Stream::new("orders").unwrap();
/// assert!(RetireCall::new(&s, "billing", "billing-1").is_ok());
/// assert!(RetireCall::new(&s, "", "billing-1").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RetireCall {
    key: String,
    group: String,
    consumer: String,
}

impl RetireCall {
    /// Retires `consumer` of `group` on `stream`.
    pub fn new(stream: &Stream, group: &str, consumer: &str) -> Result<RetireCall> {
        check_name("group", group)?;
        check_name("consumer", consumer)?;
        Ok(RetireCall {
            key: stream.key().to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        })
    }
}

impl ScriptCall for RetireCall {
    type Output = Retirement;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("stream.retire_consumer")?
            .invoke()
            .key(&self.key)
            .arg(&self.group)
            .arg(&self.consumer))
    }

    fn parse(&self, reply: Reply) -> Result<Retirement> {
        let v = reply.ints(2)?;
        Ok(if v[0] == 1 { Retirement::Retired } else { Retirement::Kept { pending: v[1].max(0) as u64 } })
    }
}
