//! The cache under faults, against real servers and fake ones: Redis killed mid-run (standalone,
//! and a cluster primary), servers that never answer, answer garbage or close every connection;
//! fill leases given back by cancelled, failing and panicking fills; no argument that panics.
//!
//! Every call must return within its bound plus [`MARGIN`]: the cache's deadline for a single
//! call; `max(max wait, deadline) + compute + deadline` for `get_or_compute`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, FakeServer, Server, quiet_client, shared_cluster, unique};
use redis::aio::ConnectionLike;
use redis_primitives::Error;
use redis_primitives::cache::{Cache, Version};

const MINUTE: Duration = Duration::from_secs(60);

/// How far past its bound a call may return (scheduling on a loaded 2-core machine).
const MARGIN: Duration = Duration::from_millis(250);

/// What one call did.
#[derive(Debug)]
struct Outcome {
    call: &'static str,
    result: Result<(), Error>,
    took: Duration,
    bound: Duration,
}

impl Outcome {
    fn overshoot(&self) -> Duration {
        self.took.saturating_sub(self.bound)
    }
}

/// A multiplexed connection without redis-rs's own response timeout: only the cache's deadline
/// cuts a call.
async fn async_con(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)));
    quiet_client(url).get_multiplexed_async_connection_with_config(&config).await.unwrap()
}

/// A blocking connection whose round trips are bounded by `timeout` (what bounds a blocking call).
fn blocking_con(url: &str, timeout: Duration) -> redis::Connection {
    let con = quiet_client(url).get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    con.set_read_timeout(Some(timeout)).unwrap();
    con.set_write_timeout(Some(timeout)).unwrap();
    con
}

/// The documented bound of `get_or_compute` whose compute takes `compute`.
fn fill_bound(cache: &Cache, compute: Duration) -> Duration {
    cache.max_wait().max(cache.deadline()) + compute + cache.deadline()
}

/// Every public async call of the cache once, each timed against its bound.
async fn every_async_call<C>(cache: &Cache, con: &mut C, key: &str) -> Vec<Outcome>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut out = Vec::new();
    let (single, fill) = (cache.deadline(), fill_bound(cache, Duration::ZERO));
    macro_rules! timed {
        ($name:expr, $bound:expr, $call:expr) => {{
            let t = Instant::now();
            let result = $call.await.map(|_| ());
            out.push(Outcome { call: $name, result, took: t.elapsed(), bound: $bound });
        }};
    }
    let v = Version::default();
    timed!("get", single, cache.get(con, key));
    timed!("set", single, cache.set(con, key, b"v", MINUTE, v));
    timed!("set_not_found", single, cache.set_not_found(con, key, MINUTE, v));
    timed!("delete", single, cache.delete(con, key));
    timed!("invalidate", single, cache.invalidate(con));
    let compute = || async { Ok::<_, std::io::Error>(Some(b"c".to_vec())) };
    timed!("get_or_compute", fill, cache.get_or_compute(con, key, MINUTE, compute));
    #[cfg(feature = "serde")]
    timed!(
        "get_or_compute_json",
        fill,
        cache.get_or_compute_json(con, &format!("{key}-json"), MINUTE, || async {
            Ok::<_, std::io::Error>(Some(7u32))
        })
    );
    out
}

/// Every public blocking call once. A blocking round trip is bounded by the connection's
/// timeout `rt`; a blocking fill makes at most a read, the wait, a last read and a release.
fn every_blocking_call(
    cache: &Cache,
    con: &mut dyn redis::ConnectionLike,
    key: &str,
    rt: Duration,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let fill = cache.max_wait().max(rt) + 2 * rt;
    let mut timed = |call, bound, f: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> Result<(), Error>| {
        let t = Instant::now();
        let result = f(con);
        out.push(Outcome { call, result, took: t.elapsed(), bound });
    };
    let v = Version::default();
    timed("get_blocking", rt, &mut |c| cache.get_blocking(c, key).map(drop));
    timed("set_blocking", rt, &mut |c| cache.set_blocking(c, key, b"v", MINUTE, v).map(drop));
    timed("set_not_found_blocking", rt, &mut |c| cache.set_not_found_blocking(c, key, MINUTE, v).map(drop));
    timed("delete_blocking", rt, &mut |c| cache.delete_blocking(c, key).map(drop));
    timed("invalidate_blocking", rt, &mut |c| cache.invalidate_blocking(c).map(drop));
    timed("get_or_compute_blocking", fill, &mut |c| {
        cache
            .get_or_compute_blocking(c, key, MINUTE, || Ok::<_, std::io::Error>(Some(b"c".to_vec())))
            .map(drop)
    });
    out
}

/// Fails on any call past its bound + margin; prints the worst overshoot.
fn check_bounds(what: &str, outcomes: &[Outcome]) {
    let worst = outcomes.iter().max_by_key(|o| o.overshoot()).expect("some calls");
    let (ok, failed) = (outcomes.iter().filter(|o| o.result.is_ok()).count(), outcomes.len());
    eprintln!(
        "{what}: {} calls ({ok} ok); max overshoot past the bound {:?} ({} took {:?}, bound {:?})",
        failed,
        worst.overshoot(),
        worst.call,
        worst.took,
        worst.bound
    );
    for o in outcomes {
        assert!(
            o.overshoot() <= MARGIN,
            "{what}: {} took {:?}, bound {:?}: {:?}",
            o.call,
            o.took,
            o.bound,
            o.result
        );
    }
}

fn short_cache(prefix: &str) -> Cache {
    Cache::new(unique(prefix))
        .unwrap()
        .with_deadline(Duration::from_millis(400))
        .with_lease(Duration::from_secs(1))
        .unwrap()
        .with_max_wait(Duration::from_millis(600))
}

/// Runs every async call in a loop on `con` until `until`.
async fn hammer<C>(cache: Cache, mut con: C, until: Instant) -> Vec<Outcome>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut all = Vec::new();
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let round = every_async_call(&cache, &mut con, &format!("k{}", i % 5)).await;
        // A dead connection fails at once: pause, as a service would, rather than spin and
        // starve the other tasks of the 2 runtime threads (which would measure the test).
        if round.iter().any(|o| o.result.is_err()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        all.extend(round);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_returns_within_its_bound_when_redis_is_killed_mid_run() {
    let mut server = Server::start();
    let cache = short_cache("killed");
    let until = Instant::now() + Duration::from_secs(4);
    let multiplexed = async_con(&server.url()).await;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(1)));
    let manager = server.client().get_connection_manager_with_config(config).await.unwrap();
    let tasks = [
        tokio::spawn(hammer(cache.clone(), multiplexed.clone(), until)),
        tokio::spawn(hammer(cache.clone(), multiplexed, until)),
        tokio::spawn(hammer(cache.clone(), manager.clone(), until)),
        tokio::spawn(hammer(cache.clone(), manager, until)),
    ];
    let rt = cache.deadline();
    let mut blocking = blocking_con(&server.url(), rt);
    let (blocking_cache, url) = (cache.clone(), server.url());
    let blocking = std::thread::spawn(move || {
        let mut all = Vec::new();
        while Instant::now() < until {
            let round = every_blocking_call(&blocking_cache, &mut blocking, "b", rt);
            let failed = round.iter().any(|o| o.result.is_err());
            all.extend(round);
            if failed {
                std::thread::sleep(Duration::from_millis(5));
                // A broken blocking connection stays broken: reconnect when the server allows.
                if let Ok(c) = quiet_client(&url).get_connection_with_timeout(rt) {
                    let _ = c.set_read_timeout(Some(rt));
                    blocking = c;
                }
            }
        }
        all
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.kill();
    let killed_at = Instant::now();

    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let blocking = blocking.join().unwrap();
    eprintln!(
        "killed after 1.2 s; ran until {:?} after the kill",
        until.saturating_duration_since(killed_at)
    );
    assert!(all.iter().any(|o| o.result.is_ok()), "calls succeeded before the kill");
    assert!(all.iter().any(|o| o.result.is_err()), "calls failed after the kill");
    assert!(
        all.iter().all(|o| !matches!(o.result, Err(Error::InvalidArgument { .. }))),
        "only server errors"
    );
    check_bounds("async, Redis killed mid-run", &all);
    check_bounds("blocking, Redis killed mid-run", &blocking);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_returns_within_its_bound_when_a_cluster_primary_is_killed() {
    let mut cluster = Cluster::start();
    let cache = short_cache("killed-cluster");
    let mut con = cluster.client().get_async_connection().await.unwrap();
    let warm = every_async_call(&cache, &mut con, "k").await;
    assert!(warm.iter().all(|o| o.result.is_ok()), "{warm:?}");

    let (primary, _) = cluster.owners(&cache.version_key());
    let until = Instant::now() + Duration::from_secs(9);
    let task = tokio::spawn(hammer(cache.clone(), con.clone(), until));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes.iter_mut().find(|n| n.port() == primary).unwrap().kill();
    let all = task.await.unwrap();
    // The replica takes over after the node timeout (2 s): calls work again.
    let recovered = all.iter().rev().take(6).filter(|o| o.result.is_ok()).count();
    eprintln!("cluster primary killed: {recovered} of the last 6 calls succeeded after the failover");
    assert!(all.iter().any(|o| o.result.is_err()), "calls failed while the slot had no primary");
    assert_eq!(recovered, 6, "the cache works again on the promoted replica (NOSCRIPT recovered)");
    check_bounds("cluster, primary killed mid-run", &all);
}

/// Every call against a fake server fails with a typed error within its bound, and nothing
/// panics. `expect` says which errors are right for this server.
async fn against_fake(server: &FakeServer, expect: fn(&Error) -> bool) -> (Vec<Outcome>, Vec<Outcome>) {
    let cache = Cache::new(unique("fake"))
        .unwrap()
        .with_deadline(Duration::from_millis(300))
        .with_max_wait(Duration::from_millis(300));
    let mut con = async_con(&server.url()).await;
    let async_calls = every_async_call(&cache, &mut con, "k").await;
    let rt = Duration::from_millis(300);
    let url = server.url();
    let blocking_calls = tokio::task::spawn_blocking(move || {
        let mut con = blocking_con(&url, rt);
        every_blocking_call(&cache, &mut con, "k", rt)
    })
    .await
    .unwrap();
    for o in async_calls.iter().chain(&blocking_calls) {
        match &o.result {
            Err(e) => assert!(expect(e), "{}: {e:?}", o.call),
            // A bare integer is a valid answer for an invalidation (the new version).
            Ok(()) => assert!(o.call.starts_with("invalidate"), "{} succeeded against a fake", o.call),
        }
    }
    (async_calls, blocking_calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_ends_every_call_at_its_deadline() {
    let server = FakeServer::black_hole();
    let (a, b) = against_fake(&server, |e| matches!(e, Error::Timeout(_) | Error::Connection(_))).await;
    assert!(a.iter().all(|o| matches!(o.result, Err(Error::Timeout(_)))), "async calls end by the deadline");
    // A fill whose first read timed out also tried to give back the lease that read may have
    // taken: 2 calls; every other call 1.
    check_bounds("black hole (async)", &a);
    check_bounds("black hole (blocking)", &b);
    assert!(a.iter().all(|o| o.took >= Duration::from_millis(250)), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_shapes_are_unexpected_replies() {
    for (name, server) in [("garbage", FakeServer::garbage()), ("wrong shape", FakeServer::wrong_shape())] {
        let (a, b) =
            against_fake(&server, |e| matches!(e, Error::UnexpectedReply { .. } | Error::Connection(_)))
                .await;
        let unexpected =
            a.iter().chain(&b).filter(|o| matches!(o.result, Err(Error::UnexpectedReply { .. })));
        assert!(unexpected.count() >= 2, "{name}: {a:?} {b:?}");
        check_bounds(name, &a);
        check_bounds(name, &b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_every_connection_is_a_connection_error() {
    let server = FakeServer::closing();
    let (a, b) = against_fake(&server, |e| matches!(e, Error::Connection(_))).await;
    check_bounds("closing (async)", &a);
    check_bounds("closing (blocking)", &b);
}

/// A caller holds the fill lease (its compute started) of a cache whose lease lasts 30 s; then
/// `end` ends that fill without finishing it. Another caller must compute at once.
async fn lease_comes_back<C>(con: C, end: &str)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let cache = Cache::new(unique("lease")).unwrap().with_lease(Duration::from_secs(30)).unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (mut a_con, mut b_con) = (con.clone(), con.clone());
    let a_cache = cache.clone();
    let end_owned = end.to_owned();
    let a = tokio::spawn(async move {
        a_cache
            .get_or_compute(&mut a_con, "k", MINUTE, || async move {
                let _ = started_tx.send(());
                match end_owned.as_str() {
                    "fails" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err(std::io::Error::other("backend down"))
                    }
                    "panics" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        panic!("compute panicked (on purpose)")
                    }
                    _ => std::future::pending().await,
                }
            })
            .await
    });
    started_rx.await.unwrap();
    let started = Instant::now();
    if end == "cancelled" {
        a.abort();
    }
    let computed = AtomicU32::new(0);
    let got = cache
        .get_or_compute(&mut b_con, "k", MINUTE, || async {
            computed.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(b"b".to_vec()))
        })
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("fill {end}: the next caller computed after {took:?} (the lease lasts 30 s)");
    assert_eq!(got.as_deref(), Some(&b"b"[..]));
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    assert!(took < Duration::from_secs(3), "another caller computed at once: {took:?}");
    match a.await {
        Ok(Err(Error::Compute(e))) => assert_eq!((end, e.to_string().as_str()), ("fails", "backend down")),
        Err(j) => assert!(j.is_cancelled() || j.is_panic(), "{j}"),
        Ok(other) => panic!("{end}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_failing_or_panicking_fill_gives_its_lease_back() {
    let server = Server::start();
    let con = server.client().get_multiplexed_async_connection().await.unwrap();
    for end in ["cancelled", "fails", "panics"] {
        lease_comes_back(con.clone(), end).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_failing_or_panicking_fill_gives_its_lease_back_on_a_cluster() {
    let con = shared_cluster().client().get_async_connection().await.unwrap();
    for end in ["cancelled", "fails", "panics"] {
        lease_comes_back(con.clone(), end).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_cut_by_a_timeout_gives_its_lease_back() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let cache = Cache::new(unique("timeout")).unwrap().with_lease(Duration::from_secs(30)).unwrap();
    let slow = cache.get_or_compute(&mut con, "k", MINUTE, || async {
        tokio::time::sleep(MINUTE).await;
        Ok::<_, std::io::Error>(Some(b"late".to_vec()))
    });
    assert!(tokio::time::timeout(Duration::from_millis(200), slow).await.is_err());
    let lease = cache.lease_key("k");
    let started = Instant::now();
    while server.cmd::<i64>(&["EXISTS", &lease]) == 1 {
        assert!(started.elapsed() < Duration::from_secs(2), "the spawned release freed the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("lease freed {:?} after the caller's timeout dropped the fill", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_connection_is_killed_keeps_waiting_and_is_served() {
    let server = Server::start();
    let cache = Cache::new(unique("waiter")).unwrap();
    let mut a_con = server.client().get_multiplexed_async_connection().await.unwrap();
    // A connection manager reconnects after a kill, so the waiter's retries can get through.
    let mut b_con = server.client().get_connection_manager().await.unwrap();
    let b_id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut b_con).await.unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let a_cache = cache.clone();
    let a = tokio::spawn(async move {
        a_cache
            .get_or_compute(&mut a_con, "k", MINUTE, || async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok::<_, std::io::Error>(Some(b"from a".to_vec()))
            })
            .await
    });
    started_rx.await.unwrap();
    let b_cache = cache.clone();
    let b = tokio::spawn(async move {
        b_cache
            .get_or_compute(&mut b_con, "k", MINUTE, || async {
                Ok::<_, std::io::Error>(Some(b"from b".to_vec()))
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // b is waiting for a's fill
    let killed: i64 = server.cmd(&["CLIENT", "KILL", "ID", &b_id.to_string()]);
    assert_eq!(killed, 1);
    assert_eq!(a.await.unwrap().unwrap().as_deref(), Some(&b"from a"[..]));
    // The lost connection is transient: the same leased read is sent again, and b is served
    // a's value rather than failing or computing its own.
    assert_eq!(b.await.unwrap().unwrap().as_deref(), Some(&b"from a"[..]));
}

#[test]
fn a_failing_blocking_fill_gives_its_lease_back() {
    let server = Server::start();
    let mut con = server.conn();
    let cache = Cache::new(unique("blocking")).unwrap().with_lease(Duration::from_secs(30)).unwrap();
    let err = cache
        .get_or_compute_blocking(&mut con, "k", MINUTE, || {
            Err::<Option<Vec<u8>>, _>(std::io::Error::other("no"))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Compute(_)), "{err:?}");
    assert_eq!(server.cmd::<i64>(&["EXISTS", &cache.lease_key("k")]), 0, "lease given back at once");
    let got =
        cache.get_or_compute_blocking(&mut con, "k", MINUTE, || Ok::<_, std::io::Error>(Some(b"v".to_vec())));
    assert_eq!(got.unwrap().as_deref(), Some(&b"v"[..]));
}

/// Edge values for every kind of argument.
fn durations() -> Vec<Duration> {
    let mut d = vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
        Duration::from_micros(1500),
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_millis(1_000_000_000_000),
        Duration::from_millis(1_000_000_000_001),
        Duration::from_millis(u64::MAX),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ];
    // And some random ones, whole milliseconds or not, across the whole range.
    for _ in 0..20 {
        let scale = rand::random_range(0..64u32);
        d.push(Duration::from_nanos(rand::random::<u64>() >> scale));
        d.push(Duration::from_millis(rand::random::<u64>() >> scale));
    }
    d
}

/// What `rules::millis` accepts: whole milliseconds, 1 ms ..= 10^12 ms.
fn valid_millis(d: Duration) -> bool {
    d.subsec_nanos().is_multiple_of(1_000_000) && (1..=1_000_000_000_000).contains(&d.as_millis())
}

fn strings() -> Vec<String> {
    ["", "}", "{", "a}b", "{a}", "\0", "ключ", ":", " "]
        .iter()
        .map(|s| s.to_string())
        .chain(["x".repeat(1024), "x".repeat(1025), "}".repeat(2000)])
        .collect()
}

fn invalid(e: &Result<impl std::fmt::Debug, Error>, name: &str) -> bool {
    matches!(e, Err(Error::InvalidArgument { name: n, .. }) if *n == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_argument_panics_and_bad_ones_are_refused_before_sending() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let base = Cache::new(unique("args")).unwrap();
    for s in strings() {
        let ok = !s.is_empty() && s.len() <= 1024 && !s.contains('}');
        assert_eq!(Cache::new(s.clone()).is_ok(), ok, "segment {s:?}");
    }
    for d in durations() {
        let ok = valid_millis(d);
        assert_eq!(base.clone().with_lease(d).is_ok(), ok, "lease {d:?}");
        assert_eq!(base.clone().with_negative_ttl(d).is_ok(), ok, "negative ttl {d:?}");
        assert_eq!(base.clone().with_tombstone(d).is_ok(), ok, "tombstone {d:?}");
        let _ = base.clone().with_max_wait(d).max_wait();
        let _ = base.clone().with_deadline(d).deadline();
    }
    for beta in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0, 0.0, 1.0, 1000.0, 1000.1, f64::MAX] {
        assert_eq!(base.clone().with_beta(beta).is_ok(), (0.0..=1000.0).contains(&beta), "beta {beta}");
    }

    // Every call with every key and ttl, on caches at the extremes of their settings.
    let caches = [
        base.clone(),
        base.clone().with_deadline(Duration::MAX).with_max_wait(Duration::MAX),
        base.clone().with_max_wait(Duration::ZERO).with_beta(1000.0).unwrap(),
        base.clone().with_lease(Duration::from_millis(1_000_000_000_000)).unwrap(),
    ];
    let v = Version::default();
    let mut sent = 0;
    for cache in &caches {
        for key in strings() {
            let key_ok = !key.is_empty() && key.len() <= 1024;
            for ttl in durations().into_iter().take(12) {
                let ttl_ok = valid_millis(ttl);
                let compute = || async { Ok::<_, std::io::Error>(Some(b"c".to_vec())) };
                let results = [
                    cache.get(&mut con, &key).await.map(drop),
                    cache.set(&mut con, &key, b"v", ttl, v).await.map(drop),
                    cache.set_not_found(&mut con, &key, ttl, v).await.map(drop),
                    cache.delete(&mut con, &key).await.map(drop),
                    cache.get_or_compute(&mut con, &key, ttl, compute).await.map(drop),
                ];
                for (i, r) in results.iter().enumerate() {
                    let ttl_matters = (1..=2).contains(&i) || i == 4;
                    match (key_ok, ttl_ok || !ttl_matters) {
                        (false, _) => assert!(invalid(r, "key"), "key {key:?}: {r:?}"),
                        (true, false) => assert!(invalid(r, "ttl"), "ttl {ttl:?}: {r:?}"),
                        (true, true) => {
                            assert!(r.is_ok(), "key {key:?} ttl {ttl:?} call {i}: {r:?}");
                            sent += 1;
                        }
                    }
                }
            }
        }
        cache.invalidate(&mut con).await.unwrap();
    }
    eprintln!("{sent} calls with edge-value arguments answered by the server; every bad one refused");

    // The blocking twins check the same way.
    let mut bcon = server.conn();
    for d in durations() {
        let r = base.set_not_found_blocking(&mut bcon, "k", d, v);
        assert_eq!(r.is_ok(), valid_millis(d), "{d:?}: {r:?}");
        let r = base.get_or_compute_blocking(&mut bcon, "", d, || Ok::<_, std::io::Error>(None));
        assert!(invalid(&r, "key"), "{r:?}");
    }
}

#[tokio::test]
async fn a_cache_with_a_zero_deadline_times_out_instead_of_panicking() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let cache =
        Cache::new(unique("zero")).unwrap().with_deadline(Duration::ZERO).with_max_wait(Duration::ZERO);
    for o in every_async_call(&cache, &mut con, "k").await {
        assert!(matches!(o.result, Ok(()) | Err(Error::Timeout(_))), "{}: {:?}", o.call, o.result);
        assert!(o.took < MARGIN, "{}: {:?}", o.call, o.took);
    }
}
