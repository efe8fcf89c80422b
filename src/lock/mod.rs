//! Distributed locks with fencing tokens, and leased counting semaphores.
//!
//! Every operation is one call of one script from `scripts/lock/` (see [`call`]), and every
//! expiry runs on the Redis server's clock. What a holder may rely on is measured on the local
//! monotonic clock instead: [`Held::valid_for`] counts from an [`Instant`](std::time::Instant)
//! taken *before* the acquire was sent, minus a drift margin of 1% of the TTL plus 2 ms, so the
//! holder stops before the server can have expired the lock.
//!
//! A lock alone cannot stop a holder that was paused past its TTL (GC pause, swapped out, a
//! stalled network) from acting on stale belief. Anything the lock protects should check the
//! fencing token ([`Held::fencing_token`]): [`Lock::fenced_write`] is such a check for a value
//! kept in Redis, and refuses a writer whose token is older than one it has already seen.
//!
//! - [`Lock`]: a mutex with fencing tokens, renewal ([`Held::extend`]) and an opt-in watchdog
//!   ([`Lock::watchdog`]); it hands out a [`Guard`] (async) or a [`BlockingGuard`].
//! - [`Semaphore`]: up to N holders, each on a lease that expires by itself; also a concurrency
//!   (in-flight) limiter. It hands out a [`Permit`] or a [`BlockingPermit`].
//! - [`Held`]: the one held-lease type behind all four.
//! - [`LockKeys`], [`semaphore_key`]: the key layout, with the name as the hash tag so every key
//!   of one lock lives in one cluster slot.
//!
//! # Deadlines, and what happens when Redis is unreachable
//!
//! Every call returns within a bound, whatever the server does (down, paused, silent, failing
//! over): `acquire` within its `timeout`, every other call within the primitive's deadline
//! ([`DEFAULT_DEADLINE`], set with [`Lock::with_deadline`] / [`Semaphore::with_deadline`]);
//! an acquire that must clean up (below) takes at most [`CLEANUP_MARGIN`] more. Async calls are
//! cut at that instant; a blocking call cannot be interrupted, so each of its round trips is
//! bounded by the connection's read and write timeouts (`redis::Client::get_connection_with_timeout`
//! and `Connection::set_read_timeout`; a blocking connection has none by default, and a server
//! that accepts and stays silent would block it forever).
//!
//! Locks fail closed: an error is never a lock. When Redis is unreachable, `try_acquire` and
//! `acquire` return the error (acquire retries [transient](crate::Error::is_transient) errors
//! with the same token until its timeout); `extend` returns the error and the holder's
//! [`valid_for`](Held::valid_for) keeps counting down; `fenced_write` returns the error (the
//! write may or may not have happened); `release` returns the error and the lease ends by its
//! TTL (an async guard retries the release once more in the background as it drops).
//!
//! Nothing is left held by nobody: an acquire whose last attempt's outcome is unknown (cut at
//! the deadline, connection lost) releases its token before returning and says so in
//! [`Error::Abandoned`](crate::Error::Abandoned); a cancelled acquire future does the same from
//! a spawned task (see each method's `# Cancel safety`).
//!
//! # Dropping a guard
//!
//! `Drop` cannot await and must not block a thread. Dropping an async [`Guard`] or [`Permit`]
//! that was not released stops its watchdog and, when a tokio runtime is current, spawns the
//! release on it (fire and forget); without a runtime, or if that release fails, the lease
//! simply expires after its TTL. [`BlockingGuard`] and [`BlockingPermit`] hold no connection:
//! dropping one leaves the lease to its TTL. Release explicitly when you can.
//!
//! # Connections
//!
//! An async guard keeps a clone of the connection handle it was acquired on (for renewal, the
//! fenced write and the release in `Drop`), so async acquires take a handle that is `Clone`:
//! a multiplexed connection, a `ConnectionManager`, a cluster connection. Any other async
//! connection (one taken from a pool, a type of your own) takes one line:
//! [`SharedConnection::new(con)`](SharedConnection).
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

mod acquire;
mod backoff;
pub mod call;
mod held;
mod lease;
mod mutex;
mod semaphore;
mod shared;
mod watchdog;

use std::time::Duration;

pub use backoff::Backoff;
pub use held::{BlockingGuard, BlockingPermit, Counted, Detached, Fenced, Guard, Held, Permit};
pub use mutex::Lock;
pub use semaphore::Semaphore;
pub use shared::SharedConnection;

use crate::{Result, rules};

/// How long a call without a timeout of its own (`try_acquire`, `release`, `extend`,
/// `fenced_write`) may take by default before it fails with [`Error::Timeout`](crate::Error::Timeout).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// How much longer than its timeout (or deadline) an acquire may take when it has to clean up:
/// the release of a token that an attempt with no answer may have taken. An async acquire
/// returns within timeout + this margin (plus the scheduler's delay in waking it; measured:
/// under 15 ms). A blocking one cannot be cut: it returns within timeout + one read timeout of
/// its connection (the attempt in flight at the timeout) + one more when it cleans up (the
/// release is sent only within this margin).
pub const CLEANUP_MARGIN: Duration = Duration::from_millis(150);

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
/// // A `}` would end the hash tag early and scatter the keys over slots.
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
    /// The keys for `resource`: 1..=1024 bytes, without `}` (the shared hash-tag rule).
    pub fn new(resource: impl Into<String>) -> Result<LockKeys> {
        let (resource, lock) = rules::tagged_key("resource", "lock", resource)?;
        Ok(LockKeys {
            fence: format!("{lock}:fence"),
            data: format!("{lock}:data"),
            seen: format!("{lock}:seen"),
            lock,
            resource,
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
    /// `lock:{<resource>}:fence`: the last fencing token handed out; it expires with the lease
    /// it was handed out for (losing it costs nothing: tokens have a floor of server time).
    pub fn fence(&self) -> &str {
        &self.fence
    }
    /// `lock:{<resource>}:data`: the value [`Lock::fenced_write`] protects.
    pub fn data(&self) -> &str {
        &self.data
    }
    /// `lock:{<resource>}:seen`: the highest fencing token that wrote `data`; it lives exactly
    /// as long as `data`.
    pub fn seen(&self) -> &str {
        &self.seen
    }
}

/// The key of the semaphore `name`: `sem:{<name>}`. Refuses an empty name, one longer than
/// 1024 bytes and one containing `}` (the shared hash-tag rule).
///
/// ```
/// assert_eq!(redis_primitives::lock::semaphore_key("uploads")?, "sem:{uploads}");
/// assert!(redis_primitives::lock::semaphore_key("{x}").is_err());
/// # Ok::<(), redis_primitives::Error>(())
/// ```
pub fn semaphore_key(name: &str) -> Result<String> {
    rules::tag("name", name)?;
    Ok(format!("sem:{{{name}}}"))
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
/// A release is a compare-and-delete, so it is resent when an attempt fails with a
/// [transient](crate::Error::is_transient) error. The scripts keep no record of past releases:
/// when a resend finds nothing held, the server cannot say whether the earlier attempt (whose
/// reply was lost) released it or the lease had already ended. The guard's own clock decides
/// between [`Released::Earlier`] and [`Released::NotHeld`] (see each).
///
/// ```
/// use redis_primitives::lock::Released;
/// assert!(Released::Yes.was_held() && Released::Earlier.was_held());
/// assert!(!Released::NotHeld.was_held());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// This token held it, and this call's release freed it.
    Yes,
    /// An earlier attempt of this same release got no answer (a connection was lost), and the
    /// resend found nothing held by this token; the first attempt was sent while the lease was
    /// still valid by the holder's clock. So that attempt released it — unless it reached the
    /// server only after the lease had expired there (a server paused past the lease), or the
    /// key was removed behind the crate's back (DEL, eviction, a failover that lost it).
    Earlier,
    /// This token did not hold it (any more): it expired, was released already, or belongs to
    /// someone else, who keeps it. The holder may have overrun its lease. Also reported for a
    /// resend that found nothing when the first attempt was sent after the lease had run out
    /// by the holder's clock.
    NotHeld,
}

impl Released {
    /// True for [`Released::Yes`] and [`Released::Earlier`]: held until this release.
    pub fn was_held(self) -> bool {
        matches!(self, Released::Yes | Released::Earlier)
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

/// Why a holder may no longer rely on its lock or permit (see [`Held::lost`]).
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

impl LostReason {
    /// The telemetry label.
    fn label(self) -> &'static str {
        match self {
            LostReason::NotHeld => "not_held",
            LostReason::Expired => "expired",
            LostReason::MaxHold => "max_hold",
            LostReason::Released => "released",
        }
    }
}
