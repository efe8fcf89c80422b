//! The one held-lease type, [`Held`]: a lock guard or a semaphore permit, async (it keeps a
//! clone of its connection handle) or blocking (it holds no connection). The accessors, the
//! release and the renewal are written once; the fencing token and the fenced write exist only
//! on locks, the holder count only on permits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::acquire::{Grant, Taken};
use super::call::LockFencedWrite;
use super::lease::{Lease, Target};
use super::{Acquire, Extended, FencedWrite, LockKeys, LostReason, Released, watchdog};
use crate::flow::{self, Keep, Once};
use crate::{Result, rules};

/// A held lease: a lock ([`Guard`], [`BlockingGuard`]) or a semaphore permit ([`Permit`],
/// [`BlockingPermit`]). `K` says which ([`Fenced`] or [`Counted`]); `C` is the async connection
/// handle the lease keeps, or [`Detached`] for a blocking one, which holds none and takes a
/// connection in each call.
///
/// Every call on it returns within the primitive's deadline (see
/// [`Lock::with_deadline`](super::Lock::with_deadline)).
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
#[must_use = "an unreleased lease is released in the background on drop (async) or left to its TTL (blocking)"]
pub struct Held<K, C = Detached> {
    lease: Lease,
    kind: K,
    con: C,
    watchdog: Option<JoinHandle<()>>,
    /// What `Drop` does with an unreleased lease: spawn its release (async), or nothing.
    on_drop: fn(&Lease, &C),
    released: bool,
}

/// A held lock, async: keeps a clone of the connection handle it was acquired on, for release,
/// renewal and fenced writes, and, with [`Lock::watchdog`](super::Lock::watchdog), a renewal
/// task. Dropping it unreleased stops the watchdog and, when a tokio runtime is current,
/// spawns the release; otherwise (or if that release fails) the lock expires after its TTL.
pub type Guard<C> = Held<Fenced, C>;
/// A held lock, blocking: holds no connection (pass one to each call); dropping it unreleased
/// leaves the lock to expire after its TTL, nothing blocks and nothing is sent.
pub type BlockingGuard = Held<Fenced>;
/// A held semaphore permit, async (dropped unreleased: as a [`Guard`]).
pub type Permit<C> = Held<Counted, C>;
/// A held semaphore permit, blocking (dropped unreleased: left to its TTL).
pub type BlockingPermit = Held<Counted>;

/// The connection of a blocking guard or permit: none. Each call takes one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detached;

/// What a held lock has besides its lease: its keys and its fencing token.
#[derive(Debug, Clone)]
pub struct Fenced {
    keys: Arc<LockKeys>,
    fence: u64,
}

impl Fenced {
    pub(super) fn new(keys: Arc<LockKeys>) -> Fenced {
        Fenced { keys, fence: 0 }
    }
}

impl Grant for Fenced {
    fn target(&self) -> Target {
        Target::Lock(self.keys.clone())
    }
    fn granted(self, fence: u64) -> Self {
        Fenced { fence, ..self }
    }
}

/// What a held permit has besides its lease: its semaphore, and the number of holders when it
/// was granted.
#[derive(Debug, Clone)]
pub struct Counted {
    key: Arc<str>,
    permits: u64,
    holders: u64,
}

impl Counted {
    pub(super) fn new(key: Arc<str>, permits: u64) -> Counted {
        Counted { key, permits, holders: 0 }
    }
}

impl Grant for Counted {
    fn target(&self) -> Target {
        Target::Semaphore { key: self.key.clone(), permits: self.permits }
    }
    fn granted(self, holders: u64) -> Self {
        Counted { holders, ..self }
    }
}

/// The async answer of an acquire: the holding keeps a clone of the handle, and starts its
/// watchdog if the lock or semaphore has one.
impl<K: Grant, C> Keep<C> for Acquire<Taken<K>>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    type Kept = Acquire<Held<K, C>>;

    fn keep(self, con: &C) -> Acquire<Held<K, C>> {
        self.map(|t| {
            let cap = t.max_hold.map(|max| rules::later(t.sent_at, max));
            let watchdog = cap.and_then(|cap| watchdog::spawn(t.lease.clone(), con.clone(), cap));
            let on_drop = release_in_background::<C>;
            Held { lease: t.lease, kind: t.kind, con: con.clone(), watchdog, on_drop, released: false }
        })
    }
}

/// The blocking answer of an acquire: no connection, no watchdog.
impl<K: Grant> From<Acquire<Taken<K>>> for Acquire<Held<K>> {
    fn from(acquired: Acquire<Taken<K>>) -> Self {
        acquired.map(|t| Held {
            lease: t.lease,
            kind: t.kind,
            con: Detached,
            watchdog: None,
            on_drop: |lease, _| lease.mark_lost(LostReason::Released),
            released: false,
        })
    }
}

/// `Drop` of an unreleased async lease: never blocks; without a runtime the TTL ends the lease.
fn release_in_background<C>(lease: &Lease, con: &C)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    lease.mark_lost(LostReason::Released);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let (release, mut con) = (lease.release(), con.clone());
    runtime.spawn(async move {
        let _ = flow::run_async(release, &mut con).await;
    });
}

impl<K, C> Drop for Held<K, C> {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if !self.released {
            (self.on_drop)(&self.lease, &self.con);
        }
    }
}

impl<K: fmt::Debug, C> fmt::Debug for Held<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("kind", &self.kind)
            .field("valid_for", &self.valid_for())
            .field("watchdog", &self.watchdog.is_some())
            .finish_non_exhaustive()
    }
}

/// Accessors of every holding.
impl<K, C> Held<K, C> {
    /// The random owner token (the lock key's value, or the semaphore member).
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The lease length granted.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// The time the holder may still rely on the lease: measured on the monotonic clock from
    /// before the last successful acquire or renewal was sent, plus its TTL, minus a drift
    /// margin (1% of the TTL + 2 ms). Zero once lost or released.
    pub fn valid_for(&self) -> Duration {
        self.lease.valid_for()
    }

    /// True once the holder may no longer rely on the lease: [`valid_for`](Self::valid_for)
    /// is zero, or a renewal found it gone.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Marks the lease released (whatever the server said): `Drop` sends nothing more.
    fn settle(&mut self, outcome: &Result<Released>) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        // An error leaves the release unconfirmed: an async drop tries once more.
        self.released = outcome.is_ok();
        self.lease.mark_lost(LostReason::Released);
    }
}

/// Lock-only accessors.
impl<C> Held<Fenced, C> {
    /// The fencing token: strictly greater than any token handed out before for this lock.
    /// Pass it to whatever the lock protects, and have that refuse older tokens.
    pub fn fencing_token(&self) -> u64 {
        self.kind.fence
    }

    /// The lock's keys.
    pub fn keys(&self) -> &LockKeys {
        &self.kind.keys
    }

    fn fenced<'a>(&'a self, value: &'a [u8], value_ttl: Option<Duration>) -> LockFencedWrite<'a> {
        LockFencedWrite { keys: &self.kind.keys, fence: self.kind.fence, value, value_ttl }
    }
}

/// Permit-only accessors.
impl<C> Held<Counted, C> {
    /// Holders right after this permit was granted, this one included.
    pub fn holders(&self) -> u64 {
        self.kind.holders
    }

    /// The semaphore's key.
    pub fn key(&self) -> &str {
        &self.kind.key
    }
}

/// The async calls: on the handle the lease keeps, within the primitive's deadline.
impl<K, C> Held<K, C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// Resolves when the holder may no longer rely on the lease: at once when a renewal (the
    /// watchdog's or [`extend`](Self::extend)) finds it gone, or when
    /// [`valid_for`](Self::valid_for) runs out. The future owns what it needs: `select!` on it
    /// beside the work, or spawn it. Must be polled inside a tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Safe: it only watches.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lease.lost()
    }

    /// Resets the lease to `ttl` from the server's now, if this token still holds it (an
    /// expired lease is never revived). [`Extended::NotHeld`] marks it lost; an error leaves
    /// [`valid_for`](Self::valid_for) counting down. The future owns its handle, so it is
    /// `Send` without requiring `C: Sync`.
    ///
    /// Blocking twin: [`extend_blocking`](Held::extend_blocking).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not have extended the lease; the holder's clock is only
    /// moved by an answer, so it never overestimates.
    pub fn extend(&self, ttl: Duration) -> impl Future<Output = Result<Extended>> + Send + 'static {
        let (lease, mut con) = (self.lease.clone(), self.con.clone());
        async move { flow::run_async(lease.extend(ttl, lease.deadline), &mut con).await }
    }

    /// Gives the lease back if this token still holds it, and tells how it ended
    /// ([`Released`]). Stops the watchdog first. A transient error is resent until the
    /// deadline (a compare-and-delete is safe to resend); an error that remains leaves the
    /// lease to its TTL, after one more attempt in the background as the holding drops.
    ///
    /// Blocking twin: [`release_blocking`](Held::release_blocking).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the holding, whose `Drop` releases in the background.
    pub async fn release(mut self) -> Result<Released> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let outcome = flow::run_async(self.lease.release(), &mut self.con).await;
        self.settle(&outcome);
        outcome
    }
}

impl<C> Held<Fenced, C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// Writes the protected value `lock:{<resource>}:data` with this guard's fencing token
    /// ([`FencedWrite::Stale`] if a newer holder has written already), within the deadline.
    ///
    /// Blocking twin: [`fenced_write_blocking`](Held::fenced_write_blocking).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not have written the value.
    pub fn fenced_write<'v>(
        &self,
        value: &'v [u8],
        value_ttl: Option<Duration>,
    ) -> impl Future<Output = Result<FencedWrite>> + Send + 'v {
        // Owns its handle and keys rather than borrowing the guard, so the future is Send
        // without requiring `C: Sync`.
        let (mut con, kind, deadline) = (self.con.clone(), self.kind.clone(), self.lease.deadline);
        async move {
            let call = LockFencedWrite { keys: &kind.keys, fence: kind.fence, value, value_ttl };
            flow::run_async(Once::new(call, deadline), &mut con).await
        }
    }
}

/// The blocking calls: on the connection passed in, bounded by its read and write timeouts.
impl<K> Held<K> {
    /// The blocking twin of [`extend`](Held::extend): the same flow, on a blocking connection.
    pub fn extend_blocking(&self, con: &mut dyn redis::ConnectionLike, ttl: Duration) -> Result<Extended> {
        flow::run_blocking(self.lease.extend(ttl, self.lease.deadline), con)
    }

    /// The blocking twin of [`release`](Held::release): the same flow, on a blocking connection.
    pub fn release_blocking(mut self, con: &mut dyn redis::ConnectionLike) -> Result<Released> {
        let outcome = flow::run_blocking(self.lease.release(), con);
        self.settle(&outcome);
        outcome
    }
}

impl Held<Fenced> {
    /// The blocking twin of [`fenced_write`](Held::fenced_write): the same call, on a blocking
    /// connection.
    pub fn fenced_write_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        value: &[u8],
        value_ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        flow::run_blocking(Once::new(self.fenced(value, value_ttl), self.lease.deadline), con)
    }
}
