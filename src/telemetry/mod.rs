//! Observability: the one place where the areas report what happened.
//!
//! Each hook is a no-op unless the `tracing` feature (spans and events) or the `metrics` feature
//! (counters and histograms through the [`metrics`](https://docs.rs/metrics) facade, so any
//! exporter works) is on, so an area calls them unconditionally and pays nothing without the
//! features. Nothing is logged by default: events and spans reach only a subscriber the service
//! installs, metrics only a recorder it installs.
//!
//! - **tracing**: one span per script call (`script_call`, target `redis_primitives::script`,
//!   level DEBUG) with the script's name, the key's hash slot, the outcome or error kind, whether a
//!   NOSCRIPT was met and recovered, and the number of server round trips; one span per
//!   [`Batch`](crate::script::Batch) pipeline (`script_batch`); events (target
//!   `redis_primitives::telemetry`) for lease losses (WARN), watchdog renewals (DEBUG), worker
//!   reclaims (INFO) and dead letters (WARN), NOSCRIPT reloads (DEBUG), an HTTP limiter that
//!   became unavailable (WARN) or came back (INFO).
//! - **metrics**: every name, its type and labels are in [`METRICS`], and in one table in the
//!   README (section "Observability"); `describe()` (`metrics` feature) registers their
//!   descriptions with the installed recorder. Labels never carry a key, a lock name or a
//!   subject (unbounded cardinality): only limiter, segment, stream and group names, script
//!   names and fixed words.

// Hooks are called by the areas as they report (some not yet), and their arguments go unused
// without the features.
#![allow(dead_code)]
#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

use std::time::Duration;

use crate::Error;

mod metrics_table;
mod span;
#[cfg(test)]
mod tests;

#[cfg(feature = "metrics")]
pub use metrics_table::describe;
#[allow(unused_imports)] // the metric names, used by the hooks with the `metrics` feature
use metrics_table::*;
pub use metrics_table::{METRICS, Metric, MetricKind};
#[cfg(test)]
use span::key_slot;
pub(crate) use span::{CallSpan, NoScript};

/// Which lease-based primitive an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseKind {
    Lock,
    Semaphore,
    /// A cache fill lease.
    CacheFill,
}

/// How an acquire (lock or semaphore) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireOutcome {
    Acquired,
    /// Held by others when the call gave up (try_acquire, or the timeout passed).
    Held,
    /// The deadline passed with an error or no answer.
    TimedOut,
    Error,
}

/// What a cache read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheOutcome {
    Hit,
    Miss,
    /// A cached "not found".
    NotFound,
    /// A hit whose refresh lease this caller got (XFetch early refresh).
    Refresh,
    /// An entry written under an older version or generation (read as a miss).
    Stale,
}

/// How a fill (`get_or_compute`) ended for this caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillOutcome {
    /// This caller computed and stored.
    Computed,
    /// This caller computed but the write was refused (a bump or delete in between).
    Refused,
    /// The compute failed; the lease was given back.
    Failed,
    /// Another caller filled; this one was served its value.
    Waited,
    /// Waiting for another caller's fill passed the deadline.
    TimedOut,
}

/// A stream worker event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    Handled,
    Failed,
    DeadLettered,
    Reclaimed,
    /// A pending entry whose data was trimmed, cleared.
    Gone,
    /// A transient error that was retried.
    Retried,
    /// The blocking read was abandoned past block time + margin, and the connection replaced.
    ReadAbandoned,
}

/// What the HTTP rate-limit layer did with one request (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpOutcome {
    /// Redis admitted it.
    Allowed,
    /// Redis refused it (429).
    Refused,
    /// The bypass hook let it through unchecked.
    Bypassed,
    /// The key extractor gave no key: not limited.
    Unkeyed,
    /// Its key was refused before sending (bad subject, cost over capacity).
    Invalid,
    /// Redis failed or was too slow; the policy admitted it (fail open).
    FailOpen,
    /// Redis failed or was too slow; the policy refused it (fail closed, 503).
    FailClosed,
    /// Redis failed or was too slow; the in-process fallback admitted it.
    FallbackAllowed,
    /// Redis failed or was too slow; the in-process fallback refused it (429).
    FallbackRefused,
}

impl LeaseKind {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Lock => "lock",
            LeaseKind::Semaphore => "semaphore",
            LeaseKind::CacheFill => "cache_fill",
        }
    }
}

impl AcquireOutcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AcquireOutcome::Acquired => "acquired",
            AcquireOutcome::Held => "held",
            AcquireOutcome::TimedOut => "timed_out",
            AcquireOutcome::Error => "error",
        }
    }
}

impl CacheOutcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::NotFound => "not_found",
            CacheOutcome::Refresh => "refresh",
            CacheOutcome::Stale => "stale",
        }
    }
}

impl FillOutcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FillOutcome::Computed => "computed",
            FillOutcome::Refused => "refused",
            FillOutcome::Failed => "failed",
            FillOutcome::Waited => "waited",
            FillOutcome::TimedOut => "timed_out",
        }
    }
}

impl WorkerEvent {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerEvent::Handled => "handled",
            WorkerEvent::Failed => "failed",
            WorkerEvent::DeadLettered => "dead_lettered",
            WorkerEvent::Reclaimed => "reclaimed",
            WorkerEvent::Gone => "gone",
            WorkerEvent::Retried => "retried",
            WorkerEvent::ReadAbandoned => "read_abandoned",
        }
    }
}

impl HttpOutcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HttpOutcome::Allowed => "allowed",
            HttpOutcome::Refused => "refused",
            HttpOutcome::Bypassed => "bypassed",
            HttpOutcome::Unkeyed => "unkeyed",
            HttpOutcome::Invalid => "invalid",
            HttpOutcome::FailOpen => "fail_open",
            HttpOutcome::FailClosed => "fail_closed",
            HttpOutcome::FallbackAllowed => "fallback_allowed",
            HttpOutcome::FallbackRefused => "fallback_refused",
        }
    }
}

/// The kind of an error, as a span field and a label value: `connection`, `timeout`, `redis`,
/// `script`, `wrong_type`, `unexpected_reply`, `invalid_argument`, `insufficient_capacity`,
/// `compute`, `bundle`.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Connection(_) => "connection",
        Error::Timeout(_) => "timeout",
        Error::Redis(_) => "redis",
        Error::Script { .. } => "script",
        Error::WrongType { .. } => "wrong_type",
        Error::UnexpectedReply { .. } => "unexpected_reply",
        Error::InvalidArgument { .. } => "invalid_argument",
        Error::InsufficientCapacity { .. } => "insufficient_capacity",
        Error::Compute(_) => "compute",
        Error::Bundle(_) => "bundle",
        // An abandoned acquire is labelled by its cause (its clean-up is `orphan_release`).
        Error::Abandoned { error, .. } => error_kind(error),
    }
}

/// One rate-limit decision of the limiter `limiter` (per limit of a multi-limit call).
pub(crate) fn ratelimit_decision(limiter: &str, allowed: bool) {
    let decision = if allowed { "allowed" } else { "refused" };
    #[cfg(feature = "metrics")]
    metrics::counter!(RATELIMIT_DECISIONS, "limiter" => limiter.to_owned(), "decision" => decision)
        .increment(1);
    #[cfg(feature = "tracing")]
    tracing::trace!(limiter, decision, "rate limit decision");
}

/// An acquire ended: how, after how long, after how many refused attempts (contention).
pub(crate) fn acquire(kind: LeaseKind, name: &str, outcome: AcquireOutcome, waited: Duration, refusals: u32) {
    #[cfg(feature = "metrics")]
    {
        let (k, o) = (kind.as_str(), outcome.as_str());
        metrics::counter!(LEASE_ACQUIRES, "kind" => k, "outcome" => o).increment(1);
        metrics::histogram!(LEASE_ACQUIRE_SECONDS, "kind" => k, "outcome" => o).record(waited.as_secs_f64());
        if refusals > 0 {
            metrics::counter!(LEASE_CONTENTION, "kind" => k).increment(u64::from(refusals));
        }
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(
        kind = kind.as_str(),
        name,
        outcome = outcome.as_str(),
        waited_ms = waited.as_millis() as u64,
        refusals,
        "lease acquire"
    );
}

/// A release after a failed or cancelled acquire: whether the server confirmed it.
pub(crate) fn orphan_release(kind: LeaseKind, name: &str, confirmed: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(LEASE_ORPHAN_RELEASES, "kind" => kind.as_str(), "confirmed" => if confirmed { "true" } else { "false" })
        .increment(1);
    #[cfg(feature = "tracing")]
    if confirmed {
        tracing::debug!(kind = kind.as_str(), name, confirmed, "orphan release");
    } else {
        tracing::warn!(kind = kind.as_str(), name, confirmed, "orphan release");
    }
}

/// A watchdog renewal succeeded.
pub(crate) fn lease_renewed(kind: LeaseKind, name: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(LEASE_RENEWALS, "kind" => kind.as_str()).increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(kind = kind.as_str(), name, "lease renewed");
}

/// A holder lost its lease (`reason`: not_held, expired, max_hold).
pub(crate) fn lease_lost(kind: LeaseKind, name: &str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(LEASE_LOSSES, "kind" => kind.as_str(), "reason" => reason).increment(1);
    #[cfg(feature = "tracing")]
    tracing::warn!(kind = kind.as_str(), name, reason, "lease lost");
}

/// A cache read's outcome.
pub(crate) fn cache_lookup(segment: &str, outcome: CacheOutcome) {
    #[cfg(feature = "metrics")]
    metrics::counter!(CACHE_LOOKUPS, "segment" => segment.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
    #[cfg(feature = "tracing")]
    tracing::trace!(segment, outcome = outcome.as_str(), "cache lookup");
}

/// A fill's outcome for this caller, and how long its compute took (zero when it did not
/// compute).
pub(crate) fn cache_fill(segment: &str, outcome: FillOutcome, compute: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(CACHE_FILLS, "segment" => segment.to_owned(), "outcome" => outcome.as_str())
            .increment(1);
        if matches!(outcome, FillOutcome::Computed | FillOutcome::Refused | FillOutcome::Failed) {
            metrics::histogram!(CACHE_FILL_COMPUTE_SECONDS, "segment" => segment.to_owned())
                .record(compute.as_secs_f64());
        }
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(
        segment,
        outcome = outcome.as_str(),
        compute_ms = compute.as_millis() as u64,
        "cache fill"
    );
}

/// `n` worker events of one kind.
pub(crate) fn worker(stream: &str, group: &str, event: WorkerEvent, n: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(WORKER_EVENTS, "stream" => stream.to_owned(), "group" => group.to_owned(), "event" => event.as_str())
        .increment(n);
    #[cfg(feature = "tracing")]
    {
        let e = event.as_str();
        match event {
            WorkerEvent::DeadLettered | WorkerEvent::ReadAbandoned => {
                tracing::warn!(stream, group, event = e, n, "worker event")
            }
            WorkerEvent::Reclaimed | WorkerEvent::Gone => {
                tracing::info!(stream, group, event = e, n, "worker event")
            }
            WorkerEvent::Failed | WorkerEvent::Retried => {
                tracing::debug!(stream, group, event = e, n, "worker event")
            }
            WorkerEvent::Handled => tracing::trace!(stream, group, event = e, n, "worker event"),
        }
    }
}

/// A NOSCRIPT was met and the script loaded again (`recovered`: the retry then ran).
pub(crate) fn noscript(script: &str, recovered: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(NOSCRIPT_RELOADS, "script" => script.to_owned(), "recovered" => if recovered { "true" } else { "false" })
        .increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(script, recovered, "NOSCRIPT: script loaded again");
}

/// The HTTP rate-limit layer `layer` handled a request.
pub(crate) fn http_request(layer: &str, outcome: HttpOutcome) {
    #[cfg(feature = "metrics")]
    metrics::counter!(HTTP_REQUESTS, "layer" => layer.to_owned(), "outcome" => outcome.as_str()).increment(1);
    #[cfg(feature = "tracing")]
    tracing::trace!(layer, outcome = outcome.as_str(), "rate limit layer");
}

/// The HTTP layer `layer` could not get a decision from Redis in time; `policy` was applied.
/// `first`: the first failure after a success (the limiter just became unavailable), which is
/// what gets logged.
pub(crate) fn http_limiter_error(layer: &str, error: &Error, policy: &'static str, first: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(HTTP_LIMITER_ERRORS, "layer" => layer.to_owned(), "error" => error_kind(error))
        .increment(1);
    #[cfg(feature = "tracing")]
    if first {
        tracing::warn!(layer, error = %error, policy, "rate limiter unavailable: applying the failure policy");
    }
}

/// The HTTP layer `layer` got a decision from Redis again after failures.
pub(crate) fn http_limiter_recovered(layer: &str) {
    #[cfg(feature = "tracing")]
    tracing::info!(layer, "rate limiter available again");
}
