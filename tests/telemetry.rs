//! The `tracing` and `metrics` features against real servers: the span of each script call (its
//! slot as the cluster computes it, outcome, NOSCRIPT recovery, round trips), the metrics of
//! rate-limit decisions and NOSCRIPT reloads. A capturing subscriber and recorder (the harness')
//! stand in for a service's own; both are scoped to the test's thread (current-thread runtimes),
//! so tests running side by side do not see each other's spans.

mod common;

use std::time::Duration;

use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::script::{Batch, ScriptCall};
use redis_primitives::{Error, telemetry};

use common::telemetry::{Metrics, Traces};
use common::{Server, shared_cluster, unique};

fn capture() -> (Traces, Metrics, tracing::subscriber::DefaultGuard) {
    let (traces, m) = (Traces::new(), Metrics::new());
    let guard = tracing::subscriber::set_default(traces.clone());
    (traces, m, guard)
}

#[tokio::test]
async fn one_span_per_script_call_with_slot_outcome_noscript_and_round_trips() {
    let cluster = shared_cluster();
    let mut con = cluster.client().get_async_connection().await.unwrap();
    let name = unique("spans");
    let limiter = RateLimiter::new(&name, SlidingWindow::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    let subject = unique("subject");
    // Loaded on the key's node before capturing: the first captured call meets no NOSCRIPT.
    limiter.peek(&mut con, subject.as_str(), 1).await.unwrap();
    let (traces, m, _guard) = capture();
    let _recorder = metrics::set_default_local_recorder(&m);
    let key = limiter.key(subject.as_str()).unwrap();
    let (owner, _) = cluster.owners(&key);

    for _ in 0..3 {
        limiter.check(&mut con, subject.as_str(), 1).await.unwrap();
    }
    // The script cache lost on the node that owns the key: the next call meets NOSCRIPT.
    let _: String = cluster.node(owner).cmd(&["SCRIPT", "FLUSH"]);
    limiter.check(&mut con, subject.as_str(), 1).await.unwrap();

    let spans = traces.spans_named("script_call");
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let slot: i64 = cluster.nodes[0].cmd(&["CLUSTER", "KEYSLOT", &key]);
    for s in &spans {
        assert_eq!(s.target, "redis_primitives::script");
        assert_eq!(s.level, tracing::Level::DEBUG);
        assert_eq!(s.fields["script"], "ratelimit.sliding_window");
        assert_eq!(s.fields["slot"], slot.to_string(), "the slot CLUSTER KEYSLOT gives");
        assert_eq!(s.fields["outcome"], "ok");
        assert!(s.closed);
    }
    assert_eq!(
        (spans[0].fields["round_trips"].as_str(), spans[0].fields["noscript"].as_str()),
        ("1", "none")
    );
    assert_eq!(
        (spans[3].fields["round_trips"].as_str(), spans[3].fields["noscript"].as_str()),
        ("2", "recovered")
    );
    let reload = traces.events_with("NOSCRIPT: script loaded again");
    assert_eq!(reload.len(), 1);
    assert_eq!(reload[0].fields["script"], "ratelimit.sliding_window");

    let decisions = |d: &str| {
        m.counter("redis_primitives_ratelimit_decisions_total", &[("limiter", &name), ("decision", d)])
    };
    assert_eq!((decisions("allowed"), decisions("refused")), (2, 2));
    let reloads = m.counter(
        "redis_primitives_noscript_reloads_total",
        &[("script", "ratelimit.sliding_window"), ("recovered", "true")],
    );
    assert_eq!(reloads, 1);
    let calls = m.counter(
        "redis_primitives_script_calls_total",
        &[("script", "ratelimit.sliding_window"), ("outcome", "ok")],
    );
    assert_eq!(calls, 4);
    let durations =
        m.histogram("redis_primitives_script_call_seconds", &[("script", "ratelimit.sliding_window")]);
    assert_eq!(durations.len(), 4);
    assert!(durations.iter().all(|s| *s > 0.0 && *s < 5.0), "{durations:?}");
    for name in m.names() {
        assert!(telemetry::METRICS.iter().any(|x| x.name == name), "{name} is emitted but not documented");
    }
}

#[tokio::test]
async fn error_kinds_and_calls_cut_at_the_deadline() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    redis_primitives::script::preload_async(&mut con).await.unwrap();
    let (traces, m, _guard) = capture();
    let _recorder = metrics::set_default_local_recorder(&m);
    let limiter = RateLimiter::new("errors", SlidingWindow::new(5, Duration::from_secs(60)).unwrap())
        .unwrap()
        .with_deadline(Duration::from_millis(200));

    // A key of the wrong type: the span carries the error kind the caller got.
    let _: () = server.cmd(&["SET", &limiter.key("s").unwrap(), "x"]);
    let err = limiter.check(&mut con, "s", 1).await.unwrap_err();
    let kind = match err {
        Error::WrongType { .. } => "wrong_type",
        Error::Script { .. } => "script",
        other => panic!("unexpected {other:?}"),
    };
    // Silent server: the limiter's deadline cuts the call; the span says so.
    let _: String = server.cmd(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let err = limiter.check(&mut con, "t", 1).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");

    let spans = traces.spans_named("script_call");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0].fields["outcome"], kind);
    assert_eq!(spans[0].fields["round_trips"], "1");
    assert_eq!(spans[1].fields["outcome"], "cancelled");
    assert!(spans.iter().all(|s| s.closed));
    let outcome = |o: &str| {
        m.counter(
            "redis_primitives_script_calls_total",
            &[("script", "ratelimit.sliding_window"), ("outcome", o)],
        )
    };
    assert_eq!((outcome(kind), outcome("cancelled")), (1, 1));
}

#[tokio::test]
async fn a_batch_is_one_span_and_recovers_noscript_in_two_round_trips() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let (traces, _m, _guard) = capture();
    let limiter = RateLimiter::new("batch", SlidingWindow::new(5, Duration::from_secs(60)).unwrap()).unwrap();
    let batch: Batch<_> = ["a", "b", "c"].iter().map(|s| limiter.check_call(*s, 1).unwrap()).collect();
    // Nothing loaded yet on this fresh server: the whole batch meets NOSCRIPT once.
    for r in batch.query_async(&mut con).await.unwrap() {
        assert!(r.unwrap().allowed);
    }
    // A single call is a span too, inside nothing else.
    limiter.check_call("d", 1).unwrap().query_async(&mut con).await.unwrap();
    let batches = traces.spans_named("script_batch");
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].fields["calls"], "3");
    assert_eq!(batches[0].fields["outcome"], "ok");
    assert_eq!(batches[0].fields["round_trips"], "2");
    assert_eq!(batches[0].fields["noscript"], "recovered");
    assert_eq!(traces.spans_named("script_call").len(), 1);
}

#[test]
fn describe_registers_every_metric() {
    let m = Metrics::new();
    metrics::with_local_recorder(&m, telemetry::describe);
    let described = m.descriptions();
    for metric in telemetry::METRICS {
        assert_eq!(described.get(metric.name).map(String::as_str), Some(metric.help));
    }
}

/// A stream worker's events reach the metrics (equal to its own report) and the log: a poison
/// message reclaimed and dead-lettered.
#[tokio::test]
async fn worker_reclaims_and_dead_letters_are_counted_and_logged() {
    use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};

    let server = Server::start();
    let client = server.client();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let name = unique("telemetry-stream");
    let stream = Stream::new(&name).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    for i in 0..5 {
        producer.add(&mut con, [("n", i.to_string())]).await.unwrap();
    }
    // The worker's tasks run on this thread (current-thread runtime): the scoped subscriber and
    // recorder see them.
    let (traces, m, _guard) = capture();
    let _recorder = metrics::set_default_local_recorder(&m);
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(200))
        .max_deliveries(2)
        .min_idle(Duration::from_millis(100))
        .claim_interval(Duration::from_millis(50));
    let connector: redis_primitives::stream::Connector = client.into();
    let worker = Worker::new(connector, stream.clone(), "g", "c1", opts).unwrap();
    let shutdown = Shutdown::new();
    let wait = shutdown.wait();
    let task = tokio::spawn(async move {
        worker
            .run(
                |d: Delivery| async move {
                    if d.fields.get_str("n") == Some("3") { Err("poison".to_owned()) } else { Ok(()) }
                },
                wait,
            )
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while stream.dead_len(&mut con).await.unwrap() < 1 {
        assert!(std::time::Instant::now() < deadline, "the poison message was not dead-lettered in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let report = task.await.unwrap().unwrap();

    let count = |event: &str| {
        m.counter(
            "redis_primitives_worker_events_total",
            &[("stream", &name), ("group", "g"), ("event", event)],
        )
    };
    assert_eq!(count("dead_lettered"), 1);
    assert_eq!(
        (count("handled"), count("failed"), count("reclaimed"), count("dead_lettered")),
        (report.processed, report.failed, report.reclaimed, report.dead_lettered),
        "the metrics equal the worker's own report: {report:?}"
    );
    assert!(report.reclaimed >= 1, "the failed delivery came back through reclaim: {report:?}");
    let events = traces.events_with("worker event");
    let level = |event: &str| {
        events.iter().find(|e| e.fields["event"] == event && e.fields["stream"] == name).map(|e| e.level)
    };
    assert_eq!(level("dead_lettered"), Some(tracing::Level::WARN));
    assert_eq!(level("reclaimed"), Some(tracing::Level::INFO));
}
