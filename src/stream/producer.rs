//! XADD with a bounded length.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::{Cmd, Value};

use super::wire::{id_millis, text};
use super::{Fields, Retention, Stream, StreamMessage};
use crate::{Error, Result};

/// Appends entries to one stream, trimming it on every add (approximate `MAXLEN ~` or
/// `MINID ~`, so Redis trims whole macro nodes and the cost stays O(1) amortised).
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
}

impl Producer {
    /// A producer appending to `stream`, keeping it bounded by `retention`.
    pub fn new(stream: Stream, retention: Retention) -> Result<Self> {
        retention.validate()?;
        Ok(Producer { stream, retention, newest_ms: Arc::new(AtomicU64::new(0)) })
    }

    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The retention applied on every add.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    fn xadd<I, K, V>(&self, fields: I) -> Result<Cmd>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
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

    fn seen(&self, id: &str) {
        if let Some(ms) = id_millis(id) {
            self.newest_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    fn id_of(&self, v: &Value) -> Result<String> {
        let id = text(v).ok_or_else(|| Error::unexpected("XADD", format!("expected an ID, got {v:?}")))?;
        self.seen(&id);
        Ok(id)
    }

    /// Appends one entry (at least one field); returns its ID.
    pub async fn add<C, I, K, V>(&self, con: &mut C, fields: I) -> Result<String>
    where
        C: redis::aio::ConnectionLike + Send,
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let v: Value = self.xadd(fields)?.query_async(con).await?;
        self.id_of(&v)
    }

    /// [`add`](Self::add) on a blocking connection.
    pub fn add_blocking<I, K, V>(&self, con: &mut dyn redis::ConnectionLike, fields: I) -> Result<String>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let v: Value = self.xadd(fields)?.query(con)?;
        self.id_of(&v)
    }

    /// Appends a typed message; returns its ID.
    pub async fn add_message<C, M>(&self, con: &mut C, message: &M) -> Result<String>
    where
        C: redis::aio::ConnectionLike + Send,
        M: StreamMessage,
    {
        self.add(con, &message.to_fields()).await
    }

    /// [`add_message`](Self::add_message) on a blocking connection.
    pub fn add_message_blocking<M: StreamMessage>(
        &self,
        con: &mut dyn redis::ConnectionLike,
        message: &M,
    ) -> Result<String> {
        self.add_blocking(con, &message.to_fields())
    }

    fn pipeline<B, I, K, V>(&self, batch: B) -> Result<(redis::Pipeline, usize)>
    where
        B: IntoIterator<Item = I>,
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for fields in batch {
            pipe.add_command(self.xadd(fields)?);
            n += 1;
        }
        Ok((pipe, n))
    }

    fn ids_of(&self, values: Vec<Value>, n: usize) -> Result<Vec<String>> {
        if values.len() != n {
            return Err(Error::unexpected("XADD", format!("{} replies for {n} entries", values.len())));
        }
        values.iter().map(|v| self.id_of(v)).collect()
    }

    /// Appends many entries in one pipeline (one round trip); returns their IDs in order. Nothing
    /// is sent when any entry is invalid. The pipeline is not a transaction: after a lost
    /// connection, some entries may have been added. Keep batches to a few thousand entries.
    pub async fn add_many<C, B, I, K, V>(&self, con: &mut C, batch: B) -> Result<Vec<String>>
    where
        C: redis::aio::ConnectionLike + Send,
        B: IntoIterator<Item = I>,
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let (pipe, n) = self.pipeline(batch)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = pipe.query_async(con).await?;
        self.ids_of(values, n)
    }

    /// [`add_many`](Self::add_many) on a blocking connection.
    pub fn add_many_blocking<B, I, K, V>(
        &self,
        con: &mut dyn redis::ConnectionLike,
        batch: B,
    ) -> Result<Vec<String>>
    where
        B: IntoIterator<Item = I>,
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let (pipe, n) = self.pipeline(batch)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = pipe.query(con)?;
        self.ids_of(values, n)
    }

    /// Appends many typed messages in one pipeline.
    pub async fn add_messages<C, M>(&self, con: &mut C, messages: &[M]) -> Result<Vec<String>>
    where
        C: redis::aio::ConnectionLike + Send,
        M: StreamMessage,
    {
        let fields: Vec<Fields> = messages.iter().map(StreamMessage::to_fields).collect();
        self.add_many(con, &fields).await
    }
}
