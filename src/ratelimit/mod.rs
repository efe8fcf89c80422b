//! Rate limits decided in one atomic script call: an exact sliding window, GCRA, and several
//! limits at once (all-or-nothing).
//!
//! - Time is the Redis server's, never the client's.
//! - Only admitted requests count, unless a call asks for [`Request::penalty`] (then refused
//!   attempts count too, and a client that keeps hammering stays locked out).
//! - Every reply carries what a caller needs: allowed, limit, remaining, retry-after, reset-after.
//! - A cost that can never fit is [`Error::InsufficientCapacity`], not an endless retry.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
//!
//! # async fn demo() -> redis_primitives::Result<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! let mut con = client.get_connection_manager().await?;
//! let api = RateLimiter::new("api", SlidingWindow::new(100, Duration::from_secs(60))?)?;
//! let d = api.check(&mut con, "user-42", 1).await?;
//! if !d.allowed {
//!     println!("slow down: retry in {:?}", d.retry_after);
//! }
//! # Ok(()) }
//! ```
//!
//! Keys: a limiter named `api` keeps subject `user-42` at `rl:{user-42}:api`; the subject is the
//! hash tag. A [`MultiLimit`] call shares one scope as the tag: `rl:{<scope>}:<name>:<subject>`.

mod algorithm;

use std::time::{Duration, Instant};

use rand::Rng;

pub use algorithm::{Algorithm, Gcra, SlidingWindow};

use crate::script::{self, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

/// What one request costs, and whether a refusal should count against the subject.
///
/// ```
/// use redis_primitives::ratelimit::Request;
/// let r: Request = 3.into();
/// assert_eq!(r, Request::cost(3));
/// let strict = Request::cost(1).penalty();
/// assert!(strict.is_penalty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    cost: u64,
    penalty: bool,
}

impl Request {
    /// A request of weight `cost` (at least 1).
    pub fn cost(cost: u64) -> Self {
        Request { cost, penalty: false }
    }
    /// Refused attempts are recorded too, so retrying while refused extends the lockout.
    pub fn penalty(self) -> Self {
        Request { penalty: true, ..self }
    }
    /// Whether this request is in penalty mode.
    pub fn is_penalty(&self) -> bool {
        self.penalty
    }
}

impl From<u64> for Request {
    fn from(cost: u64) -> Self {
        Request::cost(cost)
    }
}

/// The answer for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request was (for a peek: would be) admitted.
    pub allowed: bool,
    /// The limit (sliding window) or burst (GCRA).
    pub limit: u64,
    /// What is left after this decision.
    pub remaining: u64,
    /// When this request would fit, assuming no other traffic; zero when allowed.
    pub retry_after: Duration,
    /// When the limit is back to full (the window empty, the bucket full).
    pub reset_after: Duration,
}

/// The answer for several limits checked together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Whether every limit allowed (and so all were consumed).
    pub allowed: bool,
    /// The index (in the order added) of the first limit that refused.
    pub refused_by: Option<usize>,
    /// The longest wait among the limits that refused; zero when allowed.
    pub retry_after: Duration,
    /// Each limit's own figures; `allowed` there says whether that limit alone had room.
    pub limits: Vec<Decision>,
}

/// A rate limit with a name: the algorithm and its parameters. The name is part of every key, so
/// two limiters with different names never share state.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{Gcra, RateLimiter};
///
/// let login = RateLimiter::new("login", Gcra::new(5, Duration::from_secs(60)).unwrap()).unwrap();
/// assert_eq!(login.key("alice").unwrap(), "rl:{alice}:login");
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<A> {
    name: String,
    algorithm: A,
}

fn check_part(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    // "{}" or a tag starting with "}" would leave the hash tag empty: every key of one call
    // would then hash on its own and a cluster would refuse the call (CROSSSLOT).
    if s.starts_with('}') {
        return Err(Error::invalid(what, "must not start with `}` (it would end the hash tag)"));
    }
    Ok(())
}

impl<A: Algorithm> RateLimiter<A> {
    /// A limiter named `name` (non-empty) applying `algorithm`.
    pub fn new(name: impl Into<String>, algorithm: A) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        Ok(RateLimiter { name, algorithm })
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm and its parameters.
    pub fn algorithm(&self) -> &A {
        &self.algorithm
    }

    /// The key holding `subject`'s state: `rl:{<subject>}:<name>`.
    pub fn key(&self, subject: &str) -> Result<String> {
        check_part("subject", subject)?;
        Ok(format!("rl:{{{subject}}}:{}", self.name))
    }

    /// The call that checks (and, if allowed, consumes) `request` for `subject`: run it with
    /// `query`/`query_async`, or put many in a [`Batch`](crate::script::Batch).
    pub fn check_call(&self, subject: &str, request: impl Into<Request>) -> Result<Check> {
        Check::new::<A>(vec![(self.key(subject)?, &self.algorithm)], request.into())
    }

    /// Checks and consumes: one atomic call.
    pub async fn check<C>(&self, con: &mut C, subject: &str, request: impl Into<Request>) -> Result<Decision>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        single(self.check_call(subject, request)?.query_async(con).await?)
    }

    /// [`check`](Self::check) on a blocking connection.
    pub fn check_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        subject: &str,
        request: impl Into<Request>,
    ) -> Result<Decision> {
        single(self.check_call(subject, request)?.query(con)?)
    }

    /// Decides without consuming or writing anything (sent read-only where the server allows).
    pub async fn peek<C>(&self, con: &mut C, subject: &str, request: impl Into<Request>) -> Result<Decision>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        single(self.check_call(subject, request)?.peek().query_async(con).await?)
    }

    /// [`peek`](Self::peek) on a blocking connection.
    pub fn peek_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        subject: &str,
        request: impl Into<Request>,
    ) -> Result<Decision> {
        single(self.check_call(subject, request)?.peek().query(con)?)
    }

    /// Forgets `subject`'s history: its next request starts from a full limit.
    pub async fn reset<C>(&self, con: &mut C, subject: &str) -> Result<()>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let _: i64 = redis::cmd("DEL").arg(self.key(subject)?).query_async(con).await?;
        Ok(())
    }

    /// [`reset`](Self::reset) on a blocking connection.
    pub fn reset_blocking(&self, con: &mut dyn redis::ConnectionLike, subject: &str) -> Result<()> {
        let _: i64 = redis::cmd("DEL").arg(self.key(subject)?).query(con)?;
        Ok(())
    }

    /// Checks until admitted, sleeping by the server's retry-after, for at most `timeout`.
    /// Returns the last decision: refused when admission could not come within `timeout` (it
    /// gives up at once when the server's retry-after already passes the deadline).
    pub async fn wait<C>(
        &self,
        con: &mut C,
        subject: &str,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<Decision>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let call = self.check_call(subject, request)?;
        let deadline = Instant::now() + timeout;
        loop {
            let d = single(call.query_async(con).await?)?;
            match next_wait(&d, deadline) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Ok(d),
            }
        }
    }

    /// [`wait`](Self::wait) on a blocking connection (sleeps the thread).
    pub fn wait_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        subject: &str,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<Decision> {
        let call = self.check_call(subject, request)?;
        let deadline = Instant::now() + timeout;
        loop {
            let d = single(call.query(con)?)?;
            match next_wait(&d, deadline) {
                Some(pause) => std::thread::sleep(pause),
                None => return Ok(d),
            }
        }
    }
}

/// How long to pause before the next attempt, or `None` to stop (admitted, or the server's
/// retry-after lands past the deadline). A little jitter keeps waiters from waking together.
fn next_wait(d: &Decision, deadline: Instant) -> Option<Duration> {
    if d.allowed {
        return None;
    }
    let jitter = rand::rng().random_range(0..=(d.retry_after.as_micros() as u64 / 16).max(1));
    let pause = d.retry_after + Duration::from_micros(jitter);
    (Instant::now() + d.retry_after <= deadline)
        .then(|| pause.min(deadline.saturating_duration_since(Instant::now())))
}

fn single(m: MultiDecision) -> Result<Decision> {
    let mut d =
        m.limits.into_iter().next().ok_or_else(|| Error::unexpected("ratelimit", "no limit in reply"))?;
    d.allowed = m.allowed;
    Ok(d)
}

/// Several limits of one algorithm, checked and consumed together in one atomic call: either
/// all admit (and all are consumed) or none is consumed. All keys share the scope as hash tag,
/// so the call works on a cluster.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{MultiLimit, RateLimiter, SlidingWindow};
///
/// # async fn demo(con: &mut redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
/// let per_user = RateLimiter::new("user", SlidingWindow::new(10, Duration::from_secs(1))?)?;
/// let per_tenant = RateLimiter::new("tenant", SlidingWindow::new(1000, Duration::from_secs(3600))?)?;
/// let d = MultiLimit::new("tenant-7")?
///     .with(&per_user, "user-42")?
///     .with(&per_tenant, "")?
///     .check(con, 1)
///     .await?;
/// if let Some(i) = d.refused_by {
///     println!("limit {i} refused; retry in {:?}", d.retry_after);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLimit<'a, A> {
    scope: String,
    limits: Vec<(String, &'a A)>,
}

impl<'a, A: Algorithm> MultiLimit<'a, A> {
    /// A set of limits under one scope (the hash tag shared by all their keys).
    pub fn new(scope: impl Into<String>) -> Result<Self> {
        let scope = scope.into();
        check_part("scope", &scope)?;
        Ok(MultiLimit { scope, limits: Vec::new() })
    }

    /// Adds `limiter` applied to `subject` (may be empty for a scope-wide limit). Its key is
    /// `rl:{<scope>}:<name>:<subject>` (or `rl:{<scope>}:<name>`).
    pub fn with(mut self, limiter: &'a RateLimiter<A>, subject: &str) -> Result<Self> {
        let key = if subject.is_empty() {
            format!("rl:{{{}}}:{}", self.scope, limiter.name)
        } else {
            format!("rl:{{{}}}:{}:{subject}", self.scope, limiter.name)
        };
        if self.limits.iter().any(|(k, _)| *k == key) {
            return Err(Error::invalid("subject", format!("{key} is already in this call")));
        }
        self.limits.push((key, &limiter.algorithm));
        Ok(self)
    }

    /// The keys, in the order added.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.limits.iter().map(|(k, _)| k.as_str())
    }

    /// The call that checks and consumes all limits together.
    pub fn check_call(&self, request: impl Into<Request>) -> Result<Check> {
        Check::new::<A>(self.limits.iter().map(|(k, a)| (k.clone(), *a)).collect(), request.into())
    }

    /// Checks all limits and consumes them only if all allow.
    pub async fn check<C>(&self, con: &mut C, request: impl Into<Request>) -> Result<MultiDecision>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.check_call(request)?.query_async(con).await
    }

    /// [`check`](Self::check) on a blocking connection.
    pub fn check_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        request: impl Into<Request>,
    ) -> Result<MultiDecision> {
        self.check_call(request)?.query(con)
    }

    /// Decides for all limits without consuming anything.
    pub async fn peek<C>(&self, con: &mut C, request: impl Into<Request>) -> Result<MultiDecision>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.check_call(request)?.peek().query_async(con).await
    }

    /// [`peek`](Self::peek) on a blocking connection.
    pub fn peek_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        request: impl Into<Request>,
    ) -> Result<MultiDecision> {
        self.check_call(request)?.peek().query(con)
    }

    /// Resets every limit of this set (one DEL of all keys).
    pub async fn reset<C>(&self, con: &mut C) -> Result<()>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let _: i64 = redis::cmd("DEL").arg(self.keys().collect::<Vec<_>>()).query_async(con).await?;
        Ok(())
    }

    /// [`reset`](Self::reset) on a blocking connection.
    pub fn reset_blocking(&self, con: &mut dyn redis::ConnectionLike) -> Result<()> {
        let _: i64 = redis::cmd("DEL").arg(self.keys().collect::<Vec<_>>()).query(con)?;
        Ok(())
    }
}

/// One prepared rate-limit script call (one or more limits). Build it with
/// [`RateLimiter::check_call`] or [`MultiLimit::check_call`]; run it with
/// [`ScriptCall::query`]/[`ScriptCall::query_async`] or in a [`Batch`](crate::script::Batch).
#[derive(Debug, Clone)]
pub struct Check {
    script: &'static str,
    keys: Vec<String>,
    args: Vec<u64>,
    cost: u64,
    peek: bool,
    penalty: bool,
}

impl Check {
    fn new<A: Algorithm>(limits: Vec<(String, &A)>, request: Request) -> Result<Check> {
        if limits.is_empty() {
            return Err(Error::invalid("limits", "at least one limit"));
        }
        if request.cost == 0 {
            return Err(Error::invalid("cost", "must be at least 1"));
        }
        let capacity = limits.iter().map(|(_, a)| a.capacity()).min().unwrap_or(0);
        if request.cost > capacity {
            return Err(Error::InsufficientCapacity { cost: request.cost, capacity });
        }
        let (keys, args) =
            limits.into_iter().map(|(k, a)| (k, a.wire_args())).unzip::<_, _, Vec<_>, Vec<_>>();
        Ok(Check {
            script: A::SCRIPT,
            keys,
            args: args.into_iter().flatten().collect(),
            cost: request.cost,
            peek: false,
            penalty: request.penalty,
        })
    }

    /// The same call as a dry run: decides, writes nothing.
    pub fn peek(mut self) -> Self {
        self.peek = true;
        self
    }
}

impl ScriptCall for Check {
    type Output = MultiDecision;

    fn invocation(&self) -> Result<Invocation<'static>> {
        let flags = u8::from(self.peek) | (u8::from(self.penalty) << 1);
        let mut inv = script::get(self.script)?.invoke().read_only(self.peek);
        for k in &self.keys {
            inv = inv.key(k.as_str());
        }
        Ok(inv.arg(self.cost).arg(flags).arg(&self.args[..]))
    }

    fn parse(&self, reply: Reply) -> Result<MultiDecision> {
        let v = reply.ints(3 + 4 * self.keys.len())?;
        let ms = |x: i64| Duration::from_millis(x.max(0) as u64);
        let never = v[2] < 0 || v[3..].chunks(4).any(|c| c[2] < 0);
        if never {
            // Checked before sending; reached only if the server's view differs (it should not).
            let capacity = v[3..].chunks(4).map(|c| c[0].max(0) as u64).min().unwrap_or(0);
            return Err(Error::InsufficientCapacity { cost: self.cost, capacity });
        }
        let limits = v[3..]
            .chunks(4)
            .map(|c| Decision {
                allowed: c[2] == 0,
                limit: c[0].max(0) as u64,
                remaining: c[1].max(0) as u64,
                retry_after: ms(c[2]),
                reset_after: ms(c[3]),
            })
            .collect();
        let allowed = v[0] == 1;
        let refused_by = (!allowed && v[1] >= 1).then(|| v[1] as usize - 1);
        Ok(MultiDecision { allowed, refused_by, retry_after: ms(v[2]), limits })
    }
}
