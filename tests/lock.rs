//! Locks and semaphores against real servers (standalone and a local cluster): a mutual
//! exclusion oracle under contention and under faults (SCRIPT FLUSH, CLIENT KILL), fencing of a
//! holder paused past its TTL, token checks, semaphore bounds and lease expiry, the watchdog,
//! and what dropping a guard does. Run with `--nocapture` to see the measured figures.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, shared_cluster, unique};
use redis::aio::ConnectionLike;
use redis_primitives::Error;
use redis_primitives::lock::call::{LockExtend, LockRelease, SemaphoreExtend, SemaphoreRelease};
use redis_primitives::lock::{
    Acquire, Backoff, Extended, FencedWrite, Guard, Lock, LockKeys, LostReason, Released, Semaphore,
    SharedConnection, semaphore_key,
};
use redis_primitives::script::ScriptCall;

const MS: Duration = Duration::from_millis(1);

/// Short waits: holds last about a millisecond, so long sleeps would leave the lock idle.
fn fast() -> Backoff {
    Backoff { initial: MS, max: 20 * MS }
}

/// One hold as its holder saw it: from the acquire reply to just before the release was sent,
/// so it lies inside the server-side hold. Non-overlap of these proves mutual exclusion.
#[derive(Debug, Clone, Copy)]
struct Hold {
    task: usize,
    fence: u64,
    start: Instant,
    end: Instant,
}

/// Overlaps between holds, and places where the fencing token did not strictly increase in
/// the order the holds started.
fn audit(holds: &mut [Hold]) -> (usize, usize) {
    holds.sort_by_key(|h| h.start);
    let overlaps = holds.windows(2).filter(|w| w[0].end > w[1].start).count();
    let disorder = holds.windows(2).filter(|w| w[0].fence >= w[1].fence).count();
    for w in holds.windows(2).filter(|w| w[0].end > w[1].start || w[0].fence >= w[1].fence).take(3) {
        eprintln!("violation: {:?} then {:?}", w[0], w[1]);
    }
    (overlaps, disorder)
}

fn acquired<G>(outcome: Acquire<G>) -> G {
    match outcome {
        Acquire::Acquired(g) => g,
        Acquire::Held { retry_after } => panic!("expected to acquire; held for {retry_after:?} more"),
    }
}

/// `tasks` tasks, one connection each, `rounds` holds each on one lock. Every hold writes the
/// fenced resource (which must accept it) and checks the guard is still valid at its end.
async fn contend<C>(name: &str, cons: Vec<C>, lock: Lock, rounds: usize) -> Vec<Hold>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (task, mut con) in cons.into_iter().enumerate() {
        let lock = lock.clone();
        set.spawn(async move {
            let (mut holds, mut outcomes) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
            for round in 0..rounds {
                let guard = acquired(lock.acquire(&mut con, Duration::from_secs(20)).await.unwrap());
                let start = Instant::now();
                let value = format!("{task}:{round}");
                let written = guard.fenced_write(value.as_bytes(), None).await.unwrap();
                tokio::task::yield_now().await;
                let end = Instant::now();
                assert!(!guard.is_lost(), "a hold must end while the holder may still rely on it");
                let fence = guard.fencing_token();
                let released = guard.release().await.unwrap();
                holds.push(Hold { task, fence, start, end });
                // After recording, so that a broken lock shows in the audit first.
                outcomes.push((written, released));
            }
            (holds, outcomes)
        });
    }
    let (holds, outcomes): (Vec<_>, Vec<_>) = set.join_all().await.into_iter().unzip();
    let mut holds: Vec<Hold> = holds.into_iter().flatten().collect();
    report_oracle(name, &mut holds, t.elapsed());
    for (written, released) in outcomes.into_iter().flatten() {
        assert_eq!(written, FencedWrite::Written, "no newer holder can have written during a hold");
        assert_eq!(released, Released::Yes, "nobody else can have taken the lock during a hold");
    }
    holds
}

fn report_oracle(name: &str, holds: &mut [Hold], elapsed: Duration) {
    let (overlaps, disorder) = audit(holds);
    let tasks = holds.iter().map(|h| h.task).max().map_or(0, |t| t + 1);
    println!(
        "[{name}] {} rounds by {tasks} tasks in {elapsed:.2?}: {overlaps} overlaps, {disorder} token-order violations",
        holds.len()
    );
    assert_eq!(overlaps, 0, "{name}: two holders at once");
    assert_eq!(disorder, 0, "{name}: fencing tokens must strictly increase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_oracle_standalone() {
    let server = Server::start();
    let client = server.client();
    let mut cons = Vec::new();
    for _ in 0..16 {
        cons.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let lock = Lock::new(unique("oracle"), Duration::from_secs(5)).unwrap().backoff(fast());
    let holds = contend("standalone", cons, lock.clone(), 50).await;
    assert_eq!(holds.len(), 800);
    // Tokens are server microseconds or above, so the counter no longer counts holds; what it
    // must hold is the last token handed out, and every hold had its own (audited above).
    let fence: u64 = server.cmd(&["GET", lock.keys().fence()]);
    assert_eq!(Some(fence), holds.iter().map(|h| h.fence).max(), "the fence key holds the last token");
    let distinct: std::collections::HashSet<u64> = holds.iter().map(|h| h.fence).collect();
    assert_eq!(distinct.len(), 800, "one fencing token per hold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_oracle_cluster() {
    let cluster = shared_cluster();
    let client = cluster.client();
    let mut cons = Vec::new();
    for _ in 0..16 {
        cons.push(client.get_async_connection().await.unwrap());
    }
    let lock = Lock::new(unique("oracle-cluster"), Duration::from_secs(5)).unwrap().backoff(fast());
    let holds = contend("cluster", cons, lock, 50).await;
    assert_eq!(holds.len(), 800);
}

/// SCRIPT FLUSH and CLIENT KILL of the current holder's connection while 16 tasks contend.
/// Acquire must never fail (NOSCRIPT is recovered, a dropped connection retried with the same
/// token); a killed holder may see only connection errors, i.e. it lost its lock; and still
/// no two holds overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_and_client_kill_during_contention() {
    let server = Arc::new(Server::start());
    let client = server.client();
    let lock = Lock::new(unique("faults"), Duration::from_secs(2)).unwrap().backoff(fast());
    // (client id, task) of the current holder, for the fault injector to kill.
    let holder: Arc<Mutex<Option<i64>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));

    let injector = {
        let (server, holder, finished) = (server.clone(), holder.clone(), finished.clone());
        tokio::task::spawn_blocking(move || {
            let (mut flushes, mut kills) = (0u32, 0u32);
            let mut admin = server.conn();
            for i in 0.. {
                std::thread::sleep(10 * MS);
                if finished.load(Ordering::Relaxed) {
                    break;
                }
                if i % 2 == 0 {
                    let _: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).unwrap();
                    flushes += 1;
                } else if let Some(id) = *holder.lock().unwrap() {
                    let n: i64 =
                        redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut admin).unwrap();
                    kills += n as u32;
                }
            }
            (flushes, kills)
        })
    };

    let mut set = tokio::task::JoinSet::new();
    for task in 0..16 {
        let mut con = client.get_connection_manager().await.unwrap();
        let (lock, holder, errors) = (lock.clone(), holder.clone(), errors.clone());
        set.spawn(async move {
            let mut holds = Vec::new();
            for _round in 0..30 {
                let outcome = lock.acquire(&mut con, Duration::from_secs(20)).await;
                let guard = acquired(outcome.unwrap_or_else(|e| panic!("acquire surfaced {e}")));
                let start = Instant::now();
                if let Ok(id) = redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut con).await {
                    *holder.lock().unwrap() = Some(id);
                }
                let write = guard.fenced_write(b"x", None).await;
                // Long enough for the injector to find holders to kill.
                tokio::time::sleep(MS).await;
                let end = Instant::now();
                match write {
                    Ok(w) => assert_eq!(w, FencedWrite::Written, "no newer holder can have written"),
                    Err(e) => {
                        assert!(e.is_connection(), "only a lost connection may surface, got {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                assert!(!guard.is_lost());
                holds.push(Hold { task, fence: guard.fencing_token(), start, end });
                *holder.lock().unwrap() = None;
                match guard.release().await {
                    // NotHeld: a first release that ran before its reply was lost.
                    Ok(_) => {}
                    Err(e) => {
                        assert!(e.is_connection(), "only a lost connection may surface, got {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            holds
        });
    }
    let t = Instant::now();
    let mut holds: Vec<Hold> = set.join_all().await.into_iter().flatten().collect();
    finished.store(true, Ordering::Relaxed);
    let (flushes, kills) = injector.await.unwrap();
    println!(
        "[faults] {flushes} SCRIPT FLUSH, {kills} CLIENT KILL of a holder; {} connection errors seen by holders",
        errors.load(Ordering::Relaxed)
    );
    report_oracle("faults", &mut holds, t.elapsed());
    assert!(flushes >= 3 && kills >= 1, "the faults must actually have happened");
}

#[test]
fn paused_holder_is_refused_by_the_fenced_write_blocking() {
    let server = Server::start();
    let (mut a, mut b) = (server.conn(), server.conn());
    let lock = Lock::new(unique("paused"), 200 * MS).unwrap();
    let old = acquired(lock.try_acquire_blocking(&mut a).unwrap());
    assert!(old.valid_for() > Duration::ZERO && old.valid_for() < 200 * MS);
    assert_eq!(old.fenced_write_blocking(&mut a, b"old, on time", None).unwrap(), FencedWrite::Written);

    std::thread::sleep(300 * MS); // the holder is paused past its TTL
    assert!(old.is_lost(), "the holder's own clock says it may no longer rely on the lock");

    let new = acquired(lock.try_acquire_blocking(&mut b).unwrap());
    assert!(new.fencing_token() > old.fencing_token());
    assert_eq!(new.fenced_write_blocking(&mut b, b"new", None).unwrap(), FencedWrite::Written);
    // The paused holder wakes up and acts on stale belief: the resource refuses it.
    assert_eq!(
        old.fenced_write_blocking(&mut a, b"old, late", None).unwrap(),
        FencedWrite::Stale { highest_seen: new.fencing_token() }
    );
    assert_eq!(server.cmd::<String>(&["GET", lock.keys().data()]), "new");
    // Nor can it renew or release the new holder's lock.
    assert_eq!(old.extend_blocking(&mut a, Duration::from_secs(5)).unwrap(), Extended::NotHeld);
    assert_eq!(old.release_blocking(&mut a).unwrap(), Released::NotHeld);
    assert_eq!(server.cmd::<String>(&["GET", lock.keys().lock()]), new.token());
    assert_eq!(new.release_blocking(&mut b).unwrap(), Released::Yes);
}

#[tokio::test]
async fn paused_holder_is_refused_by_the_fenced_write_cluster() {
    let client = shared_cluster().client();
    let (mut a, mut b) =
        (client.get_async_connection().await.unwrap(), client.get_async_connection().await.unwrap());
    let lock = Lock::new(unique("paused-cluster"), 200 * MS).unwrap();
    let old = acquired(lock.try_acquire(&mut a).await.unwrap());
    tokio::time::sleep(300 * MS).await;
    let new = acquired(lock.try_acquire(&mut b).await.unwrap());
    assert_eq!(new.fenced_write(b"new", Some(Duration::from_secs(60))).await.unwrap(), FencedWrite::Written);
    assert_eq!(
        old.fenced_write(b"old", None).await.unwrap(),
        FencedWrite::Stale { highest_seen: new.fencing_token() }
    );
    assert_eq!(old.lost().await, LostReason::Expired);
    assert_eq!(old.release().await.unwrap(), Released::NotHeld);
    assert_eq!(new.release().await.unwrap(), Released::Yes);
}

async fn wrong_tokens<C: ConnectionLike + Clone + Send + 'static>(con: &mut C, check: C) {
    let lock = Lock::new(unique("tokens"), Duration::from_secs(5)).unwrap();
    let keys = lock.keys().clone();
    let guard = acquired(lock.try_acquire(con).await.unwrap());
    let token_on_server = || {
        let mut c = check.clone();
        let key = keys.lock().to_owned();
        async move { redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut c).await.unwrap() }
    };
    let wrong = "0123456789abcdef0123456789abcdef";
    let release = LockRelease { keys: &keys, token: wrong };
    assert_eq!(release.query_async(con).await.unwrap(), Released::NotHeld);
    let extend = LockExtend { keys: &keys, token: wrong, ttl: Duration::from_secs(60) };
    assert_eq!(extend.query_async(con).await.unwrap(), Extended::NotHeld);
    assert_eq!(token_on_server().await.as_deref(), Some(guard.token()));
    let pttl: i64 = redis::cmd("PTTL").arg(keys.lock()).query_async(&mut check.clone()).await.unwrap();
    assert!(pttl > 0 && pttl <= 5000, "a wrong token must not extend, pttl {pttl}");

    // The right token extends; releasing twice is harmless, also after someone else took it.
    assert_eq!(guard.extend(Duration::from_secs(8)).await.unwrap(), Extended::Yes);
    assert!(guard.valid_for() > Duration::from_secs(7));
    let token = guard.token().to_owned();
    assert_eq!(guard.release().await.unwrap(), Released::Yes);
    assert_eq!(LockRelease { keys: &keys, token: &token }.query_async(con).await.unwrap(), Released::NotHeld);
    let next = acquired(lock.try_acquire(con).await.unwrap());
    assert_eq!(LockRelease { keys: &keys, token: &token }.query_async(con).await.unwrap(), Released::NotHeld);
    assert_eq!(token_on_server().await.as_deref(), Some(next.token()), "the next holder keeps it");
    assert_eq!(next.release().await.unwrap(), Released::Yes);
    assert_eq!(token_on_server().await, None);
}

#[tokio::test]
async fn a_wrong_token_cannot_release_or_extend_and_double_release_is_harmless() {
    let server = Server::start();
    let client = server.client();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    wrong_tokens(&mut con, client.get_multiplexed_async_connection().await.unwrap()).await;

    let client = shared_cluster().client();
    let mut con = client.get_async_connection().await.unwrap();
    wrong_tokens(&mut con, client.get_async_connection().await.unwrap()).await;
}

fn invalid<T: std::fmt::Debug>(r: Result<T, Error>, arg: &str) {
    match r {
        Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, arg),
        other => panic!("expected InvalidArgument {arg}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_sending() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    invalid(Lock::new("", MS).map(drop), "resource");
    invalid(Lock::new("a}b", MS).map(drop), "resource");
    invalid(Lock::new("x".repeat(1025), MS).map(drop), "resource");
    // The shared hash-tag rule: only `}` ends a tag, so `{` is an ordinary byte of the name.
    assert_eq!(Lock::new("a{b", MS).unwrap().keys().lock(), "lock:{a{b}");
    invalid(Lock::new("ok", Duration::ZERO).map(drop), "ttl");
    invalid(Lock::new("ok", Duration::from_micros(900)).map(drop), "ttl");
    // Sub-millisecond parts are refused, not truncated (1.5 ms used to become 1 ms).
    invalid(Lock::new("ok", Duration::from_micros(1500)).map(drop), "ttl");
    invalid(Semaphore::new("s", 1, Duration::from_micros(1500)).map(drop), "ttl");
    invalid(Semaphore::new("", 1, MS).map(drop), "name");
    invalid(Semaphore::new("s", 0, MS).map(drop), "permits");
    invalid(Semaphore::new("s", 1, Duration::ZERO).map(drop), "ttl");
    invalid(semaphore_key("{s}").map(drop), "name");
    invalid(semaphore_key("s}").map(drop), "name");

    redis_primitives::script::preload_async(&mut con).await.unwrap(); // one EVALSHA per call below
    let before = server.calls("evalsha");
    let lock = Lock::new(unique("input"), Duration::from_secs(1)).unwrap();
    let keys = lock.keys();
    invalid(lock.fenced_write(&mut con, 0, b"v", None).await, "fence");
    invalid(lock.fenced_write(&mut con, 1, b"v", Some(Duration::ZERO)).await, "value_ttl");
    invalid(LockRelease { keys, token: "" }.query_async(&mut con).await, "token");
    invalid(LockExtend { keys, token: "t", ttl: Duration::ZERO }.query_async(&mut con).await, "ttl");
    invalid(
        SemaphoreExtend { key: "sem:{s}", token: &"x".repeat(257), ttl: MS }.query_async(&mut con).await,
        "token",
    );
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    invalid(guard.extend(Duration::ZERO).await, "ttl");
    // A watchdog needs a runtime: refused for blocking acquires, before anything is sent.
    let with_watchdog = lock.clone().watchdog(Duration::from_secs(1));
    invalid(with_watchdog.try_acquire_blocking(&mut server.conn()).map(drop), "watchdog");
    assert_eq!(server.calls("evalsha"), before + 1, "only the one valid acquire was sent");
    guard.release().await.unwrap();
}

#[test]
fn keys_share_one_slot() {
    let keys = LockKeys::new(unique("slot")).unwrap();
    let node = &shared_cluster().nodes[0];
    let slot = |k: &str| node.cmd::<i64>(&["CLUSTER", "KEYSLOT", k]);
    let s = slot(keys.lock());
    assert!([keys.fence(), keys.data(), keys.seen()].iter().all(|k| slot(k) == s));
    assert_eq!(slot(&semaphore_key(keys.resource()).unwrap()), s, "the same name hashes alike");
    // A `{` inside the name stays inside the hash tag: the keys still share one slot.
    let braced = LockKeys::new(format!("{{{}", unique("slot"))).unwrap();
    let s = slot(braced.lock());
    assert!([braced.fence(), braced.data(), braced.seen()].iter().all(|k| slot(k) == s));
}

#[tokio::test]
async fn acquire_waits_for_the_reported_pttl_and_honours_its_timeout() {
    let server = Server::start();
    let client = server.client();
    let (mut a, mut b) = (
        client.get_multiplexed_async_connection().await.unwrap(),
        client.get_multiplexed_async_connection().await.unwrap(),
    );
    // A slow backoff: only the PTTL bound can make the waiter wake in time.
    let slow = Backoff { initial: Duration::from_secs(2), max: Duration::from_secs(2) };
    let lock = Lock::new(unique("wait"), 300 * MS).unwrap().backoff(slow);
    let abandoned = acquired(lock.try_acquire_blocking(&mut server.conn()).unwrap());
    drop(abandoned); // a blocking guard leaves the lock to its TTL
    let t = Instant::now();
    let guard = acquired(lock.acquire(&mut a, Duration::from_secs(3)).await.unwrap());
    let waited = t.elapsed();
    assert!(waited < 450 * MS, "woke at the reported expiry, not after the 2 s backoff: {waited:?}");

    let t = Instant::now();
    match lock.acquire(&mut b, 150 * MS).await.unwrap() {
        Acquire::Held { retry_after } => assert!(retry_after > Duration::ZERO && retry_after <= 300 * MS),
        Acquire::Acquired(_) => panic!("the lock is held"),
    }
    let waited = t.elapsed();
    assert!(waited >= 150 * MS && waited < 400 * MS, "gave up at the timeout: {waited:?}");
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_never_exceeds_its_permits() {
    let server = Server::start();
    let client = server.client();
    let permits = 3;
    let sem = Semaphore::new(unique("sem"), permits, Duration::from_secs(5)).unwrap().backoff(fast());
    let mut set = tokio::task::JoinSet::new();
    for task in 0..12 {
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let sem = sem.clone();
        set.spawn(async move {
            let mut holds = Vec::new();
            for _ in 0..20 {
                let permit = acquired(sem.acquire(&mut con, Duration::from_secs(20)).await.unwrap());
                let start = Instant::now();
                assert!(permit.holders() <= permits);
                tokio::time::sleep(2 * MS).await;
                let end = Instant::now();
                assert!(!permit.is_lost());
                assert_eq!(permit.release().await.unwrap(), Released::Yes);
                holds.push(Hold { task, fence: 0, start, end });
            }
            holds
        });
    }
    let holds: Vec<Hold> = set.join_all().await.into_iter().flatten().collect();
    // Sweep: +1 at each start, -1 at each end (ends first at equal instants).
    let mut events: Vec<(Instant, i32)> = holds.iter().flat_map(|h| [(h.start, 1), (h.end, -1)]).collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    println!("[semaphore] {} holds by 12 tasks, at most {most} at once (permits {permits})", holds.len());
    assert!(most <= permits as i32, "{most} holders at once");
    assert!(most >= 2, "the permits were shared concurrently");
    assert!(!server.cmd::<bool>(&["EXISTS", sem.key()]), "every permit came back");
}

#[test]
fn an_abandoned_lease_frees_after_its_ttl() {
    let server = Server::start();
    let mut con = server.conn();
    let sem = Semaphore::new(unique("abandon"), 2, 300 * MS).unwrap();
    let t = Instant::now();
    let crashed: Vec<_> = (0..2).map(|_| acquired(sem.try_acquire_blocking(&mut con).unwrap())).collect();
    assert_eq!(crashed[1].holders(), 2);
    drop(crashed); // the holders "crash": nothing is released
    match sem.try_acquire_blocking(&mut con).unwrap() {
        Acquire::Held { retry_after } => assert!(retry_after <= 300 * MS),
        Acquire::Acquired(_) => panic!("both permits are taken"),
    }
    let permit = acquired(sem.acquire_blocking(&mut con, Duration::from_secs(2)).unwrap());
    let waited = t.elapsed();
    assert!(waited >= 280 * MS && waited < 600 * MS, "freed by expiry: {waited:?}");
    // The two leases expire a moment apart: the waiter may wake between them.
    assert!(permit.holders() <= 2);

    // Tokens: a wrong one neither extends nor releases; a second release is harmless.
    let key = sem.key();
    let wrong = SemaphoreRelease { key, token: "not-mine" };
    assert_eq!(wrong.query(&mut con).unwrap(), Released::NotHeld);
    assert_eq!(
        SemaphoreExtend { key, token: "not-mine", ttl: MS }.query(&mut con).unwrap(),
        Extended::NotHeld
    );
    assert_eq!(permit.extend_blocking(&mut con, Duration::from_secs(1)).unwrap(), Extended::Yes);
    let token = permit.token().to_owned();
    assert_eq!(permit.release_blocking(&mut con).unwrap(), Released::Yes);
    assert_eq!(SemaphoreRelease { key, token: &token }.query(&mut con).unwrap(), Released::NotHeld);
    // A crashed lease may have outlived the waiter by a moment; once every lease has ended the
    // key expires by itself (its PEXPIRE follows the latest lease, extended to 1 s above).
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.cmd::<bool>(&["EXISTS", key]) {
        assert!(Instant::now() < deadline, "an abandoned semaphore key outlived its leases");
        std::thread::sleep(10 * MS);
    }
}

/// Tokens rise strictly on every acquire, the fence key stores each token's exact digits (the
/// guard against a clock reading the same microsecond twice depends on it), a fence key ahead
/// of the clock is continued from, and a foreign value in it is replaced by the time floor.
#[test]
fn tokens_rise_strictly_and_the_fence_key_holds_them_exactly() {
    let server = Server::start();
    let mut con = server.conn();
    let lock = Lock::new(unique("exact"), Duration::from_secs(10)).unwrap();
    let mut last = 0;
    for _ in 0..200 {
        let g = acquired(lock.try_acquire_blocking(&mut con).unwrap());
        assert!(g.fencing_token() > last, "token {} after {last}", g.fencing_token());
        last = g.fencing_token();
        assert_eq!(server.cmd::<String>(&["GET", lock.keys().fence()]), last.to_string());
        g.release_blocking(&mut con).unwrap();
    }
    // Ahead of the clock (a clock stepped back): the next token continues from it.
    let ahead = last + 3_600_000_000; // an hour of microseconds
    let _: String = server.cmd(&["SET", lock.keys().fence(), &ahead.to_string()]);
    let g = acquired(lock.try_acquire_blocking(&mut con).unwrap());
    assert_eq!(g.fencing_token(), ahead + 1);
    assert_eq!(server.cmd::<String>(&["GET", lock.keys().fence()]), (ahead + 1).to_string());
    g.release_blocking(&mut con).unwrap();
    // Foreign content is replaced by the time floor: above every token the clock gave (`last`).
    for foreign in ["abc", "1e300", "-5", "99999999999999999999"] {
        let _: String = server.cmd(&["SET", lock.keys().fence(), foreign]);
        let g = acquired(lock.try_acquire_blocking(&mut con).unwrap());
        assert!(g.fencing_token() > last, "{foreign}: token {}", g.fencing_token());
        assert_eq!(server.cmd::<String>(&["GET", lock.keys().fence()]), g.fencing_token().to_string());
        g.release_blocking(&mut con).unwrap();
    }
}

#[tokio::test]
async fn semaphore_on_the_cluster() {
    let client = shared_cluster().client();
    let mut con = client.get_async_connection().await.unwrap();
    let sem = Semaphore::new(unique("sem-cluster"), 2, 300 * MS).unwrap();
    let a = acquired(sem.try_acquire(&mut con).await.unwrap());
    let b = acquired(sem.try_acquire(&mut con).await.unwrap());
    assert!(!sem.try_acquire(&mut con).await.unwrap().is_acquired());
    assert_eq!(a.release().await.unwrap(), Released::Yes);
    let c = acquired(sem.try_acquire(&mut con).await.unwrap());
    assert_eq!(c.extend(Duration::from_secs(5)).await.unwrap(), Extended::Yes);
    assert!(c.valid_for() > Duration::from_secs(4));
    std::mem::forget(b); // abandoned: no release, not even in the background
    let t = Instant::now();
    let d = acquired(sem.acquire(&mut con, Duration::from_secs(2)).await.unwrap());
    assert!(t.elapsed() < 500 * MS, "the abandoned lease expired: {:?}", t.elapsed());
    assert_eq!(c.release().await.unwrap(), Released::Yes);
    assert_eq!(d.release().await.unwrap(), Released::Yes);
}

#[tokio::test]
async fn watchdog_keeps_the_lock_past_several_ttls() {
    let server = Server::start();
    let client = server.client();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut other = client.get_multiplexed_async_connection().await.unwrap();
    // 600 ms: renewals every 200 ms keep it on a loaded machine too.
    let ttl = 600 * MS;
    let lock = Lock::new(unique("watchdog"), ttl).unwrap().watchdog(Duration::from_secs(30));
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    let extends = server.calls("evalsha");
    assert!(tokio::time::timeout(4 * ttl, guard.lost()).await.is_err(), "not lost while renewed");
    assert!(!guard.is_lost() && guard.valid_for() > ttl / 2);
    assert!(!lock.try_acquire(&mut other).await.unwrap().is_acquired(), "still held after 4 TTLs");
    assert!(server.calls("evalsha") >= extends + 10, "renewed about every ttl/3");
    assert_eq!(guard.release().await.unwrap(), Released::Yes);
    tokio::time::sleep(2 * ttl).await;
    assert!(!server.cmd::<bool>(&["EXISTS", lock.keys().lock()]), "nothing renews after release");
}

#[tokio::test]
async fn watchdog_tells_the_holder_within_one_renewal_period() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let ttl = 600 * MS;
    let period = ttl / 3;
    let lock = Lock::new(unique("watchdog-lost"), ttl).unwrap().watchdog(Duration::from_secs(30));
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    let lost = guard.lost();
    tokio::time::sleep(period + 50 * MS).await; // past one renewal
    let _: i64 = server.cmd(&["DEL", lock.keys().lock()]);
    let t = Instant::now();
    let reason = tokio::time::timeout(ttl, lost).await.expect("told before the TTL ran out");
    let told = t.elapsed();
    println!("[watchdog] lost({reason:?}) {told:?} after the key was deleted (period {period:?})");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(told <= period + 40 * MS, "told within one renewal period: {told:?}");
    assert!(guard.is_lost() && guard.valid_for().is_zero());
    assert_eq!(guard.release().await.unwrap(), Released::NotHeld);
}

#[tokio::test]
async fn watchdog_stops_at_the_cap_on_total_hold() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let lock = Lock::new(unique("watchdog-cap"), 300 * MS).unwrap().watchdog(700 * MS);
    let t = Instant::now();
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    assert_eq!(guard.lost().await, LostReason::MaxHold);
    let held = t.elapsed();
    assert!(held >= 600 * MS && held <= 720 * MS, "relied on until just before the cap: {held:?}");
    tokio::time::sleep(t + 700 * MS + 30 * MS - Instant::now()).await;
    assert!(!server.cmd::<bool>(&["EXISTS", lock.keys().lock()]), "the lease ends at the cap");
    assert_eq!(guard.release().await.unwrap(), Released::NotHeld);
}

async fn gone_within(server: &Server, key: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !server.cmd::<bool>(&["EXISTS", key]) {
            return true;
        }
        tokio::time::sleep(5 * MS).await;
    }
    false
}

#[tokio::test]
async fn dropping_a_guard_releases_in_the_background_or_leaves_it_to_the_ttl() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let ttl = Duration::from_secs(10);

    let lock = Lock::new(unique("drop"), ttl).unwrap();
    drop(acquired(lock.try_acquire(&mut con).await.unwrap()));
    assert!(gone_within(&server, lock.keys().lock(), 500 * MS).await, "released by the spawned task");

    let watched = Lock::new(unique("drop-watchdog"), 300 * MS).unwrap().watchdog(Duration::from_secs(30));
    drop(acquired(watched.try_acquire(&mut con).await.unwrap()));
    assert!(gone_within(&server, watched.keys().lock(), 500 * MS).await, "watchdog stopped, lock released");

    // A release future dropped before it ran (cancelled, e.g. by a select!) still releases.
    let lock = Lock::new(unique("drop-cancelled"), ttl).unwrap();
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    drop(guard.release());
    assert!(
        gone_within(&server, lock.keys().lock(), 500 * MS).await,
        "the guard's drop finished the release"
    );

    let sem = Semaphore::new(unique("drop-sem"), 1, ttl).unwrap();
    drop(acquired(sem.try_acquire(&mut con).await.unwrap()));
    assert!(gone_within(&server, sem.key(), 500 * MS).await, "the permit came back");

    // No runtime on the dropping thread: nothing is sent, nothing panics, the TTL remains.
    let lock = Lock::new(unique("drop-no-runtime"), ttl).unwrap();
    let guard: Guard<_> = acquired(lock.try_acquire(&mut con).await.unwrap());
    std::thread::spawn(move || drop(guard)).join().expect("drop without a runtime must not panic");
    tokio::time::sleep(50 * MS).await;
    let pttl: i64 = server.cmd(&["PTTL", lock.keys().lock()]);
    assert!(pttl > 0, "left to its TTL, pttl {pttl}");
}

/// Not asserted: prints the acquire+release pairs per second on one connection.
#[tokio::test]
async fn throughput_of_acquire_and_release_on_one_connection() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let lock = Lock::new(unique("throughput"), Duration::from_secs(5)).unwrap();
    let n = 2000;
    acquired(lock.try_acquire(&mut con).await.unwrap()).release().await.unwrap(); // load the scripts
    let t = Instant::now();
    for _ in 0..n {
        let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
        assert_eq!(guard.release().await.unwrap(), Released::Yes);
    }
    let async_rate = n as f64 / t.elapsed().as_secs_f64();

    let mut blocking = server.conn();
    let t = Instant::now();
    for _ in 0..n {
        let guard = acquired(lock.try_acquire_blocking(&mut blocking).unwrap());
        assert_eq!(guard.release_blocking(&mut blocking).unwrap(), Released::Yes);
    }
    let blocking_rate = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "[throughput] acquire+release pairs/s on one connection: async {async_rate:.0}, blocking {blocking_rate:.0}"
    );
}

/// An async connection that is not `Clone` (like a pooled one): a newtype over a multiplexed
/// connection.
struct NotClone(redis::aio::MultiplexedConnection);

impl ConnectionLike for NotClone {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        self.0.req_packed_command(cmd)
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }
    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Locks and semaphores take a connection that is not `Clone` through the one-line adapter
/// `SharedConnection::new`: acquire, fenced write, renewal by the watchdog, release, and the
/// release of a dropped guard all run on it; the connection comes back when nothing holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_not_clone_works_through_shared_connection() {
    let server = Server::start();
    let raw = NotClone(server.client().get_multiplexed_async_connection().await.unwrap());
    let mut con = SharedConnection::new(raw);
    // 600 ms: renewals every 200 ms keep it on a loaded machine too.
    let ttl = 600 * MS;
    let lock = Lock::new(unique("not-clone"), ttl).unwrap().watchdog(Duration::from_secs(30));
    let guard = acquired(lock.try_acquire(&mut con).await.unwrap());
    assert_eq!(guard.fenced_write(b"v", None).await.unwrap(), FencedWrite::Written);
    assert!(tokio::time::timeout(3 * ttl, guard.lost()).await.is_err(), "renewed on the shared connection");
    assert!(!lock.try_acquire(&mut con).await.unwrap().is_acquired());
    assert_eq!(guard.release().await.unwrap(), Released::Yes);

    let sem = Semaphore::new(unique("not-clone"), 1, Duration::from_secs(10)).unwrap();
    drop(acquired(sem.acquire(&mut con, Duration::from_secs(1)).await.unwrap()));
    assert!(gone_within(&server, sem.key(), 500 * MS).await, "the dropped permit was released");
    let guard = acquired(lock.acquire(&mut con, Duration::from_secs(1)).await.unwrap());
    assert_eq!(guard.release().await.unwrap(), Released::Yes);
    // The background release task of the dropped permit lets go of its handle soon after.
    let waited = Instant::now();
    let mut raw = loop {
        match con.into_inner() {
            Ok(raw) => break raw,
            Err(shared) if waited.elapsed() < Duration::from_secs(2) => {
                con = shared;
                tokio::time::sleep(10 * MS).await;
            }
            Err(_) => panic!("something still holds the connection 2 s after every guard was released"),
        }
    };
    let _: () = redis::cmd("PING").query_async(&mut raw).await.unwrap();
}
