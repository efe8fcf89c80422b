//! The lock scripts as typed calls ([`ScriptCall`]): one struct per script builds the
//! invocation, validates its arguments before anything is sent, and reads the reply without
//! trusting it. [`Lock`](super::Lock) and [`Semaphore`](super::Semaphore) drive these; use them
//! directly to batch calls or to act on a token you kept yourself.
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

use super::{Acquire, Extended, FencedWrite, LockKeys, MAX_WIRE, Released, check_token, ttl_ms};
use crate::script::{self, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

/// The largest fencing token the scripts hand out or accept: 2^53 - 1, exact as a Lua double.
const MAX_FENCE: u64 = (1 << 53) - 1;

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
    /// The lease length (at least 1 ms).
    pub ttl: Duration,
}

impl ScriptCall for LockAcquire<'_> {
    type Output = Acquire<LockGrant>;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        let ttl = ttl_ms("ttl", self.ttl)?;
        Ok(script::get("lock.acquire")?
            .invoke()
            .key(self.keys.lock())
            .key(self.keys.fence())
            .arg(self.token)
            .arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Acquire<LockGrant>> {
        match reply.ints(3)?[..] {
            [1, fence, ttl] if fence >= 1 && ttl >= 1 => Ok(Acquire::Acquired(LockGrant {
                fence: fence as u64,
                ttl: Duration::from_millis(ttl as u64),
            })),
            [0, pttl, 0] => {
                let retry_after = match pttl {
                    0.. => Duration::from_millis(pttl as u64),
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

/// `lock.release`: delete the lock if `token` holds it.
///
/// ```no_run
/// # use redis_primitives::lock::{LockKeys, call::LockRelease};
/// # use redis_primitives::script::ScriptCall;
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let keys = LockKeys::new("orders")?;
/// let released = LockRelease { keys: &keys, token: "t-1" }.query(con)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LockRelease<'a> {
    /// The lock's keys.
    pub keys: &'a LockKeys,
    /// The owner token.
    pub token: &'a str,
}

impl ScriptCall for LockRelease<'_> {
    type Output = Released;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        Ok(script::get("lock.release")?.invoke().key(self.keys.lock()).arg(self.token))
    }

    fn parse(&self, reply: Reply) -> Result<Released> {
        released(&reply)
    }
}

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
#[derive(Debug, Clone, Copy)]
pub struct LockExtend<'a> {
    /// The lock's keys.
    pub keys: &'a LockKeys,
    /// The owner token.
    pub token: &'a str,
    /// The new lease length, from the server's now (at least 1 ms).
    pub ttl: Duration,
}

impl ScriptCall for LockExtend<'_> {
    type Output = Extended;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        let ttl = ttl_ms("ttl", self.ttl)?;
        Ok(script::get("lock.extend")?.invoke().key(self.keys.lock()).arg(self.token).arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Extended> {
        extended(&reply)
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
    /// The writer's fencing token (at least 1).
    pub fence: u64,
    /// The new value.
    pub value: &'a [u8],
    /// The value's expiry; `None` keeps it forever. A zero TTL is refused.
    pub value_ttl: Option<Duration>,
}

impl ScriptCall for LockFencedWrite<'_> {
    type Output = FencedWrite;

    fn invocation(&self) -> Result<Invocation<'static>> {
        // Tokens are server microseconds or above (lock.acquire): 16 digits, below 2^53.
        if !(1..=MAX_FENCE).contains(&self.fence) {
            return Err(Error::invalid("fence", format!("must be between 1 and {MAX_FENCE}")));
        }
        let ttl = match self.value_ttl {
            Some(ttl) => ttl_ms("value_ttl", ttl)?,
            None => 0,
        };
        Ok(script::get("lock.fenced_write")?
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
            [0, seen] if seen >= 0 => Ok(FencedWrite::Stale { highest_seen: seen as u64 }),
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
    /// The most holders at once (at least 1).
    pub permits: u64,
    /// The lease length (at least 1 ms).
    pub ttl: Duration,
}

impl ScriptCall for SemaphoreAcquire<'_> {
    type Output = Acquire<PermitGrant>;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        check_permits(self.permits)?;
        let ttl = ttl_ms("ttl", self.ttl)?;
        Ok(script::get("lock.semaphore_acquire")?
            .invoke()
            .key(self.key)
            .arg(self.token)
            .arg(self.permits)
            .arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Acquire<PermitGrant>> {
        match reply.ints(3)?[..] {
            [1, ttl, holders] if ttl >= 1 && holders >= 1 => Ok(Acquire::Acquired(PermitGrant {
                ttl: Duration::from_millis(ttl as u64),
                holders: holders as u64,
            })),
            [0, retry_after, _] if retry_after >= 1 => {
                Ok(Acquire::Held { retry_after: Duration::from_millis(retry_after as u64) })
            }
            _ => Err(reply.unexpected("{1, ttl >= 1, holders >= 1} or {0, retry_after >= 1, holders}")),
        }
    }
}

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
#[derive(Debug, Clone, Copy)]
pub struct SemaphoreRelease<'a> {
    /// The semaphore's key.
    pub key: &'a str,
    /// The lease token.
    pub token: &'a str,
}

impl ScriptCall for SemaphoreRelease<'_> {
    type Output = Released;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        Ok(script::get("lock.semaphore_release")?.invoke().key(self.key).arg(self.token))
    }

    fn parse(&self, reply: Reply) -> Result<Released> {
        released(&reply)
    }
}

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
#[derive(Debug, Clone, Copy)]
pub struct SemaphoreExtend<'a> {
    /// The semaphore's key.
    pub key: &'a str,
    /// The lease token.
    pub token: &'a str,
    /// The new lease length, from the server's now (at least 1 ms).
    pub ttl: Duration,
}

impl ScriptCall for SemaphoreExtend<'_> {
    type Output = Extended;

    fn invocation(&self) -> Result<Invocation<'static>> {
        check_token(self.token)?;
        let ttl = ttl_ms("ttl", self.ttl)?;
        Ok(script::get("lock.semaphore_extend")?.invoke().key(self.key).arg(self.token).arg(ttl))
    }

    fn parse(&self, reply: Reply) -> Result<Extended> {
        extended(&reply)
    }
}

pub(super) fn check_permits(permits: u64) -> Result<()> {
    if !(1..=MAX_WIRE).contains(&permits) {
        return Err(Error::invalid("permits", format!("must be between 1 and {MAX_WIRE}")));
    }
    Ok(())
}

fn released(reply: &Reply) -> Result<Released> {
    match reply.int()? {
        1 => Ok(Released::Yes),
        0 => Ok(Released::NotHeld),
        _ => Err(reply.unexpected("1 or 0")),
    }
}

fn extended(reply: &Reply) -> Result<Extended> {
    match reply.int()? {
        1 => Ok(Extended::Yes),
        0 => Ok(Extended::NotHeld),
        _ => Err(reply.unexpected("1 or 0")),
    }
}
