//! The service the layer wraps around another: decide, then call the inner service or refuse.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};

use super::{
    BypassFn, DefaultRefusal, Key, KeyFn, OnFailure, Refusal, RefusalReason, Refuse, headers, local,
};
use crate::Error;
use crate::ratelimit::{MultiDecision, MultiLimit, Subject};
use crate::telemetry::{self, HttpOutcome};

/// The service [`RateLimitLayer`](super::RateLimitLayer) wraps around another.
pub struct RateLimit<S, C, R = DefaultRefusal> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared<C, R>>,
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

pub(super) struct Shared<C, R> {
    pub(super) con: C,
    pub(super) limits: MultiLimit,
    pub(super) name: String,
    pub(super) key: Box<KeyFn>,
    pub(super) bypass: Option<Box<BypassFn>>,
    pub(super) refuse: R,
    pub(super) headers: headers::Headers,
    pub(super) on_allowed: bool,
    pub(super) on_failure: OnFailure,
    pub(super) local: Option<local::Local>,
    pub(super) retry_redis_after: Duration,
    /// `down_until` counts milliseconds from here.
    pub(super) base: Instant,
    /// Until when (ms from `base`, +1 so 0 means "up") the layer skips Redis after a failure.
    pub(super) down_until: AtomicU64,
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
