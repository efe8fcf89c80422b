//! Locks and semaphores under faults, against real servers (and fake ones that misbehave on
//! purpose): Redis killed mid-run (standalone, and a cluster primary), a black hole, a garbage
//! server and a closing socket for every public call, CLIENT PAUSE past a lock's TTL with the
//! watchdog, replies lost after the server ran the call, cancelled acquires, data loss under
//! fencing tokens, extreme arguments, and blocking calls against a silent server.
//!
//! Every figure the README and the docs promise is measured here and printed: run with
//! `--nocapture` to see the maximum time past each timeout, overlaps, stale writes accepted and
//! orphaned locks.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, FakeServer, Proxy, ProxyMode, Server, dead_url, quiet_client, unique};
use redis::aio::ConnectionLike;
use redis_primitives::Error;
use redis_primitives::lock::call::{
    LockAcquire, LockExtend, LockFencedWrite, LockRelease, SemaphoreAcquire, SemaphoreExtend,
    SemaphoreRelease,
};
use redis_primitives::lock::{
    Acquire, Backoff, CLEANUP_MARGIN, FencedWrite, Lock, LockKeys, Released, Semaphore, semaphore_key,
};
use redis_primitives::script::{Id, ScriptCall};

const MS: Duration = Duration::from_millis(1);

/// Scheduling slack on a loaded 2-core machine, on top of the documented bound.
const SLACK: Duration = Duration::from_millis(100);

/// The most a call may take past its timeout or deadline: the documented clean-up margin, plus
/// slack.
fn margin() -> Duration {
    CLEANUP_MARGIN + SLACK
}

/// An error a caller can act on: a timeout, a connection error, a reply that is not Redis's, a
/// server error (also as the cause of an abandoned acquire). Never an argument error here.
fn typed(e: &Error) -> bool {
    match e {
        Error::Abandoned { error, .. } => typed(error),
        Error::Timeout(_) | Error::Connection(_) | Error::UnexpectedReply { .. } | Error::Redis(_) => true,
        // The script's own refusal (BADARG) and a key of another type are typed too.
        Error::Script { .. } | Error::WrongType { .. } => true,
        _ => false,
    }
}

/// Per call: how many, how many failed, and the longest time past its bound.
#[derive(Default)]
struct Stats {
    calls: Mutex<BTreeMap<&'static str, (u64, u64, Duration)>>,
    untyped: Mutex<Vec<String>>,
}

impl Stats {
    fn record<T>(&self, name: &'static str, started: Instant, bound: Duration, r: &Result<T, Error>) {
        let over = started.elapsed().saturating_sub(bound);
        let mut calls = self.calls.lock().unwrap();
        let e = calls.entry(name).or_default();
        e.0 += 1;
        e.2 = e.2.max(over);
        if let Err(err) = r {
            e.1 += 1;
            if !typed(err) {
                self.untyped.lock().unwrap().push(format!("{name}: {err:?}"));
            }
        }
    }

    /// Prints the table and asserts every call stayed within its bound + `allowed`.
    fn check(&self, what: &str, allowed: Duration) -> Duration {
        let calls = self.calls.lock().unwrap();
        let worst = calls.values().map(|c| c.2).max().unwrap_or_default();
        for (name, (n, failed, over)) in calls.iter() {
            println!("[{what}] {name:<32} {n:>5} calls, {failed:>5} failed, max {over:>9.1?} past its bound");
        }
        println!("[{what}] max time past a timeout or deadline: {worst:.1?} (allowed {allowed:?})");
        assert!(
            self.untyped.lock().unwrap().is_empty(),
            "{what}: untyped errors {:?}",
            self.untyped.lock().unwrap()
        );
        for (name, (_, _, over)) in calls.iter() {
            assert!(*over <= allowed, "{what}: {name} took {over:?} past its bound");
        }
        worst
    }

    fn count(&self, name: &str) -> (u64, u64) {
        self.calls.lock().unwrap().get(name).map(|c| (c.0, c.1)).unwrap_or_default()
    }
}

/// Times one call against `bound` under `name`.
macro_rules! timed {
    ($stats:expr, $name:expr, $bound:expr, $call:expr) => {{
        let started = Instant::now();
        let r = $call;
        $stats.record($name, started, $bound, &r);
        r
    }};
}

/// Every async call of locks and semaphores, round after round, until `stop`.
async fn workload<C>(mut con: C, lock: Lock, sem: Semaphore, stop: Arc<AtomicBool>, stats: Arc<Stats>)
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let timeout = 400 * MS;
    let deadline = lock.deadline();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let got = if round.is_multiple_of(2) {
            timed!(stats, "Lock::acquire", timeout, lock.acquire(&mut con, timeout).await)
        } else {
            timed!(stats, "Lock::try_acquire", deadline, lock.try_acquire(&mut con).await)
        };
        if let Ok(Acquire::Acquired(g)) = got {
            let fence = g.fencing_token();
            let _ = timed!(stats, "Guard::fenced_write", deadline, g.fenced_write(b"v", None).await);
            let _ = timed!(stats, "Guard::extend", deadline, g.extend(Duration::from_secs(2)).await);
            let _ = timed!(stats, "Guard::release", deadline, g.release().await);
            let _ = timed!(
                stats,
                "Lock::fenced_write",
                deadline,
                lock.fenced_write(&mut con, fence, b"w", None).await
            );
        }
        let got = if round.is_multiple_of(2) {
            timed!(stats, "Semaphore::acquire", timeout, sem.acquire(&mut con, timeout).await)
        } else {
            timed!(stats, "Semaphore::try_acquire", deadline, sem.try_acquire(&mut con).await)
        };
        if let Ok(Acquire::Acquired(p)) = got {
            let _ = timed!(stats, "Permit::extend", deadline, p.extend(Duration::from_secs(2)).await);
            let _ = timed!(stats, "Permit::release", deadline, p.release().await);
        }
        tokio::time::sleep(2 * MS).await;
    }
}

/// The blocking twins, round after round, on a connection with read/write timeouts `io`.
fn blocking_workload(
    mut con: redis::Connection,
    io: Duration,
    lock: Lock,
    sem: Semaphore,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) {
    let timeout = 400 * MS;
    // A blocking call cannot be cut: its bound includes one read timeout.
    let (t_bound, d_bound) = (timeout + io, lock.deadline() + io);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let got = if round.is_multiple_of(2) {
            timed!(stats, "Lock::acquire_blocking", t_bound, lock.acquire_blocking(&mut con, timeout))
        } else {
            timed!(stats, "Lock::try_acquire_blocking", d_bound, lock.try_acquire_blocking(&mut con))
        };
        if let Ok(Acquire::Acquired(g)) = got {
            let _ = timed!(
                stats,
                "BlockingGuard::fenced_write",
                d_bound,
                g.fenced_write_blocking(&mut con, b"b", None)
            );
            let _ = timed!(
                stats,
                "BlockingGuard::extend",
                d_bound,
                g.extend_blocking(&mut con, Duration::from_secs(2))
            );
            let _ = timed!(stats, "BlockingGuard::release", d_bound, g.release_blocking(&mut con));
        }
        if let Ok(Acquire::Acquired(p)) =
            timed!(stats, "Semaphore::acquire_blocking", t_bound, sem.acquire_blocking(&mut con, timeout))
        {
            let _ = timed!(stats, "BlockingPermit::release", d_bound, p.release_blocking(&mut con));
        }
        std::thread::sleep(2 * MS);
    }
}

fn blocking_con(url: &str, io: Duration) -> redis::Connection {
    let con = redis::Client::open(url).unwrap().get_connection_with_timeout(io).unwrap();
    con.set_read_timeout(Some(io)).unwrap();
    con.set_write_timeout(Some(io)).unwrap();
    con
}

fn primitives(deadline: Duration) -> (Lock, Semaphore) {
    let lock = Lock::new(unique("killed"), Duration::from_secs(2)).unwrap().with_deadline(deadline);
    let sem =
        Semaphore::new(unique("killed-sem"), 2, Duration::from_secs(2)).unwrap().with_deadline(deadline);
    (lock, sem)
}

/// Redis is killed while tasks run every call, on a `ConnectionManager` (which reconnects and
/// took ~9.5 s per call to fail), a multiplexed connection and a blocking connection: every
/// timed call still returns within its timeout + the clean-up margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timed_call_returns_in_time_when_redis_is_killed() {
    let mut server = Server::start();
    let client = server.client();
    let (lock, sem) = primitives(300 * MS);
    let (stop, stats) = (Arc::new(AtomicBool::new(false)), Arc::new(Stats::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let manager = client.get_connection_manager().await.unwrap();
        tasks.spawn(workload(manager, lock.clone(), sem.clone(), stop.clone(), stats.clone()));
        let mux = client.get_multiplexed_async_connection().await.unwrap();
        tasks.spawn(workload(mux, lock.clone(), sem.clone(), stop.clone(), stats.clone()));
    }
    let io = 200 * MS;
    let bstats = Arc::new(Stats::default());
    let blocking = {
        let (con, lock, sem, stop, stats) =
            (blocking_con(&server.url(), io), lock.clone(), sem.clone(), stop.clone(), bstats.clone());
        tokio::task::spawn_blocking(move || blocking_workload(con, io, lock, sem, stop, stats))
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = stats.count("Lock::acquire");
    server.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    tasks.join_all().await;
    blocking.await.unwrap();
    let after = stats.count("Lock::acquire");
    assert!(before.0 > before.1, "some acquires ran before the kill: {before:?}");
    assert!(after.1 - before.1 >= 4, "acquires failed after the kill: {before:?} -> {after:?}");
    stats.check("killed standalone", margin());
    // A blocking call cannot be cut: past its bound (which counts one read timeout), the
    // clean-up release may take one more read timeout.
    bstats.check("killed standalone, blocking", margin() + io);
}

/// A cluster primary (the one holding the lock's slot) is killed mid-run, and its replica is
/// promoted: every timed call returns within its timeout + the clean-up margin throughout, and
/// the lock works again once the replica serves the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timed_call_returns_in_time_when_a_cluster_primary_is_killed() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    let (lock, sem) = primitives(300 * MS);
    let (stop, stats) = (Arc::new(AtomicBool::new(false)), Arc::new(Stats::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let con = client.get_async_connection().await.unwrap();
        tasks.spawn(workload(con, lock.clone(), sem.clone(), stop.clone(), stats.clone()));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = stats.count("Lock::acquire");
    let key = lock.keys().lock().to_owned();
    let killed = Instant::now();
    let (cluster, _dead, promoted) = tokio::task::spawn_blocking(move || {
        let (dead, promoted) = cluster.kill_primary(&key);
        (cluster, dead, promoted)
    })
    .await
    .unwrap();
    let failover = killed.elapsed();
    let during = stats.count("Lock::acquire");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    tasks.join_all().await;
    let after = stats.count("Lock::acquire");
    println!(
        "[killed cluster primary] replica :{promoted} took over {failover:?} after the kill; Lock::acquire (calls, failed): before {before:?}, at the takeover {during:?}, at the end {after:?}"
    );
    assert!(before.0 > before.1, "some acquires ran before the kill: {before:?}");
    assert!(during.1 > before.1, "acquires failed while the slot had no primary: {before:?} -> {during:?}");
    assert!(after.0 - after.1 > during.0 - during.1, "acquires succeed again after the takeover");
    stats.check("killed cluster primary", margin());
    drop(cluster);
}

/// The one-round-trip raw calls and every method of a lock and a semaphore (not held) against
/// one misbehaving server, async and blocking.
async fn every_unheld_call(what: &str, url: &str, stats: &Stats, bstats: &Stats) {
    let deadline = 300 * MS;
    let timeout = 400 * MS;
    let io = 200 * MS;
    let lock = Lock::new(unique(what), Duration::from_secs(2)).unwrap().with_deadline(deadline);
    let sem = Semaphore::new(unique(what), 2, Duration::from_secs(2)).unwrap().with_deadline(deadline);
    let client = quiet_client(url);
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _ = timed!(stats, "Lock::try_acquire", deadline, lock.try_acquire(&mut con).await);
    let _ = timed!(stats, "Lock::acquire", timeout, lock.acquire(&mut con, timeout).await);
    let _ = timed!(stats, "Lock::fenced_write", deadline, lock.fenced_write(&mut con, 7, b"v", None).await);
    let _ = timed!(stats, "Semaphore::try_acquire", deadline, sem.try_acquire(&mut con).await);
    let _ = timed!(stats, "Semaphore::acquire", timeout, sem.acquire(&mut con, timeout).await);
    // The raw calls have no deadline of their own: redis-rs's response timeout (500 ms) ends them.
    let (keys, key, rt) = (lock.keys(), sem.key(), Duration::from_millis(500));
    let ttl = Duration::from_secs(1);
    let _ = timed!(
        stats,
        "call::LockAcquire",
        rt,
        LockAcquire { keys, token: "t", ttl }.query_async(&mut con).await
    );
    let _ =
        timed!(stats, "call::LockRelease", rt, LockRelease { keys, token: "t" }.query_async(&mut con).await);
    let _ = timed!(
        stats,
        "call::LockExtend",
        rt,
        LockExtend { keys, token: "t", ttl }.query_async(&mut con).await
    );
    let fw = LockFencedWrite { keys, fence: 1, value: b"v", value_ttl: None };
    let _ = timed!(stats, "call::LockFencedWrite", rt, fw.query_async(&mut con).await);
    let sa = SemaphoreAcquire { key, token: "t", permits: 1, ttl };
    let _ = timed!(stats, "call::SemaphoreAcquire", rt, sa.query_async(&mut con).await);
    let _ = timed!(
        stats,
        "call::SemaphoreRelease",
        rt,
        SemaphoreRelease { key, token: "t" }.query_async(&mut con).await
    );
    let _ = timed!(
        stats,
        "call::SemaphoreExtend",
        rt,
        SemaphoreExtend { key, token: "t", ttl }.query_async(&mut con).await
    );

    let mut b = client.get_connection_with_timeout(io).unwrap();
    b.set_read_timeout(Some(io)).unwrap();
    b.set_write_timeout(Some(io)).unwrap();
    let (t_bound, d_bound) = (timeout + io, deadline + io);
    let _ = timed!(bstats, "Lock::try_acquire_blocking", d_bound, lock.try_acquire_blocking(&mut b));
    let _ = timed!(bstats, "Lock::acquire_blocking", t_bound, lock.acquire_blocking(&mut b, timeout));
    let _ = timed!(
        bstats,
        "Lock::fenced_write_blocking",
        d_bound,
        lock.fenced_write_blocking(&mut b, 7, b"v", None)
    );
    let _ = timed!(bstats, "Semaphore::try_acquire_blocking", d_bound, sem.try_acquire_blocking(&mut b));
    let _ = timed!(bstats, "Semaphore::acquire_blocking", t_bound, sem.acquire_blocking(&mut b, timeout));
    let _ =
        timed!(bstats, "call::LockRelease (blocking)", io, LockRelease { keys, token: "t" }.query(&mut b));
}

/// Every method of a held lock and permit (async and blocking), their connection going through
/// a proxy to a real server that switches to `mode` once they are held.
async fn every_held_call(mode: ProxyMode, stats: &Stats) {
    let server = Server::start();
    let proxy = Proxy::start(server.port());
    let deadline = 300 * MS;
    let io = 200 * MS;
    let lock = Lock::new(unique("held"), Duration::from_secs(5)).unwrap().with_deadline(deadline);
    let sem = Semaphore::new(unique("held"), 2, Duration::from_secs(5)).unwrap().with_deadline(deadline);
    let mut con = proxy.client().get_multiplexed_async_connection().await.unwrap();
    let mut b = blocking_con(&proxy.url(), io);
    let guard = lock.try_acquire(&mut con).await.unwrap().acquired().unwrap();
    let permit = sem.try_acquire(&mut con).await.unwrap().acquired().unwrap();
    let other = Lock::new(unique("held-b"), Duration::from_secs(5)).unwrap().with_deadline(deadline);
    let bguard = other.try_acquire_blocking(&mut b).unwrap().acquired().unwrap();
    let bpermit = sem.try_acquire_blocking(&mut b).unwrap().acquired().unwrap();
    proxy.set_mode(mode);
    let ttl = Duration::from_secs(5);
    let d_bound = deadline + io;
    for r in [
        timed!(stats, "Guard::fenced_write", deadline, guard.fenced_write(b"v", None).await).map(drop),
        timed!(stats, "Guard::extend", deadline, guard.extend(ttl).await).map(drop),
        timed!(stats, "Guard::release", deadline, guard.release().await).map(drop),
        timed!(stats, "Permit::extend", deadline, permit.extend(ttl).await).map(drop),
        timed!(stats, "Permit::release", deadline, permit.release().await).map(drop),
        timed!(
            stats,
            "BlockingGuard::fenced_write",
            d_bound,
            bguard.fenced_write_blocking(&mut b, b"v", None)
        )
        .map(drop),
        timed!(stats, "BlockingGuard::extend", d_bound, bguard.extend_blocking(&mut b, ttl)).map(drop),
        timed!(stats, "BlockingGuard::release", d_bound, bguard.release_blocking(&mut b)).map(drop),
        timed!(stats, "BlockingPermit::extend", d_bound, bpermit.extend_blocking(&mut b, ttl)).map(drop),
        timed!(stats, "BlockingPermit::release", d_bound, bpermit.release_blocking(&mut b)).map(drop),
    ] {
        assert!(r.is_err(), "{mode:?}: a call succeeded through a broken server");
    }
}

/// A black hole, a garbage server and a closing socket, for every public call: a typed error,
/// no panic, within the call's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_against_a_black_hole_a_garbage_server_and_a_closing_socket() {
    for (what, fake) in [
        ("black-hole", FakeServer::black_hole()),
        ("garbage", FakeServer::garbage()),
        ("wrong-shape", FakeServer::wrong_shape()),
        ("closing", FakeServer::closing()),
    ] {
        let (stats, bstats) = (Stats::default(), Stats::default());
        every_unheld_call(what, &fake.url(), &stats, &bstats).await;
        for s in [&stats, &bstats] {
            let (n, failed) = s.calls.lock().unwrap().values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
            assert_eq!(n, failed, "{what}: every call fails");
        }
        stats.check(what, margin());
        // A blocking acquire's clean-up release may add one read timeout (200 ms).
        bstats.check(&format!("{what}, blocking"), margin() + 200 * MS);
    }
    // Nothing listening: connecting fails at once, with a connection error.
    let t = Instant::now();
    let refused = quiet_client(&dead_url()).get_multiplexed_async_connection().await;
    assert!(refused.is_err() && t.elapsed() < Duration::from_secs(1));
    for mode in [ProxyMode::Silent, ProxyMode::Garbage, ProxyMode::Close] {
        let stats = Stats::default();
        every_held_call(mode, &stats).await;
        stats.check(&format!("held, server turned {mode:?}"), margin());
    }
}

/// `CLIENT PAUSE <ms> WRITE` on `server`, from a connection of its own.
fn pause_writes(server: &Server, ms: u64) {
    let _: String = server.cmd(&["CLIENT", "PAUSE", &ms.to_string(), "WRITE"]);
}

/// One fenced write as its writer saw it.
#[derive(Debug, Clone, Copy)]
struct Write {
    sent: Instant,
    written: bool,
}

/// A holder (A, with a watchdog) is paused past its TTL by `CLIENT PAUSE WRITE` (which blocks
/// every client of the server, so it gets one of its own), keeps writing as a zombie would,
/// while B waits with short timeouts and C's acquires time out or are cancelled during the
/// pause. Afterwards: no overlap (A's validity ends before B's hold begins), no stale write
/// accepted (no write of A sent after B's first accepted write is accepted), and nothing held
/// by a token no guard owns (C's timed-out and cancelled acquires released theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_past_the_ttl_with_the_watchdog() {
    let server = Server::start();
    let client = server.client();
    let ttl = 400 * MS;
    let (pause, pause_at) = (2500u64, 300 * MS);
    let lock =
        Lock::new(unique("pause"), ttl).unwrap().watchdog(Duration::from_secs(30)).with_deadline(300 * MS);
    let mut a = client.get_multiplexed_async_connection().await.unwrap();
    redis_primitives::script::preload_async(&mut a).await.unwrap();
    let t0 = Instant::now();
    let guard = lock.try_acquire(&mut a).await.unwrap().acquired().unwrap();
    let fence_a = guard.fencing_token();

    // A: writes every 20 ms whatever happens (a zombie), and notes the last moment it believed
    // itself the holder.
    let zombie = {
        let lost = guard.lost();
        tokio::spawn(async move {
            let mut writes = Vec::new();
            let mut relied_until = Instant::now();
            let lost_at = Arc::new(Mutex::new(None));
            let l = lost_at.clone();
            tokio::spawn(async move {
                let reason = lost.await;
                *l.lock().unwrap() = Some((Instant::now(), reason));
            });
            while t0.elapsed() < Duration::from_millis(4500) {
                if !guard.is_lost() {
                    relied_until = Instant::now();
                }
                let sent = Instant::now();
                let w = guard.fenced_write(b"A", None).await;
                writes.push(Write { sent, written: matches!(w, Ok(FencedWrite::Written)) });
                tokio::time::sleep(20 * MS).await;
            }
            let lost_at = *lost_at.lock().unwrap();
            (writes, relied_until, lost_at)
        })
    };

    // B: waits with short timeouts until it holds the lock, then writes.
    let waiter = {
        let (lock, mut b) = (lock.clone(), client.get_multiplexed_async_connection().await.unwrap());
        tokio::spawn(async move {
            let (mut timed_out, mut worst) = (0u32, Duration::ZERO);
            loop {
                let t = Instant::now();
                match lock.acquire(&mut b, 300 * MS).await {
                    Ok(Acquire::Acquired(g)) => {
                        let start = Instant::now();
                        let mut writes = Vec::new();
                        for _ in 0..5 {
                            let sent = Instant::now();
                            let w = g.fenced_write(b"B", None).await.unwrap();
                            writes.push(Write { sent, written: w.is_written() });
                            tokio::time::sleep(20 * MS).await;
                        }
                        let fence = g.fencing_token();
                        tokio::time::sleep(Duration::from_millis(4600).saturating_sub(t0.elapsed())).await;
                        g.release().await.unwrap();
                        return (start, fence, writes, timed_out, worst);
                    }
                    Ok(Acquire::Held { .. }) => {}
                    Err(e) => {
                        assert!(e.is_timeout() || e.is_connection(), "B: {e}");
                        timed_out += 1;
                    }
                }
                worst = worst.max(t.elapsed().saturating_sub(300 * MS));
                assert!(t0.elapsed() < Duration::from_secs(8), "B never got the lock");
            }
        })
    };

    // C: acquires of a free lock and a free semaphore that time out, or are cancelled, during
    // the pause.
    let orphan_lock = Lock::new(unique("pause-orphan"), Duration::from_secs(10)).unwrap();
    let cancelled_lock = Lock::new(unique("pause-cancelled"), Duration::from_secs(10)).unwrap();
    let orphan_sem = Semaphore::new(unique("pause-orphan"), 1, Duration::from_secs(10)).unwrap();
    let cancelled_sem = Semaphore::new(unique("pause-cancelled"), 1, Duration::from_secs(10)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();

    tokio::time::sleep(pause_at).await;
    pause_writes(&server, pause);
    let paused = Instant::now();
    tokio::time::sleep(50 * MS).await;
    let mut c_errors = Vec::new();
    let mut c_worst = Duration::ZERO;
    for _ in 0..2 {
        let t = Instant::now();
        c_errors.push(orphan_lock.acquire(&mut c, 200 * MS).await.map(|_| ()).unwrap_err());
        c_worst = c_worst.max(t.elapsed().saturating_sub(200 * MS));
        let t = Instant::now();
        c_errors.push(orphan_sem.acquire(&mut c, 200 * MS).await.map(|_| ()).unwrap_err());
        c_worst = c_worst.max(t.elapsed().saturating_sub(200 * MS));
    }
    assert!(
        tokio::time::timeout(100 * MS, cancelled_lock.acquire(&mut c, Duration::from_secs(5))).await.is_err()
    );
    assert!(
        tokio::time::timeout(100 * MS, cancelled_sem.acquire(&mut c, Duration::from_secs(5))).await.is_err()
    );
    assert!(paused.elapsed() < Duration::from_millis(pause), "C's calls ended within the pause");

    let (a_writes, relied_until, lost_at) = zombie.await.unwrap();
    let (b_start, fence_b, b_writes, b_timeouts, b_worst) = waiter.await.unwrap();

    let overlaps = usize::from(relied_until > b_start);
    let first_b = b_writes.iter().find(|w| w.written).map(|w| w.sent).expect("B wrote");
    let stale = a_writes.iter().filter(|w| w.sent > first_b && w.written).count();
    let refused_b = b_writes.iter().filter(|w| !w.written).count();
    let orphans =
        [orphan_lock.keys().lock(), cancelled_lock.keys().lock(), orphan_sem.key(), cancelled_sem.key()]
            .iter()
            .filter(|k| server.cmd::<bool>(&["EXISTS", k]))
            .count();
    let confirmed =
        c_errors.iter().filter(|e| matches!(e, Error::Abandoned { released: Some(_), .. })).count();
    println!(
        "[pause] A (fence {fence_a}) lost ({:?}) after {:?}, relied on it until {:?}; B (fence {fence_b}) held from {:?} after {b_timeouts} timed-out acquires (max {b_worst:?} past 300 ms)",
        lost_at.map(|l| l.1),
        lost_at.map(|l| l.0 - t0),
        relied_until - t0,
        b_start - t0
    );
    println!(
        "[pause] {overlaps} overlaps, {stale} stale writes accepted of {} by A after B wrote, {refused_b} of B's writes refused; C: {} acquires timed out during the pause (max {c_worst:?} past 200 ms, {confirmed} releases confirmed), {orphans} orphaned locks or permits",
        a_writes.iter().filter(|w| w.sent > first_b).count(),
        c_errors.len()
    );
    assert!(fence_b > fence_a, "the newer holder has the newer token");
    assert_eq!(overlaps, 0, "A relied on the lock after B held it");
    assert!(lost_at.is_some_and(|(at, _)| at < b_start), "A was told it lost the lock before B held it");
    assert_eq!(stale, 0, "a write of the old holder was accepted after the new one wrote");
    assert_eq!(refused_b, 0, "the new holder's writes are accepted");
    assert!(a_writes.iter().any(|w| w.sent > first_b), "the zombie kept writing after B wrote");
    assert_eq!(c_errors.len(), 4);
    assert!(c_errors.iter().all(|e| e.is_timeout()), "{c_errors:?}");
    assert!(
        c_worst <= margin() && b_worst <= margin(),
        "timed-out acquires overran: C {c_worst:?}, B {b_worst:?}"
    );
    assert_eq!(orphans, 0, "a timed-out or cancelled acquire left its lock or permit taken");
    assert_eq!(server.cmd::<String>(&["GET", lock.keys().data()]), "B");
}

/// Replies lost after the server ran the call (the connection drops mid-call): a release whose
/// first reply was lost is resent and reports [`Released::Earlier`], never a false
/// [`Released::NotHeld`]; an acquire whose reply was lost is resent with the same token and
/// holds one lock; an acquire whose every reply is lost gives back what it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_resent_and_told_apart() {
    let server = Server::start();
    let proxy = Proxy::start(server.port());
    let mut con = proxy.client().get_connection_manager().await.unwrap();
    redis_primitives::script::preload_async(&mut con).await.unwrap();
    let lock = Lock::new(unique("lost"), Duration::from_secs(10)).unwrap();
    let sem = Semaphore::new(unique("lost"), 2, Duration::from_secs(10)).unwrap();
    let sha = |id: Id| id.script().sha1().as_bytes().to_vec();
    let rounds = 10;
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..rounds {
        let guard = lock.try_acquire(&mut con).await.unwrap().acquired().unwrap();
        proxy.lose_replies_to(&sha(Id::LockRelease), 1);
        *outcomes.entry(format!("lock {:?}", guard.release().await)).or_default() += 1;
        assert!(!server.cmd::<bool>(&["EXISTS", lock.keys().lock()]));
        let permit = sem.try_acquire(&mut con).await.unwrap().acquired().unwrap();
        proxy.lose_replies_to(&sha(Id::LockSemaphoreRelease), 1);
        *outcomes.entry(format!("semaphore {:?}", permit.release().await)).or_default() += 1;
    }
    println!("[lost replies] {} replies lost; releases: {outcomes:?}", proxy.lost());
    assert_eq!(proxy.lost(), 2 * rounds);
    assert_eq!(outcomes.get("lock Ok(Earlier)"), Some(&(rounds as u32)), "{outcomes:?}");
    assert_eq!(outcomes.get("semaphore Ok(Earlier)"), Some(&(rounds as u32)), "{outcomes:?}");
    assert_eq!(server.cmd::<i64>(&["ZCARD", sem.key()]), 0);

    // The acquire's reply is lost once: the resend (same token) refreshes, one holder.
    let before = lock.try_acquire(&mut con).await.unwrap().acquired().unwrap();
    let fence = before.fencing_token();
    before.release().await.unwrap();
    proxy.lose_replies_to(&sha(Id::LockAcquire), 1);
    let guard = lock.acquire(&mut con, Duration::from_secs(2)).await.unwrap().acquired().unwrap();
    assert!(guard.fencing_token() > fence);
    assert_eq!(server.cmd::<String>(&["GET", lock.keys().lock()]), guard.token());
    assert_eq!(guard.release().await.unwrap(), Released::Yes);

    // Every acquire reply is lost: the attempts took the lock; the clean-up gives it back.
    proxy.lose_replies_to(&sha(Id::LockAcquire), 1000);
    let t = Instant::now();
    let err = lock.acquire(&mut con, 300 * MS).await.map(|_| ()).unwrap_err();
    let over = t.elapsed().saturating_sub(300 * MS);
    println!("[lost replies] acquire with every reply lost: {err} ({over:?} past its timeout)");
    assert!(matches!(err, Error::Abandoned { released: Some(true), .. }), "{err:?}");
    assert!(over <= margin());
    assert!(!server.cmd::<bool>(&["EXISTS", lock.keys().lock()]), "nothing held by a token no guard owns");
    proxy.lose_replies_to(&sha(Id::LockSemaphoreAcquire), 1000);
    let err = sem.try_acquire(&mut con).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::Abandoned { released: Some(true), .. }), "{err:?}");
    assert_eq!(server.cmd::<i64>(&["ZCARD", sem.key()]), 0);
}

/// A cancelled acquire gives back what its attempt took: from a spawned task when a runtime is
/// current; without one (the future dropped on a plain thread) nothing can be sent, and the
/// lease's TTL is the backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_gives_back_what_it_took() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    redis_primitives::script::preload_async(&mut con).await.unwrap();
    let ttl = Duration::from_secs(10);
    let with_runtime = Lock::new(unique("cancel"), ttl).unwrap();
    let permit_runtime = Semaphore::new(unique("cancel"), 1, ttl).unwrap();
    let without_runtime = Lock::new(unique("cancel-no-rt"), ttl).unwrap();
    pause_writes(&server, 600);
    assert!(
        tokio::time::timeout(100 * MS, with_runtime.acquire(&mut con, Duration::from_secs(5))).await.is_err()
    );
    assert!(tokio::time::timeout(100 * MS, permit_runtime.try_acquire(&mut con)).await.is_err());
    {
        let mut fut = Box::pin(without_runtime.acquire(&mut con, Duration::from_secs(5)));
        assert!(tokio::time::timeout(100 * MS, &mut fut).await.is_err(), "in flight during the pause");
        std::thread::scope(|s| {
            s.spawn(move || drop(fut)).join().expect("dropping without a runtime must not panic");
        });
    }
    tokio::time::sleep(Duration::from_millis(900)).await; // the pause is over, the queue ran
    let orphans = [with_runtime.keys().lock(), permit_runtime.key()]
        .iter()
        .filter(|k| server.cmd::<bool>(&["EXISTS", k]))
        .count();
    let pttl: i64 = server.cmd(&["PTTL", without_runtime.keys().lock()]);
    println!(
        "[cancel] {orphans} orphaned after cancels with a runtime; without one the lock's PTTL is {pttl} ms"
    );
    assert_eq!(orphans, 0, "a cancelled acquire left its lock or permit taken");
    assert!(pttl > 0 && pttl <= 10_000, "without a runtime the TTL ends it: pttl {pttl}");
}

/// The fencing token survives data loss: after a restart without persistence, a DEL of the
/// fence key, and a roll-back of the fence key to its value before the old holder's acquire (a
/// failover that lost that acquire's writes while keeping older ones), a new holder's token is
/// above the old holder's, so the old holder's writes are refused once the new one wrote, and
/// the new one's are never refused. Tokens have a floor of server time (lock.acquire), so a lost
/// or rolled-back counter restarts above them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_survives_a_restart_and_the_loss_of_the_fence_key() {
    let mut server = Server::start();
    let mut stale_accepted = 0;
    let mut legit_refused = 0;
    for (round, loss) in [
        "restart",
        "DEL fence",
        "roll back fence",
        "restart, old writes first",
        "DEL fence, old writes first",
        "roll back fence, old writes first",
    ]
    .iter()
    .enumerate()
    {
        let lock = Lock::new(format!("fence-loss-{round}"), Duration::from_secs(30)).unwrap();
        let mut a = server.conn();
        // A few holds before the loss, so a counter that restarted would hand out lower tokens.
        for _ in 0..5 {
            let g = lock.try_acquire_blocking(&mut a).unwrap().acquired().unwrap();
            assert!(g.fenced_write_blocking(&mut a, b"earlier", None).unwrap().is_written());
            g.release_blocking(&mut a).unwrap();
        }
        let before: String = server.cmd(&["GET", lock.keys().fence()]);
        let old = lock.try_acquire_blocking(&mut a).unwrap().acquired().unwrap();
        assert!(old.fenced_write_blocking(&mut a, b"old", None).unwrap().is_written());
        if loss.starts_with("restart") {
            server.restart();
        } else if loss.starts_with("roll back") {
            // The new primary never saw the old holder's acquire: the fence key holds the token
            // before it, and the lock is free.
            let _: String = server.cmd(&["SET", lock.keys().fence(), &before, "PX", "30000"]);
            let _: i64 = server.cmd(&["DEL", lock.keys().lock()]);
        } else {
            let _: i64 = server.cmd(&["DEL", lock.keys().fence(), lock.keys().lock()]);
        }
        let (mut a, mut b) = (server.conn(), server.conn());
        if loss.ends_with("old writes first") {
            // The old holder, unaware, writes before anyone else acquires.
            let _ = old.fenced_write_blocking(&mut a, b"old, after the loss", None).unwrap();
        }
        let new = lock.try_acquire_blocking(&mut b).unwrap().acquired().unwrap();
        println!("[fence loss: {loss}] old token {}, new token {}", old.fencing_token(), new.fencing_token());
        for i in 0..3 {
            if !new.fenced_write_blocking(&mut b, format!("new {i}").as_bytes(), None).unwrap().is_written() {
                legit_refused += 1;
            }
            if old.fenced_write_blocking(&mut a, b"old, stale", None).unwrap().is_written() {
                stale_accepted += 1;
            }
        }
        let _ = new.release_blocking(&mut b);
    }
    println!(
        "[fence loss] {stale_accepted} stale fenced writes accepted, {legit_refused} legitimate writes refused"
    );
    assert_eq!(stale_accepted, 0, "an old holder's write was accepted after a new holder wrote");
    assert_eq!(legit_refused, 0, "the new holder's write was refused");
}

/// An error is typed, or an argument refused before sending.
fn typed_or_refused<T>(what: &str, r: Result<T, Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Error::InvalidArgument { .. }) => None,
        Err(e) => {
            assert!(typed(&e), "{what}: {e:?}");
            None
        }
    }
}

/// Runs `fut`, failing the test if it outlives 10 s (every call here is bounded far below).
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

/// Generated extreme inputs for every public constructor and call of the area: zero, tiny,
/// sub-millisecond, the largest allowed and the first refused, `Duration::MAX`, `u64::MAX`,
/// empty and over-long names. Nothing panics; each is accepted or refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_arguments_never_panic() {
    use redis_primitives::lock::call::MAX_FENCE;
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let mut b = blocking_con(&server.url(), Duration::from_secs(2));
    let max_ms = Duration::from_millis(redis_primitives::rules::MAX);
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
        MS,
        Duration::from_micros(1500),
        Duration::from_secs(1),
        max_ms,
        max_ms + MS,
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ];
    let counts = [0, 1, redis_primitives::rules::MAX, redis_primitives::rules::MAX + 1, u64::MAX];
    let fences = [0, 1, MAX_FENCE, MAX_FENCE + 1, u64::MAX];
    let long = "x".repeat(1024);
    let names = ["", "a", "{", "}", "a{b", "é", long.as_str(), &"x".repeat(1025)].map(str::to_owned);
    let tokens = ["", "t", &"x".repeat(256), &"x".repeat(257)].map(str::to_owned);
    let mut accepted = 0u32;
    for name in &names {
        let _ = LockKeys::new(name.as_str());
        let _ = semaphore_key(name);
        for d in durations {
            accepted += u32::from(Lock::new(name.as_str(), d).is_ok());
            for n in counts {
                accepted += u32::from(Semaphore::new(name.as_str(), n, d).is_ok());
            }
        }
    }
    let base = Lock::new(unique("extreme"), Duration::from_secs(5)).unwrap();
    let sem =
        Semaphore::new(unique("extreme"), redis_primitives::rules::MAX, Duration::from_secs(5)).unwrap();
    let (keys, key) = (base.keys().clone(), sem.key().to_owned());
    for d in durations {
        let what = format!("{d:?}");
        // Settings: every one is taken, none panics, and calls stay bounded.
        let lock = base.clone().with_deadline(d).backoff(Backoff { initial: d, max: d });
        if let Some(Acquire::Acquired(g)) =
            typed_or_refused(&what, bounded(&what, lock.try_acquire(&mut con)).await)
        {
            typed_or_refused(&what, bounded(&what, g.release()).await);
        }
        if let Some(Acquire::Acquired(g)) =
            typed_or_refused(&what, bounded(&what, base.acquire(&mut con, d)).await)
        {
            typed_or_refused(&what, bounded(&what, g.extend(d)).await);
            typed_or_refused(&what, bounded(&what, g.fenced_write(b"", Some(d))).await);
            // Held by `g`: the odd backoff waits, bounded by the timeout.
            let waiting = base.clone().backoff(Backoff { initial: d, max: d });
            typed_or_refused(&what, bounded(&what, waiting.acquire(&mut con, 50 * MS)).await);
            typed_or_refused(&what, bounded(&what, g.release()).await);
        }
        let watched = base.clone().watchdog(d);
        if let Some(Acquire::Acquired(g)) =
            typed_or_refused(&what, bounded(&what, watched.try_acquire(&mut con)).await)
        {
            typed_or_refused(&what, bounded(&what, g.release()).await);
        }
        if let Some(Acquire::Acquired(p)) =
            typed_or_refused(&what, bounded(&what, sem.acquire(&mut con, d)).await)
        {
            typed_or_refused(&what, bounded(&what, p.extend(d)).await);
            typed_or_refused(&what, bounded(&what, p.release()).await);
        }
        if let Some(Acquire::Acquired(g)) =
            typed_or_refused(&what, base.acquire_blocking(&mut b, d.min(Duration::from_secs(2))))
        {
            typed_or_refused(&what, g.extend_blocking(&mut b, d));
            typed_or_refused(&what, g.fenced_write_blocking(&mut b, b"", Some(d)));
            typed_or_refused(&what, g.release_blocking(&mut b));
        }
        for token in &tokens {
            let token = token.as_str();
            typed_or_refused(&what, LockAcquire { keys: &keys, token, ttl: d }.query(&mut b));
            typed_or_refused(&what, LockExtend { keys: &keys, token, ttl: d }.query(&mut b));
            typed_or_refused(&what, LockRelease { keys: &keys, token }.query(&mut b));
            typed_or_refused(&what, SemaphoreExtend { key: &key, token, ttl: d }.query(&mut b));
            typed_or_refused(&what, SemaphoreRelease { key: &key, token }.query(&mut b));
            for permits in counts {
                typed_or_refused(&what, SemaphoreAcquire { key: &key, token, permits, ttl: d }.query(&mut b));
            }
        }
        let _: i64 = server.cmd(&["DEL", keys.lock(), &key]);
        for fence in fences {
            let ttl = Some(d);
            typed_or_refused(&what, bounded(&what, base.fenced_write(&mut con, fence, b"", ttl)).await);
            typed_or_refused(&what, base.fenced_write_blocking(&mut b, fence, b"", ttl));
            typed_or_refused(
                &what,
                LockFencedWrite { keys: &keys, fence, value: b"", value_ttl: ttl }.query(&mut b),
            );
        }
    }
    println!("[extreme] {accepted} constructor argument combinations accepted; every call returned typed");
    assert!(accepted > 0);
    // The bounds, exactly: the largest values are accepted, the next ones refused.
    assert!(Lock::new("a", max_ms).is_ok() && Lock::new("a", max_ms + MS).is_err());
    assert!(Semaphore::new("a", redis_primitives::rules::MAX, MS).is_ok());
    // 2^53 - 1 is the largest token the scripts hand out and take; 2^53 is refused before sending.
    let largest = base.fenced_write(&mut con, MAX_FENCE, b"", None).await;
    println!("[extreme] fenced_write with the largest fence {MAX_FENCE}: {largest:?}");
    assert!(matches!(largest, Ok(FencedWrite::Written)), "{largest:?}");
    assert!(matches!(
        base.fenced_write(&mut con, MAX_FENCE + 1, b"", None).await,
        Err(Error::InvalidArgument { name: "fence", .. })
    ));
}

/// Blocking calls against a server that accepts and never answers: a read timeout on the
/// connection ends each round trip, an acquire sends no attempt past its timeout, and without
/// a read timeout the call blocks for ever (as the docs say).
#[test]
fn blocking_calls_against_a_silent_server() {
    let fake = FakeServer::black_hole();
    let client = quiet_client(&fake.url());
    let io = 150 * MS;
    let mut con = client.get_connection_with_timeout(io).unwrap();
    con.set_read_timeout(Some(io)).unwrap();
    con.set_write_timeout(Some(io)).unwrap();
    let lock = Lock::new(unique("silent"), Duration::from_secs(1)).unwrap().with_deadline(400 * MS);

    let (sent, t) = (fake.commands(), Instant::now());
    let err = lock.try_acquire_blocking(&mut con).map(|_| ()).unwrap_err();
    let took = t.elapsed();
    std::thread::sleep(20 * MS);
    let try_sent = fake.commands() - sent;
    println!("[silent, blocking] try_acquire: {err} after {took:?}, {try_sent} commands sent");
    assert!(matches!(err, Error::Abandoned { released: None, .. }), "{err:?}");
    assert_eq!(try_sent, 2, "one attempt, one clean-up release");
    assert!(took <= 2 * io + SLACK, "one read timeout per round trip: {took:?}");

    let timeout = 600 * MS;
    let (sent, t) = (fake.commands(), Instant::now());
    let err = lock.acquire_blocking(&mut con, timeout).map(|_| ()).unwrap_err();
    let took = t.elapsed();
    std::thread::sleep(20 * MS);
    let attempts = fake.commands() - sent - 1;
    println!(
        "[silent, blocking] acquire({timeout:?}): {err} after {took:?} ({:?} past the timeout), {attempts} attempts",
        took.saturating_sub(timeout)
    );
    assert!(err.is_connection() && err.is_transient(), "{err:?}");
    // Each attempt waits one read timeout, then a backoff: no attempt starts past the timeout.
    assert!((2..=5).contains(&attempts), "{attempts} attempts in {timeout:?}");
    assert!(
        took <= timeout + 2 * io + SLACK,
        "the attempt in flight at the timeout, then the clean-up: {took:?}"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let mut forever = client.get_connection().unwrap();
    std::thread::spawn(move || {
        let r = lock.try_acquire_blocking(&mut forever).map(|_| ());
        let _ = tx.send(r);
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "without a read timeout a blocking call waits for the silent server"
    );
}
