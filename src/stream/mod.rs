//! Stream producers and consumer-group workers on Redis' native stream commands: durable,
//! at-least-once delivery with acks, crash recovery and dead-lettering.
//!
//! - [`Producer`]: `XADD` with a bounded length (approximate `MAXLEN` or `MINID`), fields as
//!   pairs or maps, or typed through [`StreamMessage`]; single or pipelined.
//! - [`Worker`]: a consumer-group worker. It creates the group (`MKSTREAM`), reads with
//!   `XREADGROUP … BLOCK` on its own connection, runs an async [`Handler`] with bounded
//!   concurrency, `XACK`s successes and leaves failures pending. A reclaim step (`XAUTOCLAIM`
//!   with a min-idle time) takes over entries of crashed consumers; entries whose data was
//!   trimmed are counted and cleared. An entry that failed `max_deliveries` times moves to the
//!   dead-letter stream in one atomic script (`stream.dead_letter`: copy + ack). A read that gets
//!   no answer within the block time plus the command timeout (a failover, a dead node) is
//!   abandoned and its connection replaced. Graceful shutdown stops reading, finishes and acks
//!   the work in flight, then returns a [`Report`].
//! - [`Stream`]: key names and group administration, including [`Stream::retire_consumer`], which
//!   never deletes a consumer that owns pending entries (a bare `XGROUP DELCONSUMER` drops them).
//!
//! Every [`Producer`] and [`Stream`] call returns within its deadline ([`DEFAULT_DEADLINE`],
//! or `with_deadline`) whatever the server does, with [`Error::Timeout`] when it passed; each has
//! a `_blocking` twin. The scripts' calls are in [`call`].
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

mod admin;
pub mod call;
mod fields;
mod producer;
mod wire;
mod worker;

use std::time::Duration;

pub use admin::{DeadLetter, Pending, Stream};
pub use call::{DeadLetterCall, DeadLettered, RetireCall, Retirement};
pub use fields::{Fields, StreamMessage};
pub use producer::Producer;
pub use worker::{Connector, Delivery, Handler, Report, Shutdown, Worker, WorkerOptions, consumer_name};

use crate::{Error, Result, rules};

/// How long a [`Producer`] or [`Stream`] call may take by default before it fails with
/// [`Error::Timeout`] (change it with `with_deadline`). The [`Worker`] bounds its own commands
/// with [`WorkerOptions::command_timeout`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// How much of a stream to keep. Trimming is approximate (`~`): Redis removes whole macro nodes
/// (100 entries by default, `stream-node-max-entries`), so a stream may hold a node's worth
/// more than asked, never unboundedly more.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::stream::Retention;
/// assert!(Retention::MaxLen(1000).validate().is_ok());
/// assert!(Retention::MaxLen(0).validate().is_err());
/// assert!(Retention::MaxLen(u64::MAX).validate().is_err());
/// assert!(Retention::MinId("1700000000000-0".into()).validate().is_ok());
/// assert!(Retention::MinId("yesterday".into()).validate().is_err());
/// assert!(Retention::MaxAge(Duration::from_secs(3600)).validate().is_ok());
/// assert!(Retention::MaxAge(Duration::MAX).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Keep about the newest `n` entries (`MAXLEN ~ n`), `n` in 1..=10^12.
    MaxLen(u64),
    /// Drop entries with IDs below this one (`MINID ~ id`; `<ms>` or `<ms>-<seq>`).
    MinId(String),
    /// Keep about the entries whose IDs are at most this much older than the newest entry's ID
    /// (whole milliseconds, 1 ms..=10^12 ms). IDs carry the server's clock, so no client clock is
    /// involved: a producer uses the newest ID it was given (its first add only learns it),
    /// [`Stream::trim`] reads the newest entry.
    MaxAge(Duration),
}

impl Retention {
    /// Checks the bound without the server.
    pub fn validate(&self) -> Result<()> {
        match self {
            Retention::MaxLen(n) => rules::count("retention", *n).map(drop),
            Retention::MinId(id) if !wire::is_stream_id(id, true) => {
                Err(Error::invalid("retention", format!("MinId `{id}` is not a stream ID (<ms>[-<seq>])")))
            }
            Retention::MinId(_) => Ok(()),
            Retention::MaxAge(age) => rules::millis("retention", *age).map(drop),
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
