//! XADD with a bounded length, single or pipelined, within a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Cmd, Value};

use super::wire::{self, id_millis};
use super::{DEFAULT_DEADLINE, Retention, Stream, StreamMessage};
use crate::flow::{self, Flow, OnceCommand, twins};
use crate::{Error, Result};

/// Appends entries to one stream, trimming it on every add (approximate `MAXLEN ~` or
/// `MINID ~`, so Redis trims whole macro nodes and the cost stays O(1) amortised). Every add
/// returns within the producer's deadline ([`DEFAULT_DEADLINE`] unless changed with
/// [`with_deadline`](Self::with_deadline)), with [`Error::Timeout`] when it passed: the entry
/// may or may not have been added then.
///
/// Clones share the newest ID seen (used by [`Retention::MaxAge`]).
///
/// ```no_run
/// use redis_primitives::stream::{Producer, Retention, Stream};
///
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let orders = Producer::new(Stream::new("orders")?, Retention::MaxLen(100_000))?;
/// let id = orders.add(&mut con, [("order", "42"), ("kind", "paid")]).await?;
/// let ids = orders.add_many(&mut con, (0..100).map(|i| [("n", i.to_string())])).await?;
/// println!("{id} then {} more", ids.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    stream: Stream,
    retention: Retention,
    /// Milliseconds part of the newest ID this producer was given (0: none yet).
    newest_ms: Arc<AtomicU64>,
    deadline: Duration,
}

impl Producer {
    /// A producer appending to `stream`, keeping it bounded by `retention`.
    pub fn new(stream: Stream, retention: Retention) -> Result<Self> {
        retention.validate()?;
        Ok(Producer { stream, retention, newest_ms: Arc::new(AtomicU64::new(0)), deadline: DEFAULT_DEADLINE })
    }

    /// How long each add may take before failing with [`Error::Timeout`] (default
    /// [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(self, deadline: Duration) -> Self {
        Producer { deadline, ..self }
    }

    /// The deadline of each add.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The retention applied on every add.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// `XADD <key> <trim> * <fields>`; refuses an entry without fields.
    fn xadd(&self, fields: impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>) -> Result<Cmd> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.stream.key());
        let newest = self.newest_ms.load(Ordering::Relaxed);
        if let Some(trim) = self.retention.trim_args((newest > 0).then_some(newest)) {
            cmd.arg(trim);
        }
        cmd.arg("*");
        let mut n = 0usize;
        for (k, v) in fields {
            cmd.arg(k.as_ref()).arg(v.as_ref());
            n += 1;
        }
        if n == 0 {
            return Err(Error::invalid("fields", "an entry needs at least one field"));
        }
        Ok(cmd)
    }

    /// One XADD per entry, in one pipeline; nothing when any entry is invalid.
    fn pipeline(
        &self,
        batch: impl IntoIterator<Item = impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>>,
    ) -> Result<impl Flow<Out = Vec<String>>> {
        let mut pipe = redis::pipe();
        for fields in batch {
            pipe.add_command(self.xadd(fields)?);
        }
        let (n, newest_ms) = (pipe.len(), self.newest_ms.clone());
        Ok(flow::map(OnceCommand::pipeline("XADD", pipe, self.deadline), move |v| {
            wire::replies("XADD", v, n)?.iter().map(|v| id_of(&newest_ms, v)).collect()
        }))
    }

    fn add_one(&self, cmd: Cmd) -> impl Flow<Out = String> + use<> {
        let newest_ms = self.newest_ms.clone();
        flow::map(OnceCommand::new("XADD", cmd, self.deadline), move |v| id_of(&newest_ms, &v))
    }

    twins! {
        /// Appends one entry (at least one field); returns its ID.
        cancel: "Dropping the future may or may not have added the entry.",
        pub fn add / add_blocking (&self, fields: impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>) -> String
            = self.add_one(self.xadd(fields)?);

        /// Appends a typed message; returns its ID.
        cancel: "Dropping the future may or may not have added the message.",
        pub fn add_message / add_message_blocking (&self, message: &impl StreamMessage) -> String
            = self.add_one(self.xadd(&message.to_fields())?);

        /// Appends many entries in one pipeline (one round trip); returns their IDs in order.
        /// Nothing is sent when any entry is invalid, or when there is none. The pipeline is not
        /// a transaction: after an error or a timeout, some entries may have been added. Keep
        /// batches to a few thousand entries.
        ///
        /// On a blocking connection, a server that stops answering costs the read timeout once
        /// per entry: redis-rs reads every reply of a pipeline, even after one timed out. Keep
        /// blocking batches small, or the read timeout short.
        cancel: "Dropping the future may leave any number of the entries added.",
        pub fn add_many / add_many_blocking (&self, batch: impl IntoIterator<Item = impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>>) -> Vec<String>
            = self.pipeline(batch)?;

        /// Appends many typed messages in one pipeline, as [`add_many`](Self::add_many) (and
        /// with the same caveat on a blocking connection).
        cancel: "Dropping the future may leave any number of the messages added.",
        pub fn add_messages / add_messages_blocking (&self, messages: &[impl StreamMessage]) -> Vec<String>
            = self.pipeline(messages.iter().map(StreamMessage::to_fields))?;
    }
}

/// An XADD reply: the new entry's ID, remembered as the newest seen.
fn id_of(newest_ms: &AtomicU64, v: &Value) -> Result<String> {
    let id = wire::text(v)
        .filter(|id| wire::is_stream_id(id, false))
        .ok_or_else(|| wire::bad("XADD", "an entry ID", v))?;
    if let Some(ms) = id_millis(&id) {
        newest_ms.fetch_max(ms, Ordering::Relaxed);
    }
    Ok(id)
}
