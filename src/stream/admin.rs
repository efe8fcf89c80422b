//! A stream's keys and its administration: groups, lengths, trimming, pending entries, dead
//! letters, retiring consumers. Every call is a flow bounded by the stream's deadline, with a
//! blocking twin.

use std::time::{Duration, Instant};

use redis::{Cmd, Value};

use super::call::{DeadLetterCall, DeadLettered, RetireCall, Retirement};
use super::wire::{self, RawEntry};
use super::{DEFAULT_DEADLINE, Fields, Retention, StartFrom};
use crate::flow::{self, Event, Flow, Once, OnceCommand, Step, twins};
use crate::{Error, Result, rules};

/// A group's pending entries (the summary form of XPENDING).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Entries delivered and not yet acked, in the whole group.
    pub total: u64,
    /// Pending entries per consumer (consumers with none are not listed).
    pub consumers: Vec<(String, u64)>,
}

impl Pending {
    /// The pending count of one consumer.
    pub fn of(&self, consumer: &str) -> u64 {
        self.consumers.iter().find(|(c, _)| c == consumer).map_or(0, |(_, n)| *n)
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
    fn from_raw(raw: RawEntry) -> Result<Self> {
        let RawEntry { id, fields } = raw;
        let bad =
            |detail: &str| Error::unexpected("stream.dead_letter", format!("dead letter {id}: {detail}"));
        let fields = fields.ok_or_else(|| bad("no data"))?;
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
        let [origin_id, reason, deliveries, group, consumer]: [String; 5] =
            values.try_into().map_err(|_| bad("missing metadata fields"))?;
        let deliveries = deliveries.parse().map_err(|_| bad("dead:deliveries is not a number"))?;
        Ok(DeadLetter { id, origin_id, reason, deliveries, group, consumer, fields })
    }
}

/// A stream's name and keys, `stream:{<name>}` and its dead letters `stream:{<name>}:dead`, and
/// its administration. Each call returns within the stream's deadline ([`DEFAULT_DEADLINE`]
/// unless changed with [`with_deadline`](Self::with_deadline)).
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::stream::Stream;
/// let s = Stream::new("orders").unwrap();
/// assert_eq!(s.key(), "stream:{orders}");
/// assert_eq!(s.dead_key(), "stream:{orders}:dead");
/// assert_eq!(s.clone().with_deadline(Duration::from_millis(300)).deadline(), Duration::from_millis(300));
/// assert!(Stream::new("").is_err());
/// assert!(Stream::new("}x").is_err());
/// assert!(Stream::new("a}b").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    name: String,
    key: String,
    dead_key: String,
    deadline: Duration,
}

impl Stream {
    /// The stream named `name` (1..=1024 bytes, no `}`: it is the hash tag of both keys, so
    /// the stream and its dead letters share a cluster slot).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let (name, key) = rules::tagged_key("name", "stream", name)?;
        let dead_key = format!("{key}:dead");
        Ok(Stream { name, key, dead_key, deadline: DEFAULT_DEADLINE })
    }

    /// How long each call may take before failing with [`Error::Timeout`] (default
    /// [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(self, deadline: Duration) -> Self {
        Stream { deadline, ..self }
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's key, `stream:{<name>}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The dead-letter stream's key, `stream:{<name>}:dead`.
    pub fn dead_key(&self) -> &str {
        &self.dead_key
    }

    /// The call that moves pending entry `id` of `consumer` to the dead-letter stream and acks
    /// it, atomically (see [`DeadLetterCall`]).
    pub fn dead_letter_call(
        &self,
        group: &str,
        consumer: &str,
        id: &str,
        reason: &str,
        dead_maxlen: Option<u64>,
    ) -> Result<DeadLetterCall> {
        DeadLetterCall::new(self, group, consumer, id, reason, dead_maxlen)
    }

    /// `XGROUP CREATE <key> <group> <start> MKSTREAM`.
    pub(super) fn create_group_cmd(&self, group: &str, start: &StartFrom) -> Result<Cmd> {
        rules::name("group", group)?;
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(&self.key).arg(group).arg(start.arg()?).arg("MKSTREAM");
        Ok(cmd)
    }

    /// One native command within the deadline.
    fn once(&self, name: &'static str, cmd: Cmd) -> OnceCommand {
        OnceCommand::new(name, cmd, self.deadline)
    }

    fn xlen(&self, key: &str) -> impl Flow<Out = u64> + use<> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(key);
        flow::map(self.once("XLEN", cmd), |v| count("XLEN", &v))
    }

    fn xpending(&self, group: &str) -> Result<impl Flow<Out = Pending> + use<>> {
        rules::name("group", group)?;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(group);
        Ok(flow::map(self.once("XPENDING", cmd), |v| pending_summary(&v)))
    }

    fn xrange_dead(&self, after: Option<&str>, n: usize) -> Result<impl Flow<Out = Vec<DeadLetter>> + use<>> {
        let start = match after {
            None => "-".to_owned(),
            Some(id) if wire::is_stream_id(id, false) => format!("({id}"),
            Some(id) => return Err(Error::invalid("after", format!("`{id}` is not a stream ID <ms>-<seq>"))),
        };
        let n = rules::count("count", u64::try_from(n).unwrap_or(u64::MAX))?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.dead_key).arg(start).arg("+").arg("COUNT").arg(n);
        Ok(flow::map(self.once("XRANGE", cmd), |v| {
            wire::entries("XRANGE", &v)?.into_iter().map(DeadLetter::from_raw).collect()
        }))
    }

    twins! {
        /// Creates the consumer group (and the stream, if missing). `Ok(false)` when the group
        /// already exists (its position is left as it is).
        cancel: "Dropping the future may or may not have created the group; creating it again \
            is harmless (`Ok(false)`).",
        pub fn create_group / create_group_blocking (&self, group: &str, start: &StartFrom) -> bool
            = flow::then(self.once("XGROUP", self.create_group_cmd(group, start)?), created);

        /// The number of entries (`XLEN`).
        cancel: "Safe: it writes nothing.",
        pub fn len / len_blocking (&self) -> u64 = self.xlen(&self.key);

        /// The number of dead letters (`XLEN` of the dead-letter stream).
        cancel: "Safe: it writes nothing.",
        pub fn dead_len / dead_len_blocking (&self) -> u64 = self.xlen(&self.dead_key);

        /// Trims now (`XTRIM`, approximate); returns the number of entries removed. For
        /// [`Retention::MaxAge`] it first reads the newest entry's ID (the server's clock), so it
        /// takes two round trips, both within the deadline.
        cancel: "Dropping the future may leave the stream trimmed or not; trimming again is \
            harmless.",
        pub fn trim / trim_blocking (&self, retention: &Retention) -> u64 = Trim::new(self, retention)?;

        /// The group's pending entries, in total and per consumer.
        cancel: "Safe: it writes nothing.",
        pub fn pending / pending_blocking (&self, group: &str) -> Pending = self.xpending(group)?;

        /// Reads up to `count` (1..=10^12) dead letters, oldest first, starting after `after`
        /// (`None`: from the start).
        cancel: "Safe: it writes nothing.",
        pub fn dead_letters / dead_letters_blocking (&self, after: Option<&str>, count: usize) -> Vec<DeadLetter>
            = self.xrange_dead(after, count)?;

        /// Moves one pending entry to the dead-letter stream and acks it, in one atomic script
        /// call ([`DeadLetterCall`]).
        cancel: "Dropping the future may or may not have moved the entry; calling again is \
            safe (the second call finds it no longer pending).",
        pub fn dead_letter / dead_letter_blocking (&self, group: &str, consumer: &str, id: &str, reason: &str, dead_maxlen: Option<u64>) -> DeadLettered
            = Once::new(self.dead_letter_call(group, consumer, id, reason, dead_maxlen)?, self.deadline);

        /// Deletes `consumer` from `group` only if it owns no pending entries; otherwise keeps it
        /// and says how many it owns (a bare `XGROUP DELCONSUMER` would discard them). Let another
        /// worker reclaim them, or wait for them to be acked, then retire again.
        ///
        /// The check and the delete are one script call ([`RetireCall`]), so entries a consumer
        /// still reading under that name picks up meanwhile are never discarded. A
        /// [`Worker`](super::Worker) retires its own consumer on shutdown with
        /// [`WorkerOptions::retire_on_shutdown`](super::WorkerOptions::retire_on_shutdown).
        cancel: "Dropping the future may or may not have retired the consumer; it never drops \
            pending entries either way.",
        pub fn retire_consumer / retire_consumer_blocking (&self, group: &str, consumer: &str) -> Retirement
            = Once::new(RetireCall::new(self, group, consumer)?, self.deadline);
    }
}

/// The outcome of `XGROUP CREATE`: created (`OK`), or `BUSYGROUP` (it exists already).
pub(super) fn created(reply: Result<Value>) -> Result<bool> {
    match reply {
        Ok(Value::Okay) => Ok(true),
        Ok(Value::SimpleString(s)) if s == "OK" => Ok(true),
        Ok(other) => Err(wire::bad("XGROUP CREATE", "OK", &other)),
        Err(Error::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// An integer reply that is a count.
fn count(command: &str, v: &Value) -> Result<u64> {
    wire::int(v).and_then(|n| u64::try_from(n).ok()).ok_or_else(|| wire::bad(command, "a count", v))
}

/// `[count, min, max, [[consumer, count] …]]` (nils when nothing is pending).
fn pending_summary(v: &Value) -> Result<Pending> {
    const SHAPE: &str = "a summary [count, min, max, consumers]";
    let parts = wire::items("XPENDING", v)?;
    let total =
        parts.first().ok_or_else(|| wire::bad("XPENDING", SHAPE, v)).and_then(|n| count("XPENDING", n))?;
    let mut consumers = Vec::new();
    match parts.get(3) {
        None | Some(Value::Nil) => {}
        Some(rows) => {
            for row in wire::items("XPENDING", rows)? {
                match wire::items("XPENDING", row)? {
                    [c, n] => consumers.push((
                        wire::text(c).ok_or_else(|| wire::bad("XPENDING", SHAPE, v))?,
                        count("XPENDING", n)?,
                    )),
                    _ => return Err(wire::bad("XPENDING", SHAPE, v)),
                }
            }
        }
    }
    Ok(Pending { total, consumers })
}

/// `XTRIM` by a retention; for [`Retention::MaxAge`], after reading the newest entry's ID.
struct Trim {
    key: String,
    retention: Retention,
    deadline: Instant,
    /// Waiting for the newest entry (`XREVRANGE`), not for the trim.
    newest: bool,
}

impl Trim {
    fn new(stream: &Stream, retention: &Retention) -> Result<Trim> {
        retention.validate()?;
        Ok(Trim {
            key: stream.key.clone(),
            retention: retention.clone(),
            deadline: rules::deadline(stream.deadline),
            newest: matches!(retention, Retention::MaxAge(_)),
        })
    }

    fn xtrim(&self, newest_ms: Option<u64>) -> Step<u64> {
        let Some(args) = self.retention.trim_args(newest_ms) else { return Step::Done(Ok(0)) };
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(&self.key).arg(args);
        Step::Command("XTRIM", cmd)
    }
}

impl Flow for Trim {
    type Out = u64;

    fn start(&mut self) -> Step<u64> {
        if !self.newest {
            return self.xtrim(None);
        }
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.key).arg("+").arg("-").arg("COUNT").arg(1);
        Step::Command("XREVRANGE", cmd)
    }

    fn on(&mut self, event: Event) -> Step<u64> {
        let v = match event {
            Event::Reply(Ok(v)) => v,
            Event::Reply(Err(e)) => return Step::Done(Err(e)),
            Event::Woke => return Step::Done(Err(Error::unexpected("flow", "woke without a sleep"))),
        };
        if !std::mem::take(&mut self.newest) {
            return Step::Done(count("XTRIM", &v));
        }
        match wire::entries("XREVRANGE", &v) {
            Ok(entries) => match entries.first() {
                Some(e) => self.xtrim(wire::id_millis(&e.id)),
                None => Step::Done(Ok(0)),
            },
            Err(e) => Step::Done(Err(e)),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_summaries_are_checked() {
        let b = |x: &str| Value::BulkString(x.as_bytes().to_vec());
        let row = Value::Array(vec![b("c1"), b("3")]);
        let v = Value::Array(vec![Value::Int(3), b("1-0"), b("2-0"), Value::Array(vec![row])]);
        assert_eq!(pending_summary(&v).unwrap(), Pending { total: 3, consumers: vec![("c1".into(), 3)] });
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(pending_summary(&empty).unwrap(), Pending::default());
        for v in [
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(-1)]),
            Value::Array(vec![Value::Int(1), Value::Nil, Value::Nil, Value::Array(vec![Value::Int(1)])]),
            Value::Array(vec![
                Value::Int(1),
                Value::Nil,
                Value::Nil,
                Value::Array(vec![Value::Array(vec![b("c")])]),
            ]),
        ] {
            assert!(pending_summary(&v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn dead_letters_are_checked() {
        let f = |pairs: &[(&str, &str)]| Some(pairs.iter().copied().collect::<Fields>());
        let raw = |fields| RawEntry { id: "9-0".into(), fields };
        let ok = f(&[
            ("dead:id", "1-0"),
            ("dead:reason", "r"),
            ("dead:deliveries", "3"),
            ("dead:group", "g"),
            ("dead:consumer", "c"),
            ("n", "1"),
        ]);
        let d = DeadLetter::from_raw(raw(ok)).unwrap();
        assert_eq!((d.origin_id.as_str(), d.reason.as_str(), d.deliveries), ("1-0", "r", 3));
        assert_eq!((d.group.as_str(), d.consumer.as_str(), d.fields.get_str("n")), ("g", "c", Some("1")));
        assert!(DeadLetter::from_raw(raw(None)).is_err());
        assert!(DeadLetter::from_raw(raw(f(&[("dead:id", "1-0")]))).is_err());
        let wrong = f(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
        assert!(DeadLetter::from_raw(raw(wrong)).is_err());
    }
}
