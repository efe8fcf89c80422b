//! Distributed locks with fencing tokens, and leased counting semaphores.
//!
//! Every operation is one call of one script from `scripts/lock/` (see [`call`]), and every
//! expiry runs on the Redis server's clock. What a holder may rely on is measured on the local
//! monotonic clock instead: [`Guard::valid_for`] counts from an [`Instant`](std::time::Instant)
//! taken *before* the acquire was sent, minus a drift margin of 1% of the TTL plus 2 ms, so the
//! holder stops before the server can have expired the lock.
//!
//! A lock alone cannot stop a holder that was paused past its TTL (GC pause, swapped out, a
//! stalled network) from acting on stale belief. Anything the lock protects should check the
//! fencing token ([`Guard::fencing_token`]): [`Lock::fenced_write`] is such a check for a value
//! kept in Redis, and refuses a writer whose token is older than one it has already seen.
//!
//! - [`Lock`] / [`Guard`] (async) / [`BlockingGuard`]: a mutex with fencing tokens, renewal
//!   ([`Guard::extend`]) and an opt-in watchdog ([`Lock::watchdog`]).
//! - [`Semaphore`] / [`Permit`] / [`BlockingPermit`]: up to N holders, each on a lease that
//!   expires by itself; also a concurrency (in-flight) limiter.
//! - [`LockKeys`], [`semaphore_key`]: the key layout, with the name inside a hash tag so every
//!   key of one lock lives in one cluster slot.
//!
//! # Dropping a guard
//!
//! `Drop` cannot await and must not block a thread. Dropping an async [`Guard`] or [`Permit`]
//! that was not released stops its watchdog and, when a tokio runtime is current, spawns the
//! release on it (fire and forget); without a runtime, or if that release fails, the lease
//! simply expires after its TTL. [`BlockingGuard`] and [`BlockingPermit`] hold no connection:
//! dropping one leaves the lease to its TTL. Release explicitly when you can.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::lock::{Acquire, FencedWrite, Lock};
//!
//! # async fn demo() -> redis_primitives::Result<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! let mut con = client.get_connection_manager().await?;
//! let lock = Lock::new("orders", Duration::from_secs(10))?;
//! match lock.acquire(&mut con, Duration::from_secs(2)).await? {
//!     Acquire::Acquired(guard) => {
//!         match guard.fenced_write(b"new state", None).await? {
//!             FencedWrite::Written => {}
//!             FencedWrite::Stale { highest_seen } => println!("a newer holder ({highest_seen}) wrote"),
//!         }
//!         guard.release().await?;
//!     }
//!     Acquire::Held { retry_after } => println!("busy, retry in {retry_after:?}"),
//! }
//! # Ok(()) }
//! ```

mod backoff;
pub mod call;
mod lease;
mod mutex;
mod semaphore;
mod watchdog;

use std::time::Duration;

pub use backoff::Backoff;
pub use mutex::{BlockingGuard, Guard, Lock};
pub use semaphore::{BlockingPermit, Permit, Semaphore};

use crate::{Error, Result};

/// The largest number the scripts accept (15 digits keep it exact as a Lua double).
const MAX_WIRE: u64 = 999_999_999_999_999;

/// The keys of one lock: `lock:{<resource>}`, `lock:{<resource>}:fence`,
/// `lock:{<resource>}:data` and `lock:{<resource>}:seen`. The resource name is the hash tag,
/// so all four share a cluster slot and one script call may touch any of them.
///
/// ```
/// use redis_primitives::lock::LockKeys;
///
/// let keys = LockKeys::new("orders")?;
/// assert_eq!(keys.lock(), "lock:{orders}");
/// assert_eq!(keys.fence(), "lock:{orders}:fence");
/// assert_eq!(keys.data(), "lock:{orders}:data");
/// assert_eq!(keys.seen(), "lock:{orders}:seen");
/// // A brace would end the hash tag early and scatter the keys over slots.
/// assert!(LockKeys::new("a}b").is_err());
/// assert!(LockKeys::new("").is_err());
/// # Ok::<(), redis_primitives::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKeys {
    resource: String,
    lock: String,
    fence: String,
    data: String,
    seen: String,
}

impl LockKeys {
    /// The keys for `resource`. Refuses an empty name and one containing `{` or `}`.
    pub fn new(resource: &str) -> Result<LockKeys> {
        check_name("resource", resource)?;
        let lock = format!("lock:{{{resource}}}");
        Ok(LockKeys {
            resource: resource.to_owned(),
            fence: format!("{lock}:fence"),
            data: format!("{lock}:data"),
            seen: format!("{lock}:seen"),
            lock,
        })
    }

    /// The resource name.
    pub fn resource(&self) -> &str {
        &self.resource
    }
    /// `lock:{<resource>}`: holds the owner's token, expires with the lease.
    pub fn lock(&self) -> &str {
        &self.lock
    }
    /// `lock:{<resource>}:fence`: the fencing counter; never expires.
    pub fn fence(&self) -> &str {
        &self.fence
    }
    /// `lock:{<resource>}:data`: the value [`Lock::fenced_write`] protects.
    pub fn data(&self) -> &str {
        &self.data
    }
    /// `lock:{<resource>}:seen`: the highest fencing token that wrote `data`; never expires.
    pub fn seen(&self) -> &str {
        &self.seen
    }
}

/// The key of the semaphore `name`: `sem:{<name>}`. Refuses an empty name and one containing
/// `{` or `}`.
///
/// ```
/// assert_eq!(redis_primitives::lock::semaphore_key("uploads")?, "sem:{uploads}");
/// assert!(redis_primitives::lock::semaphore_key("{x}").is_err());
/// # Ok::<(), redis_primitives::Error>(())
/// ```
pub fn semaphore_key(name: &str) -> Result<String> {
    check_name("name", name)?;
    Ok(format!("sem:{{{name}}}"))
}

/// Refusing is clearer than escaping: an escaped name would be a second spelling of the same
/// resource in any other language that reads these keys.
fn check_name(arg: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(arg, "must not be empty"));
    }
    if name.contains(['{', '}']) {
        return Err(Error::invalid(arg, "must not contain `{` or `}` (the name is the key's hash tag)"));
    }
    Ok(())
}

/// The outcome of an acquire: the lock (or permit) is ours, or someone else holds it.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::lock::Acquire;
///
/// let held: Acquire<()> = Acquire::Held { retry_after: Duration::from_millis(40) };
/// assert!(!held.is_acquired());
/// assert!(held.acquired().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an acquired guard must be kept (and released); a refusal must be handled"]
pub enum Acquire<G> {
    /// Acquired: the guard (or permit) to hold and release.
    Acquired(G),
    /// Held by others. `retry_after` is how long the server said the current holding lasts at
    /// most (the lock's PTTL, or the earliest lease expiry of a full semaphore); it may end
    /// sooner by a release. [`Duration::MAX`] when the lock key has no expiry (set by
    /// something other than this crate).
    Held {
        /// At most this long until the current holding ends by expiry.
        retry_after: Duration,
    },
}

impl<G> Acquire<G> {
    /// True when acquired.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Acquire::Acquired(_))
    }

    /// The guard, if acquired.
    pub fn acquired(self) -> Option<G> {
        match self {
            Acquire::Acquired(g) => Some(g),
            Acquire::Held { .. } => None,
        }
    }

    /// Maps the acquired value.
    ///
    /// ```
    /// use redis_primitives::lock::Acquire;
    /// assert_eq!(Acquire::Acquired(2).map(|n| n * 2), Acquire::Acquired(4));
    /// ```
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> Acquire<H> {
        match self {
            Acquire::Acquired(g) => Acquire::Acquired(f(g)),
            Acquire::Held { retry_after } => Acquire::Held { retry_after },
        }
    }
}

/// The outcome of a release.
///
/// ```
/// use redis_primitives::lock::Released;
/// assert!(Released::Yes.was_held());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// This token held it, and it is free now.
    Yes,
    /// This token did not hold it (any more): it expired, was released already, or belongs to
    /// someone else, who keeps it. Harmless, but the holder may have overrun its lease.
    NotHeld,
}

impl Released {
    /// True for [`Released::Yes`].
    pub fn was_held(self) -> bool {
        self == Released::Yes
    }
}

/// The outcome of an extend (renewal).
///
/// ```
/// use redis_primitives::lock::Extended;
/// assert!(!Extended::NotHeld.is_extended());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extended {
    /// The lease now runs for the new TTL from the server's now.
    Yes,
    /// The token no longer holds it: the holder must stop acting. An expired lease is never
    /// revived, because someone else may have taken it in between.
    NotHeld,
}

impl Extended {
    /// True for [`Extended::Yes`].
    pub fn is_extended(self) -> bool {
        self == Extended::Yes
    }
}

/// The outcome of [`Lock::fenced_write`].
///
/// ```
/// use redis_primitives::lock::FencedWrite;
/// let refused = FencedWrite::Stale { highest_seen: 8 };
/// assert!(!refused.is_written());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedWrite {
    /// The value was written (the writer's token is the highest seen, or equal to it).
    Written,
    /// Refused: a writer with a newer token has written already; this writer's lock is gone.
    Stale {
        /// The highest fencing token seen at the resource.
        highest_seen: u64,
    },
}

impl FencedWrite {
    /// True for [`FencedWrite::Written`].
    pub fn is_written(self) -> bool {
        self == FencedWrite::Written
    }
}

/// Why a holder may no longer rely on its lock or permit (see [`Guard::lost`]).
///
/// ```
/// use redis_primitives::lock::LostReason;
/// assert_ne!(LostReason::NotHeld, LostReason::Expired);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// A renewal found the lease gone or taken by someone else (deleted, expired, evicted).
    NotHeld,
    /// The time the holder may rely on ran out without a successful renewal (no watchdog, or
    /// renewals failed with errors, e.g. the server was unreachable).
    Expired,
    /// The watchdog reached its cap on total hold time and let the lease run out.
    MaxHold,
    /// The guard was released or dropped.
    Released,
}

/// The TTL in whole milliseconds, as the scripts take it: at least 1 ms, at most 15 digits.
fn ttl_ms(name: &'static str, ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::invalid(name, "must be at least 1 ms"));
    }
    if ms > MAX_WIRE {
        return Err(Error::invalid(name, format!("must be at most {MAX_WIRE} ms")));
    }
    Ok(ms)
}

use crate::rules::check_token;

/// `at + d`, saturating at a year ahead: `Instant + Duration` panics on overflow, and callers
/// may pass `Duration::MAX` to mean "no limit".
fn later(at: std::time::Instant, d: Duration) -> std::time::Instant {
    let year = Duration::from_secs(86_400 * 365);
    at.checked_add(d.min(year)).unwrap_or(at)
}

use crate::rules::token as new_token;
