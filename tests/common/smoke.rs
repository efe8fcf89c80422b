//! Every primitive once, through its public API: what the ACL test runs as a restricted user and
//! the compatibility tests run on every server (Redis 6.2, 7, Valkey). A call that a server or a
//! user's rights cannot serve fails the smoke with the primitive's name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis_primitives::cache::{Cache, Entry, Stored};
use redis_primitives::lock::{Acquire, FencedWrite, Lock, Released, Semaphore};
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, SlidingWindow, Subject};
use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};

use super::unique;

/// Runs every primitive on `client`'s server (standalone), async and blocking.
pub async fn every_primitive(client: &redis::Client) {
    let mut con = client.get_multiplexed_async_connection().await.expect("connect");
    let mut blocking = client.get_connection().expect("connect (blocking)");
    let minute = Duration::from_secs(60);

    // Rate limits: both algorithms, peek, reset, wait, several limits at once, a blocking twin.
    let tag = unique("smoke");
    let sw = RateLimiter::new("api", SlidingWindow::new(2, minute).unwrap()).unwrap();
    let g = RateLimiter::new("g", Gcra::new(5, Duration::from_secs(1)).unwrap()).unwrap();
    assert!(sw.check(&mut con, tag.as_str(), 1).await.expect("ratelimit check").allowed);
    assert!(sw.peek(&mut con, tag.as_str(), 1).await.expect("ratelimit peek").allowed);
    sw.reset(&mut con, tag.as_str()).await.expect("ratelimit reset");
    assert!(g.check_blocking(&mut blocking, tag.as_str(), 1).expect("ratelimit check_blocking").allowed);
    assert!(g.wait(&mut con, tag.as_str(), 1, Duration::from_secs(1)).await.expect("ratelimit wait").allowed);
    let per_user = RateLimiter::new("user", SlidingWindow::new(2, minute).unwrap()).unwrap();
    let both = MultiLimit::new().with(per_user).with(sw.clone());
    let subjects = [Subject::new("ann").in_scope(&tag), Subject::new(&tag)];
    assert!(both.check(&mut con, subjects, 1).await.expect("ratelimit multi").allowed);

    // Locks: acquire, fenced write, extend, release; semaphores; the blocking twins.
    let lock = Lock::new(unique("res"), Duration::from_secs(5)).unwrap();
    let Acquire::Acquired(guard) =
        lock.acquire(&mut con, Duration::from_secs(1)).await.expect("lock acquire")
    else {
        panic!("a fresh lock is free");
    };
    assert_eq!(guard.fenced_write(b"v", None).await.expect("lock fenced_write"), FencedWrite::Written);
    assert!(guard.extend(Duration::from_secs(5)).await.expect("lock extend").is_extended());
    assert_eq!(guard.release().await.expect("lock release"), Released::Yes);
    let Acquire::Acquired(bguard) =
        lock.try_acquire_blocking(&mut blocking).expect("lock try_acquire_blocking")
    else {
        panic!("a released lock is free");
    };
    assert_eq!(bguard.release_blocking(&mut blocking).expect("lock release_blocking"), Released::Yes);
    let sem = Semaphore::new(unique("sem"), 2, Duration::from_secs(5)).unwrap();
    let permit =
        sem.try_acquire(&mut con).await.expect("semaphore acquire").acquired().expect("a free permit");
    assert!(permit.extend(Duration::from_secs(5)).await.expect("semaphore extend").is_extended());
    assert_eq!(permit.release().await.expect("semaphore release"), Released::Yes);

    // Cache: fill once, read, compare-and-set, invalidate, delete.
    let cache = Cache::new(unique("seg")).unwrap();
    let v = cache
        .get_or_compute(&mut con, "k", minute, || async { Ok::<_, std::io::Error>(Some(b"v".to_vec())) })
        .await
        .expect("cache get_or_compute");
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    let read = cache.get(&mut con, "k").await.expect("cache get");
    assert_eq!(read.entry, Entry::Hit(b"v".to_vec()));
    assert_eq!(
        cache.set(&mut con, "k", b"w", minute, read.version).await.expect("cache set"),
        Stored::Stored
    );
    cache.invalidate(&mut con).await.expect("cache invalidate");
    cache.delete_blocking(&mut blocking, "k").expect("cache delete_blocking");

    // Streams: produce, consume with a worker (one poison message dead-lettered), retire.
    let stream = Stream::new(unique("s")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    for i in 0..10 {
        producer.add(&mut con, [("n", i.to_string())]).await.expect("stream add");
    }
    let opts =
        WorkerOptions::default().block(Duration::from_millis(300)).max_deliveries(1).retire_on_shutdown(true);
    let worker = Worker::new(client.clone(), stream.clone(), "g", "w1", opts).unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let done = Arc::new(AtomicU64::new(0));
    let seen = done.clone();
    let run = tokio::spawn(async move {
        let handler = move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if d.fields.get_str("n") == Some("3") { Err("poison".to_owned()) } else { Ok(()) }
            }
        };
        worker.run(handler, stop.wait()).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.dead_len(&mut con).await.expect("stream dead_len") < 1 || done.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "the worker did not handle the 10 entries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let report = run.await.unwrap().expect("stream worker");
    assert_eq!((report.acked, report.dead_lettered, report.errors), (9, 1, 0), "{report:?}");
    assert!(report.retired, "{report:?}");
}
