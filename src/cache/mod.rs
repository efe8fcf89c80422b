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
//! Keys (all under the segment's hash tag): `cache:{<segment>}:version`,
//! `cache:{<segment>}:e:<key>` (a small hash) and `cache:{<segment>}:lease:<key>`.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::script::{self, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

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

/// A cache scoped to one segment.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::cache::Cache;
///
/// let c = Cache::new("users").unwrap()
///     .with_lease(Duration::from_secs(5))
///     .with_negative_ttl(Duration::from_secs(30));
/// assert_eq!(c.version_key(), "cache:{users}:version");
/// assert_eq!(c.entry_key("42"), "cache:{users}:e:42");
/// ```
#[derive(Debug, Clone)]
pub struct Cache {
    segment: String,
    lease: Duration,
    beta: f64,
    negative_ttl: Option<Duration>,
    max_wait: Option<Duration>,
    tombstone: Duration,
}

fn ms(name: &'static str, d: Duration) -> Result<u64> {
    let ms = d.as_millis();
    if ms == 0 {
        return Err(Error::invalid(name, "must be at least 1 ms"));
    }
    u64::try_from(ms)
        .ok()
        .filter(|&m| m < 1_000_000_000_000_000)
        .ok_or_else(|| Error::invalid(name, "too large"))
}

use crate::rules::token as random_token;

impl Cache {
    /// A cache for `segment` (non-empty; it becomes the hash tag of every key). Defaults: fill
    /// lease 10 s, XFetch beta 1.0, no negative caching, callers wait at most the lease length
    /// (plus 1 s) for another caller's fill, deleted keys keep their tombstone 1 minute.
    pub fn new(segment: impl Into<String>) -> Result<Self> {
        let segment = segment.into();
        if segment.is_empty() || segment.starts_with('}') {
            return Err(Error::invalid("segment", "must be non-empty and not start with `}`"));
        }
        Ok(Cache {
            segment,
            lease: Duration::from_secs(10),
            beta: 1.0,
            negative_ttl: None,
            max_wait: None,
            tombstone: Duration::from_secs(60),
        })
    }

    /// How long a filler may hold the fill lease before another caller takes over (a filler that
    /// died frees the lease by this expiry).
    pub fn with_lease(self, lease: Duration) -> Self {
        Cache { lease, ..self }
    }

    /// XFetch's beta: above 1 refreshes earlier, below 1 later, 0 never early.
    pub fn with_beta(self, beta: f64) -> Self {
        Cache { beta: if beta.is_finite() { beta.max(0.0) } else { 1.0 }, ..self }
    }

    /// Cache "not found" answers of [`get_or_compute`](Self::get_or_compute) for `ttl`.
    pub fn with_negative_ttl(self, ttl: Duration) -> Self {
        Cache { negative_ttl: Some(ttl), ..self }
    }

    /// How long [`get_or_compute`](Self::get_or_compute) waits for another caller's fill before
    /// giving up with [`Error::Timeout`].
    pub fn with_max_wait(self, wait: Duration) -> Self {
        Cache { max_wait: Some(wait), ..self }
    }

    /// How long [`delete`](Self::delete) keeps the key's advanced generation; cover the longest
    /// fill, since a filler older than this could write the deleted value back.
    pub fn with_tombstone(self, tombstone: Duration) -> Self {
        Cache { tombstone, ..self }
    }

    /// The segment.
    pub fn segment(&self) -> &str {
        &self.segment
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

    fn lease_ms(&self) -> Result<u64> {
        ms("lease", self.lease)
    }

    fn max_wait(&self) -> Duration {
        self.max_wait.unwrap_or(self.lease + Duration::from_secs(1))
    }

    fn get_call(&self, key: &str, lease: Option<&str>) -> Result<GetCall> {
        check_key(key)?;
        let (token, lease_ms, early) = match lease {
            None => (String::new(), 0, 0),
            Some(t) => (t.to_owned(), self.lease_ms()?, xfetch_draw(self.beta)),
        };
        Ok(GetCall {
            keys: [self.version_key(), self.entry_key(key), self.lease_key(key)],
            token,
            lease_ms,
            early,
        })
    }

    fn set_call(&self, key: &str, value: Option<&[u8]>, ttl: Duration, version: Version) -> Result<SetCall> {
        self.set_call_leased(key, value, ttl, version, Duration::ZERO, "")
    }

    fn set_call_leased(
        &self,
        key: &str,
        value: Option<&[u8]>,
        ttl: Duration,
        version: Version,
        delta: Duration,
        token: &str,
    ) -> Result<SetCall> {
        check_key(key)?;
        Ok(SetCall {
            keys: [self.version_key(), self.entry_key(key), self.lease_key(key)],
            version,
            data: value.map(<[u8]>::to_vec),
            ttl_ms: ms("ttl", ttl)?,
            delta_ms: delta.as_millis().min(u128::from(u32::MAX)) as u64,
            token: token.to_owned(),
        })
    }

    fn delete_call(&self, key: &str) -> Result<DeleteCall> {
        check_key(key)?;
        Ok(DeleteCall { key: self.entry_key(key), tombstone_ms: ms("tombstone", self.tombstone)? })
    }

    fn bump_call(&self) -> BumpCall {
        BumpCall { key: self.version_key() }
    }

    /// Reads `key`: one script call, one round trip, read-only (EVALSHA_RO where the server has
    /// it). Returns the entry and the version to write back with.
    pub async fn get<C>(&self, con: &mut C, key: &str) -> Result<Lookup>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        Ok(self.get_call(key, None)?.query_async(con).await?.lookup())
    }

    /// [`get`](Self::get) on a blocking connection.
    pub fn get_blocking(&self, con: &mut dyn redis::ConnectionLike, key: &str) -> Result<Lookup> {
        Ok(self.get_call(key, None)?.query(con)?.lookup())
    }

    /// Writes `value` for `key` if the segment and key are still at `version` (from a read).
    pub async fn set<C>(
        &self,
        con: &mut C,
        key: &str,
        value: &[u8],
        ttl: Duration,
        version: Version,
    ) -> Result<Stored>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.set_call(key, Some(value), ttl, version)?.query_async(con).await
    }

    /// [`set`](Self::set) on a blocking connection.
    pub fn set_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        key: &str,
        value: &[u8],
        ttl: Duration,
        version: Version,
    ) -> Result<Stored> {
        self.set_call(key, Some(value), ttl, version)?.query(con)
    }

    /// Caches "not found" for `key` (a negative entry), under the same version check as `set`.
    pub async fn set_not_found<C>(
        &self,
        con: &mut C,
        key: &str,
        ttl: Duration,
        version: Version,
    ) -> Result<Stored>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.set_call(key, None, ttl, version)?.query_async(con).await
    }

    /// Invalidates every entry of the segment at once (O(1), no scan); returns the new version.
    /// Old entries are overwritten by the next fill or expire by their TTL.
    pub async fn invalidate<C>(&self, con: &mut C) -> Result<u64>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.bump_call().query_async(con).await
    }

    /// [`invalidate`](Self::invalidate) on a blocking connection.
    pub fn invalidate_blocking(&self, con: &mut dyn redis::ConnectionLike) -> Result<u64> {
        self.bump_call().query(con)
    }

    /// Removes one entry; a fill that read it before cannot write it back. True if it held data.
    pub async fn delete<C>(&self, con: &mut C, key: &str) -> Result<bool>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.delete_call(key)?.query_async(con).await
    }

    /// [`delete`](Self::delete) on a blocking connection.
    pub fn delete_blocking(&self, con: &mut dyn redis::ConnectionLike, key: &str) -> Result<bool> {
        self.delete_call(key)?.query(con)
    }

    /// Returns the cached value of `key`, or computes it with `compute` (which answers `None`
    /// for "not found") and caches it for `ttl`. Across every process sharing the cache, one
    /// caller computes a missing key while the others wait for its result; near expiry one
    /// caller refreshes early while the others keep getting the current value. A failed or
    /// timed-out fill frees the lease (at once, or by its expiry if the filler died).
    pub async fn get_or_compute<C, F, Fut, E>(
        &self,
        con: &mut C,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<Option<Vec<u8>>>
    where
        C: redis::aio::ConnectionLike + Send,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Vec<u8>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let token = random_token();
        let deadline = Instant::now() + self.max_wait();
        let mut compute = Some(compute);
        loop {
            let reply = self.get_call(key, Some(&token))?.query_async(con).await?;
            match next_step(reply, deadline)? {
                Step::Done(v) => return Ok(v),
                Step::Wait(pause) => tokio::time::sleep(pause).await,
                Step::Fill { version, current } => {
                    let f = compute
                        .take()
                        .ok_or_else(|| Error::unexpected("cache.get", "a second fill lease"))?;
                    let started = Instant::now();
                    let result = f().await.map_err(|e| Error::Compute(e.into()));
                    let write =
                        self.after_fill(key, ttl, version, &token, started.elapsed(), result, current)?;
                    if let Some(call) = &write.store {
                        call.query_async(con).await?;
                    }
                    if let Some(call) = &write.release {
                        call.query_async(con).await?;
                    }
                    return write.outcome;
                }
            }
        }
    }

    /// [`get_or_compute`](Self::get_or_compute) on a blocking connection with a blocking
    /// `compute`.
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
        let token = random_token();
        let deadline = Instant::now() + self.max_wait();
        let mut compute = Some(compute);
        loop {
            let reply = self.get_call(key, Some(&token))?.query(con)?;
            match next_step(reply, deadline)? {
                Step::Done(v) => return Ok(v),
                Step::Wait(pause) => std::thread::sleep(pause),
                Step::Fill { version, current } => {
                    let f = compute
                        .take()
                        .ok_or_else(|| Error::unexpected("cache.get", "a second fill lease"))?;
                    let started = Instant::now();
                    let result = f().map_err(|e| Error::Compute(e.into()));
                    let write =
                        self.after_fill(key, ttl, version, &token, started.elapsed(), result, current)?;
                    if let Some(call) = &write.store {
                        call.query(con)?;
                    }
                    if let Some(call) = &write.release {
                        call.query(con)?;
                    }
                    return write.outcome;
                }
            }
        }
    }

    /// What to send after a fill, and what to answer: store the value (which also frees the
    /// lease), or on failure free the lease and serve the current value if there is one.
    #[allow(clippy::too_many_arguments)]
    fn after_fill(
        &self,
        key: &str,
        ttl: Duration,
        version: Version,
        token: &str,
        took: Duration,
        result: Result<Option<Vec<u8>>>,
        current: Option<Vec<u8>>,
    ) -> Result<AfterFill> {
        match result {
            Ok(Some(value)) => Ok(AfterFill {
                store: Some(self.set_call_leased(key, Some(&value), ttl, version, took, token)?),
                release: None,
                outcome: Ok(Some(value)),
            }),
            Ok(None) => {
                let store = match self.negative_ttl {
                    Some(neg) => Some(self.set_call_leased(key, None, neg, version, took, token)?),
                    None => None,
                };
                let release =
                    if store.is_none() { Some(release_call(&self.lease_key(key), token)?) } else { None };
                Ok(AfterFill { store, release, outcome: Ok(None) })
            }
            // An early refresh that failed still serves the value everyone else is served.
            Err(_) if current.is_some() => Ok(AfterFill {
                store: None,
                release: Some(release_call(&self.lease_key(key), token)?),
                outcome: Ok(current),
            }),
            Err(e) => Ok(AfterFill {
                store: None,
                release: Some(release_call(&self.lease_key(key), token)?),
                outcome: Err(e),
            }),
        }
    }
}

/// With the `serde` feature: values stored as JSON.
#[cfg(feature = "serde")]
impl Cache {
    /// [`get_or_compute`](Self::get_or_compute) for a serde type, stored as JSON.
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
        C: redis::aio::ConnectionLike + Send,
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

struct AfterFill {
    store: Option<SetCall>,
    release: Option<Invocation<'static>>,
    outcome: Result<Option<Vec<u8>>>,
}

/// The fill lease is released with the cache's own `cache.release_lease` (compare-and-delete of the token).
fn release_call(lease_key: &str, token: &str) -> Result<Invocation<'static>> {
    Ok(script::get("cache.release_lease")?.invoke().key(lease_key).arg(token))
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key", "must not be empty"));
    }
    Ok(())
}

/// XFetch's random term, as the script takes it: round(-beta * ln(U) * 1000), U in (0, 1].
fn xfetch_draw(beta: f64) -> u64 {
    let u: f64 = 1.0 - rand::random::<f64>(); // (0, 1]
    let x = -beta * u.ln() * 1000.0;
    if x.is_finite() { x.round().clamp(0.0, 1e12) as u64 } else { 0 }
}

/// What a `get_or_compute` loop does with one cache.get reply.
enum Step {
    Done(Option<Vec<u8>>),
    Wait(Duration),
    /// This caller holds the lease: compute and write back under `version`. `current` is the
    /// value still served (an early refresh), returned if the refresh fails.
    Fill {
        version: Version,
        current: Option<Vec<u8>>,
    },
}

fn next_step(reply: GetReply, deadline: Instant) -> Result<Step> {
    Ok(match reply.status {
        1 => Step::Done(reply.data),
        5 => Step::Done(None),
        2 => Step::Fill { version: reply.version, current: reply.data },
        3 => Step::Fill { version: reply.version, current: None },
        4 => {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout("waited for another caller's cache fill".into()));
            }
            // Poll briefly rather than sleeping the whole lease: the filler usually finishes
            // well before its lease ends.
            let lease_left = Duration::from_millis(reply.lease_pttl.max(1) as u64);
            Step::Wait(lease_left.min(Duration::from_millis(20)).min(deadline - now))
        }
        other => return Err(Error::unexpected("cache.get", format!("status {other} for a leased read"))),
    })
}

struct GetReply {
    status: i64,
    data: Option<Vec<u8>>,
    version: Version,
    lease_pttl: i64,
}

impl GetReply {
    fn lookup(self) -> Lookup {
        let entry = match (self.status, self.data) {
            (5, _) => Entry::NotFound,
            (_, Some(d)) => Entry::Hit(d),
            (_, None) => Entry::Miss,
        };
        Lookup { entry, version: self.version }
    }
}

struct GetCall {
    keys: [String; 3],
    token: String,
    lease_ms: u64,
    early: u64,
}

impl ScriptCall for GetCall {
    type Output = GetReply;
    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("cache.get")?
            .invoke()
            .key(&self.keys[..])
            .arg(&self.token)
            .arg(self.lease_ms)
            .arg(self.early)
            // A plain read takes no lease and writes nothing.
            .read_only(self.lease_ms == 0))
    }
    fn parse(&self, reply: Reply) -> Result<GetReply> {
        let redis::Value::Array(items) = reply.value() else { return Err(reply.unexpected("an array of 5")) };
        if items.len() != 5 {
            return Err(reply.unexpected("an array of 5"));
        }
        let int = |i: usize| Reply::new("cache.get", items[i].clone()).int();
        let data = match &items[1] {
            redis::Value::Nil => None,
            redis::Value::BulkString(b) => Some(b.clone()),
            _ => return Err(reply.unexpected("data as bytes or nil")),
        };
        let status = int(0)?;
        if !(0..=5).contains(&status) {
            return Err(reply.unexpected("a status 0..5"));
        }
        Ok(GetReply {
            status,
            data,
            version: Version { segment: int(2)?.max(0) as u64, generation: int(3)?.max(0) as u64 },
            lease_pttl: int(4)?,
        })
    }
}

struct SetCall {
    keys: [String; 3],
    version: Version,
    data: Option<Vec<u8>>,
    ttl_ms: u64,
    delta_ms: u64,
    token: String,
}

impl ScriptCall for SetCall {
    type Output = Stored;
    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("cache.set")?
            .invoke()
            .key(&self.keys[..])
            .arg(self.version.segment)
            .arg(self.version.generation)
            .arg(self.data.as_deref().unwrap_or_default())
            .arg(self.ttl_ms)
            .arg(self.delta_ms)
            .arg(&self.token)
            .arg(u8::from(self.data.is_none())))
    }
    fn parse(&self, reply: Reply) -> Result<Stored> {
        Ok(if reply.ints(3)?[0] == 1 { Stored::Stored } else { Stored::Stale })
    }
}

struct BumpCall {
    key: String,
}

impl ScriptCall for BumpCall {
    type Output = u64;
    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("cache.bump")?.invoke().key(&self.key))
    }
    fn parse(&self, reply: Reply) -> Result<u64> {
        Ok(reply.int()?.max(0) as u64)
    }
}

struct DeleteCall {
    key: String,
    tombstone_ms: u64,
}

impl ScriptCall for DeleteCall {
    type Output = bool;
    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(script::get("cache.delete")?.invoke().key(&self.key).arg(self.tombstone_ms))
    }
    fn parse(&self, reply: Reply) -> Result<bool> {
        Ok(reply.int()? == 1)
    }
}
