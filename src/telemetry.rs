//! Observability hooks: the one place where the areas report what happened. Each hook is a
//! no-op unless the `tracing` feature (events and spans) or the `metrics` feature (counters and
//! histograms through the `metrics` facade) is on, so an area calls them unconditionally and
//! pays nothing without the features. Nothing is logged by default.
//!
//! The metric names are documented in one table in the README (section "Observability").

#![allow(dead_code, unused_variables)] // hooks are filled in by the tracing/metrics features

use std::time::Duration;

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

/// One rate-limit decision of the limiter `limiter` (per limit of a multi-limit call).
pub(crate) fn ratelimit_decision(limiter: &str, allowed: bool) {}

/// An acquire ended: how, after how long, after how many refused attempts (contention).
pub(crate) fn acquire(kind: LeaseKind, name: &str, outcome: AcquireOutcome, waited: Duration, refusals: u32) {
}

/// A release after a failed or cancelled acquire: whether the server confirmed it.
pub(crate) fn orphan_release(kind: LeaseKind, name: &str, confirmed: bool) {}

/// A watchdog renewal succeeded.
pub(crate) fn lease_renewed(kind: LeaseKind, name: &str) {}

/// A holder lost its lease (`reason`: not_held, expired, max_hold).
pub(crate) fn lease_lost(kind: LeaseKind, name: &str, reason: &'static str) {}

/// A cache read's outcome.
pub(crate) fn cache_lookup(segment: &str, outcome: CacheOutcome) {}

/// A fill's outcome for this caller, and how long its compute took (zero when it did not
/// compute).
pub(crate) fn cache_fill(segment: &str, outcome: FillOutcome, compute: Duration) {}

/// `n` worker events of one kind.
pub(crate) fn worker(stream: &str, group: &str, event: WorkerEvent, n: u64) {}

/// A NOSCRIPT was met and the script loaded again (`recovered`: the retry then ran).
pub(crate) fn noscript(script: &str, recovered: bool) {}
