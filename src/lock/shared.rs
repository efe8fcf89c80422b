//! A cloneable handle over any async connection, for holdings that keep their connection.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

/// Makes any async connection usable for locks and semaphores: a handle that can be cloned over
/// one connection that cannot (one taken from a deadpool or bb8 pool, a type of your own).
/// An async guard keeps a clone of its handle to renew and release; through this one, the
/// guard's calls, its watchdog's and your own take turns on the one connection.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::lock::{Lock, SharedConnection};
///
/// # async fn demo(pooled: redis::aio::MultiplexedConnection) -> redis_primitives::Result<()> {
/// let mut con = SharedConnection::new(pooled); // the one line
/// let lock = Lock::new("orders", Duration::from_secs(5))?;
/// if let Some(guard) = lock.try_acquire(&mut con).await?.acquired() {
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedConnection<C> {
    inner: Arc<Mutex<C>>,
    db: i64,
}

impl<C: ConnectionLike> SharedConnection<C> {
    /// Shares `con`.
    pub fn new(con: C) -> Self {
        let db = con.get_db();
        SharedConnection { inner: Arc::new(Mutex::new(con)), db }
    }
}

impl<C> SharedConnection<C> {
    /// The connection back, once no other clone (a guard, a watchdog, a release spawned by a
    /// dropped guard) holds it; otherwise the shared handle itself, to try again later.
    pub fn into_inner(self) -> Result<C, Self> {
        let db = self.db;
        Arc::try_unwrap(self.inner).map(Mutex::into_inner).map_err(|inner| SharedConnection { inner, db })
    }
}

impl<C> Clone for SharedConnection<C> {
    fn clone(&self) -> Self {
        SharedConnection { inner: self.inner.clone(), db: self.db }
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for SharedConnection<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.inner.lock().await.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move { self.inner.lock().await.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
