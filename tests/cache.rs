//! The versioned cache against real Redis (standalone and a local cluster): invalidation races,
//! single flight across many connections, filler failure and death, early refresh, one round
//! trip per read, negative caching and bad input.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Server, shared_cluster, unique};
use redis_primitives::Error;
use redis_primitives::cache::{Cache, Entry, Stored};
use redis_primitives::script;

const MINUTE: Duration = Duration::from_secs(60);

async fn a_bump_or_delete_between_get_and_set_refuses_the_set<C>(mut con: C)
where
    C: redis::aio::ConnectionLike + Send,
{
    let cache = Cache::new(unique("seg")).unwrap();
    let read = cache.get(&mut con, "k").await.unwrap();
    assert_eq!(read.entry, Entry::Miss);
    cache.invalidate(&mut con).await.unwrap(); // lands between the filler's read and its write
    assert_eq!(cache.set(&mut con, "k", b"stale", MINUTE, read.version).await.unwrap(), Stored::Stale);
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Miss, "nothing stale was written");

    let read = cache.get(&mut con, "k").await.unwrap();
    assert_eq!(cache.set(&mut con, "k", b"v1", MINUTE, read.version).await.unwrap(), Stored::Stored);
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Hit(b"v1".to_vec()));

    // A bump invalidates every entry of the segment at once.
    let read_other = cache.get(&mut con, "other").await.unwrap();
    cache.set(&mut con, "other", b"o", MINUTE, read_other.version).await.unwrap();
    let v = cache.invalidate(&mut con).await.unwrap();
    assert!(v > read.version.segment());
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Miss);
    assert_eq!(cache.get(&mut con, "other").await.unwrap().entry, Entry::Miss);

    // A delete between a read and a write refuses the write too, and leaves other keys alone.
    let read = cache.get(&mut con, "k").await.unwrap();
    cache.set(&mut con, "k", b"v2", MINUTE, read.version).await.unwrap();
    let read_again = cache.get(&mut con, "other").await.unwrap();
    cache.set(&mut con, "other", b"o2", MINUTE, read_again.version).await.unwrap();
    let before_delete = cache.get(&mut con, "k").await.unwrap();
    assert!(cache.delete(&mut con, "k").await.unwrap());
    assert_eq!(cache.set(&mut con, "k", b"old", MINUTE, before_delete.version).await.unwrap(), Stored::Stale);
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Miss);
    assert_eq!(cache.get(&mut con, "other").await.unwrap().entry, Entry::Hit(b"o2".to_vec()));
    assert!(!cache.delete(&mut con, "k").await.unwrap(), "deleting a missing entry reports false");
}

#[tokio::test]
async fn invalidation_races_refuse_stale_writes() {
    let server = Server::start();
    a_bump_or_delete_between_get_and_set_refuses_the_set(
        server.client().get_multiplexed_async_connection().await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn invalidation_races_refuse_stale_writes_on_a_cluster() {
    a_bump_or_delete_between_get_and_set_refuses_the_set(
        shared_cluster().client().get_async_connection().await.unwrap(),
    )
    .await;
}

/// 50 concurrent `get_or_compute` calls over 8 connections on a cold key; returns how many times
/// the compute function ran and the values the callers got.
async fn stampede<C>(cache: &Cache, conns: Vec<C>, key: &str, fail_first: bool) -> (u32, Vec<Option<Vec<u8>>>)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let computed = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut con = conns[i % conns.len()].clone();
        let cache = cache.clone();
        let key = key.to_owned();
        let computed = computed.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(&mut con, &key, MINUTE, || async {
                    let n = computed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if fail_first && n == 0 {
                        return Err(std::io::Error::other("backend down"));
                    }
                    Ok(Some(b"value".to_vec()))
                })
                .await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => values.push(v),
            Err(Error::Compute(e)) if fail_first => assert_eq!(e.to_string(), "backend down"),
            Err(e) => panic!("{e}"),
        }
    }
    (computed.load(Ordering::SeqCst), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_is_computed_once_across_50_callers() {
    let server = Server::start();
    let client = server.client();
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let cache = Cache::new(unique("stampede")).unwrap();
    let (computed, values) = stampede(&cache, conns.clone(), "cold", false).await;
    eprintln!("stampede (standalone): 50 concurrent callers, compute ran {computed} time(s)");
    assert_eq!(computed, 1);
    assert_eq!(values.len(), 50);
    assert!(values.iter().all(|v| v.as_deref() == Some(&b"value"[..])));

    // The filler fails: its lease is freed at once and one waiting caller takes over.
    let (computed, values) = stampede(&cache, conns, "fails", true).await;
    eprintln!(
        "stampede with a failing filler: compute ran {computed} time(s), {} callers served",
        values.len()
    );
    assert_eq!(computed, 2, "one failure, then exactly one successful fill");
    assert_eq!(values.len(), 49, "every caller but the failed filler got the value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_is_computed_once_on_a_cluster() {
    let client = shared_cluster().client();
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(client.get_async_connection().await.unwrap());
    }
    let cache = Cache::new(unique("stampede")).unwrap();
    let (computed, values) = stampede(&cache, conns, "cold", false).await;
    eprintln!("stampede (cluster): 50 concurrent callers, compute ran {computed} time(s)");
    assert_eq!((computed, values.len()), (1, 50));
}

#[tokio::test]
async fn a_filler_that_dies_is_replaced_after_its_lease_expires() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let cache = Cache::new(unique("dead")).unwrap().with_lease(Duration::from_millis(300)).unwrap();
    // A filler takes the lease and dies (never writes, never releases).
    let v = script::get("cache.get")
        .unwrap()
        .invoke()
        .key(cache.version_key())
        .key(cache.entry_key("k"))
        .key(cache.lease_key("k"))
        .arg("dead-filler")
        .arg(300)
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(matches!(v, redis::Value::Array(ref a) if a[0] == redis::Value::Int(3)), "{v:?}");

    let started = Instant::now();
    let got = cache
        .get_or_compute(&mut con, "k", MINUTE, || async { Ok::<_, std::io::Error>(Some(b"fresh".to_vec())) })
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(got.as_deref(), Some(&b"fresh"[..]));
    assert!(waited >= Duration::from_millis(200), "waited for the dead lease: {waited:?}");
    assert!(waited < Duration::from_millis(1500), "took over soon after expiry: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_near_expiry_is_refreshed_early_by_one_caller_while_served() {
    let server = Server::start();
    let client = server.client();
    let cache = Cache::new(unique("early")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // An entry that took 100 s to compute and lives 5 s: by XFetch it is due for refresh.
    let read = cache.get(&mut con, "k").await.unwrap();
    let _: redis::Value = script::get("cache.set")
        .unwrap()
        .invoke()
        .key(cache.version_key())
        .key(cache.entry_key("k"))
        .key(cache.lease_key("k"))
        .arg(read.version.segment())
        .arg(read.version.generation())
        .arg("old")
        .arg(5000)
        .arg(100_000)
        .arg("")
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();

    let refreshed = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let cache = cache.clone();
        let refreshed = refreshed.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(&mut con, "k", MINUTE, || async {
                    refreshed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Some(b"new".to_vec()))
                })
                .await
                .unwrap()
        }));
    }
    let mut got = BTreeMap::new();
    for t in tasks {
        *got.entry(t.await.unwrap().unwrap()).or_insert(0) += 1;
    }
    eprintln!(
        "early refresh: {} refresh computation(s); values served: {got:?}",
        refreshed.load(Ordering::SeqCst)
    );
    assert_eq!(refreshed.load(Ordering::SeqCst), 1, "one caller got the refresh lease");
    assert_eq!(got.get(b"new".as_slice()), Some(&1), "the refresher returns the new value");
    assert_eq!(got.get(b"old".as_slice()), Some(&9), "everyone else was served the current value at once");
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Hit(b"new".to_vec()));
    let ttl: i64 = server.cmd(&["PTTL", &cache.entry_key("k")]);
    assert!(ttl > 50_000, "the refreshed entry has the new TTL: {ttl}");
}

fn commandstats(server: &Server) -> BTreeMap<String, u64> {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|p| p.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test]
async fn a_get_is_one_round_trip() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let cache = Cache::new(unique("rt")).unwrap();
    let read = cache.get(&mut con, "k").await.unwrap(); // loads the script (NOSCRIPT recovery)
    cache.set(&mut con, "k", b"v", MINUTE, read.version).await.unwrap();
    let _ = cache.get(&mut con, "k").await.unwrap();

    let before = commandstats(&server);
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Hit(b"v".to_vec()));
    let after = commandstats(&server);
    let diff: BTreeMap<_, _> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, n)| {
            let d = n - before.get(name).copied().unwrap_or(0);
            (d > 0).then(|| (name.clone(), d))
        })
        .collect();
    eprintln!("commands for one cache get (commandstats also counts the script's own calls): {diff:?}");
    // One command from the client; GET (version) and HMGET (entry) run inside that script call.
    let from_client: u64 = diff.iter().filter(|(n, _)| n.starts_with("eval")).map(|(_, d)| d).sum();
    assert_eq!(from_client, 1);
    assert_eq!(diff.get("evalsha_ro"), Some(&1), "a plain read is sent read-only");
    assert!(diff.keys().all(|n| ["evalsha_ro", "get", "hmget"].contains(&n.as_str())), "{diff:?}");
}

#[tokio::test]
async fn not_found_is_cached_when_asked() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let computed = AtomicU32::new(0);
    let plain = Cache::new(unique("neg")).unwrap();
    let negative = Cache::new(unique("neg")).unwrap().with_negative_ttl(MINUTE).unwrap();
    for cache in [&plain, &negative] {
        for _ in 0..3 {
            let got = cache
                .get_or_compute(&mut con, "missing", MINUTE, || async {
                    computed.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(None)
                })
                .await
                .unwrap();
            assert_eq!(got, None);
        }
    }
    assert_eq!(computed.load(Ordering::SeqCst), 3 + 1, "without negative caching every call computes");
    assert_eq!(negative.get(&mut con, "missing").await.unwrap().entry, Entry::NotFound);
    assert_eq!(plain.get(&mut con, "missing").await.unwrap().entry, Entry::Miss);
    let leases: i64 = server.cmd(&["EXISTS", &plain.lease_key("missing"), &negative.lease_key("missing")]);
    assert_eq!(leases, 0, "no lease is left behind");
}

#[test]
fn blocking_api() {
    let server = Server::start();
    let mut con = server.conn();
    let cache = Cache::new(unique("blocking")).unwrap();
    let got =
        cache.get_or_compute_blocking(&mut con, "k", MINUTE, || Ok::<_, std::io::Error>(Some(b"v".to_vec())));
    assert_eq!(got.unwrap().as_deref(), Some(&b"v"[..]));
    let read = cache.get_blocking(&mut con, "k").unwrap();
    assert_eq!(read.entry, Entry::Hit(b"v".to_vec()));
    cache.invalidate_blocking(&mut con).unwrap();
    assert_eq!(cache.set_blocking(&mut con, "k", b"x", MINUTE, read.version).unwrap(), Stored::Stale);
    assert!(cache.delete_blocking(&mut con, "k").unwrap());
    assert!(!cache.delete_blocking(&mut con, "k").unwrap(), "nothing left to delete");
}

#[test]
fn bad_input_gets_clear_errors() {
    let server = Server::start();
    let mut con = server.conn();
    assert!(matches!(Cache::new(""), Err(Error::InvalidArgument { name: "segment", .. })));
    let cache = Cache::new(unique("bad")).unwrap();
    let read = cache.get_blocking(&mut con, "k").unwrap();
    assert!(matches!(
        cache.set_blocking(&mut con, "k", b"v", Duration::ZERO, read.version),
        Err(Error::InvalidArgument { name: "ttl", .. })
    ));
    assert!(matches!(cache.get_blocking(&mut con, ""), Err(Error::InvalidArgument { name: "key", .. })));

    // Keys holding other types.
    let _: () = server.cmd(&["SET", &cache.entry_key("str"), "x"]);
    assert!(matches!(cache.get_blocking(&mut con, "str"), Err(Error::WrongType { .. })));
    let other = Cache::new(unique("bad")).unwrap();
    let _: i64 = server.cmd(&["HSET", &other.version_key(), "f", "v"]);
    assert!(matches!(other.get_blocking(&mut con, "k"), Err(Error::WrongType { .. })));
    assert!(matches!(other.invalidate_blocking(&mut con), Err(Error::WrongType { .. })));

    // Raw calls from another language get BADARG naming the argument.
    let set = script::get("cache.set").unwrap();
    let err = set
        .invoke()
        .key("cache:{x}:version")
        .key("cache:{x}:e:k")
        .key("cache:{x}:lease:k")
        .arg(0)
        .arg(0)
        .arg("v")
        .arg(0)
        .arg(0)
        .arg("")
        .arg(0)
        .query(&mut con)
        .unwrap_err();
    assert!(
        matches!(err, Error::Script { ref code, ref message, .. } if code == "BADARG" && message.starts_with("ttl_ms")),
        "{err:?}"
    );
    let get = script::get("cache.get").unwrap();
    let err = get
        .invoke()
        .key("cache:{x}:version")
        .key("cache:{x}:e:k")
        .key("cache:{x}:lease:k")
        .arg("t")
        .arg("1e3")
        .arg(0);
    let err = err.query(&mut con).unwrap_err();
    assert!(matches!(err, Error::Script { ref message, .. } if message.starts_with("lease_ms")), "{err:?}");
}

/// A connection to run batches on: one pipeline, or one pipeline per slot on a cluster.
enum Con {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Con {
    async fn run<K: script::ScriptCall>(&mut self, batch: &script::Batch<K>) -> Vec<K::Output> {
        let outcomes = match self {
            Con::Single(con) => batch.query_async(con).await,
            Con::Cluster(con) => batch.query_cluster(con).await,
        };
        outcomes.unwrap().into_iter().map(Result::unwrap).collect()
    }
}

/// Cache calls go into a `Batch`: many reads, then many writes, each in one round trip (per
/// node on a cluster).
async fn batched_reads_and_writes(mut con: Con) {
    // Two segments: on a cluster they live in different slots.
    let segments = [Cache::new(unique("batch")).unwrap(), Cache::new(unique("batch")).unwrap()];
    let keys = ["a", "b", "c"];
    let reads: script::Batch<_> =
        segments.iter().flat_map(|s| keys.iter().map(|k| s.get_call(k).unwrap())).collect();
    let first = con.run(&reads).await;
    assert!(first.iter().all(|r| r.lookup.entry == Entry::Miss), "{first:?}");
    let mut writes = script::Batch::new();
    for (i, r) in first.iter().enumerate() {
        let (s, k) = (&segments[i / keys.len()], keys[i % keys.len()]);
        writes.push(match k {
            "c" => s.not_found_call(k, MINUTE, r.lookup.version).unwrap(),
            _ => s.set_call(k, k.as_bytes(), MINUTE, r.lookup.version).unwrap(),
        });
    }
    assert!(con.run(&writes).await.into_iter().all(|s| s == Stored::Stored));
    let again: Vec<_> = con.run(&reads).await.into_iter().map(|r| r.lookup.entry).collect();
    let expected = [Entry::Hit(b"a".to_vec()), Entry::Hit(b"b".to_vec()), Entry::NotFound];
    assert_eq!(again, [expected.clone(), expected].concat());
    let bumps: script::Batch<_> = segments.iter().map(Cache::invalidate_call).collect();
    assert_eq!(con.run(&bumps).await.len(), 2);
    let after: Vec<_> = con.run(&reads).await.into_iter().map(|r| r.lookup.entry).collect();
    assert!(after.iter().all(|e| *e == Entry::Miss), "{after:?}");
}

#[tokio::test]
async fn cache_calls_go_into_a_batch() {
    let server = Server::start();
    batched_reads_and_writes(Con::Single(server.client().get_multiplexed_async_connection().await.unwrap()))
        .await;
}

#[tokio::test]
async fn cache_calls_go_into_a_batch_on_a_cluster() {
    batched_reads_and_writes(Con::Cluster(shared_cluster().client().get_async_connection().await.unwrap()))
        .await;
}

#[test]
fn set_not_found_has_a_blocking_twin() {
    let server = Server::start();
    let mut con = server.conn();
    let cache = Cache::new(unique("neg-blocking")).unwrap();
    let read = cache.get_blocking(&mut con, "k").unwrap();
    assert_eq!(cache.set_not_found_blocking(&mut con, "k", MINUTE, read.version).unwrap(), Stored::Stored);
    assert_eq!(cache.get_blocking(&mut con, "k").unwrap().entry, Entry::NotFound);
    cache.invalidate_blocking(&mut con).unwrap();
    assert_eq!(cache.set_not_found_blocking(&mut con, "k", MINUTE, read.version).unwrap(), Stored::Stale);
}
