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
mod key;
mod local;
mod policy;
mod service;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::Response;
use http::request::Parts;

pub use headers::HeaderStyle;
pub use key::{Key, KeySubject, header_key};
pub use policy::{DefaultRefusal, OnFailure, Refusal, RefusalReason, Refuse, RefuseWith};
pub use service::RateLimit;
use service::Shared;

use crate::ratelimit::{MultiLimit, RateLimiter};
use crate::{Error, Result};

/// Builder setters that store their argument in the field of the same name: one line each.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($field:ident: $ty:ty);)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $field;
            self
        }
    )*};
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

    setters! {
        /// Which rate-limit headers to send (default [`HeaderStyle::Ietf`]).
        headers(style: HeaderStyle);
        /// Also send the rate-limit headers on admitted responses (default: only on refusals).
        headers_on_allowed(on_allowed: bool);
        /// The policy when Redis fails or is slower than the deadline (default [`OnFailure::Open`]).
        on_failure(on_failure: OnFailure);
        /// After a failure, how long the layer applies the failure policy without asking Redis
        /// (default 1 s); zero asks Redis on every request.
        retry_redis_after(retry_redis_after: Duration);
        /// The most subjects the in-process fallback tracks (default 100,000).
        fallback_max_keys(fallback_max_keys: usize);
    }

    /// How long one decision may take before the failure policy applies instead (default: the
    /// limits' own deadline, [`DEFAULT_DEADLINE`](crate::ratelimit::DEFAULT_DEADLINE) unless set
    /// with `with_deadline`). Bounds the latency the layer adds to a request whatever Redis does.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.limits = self.limits.with_deadline(deadline);
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
