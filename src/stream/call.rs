//! The stream scripts as typed calls ([`ScriptCall`]), one per `scripts/stream/*.lua`: build one
//! with [`Stream::dead_letter_call`] or [`RetireCall::new`], run it with `query`/`query_async`,
//! or put many into a [`Batch`](crate::script::Batch). [`Stream::dead_letter`] and
//! [`Stream::retire_consumer`] run them within the stream's deadline.
//!
//! ```no_run
//! use redis_primitives::script::{Batch, ScriptCall};
//! use redis_primitives::stream::Stream;
//!
//! # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
//! let orders = Stream::new("orders")?;
//! let mut batch = Batch::new();
//! for id in ["1700000000000-0", "1700000000000-1"] {
//!     batch.push(orders.dead_letter_call("billing", "billing-1", id, "bad data", Some(10_000))?);
//! }
//! for moved in batch.query(con)? {
//!     println!("{:?}", moved?);
//! }
//! # Ok(()) }
//! ```

use super::{Stream, wire};
use crate::script::{Id, Invocation, Reply, ScriptCall};
use crate::{Error, Result, rules};

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

/// The dead-letter stream's bound as the script takes it: `None` is unbounded (0 on the wire),
/// `Some(n)` keeps about `n` entries, 1..=10^12.
pub(crate) fn dead_maxlen(maxlen: Option<u64>) -> Result<u64> {
    match maxlen {
        None => Ok(0),
        Some(n) => rules::count("dead_maxlen", n),
    }
}

/// One call of the `stream.dead_letter` script: moves pending entry `id` of `consumer` to the
/// dead-letter stream and acks it, atomically (copy + ack in one step, so an entry is never both
/// lost and unacked, nor copied twice).
///
/// The dead letter holds `dead:id`, `dead:reason`, `dead:deliveries`, `dead:group`,
/// `dead:consumer`, then the original entry's fields; read it back with
/// [`DeadLetter`](super::DeadLetter).
///
/// ```
/// use redis_primitives::stream::Stream;
/// let s = Stream::new("orders").unwrap();
/// assert!(s.dead_letter_call("g", "c", "1-0", "boom", Some(1000)).is_ok());
/// assert!(s.dead_letter_call("g", "c", "1", "boom", None).is_err()); // a full ID only
/// assert!(s.dead_letter_call("", "c", "1-0", "boom", None).is_err());
/// assert!(s.dead_letter_call("g", "c", "1-0", "boom", Some(u64::MAX)).is_err());
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
        rules::name("group", group)?;
        rules::name("consumer", consumer)?;
        if !wire::is_stream_id(id, false) {
            return Err(Error::invalid("id", format!("`{id}` is not a stream ID <ms>-<seq>")));
        }
        if reason.len() > MAX_REASON {
            return Err(Error::invalid("reason", format!("must be at most {MAX_REASON} bytes")));
        }
        Ok(DeadLetterCall {
            key: stream.key().to_owned(),
            dead_key: stream.dead_key().to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            id: id.to_owned(),
            reason: reason.to_owned(),
            dead_maxlen: self::dead_maxlen(dead_maxlen)?,
        })
    }
}

impl ScriptCall for DeadLetterCall {
    type Output = DeadLettered;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(Id::StreamDeadLetter
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
        const SHAPE: &str = "{status, dead id, deliveries}";
        let redis::Value::Array(parts) = reply.value() else { return Err(reply.unexpected(SHAPE)) };
        let (Some(status), Some(dead_id), Some(deliveries)) = (
            parts.first().and_then(wire::int),
            parts.get(1).and_then(wire::text),
            parts.get(2).and_then(wire::int).and_then(|n| u64::try_from(n).ok()),
        ) else {
            return Err(reply.unexpected(SHAPE));
        };
        match status {
            1 if !dead_id.is_empty() => Ok(DeadLettered::Moved { dead_id, deliveries }),
            2 => Ok(DeadLettered::Gone { deliveries }),
            0 => Ok(DeadLettered::NotPending),
            _ => Err(reply.unexpected("status 0, 1 (with an ID) or 2")),
        }
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
/// assert!(RetireCall::new(&s, "billing", "").is_err());
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
        rules::name("group", group)?;
        rules::name("consumer", consumer)?;
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
        Ok(Id::StreamRetireConsumer.invoke().key(&self.key).arg(&self.group).arg(&self.consumer))
    }

    fn parse(&self, reply: Reply) -> Result<Retirement> {
        match reply.ints(2)?[..] {
            [1, 0] => Ok(Retirement::Retired),
            [0, pending] if pending > 0 => Ok(Retirement::Kept { pending: pending as u64 }),
            _ => Err(reply.unexpected("{1, 0} or {0, pending > 0}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    #[test]
    fn replies_are_checked_not_trusted() {
        let s = Stream::new("t").unwrap();
        let dead = s.dead_letter_call("g", "c", "1-0", "r", None).unwrap();
        let b = |x: &str| Value::BulkString(x.as_bytes().to_vec());
        let parse = |v| dead.parse(Reply::new("stream.dead_letter", v));
        assert_eq!(
            parse(Value::Array(vec![Value::Int(1), b("5-0"), Value::Int(3)])).unwrap(),
            DeadLettered::Moved { dead_id: "5-0".into(), deliveries: 3 }
        );
        for v in [
            Value::Nil,
            Value::Array(vec![Value::Int(1), b(""), Value::Int(3)]),
            Value::Array(vec![Value::Int(7), b(""), Value::Int(3)]),
            Value::Array(vec![Value::Int(2), b(""), Value::Int(-1)]),
            Value::Array(vec![Value::Int(2)]),
        ] {
            assert!(parse(v.clone()).is_err(), "{v:?}");
        }
        let retire = RetireCall::new(&s, "g", "c").unwrap();
        let parse = |v: Vec<i64>| {
            retire.parse(Reply::new(
                "stream.retire_consumer",
                Value::Array(v.into_iter().map(Value::Int).collect()),
            ))
        };
        assert_eq!(parse(vec![1, 0]).unwrap(), Retirement::Retired);
        assert_eq!(parse(vec![0, 4]).unwrap(), Retirement::Kept { pending: 4 });
        assert!(parse(vec![0, -4]).is_err() && parse(vec![2, 0]).is_err() && parse(vec![1]).is_err());
    }
}
