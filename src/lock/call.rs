//! The lock scripts as typed calls ([`ScriptCall`]): one struct per script builds the
//! invocation, validates its arguments before anything is sent (with the shared
//! [`crate::rules`]), and reads the reply without trusting it. [`Lock`](super::Lock) and
//! [`Semaphore`](super::Semaphore) drive these; use them directly to batch calls or to act on a
//! token you kept yourself. They carry no deadline of their own: the connection's timeouts
//! bound them.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::lock::{LockKeys, Released, call::LockRelease};
//! use redis_primitives::script::ScriptCall;
//!
//! # async fn demo() -> redis_primitives::Result<()> {
//! # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! # let mut con = client.get_multiplexed_async_connection().await?;
//! let keys = LockKeys::new("orders")?;
//! let released = LockRelease { keys: &keys, token: "a token kept from an acquire" }
//!     .query_async(&mut con)
//!     .await?;
//! assert_eq!(released, Released::NotHeld);
//! # Ok(()) }
//! ```

use std::time::Duration;

use super::{Acquire, Extended, FencedWrite, LockKeys, Released};
use crate::rules::{self, check_token};
use crate::script::{Id, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

/// The largest fencing token the scripts hand out or accept: 2^53 − 1, the largest integer a
/// Lua double holds exactly (tokens are server microseconds or above: 16 digits, below it).
pub const MAX_FENCE: u64 = (1 << 53) - 1;

/// What `lock.acquire` grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGrant {
    /// The fencing token: strictly greater than every token handed out before for this lock.
    pub fence: u64,
    /// The lease length the server set.
    pub ttl: Duration,
}

/// What `lock.semaphore_acquire` grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitGrant {
    /// The lease length the server set.
    pub ttl: Duration,
    /// Holders right after this acquire, this one included.
    pub holders: u64,
}

/// `lock.acquire`: take the lock (or refresh it, if `token` holds it already) and get a new
/// fencing token.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::{Acquire, LockKeys, call::LockAcquire};
/// # use redis_primitives::script::ScriptCall;
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let keys = LockKeys::new("orders")?;
/// let call = LockAcquire { keys: &keys, token: "t-1", ttl: Duration::from_secs(5) };
/// if let Acquire::Acquired(grant) = call.query(con)? {
///     println!("fencing token {}", grant.fence);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LockAcquire<'a> {
    /// The lock's keys.
    pub keys: &'a LockKeys,
    /// The owner token (1..=256 bytes).
    pub token: &'a str,
    /// The lease length (whole milliseconds, 1 ms..=10^12 ms).
    pub ttl: Duration,
}

impl ScriptCall for LockAcquire<'_> {
    type Output = Acquire<LockGrant>;

    fn invocation(&self) -> Result<Invocation<'static>> {
        let ttl = token_and_ttl(self.token, self.ttl)?;
        Ok(Id::LockAcquire.invoke().key(self.keys.lock()).key(self.keys.fence()).arg(self.token).arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Acquire<LockGrant>> {
        match reply.ints(3)?[..] {
            [1, fence, ttl] if fence >= 1 && ttl >= 1 => Ok(Acquire::Acquired(LockGrant {
                fence: fence.unsigned_abs(),
                ttl: Duration::from_millis(ttl.unsigned_abs()),
            })),
            [0, pttl, 0] => {
                let retry_after = match pttl {
                    0.. => Duration::from_millis(pttl.unsigned_abs()),
                    -1 => Duration::MAX,
                    // -2: no key. Cannot happen inside one script, but it would mean "free".
                    -2 => Duration::ZERO,
                    _ => return Err(reply.unexpected("a PTTL of -2 or more")),
                };
                Ok(Acquire::Held { retry_after })
            }
            _ => Err(reply.unexpected("{1, fence >= 1, ttl >= 1} or {0, pttl, 0}")),
        }
    }
}

/// `lock.fenced_write`: write the lock's protected value (`lock:{<resource>}:data`) unless a
/// newer fencing token has written it already.
///
/// ```no_run
/// # use redis_primitives::lock::{LockKeys, call::LockFencedWrite};
/// # use redis_primitives::script::ScriptCall;
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let keys = LockKeys::new("orders")?;
/// let outcome = LockFencedWrite { keys: &keys, fence: 7, value: b"v", value_ttl: None }.query(con)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LockFencedWrite<'a> {
    /// The lock's keys.
    pub keys: &'a LockKeys,
    /// The writer's fencing token (1..=[`MAX_FENCE`]).
    pub fence: u64,
    /// The new value.
    pub value: &'a [u8],
    /// The value's expiry (whole milliseconds, 1 ms..=10^12 ms); `None` keeps it forever.
    pub value_ttl: Option<Duration>,
}

impl ScriptCall for LockFencedWrite<'_> {
    type Output = FencedWrite;

    fn invocation(&self) -> Result<Invocation<'static>> {
        if !(1..=MAX_FENCE).contains(&self.fence) {
            return Err(Error::invalid("fence", format!("must be 1..={MAX_FENCE} (got {})", self.fence)));
        }
        let ttl = match self.value_ttl {
            Some(ttl) => rules::millis("value_ttl", ttl)?,
            None => 0,
        };
        Ok(Id::LockFencedWrite
            .invoke()
            .key(self.keys.data())
            .key(self.keys.seen())
            .arg(self.fence)
            .arg(self.value)
            .arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<FencedWrite> {
        match reply.ints(2)?[..] {
            [1, _] => Ok(FencedWrite::Written),
            [0, seen] if seen >= 0 => Ok(FencedWrite::Stale { highest_seen: seen.unsigned_abs() }),
            _ => Err(reply.unexpected("{1, fence} or {0, highest seen >= 0}")),
        }
    }
}

/// `lock.semaphore_acquire`: take one of `permits` leased permits of the semaphore at `key`
/// (or refresh the lease, if `token` holds one). Expired leases are freed first.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redis_primitives::lock::{semaphore_key, call::SemaphoreAcquire};
/// # use redis_primitives::script::ScriptCall;
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let key = semaphore_key("uploads")?;
/// let call = SemaphoreAcquire { key: &key, token: "t-1", permits: 4, ttl: Duration::from_secs(30) };
/// let outcome = call.query(con)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SemaphoreAcquire<'a> {
    /// The semaphore's key, from [`semaphore_key`](super::semaphore_key).
    pub key: &'a str,
    /// The lease token (1..=256 bytes).
    pub token: &'a str,
    /// The most holders at once (1..=10^12).
    pub permits: u64,
    /// The lease length (whole milliseconds, 1 ms..=10^12 ms).
    pub ttl: Duration,
}

impl ScriptCall for SemaphoreAcquire<'_> {
    type Output = Acquire<PermitGrant>;

    fn invocation(&self) -> Result<Invocation<'static>> {
        let ttl = token_and_ttl(self.token, self.ttl)?;
        let permits = rules::count("permits", self.permits)?;
        Ok(Id::LockSemaphoreAcquire.invoke().key(self.key).arg(self.token).arg(permits).arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Acquire<PermitGrant>> {
        match reply.ints(3)?[..] {
            [1, ttl, holders] if ttl >= 1 && holders >= 1 => Ok(Acquire::Acquired(PermitGrant {
                ttl: Duration::from_millis(ttl.unsigned_abs()),
                holders: holders.unsigned_abs(),
            })),
            [0, retry_after, _] if retry_after >= 1 => {
                Ok(Acquire::Held { retry_after: Duration::from_millis(retry_after.unsigned_abs()) })
            }
            _ => Err(reply.unexpected("{1, ttl >= 1, holders >= 1} or {0, retry_after >= 1, holders}")),
        }
    }
}

/// The four lease calls (release and extend, of a lock and of a semaphore) take the same
/// arguments in the same order and answer 1 or 0: one definition, four public types.
macro_rules! lease_call {
    ($(
        $(#[doc = $doc:expr])*
        $name:ident { $key:ident: $kty:ty => $keyexpr:expr, what: $what:literal }
            = $id:ident $(, ttl: $ttl:ident)? -> $out:ty { $yes:expr, $no:expr }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a> {
            #[doc = concat!("The ", $what, ".")]
            pub $key: &'a $kty,
            /// The owner (lease) token.
            pub token: &'a str,
            $(
            /// The new lease length, from the server's now (whole milliseconds, 1 ms..=10^12 ms).
            pub $ttl: Duration,
            )?
        }

        impl ScriptCall for $name<'_> {
            type Output = $out;

            fn invocation(&self) -> Result<Invocation<'static>> {
                check_token(self.token)?;
                let $key: &str = $keyexpr(self.$key);
                let inv = Id::$id.invoke().key($key).arg(self.token);
                $(let inv = inv.arg(rules::millis("ttl", self.$ttl)?);)?
                Ok(inv)
            }

            fn parse(&self, reply: Reply) -> Result<$out> {
                Ok(if one_or_zero(&reply)? { $yes } else { $no })
            }
        }
    )*};
}

lease_call! {
    /// `lock.release`: delete the lock if `token` holds it. Answers [`Released::Yes`] or
    /// [`Released::NotHeld`] (the resend logic that tells [`Released::Earlier`] lives in the guard).
    ///
    /// ```no_run
    /// # use redis_primitives::lock::{LockKeys, call::LockRelease};
    /// # use redis_primitives::script::ScriptCall;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let keys = LockKeys::new("orders")?;
    /// let released = LockRelease { keys: &keys, token: "t-1" }.query(con)?;
    /// # Ok(()) }
    /// ```
    LockRelease { keys: LockKeys => LockKeys::lock, what: "lock's keys" }
        = LockRelease -> Released { Released::Yes, Released::NotHeld }

    /// `lock.extend`: reset the lock's expiry to `ttl` from now, if `token` still holds it.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::{LockKeys, call::LockExtend};
    /// # use redis_primitives::script::ScriptCall;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let keys = LockKeys::new("orders")?;
    /// let extended = LockExtend { keys: &keys, token: "t-1", ttl: Duration::from_secs(5) }.query(con)?;
    /// # Ok(()) }
    /// ```
    LockExtend { keys: LockKeys => LockKeys::lock, what: "lock's keys" }
        = LockExtend, ttl: ttl -> Extended { Extended::Yes, Extended::NotHeld }

    /// `lock.semaphore_release`: give a lease back.
    ///
    /// ```no_run
    /// # use redis_primitives::lock::{semaphore_key, call::SemaphoreRelease};
    /// # use redis_primitives::script::ScriptCall;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let key = semaphore_key("uploads")?;
    /// let released = SemaphoreRelease { key: &key, token: "t-1" }.query(con)?;
    /// # Ok(()) }
    /// ```
    SemaphoreRelease { key: str => std::convert::identity, what: "semaphore's key" }
        = LockSemaphoreRelease -> Released { Released::Yes, Released::NotHeld }

    /// `lock.semaphore_extend`: push a live lease's expiry to `ttl` from now.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redis_primitives::lock::{semaphore_key, call::SemaphoreExtend};
    /// # use redis_primitives::script::ScriptCall;
    /// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
    /// let key = semaphore_key("uploads")?;
    /// let extended = SemaphoreExtend { key: &key, token: "t-1", ttl: Duration::from_secs(30) }.query(con)?;
    /// # Ok(()) }
    /// ```
    SemaphoreExtend { key: str => std::convert::identity, what: "semaphore's key" }
        = LockSemaphoreExtend, ttl: ttl -> Extended { Extended::Yes, Extended::NotHeld }
}

/// The two arguments every acquire and renewal takes: an owner token, and a lease length in
/// whole milliseconds.
fn token_and_ttl(token: &str, ttl: Duration) -> Result<u64> {
    check_token(token)?;
    rules::millis("ttl", ttl)
}

/// The lease scripts answer 1 (done) or 0 (not held by this token).
pub(super) fn one_or_zero(reply: &Reply) -> Result<bool> {
    match reply.int()? {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(reply.unexpected("1 or 0")),
    }
}
