//! The mutex: [`Lock`] says what to lock, for how long and how to wait; its acquires hand out a
//! [`Guard`] (async) or a [`BlockingGuard`].

use std::sync::Arc;
use std::time::Duration;

use super::acquire::{AcquireFlow, Policy};
use super::call::LockFencedWrite;
use super::held::{BlockingGuard, Fenced, Guard};
use super::{Acquire, FencedWrite, LockKeys};
use crate::Result;
use crate::flow::{Once, Side, twins};

/// A distributed lock on one resource, with fencing tokens.
///
/// A `Lock` is a description (keys, TTL, backoff, watchdog, deadline): cheap to clone and to
/// share; each acquire makes a fresh random token, so acquiring twice from one process takes
/// two turns (no re-entrance).
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
    policy: Policy,
}

impl Lock {
    /// A lock on `resource` (1..=1024 bytes, no `}`: it is the keys' hash tag) whose leases
    /// last `ttl` (whole milliseconds, 1 ms..=10^12 ms; a sub-millisecond part is refused).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_primitives::lock::Lock;
    /// assert!(Lock::new("orders", Duration::ZERO).is_err());
    /// assert!(Lock::new("orders", Duration::from_micros(1500)).is_err());
    /// assert_eq!(Lock::new("orders", Duration::from_secs(1))?.keys().lock(), "lock:{orders}");
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn new(resource: impl Into<String>, ttl: Duration) -> Result<Lock> {
        let keys = LockKeys::new(resource)?;
        Ok(Lock { keys: Arc::new(keys), policy: Policy::new(ttl)? })
    }

    /// The lock's keys.
    pub fn keys(&self) -> &LockKeys {
        &self.keys
    }

    fn acquiring(&self, side: Side, timeout: Option<Duration>) -> Result<AcquireFlow<Fenced>> {
        AcquireFlow::new(Fenced::new(self.keys.clone()), &self.policy, side, timeout)
    }

    twins! {
        /// One attempt, within the lock's deadline: the lock, or [`Acquire::Held`] with the
        /// holder's remaining PTTL. An error is never a lock; when the attempt got no answer
        /// (the deadline passed, the connection dropped), its token is released before
        /// returning, within [`CLEANUP_MARGIN`](super::CLEANUP_MARGIN), and the error is
        /// [`Error::Abandoned`](crate::Error::Abandoned), saying whether that release was
        /// confirmed. The async one takes a cloneable handle (multiplexed, `ConnectionManager`,
        /// cluster; any other through [`SharedConnection`](super::SharedConnection)) and keeps
        /// a clone in the guard.
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
        cancel: "Dropping the future while its attempt is in flight releases the token the attempt \
            may have taken, from a task spawned on the current tokio runtime (without a runtime, \
            the lock's TTL ends it). Once it has answered, nothing is left to give back.",
        pub fn try_acquire / try_acquire_blocking (&self) -> Acquire<Guard<C>>, Acquire<BlockingGuard>
            = |side| self.acquiring(side, None)?;

        /// Tries until acquired or `timeout` has passed, sleeping with jittered exponential
        /// backoff that never runs past the PTTL the server reported (see
        /// [`Backoff`](super::Backoff)), and returns within `timeout` (plus
        /// [`CLEANUP_MARGIN`](super::CLEANUP_MARGIN) when it must clean up). Transient errors
        /// ([`Error::is_transient`](crate::Error::is_transient)) are retried with the same
        /// token, which is safe: the script treats a repeat by the holder as a refresh. On
        /// timeout: the last [`Acquire::Held`], or the last error; when an attempt's outcome
        /// is unknown, its token is released first and the error is
        /// [`Error::Abandoned`](crate::Error::Abandoned). A zero timeout sends nothing and
        /// times out: use `try_acquire` for one attempt.
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
        cancel: "Dropping the future during a sleep between refusals gives back nothing (nothing \
            is held); during an attempt, or after one that got no answer, it releases the token \
            from a task spawned on the current tokio runtime (without a runtime, the lock's TTL \
            ends it).",
        pub fn acquire / acquire_blocking (&self, timeout: Duration) -> Acquire<Guard<C>>, Acquire<BlockingGuard>
            = |side| self.acquiring(side, Some(timeout))?;
    }

    twins! {
        /// Writes the lock's protected value (`lock:{<resource>}:data`) with fencing token
        /// `fence` (1..=2^53 − 1), unless a newer token has written already, within the lock's
        /// deadline. `value_ttl`: the value's expiry, `None` for none. For a writer that kept
        /// its token; holders use [`Held::fenced_write`](super::Held::fenced_write).
        ///
        /// ```no_run
        /// # use std::time::Duration;
        /// # use redis_primitives::lock::{FencedWrite, Lock};
        /// # async fn demo(mut con: redis::aio::MultiplexedConnection) -> redis_primitives::Result<()> {
        /// let lock = Lock::new("orders", Duration::from_secs(5))?;
        /// let outcome = lock.fenced_write(&mut con, 17, b"state", None).await?;
        /// # Ok(()) }
        /// ```
        cancel: "Dropping the future may or may not have written the value.",
        pub fn fenced_write / fenced_write_blocking (&self, fence: u64, value: &[u8], value_ttl: Option<Duration>) -> FencedWrite
            = Once::new(LockFencedWrite { keys: &self.keys, fence, value, value_ttl }, self.policy.deadline);
    }
}

super::acquire::settings!(Lock, "Lock::new(\"orders\", Duration::from_secs(5))?");
