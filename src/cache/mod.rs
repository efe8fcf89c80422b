//! A versioned cache: one-round-trip reads, O(1) invalidation of a whole segment by a version
//! bump, compare-and-set write-back, and stampede protection across processes.
//!
//! Every entry records the segment version (and its own generation) it was written under; a read
//! compares them with the current ones in the same script call, so an entry from before a
//! [`Cache::invalidate`] or [`Cache::delete`] reads as a miss. A write compares them too, so a
//! slow filler that raced an invalidation cannot write stale data back.
//!
//! On a miss, exactly one caller (across processes) gets a fill lease and computes; the others
//! wait briefly and read again. Near expiry, the XFetch rule (Vattani, Chierichetti, Lowenstein,
//! VLDB 2015) hands one caller an early refresh lease while everyone is still served the value.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::cache::Cache;
//!
//! # async fn load_user(id: &str) -> Result<Option<Vec<u8>>, std::io::Error> { Ok(None) }
//! # async fn demo() -> redis_primitives::Result<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! let mut con = client.get_connection_manager().await?;
//! let users = Cache::new("users")?;
//! let user = users
//!     .get_or_compute(&mut con, "42", Duration::from_secs(300), || load_user("42"))
//!     .await?;
//! users.invalidate(&mut con).await?; // every entry of the segment is now a miss
//! # Ok(()) }
//! ```
//!
//! # Deadlines and faults
//!
//! Whatever the server does (down, paused, silent, answering garbage):
//! - [`get`](Cache::get), [`set`](Cache::set), [`set_not_found`](Cache::set_not_found),
//!   [`delete`](Cache::delete) and [`invalidate`](Cache::invalidate) return within the cache's
//!   deadline ([`Cache::with_deadline`], [`DEFAULT_DEADLINE`] by default), with
//!   [`Error::Timeout`] when the server did not answer in time.
//! - [`get_or_compute`](Cache::get_or_compute) returns within
//!   `max(max wait, deadline) + the compute's own time + deadline`: its reads (the first one
//!   bounded by the deadline, waiting for another caller's fill by the max wait,
//!   [`Cache::with_max_wait`]), then the compute, then the write-back (or, when the reads
//!   failed, the release of a lease they may have taken) within the deadline. With the defaults
//!   that is 12 s plus the compute.
//! - A fill lease is never kept by a caller that gave up: a failed compute, a failed write-back
//!   and a timed-out read give it back; a cancelled `get_or_compute` spawns its release (see its
//!   `# Cancel safety`). What cannot be given back (no runtime, the server unreachable) ends by
//!   the lease's expiry ([`Cache::with_lease`], 10 s by default).
//!
//! The blocking twins make the same decisions; each of their round trips is bounded by the
//! connection's read and write timeouts instead (set them: a blocking connection has none).
//!
//! Keys (all under the segment's hash tag): `cache:{<segment>}:version`,
//! `cache:{<segment>}:e:<key>` (a small hash) and `cache:{<segment>}:lease:<key>`.

pub mod call;
mod fill;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use call::{Bump, Delete, FillLease, Get, GetReply, ReleaseLease, Set};
use fill::{Fill, Start};

use crate::flow::{self, Once, twins};
use crate::{Error, Result, rules, telemetry};

/// How long a single read, write, delete or invalidation may take by default before it fails
/// with [`Error::Timeout`]: a cache sits in front of slower work, so it must fail fast.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// The version a value was read under; pass it back to [`Cache::set`] so the write is refused
/// if the segment was invalidated (or the key deleted) in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version {
    segment: u64,
    generation: u64,
}

impl Version {
    /// The segment's version.
    pub fn segment(&self) -> u64 {
        self.segment
    }
    /// The key's generation (advanced by [`Cache::delete`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A value written under the current version.
    Hit(Vec<u8>),
    /// A cached "not found" (negative caching).
    NotFound,
    /// Nothing valid is cached.
    Miss,
}

/// A read: what was found and the version to write back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The entry.
    pub entry: Entry,
    /// The version read; give it to [`Cache::set`].
    pub version: Version,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written.
    Stored,
    /// Refused: the segment was invalidated or the key deleted since the read. The next read
    /// misses; nothing stale was written.
    Stale,
}

/// A cache scoped to one segment. Built valid: every builder checks its value, so a call never
/// fails on the cache's own configuration. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::cache::Cache;
///
/// let c = Cache::new("users")?
///     .with_lease(Duration::from_secs(5))?
///     .with_negative_ttl(Duration::from_secs(30))?;
/// assert_eq!(c.version_key(), "cache:{users}:version");
/// assert_eq!(c.entry_key("42"), "cache:{users}:e:42");
/// assert!(Cache::new("a}b").is_err());
/// assert!(c.with_lease(Duration::from_micros(1500)).is_err()); // whole milliseconds only
/// # Ok::<(), redis_primitives::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cache {
    segment: Arc<str>,
    lease_ms: u64,
    beta: f64,
    negative_ttl: Option<Duration>,
    max_wait: Option<Duration>,
    tombstone_ms: u64,
    deadline: Duration,
}

impl Cache {
    /// A cache for `segment` (the hash tag of every key: 1..=1024 bytes, no `}`). Defaults: fill
    /// lease 10 s, XFetch beta 1.0, no negative caching, callers wait at most the lease length
    /// plus 1 s for another caller's fill, deleted keys keep their tombstone 1 minute, each call
    /// returns within [`DEFAULT_DEADLINE`].
    pub fn new(segment: impl Into<String>) -> Result<Self> {
        let segment = rules::owned_tag("segment", segment)?;
        Ok(Cache {
            segment: segment.into(),
            lease_ms: 10_000,
            beta: 1.0,
            negative_ttl: None,
            max_wait: None,
            tombstone_ms: 60_000,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// How long a filler may hold the fill lease before another caller takes over: a filler
    /// that died (or was cancelled without a runtime to give the lease back) frees it by this
    /// expiry. Whole milliseconds, 1 ms ..= 10^12 ms.
    pub fn with_lease(self, lease: Duration) -> Result<Self> {
        Ok(Cache { lease_ms: rules::millis("lease", lease)?, ..self })
    }

    /// XFetch's beta (finite, 0 ..= 1000): above 1 refreshes earlier, below 1 later, 0 never
    /// early.
    pub fn with_beta(self, beta: f64) -> Result<Self> {
        if !(0.0..=1000.0).contains(&beta) {
            return Err(Error::invalid("beta", format!("must be a number in 0..=1000 (got {beta})")));
        }
        Ok(Cache { beta, ..self })
    }

    /// Cache "not found" answers of [`get_or_compute`](Self::get_or_compute) for `ttl` (whole
    /// milliseconds, 1 ms ..= 10^12 ms).
    pub fn with_negative_ttl(self, ttl: Duration) -> Result<Self> {
        rules::millis("negative_ttl", ttl)?;
        Ok(Cache { negative_ttl: Some(ttl), ..self })
    }

    /// How long [`get_or_compute`](Self::get_or_compute) waits for another caller's fill before
    /// giving up with [`Error::Timeout`] (default: the lease plus 1 s, so that a waiter outlives
    /// a dead filler's lease and takes over). Any value: zero gives up at the first sign of
    /// another filler; `Duration::MAX` waits as long as another caller keeps filling.
    pub fn with_max_wait(self, wait: Duration) -> Self {
        Cache { max_wait: Some(wait), ..self }
    }

    /// How long [`delete`](Self::delete) keeps the key's advanced generation (whole
    /// milliseconds, 1 ms ..= 10^12 ms); cover the longest fill, since a filler older than this
    /// could write the deleted value back.
    pub fn with_tombstone(self, tombstone: Duration) -> Result<Self> {
        Ok(Cache { tombstone_ms: rules::millis("tombstone", tombstone)?, ..self })
    }

    /// How long a single call may take before failing with [`Error::Timeout`] (default
    /// [`DEFAULT_DEADLINE`]); also bounds the first read and the write-back of
    /// [`get_or_compute`](Self::get_or_compute). Any value (`Duration::MAX`: no deadline).
    pub fn with_deadline(self, deadline: Duration) -> Self {
        Cache { deadline, ..self }
    }

    /// The segment.
    pub fn segment(&self) -> &str {
        &self.segment
    }
    /// The fill lease's length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    /// The deadline of a single call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
    /// How long [`get_or_compute`](Self::get_or_compute) waits for another caller's fill.
    pub fn max_wait(&self) -> Duration {
        self.max_wait.unwrap_or(Duration::from_millis(self.lease_ms).saturating_add(Duration::from_secs(1)))
    }
    /// `cache:{<segment>}:version`.
    pub fn version_key(&self) -> String {
        format!("cache:{{{}}}:version", self.segment)
    }
    /// `cache:{<segment>}:e:<key>`.
    pub fn entry_key(&self, key: &str) -> String {
        format!("cache:{{{}}}:e:{key}", self.segment)
    }
    /// `cache:{<segment>}:lease:<key>`.
    pub fn lease_key(&self, key: &str) -> String {
        format!("cache:{{{}}}:lease:{key}", self.segment)
    }

    /// The version, entry and lease keys of `key` (1..=1024 bytes).
    fn keys(&self, key: &str) -> Result<[String; 3]> {
        rules::name("key", key)?;
        Ok([self.version_key(), self.entry_key(key), self.lease_key(key)])
    }

    /// The plain read of `key`, as a call (for a [`Batch`](crate::script::Batch)).
    pub fn get_call(&self, key: &str) -> Result<Get> {
        Ok(Get::plain(self.keys(key)?))
    }

    /// The write of `value` for `key`, as a call.
    pub fn set_call(&self, key: &str, value: &[u8], ttl: Duration, version: Version) -> Result<Set> {
        Set::new(self.keys(key)?, Some(value.to_vec()), ttl, version)
    }

    /// The write of a cached "not found" for `key`, as a call.
    pub fn not_found_call(&self, key: &str, ttl: Duration, version: Version) -> Result<Set> {
        Set::new(self.keys(key)?, None, ttl, version)
    }

    /// The deletion of `key`, as a call.
    pub fn delete_call(&self, key: &str) -> Result<Delete> {
        rules::name("key", key)?;
        Ok(Delete { key: self.entry_key(key), tombstone_ms: self.tombstone_ms })
    }

    /// The invalidation of the whole segment, as a call.
    pub fn invalidate_call(&self) -> Bump {
        Bump { key: self.version_key() }
    }

    /// A plain read, reported to telemetry.
    fn read(&self, key: &str) -> Result<impl flow::Flow<Out = Lookup> + use<'_>> {
        Ok(flow::map(Once::new(self.get_call(key)?, self.deadline), |r| {
            let outcome = match r.lookup.entry {
                Entry::Hit(_) => telemetry::CacheOutcome::Hit,
                Entry::NotFound => telemetry::CacheOutcome::NotFound,
                Entry::Miss => telemetry::CacheOutcome::Miss,
            };
            telemetry::cache_lookup(&self.segment, outcome);
            Ok(r.lookup)
        }))
    }

    twins! {
        /// Reads `key`: one script call, one round trip, read-only (EVALSHA_RO where the server
        /// has it), within the cache's deadline. Returns the entry and the version to write back
        /// with.
        cancel: "Safe: a plain read writes nothing.",
        pub fn get / get_blocking (&self, key: &str) -> Lookup = self.read(key)?;

        /// Writes `value` for `key` for `ttl` (whole milliseconds) if the segment and key are
        /// still at `version` (from a read), within the cache's deadline.
        cancel: "Dropping the future may or may not have written the value: the call may have \
            reached the server. Either way nothing stale is written (the version check holds).",
        pub fn set / set_blocking (&self, key: &str, value: &[u8], ttl: Duration, version: Version) -> Stored
            = Once::new(self.set_call(key, value, ttl, version)?, self.deadline);

        /// Caches "not found" for `key` for `ttl` (a negative entry), under the same version
        /// check as [`set`](Self::set), within the cache's deadline.
        cancel: "Dropping the future may or may not have written the negative entry: the call \
            may have reached the server.",
        pub fn set_not_found / set_not_found_blocking (&self, key: &str, ttl: Duration, version: Version) -> Stored
            = Once::new(self.not_found_call(key, ttl, version)?, self.deadline);

        /// Invalidates every entry of the segment at once (O(1), no scan), within the cache's
        /// deadline; returns the new version. Old entries are overwritten by the next fill or
        /// expire by their TTL.
        cancel: "Dropping the future may or may not have invalidated the segment: the call may \
            have reached the server.",
        pub fn invalidate / invalidate_blocking (&self) -> u64 = Once::new(self.invalidate_call(), self.deadline);

        /// Removes one entry, within the cache's deadline; a fill that read it before cannot
        /// write it back. True if it held data.
        cancel: "Dropping the future may or may not have deleted the entry: the call may have \
            reached the server.",
        pub fn delete / delete_blocking (&self, key: &str) -> bool = Once::new(self.delete_call(key)?, self.deadline);
    }

    /// Returns the cached value of `key`, or computes it with `compute` (which answers `None`
    /// for "not found") and caches it for `ttl` (whole milliseconds). Across every process
    /// sharing the cache, one caller computes a missing key while the others wait for its
    /// result; near expiry one caller refreshes early while the others keep getting the
    /// current value (and a failed refresh still returns it).
    ///
    /// Returns within `max(max wait, deadline) + compute + deadline` (see the
    /// [module docs](self)). The first read's errors are returned at once (Redis down: compute
    /// without the cache if you like); while waiting for another caller's fill, exactly the
    /// [transient](Error::is_transient) errors are retried. A failed compute is
    /// [`Error::Compute`], and its lease is given back at once so that a waiting caller takes
    /// over; so is a `None` without negative caching. A failed write-back is returned as the
    /// error (the value was not cached).
    ///
    /// The connection must be cloneable (`Clone + 'static`: a multiplexed connection, a
    /// connection manager, a cluster connection; from a pool, the pooled connection's inner
    /// one), so that a cancelled fill can give its lease back from a spawned task.
    ///
    /// Blocking twin: [`get_or_compute_blocking`](Self::get_or_compute_blocking).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (or a panic in `compute`) while it may hold the fill lease spawns a
    /// release of the lease on the current tokio runtime, on a clone of the connection, bounded
    /// by the cache's deadline; without a current runtime, or if that release fails, the lease
    /// ends by its expiry ([`with_lease`](Self::with_lease)), and other callers wait until then
    /// (at most their max wait). Nothing is written: a value is only stored by the completed
    /// write-back.
    pub async fn get_or_compute<C, F, Fut, E>(
        &self,
        con: &mut C,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<Option<Vec<u8>>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Vec<u8>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fill = Fill::new(self, key, ttl)?;
        let mut guard = fill.guard(con);
        let lease = match flow::run_async(fill.acquire(), guard.con()).await {
            Ok(Start::Lease(lease)) => lease,
            other => return guard.disarm(Start::answer(other)),
        };
        let computed = compute().await;
        let written = flow::run_async(fill.write_back(lease, computed), guard.con()).await;
        guard.disarm(written)
    }

    /// The blocking twin of [`get_or_compute`](Self::get_or_compute), with a blocking
    /// `compute`: the same flows on a blocking connection, each round trip bounded by the
    /// connection's read and write timeouts. A panic in `compute` unwinds without a release:
    /// the lease then ends by its expiry.
    pub fn get_or_compute_blocking<F, E>(
        &self,
        con: &mut dyn redis::ConnectionLike,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<Option<Vec<u8>>>
    where
        F: FnOnce() -> std::result::Result<Option<Vec<u8>>, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fill = Fill::new(self, key, ttl)?;
        let lease = match flow::run_blocking(fill.acquire(), con) {
            Ok(Start::Lease(lease)) => lease,
            other => return Start::answer(other),
        };
        flow::run_blocking(fill.write_back(lease, compute()), con)
    }
}

/// With the `serde` feature: values stored as JSON.
#[cfg(feature = "serde")]
impl Cache {
    /// [`get_or_compute`](Self::get_or_compute) for a serde type, stored as JSON.
    ///
    /// # Cancel safety
    ///
    /// As [`get_or_compute`](Self::get_or_compute).
    ///
    /// ```no_run
    /// # async fn demo(con: &mut redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct User { name: String }
    /// let users = redis_primitives::cache::Cache::new("users")?;
    /// let user: Option<User> = users
    ///     .get_or_compute_json(con, "42", std::time::Duration::from_secs(60), || async {
    ///         Ok::<_, std::io::Error>(Some(User { name: "Ada".into() }))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute_json<C, T, F, Fut, E>(
        &self,
        con: &mut C,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<Option<T>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bytes = self
            .get_or_compute(con, key, ttl, || async {
                match compute().await {
                    Ok(Some(v)) => serde_json::to_vec(&v).map(Some).map_err(|e| Box::new(e) as Box<_>),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        bytes.map(|b| serde_json::from_slice(&b).map_err(|e| Error::Compute(Box::new(e)))).transpose()
    }
}
