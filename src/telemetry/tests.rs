//! The hooks under a capturing subscriber and recorder, and the metric table against the README.

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
    let readme = include_str!("../../README.md");
    let section = readme.split("## Observability").nth(1).expect("README has an Observability section");
    let table: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| metric"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let listed: Vec<String> = table.iter().filter_map(|l| l.split('`').nth(1).map(str::to_owned)).collect();
    for m in METRICS {
        let row = table.iter().find(|l| l.contains(&format!("`{}`", m.name)));
        let row = row.unwrap_or_else(|| panic!("{} missing from the README table", m.name));
        for label in m.labels {
            assert!(row.contains(&format!("`{label}`")), "{}: label {label} not in the README row", m.name);
        }
    }
    for name in &listed {
        assert!(METRICS.iter().any(|m| m.name == name), "README lists {name}, which is not emitted");
    }
}
/// Runs `f` under a capturing subscriber and recorder: what a service would receive.
#[cfg(all(feature = "tracing", feature = "metrics"))]
fn captured(f: impl FnOnce()) -> (harness::telemetry::Traces, harness::telemetry::Metrics) {
    let (traces, m) = (harness::telemetry::Traces::new(), harness::telemetry::Metrics::new());
    tracing::subscriber::with_default(traces.clone(), || metrics::with_local_recorder(&m, f));
    (traces, m)
}

/// Each hook, under a capturing subscriber and recorder: the events and metrics a service
/// would receive.
#[cfg(all(feature = "tracing", feature = "metrics"))]
#[test]
fn hooks_emit_events_and_metrics() {
    let (traces, m) = captured(|| {
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
    assert_eq!(c(WORKER_EVENTS, &[("stream", "orders"), ("group", "billing"), ("event", "reclaimed")]), 3);
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
    let (traces, m) = captured(|| {
        drop(CallSpan::script("lock.release", Some(b"lock:{a}")));
        let ok = CallSpan::script("lock.release", Some(b"lock:{a}"));
        ok.finish(&Ok(()), 2, NoScript::Recovered);
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
