//! Streams under faults, on real servers: a cluster worker across `CLUSTER FAILOVER` of the
//! stream's own primary (several times) and across a kill of that primary, while producing (it
//! goes on, loses nothing, and a shutdown during the fault is bounded); every producer and
//! admin call against a killed Redis, a black hole, a server answering garbage and one closing
//! every connection (a typed error within the deadline, never a panic); dropping `run` stops
//! every handler it started.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, FakeServer, Server, unique};
use redis::Value;
use redis::aio::ConnectionLike;
use redis_primitives::Error;
use redis_primitives::stream::{
    Delivery, Fields, Producer, Report, Retention, Shutdown, StartFrom, Stream, StreamMessage, Worker,
    WorkerOptions,
};

/// The heavy cluster tests run one at a time (each starts a 6-node cluster of its own).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Ids seen by handlers, with how often each was handled.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, u32>>>);

impl Seen {
    fn record(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_owned()).or_default() += 1;
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
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Running = (Shutdown, tokio::task::JoinHandle<redis_primitives::Result<Report>>);

/// A worker recording every id it handles in `seen`.
fn start_worker(worker: Worker, seen: &Seen) -> Running {
    let seen = seen.clone();
    let shutdown = Shutdown::new();
    let wait = shutdown.wait();
    let handler = move |d: Delivery| {
        let seen = seen.clone();
        async move {
            seen.record(&d.id);
            Ok::<(), String>(())
        }
    };
    (shutdown, tokio::spawn(async move { worker.run(handler, wait).await }))
}

/// Triggers the shutdown; returns the report and how long `run` took to return.
async fn stop(running: Running) -> (Report, Duration) {
    let (shutdown, task) = running;
    let t = Instant::now();
    shutdown.trigger();
    let report = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the shutdown returned within 60 s")
        .expect("the worker task")
        .expect("the worker's report");
    (report, t.elapsed())
}

/// Produces batches of 10 until `stop`, keeping the ids the server acknowledged; an add that
/// failed (the fault) may or may not have landed, and is not counted as produced.
fn start_producer(
    producer: Producer,
    mut con: redis::cluster_async::ClusterConnection,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, u64)> {
    tokio::spawn(async move {
        let (mut ids, mut failed, mut n) = (Vec::new(), 0u64, 0u64);
        while !stop.load(Ordering::SeqCst) {
            let batch: Vec<[(&str, String); 1]> = (0..10).map(|i| [("n", (n + i).to_string())]).collect();
            n += 10;
            match producer.add_many(&mut con, batch).await {
                Ok(got) => ids.extend(got),
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        (ids, failed)
    })
}

const BLOCK: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

fn fault_options() -> WorkerOptions {
    WorkerOptions::default()
        .block(BLOCK)
        .command_timeout(COMMAND_TIMEOUT)
        .min_idle(Duration::from_secs(2))
        .claim_interval(Duration::from_millis(500))
        .concurrency(32)
}

/// What a shutdown may take: the block time plus the command timeout (handlers are instant
/// here), with room for a loaded 2-core machine.
const SHUTDOWN_BOUND: Duration =
    Duration::from_millis(BLOCK.as_millis() as u64 + COMMAND_TIMEOUT.as_millis() as u64 + 1500);

/// Waits until every id in `want` was handled and nothing is pending in the group.
async fn drained(
    stream: &Stream,
    con: &mut (impl ConnectionLike + Send),
    seen: &Seen,
    want: &HashSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = want.difference(&seen.ids()).count();
        let pending = stream.pending(con, "g").await.map(|p| p.total).unwrap_or(u64::MAX);
        if missing == 0 && pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not drained in 60 s: {missing} never handled, {pending} pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every id in the stream now.
async fn ids_in_stream(stream: &Stream, con: &mut (impl ConnectionLike + Send)) -> HashSet<String> {
    let v: Value = redis::cmd("XRANGE").arg(stream.key()).arg("-").arg("+").query_async(con).await.unwrap();
    let Value::Array(entries) = v else { panic!("XRANGE: {v:?}") };
    entries
        .iter()
        .map(|e| match e {
            Value::Array(parts) => redis::from_redis_value_ref::<String>(&parts[0]).unwrap(),
            other => panic!("XRANGE entry: {other:?}"),
        })
        .collect()
}

/// A cluster of its own, a stream being produced into, and worker A consuming it.
struct Scene {
    cluster: Arc<Mutex<Cluster>>,
    client: redis::cluster::ClusterClient,
    con: redis::cluster_async::ClusterConnection,
    stream: Stream,
    seen: Seen,
    a: Running,
    stop_producing: Arc<AtomicBool>,
    produced: tokio::task::JoinHandle<(Vec<String>, u64)>,
}

async fn scene(name: &str) -> Scene {
    let cluster = Cluster::start();
    let client = cluster.client();
    let con = client.get_async_connection().await.unwrap();
    let stream = Stream::new(unique(name)).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1_000_000)).unwrap();
    let seen = Seen::default();
    let a =
        start_worker(Worker::new(client.clone(), stream.clone(), "g", "a", fault_options()).unwrap(), &seen);
    let stop_producing = Arc::new(AtomicBool::new(false));
    let produced = start_producer(producer, con.clone(), stop_producing.clone());
    wait_until("the first entries", Duration::from_secs(20), || seen.total() >= 200).await;
    let cluster = Arc::new(Mutex::new(cluster));
    Scene { cluster, client, con, stream, seen, a, stop_producing, produced }
}

impl Scene {
    /// Another consumer of the group.
    fn worker(&self, consumer: &str) -> Running {
        let worker = Worker::new(self.client.clone(), self.stream.clone(), "g", consumer, fault_options());
        start_worker(worker.unwrap(), &self.seen)
    }

    /// Stops producing; the ids the server acknowledged, and how many adds failed.
    async fn produced(&mut self) -> (Vec<String>, u64) {
        self.stop_producing.store(true, Ordering::SeqCst);
        (&mut self.produced).await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// CLUSTER FAILOVER of the stream's own primary, three times.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_worker_survives_failovers_of_its_own_primary() {
    let _serial = SERIAL.lock().await;
    let mut scene = scene("failover").await;
    let (cluster, seen) = (scene.cluster.clone(), scene.seen.clone());
    let key = scene.stream.key().to_owned();

    let mut shutdowns = Vec::new();
    for round in 1..=3 {
        // A second consumer, shut down while the failover is under way.
        let b = scene.worker(&format!("b{round}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = seen.total();
        let (c, k) = (cluster.clone(), key.clone());
        let old = cluster.lock().unwrap().owners(&key).0;
        let started = Instant::now();
        let failover = tokio::task::spawn_blocking(move || c.lock().unwrap().failover_again(&k));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (report_b, took_b) = stop(b).await;
        let promoted = failover.await.unwrap();
        let failed_over = started.elapsed();
        let (at_done, done) = (seen.total(), Instant::now());
        wait_until("worker A to go on after the failover", Duration::from_secs(20), || {
            seen.total() >= at_done + 300
        })
        .await;
        eprintln!(
            "failover {round}: :{old} -> :{promoted} in {failed_over:?} ({} handled meanwhile); worker A \
             handled 300 more within {:?} after it; worker b{round} shut down during it in {took_b:?}: \
             {report_b:?}",
            at_done - before,
            done.elapsed()
        );
        shutdowns.push(took_b);
    }
    let (ids, failed_adds) = scene.produced().await;
    let want: HashSet<String> = ids.iter().cloned().collect();
    drained(&scene.stream, &mut scene.con, &seen, &want).await;
    let (report_a, took_a) = stop(scene.a).await;
    shutdowns.push(took_a);

    let handled = seen.ids();
    let lost = want.difference(&handled).count();
    let duplicates = seen.total() - handled.len() as u64;
    let max_shutdown = shutdowns.iter().max().copied().unwrap_or_default();
    eprintln!(
        "failovers: produced {} ({failed_adds} adds failed during the faults), handled {}, lost {lost}, \
         duplicates {duplicates}; shutdowns {shutdowns:?} (max {max_shutdown:?}); worker A: {report_a:?}",
        want.len(),
        seen.total()
    );
    assert_eq!(lost, 0, "every acknowledged entry was handled");
    assert!(max_shutdown <= SHUTDOWN_BOUND, "shutdown within block + command timeout: {shutdowns:?}");
    assert!(report_a.errors >= 1, "the failovers were noticed: {report_a:?}");
}

// ---------------------------------------------------------------------------------------------
// A kill of the stream's own primary.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_worker_survives_a_kill_of_its_own_primary() {
    let _serial = SERIAL.lock().await;
    let mut scene = scene("kill").await;
    let (cluster, seen) = (scene.cluster.clone(), scene.seen.clone());
    let key = scene.stream.key().to_owned();
    let b = scene.worker("b");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = seen.total();
    let (c, k) = (cluster.clone(), key.clone());
    let killed_at = Instant::now();
    let kill = tokio::task::spawn_blocking(move || c.lock().unwrap().kill_primary(&k));
    // Shut one consumer down while its primary is dead and not yet replaced.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (report_b, took_b) = stop(b).await;
    let (dead, promoted) = kill.await.unwrap();
    let promoted_after = killed_at.elapsed();
    wait_until("worker A to go on after the kill", Duration::from_secs(30), || seen.total() >= before + 300)
        .await;
    let resumed_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ids, failed_adds) = scene.produced().await;

    // Writes the dead primary acknowledged but never replicated are gone from the stream: lost by
    // Redis (asynchronous replication), not by the worker.
    let in_stream = ids_in_stream(&scene.stream, &mut scene.con).await;
    let want: HashSet<String> = ids.iter().filter(|id| in_stream.contains(*id)).cloned().collect();
    drained(&scene.stream, &mut scene.con, &seen, &want).await;
    let (report_a, took_a) = stop(scene.a).await;

    let handled = seen.ids();
    let lost = want.difference(&handled).count();
    let lost_by_redis = ids.iter().filter(|id| !in_stream.contains(*id) && !handled.contains(*id)).count();
    let duplicates = seen.total() - handled.len() as u64;
    eprintln!(
        "kill of :{}: replica :{promoted} promoted after {promoted_after:?}, worker A resumed after \
         {resumed_after:?}; produced {} ({failed_adds} adds failed), lost by Redis (unreplicated) \
         {lost_by_redis}, handled {}, lost by the worker {lost}, duplicates {duplicates}; worker b shut down \
         during the outage in {took_b:?} ({report_b:?}); worker A shut down in {took_a:?} ({report_a:?})",
        dead.port(),
        ids.len(),
        seen.total()
    );
    assert_eq!(lost, 0, "every entry still in the stream was handled");
    assert!(took_b <= SHUTDOWN_BOUND, "shutdown during the outage: {took_b:?}");
    assert!(took_a <= SHUTDOWN_BOUND, "shutdown after it: {took_a:?}");
    assert!(report_a.errors >= 1, "the kill was noticed: {report_a:?}");
}

// ---------------------------------------------------------------------------------------------
// Every producer and admin call against a server that fails.

struct Typed(&'static str);

impl StreamMessage for Typed {
    type Error = String;
    fn to_fields(&self) -> Fields {
        Fields::new().with("t", self.0)
    }
    fn from_fields(f: &Fields) -> Result<Self, String> {
        f.get_str("t").map(|_| Typed("t")).ok_or_else(|| "no t".into())
    }
}

const DEADLINE: Duration = Duration::from_millis(300);

/// One call against a failing server: how long it took, what it gave, how long it may take.
struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<(), Error>,
    bound: Duration,
}

/// A stream with the deadline, and producers by length and by age.
fn subjects() -> (Stream, Producer, Producer) {
    let stream = Stream::new(unique("fault")).unwrap().with_deadline(DEADLINE);
    let producer = |r| Producer::new(stream.clone(), r).unwrap().with_deadline(DEADLINE);
    let (by_len, by_age) =
        (producer(Retention::MaxLen(100)), producer(Retention::MaxAge(Duration::from_secs(60))));
    (stream, by_len, by_age)
}

/// Every public producer and admin call on `con`: its name, how long it took, its outcome.
async fn every_call_async<C: ConnectionLike + Send>(con: &mut C) -> Vec<Outcome> {
    let (stream, by_len, by_age) = subjects();
    let mut out = Vec::new();
    macro_rules! call {
        ($name:expr, $call:expr) => {{
            let t = Instant::now();
            let result = $call.await.map(drop);
            out.push(Outcome { name: $name, took: t.elapsed(), result, bound: DEADLINE });
        }};
    }
    call!("add", by_len.add(con, [("k", "v")]));
    call!("add (max age)", by_age.add(con, [("k", "v")]));
    call!("add_message", by_len.add_message(con, &Typed("x")));
    call!("add_many", by_len.add_many(con, [[("k", "v")], [("k", "w")]]));
    call!("add_messages", by_len.add_messages(con, &[Typed("x"), Typed("y")]));
    call!("create_group", stream.create_group(con, "g", &StartFrom::Beginning));
    call!("len", stream.len(con));
    call!("dead_len", stream.dead_len(con));
    call!("trim", stream.trim(con, &Retention::MaxLen(10)));
    call!("trim (max age)", stream.trim(con, &Retention::MaxAge(Duration::from_secs(1))));
    call!("pending", stream.pending(con, "g"));
    call!("dead_letters", stream.dead_letters(con, None, 10));
    call!("dead_letter", stream.dead_letter(con, "g", "c", "1-0", "r", None));
    call!("retire_consumer", stream.retire_consumer(con, "g", "c"));
    out
}

/// The same calls' blocking twins.
fn every_call_blocking(con: &mut dyn redis::ConnectionLike) -> Vec<Outcome> {
    let (stream, by_len, by_age) = subjects();
    let mut out = Vec::new();
    macro_rules! call {
        ($name:expr, $call:expr) => {
            call!($name, $call, 1)
        };
        // A blocking pipeline waits out the read timeout once per reply (redis-rs reads every
        // reply of a pipeline, even after a timeout): documented on the blocking twins.
        ($name:expr, $call:expr, $replies:expr) => {{
            let t = Instant::now();
            let result = $call.map(drop);
            out.push(Outcome { name: $name, took: t.elapsed(), result, bound: DEADLINE * $replies });
        }};
    }
    call!("add_blocking", by_len.add_blocking(con, [("k", "v")]));
    call!("add_blocking (max age)", by_age.add_blocking(con, [("k", "v")]));
    call!("add_message_blocking", by_len.add_message_blocking(con, &Typed("x")));
    call!("add_many_blocking", by_len.add_many_blocking(con, [[("k", "v")], [("k", "w")]]), 2);
    call!("add_messages_blocking", by_len.add_messages_blocking(con, &[Typed("x"), Typed("y")]), 2);
    call!("create_group_blocking", stream.create_group_blocking(con, "g", &StartFrom::Beginning));
    call!("len_blocking", stream.len_blocking(con));
    call!("dead_len_blocking", stream.dead_len_blocking(con));
    call!("trim_blocking", stream.trim_blocking(con, &Retention::MaxLen(10)));
    call!("trim_blocking (max age)", stream.trim_blocking(con, &Retention::MaxAge(Duration::from_secs(1))));
    call!("pending_blocking", stream.pending_blocking(con, "g"));
    call!("dead_letters_blocking", stream.dead_letters_blocking(con, None, 10));
    call!("dead_letter_blocking", stream.dead_letter_blocking(con, "g", "c", "1-0", "r", None));
    call!("retire_consumer_blocking", stream.retire_consumer_blocking(con, "g", "c"));
    out
}

/// Checks each outcome: a typed error (never a success against a failing server), within the
/// deadline plus `margin`; returns the largest overshoot past the deadline.
fn check(fault: &str, outcomes: &[Outcome], margin: Duration) -> Duration {
    let mut worst = Duration::ZERO;
    for Outcome { name, took, result, bound } in outcomes {
        match result {
            Err(
                Error::Timeout(_) | Error::Connection(_) | Error::UnexpectedReply { .. } | Error::Redis(_),
            ) => {}
            other => panic!("[{fault}] {name}: expected a connection, timeout or reply error, got {other:?}"),
        }
        assert!(*took <= *bound + margin, "[{fault}] {name} took {took:?}, bound {bound:?}: {result:?}");
        worst = worst.max(took.saturating_sub(*bound));
    }
    worst
}

/// A blocking connection whose round trips are bounded by the deadline (a blocking connection
/// has no read timeout by default: the twins' docs ask for one).
fn blocking_con(client: &redis::Client) -> redis::Connection {
    let con = client.get_connection_with_timeout(DEADLINE).unwrap();
    con.set_read_timeout(Some(DEADLINE)).unwrap();
    con.set_write_timeout(Some(DEADLINE)).unwrap();
    con
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_admin_calls_fail_typed_within_their_deadline_whatever_the_server_does() {
    // A margin for a loaded 2-core machine; the measured overshoot is printed.
    let margin = Duration::from_millis(400);
    let mut worst = Vec::new();

    // Redis killed under open connections: a multiplexed connection, a reconnecting manager (its
    // own reconnect policy takes seconds), and a blocking connection.
    let mut server = Server::start();
    let client = server.client();
    let mut multiplexed = client.get_multiplexed_async_connection().await.unwrap();
    let mut manager = client.get_connection_manager().await.unwrap();
    let mut blocking = blocking_con(&client);
    server.kill();
    worst.push(("killed, multiplexed", check("killed", &every_call_async(&mut multiplexed).await, margin)));
    worst.push(("killed, manager", check("killed", &every_call_async(&mut manager).await, margin)));
    worst.push(("killed, blocking", check("killed", &every_call_blocking(&mut blocking), margin)));

    for (fault, fake) in [
        ("black hole", FakeServer::black_hole()),
        ("garbage", FakeServer::garbage()),
        ("closing", FakeServer::closing()),
    ] {
        let client = fake.client();
        // No response timeout of redis-rs' own: only the call's deadline bounds it.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut con = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
        worst.push((fault, check(fault, &every_call_async(&mut con).await, margin)));
        let mut con = blocking_con(&client);
        worst.push((fault, check(fault, &every_call_blocking(&mut con), margin)));
    }
    let max = worst.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "largest overshoot past the {DEADLINE:?} deadline (a blocking pipeline: past one read timeout per \
         reply): {max:?}; per fault: {worst:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dropping `run`.

/// Counts a handler while its future is alive.
struct Alive(Arc<AtomicU64>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_run_stops_every_handler_it_started() {
    let server = Server::start();
    let client = server.client();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let stream = Stream::new(unique("drop")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(10_000)).unwrap();
    producer.add_many(&mut con, (0..200).map(|i| [("n", i.to_string())])).await.unwrap();

    let (alive, started, steps) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, s, st) = (alive.clone(), started.clone(), steps.clone());
    let handler = move |_d: Delivery| {
        a.fetch_add(1, Ordering::SeqCst);
        s.fetch_add(1, Ordering::SeqCst);
        let (guard, steps) = (Alive(a.clone()), st.clone());
        async move {
            let _guard = guard;
            // Busy on every thread: each step is a poll that may be running when `run` drops.
            while steps.fetch_add(1, Ordering::SeqCst) < u64::MAX {
                std::thread::sleep(Duration::from_micros(200));
                tokio::task::yield_now().await;
            }
            Ok::<(), String>(())
        }
    };
    let options = WorkerOptions::default().block(Duration::from_millis(200)).concurrency(16);
    let worker = Worker::new(client, stream.clone(), "g", "c", options).unwrap();
    let mut run = Box::pin(worker.run(handler, std::future::pending()));
    tokio::select! {
        r = &mut run => panic!("run returned: {r:?}"),
        _ = wait_until("16 handlers", Duration::from_secs(10), || alive.load(Ordering::SeqCst) == 16) => {}
    }
    drop(run);
    let still_running = alive.load(Ordering::SeqCst);
    let steps_at_drop = steps.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let steps_after = steps.load(Ordering::SeqCst) - steps_at_drop;
    eprintln!(
        "dropped run with {} handlers started: {still_running} still running after the drop, {steps_after} \
         handler steps after it",
        started.load(Ordering::SeqCst)
    );
    assert_eq!(still_running, 0, "every handler future was dropped before the drop returned");
    assert_eq!(steps_after, 0, "no handler code ran after the drop");
    let pending = stream.pending(&mut con, "g").await.unwrap();
    let started = started.load(Ordering::SeqCst);
    assert_eq!(
        pending.of("c"),
        started,
        "a crash as far as Redis can tell: the work in flight stays pending"
    );
}
