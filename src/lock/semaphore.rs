//! The counting semaphore: up to N holders at once, each on a lease that expires by server
//! time, so the permit of a holder that crashed comes back by itself.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::{self, Backoff};
use super::call::{SemaphoreAcquire, check_permits};
use super::lease::{AsyncLease, Lease, Target};
use super::{Acquire, Extended, LostReason, Released, new_token, semaphore_key, ttl_ms, watchdog};
use crate::{Error, Result};

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
    ttl: Duration,
    backoff: Backoff,
    max_hold: Option<Duration>,
}

impl Semaphore {
    /// A semaphore `name` with `permits` permits (at least 1), each leased for `ttl` (whole
    /// milliseconds; at least 1 ms). Every user of one semaphore must pass the same `permits`:
    /// each acquire enforces the number it sends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_primitives::lock::Semaphore;
    /// assert!(Semaphore::new("uploads", 0, Duration::from_secs(1)).is_err());
    /// assert_eq!(Semaphore::new("uploads", 4, Duration::from_secs(1))?.key(), "sem:{uploads}");
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn new(name: &str, permits: u64, ttl: Duration) -> Result<Semaphore> {
        let key = semaphore_key(name)?;
        check_permits(permits)?;
        let ttl = Duration::from_millis(ttl_ms("ttl", ttl)?);
        Ok(Semaphore { key: key.into(), permits, ttl, backoff: Backoff::default(), max_hold: None })
    }

    /// Sets the backoff of [`acquire`](Self::acquire).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use redis_primitives::lock::{Backoff, Semaphore};
    /// let s = Semaphore::new("uploads", 4, Duration::from_secs(5))?.backoff(Backoff::default());
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Turns on the renewal watchdog for async permits, as [`Lock::watchdog`](super::Lock::watchdog).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use redis_primitives::lock::Semaphore;
    /// let s = Semaphore::new("uploads", 4, Duration::from_secs(5))?.watchdog(Duration::from_secs(300));
    /// # Ok::<(), redis_primitives::Error>(())
    /// ```
    pub fn watchdog(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// The key, `sem:{<name>}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The number of permits.
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// The lease length.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// One attempt: a permit, or [`Acquire::Held`] with the time until the earliest lease
    /// expires.
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
    pub async fn try_acquire<C>(&self, con: &mut C) -> Result<Acquire<Permit<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        self.acquire_inner(con, None).await
    }

    /// Tries until a permit is free or `timeout` has passed (see
    /// [`Lock::acquire`](super::Lock::acquire) for the backoff and the retries).
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
    pub async fn acquire<C>(&self, con: &mut C, timeout: Duration) -> Result<Acquire<Permit<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        self.acquire_inner(con, Some(timeout)).await
    }

    async fn acquire_inner<C>(&self, con: &mut C, timeout: Option<Duration>) -> Result<Acquire<Permit<C>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        if self.max_hold.is_some() {
            watchdog::check_runtime()?;
        }
        let token = new_token();
        let call = SemaphoreAcquire { key: &self.key, token: &token, permits: self.permits, ttl: self.ttl };
        let (outcome, sent_at) = backoff::acquire_async(&call, con, self.backoff, timeout).await?;
        let grant = match outcome {
            Acquire::Acquired(grant) => grant,
            Acquire::Held { retry_after } => return Ok(Acquire::Held { retry_after }),
        };
        let lease = self.lease(token, grant.ttl, sent_at);
        let inner = AsyncLease::new(lease, con.clone(), self.max_hold, sent_at)?;
        Ok(Acquire::Acquired(Permit { inner, holders: grant.holders }))
    }

    /// [`try_acquire`](Self::try_acquire) on a blocking connection.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::Semaphore;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
    /// if let Some(permit) = sem.try_acquire_blocking(con)?.acquired() {
    ///     permit.release_blocking(con)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_acquire_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
    ) -> Result<Acquire<BlockingPermit>> {
        self.acquire_blocking_inner(con, None)
    }

    /// [`acquire`](Self::acquire) on a blocking connection.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::Semaphore;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
    /// if let Some(permit) = sem.acquire_blocking(con, Duration::from_secs(2))?.acquired() {
    ///     permit.release_blocking(con)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn acquire_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        timeout: Duration,
    ) -> Result<Acquire<BlockingPermit>> {
        self.acquire_blocking_inner(con, Some(timeout))
    }

    fn acquire_blocking_inner(
        &self,
        con: &mut dyn redis::ConnectionLike,
        timeout: Option<Duration>,
    ) -> Result<Acquire<BlockingPermit>> {
        if self.max_hold.is_some() {
            return Err(Error::invalid("watchdog", "blocking permits are never renewed in the background"));
        }
        let token = new_token();
        let call = SemaphoreAcquire { key: &self.key, token: &token, permits: self.permits, ttl: self.ttl };
        let (outcome, sent_at) = backoff::acquire_blocking(&call, con, self.backoff, timeout)?;
        Ok(outcome.map(|grant| BlockingPermit {
            lease: self.lease(token, grant.ttl, sent_at),
            holders: grant.holders,
        }))
    }

    fn lease(&self, token: String, granted: Duration, sent_at: Instant) -> Lease {
        Lease::new(Target::Semaphore(self.key.clone()), token, granted.min(self.ttl), sent_at)
    }
}

/// A held semaphore permit (async). Dropping it without [`release`](Self::release) behaves as
/// dropping a [`Guard`](super::Guard): background release where a tokio runtime is current,
/// the lease's TTL otherwise.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::Semaphore;
/// # async fn demo(mut con: redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
/// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
/// if let Some(permit) = sem.try_acquire(&mut con).await?.acquired() {
///     println!("{} of 4 in use", permit.holders());
///     permit.release().await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping the permit releases it in the background"]
pub struct Permit<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    inner: AsyncLease<C>,
    holders: u64,
}

impl<C> fmt::Debug for Permit<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("holders", &self.holders)
            .field("valid_for", &self.valid_for())
            .field("watchdog", &self.inner.has_watchdog())
            .finish_non_exhaustive()
    }
}

impl<C> Permit<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// The random lease token (the sorted set's member).
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) { println!("{}", p.token()); }
    /// ```
    pub fn token(&self) -> &str {
        &self.inner.lease.token
    }

    /// Holders right after this permit was granted, this one included.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) { assert!(p.holders() >= 1); }
    /// ```
    pub fn holders(&self) -> u64 {
        self.holders
    }

    /// The time the holder may still rely on the permit (see [`Guard::valid_for`](super::Guard::valid_for)).
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) { println!("{:?}", p.valid_for()); }
    /// ```
    pub fn valid_for(&self) -> Duration {
        self.inner.lease.valid_for()
    }

    /// True once [`valid_for`](Self::valid_for) is zero or a renewal found the lease gone.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) { assert!(!p.is_lost()); }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.inner.lease.is_lost()
    }

    /// Resolves when the holder may no longer rely on the permit (see
    /// [`Guard::lost`](super::Guard::lost)).
    ///
    /// ```no_run
    /// # async fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) {
    /// let reason = p.lost().await;
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.inner.lease.lost()
    }

    /// Pushes the lease to `ttl` from now, if still live (an expired lease is never revived).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) -> redis_primitives::Result<()> {
    /// p.extend(Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub fn extend(&self, ttl: Duration) -> impl Future<Output = Result<Extended>> + Send + 'static {
        self.inner.extend(ttl)
    }

    /// Gives the permit back ([`Released::NotHeld`] if the lease had expired). Stops the
    /// watchdog first; a connection error is retried once.
    ///
    /// ```no_run
    /// # async fn demo(p: redis_primitives::lock::Permit<redis::aio::ConnectionManager>) -> redis_primitives::Result<()> {
    /// p.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<Released> {
        self.inner.release().await
    }
}

/// A held semaphore permit (blocking). Holds no connection; dropping it without
/// [`release_blocking`](Self::release_blocking) leaves the permit to its lease's TTL.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::Semaphore;
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let sem = Semaphore::new("uploads", 4, Duration::from_secs(30))?;
/// if let Some(permit) = sem.try_acquire_blocking(con)?.acquired() {
///     permit.release_blocking(con)?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a dropped blocking permit stays taken until its TTL"]
pub struct BlockingPermit {
    lease: Lease,
    holders: u64,
}

impl BlockingPermit {
    /// The random lease token.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::BlockingPermit) { println!("{}", p.token()); }
    /// ```
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// Holders right after this permit was granted, this one included.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::BlockingPermit) { assert!(p.holders() >= 1); }
    /// ```
    pub fn holders(&self) -> u64 {
        self.holders
    }

    /// The time the holder may still rely on the permit.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::BlockingPermit) { println!("{:?}", p.valid_for()); }
    /// ```
    pub fn valid_for(&self) -> Duration {
        self.lease.valid_for()
    }

    /// True once [`valid_for`](Self::valid_for) is zero or a renewal found the lease gone.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::BlockingPermit) { assert!(!p.is_lost()); }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Pushes the lease to `ttl` from now, if still live.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn demo(p: redis_primitives::lock::BlockingPermit, con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// p.extend_blocking(con, Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn extend_blocking(&self, con: &mut dyn redis::ConnectionLike, ttl: Duration) -> Result<Extended> {
        self.lease.extend_blocking(con, ttl)
    }

    /// Gives the permit back.
    ///
    /// ```no_run
    /// # fn demo(p: redis_primitives::lock::BlockingPermit, con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// p.release_blocking(con)?;
    /// # Ok(()) }
    /// ```
    pub fn release_blocking(self, con: &mut dyn redis::ConnectionLike) -> Result<Released> {
        let outcome = self.lease.release_blocking(con);
        self.lease.mark_lost(LostReason::Released);
        outcome
    }
}
