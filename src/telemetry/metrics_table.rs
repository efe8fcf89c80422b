//! The metric names, types and labels: [`METRICS`], the README table's source.

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic count.
    Counter,
    /// A distribution (seconds).
    Histogram,
}

/// One metric this crate emits with the `metrics` feature.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name.
    pub name: &'static str,
    /// Counter or histogram.
    pub kind: MetricKind,
    /// The label names.
    pub labels: &'static [&'static str],
    /// What it counts or measures.
    pub help: &'static str,
}

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: MetricKind::Counter, labels, help }
}

const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: MetricKind::Histogram, labels, help }
}

pub(super) const RATELIMIT_DECISIONS: &str = "redis_primitives_ratelimit_decisions_total";
pub(super) const LEASE_ACQUIRES: &str = "redis_primitives_lease_acquires_total";
pub(super) const LEASE_ACQUIRE_SECONDS: &str = "redis_primitives_lease_acquire_seconds";
pub(super) const LEASE_CONTENTION: &str = "redis_primitives_lease_contention_total";
pub(super) const LEASE_ORPHAN_RELEASES: &str = "redis_primitives_lease_orphan_releases_total";
pub(super) const LEASE_RENEWALS: &str = "redis_primitives_lease_renewals_total";
pub(super) const LEASE_LOSSES: &str = "redis_primitives_lease_losses_total";
pub(super) const CACHE_LOOKUPS: &str = "redis_primitives_cache_lookups_total";
pub(super) const CACHE_FILLS: &str = "redis_primitives_cache_fills_total";
pub(super) const CACHE_FILL_COMPUTE_SECONDS: &str = "redis_primitives_cache_fill_compute_seconds";
pub(super) const WORKER_EVENTS: &str = "redis_primitives_worker_events_total";
pub(super) const NOSCRIPT_RELOADS: &str = "redis_primitives_noscript_reloads_total";
pub(super) const SCRIPT_CALLS: &str = "redis_primitives_script_calls_total";
pub(super) const SCRIPT_CALL_SECONDS: &str = "redis_primitives_script_call_seconds";
pub(super) const HTTP_REQUESTS: &str = "redis_primitives_http_requests_total";
pub(super) const HTTP_LIMITER_ERRORS: &str = "redis_primitives_http_limiter_errors_total";

/// Every metric this crate emits (with the `metrics` feature): the source of the README's table
/// (a test keeps the two equal).
pub const METRICS: &[Metric] = &[
    counter(
        RATELIMIT_DECISIONS,
        &["limiter", "decision"],
        "Rate-limit decisions per limiter (each limit of a multi-limit call counts); decision: allowed, refused.",
    ),
    counter(
        LEASE_ACQUIRES,
        &["kind", "outcome"],
        "Lock and semaphore acquires that ended; kind: lock, semaphore; outcome: acquired, held, timed_out, error.",
    ),
    histogram(
        LEASE_ACQUIRE_SECONDS,
        &["kind", "outcome"],
        "How long an acquire took, waiting included (seconds).",
    ),
    counter(
        LEASE_CONTENTION,
        &["kind"],
        "Refused attempts (held by others) before acquires ended: contention.",
    ),
    counter(
        LEASE_ORPHAN_RELEASES,
        &["kind", "confirmed"],
        "Releases after a failed or cancelled acquire; confirmed: whether the server answered.",
    ),
    counter(LEASE_RENEWALS, &["kind"], "Watchdog renewals that succeeded."),
    counter(LEASE_LOSSES, &["kind", "reason"], "Leases a holder lost; reason: not_held, expired, max_hold."),
    counter(
        CACHE_LOOKUPS,
        &["segment", "outcome"],
        "Cache reads; outcome: hit, miss, not_found, refresh, stale.",
    ),
    counter(
        CACHE_FILLS,
        &["segment", "outcome"],
        "Fills (get_or_compute) per caller; outcome: computed, refused, failed, waited, timed_out.",
    ),
    histogram(
        CACHE_FILL_COMPUTE_SECONDS,
        &["segment"],
        "How long the caller's compute took, for fills that computed (seconds).",
    ),
    counter(
        WORKER_EVENTS,
        &["stream", "group", "event"],
        "Stream worker events; event: handled, failed, dead_lettered, reclaimed, gone, retried, read_abandoned.",
    ),
    counter(
        NOSCRIPT_RELOADS,
        &["script", "recovered"],
        "NOSCRIPT replies met and the script loaded again; recovered: whether the retry then ran.",
    ),
    counter(
        SCRIPT_CALLS,
        &["script", "outcome"],
        "Script calls (EVALSHA); outcome: ok, cancelled, or the error kind.",
    ),
    histogram(
        SCRIPT_CALL_SECONDS,
        &["script"],
        "Duration of a script call, NOSCRIPT recovery included (seconds).",
    ),
    counter(
        HTTP_REQUESTS,
        &["layer", "outcome"],
        "Requests through a RateLimitLayer; outcome: allowed, refused, bypassed, unkeyed, invalid, fail_open, fail_closed, fallback_allowed, fallback_refused.",
    ),
    counter(
        HTTP_LIMITER_ERRORS,
        &["layer", "error"],
        "Decisions of a RateLimitLayer that Redis could not make in time (the failure policy applied); error: the error kind.",
    ),
];

/// Registers the description of every metric in [`METRICS`] with the installed recorder (so an
/// exporter can show help texts and units). Optional; call it once after installing a recorder.
#[cfg(feature = "metrics")]
pub fn describe() {
    for m in METRICS {
        let unit = m.name.ends_with("_seconds").then_some(metrics::Unit::Seconds);
        match (m.kind, unit) {
            (MetricKind::Counter, _) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
