//! The loader on a local Redis Cluster (3 primaries, 1 replica each): preload per node, calls
//! across many slots with NOSCRIPT recovery, single-slot batches, and a failover to a replica
//! whose script cache is empty.

mod common;

use common::{Cluster, shared_cluster, unique};
use redis::Value;
use redis_primitives::script::{self, Batch, Invocation, Reply, ScriptCall};

struct Acquire(String);

impl ScriptCall for Acquire {
    type Output = i64;
    fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
        Ok(script::get("lock.acquire")?
            .invoke()
            .key(format!("lock:{{{}}}", self.0))
            .key(format!("lock:{{{}}}:fence", self.0))
            .arg("token")
            .arg(60_000))
    }
    /// The fencing token.
    fn parse(&self, reply: Reply) -> redis_primitives::Result<i64> {
        let v = reply.ints(3)?;
        if v[0] != 1 {
            return Err(reply.unexpected("an acquired lock"));
        }
        Ok(v[1])
    }
}

fn exists_on(cluster: &Cluster, port: u16, name: &str) -> bool {
    let sha = script::get(name).unwrap().sha1().to_owned();
    cluster.node(port).cmd::<Vec<i64>>(&["SCRIPT", "EXISTS", &sha]) == [1]
}

#[tokio::test]
async fn preload_reports_every_primary() {
    let cluster = shared_cluster();
    let mut con = cluster.client().get_async_connection().await.unwrap();
    let reports = script::preload_cluster(&mut con).await.unwrap();
    assert_eq!(reports.len(), 3, "{reports:?}");
    let n = script::bundle().len();
    for r in &reports {
        assert_eq!(r.outcome.as_ref().ok(), Some(&n), "{}: {:?}", r.node, r.outcome);
        let port: u16 = r.node.rsplit(':').next().unwrap().parse().unwrap();
        assert!(exists_on(cluster, port, "lock.acquire"));
    }
}

#[tokio::test]
async fn calls_across_many_slots_recover_from_noscript_on_each_node() {
    let cluster = shared_cluster();
    let mut con = cluster.client().get_async_connection().await.unwrap();
    // Empty every node's cache so each primary must recover by itself.
    for n in &cluster.nodes {
        let _: String = n.cmd(&["SCRIPT", "FLUSH"]);
    }
    let tag = unique("slots");
    let mut slots = std::collections::HashSet::new();
    for i in 0..200 {
        let resource = format!("{tag}-{i}");
        assert!(Acquire(resource.clone()).query_async(&mut con).await.unwrap() > 1_600_000_000_000_000);
        slots.insert(cluster.owners(&format!("lock:{{{resource}}}")).0);
    }
    assert_eq!(slots.len(), 3, "200 resources spread over all three primaries");
    for port in slots {
        assert!(exists_on(cluster, port, "lock.acquire"), "primary :{port} was loaded by recovery");
    }
}

#[tokio::test]
async fn single_slot_batch_recovers_on_a_cluster() {
    let cluster = shared_cluster();
    let mut con = cluster.client().get_async_connection().await.unwrap();
    let tag = unique("batch");
    let key = format!("lock:{{{tag}}}");
    let (primary, _) = cluster.owners(&key);
    let _: String = cluster.node(primary).cmd(&["SCRIPT", "FLUSH"]);
    // Same hash tag, different locks: one slot, one pipeline.
    struct SameSlot(String, usize);
    impl ScriptCall for SameSlot {
        type Output = Value;
        fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
            Ok(script::get("lock.acquire")?
                .invoke()
                .key(format!("lock:{{{}}}:{}", self.0, self.1))
                .key(format!("lock:{{{}}}:{}:fence", self.0, self.1))
                .arg("t")
                .arg(60_000))
        }
        fn parse(&self, reply: Reply) -> redis_primitives::Result<Value> {
            Ok(reply.into_value())
        }
    }
    let batch: Batch<SameSlot> = (0..20).map(|i| SameSlot(tag.clone(), i)).collect();
    let results = batch.query_async(&mut con).await.unwrap();
    assert_eq!(results.len(), 20);
    for r in results {
        let v = r.unwrap();
        // A fresh lock's first fencing token is the server's time in microseconds.
        assert!(
            matches!(v, Value::Array(ref a) if matches!(a[..], [Value::Int(1), Value::Int(f), Value::Int(60_000)] if f > 1_600_000_000_000_000)),
            "{v:?}"
        );
    }
}

#[tokio::test]
async fn failover_to_a_replica_with_an_empty_script_cache_is_recovered() {
    let cluster = Cluster::start(); // its own: a failover disturbs every other test
    let mut con = cluster.client().get_async_connection().await.unwrap();
    let reports = script::preload_cluster(&mut con).await.unwrap();
    assert!(reports.iter().all(|r| r.outcome.is_ok()), "{reports:?}");

    let resource = unique("failover");
    let key = format!("lock:{{{resource}}}");
    assert!(
        Acquire(format!("{resource}-before")).query_async(&mut con).await.unwrap() > 1_600_000_000_000_000
    );
    let (_, replicas) = cluster.owners(&key);
    // Preload loads primaries only, and SCRIPT LOAD is not replicated: the replica is empty.
    assert!(!exists_on(&cluster, replicas[0], "lock.acquire"));

    let promoted = cluster.failover(&key);
    assert_eq!(cluster.owners(&key).0, promoted);
    assert!(!exists_on(&cluster, promoted, "lock.acquire"), "the new primary starts without the script");

    // The client follows the MOVED redirect to the new primary, meets NOSCRIPT there, and the
    // loader loads the script on that node and retries.
    let mut fence = None;
    for _ in 0..50 {
        match Acquire(resource.clone()).query_async(&mut con).await {
            Ok(f) => {
                fence = Some(f);
                break;
            }
            Err(e) if e.is_connection() => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected error after failover: {e}"),
        }
    }
    assert!(fence.is_some_and(|f| f > 1_600_000_000_000_000), "a fresh lock's first token: {fence:?}");
    assert!(exists_on(&cluster, promoted, "lock.acquire"));
}

#[tokio::test]
async fn a_batch_across_many_slots_goes_out_as_one_pipeline_per_slot() {
    let cluster = shared_cluster();
    let mut con = cluster.client().get_async_connection().await.unwrap();
    for n in &cluster.nodes {
        let _: String = n.cmd(&["SCRIPT", "FLUSH"]);
    }
    let tag = unique("batch-slots");
    // 60 resources, most in slots of their own, spread over the three primaries. One more entry
    // has an empty resource: `{}` is no hash tag, so its two keys land in different slots and
    // Redis refuses that entry alone (CROSSSLOT); it keeps its place in the answer.
    let mut calls: Vec<Acquire> = (0..60).map(|i| Acquire(format!("{tag}-{i}"))).collect();
    calls.insert(30, Acquire(String::new()));
    let batch: Batch<Acquire> = calls.into_iter().collect();
    let results = batch.query_cluster(&mut con).await.unwrap();
    assert_eq!(results.len(), 61);
    for (i, r) in results.iter().enumerate() {
        if i == 30 {
            let err = r.as_ref().unwrap_err();
            assert!(err.to_string().contains("CROSSSLOT") || err.to_string().contains("slot"), "{err}");
        } else {
            let f = *r.as_ref().unwrap();
            assert!(
                f > 1_600_000_000_000_000,
                "entry {i}: a fresh lock's first fencing token is server µs: {f}"
            );
        }
    }
    for i in [0, 59] {
        let fence: i64 = cluster
            .node(cluster.owners(&format!("lock:{{{tag}-{i}}}")).0)
            .cmd(&["GET", &format!("lock:{{{tag}-{i}}}:fence")]);
        let returned = *results[if i < 30 { i } else { i + 1 }].as_ref().unwrap();
        assert_eq!(fence, returned, "the stored token is the one handed back");
    }
}
