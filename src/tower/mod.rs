//! HTTP rate limiting as tower middleware (feature `tower`): [`RateLimitLayer`], usable with
//! axum, tonic, hyper and anything built on `tower::Service<http::Request<_>>`.
//!
//! Every replica of a service checks the same Redis, so the replicas share one budget: the point
//! of a distributed limiter. Per request:
//!
//! 1. the **bypass** hook may let it through unchecked (health checks, an allow-list);
//! 2. the **key** extractor names the subject(s) and the cost (a client IP, a header, an
//!    authenticated user id, a route); `None` leaves the request unlimited;
//! 3. one script call decides every limit of the layer at once, all-or-nothing (a single
//!    [`RateLimiter`] or a [`MultiLimit`]: per user + per tenant + global), within the
//!    **deadline**;
//! 4. admitted: the inner service runs, and the rate-limit headers are added if asked
//!    ([`Builder::headers_on_allowed`]); refused: `429 Too Many Requests` with `Retry-After`
//!    (whole seconds, rounded up: sleeping it is enough for that request to fit, absent other
//!    traffic) and the headers in the chosen [`HeaderStyle`]; the response comes from the
//!    [refusal hook](Builder::on_refusal) if one is set;
//! 5. when Redis fails or does not answer within the deadline, the stated [`OnFailure`] policy
//!    decides: admit, refuse with `503`, or an in-process limiter per replica (its budget is
//!    described at [`OnFailure::Local`]). After a failure the layer does not ask Redis again for
//!    [`Builder::retry_redis_after`] (1 s by default), so an outage costs one deadline, not one
//!    per request. Which branch answered is the `outcome` label of
//!    `redis_primitives_http_requests_total` (feature `metrics`).
//!
//! Several limits in one layer must use one algorithm (all sliding windows, or all GCRA) until a
//! combined script exists: [`Builder::build`] refuses a mix. Stack two layers for two algorithms
//! (each is then its own round trip, and no longer all-or-nothing across the two). All subjects
//! of one request must share one hash tag (see [`Key`]) so the call works on a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
//! use redis_primitives::tower::{HeaderStyle, Key, OnFailure, RateLimitLayer};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let con = redis::Client::open("redis://127.0.0.1:6379")?.get_connection_manager().await?;
//! let per_key = RateLimiter::new("api", SlidingWindow::new(100, Duration::from_secs(60))?)?;
//! let layer = RateLimitLayer::builder(con, per_key)
//!     .key(|req| req.headers.get("x-api-key")?.to_str().ok().map(Key::new))
//!     .headers(HeaderStyle::Both)
//!     .deadline(Duration::from_millis(100))
//!     .on_failure(OnFailure::Local { replicas: 4 })
//!     .build()?;
//! // axum: Router::new().route(...).layer(layer)
//! # let _ = layer; Ok(()) }
//! ```

mod headers;
mod local;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};

pub use headers::HeaderStyle;

use crate::ratelimit::{MultiDecision, MultiLimit, RateLimiter, Subject};
use crate::telemetry::{self, HttpOutcome};
use crate::{Error, Result};

/// Whom a request is counted against, and what it costs: what the key extractor returns.
///
/// One subject applies to every limit of the layer (`rl:{<subject>}:<limiter>` for each); give
/// one subject per limit ([`Key::per_limit`]) when they differ, e.g. per user and per tenant:
/// the user inside the tenant's scope and the tenant itself, so both keys share the tenant's hash
/// tag. A subject must be a valid hash tag (1..=1024 bytes, no `}`); a key the layer cannot use
/// is answered `400 Bad Request` (outcome `invalid`), never let through.
///
/// ```
/// use redis_primitives::tower::{Key, KeySubject};
/// let ip = Key::new("203.0.113.7");
/// let upload = Key::new("user-42").cost(5);
/// let both = Key::per_limit([KeySubject::new("ann").in_scope("tenant-7"), KeySubject::new("tenant-7")]);
/// assert_eq!(upload.weight(), 5);
/// # let _ = (ip, both);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    subjects: Vec<KeySubject>,
    cost: u64,
}

/// One owned subject of a [`Key`]: an id, optionally inside a scope (the scope is then the hash
/// tag), as [`Subject`] but owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySubject {
    id: String,
    scope: Option<String>,
}

impl KeySubject {
    /// The subject `id`.
    pub fn new(id: impl Into<String>) -> Self {
        KeySubject { id: id.into(), scope: None }
    }

    /// The same subject inside `scope`.
    pub fn in_scope(self, scope: impl Into<String>) -> Self {
        KeySubject { scope: Some(scope.into()), ..self }
    }

    fn as_subject(&self) -> Subject<'_> {
        match &self.scope {
            None => Subject::new(&self.id),
            Some(scope) => Subject::new(&self.id).in_scope(scope),
        }
    }
}

impl<T: Into<String>> From<T> for KeySubject {
    fn from(id: T) -> Self {
        KeySubject::new(id)
    }
}

impl Key {
    /// `subject` for every limit, cost 1.
    pub fn new(subject: impl Into<KeySubject>) -> Self {
        Key { subjects: vec![subject.into()], cost: 1 }
    }

    /// One subject per limit, in the order of the limiters, cost 1.
    pub fn per_limit(subjects: impl IntoIterator<Item = impl Into<KeySubject>>) -> Self {
        Key { subjects: subjects.into_iter().map(Into::into).collect(), cost: 1 }
    }

    /// The request's cost (1..=10^12; a cost over a limit's capacity is never admitted).
    pub fn cost(self, cost: u64) -> Self {
        Key { cost, ..self }
    }

    /// The cost.
    pub fn weight(&self) -> u64 {
        self.cost
    }

    /// The subjects, one per limit.
    fn subjects(&self, limits: usize) -> Vec<Subject<'_>> {
        match self.subjects.as_slice() {
            [one] => vec![one.as_subject(); limits],
            many => many.iter().map(KeySubject::as_subject).collect(),
        }
    }
}

/// A key extractor keying requests by a header's value (e.g. `x-api-key`); requests without it
/// (or with a value that is not visible ASCII) are not limited: combine it with your own
/// fallback when they must be.
pub fn header_key(name: &'static str) -> impl Fn(&Parts) -> Option<Key> + Send + Sync + 'static {
    move |req| req.headers.get(name)?.to_str().ok().filter(|v| !v.is_empty()).map(Key::new)
}

/// What the layer does when Redis fails or does not answer within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Admit the request (no rate-limit headers). Outcome `fail_open`.
    Open,
    /// Refuse with `503 Service Unavailable` and `Retry-After` (the
    /// [`retry_redis_after`](Builder::retry_redis_after) period, at least 1 s). Outcome
    /// `fail_closed`.
    Closed,
    /// Decide in process: each replica applies `1 / replicas` of every limit (rounded up, at
    /// least 1) as GCRA per subject on its own monotonic clock: a GCRA limit of `rate` per
    /// `period` with `burst` becomes `ceil(rate / replicas)` per `period` with burst
    /// `ceil(burst / replicas)`; a sliding window of `limit` per `window` becomes
    /// `ceil(limit / replicas)` per `window` with that burst (so within one window a replica may
    /// admit up to twice its share: a burst, then the steady rate). With `replicas` set to the
    /// number of replicas, they admit about the limit together. Refusals are `429` with
    /// `Retry-After` and headers reporting the local share. Outcomes `fallback_allowed` and
    /// `fallback_refused`. State is one timestamp per subject and limit, pruned as it grows,
    /// capped at [`Builder::fallback_max_keys`] subjects (then new subjects are refused).
    Local {
        /// How many replicas share the limit (at least 1).
        replicas: u32,
    },
}

impl OnFailure {
    fn name(&self) -> &'static str {
        match self {
            OnFailure::Open => "open",
            OnFailure::Closed => "closed",
            OnFailure::Local { .. } => "local",
        }
    }
}

/// Why the layer refused a request: what the [refusal hook](Builder::on_refusal) is given.
#[derive(Debug)]
pub struct Refusal {
    reason: RefusalReason,
    decision: Option<MultiDecision>,
    error: Option<Error>,
    retry_after: Option<Duration>,
}

/// The kind of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Redis refused: over the limit (default `429`).
    Limited,
    /// The in-process fallback refused while Redis was unavailable (default `429`).
    FallbackLimited,
    /// Redis was unavailable and the policy is [`OnFailure::Closed`] (default `503`).
    Unavailable,
    /// The request's key could not be used: a subject that is not a valid hash tag, subjects
    /// that do not match the limits (default `400`), or a cost no limit can ever hold (default
    /// `429` without `Retry-After`).
    Invalid,
}

impl Refusal {
    /// Why.
    pub fn reason(&self) -> RefusalReason {
        self.reason
    }

    /// The decision (Redis' or the fallback's), for [`Limited`](RefusalReason::Limited) and
    /// [`FallbackLimited`](RefusalReason::FallbackLimited).
    pub fn decision(&self) -> Option<&MultiDecision> {
        self.decision.as_ref()
    }

    /// The error, for [`Unavailable`](RefusalReason::Unavailable) (when Redis was asked) and
    /// [`Invalid`](RefusalReason::Invalid).
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// When the client may retry (the `Retry-After` header, rounded up to whole seconds); `None`
    /// when it never helps (a cost over capacity, an invalid key).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The status of the default response.
    pub fn status(&self) -> StatusCode {
        match (self.reason, &self.error) {
            (RefusalReason::Unavailable, _) => StatusCode::SERVICE_UNAVAILABLE,
            (RefusalReason::Invalid, Some(Error::InsufficientCapacity { .. })) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            (RefusalReason::Invalid, _) => StatusCode::BAD_REQUEST,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Builds the response to a refused request. The layer adds `Retry-After` and the rate-limit
/// headers to whatever it returns (unless already set).
pub trait Refuse<B> {
    /// The response for `refusal`.
    fn refuse(&self, refusal: &Refusal) -> Response<B>;
}

/// The default refusal: [`Refusal::status`] and an empty body.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRefusal;

impl<B: Default> Refuse<B> for DefaultRefusal {
    fn refuse(&self, refusal: &Refusal) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = refusal.status();
        response
    }
}

/// A refusal hook from a closure ([`Builder::on_refusal`]).
#[derive(Clone)]
pub struct RefuseWith<F>(F);

impl<F> std::fmt::Debug for RefuseWith<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefuseWith(..)")
    }
}

impl<B, F: Fn(&Refusal) -> Response<B>> Refuse<B> for RefuseWith<F> {
    fn refuse(&self, refusal: &Refusal) -> Response<B> {
        (self.0)(refusal)
    }
}

/// The limits a layer applies: a [`RateLimiter`] or a [`MultiLimit`] (`.into()`).
#[derive(Debug, Clone)]
pub struct Limits(MultiLimit);

impl From<RateLimiter> for Limits {
    fn from(l: RateLimiter) -> Self {
        let deadline = l.deadline();
        Limits(MultiLimit::new().with(l).with_deadline(deadline))
    }
}

impl From<MultiLimit> for Limits {
    fn from(m: MultiLimit) -> Self {
        Limits(m)
    }
}

type KeyFn = dyn Fn(&Parts) -> Option<Key> + Send + Sync;
type BypassFn = dyn Fn(&Parts) -> bool + Send + Sync;

/// Builds a [`RateLimitLayer`]: [`RateLimitLayer::builder`].
pub struct Builder<C, R = DefaultRefusal> {
    con: C,
    limits: MultiLimit,
    name: Option<String>,
    key: Option<Box<KeyFn>>,
    bypass: Option<Box<BypassFn>>,
    refuse: R,
    style: HeaderStyle,
    on_allowed: bool,
    on_failure: OnFailure,
    retry_redis_after: Duration,
    fallback_max_keys: usize,
}

impl<C, R> std::fmt::Debug for Builder<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("limits", &self.limits)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C, R> Builder<C, R> {
    /// The key extractor (required): the subject(s) and cost of a request, from its method, URI,
    /// headers and extensions (axum's `ConnectInfo`, an authenticated user put there by an
    /// earlier layer). `None`: the request is not limited (outcome `unkeyed`).
    pub fn key(mut self, key: impl Fn(&Parts) -> Option<Key> + Send + Sync + 'static) -> Self {
        self.key = Some(Box::new(key));
        self
    }

    /// The bypass hook: requests for which it returns true pass unchecked (outcome `bypassed`),
    /// e.g. health checks or an allow-list of internal clients.
    pub fn bypass(mut self, bypass: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.bypass = Some(Box::new(bypass));
        self
    }

    /// The refusal hook: builds the response to a refused request (a JSON problem body, say).
    /// `Retry-After` and the rate-limit headers are added to it unless it sets them.
    pub fn on_refusal<B, F>(self, f: F) -> Builder<C, RefuseWith<F>>
    where
        F: Fn(&Refusal) -> Response<B> + Send + Sync + 'static,
    {
        Builder {
            con: self.con,
            limits: self.limits,
            name: self.name,
            key: self.key,
            bypass: self.bypass,
            refuse: RefuseWith(f),
            style: self.style,
            on_allowed: self.on_allowed,
            on_failure: self.on_failure,
            retry_redis_after: self.retry_redis_after,
            fallback_max_keys: self.fallback_max_keys,
        }
    }

    /// Which rate-limit headers to send (default [`HeaderStyle::Ietf`]).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// Also send the rate-limit headers on admitted responses (default: only on refusals).
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.on_allowed = on;
        self
    }

    /// How long one decision may take before the failure policy applies instead (default: the
    /// limits' own deadline, [`DEFAULT_DEADLINE`](crate::ratelimit::DEFAULT_DEADLINE) unless set
    /// with `with_deadline`). Bounds the latency the layer adds to a request whatever Redis does.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.limits = self.limits.with_deadline(deadline);
        self
    }

    /// The policy when Redis fails or is slower than the deadline (default [`OnFailure::Open`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// After a failure, how long the layer applies the failure policy without asking Redis
    /// (default 1 s); zero asks Redis on every request.
    pub fn retry_redis_after(mut self, period: Duration) -> Self {
        self.retry_redis_after = period;
        self
    }

    /// The most subjects the in-process fallback tracks (default 100,000).
    pub fn fallback_max_keys(mut self, n: usize) -> Self {
        self.fallback_max_keys = n;
        self
    }

    /// The layer's name in metrics and events (default: the limiter names joined with `+`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The layer. Refuses no key extractor, no limit, limits of mixed algorithms (one script call
    /// takes one algorithm), and `Local { replicas: 0 }`.
    pub fn build(self) -> Result<RateLimitLayer<C, R>> {
        let key =
            self.key.ok_or_else(|| Error::invalid("key", "a key extractor is required (Builder::key)"))?;
        let limiters = self.limits.limiters();
        let first = limiters.first().ok_or_else(|| Error::invalid("limits", "at least one limit"))?;
        if limiters.iter().any(|l| std::mem::discriminant(l.limit()) != std::mem::discriminant(first.limit()))
        {
            return Err(Error::invalid(
                "limits",
                "one layer takes limits of one algorithm (one script call decides them all); stack two layers",
            ));
        }
        let local = match self.on_failure {
            OnFailure::Local { replicas: 0 } => return Err(Error::invalid("replicas", "must be at least 1")),
            OnFailure::Local { replicas } => {
                Some(local::Local::new(&self.limits, replicas, self.fallback_max_keys))
            }
            _ => None,
        };
        let name =
            self.name.unwrap_or_else(|| limiters.iter().map(RateLimiter::name).collect::<Vec<_>>().join("+"));
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                headers: headers::Headers::new(self.style, &self.limits),
                con: self.con,
                limits: self.limits,
                name,
                key,
                bypass: self.bypass,
                refuse: self.refuse,
                on_allowed: self.on_allowed,
                on_failure: self.on_failure,
                local,
                retry_redis_after: self.retry_redis_after,
                base: Instant::now(),
                down_until: AtomicU64::new(0),
            }),
        })
    }
}

/// The rate-limit layer: wrap a service with it (axum: `Router::layer`). Cheap to clone; every
/// service it makes shares its connection, limits and fallback state.
pub struct RateLimitLayer<C, R = DefaultRefusal> {
    shared: Arc<Shared<C, R>>,
}

impl<C, R> Clone for RateLimitLayer<C, R> {
    fn clone(&self) -> Self {
        RateLimitLayer { shared: self.shared.clone() }
    }
}

impl<C, R> std::fmt::Debug for RateLimitLayer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<C> RateLimitLayer<C> {
    /// A builder for a layer deciding `limits` (a [`RateLimiter`] or a [`MultiLimit`]) on `con`:
    /// any async connection that clones cheaply (`ConnectionManager`, which reconnects, is the
    /// usual choice; `MultiplexedConnection`; `cluster_async::ClusterConnection`).
    pub fn builder(con: C, limits: impl Into<Limits>) -> Builder<C> {
        Builder {
            con,
            limits: limits.into().0,
            name: None,
            key: None,
            bypass: None,
            refuse: DefaultRefusal,
            style: HeaderStyle::default(),
            on_allowed: false,
            on_failure: OnFailure::Open,
            retry_redis_after: Duration::from_secs(1),
            fallback_max_keys: 100_000,
        }
    }
}

impl<C, R> RateLimitLayer<C, R> {
    /// The layer's name (metrics label `layer`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<S, C, R> tower_layer::Layer<S> for RateLimitLayer<C, R> {
    type Service = RateLimit<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, shared: self.shared.clone() }
    }
}

/// The service [`RateLimitLayer`] wraps around another.
pub struct RateLimit<S, C, R = DefaultRefusal> {
    inner: S,
    shared: Arc<Shared<C, R>>,
}

impl<S: Clone, C, R> Clone for RateLimit<S, C, R> {
    fn clone(&self) -> Self {
        RateLimit { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S, C, R> std::fmt::Debug for RateLimit<S, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("layer", &self.shared.name).finish_non_exhaustive()
    }
}

struct Shared<C, R> {
    con: C,
    limits: MultiLimit,
    name: String,
    key: Box<KeyFn>,
    bypass: Option<Box<BypassFn>>,
    refuse: R,
    headers: headers::Headers,
    on_allowed: bool,
    on_failure: OnFailure,
    local: Option<local::Local>,
    retry_redis_after: Duration,
    /// `down_until` counts milliseconds from here.
    base: Instant,
    /// Until when (ms from `base`, +1 so 0 means "up") the layer skips Redis after a failure.
    down_until: AtomicU64,
}

/// What to do with a request.
enum Verdict {
    /// Let it through, with these headers on the response.
    Pass(Option<HeaderMap>),
    Refuse(Refusal, Option<HeaderMap>),
}

impl<C, R> Shared<C, R>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn report(&self, outcome: HttpOutcome) {
        telemetry::http_request(&self.name, outcome);
    }

    async fn decide(&self, key: Key) -> Verdict {
        let subjects = key.subjects(self.limits.limiters().len());
        let down = self.down_until.load(Ordering::Relaxed);
        if down != 0 && self.now_ms() < down {
            return self.fail(&subjects, key.cost, None);
        }
        let mut con = self.con.clone();
        match self.limits.check(&mut con, subjects.iter().copied(), key.cost).await {
            Ok(d) => {
                if self.down_until.swap(0, Ordering::Relaxed) != 0 {
                    telemetry::http_limiter_recovered(&self.name);
                }
                if d.allowed {
                    self.report(HttpOutcome::Allowed);
                    Verdict::Pass(self.on_allowed.then(|| self.describe(&d)))
                } else {
                    self.report(HttpOutcome::Refused);
                    let headers = self.describe(&d);
                    let retry_after = Some(d.retry_after);
                    Verdict::Refuse(
                        Refusal {
                            reason: RefusalReason::Limited,
                            decision: Some(d),
                            error: None,
                            retry_after,
                        },
                        Some(headers),
                    )
                }
            }
            Err(e @ (Error::InvalidArgument { .. } | Error::InsufficientCapacity { .. })) => self.invalid(e),
            Err(e) => {
                let pause = self.retry_redis_after.as_millis().min(u128::from(u64::MAX)) as u64;
                let until = self.now_ms().saturating_add(pause);
                let first = self.down_until.swap(until, Ordering::Relaxed) == 0;
                telemetry::http_limiter_error(&self.name, &e, self.on_failure.name(), first);
                self.fail(&subjects, key.cost, Some(e))
            }
        }
    }

    fn invalid(&self, e: Error) -> Verdict {
        self.report(HttpOutcome::Invalid);
        Verdict::Refuse(
            Refusal { reason: RefusalReason::Invalid, decision: None, error: Some(e), retry_after: None },
            None,
        )
    }

    /// The failure policy, for a request Redis could not decide (`error`: why, when asked).
    fn fail(&self, subjects: &[Subject<'_>], cost: u64, error: Option<Error>) -> Verdict {
        match (&self.on_failure, &self.local) {
            (OnFailure::Local { .. }, Some(local)) => {
                let keys = match self.limits.keys(subjects.iter().copied()) {
                    Ok(keys) => keys,
                    Err(e) => return self.invalid(e),
                };
                if let Err(e) = crate::rules::count("cost", cost) {
                    return self.invalid(e);
                }
                let d = local.check(&keys, cost);
                let headers = self.describe(&d);
                if d.allowed {
                    self.report(HttpOutcome::FallbackAllowed);
                    Verdict::Pass(self.on_allowed.then_some(headers))
                } else {
                    self.report(HttpOutcome::FallbackRefused);
                    let retry_after = Some(d.retry_after);
                    Verdict::Refuse(
                        Refusal {
                            reason: RefusalReason::FallbackLimited,
                            decision: Some(d),
                            error,
                            retry_after,
                        },
                        Some(headers),
                    )
                }
            }
            (OnFailure::Closed, _) => {
                self.report(HttpOutcome::FailClosed);
                let retry_after = Some(self.retry_redis_after.max(Duration::from_secs(1)));
                Verdict::Refuse(
                    Refusal { reason: RefusalReason::Unavailable, decision: None, error, retry_after },
                    None,
                )
            }
            _ => {
                self.report(HttpOutcome::FailOpen);
                Verdict::Pass(None)
            }
        }
    }

    fn describe(&self, d: &MultiDecision) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.headers.describe(d, &mut h);
        h
    }
}

/// Adds `extra` to `into`: the IETF fields are Lists, so they are appended (an outer layer's
/// items join an inner one's); the others are set only when absent.
fn merge(into: &mut HeaderMap, extra: HeaderMap) {
    let mut last = None;
    for (name, value) in extra {
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        if name == headers::RATELIMIT || name == headers::RATELIMIT_POLICY {
            into.append(name, value);
        } else if !into.contains_key(&name) {
            into.insert(name, value);
        }
    }
}

impl<S, C, R, ReqB, ResB> tower_service::Service<Request<ReqB>> for RateLimit<S, C, R>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    R: Refuse<ResB> + Send + Sync + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response<ResB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The ready service goes with this request; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let (parts, body) = req.into_parts();
        let key = if shared.bypass.as_ref().is_some_and(|b| b(&parts)) {
            shared.report(HttpOutcome::Bypassed);
            None
        } else {
            let key = (shared.key)(&parts);
            if key.is_none() {
                shared.report(HttpOutcome::Unkeyed);
            }
            key
        };
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            let verdict = match key {
                None => Verdict::Pass(None),
                Some(key) => shared.decide(key).await,
            };
            match verdict {
                Verdict::Pass(headers) => {
                    let mut response = inner.call(req).await?;
                    if let Some(h) = headers {
                        merge(response.headers_mut(), h);
                    }
                    Ok(response)
                }
                Verdict::Refuse(refusal, headers) => {
                    let mut response = shared.refuse.refuse(&refusal);
                    if let Some(h) = headers {
                        merge(response.headers_mut(), h);
                    }
                    if let Some(after) = refusal.retry_after {
                        headers::retry_after(response.headers_mut(), after);
                    }
                    Ok(response)
                }
            }
        })
    }
}
