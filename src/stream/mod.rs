//! Stream producers and consumer-group workers on Redis' native stream commands: durable,
//! at-least-once delivery with acks, crash recovery and dead-lettering.
//!
//! - [`Producer`]: `XADD` with a bounded length (approximate `MAXLEN` or `MINID`), fields as
//!   pairs or maps, or typed through [`StreamMessage`]; single or pipelined.
//! - [`Worker`]: a consumer-group worker. It creates the group (`MKSTREAM`), reads with
//!   `XREADGROUP … BLOCK` on its own connection (whose response timeout exceeds the block time),
//!   runs an async [`Handler`] with bounded concurrency, `XACK`s successes and leaves failures
//!   pending. A reclaim step (`XAUTOCLAIM` with a min-idle time) takes over entries of crashed
//!   consumers; entries whose data was trimmed are counted and cleared. An entry that failed
//!   `max_deliveries` times moves to the dead-letter stream in one atomic script
//!   (`stream.dead_letter`: copy + ack). Graceful shutdown stops reading, finishes and acks the
//!   work in flight, then returns a [`Report`].
//! - [`Stream`]: key names and group administration, including [`Stream::retire_consumer`], which
//!   never deletes a consumer that owns pending entries (a bare `XGROUP DELCONSUMER` drops them).
//!
//! Keys: a stream named `orders` lives at `stream:{orders}`, its dead letters at
//! `stream:{orders}:dead`; both share the hash tag, so the dead-letter script works on a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};
//!
//! # async fn demo() -> redis_primitives::Result<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! let stream = Stream::new("orders")?;
//! let mut con = client.get_multiplexed_async_connection().await?;
//! Producer::new(stream.clone(), Retention::MaxLen(100_000))?.add(&mut con, [("order", "42")]).await?;
//!
//! let worker = Worker::new(client, stream, "billing", "billing-1", WorkerOptions::default())?;
//! let shutdown = Shutdown::new();
//! let report = worker
//!     .run(
//!         |d: Delivery| async move {
//!             println!("{} {:?} (delivery {})", d.id, d.fields.get_str("order"), d.deliveries);
//!             Ok::<(), String>(())
//!         },
//!         shutdown.wait(),
//!     )
//!     .await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

mod dead;
mod fields;
mod producer;
mod wire;
mod worker;

use std::time::Duration;

use redis::{Cmd, Value};

pub use dead::{DeadLetter, DeadLetterCall, DeadLettered, RetireCall, Retirement};
pub use fields::{Fields, StreamMessage};
pub use producer::Producer;
pub use worker::{Connector, Delivery, Handler, Report, Shutdown, Worker, WorkerOptions, consumer_name};

use crate::script::ScriptCall;
use crate::{Error, Result};

/// How much of a stream to keep. Trimming is approximate (`~`): Redis removes whole macro nodes
/// (100 entries by default, `stream-node-max-entries`), so a stream may hold a node's worth
/// more than asked, never unboundedly more.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::stream::Retention;
/// assert!(Retention::MaxLen(1000).validate().is_ok());
/// assert!(Retention::MaxLen(0).validate().is_err());
/// assert!(Retention::MinId("1700000000000-0".into()).validate().is_ok());
/// assert!(Retention::MinId("yesterday".into()).validate().is_err());
/// assert!(Retention::MaxAge(Duration::from_secs(3600)).validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Keep about the newest `n` entries (`MAXLEN ~ n`).
    MaxLen(u64),
    /// Drop entries with IDs below this one (`MINID ~ id`; `<ms>` or `<ms>-<seq>`).
    MinId(String),
    /// Keep about the entries whose IDs are at most this much older than the newest entry's ID.
    /// IDs carry the server's clock, so no client clock is involved: a producer uses the newest
    /// ID it was given (its first add only learns it), [`Stream::trim`] reads the newest entry.
    MaxAge(Duration),
}

impl Retention {
    /// Checks the bound without the server.
    pub fn validate(&self) -> Result<()> {
        match self {
            Retention::MaxLen(0) => Err(Error::invalid("retention", "MaxLen must be at least 1")),
            Retention::MinId(id) if !wire::is_stream_id(id, true) => {
                Err(Error::invalid("retention", format!("MinId `{id}` is not a stream ID (<ms>[-<seq>])")))
            }
            Retention::MaxAge(age) if age.as_millis() == 0 => {
                Err(Error::invalid("retention", "MaxAge must be at least 1 ms"))
            }
            _ => Ok(()),
        }
    }

    /// The trim arguments of XADD/XTRIM; `newest_ms` is the newest ID's time (for `MaxAge`).
    fn trim_args(&self, newest_ms: Option<u64>) -> Option<Vec<String>> {
        match self {
            Retention::MaxLen(n) => Some(vec!["MAXLEN".into(), "~".into(), n.to_string()]),
            Retention::MinId(id) => Some(vec!["MINID".into(), "~".into(), id.clone()]),
            Retention::MaxAge(age) => {
                let newest = newest_ms?;
                let min = newest.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
                Some(vec!["MINID".into(), "~".into(), min.to_string()])
            }
        }
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// From the oldest entry still in the stream (`0`): nothing already retained is skipped.
    #[default]
    Beginning,
    /// Only entries added after the group is created (`$`).
    New,
    /// After this ID.
    Id(String),
}

impl StartFrom {
    fn arg(&self) -> Result<&str> {
        match self {
            StartFrom::Beginning => Ok("0"),
            StartFrom::New => Ok("$"),
            StartFrom::Id(id) if wire::is_stream_id(id, true) => Ok(id),
            StartFrom::Id(id) => Err(Error::invalid("start", format!("`{id}` is not a stream ID"))),
        }
    }
}

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

/// A stream's name and keys: `stream:{<name>}` and its dead letters `stream:{<name>}:dead`.
///
/// ```
/// use redis_primitives::stream::Stream;
/// let s = Stream::new("orders").unwrap();
/// assert_eq!(s.key(), "stream:{orders}");
/// assert_eq!(s.dead_key(), "stream:{orders}:dead");
/// assert!(Stream::new("").is_err());
/// assert!(Stream::new("}x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    name: String,
    key: String,
    dead_key: String,
}

pub(crate) fn check_name(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 1024 {
        return Err(Error::invalid(what, "must be 1..1024 bytes"));
    }
    Ok(())
}

impl Stream {
    /// The stream named `name` (the hash tag of both keys).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        // "{}" or a tag starting with "}" would leave the hash tag empty: the stream and its
        // dead-letter stream would then hash apart and a cluster would refuse the script (CROSSSLOT).
        if name.starts_with('}') {
            return Err(Error::invalid("name", "must not start with `}` (it would end the hash tag)"));
        }
        let key = format!("stream:{{{name}}}");
        let dead_key = format!("{key}:dead");
        Ok(Stream { name, key, dead_key })
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

    fn create_group_cmd(&self, group: &str, start: &StartFrom) -> Result<Cmd> {
        check_name("group", group)?;
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(&self.key).arg(group).arg(start.arg()?).arg("MKSTREAM");
        Ok(cmd)
    }

    /// Creates the consumer group (and the stream, if missing). `Ok(false)` when the group
    /// already exists (its position is left as it is).
    pub async fn create_group<C>(&self, con: &mut C, group: &str, start: &StartFrom) -> Result<bool>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        match self.create_group_cmd(group, start)?.query_async::<Value>(con).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The number of entries (`XLEN`).
    pub async fn len<C>(&self, con: &mut C) -> Result<u64>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        Ok(redis::cmd("XLEN").arg(&self.key).query_async(con).await?)
    }

    /// The number of dead letters (`XLEN` of the dead-letter stream).
    pub async fn dead_len<C>(&self, con: &mut C) -> Result<u64>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        Ok(redis::cmd("XLEN").arg(&self.dead_key).query_async(con).await?)
    }

    /// Trims now (`XTRIM`, approximate); returns the number of entries removed.
    pub async fn trim<C>(&self, con: &mut C, retention: &Retention) -> Result<u64>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        retention.validate()?;
        let newest = match retention {
            Retention::MaxAge(_) => {
                let v: Value = redis::cmd("XREVRANGE")
                    .arg(&self.key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(con)
                    .await?;
                match wire::entries("XREVRANGE", &v)?.first() {
                    Some(e) => wire::id_millis(&e.id),
                    None => return Ok(0),
                }
            }
            _ => None,
        };
        let Some(args) = retention.trim_args(newest) else { return Ok(0) };
        Ok(redis::cmd("XTRIM").arg(&self.key).arg(args).query_async(con).await?)
    }

    /// The group's pending entries, in total and per consumer.
    pub async fn pending<C>(&self, con: &mut C, group: &str) -> Result<Pending>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        check_name("group", group)?;
        let v: Value = redis::cmd("XPENDING").arg(&self.key).arg(group).query_async(con).await?;
        parse_pending_summary(&v)
    }

    /// Reads up to `count` dead letters, oldest first, starting after `after` (`None`: from the
    /// start).
    pub async fn dead_letters<C>(
        &self,
        con: &mut C,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<DeadLetter>>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let start = match after {
            None => "-".to_owned(),
            Some(id) if wire::is_stream_id(id, false) => format!("({id}"),
            Some(id) => return Err(Error::invalid("after", format!("`{id}` is not a stream ID"))),
        };
        if count == 0 {
            return Err(Error::invalid("count", "must be at least 1"));
        }
        let v: Value = redis::cmd("XRANGE")
            .arg(&self.dead_key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(con)
            .await?;
        wire::entries("XRANGE", &v)?.into_iter().map(DeadLetter::from_raw).collect()
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

    /// Moves one pending entry to the dead-letter stream and acks it, in one atomic script.
    pub async fn dead_letter<C>(
        &self,
        con: &mut C,
        group: &str,
        consumer: &str,
        id: &str,
        reason: &str,
        dead_maxlen: Option<u64>,
    ) -> Result<DeadLettered>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.dead_letter_call(group, consumer, id, reason, dead_maxlen)?.query_async(con).await
    }

    /// Deletes `consumer` from `group` only if it owns no pending entries; otherwise keeps it
    /// and says how many it owns (a bare `XGROUP DELCONSUMER` would discard them). Let another
    /// worker reclaim them, or wait for them to be acked, then retire again.
    ///
    /// The check and the delete are one script call (`stream.retire_consumer`), so entries a
    /// consumer still reading under that name picks up meanwhile are never discarded. A
    /// [`Worker`] retires its own consumer on shutdown with
    /// [`WorkerOptions::retire_on_shutdown`].
    pub async fn retire_consumer<C>(&self, con: &mut C, group: &str, consumer: &str) -> Result<Retirement>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        check_name("consumer", consumer)?;
        RetireCall::new(self, group, consumer)?.query_async(con).await
    }
}

/// `[count, min, max, [[consumer, count] …]]` (nils when nothing is pending).
fn parse_pending_summary(v: &Value) -> Result<Pending> {
    let bad = || Error::unexpected("XPENDING", format!("expected a summary, got {v:?}"));
    let Value::Array(parts) = v else { return Err(bad()) };
    let total = parts.first().and_then(wire::int).ok_or_else(bad)?;
    let mut consumers = Vec::new();
    if let Some(Value::Array(rows)) = parts.get(3) {
        for row in rows {
            let Value::Array(r) = row else { return Err(bad()) };
            match (r.first().and_then(wire::text), r.get(1).and_then(wire::int)) {
                (Some(c), Some(n)) => consumers.push((c, n.max(0) as u64)),
                _ => return Err(bad()),
            }
        }
    }
    Ok(Pending { total: total.max(0) as u64, consumers })
}
