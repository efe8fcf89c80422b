//! The counting semaphore: up to N holders at once, each on a lease that expires by server
//! time, so the permit of a holder that crashed comes back by itself.

use std::sync::Arc;
use std::time::Duration;

use super::acquire::{AcquireFlow, Policy};
use super::held::{BlockingPermit, Counted, Permit};
use super::{Acquire, semaphore_key};
use crate::flow::{Side, twins};
use crate::{Result, rules};

/// A counting semaphore with leased permits, kept in one sorted set `sem:{<name>}`.
///
/// It doubles as a concurrency (in-flight) limiter: take a permit per request with
/// [`try_acquire`](Self::try_acquire) and turn the request away on [`Acquire::Held`]; a worker
/// that dies mid-request gives its permit back when the lease runs out.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::lock::{Acquire, Semaphore};
///
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_connection_manager().await?;
/// let in_flight = Semaphore::new("pdf-renders", 8, Duration::from_secs(30))?;
/// match in_flight.try_acquire(&mut con).await? {
///     Acquire::Acquired(permit) => {
///         // ... render ...
///         permit.release().await?;
///     }
///     Acquire::Held { retry_after } => println!("8 renders running; retry in {retry_after:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    key: Arc<str>,
    permits: u64,
    policy: Policy,
}

impl Semaphore {
    /// A semaphore `name` (1..=1024 bytes, no `}`) with `permits` permits (1..=10^12), each
    /// leased for `ttl` (whole milliseconds, 1 ms..=10^12 ms). Every user of one semaphore must
    /// pass the same `permits`: each acquire enforces the number it sends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_primitives::lock::Semaphore;
    /// assert!(Semaphore::new("uploads", 0, Duration::from_secs(1)).is_err());
    /// assert_eq!(Semaphore::new("uploads", 4, Duration::from_secs(1))?.key(), "sem:{uploads}");
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn new(name: impl Into<String>, permits: u64, ttl: Duration) -> Result<Semaphore> {
        let key = semaphore_key(&name.into())?;
        let permits = rules::count("permits", permits)?;
        Ok(Semaphore { key: key.into(), permits, policy: Policy::new(ttl)? })
    }

    /// The key, `sem:{<name>}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The number of permits.
    pub fn permits(&self) -> u64 {
        self.permits
    }

    fn acquiring(&self, side: Side, timeout: Option<Duration>) -> Result<AcquireFlow<Counted>> {
        AcquireFlow::new(Counted::new(self.key.clone(), self.permits), &self.policy, side, timeout)
    }

    twins! {
        /// One attempt, within the semaphore's deadline: a permit, or [`Acquire::Held`] with
        /// the time until the earliest lease expires. Errors and clean-up as
        /// [`Lock::try_acquire`](super::Lock::try_acquire).
        ///
        /// ```no_run
        /// # use std::time::Duration;
        /// # use redis_primitives::lock::Semaphore;
        /// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
        /// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
        /// if let Some(permit) = sem.try_acquire(&mut con).await?.acquired() {
        ///     permit.release().await?;
        /// }
        /// # Ok(()) }
        /// ```
        cancel: "Dropping the future while its attempt is in flight gives back the lease the attempt \
            may have taken, from a task spawned on the current tokio runtime (without a runtime, \
            the lease's TTL ends it).",
        pub fn try_acquire / try_acquire_blocking (&self) -> Acquire<Permit<C>>, Acquire<BlockingPermit>
            = |side| self.acquiring(side, None)?;

        /// Tries until a permit is free or `timeout` has passed (see
        /// [`Lock::acquire`](super::Lock::acquire) for the backoff, the retries, the clean-up
        /// and the bound on its duration).
        ///
        /// ```no_run
        /// # use std::time::Duration;
        /// # use redis_primitives::lock::Semaphore;
        /// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
        /// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
        /// if let Some(permit) = sem.acquire(&mut con, Duration::from_secs(2)).await?.acquired() {
        ///     permit.release().await?;
        /// }
        /// # Ok(()) }
        /// ```
        cancel: "Dropping the future during a sleep between refusals gives back nothing (nothing \
            is held); during an attempt, or after one that got no answer, it gives the lease back \
            from a task spawned on the current tokio runtime (without a runtime, its TTL ends it).",
        pub fn acquire / acquire_blocking (&self, timeout: Duration) -> Acquire<Permit<C>>, Acquire<BlockingPermit>
            = |side| self.acquiring(side, Some(timeout))?;
    }
}

super::acquire::settings!(Semaphore, "Semaphore::new(\"uploads\", 4, Duration::from_secs(5))?");
