//! The mutex: [`Lock`] (what to lock, for how long, how to wait), [`Guard`] (async, owns a
//! connection handle) and [`BlockingGuard`] (blocking, borrows a connection per call).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::{self, Backoff};
use super::call::{LockAcquire, LockFencedWrite, LockGrant};
use super::lease::{AsyncLease, Lease, Target};
use super::{Acquire, Extended, FencedWrite, LockKeys, LostReason, Released, new_token, ttl_ms, watchdog};
use crate::script::ScriptCall;
use crate::{Error, Result};

/// A distributed lock on one resource, with fencing tokens.
///
/// A `Lock` is a description (keys, TTL, backoff, watchdog): cheap to clone and to share; each
/// acquire makes a fresh random token, so acquiring twice from one process takes two turns
/// (no re-entrance).
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::lock::{Acquire, Lock};
///
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let lock = Lock::new("invoice-42", Duration::from_secs(30))?;
/// if let Acquire::Acquired(guard) = lock.try_acquire(&mut con).await? {
///     println!("fencing token {}", guard.fencing_token());
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    keys: Arc<LockKeys>,
    ttl: Duration,
    backoff: Backoff,
    max_hold: Option<Duration>,
}

impl Lock {
    /// A lock on `resource` whose leases last `ttl` (whole milliseconds; at least 1 ms).
    /// Refuses an empty resource, one containing `{` or `}`, and a zero TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_primitives::lock::Lock;
    /// assert!(Lock::new("orders", Duration::ZERO).is_err());
    /// assert_eq!(Lock::new("orders", Duration::from_secs(1))?.keys().lock(), "lock:{orders}");
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn new(resource: &str, ttl: Duration) -> Result<Lock> {
        let keys = LockKeys::new(resource)?;
        let ttl = Duration::from_millis(ttl_ms("ttl", ttl)?);
        Ok(Lock { keys: Arc::new(keys), ttl, backoff: Backoff::default(), max_hold: None })
    }

    /// Sets the backoff of [`acquire`](Self::acquire) between refused attempts.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use redis_primitives::lock::{Backoff, Lock};
    /// let lock = Lock::new("orders", Duration::from_secs(5))?.backoff(Backoff::default());
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Turns on the watchdog for async guards: a tokio task renews the lease every `ttl / 3`
    /// until the guard is released or dropped, and stops once the lock has been held
    /// `max_hold` in total (its last renewal is shortened so the lease ends then). When a
    /// renewal finds the lock gone, [`Guard::lost`] resolves at once and [`Guard::is_lost`]
    /// turns true. Blocking acquires refuse a lock with a watchdog, since nothing would renew.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redis_primitives::lock::{Acquire, Lock};
    ///
    /// # async fn demo(mut con: redis::aio::MultiplexedConnection) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("report", Duration::from_secs(3))?.watchdog(Duration::from_secs(600));
    /// if let Acquire::Acquired(guard) = lock.try_acquire(&mut con).await? {
    ///     tokio::select! {
    ///         reason = guard.lost() => eprintln!("lock lost ({reason:?}): abandoning the report"),
    ///         () = build_report(guard.fencing_token()) => {}
    ///     }
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// # async fn build_report(_fence: u64) {}
    /// ```
    pub fn watchdog(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// The lock's keys.
    pub fn keys(&self) -> &LockKeys {
        &self.keys
    }

    /// The lease length.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// One attempt: the lock, or [`Acquire::Held`] with the holder's remaining PTTL.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::{Acquire, Lock};
    /// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// match lock.try_acquire(&mut con).await? {
    ///     Acquire::Acquired(guard) => drop(guard.release().await?),
    ///     Acquire::Held { retry_after } => println!("free in at most {retry_after:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire<C>(&self, con: &mut C) -> Result<Acquire<Guard<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        self.acquire_inner(con, None).await
    }

    /// Tries until acquired or `timeout` has passed, sleeping with jittered exponential
    /// backoff that never runs past the PTTL the server reported (see [`Backoff`]). Connection
    /// errors are retried within the timeout with the same token, which is safe: the script
    /// treats a repeat by the holder as a refresh. On timeout: the last [`Acquire::Held`], or
    /// the last connection error.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::Lock;
    /// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// if let Some(guard) = lock.acquire(&mut con, Duration::from_secs(1)).await?.acquired() {
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire<C>(&self, con: &mut C, timeout: Duration) -> Result<Acquire<Guard<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        self.acquire_inner(con, Some(timeout)).await
    }

    async fn acquire_inner<C>(&self, con: &mut C, timeout: Option<Duration>) -> Result<Acquire<Guard<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        if self.max_hold.is_some() {
            watchdog::check_runtime()?;
        }
        let token = new_token();
        let call = LockAcquire { keys: &self.keys, token: &token, ttl: self.ttl };
        let (outcome, sent_at) = backoff::acquire_async(&call, con, self.backoff, timeout).await?;
        let grant = match outcome {
            Acquire::Acquired(grant) => grant,
            Acquire::Held { retry_after } => return Ok(Acquire::Held { retry_after }),
        };
        let lease = self.lease(token, grant, sent_at);
        let inner = AsyncLease::new(lease, con.clone(), self.max_hold, sent_at)?;
        Ok(Acquire::Acquired(Guard { inner, keys: self.keys.clone(), fence: grant.fence }))
    }

    /// [`try_acquire`](Self::try_acquire) on a blocking connection.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::{Acquire, Lock};
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// if let Acquire::Acquired(guard) = lock.try_acquire_blocking(con)? {
    ///     guard.release_blocking(con)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_acquire_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
    ) -> Result<Acquire<BlockingGuard>> {
        self.acquire_blocking_inner(con, None)
    }

    /// [`acquire`](Self::acquire) on a blocking connection (sleeps the thread between
    /// attempts). A closed connection ends the wait at once with its error.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::Lock;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// if let Some(guard) = lock.acquire_blocking(con, Duration::from_secs(1))?.acquired() {
    ///     guard.release_blocking(con)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn acquire_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        timeout: Duration,
    ) -> Result<Acquire<BlockingGuard>> {
        self.acquire_blocking_inner(con, Some(timeout))
    }

    fn acquire_blocking_inner(
        &self,
        con: &mut dyn redis::ConnectionLike,
        timeout: Option<Duration>,
    ) -> Result<Acquire<BlockingGuard>> {
        if self.max_hold.is_some() {
            return Err(Error::invalid("watchdog", "blocking guards are never renewed in the background"));
        }
        let token = new_token();
        let call = LockAcquire { keys: &self.keys, token: &token, ttl: self.ttl };
        let (outcome, sent_at) = backoff::acquire_blocking(&call, con, self.backoff, timeout)?;
        Ok(outcome.map(|grant| BlockingGuard {
            fence: grant.fence,
            keys: self.keys.clone(),
            lease: self.lease(token, grant, sent_at),
        }))
    }

    fn lease(&self, token: String, grant: LockGrant, sent_at: Instant) -> Lease {
        // The granted TTL is the requested one; min() keeps a surprising reply from lengthening
        // the time the holder relies on.
        Lease::new(Target::Lock(self.keys.clone()), token, grant.ttl.min(self.ttl), sent_at)
    }

    /// Writes the lock's protected value (`lock:{<resource>}:data`) with fencing token `fence`,
    /// unless a newer token has written already. `value_ttl`: the value's expiry, `None` for
    /// none. For a writer that kept its token; holders use [`Guard::fenced_write`].
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::{FencedWrite, Lock};
    /// # async fn demo(mut con: redis::aio::MultiplexedConnection) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// let outcome = lock.fenced_write(&mut con, 17, b"state", None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced_write<C>(
        &self,
        con: &mut C,
        fence: u64,
        value: &[u8],
        value_ttl: Option<Duration>,
    ) -> Result<FencedWrite>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        LockFencedWrite { keys: &self.keys, fence, value, value_ttl }.query_async(con).await
    }

    /// [`fenced_write`](Self::fenced_write) on a blocking connection.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::Lock;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let lock = Lock::new("orders", Duration::from_secs(5))?;
    /// let outcome = lock.fenced_write_blocking(con, 17, b"state", None)?;
    /// # Ok(()) }
    /// ```
    pub fn fenced_write_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        fence: u64,
        value: &[u8],
        value_ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        LockFencedWrite { keys: &self.keys, fence, value, value_ttl }.query(con)
    }
}

/// A held lock (async). Keeps a clone of the connection handle it was acquired on, for
/// release, renewal and fenced writes, and, with [`Lock::watchdog`], a renewal task.
///
/// Dropping a guard that was not released never blocks: it stops the watchdog and, when a
/// tokio runtime is current, spawns the release on it; otherwise (or if that release fails)
/// the lock expires after its TTL. Prefer [`release`](Self::release), which reports the
/// outcome.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::{Acquire, Lock};
/// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
/// let lock = Lock::new("orders", Duration::from_secs(5))?;
/// if let Acquire::Acquired(guard) = lock.try_acquire(&mut con).await? {
///     assert!(guard.valid_for() < Duration::from_secs(5));
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping the guard releases the lock in the background"]
pub struct Guard<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    inner: AsyncLease<C>,
    keys: Arc<LockKeys>,
    fence: u64,
}

impl<C> fmt::Debug for Guard<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("resource", &self.keys().resource())
            .field("fence", &self.fence)
            .field("valid_for", &self.valid_for())
            .field("watchdog", &self.inner.has_watchdog())
            .finish_non_exhaustive()
    }
}

impl<C> Guard<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// The fencing token: strictly greater than any token handed out before for this lock.
    /// Pass it to whatever the lock protects, and have that refuse older tokens.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// let fence: u64 = guard.fencing_token();
    /// # }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// The random owner token stored in the lock key.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// assert_eq!(guard.token().len(), 32);
    /// # }
    /// ```
    pub fn token(&self) -> &str {
        &self.inner.lease.token
    }

    /// The lock's keys.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// println!("{}", guard.keys().lock());
    /// # }
    /// ```
    pub fn keys(&self) -> &LockKeys {
        &self.keys
    }

    /// The time the holder may still rely on the lock: measured on the monotonic clock from
    /// before the last successful acquire or renewal was sent, plus its TTL, minus a drift
    /// margin (1% of the TTL + 2 ms). Zero once lost or released.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// if guard.valid_for() < Duration::from_millis(100) {
    ///     // too little left to start another step safely
    /// }
    /// # }
    /// ```
    pub fn valid_for(&self) -> Duration {
        self.inner.lease.valid_for()
    }

    /// True once the holder may no longer rely on the lock: [`valid_for`](Self::valid_for)
    /// is zero, or a renewal found it gone.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// while !guard.is_lost() { /* one step of work */ }
    /// # }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.inner.lease.is_lost()
    }

    /// Resolves when the holder may no longer rely on the lock: at once when a renewal (the
    /// watchdog's or [`extend`](Self::extend)) finds it gone, or when
    /// [`valid_for`](Self::valid_for) runs out. The future owns what it needs: `select!` on it
    /// beside the work, or spawn it. Must be polled inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) {
    /// tokio::select! {
    ///     reason = guard.lost() => eprintln!("stop: {reason:?}"),
    ///     () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    /// }
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.inner.lease.lost()
    }

    /// Resets the lease to `ttl` from now, if this guard still holds the lock (an expired lock
    /// is never revived). [`Extended::NotHeld`] marks the guard lost.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) -> redis_primitives::Result<()> {
    /// if !guard.extend(Duration::from_secs(10)).await?.is_extended() {
    ///     return Ok(()); // someone else has it now: stop
    /// }
    /// # Ok(()) }
    /// ```
    pub fn extend(&self, ttl: Duration) -> impl Future<Output = Result<Extended>> + Send + 'static {
        self.inner.extend(ttl)
    }

    /// Writes the protected value `lock:{<resource>}:data` with this guard's fencing token:
    /// [`FencedWrite::Stale`] if a newer holder has written already.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) -> redis_primitives::Result<()> {
    /// if !guard.fenced_write(b"v2", None).await?.is_written() {
    ///     return Ok(()); // our lock is gone and a newer holder wrote
    /// }
    /// # Ok(()) }
    /// ```
    pub fn fenced_write<'v>(
        &self,
        value: &'v [u8],
        value_ttl: Option<Duration>,
    ) -> impl Future<Output = Result<FencedWrite>> + Send + 'v {
        // Owns its handle and keys rather than borrowing the guard, so the future is Send
        // without requiring `C: Sync`.
        let (mut con, keys, fence) = (self.inner.con(), self.keys.clone(), self.fence);
        async move { LockFencedWrite { keys: &keys, fence, value, value_ttl }.query_async(&mut con).await }
    }

    /// Releases the lock if this guard still holds it ([`Released::NotHeld`] otherwise, e.g.
    /// after it expired). Stops the watchdog first. A connection error is retried once (the
    /// release is a compare-and-delete, so a resend is harmless). If this future is cancelled,
    /// the guard's drop still releases in the background.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_primitives::lock::Guard<redis::aio::ConnectionManager>) -> redis_primitives::Result<()> {
    /// let released = guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<Released> {
        self.inner.release().await
    }
}

/// A held lock (blocking). Holds no connection: pass one to each call.
///
/// Dropping it without [`release_blocking`](Self::release_blocking) leaves the lock to expire
/// after its TTL; nothing blocks and nothing is sent.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::{Acquire, Lock};
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let lock = Lock::new("orders", Duration::from_secs(5))?;
/// if let Acquire::Acquired(guard) = lock.try_acquire_blocking(con)? {
///     guard.fenced_write_blocking(con, b"v", None)?;
///     guard.release_blocking(con)?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a dropped blocking guard keeps the lock until its TTL"]
pub struct BlockingGuard {
    lease: Lease,
    keys: Arc<LockKeys>,
    fence: u64,
}

impl BlockingGuard {
    /// The fencing token (see [`Guard::fencing_token`]).
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard) { let fence = guard.fencing_token(); }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// The random owner token stored in the lock key.
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard) { println!("{}", guard.token()); }
    /// ```
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The lock's keys.
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard) { println!("{}", guard.keys().lock()); }
    /// ```
    pub fn keys(&self) -> &LockKeys {
        &self.keys
    }

    /// The time the holder may still rely on the lock (see [`Guard::valid_for`]).
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard) { println!("{:?}", guard.valid_for()); }
    /// ```
    pub fn valid_for(&self) -> Duration {
        self.lease.valid_for()
    }

    /// True once [`valid_for`](Self::valid_for) is zero or a renewal found the lock gone.
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard) { assert!(!guard.is_lost()); }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resets the lease to `ttl` from now, if still held (see [`Guard::extend`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard, con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// guard.extend_blocking(con, Duration::from_secs(10))?;
    /// # Ok(()) }
    /// ```
    pub fn extend_blocking(&self, con: &mut dyn redis::ConnectionLike, ttl: Duration) -> Result<Extended> {
        self.lease.extend_blocking(con, ttl)
    }

    /// Writes the protected value with this guard's fencing token (see [`Guard::fenced_write`]).
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard, con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let outcome = guard.fenced_write_blocking(con, b"v", None)?;
    /// # Ok(()) }
    /// ```
    pub fn fenced_write_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        value: &[u8],
        value_ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        LockFencedWrite { keys: self.keys(), fence: self.fence, value, value_ttl }.query(con)
    }

    /// Releases the lock if still held (see [`Guard::release`]).
    ///
    /// ```no_run
    /// # fn demo(guard: redis_primitives::lock::BlockingGuard, con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// guard.release_blocking(con)?;
    /// # Ok(()) }
    /// ```
    pub fn release_blocking(self, con: &mut dyn redis::ConnectionLike) -> Result<Released> {
        let outcome = self.lease.release_blocking(con);
        self.lease.mark_lost(LostReason::Released);
        outcome
    }
}
