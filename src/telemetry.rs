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
//!   README (section "Observability"); [`describe`] registers their descriptions with the
//!   installed recorder. Labels never carry a key, a lock name or a subject (unbounded
//!   cardinality): only limiter, segment, stream and group names, script names and fixed words.

// Hooks are called by the areas as they report (some not yet), and their arguments go unused
// without the features.
#![allow(dead_code)]
#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

use std::time::Duration;

use crate::Error;

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

const RATELIMIT_DECISIONS: &str = "redis_primitives_ratelimit_decisions_total";
const LEASE_ACQUIRES: &str = "redis_primitives_lease_acquires_total";
const LEASE_ACQUIRE_SECONDS: &str = "redis_primitives_lease_acquire_seconds";
const LEASE_CONTENTION: &str = "redis_primitives_lease_contention_total";
const LEASE_ORPHAN_RELEASES: &str = "redis_primitives_lease_orphan_releases_total";
const LEASE_RENEWALS: &str = "redis_primitives_lease_renewals_total";
const LEASE_LOSSES: &str = "redis_primitives_lease_losses_total";
const CACHE_LOOKUPS: &str = "redis_primitives_cache_lookups_total";
const CACHE_FILLS: &str = "redis_primitives_cache_fills_total";
const CACHE_FILL_COMPUTE_SECONDS: &str = "redis_primitives_cache_fill_compute_seconds";
const WORKER_EVENTS: &str = "redis_primitives_worker_events_total";
const NOSCRIPT_RELOADS: &str = "redis_primitives_noscript_reloads_total";
const SCRIPT_CALLS: &str = "redis_primitives_script_calls_total";
const SCRIPT_CALL_SECONDS: &str = "redis_primitives_script_call_seconds";
const HTTP_REQUESTS: &str = "redis_primitives_http_requests_total";
const HTTP_LIMITER_ERRORS: &str = "redis_primitives_http_limiter_errors_total";

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

/// Whether a NOSCRIPT was met during a script call, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoScript {
    /// None met.
    None,
    /// Met; the script was loaded and the retry ran.
    Recovered,
    /// Met; the load or the retry failed.
    Failed,
}

impl NoScript {
    #[cfg(feature = "tracing")]
    fn as_str(self) -> &'static str {
        match self {
            NoScript::None => "none",
            NoScript::Recovered => "recovered",
            NoScript::Failed => "failed",
        }
    }
}

/// The span (and metrics) of one script call or one batch pipeline: started before the first
/// send, finished with the outcome. Dropped unfinished (the caller's deadline cut the call, or
/// the future was dropped), it reports the outcome `cancelled`. Without the features it is an
/// empty struct and every method is an inlined no-op.
pub(crate) struct CallSpan<'a> {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    script: &'a str,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    finished: bool,
    #[cfg(not(any(feature = "tracing", feature = "metrics")))]
    _script: std::marker::PhantomData<&'a str>,
}

impl<'a> CallSpan<'a> {
    /// A script call of `script` whose first key is `first_key`.
    #[inline]
    pub(crate) fn script(script: &'a str, first_key: Option<&[u8]>) -> Self {
        #[cfg(feature = "tracing")]
        let span = {
            use tracing::field::Empty;
            let span = tracing::debug_span!(
                target: "redis_primitives::script",
                "script_call",
                script,
                slot = Empty,
                outcome = Empty,
                noscript = Empty,
                round_trips = Empty
            );
            if !span.is_disabled()
                && let Some(key) = first_key
            {
                span.record("slot", key_slot(key));
            }
            span
        };
        CallSpan {
            #[cfg(feature = "tracing")]
            span,
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            script,
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            finished: false,
            #[cfg(not(any(feature = "tracing", feature = "metrics")))]
            _script: std::marker::PhantomData,
        }
    }

    /// A pipeline of `calls` script calls ([`Batch`](crate::script::Batch)): a span only (each
    /// entry is not a call of its own in the metrics).
    #[inline]
    pub(crate) fn batch(calls: usize) -> Self {
        #[cfg(feature = "tracing")]
        let span = {
            use tracing::field::Empty;
            tracing::debug_span!(
                target: "redis_primitives::script",
                "script_batch",
                calls,
                outcome = Empty,
                noscript = Empty,
                round_trips = Empty
            )
        };
        CallSpan {
            #[cfg(feature = "tracing")]
            span,
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
            // An empty name: batches are not counted as script calls in the metrics.
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            script: "",
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            finished: false,
            #[cfg(not(any(feature = "tracing", feature = "metrics")))]
            _script: std::marker::PhantomData,
        }
    }

    /// Runs `f` inside the span (blocking calls).
    #[inline]
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(f)
        }
        #[cfg(not(feature = "tracing"))]
        {
            f()
        }
    }

    /// `fut`, entered in the span whenever it is polled (async calls).
    #[inline]
    pub(crate) fn instrument<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(fut, self.span.clone())
        }
        #[cfg(not(feature = "tracing"))]
        {
            fut
        }
    }

    /// The call ended with `outcome` after `round_trips` round trips.
    #[inline]
    pub(crate) fn finish<T>(mut self, outcome: &crate::Result<T>, round_trips: u32, noscript: NoScript) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            let kind = match outcome {
                Ok(_) => "ok",
                Err(e) => error_kind(e),
            };
            self.finished = true;
            self.report(kind, round_trips, noscript);
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        {
            let _ = (&mut self, outcome, round_trips, noscript);
        }
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn report(&self, kind: &'static str, round_trips: u32, noscript: NoScript) {
        #[cfg(feature = "tracing")]
        {
            self.span.record("outcome", kind);
            if round_trips > 0 {
                self.span.record("round_trips", round_trips);
                self.span.record("noscript", noscript.as_str());
            }
        }
        #[cfg(feature = "metrics")]
        if !self.script.is_empty() {
            metrics::counter!(SCRIPT_CALLS, "script" => self.script.to_owned(), "outcome" => kind)
                .increment(1);
            metrics::histogram!(SCRIPT_CALL_SECONDS, "script" => self.script.to_owned())
                .record(self.started.elapsed().as_secs_f64());
        }
        let _ = (round_trips, noscript, self.script);
    }
}

#[cfg(any(feature = "tracing", feature = "metrics"))]
impl Drop for CallSpan<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.report("cancelled", 0, NoScript::None);
        }
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the bytes between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
#[cfg(any(feature = "tracing", test))]
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_redis_cluster_spec() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"123456789"), 0x31C3); // the spec's CRC16 check value
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}")); // empty tag: whole key
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn metric_names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert!(m.name.starts_with("redis_primitives_"), "{}", m.name);
            let suffix_ok = match m.kind {
                MetricKind::Counter => m.name.ends_with("_total"),
                MetricKind::Histogram => m.name.ends_with("_seconds"),
            };
            assert!(suffix_ok, "{}", m.name);
        }
    }

    #[test]
    fn readme_table_lists_every_metric_and_nothing_else() {
        let readme = include_str!("../README.md");
        let section = readme.split("## Observability").nth(1).expect("README has an Observability section");
        let table: Vec<&str> = section
            .lines()
            .skip_while(|l| !l.starts_with("| metric"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let listed: Vec<String> =
            table.iter().filter_map(|l| l.split('`').nth(1).map(str::to_owned)).collect();
        for m in METRICS {
            let row = table.iter().find(|l| l.contains(&format!("`{}`", m.name)));
            let row = row.unwrap_or_else(|| panic!("{} missing from the README table", m.name));
            for label in m.labels {
                assert!(
                    row.contains(&format!("`{label}`")),
                    "{}: label {label} not in the README row",
                    m.name
                );
            }
        }
        for name in &listed {
            assert!(METRICS.iter().any(|m| m.name == name), "README lists {name}, which is not emitted");
        }
    }
    /// Each hook, under a capturing subscriber and recorder: the events and metrics a service
    /// would receive.
    #[cfg(all(feature = "tracing", feature = "metrics"))]
    #[test]
    fn hooks_emit_events_and_metrics() {
        use harness::telemetry::{Metrics, Traces};
        let (traces, m) = (Traces::new(), Metrics::new());
        tracing::subscriber::with_default(traces.clone(), || {
            metrics::with_local_recorder(&m, || {
                ratelimit_decision("api", true);
                ratelimit_decision("api", false);
                ratelimit_decision("api", false);
                acquire(LeaseKind::Lock, "orders", AcquireOutcome::Acquired, Duration::from_millis(30), 2);
                orphan_release(LeaseKind::Semaphore, "pool", false);
                lease_renewed(LeaseKind::Lock, "orders");
                lease_lost(LeaseKind::Lock, "orders", "expired");
                cache_lookup("users", CacheOutcome::Stale);
                cache_fill("users", FillOutcome::Computed, Duration::from_millis(5));
                worker("orders", "billing", WorkerEvent::Reclaimed, 3);
                worker("orders", "billing", WorkerEvent::DeadLettered, 1);
                noscript("lock.acquire", true);
                http_request("edge", HttpOutcome::FallbackRefused);
                http_limiter_error("edge", &Error::Timeout("x".into()), "local", true);
                http_limiter_recovered("edge");
                describe();
            })
        });
        let c = |name: &str, labels: &[(&str, &str)]| m.counter(name, labels);
        assert_eq!(c(RATELIMIT_DECISIONS, &[("limiter", "api"), ("decision", "allowed")]), 1);
        assert_eq!(c(RATELIMIT_DECISIONS, &[("limiter", "api"), ("decision", "refused")]), 2);
        assert_eq!(c(LEASE_ACQUIRES, &[("kind", "lock"), ("outcome", "acquired")]), 1);
        assert_eq!(m.histogram(LEASE_ACQUIRE_SECONDS, &[("kind", "lock")]), vec![0.03]);
        assert_eq!(c(LEASE_CONTENTION, &[("kind", "lock")]), 2);
        assert_eq!(c(LEASE_ORPHAN_RELEASES, &[("kind", "semaphore"), ("confirmed", "false")]), 1);
        assert_eq!(c(LEASE_RENEWALS, &[("kind", "lock")]), 1);
        assert_eq!(c(LEASE_LOSSES, &[("kind", "lock"), ("reason", "expired")]), 1);
        assert_eq!(c(CACHE_LOOKUPS, &[("segment", "users"), ("outcome", "stale")]), 1);
        assert_eq!(c(CACHE_FILLS, &[("segment", "users"), ("outcome", "computed")]), 1);
        assert_eq!(m.histogram(CACHE_FILL_COMPUTE_SECONDS, &[("segment", "users")]), vec![0.005]);
        assert_eq!(
            c(WORKER_EVENTS, &[("stream", "orders"), ("group", "billing"), ("event", "reclaimed")]),
            3
        );
        assert_eq!(c(WORKER_EVENTS, &[("event", "dead_lettered")]), 1);
        assert_eq!(c(NOSCRIPT_RELOADS, &[("script", "lock.acquire"), ("recovered", "true")]), 1);
        assert_eq!(c(HTTP_REQUESTS, &[("layer", "edge"), ("outcome", "fallback_refused")]), 1);
        assert_eq!(c(HTTP_LIMITER_ERRORS, &[("layer", "edge"), ("error", "timeout")]), 1);
        // Every name emitted is in the table, and describe() covered the whole table.
        for name in m.names() {
            assert!(METRICS.iter().any(|x| x.name == name), "{name} is not in METRICS");
        }
        assert_eq!(m.descriptions().len(), METRICS.len());

        let lost = traces.events_with("lease lost");
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].level, tracing::Level::WARN);
        assert_eq!(lost[0].fields["reason"], "expired");
        assert_eq!(lost[0].fields["name"], "orders");
        assert_eq!(traces.events_with("lease renewed")[0].level, tracing::Level::DEBUG);
        let worker_events = traces.events_with("worker event");
        let level_of = |e: &str| worker_events.iter().find(|x| x.fields["event"] == e).map(|x| x.level);
        assert_eq!(level_of("reclaimed"), Some(tracing::Level::INFO));
        assert_eq!(level_of("dead_lettered"), Some(tracing::Level::WARN));
        assert_eq!(traces.events_with("NOSCRIPT: script loaded again").len(), 1);
        let down = traces.events_with("rate limiter unavailable: applying the failure policy");
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].fields["policy"], "local");
        assert_eq!(traces.events_with("rate limiter available again").len(), 1);
    }

    /// A call span dropped before it finished (a deadline cut the call) reports `cancelled`.
    #[cfg(all(feature = "tracing", feature = "metrics"))]
    #[test]
    fn unfinished_call_span_reports_cancelled() {
        use harness::telemetry::{Metrics, Traces};
        let (traces, m) = (Traces::new(), Metrics::new());
        tracing::subscriber::with_default(traces.clone(), || {
            metrics::with_local_recorder(&m, || {
                drop(CallSpan::script("lock.release", Some(b"lock:{a}")));
                let ok = CallSpan::script("lock.release", Some(b"lock:{a}"));
                ok.finish(&Ok(()), 2, NoScript::Recovered);
            })
        });
        let spans = traces.spans_named("script_call");
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].fields["outcome"], "cancelled");
        assert_eq!(spans[1].fields["outcome"], "ok");
        assert_eq!(spans[1].fields["round_trips"], "2");
        assert_eq!(spans[1].fields["noscript"], "recovered");
        assert_eq!(spans[1].fields["slot"], key_slot(b"a").to_string());
        assert!(spans.iter().all(|s| s.closed));
        assert_eq!(m.counter(SCRIPT_CALLS, &[("script", "lock.release"), ("outcome", "cancelled")]), 1);
        assert_eq!(m.counter(SCRIPT_CALLS, &[("script", "lock.release"), ("outcome", "ok")]), 1);
        assert_eq!(m.histogram(SCRIPT_CALL_SECONDS, &[("script", "lock.release")]).len(), 2);
    }
}
