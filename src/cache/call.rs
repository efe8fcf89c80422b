//! The cache's script calls as typed calls ([`ScriptCall`]), one per `scripts/cache/*.lua`:
//! build one with [`Cache::get_call`](super::Cache::get_call),
//! [`set_call`](super::Cache::set_call), [`not_found_call`](super::Cache::not_found_call),
//! [`delete_call`](super::Cache::delete_call) or
//! [`invalidate_call`](super::Cache::invalidate_call), run it with `query`/`query_async`, or put
//! many into a [`Batch`](crate::script::Batch) (one round trip for all).
//!
//! ```no_run
//! use redis_primitives::cache::Cache;
//! use redis_primitives::script::{Batch, ScriptCall};
//!
//! # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
//! let users = Cache::new("users")?;
//! let batch: Batch<_> = ["1", "2", "3"].iter().map(|k| users.get_call(k)).collect::<Result<_, _>>()?;
//! for read in batch.query(con)? {
//!     println!("{:?}", read?.lookup.entry);
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use redis::Value;

use super::{Entry, Lookup, Stored, Version};
use crate::Result;
use crate::script::reply::{int, items};
use crate::script::{Id, Invocation, Reply, ScriptCall};

/// A `cache.get`: reads an entry and its segment's version in one step. A plain read writes
/// nothing and is sent read-only (EVALSHA_RO where the server has it); the fill path of
/// [`get_or_compute`](super::Cache::get_or_compute) sends a leased read, which hands one caller
/// the fill lease.
#[derive(Debug, Clone)]
pub struct Get {
    keys: [String; 3],
    token: String,
    lease_ms: u64,
    early: u64,
}

impl Get {
    /// A plain read of the entry at `keys` (version, entry, lease).
    pub(crate) fn plain(keys: [String; 3]) -> Get {
        Get { keys, token: String::new(), lease_ms: 0, early: 0 }
    }

    /// A read that takes the fill lease for `token` on a miss (or near expiry, by the XFetch
    /// draw `early`). Resending it with the same token is idempotent: a lease already ours is
    /// reported as ours.
    pub(crate) fn leased(keys: [String; 3], token: String, lease_ms: u64, early: u64) -> Get {
        Get { keys, token, lease_ms, early }
    }

    fn is_leased(&self) -> bool {
        self.lease_ms > 0
    }
}

/// What a `cache.get` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReply {
    /// The entry and the version to write back with.
    pub lookup: Lookup,
    /// The fill lease, for a leased read; [`FillLease::NotAsked`] for a plain read.
    pub lease: FillLease,
}

/// The fill lease as a leased read left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FillLease {
    /// A plain read: no lease asked for.
    NotAsked,
    /// No lease taken: the entry is a hit not due for refresh, or a cached "not found".
    NotNeeded,
    /// This caller holds it: compute and write back (an early refresh when the entry is a hit).
    Yours,
    /// Another caller is filling; its lease has `left` to run.
    HeldByAnother {
        /// What the holder's lease has left.
        left: Duration,
    },
}

impl ScriptCall for Get {
    type Output = GetReply;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(on_entry(Id::CacheGet, &self.keys)
            .arg(&self.token)
            .arg(self.lease_ms)
            .arg(self.early)
            // A plain read takes no lease and writes nothing.
            .read_only(!self.is_leased()))
    }

    fn parse(&self, reply: Reply) -> Result<GetReply> {
        let shape = "an array {status, data, version, generation, lease_pttl}";
        let [status, data, segment, generation, pttl] = items("cache.get", reply.value())? else {
            return Err(reply.unexpected(shape));
        };
        let num = |v: &Value| int(v).filter(|n| *n >= 0).ok_or_else(|| reply.unexpected(shape));
        let data = match data {
            Value::Nil => None,
            Value::BulkString(b) => Some(b.clone()),
            _ => return Err(reply.unexpected(shape)),
        };
        let version = Version { segment: num(segment)? as u64, generation: num(generation)? as u64 };
        let left = Duration::from_millis(num(pttl)? as u64);
        // Every status a read of this kind can answer, and only those, with data exactly when
        // the status says there is some.
        let (entry, lease) = match (num(status)?, data, self.is_leased()) {
            (0, None, false) => (Entry::Miss, FillLease::NotAsked),
            (1, Some(d), leased) => {
                (Entry::Hit(d), if leased { FillLease::NotNeeded } else { FillLease::NotAsked })
            }
            (2, Some(d), true) => (Entry::Hit(d), FillLease::Yours),
            (3, None, true) => (Entry::Miss, FillLease::Yours),
            (4, None, true) => (Entry::Miss, FillLease::HeldByAnother { left }),
            (5, _, leased) => {
                (Entry::NotFound, if leased { FillLease::NotNeeded } else { FillLease::NotAsked })
            }
            _ => return Err(reply.unexpected(shape)),
        };
        Ok(GetReply { lookup: Lookup { entry, version }, lease })
    }
}

/// A `cache.set`: writes a value (or a cached "not found") only if the segment's version and the
/// key's generation are still those read. A fill's write-back also frees the fill lease.
#[derive(Debug, Clone)]
pub struct Set {
    keys: [String; 3],
    version: Version,
    data: Option<Vec<u8>>,
    ttl_ms: u64,
    delta_ms: u64,
    token: String,
}

impl Set {
    /// Writes `data` (`None`: "not found") at `keys`, for `ttl` (checked: whole ms, 1 ms..).
    pub(crate) fn new(
        keys: [String; 3],
        data: Option<Vec<u8>>,
        ttl: Duration,
        version: Version,
    ) -> Result<Set> {
        let ttl_ms = crate::rules::millis("ttl", ttl)?;
        Ok(Set { keys, version, data, ttl_ms, delta_ms: 0, token: String::new() })
    }

    /// The same write by the holder of the fill lease `token`, whose compute took `took` (it
    /// drives early refresh): the write frees the lease.
    pub(crate) fn by_filler(self, token: &str, took: Duration) -> Set {
        // Capped: the script takes up to 15 digits; no compute runs 30 years.
        let delta_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX).min(crate::rules::MAX);
        Set { token: token.to_owned(), delta_ms, ..self }
    }
}

impl ScriptCall for Set {
    type Output = Stored;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(on_entry(Id::CacheSet, &self.keys)
            .arg(self.version.segment)
            .arg(self.version.generation)
            .arg(self.data.as_deref().unwrap_or_default())
            .arg(self.ttl_ms)
            .arg(self.delta_ms)
            .arg(&self.token)
            .arg(u8::from(self.data.is_none())))
    }

    fn parse(&self, reply: Reply) -> Result<Stored> {
        match reply.ints(3)?[..] {
            [1, ..] => Ok(Stored::Stored),
            [0, ..] => Ok(Stored::Stale),
            _ => Err(reply.unexpected("{stored 1|0, version, generation}")),
        }
    }
}

/// A `cache.bump`: invalidates every entry of a segment at once; answers the new version.
#[derive(Debug, Clone)]
pub struct Bump {
    pub(crate) key: String,
}

impl ScriptCall for Bump {
    type Output = u64;

    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(Id::CacheBump.invoke().key(&self.key))
    }

    fn parse(&self, reply: Reply) -> Result<u64> {
        u64::try_from(reply.int()?).map_err(|_| reply.unexpected("a version >= 0"))
    }
}

/// A call of one key and one argument that answers 1 or 0: the same shape for two scripts.
macro_rules! flag_call {
    ($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty) = $id:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub(crate) key: String,
            pub(crate) $arg: $ty,
        }

        impl ScriptCall for $name {
            type Output = bool;

            fn invocation(&self) -> Result<Invocation<'static>> {
                Ok($id.invoke().key(&self.key).arg(&self.$arg))
            }

            fn parse(&self, reply: Reply) -> Result<bool> {
                one_or_zero(&reply)
            }
        }
    };
}

flag_call! {
    /// A `cache.delete`: removes one entry and advances its generation (kept for
    /// `tombstone_ms`); answers whether it held data.
    Delete(tombstone_ms: u64) = Id::CacheDelete
}

flag_call! {
    /// A `cache.release_lease`: gives a fill lease back if `token` still holds it; answers
    /// whether it did.
    ReleaseLease(token: String) = Id::CacheReleaseLease
}

/// A call of `id` on an entry's keys: the segment's version, the entry, its fill lease.
fn on_entry(id: Id, keys: &[String; 3]) -> Invocation<'static> {
    id.invoke().key(&keys[..])
}

fn one_or_zero(reply: &Reply) -> Result<bool> {
    match reply.int()? {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(reply.unexpected("1 or 0")),
    }
}

/// XFetch's random term, as `cache.get` takes it: round(-beta * ln(U) * 1000), U in (0, 1].
pub(crate) fn xfetch_draw(beta: f64) -> u64 {
    let u: f64 = 1.0 - rand::random::<f64>(); // (0, 1]
    let x = -beta * u.ln() * 1000.0;
    if x.is_finite() { x.round().clamp(0.0, crate::rules::MAX as f64) as u64 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> [String; 3] {
        ["v".into(), "e".into(), "l".into()]
    }

    fn reply(items: Vec<Value>) -> Reply {
        Reply::new("cache.get", Value::Array(items))
    }

    #[test]
    fn get_replies_are_checked_against_the_kind_of_read() {
        use Value::{BulkString as B, Int as I, Nil};
        let plain = Get::plain(keys());
        let leased = Get::leased(keys(), "t".into(), 1000, 0);
        let ok = plain.parse(reply(vec![I(1), B(b"x".to_vec()), I(7), I(2), I(0)])).unwrap();
        assert_eq!(ok.lookup.entry, Entry::Hit(b"x".to_vec()));
        assert_eq!((ok.lookup.version.segment(), ok.lookup.version.generation()), (7, 2));
        let wait = leased.parse(reply(vec![I(4), Nil, I(0), I(0), I(30)])).unwrap();
        assert_eq!(wait.lease, FillLease::HeldByAnother { left: Duration::from_millis(30) });
        // A plain read never gets a lease; a hit has data; versions are not negative.
        assert!(plain.parse(reply(vec![I(3), Nil, I(0), I(0), I(0)])).is_err());
        assert!(plain.parse(reply(vec![I(1), Nil, I(0), I(0), I(0)])).is_err());
        assert!(plain.parse(reply(vec![I(0), Nil, I(-1), I(0), I(0)])).is_err());
        assert!(plain.parse(reply(vec![I(0), Nil, I(0), I(0)])).is_err());
        assert!(plain.parse(Reply::new("cache.get", I(42))).is_err());
    }

    #[test]
    fn compute_times_and_draws_stay_in_range() {
        let set = Set::new(keys(), None, Duration::from_secs(1), Version::default()).unwrap();
        assert_eq!(set.clone().by_filler("t", Duration::MAX).delta_ms, crate::rules::MAX);
        assert!(Set::new(keys(), None, Duration::MAX, Version::default()).is_err());
        assert!(xfetch_draw(f64::MAX) <= crate::rules::MAX);
        assert_eq!(xfetch_draw(0.0), 0);
    }
}
