//! What the layer does on failure and on refusal: [`OnFailure`], [`Refusal`] and the hooks.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::Error;
use crate::ratelimit::MultiDecision;

/// What the layer does when Redis fails or does not answer within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Admit the request (no rate-limit headers). Outcome `fail_open`.
    Open,
    /// Refuse with `503 Service Unavailable` and `Retry-After` (the
    /// [`retry_redis_after`](super::Builder::retry_redis_after) period, at least 1 s). Outcome
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
    /// capped at [`Builder::fallback_max_keys`](super::Builder::fallback_max_keys) subjects (then new
    /// subjects are refused).
    Local {
        /// How many replicas share the limit (at least 1).
        replicas: u32,
    },
}

impl OnFailure {
    pub(super) fn name(&self) -> &'static str {
        match self {
            OnFailure::Open => "open",
            OnFailure::Closed => "closed",
            OnFailure::Local { .. } => "local",
        }
    }
}

/// Why the layer refused a request: what the [refusal hook](super::Builder::on_refusal) is given.
#[derive(Debug)]
pub struct Refusal {
    pub(super) reason: RefusalReason,
    pub(super) decision: Option<MultiDecision>,
    pub(super) error: Option<Error>,
    pub(super) retry_after: Option<Duration>,
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

/// A refusal hook from a closure ([`Builder::on_refusal`](super::Builder::on_refusal)).
#[derive(Clone)]
pub struct RefuseWith<F>(pub(super) F);

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
