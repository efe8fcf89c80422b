//! Rate limits decided in one atomic script call: an exact sliding window, GCRA, and several
//! limits at once (all-or-nothing).
//!
//! - Time is the Redis server's, never the client's.
//! - Only admitted requests count, unless a call asks for [`Request::penalty`] (then refused
//!   attempts count too, and a client that keeps hammering stays locked out).
//! - Every reply carries what a caller needs: allowed, limit, remaining, retry-after, reset-after.
//! - A cost that can never fit is [`Error::InsufficientCapacity`], not an endless retry.
//! - Every call returns within the limiter's deadline ([`RateLimiter::with_deadline`], 1 s by
//!   default) or its own timeout, whatever the server does; when Redis is unreachable it is an
//!   error, and the caller decides whether that means admit or refuse.
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
//! # Keys
//!
//! A limiter named `api` keeps subject `user-42` at `rl:{user-42}:api`: the subject is the hash
//! tag. A subject may live in a scope ([`Subject::in_scope`]): `ann` in scope `tenant-7` is
//! `rl:{tenant-7}:api:ann`, so that every limit of one tenant shares a cluster slot and can be
//! checked together in one [`MultiLimit`] call. A limiter uses one key per subject whichever
//! API checks it, so one budget is one budget: a [`MultiLimit`] uses exactly the keys its
//! limiters use alone. Limiter names may not contain `:`, and tags may not contain `}`, so two
//! different (scope, name, subject) triples never spell the same key.

mod algorithm;
pub mod call;
mod wait;

use std::sync::Arc;
use std::time::Duration;

pub use algorithm::{Gcra, Limit, SlidingWindow};
pub use call::Check;

use crate::flow::{self, Once, OnceCommand, twins};
use crate::{Error, Result, rules, telemetry};

/// How long a single check, peek or reset may take by default before it fails with
/// [`Error::Timeout`]: a limiter sits in front of requests, so it must fail fast.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

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
    /// A request of weight `cost` (1..=10^12).
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
    /// The request's weight.
    pub fn weight(&self) -> u64 {
        self.cost
    }
}

impl From<u64> for Request {
    fn from(cost: u64) -> Self {
        Request::cost(cost)
    }
}

/// Whom a limit applies to: an identifier (a user, an IP, an API key), optionally inside a scope
/// (a tenant, a route) that becomes the key's hash tag instead.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{RateLimiter, SlidingWindow, Subject};
///
/// let per_user = RateLimiter::new("user", SlidingWindow::new(10, Duration::from_secs(1))?)?;
/// assert_eq!(per_user.key("ann")?, "rl:{ann}:user");
/// assert_eq!(per_user.key(Subject::new("ann").in_scope("tenant-7"))?, "rl:{tenant-7}:user:ann");
/// # Ok::<(), redis_primitives::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    id: &'a str,
    scope: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// The subject `id`, its own hash tag.
    pub fn new(id: &'a str) -> Self {
        Subject { id, scope: None }
    }

    /// The same subject inside `scope`: the scope becomes the hash tag, so limits of different
    /// subjects of one scope can be checked in one [`MultiLimit`] call on a cluster.
    pub fn in_scope(self, scope: &'a str) -> Self {
        Subject { scope: Some(scope), ..self }
    }

    /// The key's hash tag: the scope, or the id.
    pub fn tag(&self) -> &'a str {
        self.scope.unwrap_or(self.id)
    }

    fn key(&self, name: &str) -> Result<String> {
        match self.scope {
            None => {
                rules::tag("subject", self.id)?;
                Ok(format!("rl:{{{}}}:{name}", self.id))
            }
            Some(scope) => {
                rules::tag("scope", scope)?;
                rules::name("subject", self.id)?;
                Ok(format!("rl:{{{scope}}}:{name}:{}", self.id))
            }
        }
    }
}

impl<'a> From<&'a str> for Subject<'a> {
    fn from(id: &'a str) -> Self {
        Subject::new(id)
    }
}

impl<'a> From<&'a String> for Subject<'a> {
    fn from(id: &'a String) -> Self {
        Subject::new(id)
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

impl MultiDecision {
    /// Reports each limit's decision (telemetry), then passes the decision on.
    fn reported(self, limiters: &[&str]) -> Self {
        for (d, name) in self.limits.iter().zip(limiters) {
            telemetry::ratelimit_decision(name, d.allowed && self.allowed);
        }
        self
    }

    /// The one limit's decision of a single-limit call.
    fn single(self) -> Result<Decision> {
        let mut d = self
            .limits
            .into_iter()
            .next()
            .ok_or_else(|| Error::unexpected("ratelimit", "no limit in reply"))?;
        d.allowed = self.allowed;
        Ok(d)
    }
}

/// A rate limit with a name: the algorithm and its parameters. The name is part of every key,
/// so two limiters with different names never share state. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{Gcra, RateLimiter};
///
/// let login = RateLimiter::new("login", Gcra::new(5, Duration::from_secs(60))?)?;
/// assert_eq!(login.key("alice")?, "rl:{alice}:login");
/// assert!(RateLimiter::new("a:b", Gcra::new(5, Duration::from_secs(60))?).is_err());
/// # Ok::<(), redis_primitives::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    name: Arc<str>,
    limit: Limit,
    deadline: Duration,
}

impl RateLimiter {
    /// A limiter named `name` (1..=1024 bytes, no `:`) applying `limit` (a [`SlidingWindow`]
    /// or a [`Gcra`]).
    pub fn new(name: impl Into<String>, limit: impl Into<Limit>) -> Result<Self> {
        let name = name.into();
        rules::name("name", &name)?;
        if name.contains(':') {
            return Err(Error::invalid(
                "name",
                "must not contain `:` (it separates the name from a scoped subject)",
            ));
        }
        Ok(RateLimiter { name: name.into(), limit: limit.into(), deadline: DEFAULT_DEADLINE })
    }

    /// How long [`check`](Self::check), [`peek`](Self::peek) and [`reset`](Self::reset) may take
    /// before failing with [`Error::Timeout`] (default [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(self, deadline: Duration) -> Self {
        RateLimiter { deadline, ..self }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit it applies.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The deadline of a single call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The key holding `subject`'s state: `rl:{<subject>}:<name>`, or
    /// `rl:{<scope>}:<name>:<subject>` for a scoped subject.
    pub fn key<'a>(&self, subject: impl Into<Subject<'a>>) -> Result<String> {
        subject.into().key(&self.name)
    }

    /// The call that checks (and, if allowed, consumes) `request` for `subject`: run it with
    /// `query`/`query_async`, or put many in a [`Batch`](crate::script::Batch).
    pub fn check_call<'a>(
        &self,
        subject: impl Into<Subject<'a>>,
        request: impl Into<Request>,
    ) -> Result<Check> {
        Check::new(vec![(self.key(subject)?, self.limit)], request.into())
    }

    /// One call within the deadline; a real check (not a peek) is reported to telemetry.
    fn once(&self, call: Result<Check>, report: bool) -> Result<impl flow::Flow<Out = Decision> + use<>> {
        let name = self.name.clone();
        Ok(flow::map(Once::new(call?, self.deadline), move |m| {
            if report { m.reported(&[&name]) } else { m }.single()
        }))
    }

    twins! {
        /// Checks and, if allowed, consumes: one atomic call, within the limiter's deadline.
        cancel: "Dropping the future may leave the request counted: the call may have reached the server.",
        pub fn check / check_blocking<'a> (&self, subject: impl Into<Subject<'a>>, request: impl Into<Request>) -> Decision
            = self.once(self.check_call(subject, request), true)?;

        /// Decides without consuming or writing anything (sent read-only where the server
        /// allows), within the limiter's deadline.
        cancel: "Safe: a peek writes nothing.",
        pub fn peek / peek_blocking<'a> (&self, subject: impl Into<Subject<'a>>, request: impl Into<Request>) -> Decision
            = self.once(self.check_call(subject, request).map(Check::peek), false)?;

        /// Forgets `subject`'s history: its next request starts from a full limit.
        cancel: "Dropping the future may or may not have reset the subject.",
        pub fn reset / reset_blocking<'a> (&self, subject: impl Into<Subject<'a>>) -> ()
            = flow::map(OnceCommand::new("DEL", del(&[self.key(subject)?]), self.deadline), deleted);

        /// Checks until admitted, sleeping by the server's retry-after, for at most `timeout`
        /// (calls included: a silent server ends it at `timeout` with [`Error::Timeout`]).
        /// Returns the last decision: refused when admission could not come within `timeout`;
        /// it gives up at once when the server's retry-after already passes the deadline. An
        /// error is returned as it is, never retried: the call may have run and consumed.
        cancel: "Dropping the future during a sleep consumes nothing more; during a call, that \
            call may have been counted.",
        pub fn wait / wait_blocking<'a> (&self, subject: impl Into<Subject<'a>>, request: impl Into<Request>, timeout: Duration) -> Decision
            = flow::map(wait::Wait::new(self.check_call(subject, request)?, timeout), |m| m.reported(&[&self.name]).single());
    }
}

/// DEL answers the number of keys it removed; anything else is not a Redis we can trust.
fn deleted(reply: redis::Value) -> Result<()> {
    match crate::script::reply::int(&reply) {
        Some(_) => Ok(()),
        None => Err(crate::script::reply::bad("DEL", "an integer", &reply)),
    }
}

fn del(keys: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("DEL");
    cmd.arg(keys);
    cmd
}

/// Several limits, possibly of different algorithms, checked and consumed together in one
/// atomic call: either all admit (and all are consumed) or none is consumed. Build it once
/// (it owns its limiters) and give the subjects per call; each limit uses exactly the key its
/// limiter uses alone, so a budget is the same whether checked here or alone.
///
/// All subjects of one call must share one hash tag (the same scope), so the call works on a
/// cluster: e.g. per user (scoped by tenant) and per tenant.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{MultiLimit, RateLimiter, SlidingWindow, Subject};
///
/// # async fn demo(con: &mut redis::aio::ConnectionManager) -> redis_primitives::Result<()> {
/// let per_user = RateLimiter::new("user", SlidingWindow::new(10, Duration::from_secs(1))?)?;
/// let per_tenant = RateLimiter::new("tenant", SlidingWindow::new(1000, Duration::from_secs(3600))?)?;
/// let both = MultiLimit::new().with(per_user).with(per_tenant);
/// let d = both.check(con, [Subject::new("user-42").in_scope("tenant-7"), "tenant-7".into()], 1).await?;
/// if let Some(i) = d.refused_by {
///     println!("limit {i} refused; retry in {:?}", d.retry_after);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLimit {
    limiters: Vec<RateLimiter>,
    deadline: Duration,
}

impl Default for MultiLimit {
    fn default() -> Self {
        MultiLimit::new()
    }
}

impl MultiLimit {
    /// No limits yet.
    pub fn new() -> Self {
        MultiLimit { limiters: Vec::new(), deadline: DEFAULT_DEADLINE }
    }

    /// Adds a limiter (checked in the order added).
    pub fn with(mut self, limiter: RateLimiter) -> Self {
        self.limiters.push(limiter);
        self
    }

    /// How long a check, peek or reset may take (default [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(self, deadline: Duration) -> Self {
        MultiLimit { deadline, ..self }
    }

    /// The limiters, in order.
    pub fn limiters(&self) -> &[RateLimiter] {
        &self.limiters
    }

    /// The keys for `subjects` (one per limiter, in order), checked to share one hash tag.
    pub fn keys<'a>(
        &self,
        subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>,
    ) -> Result<Vec<String>> {
        let subjects: Vec<Subject<'a>> = subjects.into_iter().map(Into::into).collect();
        if subjects.len() != self.limiters.len() {
            return Err(Error::invalid(
                "subjects",
                format!("{} subjects for {} limiters", subjects.len(), self.limiters.len()),
            ));
        }
        if let Some(first) = subjects.first()
            && subjects.iter().any(|s| s.tag() != first.tag())
        {
            return Err(Error::invalid(
                "subjects",
                "all limits of one call must share one hash tag: give them one scope (Subject::in_scope)",
            ));
        }
        self.limiters.iter().zip(subjects).map(|(l, s)| l.key(s)).collect()
    }

    /// The call that checks and consumes all limits together.
    pub fn check_call<'a>(
        &self,
        subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>,
        request: impl Into<Request>,
    ) -> Result<Check> {
        let keys = self.keys(subjects)?;
        Check::new(keys.into_iter().zip(self.limiters.iter().map(|l| l.limit)).collect(), request.into())
    }

    twins! {
        /// Checks all limits and consumes them only if all allow, within the deadline.
        cancel: "Dropping the future may leave the request counted: the call may have reached the server.",
        pub fn check / check_blocking<'a> (&self, subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>, request: impl Into<Request>) -> MultiDecision
            = flow::map(Once::new(self.check_call(subjects, request)?, self.deadline), |m| Ok(m.reported(&self.names())));

        /// Decides for all limits without consuming anything.
        cancel: "Safe: a peek writes nothing.",
        pub fn peek / peek_blocking<'a> (&self, subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>, request: impl Into<Request>) -> MultiDecision
            = Once::new(self.check_call(subjects, request)?.peek(), self.deadline);

        /// Resets every limit for these subjects (one DEL of all keys).
        cancel: "Dropping the future may or may not have reset the limits.",
        pub fn reset / reset_blocking<'a> (&self, subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>) -> ()
            = flow::map(OnceCommand::new("DEL", del(&self.keys(subjects)?), self.deadline), deleted);

        /// Checks until all limits admit together, for at most `timeout` (see
        /// [`RateLimiter::wait`]).
        cancel: "Dropping the future during a sleep consumes nothing more; during a call, that \
            call may have been counted.",
        pub fn wait / wait_blocking<'a> (&self, subjects: impl IntoIterator<Item = impl Into<Subject<'a>>>, request: impl Into<Request>, timeout: Duration) -> MultiDecision
            = flow::map(wait::Wait::new(self.check_call(subjects, request)?, timeout), |m| Ok(m.reported(&self.names())));
    }

    fn names(&self) -> Vec<&str> {
        self.limiters.iter().map(RateLimiter::name).collect()
    }
}
