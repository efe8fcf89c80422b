//! The benchmark suite, run in full by `cargo bench` and as a smoke run by `cargo test` (see
//! `benches/primitives.rs`).
//!
//! For each primitive, three variants run side by side in one process against one private
//! redis-server: our API, a raw redis-rs EVALSHA of the same script with the same arguments,
//! and the hand-rolled baseline a user would write without this crate.

pub mod cost;
#[cfg(feature = "tower")]
pub mod tower;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis_primitives::cache::Cache;
use redis_primitives::lock::{Acquire, Lock, Semaphore};
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, SlidingWindow, Subject};
use redis_primitives::script::{self, Batch, ScriptCall};
use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};

pub type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
/// One operation: (connection, task index, op index within the task).
pub type Op = Arc<dyn Fn(MultiplexedConnection, usize, usize) -> BoxFut + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(MultiplexedConnection, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |c, t, i| Box::pin(f(c, t, i)))
}

/// Throughput and latency of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs `total` operations spread over `concurrency` tasks on the pool of connections.
pub async fn measure(conns: &[MultiplexedConnection], concurrency: usize, total: usize, op: &Op) -> Sample {
    let per_task = total.div_ceil(concurrency).max(1);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let con = conns[t % conns.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let began = Instant::now();
                op(con.clone(), t, i).await;
                lat.push(began.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(per_task * concurrency);
    for t in tasks {
        all.extend(t.await.expect("benchmark task"));
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Sample { ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(), p50_us: pct(0.50), p99_us: pct(0.99) }
}

/// Ours against raw, paired: every task alternates the two (swapping which goes first on every
/// iteration), so both see the same server, the same load and the same drift of a shared
/// machine. Returns raw's mean latency divided by ours: the throughput ratio ours / raw.
pub async fn paired(
    conns: &[MultiplexedConnection],
    concurrency: usize,
    total: usize,
    ours: &Op,
    raw: &Op,
) -> f64 {
    let per_task = total.div_ceil(concurrency).max(1);
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let con = conns[t % conns.len()].clone();
        let (ours, raw) = (ours.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            let (mut o, mut r) = (Duration::ZERO, Duration::ZERO);
            for i in 0..per_task {
                let (first, second) = if i % 2 == 0 { (&ours, &raw) } else { (&raw, &ours) };
                let began = Instant::now();
                first(con.clone(), t, 2 * i).await;
                let mid = Instant::now();
                second(con.clone(), t, 2 * i + 1).await;
                let (a, b) = (mid - began, mid.elapsed());
                if i % 2 == 0 {
                    o += a;
                    r += b;
                } else {
                    r += a;
                    o += b;
                }
            }
            (o, r)
        }));
    }
    let (mut o, mut r) = (Duration::ZERO, Duration::ZERO);
    for t in tasks {
        let (a, b) = t.await.expect("benchmark task");
        o += a;
        r += b;
    }
    r.as_secs_f64() / o.as_secs_f64()
}

/// A primitive with its three variants.
pub struct Case {
    pub name: &'static str,
    pub ours: Op,
    pub raw: Op,
    pub baseline: Option<(&'static str, Op)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A raw `EVALSHA <sha>` (or EVALSHA_RO) of a bundled script, the way a user of plain redis-rs
/// would write it.
fn evalsha(command: &str, name: &str) -> redis::Cmd {
    let mut c = redis::cmd(command);
    c.arg(script::get(name).expect("bundled").sha1());
    c
}

/// The hand-rolled limiter: MULTI of ZADD, ZREMRANGEBYSCORE, ZCARD, EXPIRE (client clock).
fn multi_limiter(pipe: &mut redis::Pipeline, key: &str, window_ms: u64) {
    let now = now_ms();
    pipe.zadd(key, now, now)
        .zrembyscore(key, 0, now.saturating_sub(window_ms))
        .zcard(key)
        .expire(key, (window_ms / 1000) as i64);
}

pub fn cases() -> Vec<Case> {
    let huge = 1_000_000_000u64; // limits that never refuse: measure the decision, not refusals
    let hour = Duration::from_secs(3600);
    let sw = Arc::new(
        RateLimiter::new("bench-sw", SlidingWindow::new(huge, Duration::from_secs(1)).unwrap()).unwrap(),
    );
    let gcra = Arc::new(RateLimiter::new("bench-gcra", Gcra::new(huge, hour).unwrap()).unwrap());
    let user = Arc::new(RateLimiter::new("bench-user", Gcra::new(huge, hour).unwrap()).unwrap());
    let tenant = Arc::new(RateLimiter::new("bench-tenant", Gcra::new(huge, hour).unwrap()).unwrap());
    let cache = Arc::new(Cache::new("bench").unwrap());
    let locks: Arc<Vec<Lock>> =
        Arc::new((0..64).map(|t| Lock::new(format!("l{t}"), Duration::from_secs(10)).unwrap()).collect());
    let sems: Arc<Vec<Semaphore>> = Arc::new(
        (0..64).map(|t| Semaphore::new(format!("s{t}"), 8, Duration::from_secs(10)).unwrap()).collect(),
    );
    let mut cases = Vec::new();

    cases.push(Case {
        name: "sliding window check",
        ours: op({
            let sw = sw.clone();
            move |mut c, t, _| {
                let sw = sw.clone();
                async move {
                    sw.check(&mut c, &format!("s{t}"), 1).await.unwrap();
                }
            }
        }),
        raw: op(|mut c, t, _| async move {
            let mut cmd = evalsha("EVALSHA", "ratelimit.sliding_window");
            cmd.arg(1).arg(format!("rl:{{s{t}}}:bench-sw")).arg(1).arg(0).arg(1_000_000_000u64).arg(1000);
            let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
        }),
        baseline: Some((
            "MULTI ZADD/ZREMRANGEBYSCORE/ZCARD/EXPIRE",
            op(|mut c, t, _| async move {
                let mut p = redis::pipe();
                multi_limiter(p.atomic(), &format!("base:{{s{t}}}"), 1000);
                let _: redis::Value = p.query_async(&mut c).await.unwrap();
            }),
        )),
    });

    cases.push(Case {
        name: "GCRA check",
        ours: op({
            let g = gcra.clone();
            move |mut c, t, _| {
                let g = g.clone();
                async move {
                    g.check(&mut c, &format!("s{t}"), 1).await.unwrap();
                }
            }
        }),
        raw: op(|mut c, t, _| async move {
            let mut cmd = evalsha("EVALSHA", "ratelimit.gcra");
            cmd.arg(1)
                .arg(format!("rl:{{s{t}}}:bench-gcra"))
                .arg(1)
                .arg(0)
                .arg(1_000_000_000u64)
                .arg(3_600_000)
                .arg(1_000_000_000u64);
            let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
        }),
        baseline: Some((
            "MULTI ZADD/ZREMRANGEBYSCORE/ZCARD/EXPIRE",
            op(|mut c, t, _| async move {
                let mut p = redis::pipe();
                multi_limiter(p.atomic(), &format!("base:{{g{t}}}"), 1000);
                let _: redis::Value = p.query_async(&mut c).await.unwrap();
            }),
        )),
    });

    cases.push(Case {
        name: "multi-limit check (2 GCRA)",
        ours: op({
            // Built once and stored, as a service does; the subjects come per call.
            let both = MultiLimit::new().with((*user).clone()).with((*tenant).clone());
            move |mut c, t, _| {
                let both = both.clone();
                async move {
                    let scope = format!("t{t}");
                    both.check(&mut c, [Subject::new("u").in_scope(&scope), Subject::new(&scope)], 1)
                        .await
                        .unwrap();
                }
            }
        }),
        raw: op(|mut c, t, _| async move {
            let mut cmd = evalsha("EVALSHA", "ratelimit.gcra");
            cmd.arg(2)
                .arg(format!("rl:{{t{t}}}:bench-user:u"))
                .arg(format!("rl:{{t{t}}}:bench-tenant"))
                .arg(1)
                .arg(0);
            for _ in 0..2 {
                cmd.arg(1_000_000_000u64).arg(3_600_000).arg(1_000_000_000u64);
            }
            let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
        }),
        baseline: Some((
            "two MULTI limiters in one MULTI",
            op(|mut c, t, _| async move {
                let mut p = redis::pipe();
                p.atomic();
                multi_limiter(&mut p, &format!("base:{{t{t}}}:u"), 1000);
                multi_limiter(&mut p, &format!("base:{{t{t}}}:t"), 1000);
                let _: redis::Value = p.query_async(&mut c).await.unwrap();
            }),
        )),
    });

    cases.push(Case {
        name: "lock acquire+release",
        ours: op(move |mut c, t, _| {
            // One Lock per task, made once: the way a service holds the locks it takes often.
            let lock = locks[t % locks.len()].clone();
            async move {
                match lock.try_acquire(&mut c).await.unwrap() {
                    Acquire::Acquired(g) => {
                        g.release().await.unwrap();
                    }
                    Acquire::Held { .. } => panic!("uncontended lock was held"),
                }
            }
        }),
        raw: op(|mut c, t, i| async move {
            let token = format!("tok-{t}-{i}");
            let mut acq = evalsha("EVALSHA", "lock.acquire");
            acq.arg(2)
                .arg(format!("lock:{{l{t}}}"))
                .arg(format!("lock:{{l{t}}}:fence"))
                .arg(&token)
                .arg(10_000);
            let _: redis::Value = acq.query_async(&mut c).await.unwrap();
            let mut rel = evalsha("EVALSHA", "lock.release");
            rel.arg(1).arg(format!("lock:{{l{t}}}")).arg(&token);
            let _: redis::Value = rel.query_async(&mut c).await.unwrap();
        }),
        baseline: Some((
            "SET NX PX + WATCH/GET/MULTI/DEL/EXEC",
            op(|_c, t, i| async move {
                // WATCH state belongs to a connection: each task uses one of its own.
                let mut own = OWN_CONNS.get().expect("prepare() opens them")[t % 64].lock().await;
                let own = &mut *own;
                let key = format!("base-lock:{{l{t}}}");
                let token = format!("tok-{t}-{i}");
                let ok: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query_async(own)
                    .await
                    .unwrap();
                assert!(ok.is_some());
                let _: () = redis::cmd("WATCH").arg(&key).query_async(own).await.unwrap();
                let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(own).await.unwrap();
                if holder.as_deref() == Some(token.as_str()) {
                    let _: redis::Value = redis::pipe().atomic().del(&key).query_async(own).await.unwrap();
                }
            }),
        )),
    });

    cases.push(Case {
        name: "semaphore acquire+release",
        ours: op(move |mut c, t, _| {
            let sem = sems[t % sems.len()].clone();
            async move {
                match sem.try_acquire(&mut c).await.unwrap() {
                    Acquire::Acquired(p) => {
                        p.release().await.unwrap();
                    }
                    Acquire::Held { .. } => panic!("uncontended semaphore was full"),
                }
            }
        }),
        raw: op(|mut c, t, i| async move {
            let token = format!("tok-{t}-{i}");
            let mut acq = evalsha("EVALSHA", "lock.semaphore_acquire");
            acq.arg(1).arg(format!("sem:{{s{t}}}")).arg(&token).arg(8).arg(10_000);
            let _: redis::Value = acq.query_async(&mut c).await.unwrap();
            let mut rel = evalsha("EVALSHA", "lock.semaphore_release");
            rel.arg(1).arg(format!("sem:{{s{t}}}")).arg(&token);
            let _: redis::Value = rel.query_async(&mut c).await.unwrap();
        }),
        baseline: None,
    });

    cases.push(Case {
        name: "cache get (hit)",
        ours: op({
            let cache = cache.clone();
            move |mut c, t, _| {
                let cache = cache.clone();
                async move {
                    let hit = cache.get(&mut c, &format!("k{}", t % 64)).await.unwrap();
                    assert!(matches!(hit.entry, redis_primitives::cache::Entry::Hit(_)));
                }
            }
        }),
        raw: op({
            let cache = cache.clone();
            move |mut c, t, _| {
                let cache = cache.clone();
                async move {
                    // Ours sends a plain read with EVALSHA_RO; so does the raw call (EVALSHA
                    // where the server has no EVALSHA_RO: Redis 6.2).
                    let ro = if harness::has_evalsha_ro() { "EVALSHA_RO" } else { "EVALSHA" };
                    let mut cmd = evalsha(ro, "cache.get");
                    let key = format!("k{}", t % 64);
                    cmd.arg(3)
                        .arg(cache.version_key())
                        .arg(cache.entry_key(&key))
                        .arg(cache.lease_key(&key))
                        .arg("")
                        .arg(0)
                        .arg(0);
                    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
                }
            }
        }),
        baseline: Some((
            "GET version, then GET value (2 round trips)",
            op(|mut c, t, _| async move {
                let v: Option<String> =
                    redis::cmd("GET").arg("base:{bench}:version").query_async(&mut c).await.unwrap();
                let key = format!("base:{{bench}}:{}:k{}", v.unwrap_or_default(), t % 64);
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap();
            }),
        )),
    });

    cases.push(Case {
        name: "cache get_or_compute (hit)",
        ours: op({
            let cache = cache.clone();
            move |mut c, t, _| {
                let cache = cache.clone();
                async move {
                    let v = cache
                        .get_or_compute(
                            &mut c,
                            &format!("k{}", t % 64),
                            Duration::from_secs(3600),
                            || async { Ok::<_, std::io::Error>(Some(b"computed".to_vec())) },
                        )
                        .await
                        .unwrap();
                    assert!(v.is_some());
                }
            }
        }),
        raw: op({
            let cache = cache.clone();
            move |mut c, t, i| {
                let cache = cache.clone();
                async move {
                    let mut cmd = evalsha("EVALSHA", "cache.get");
                    let key = format!("k{}", t % 64);
                    cmd.arg(3).arg(cache.version_key()).arg(cache.entry_key(&key)).arg(cache.lease_key(&key));
                    cmd.arg(format!("{:032x}", (t as u128) << 64 | i as u128)).arg(10_000).arg(1000);
                    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
                }
            }
        }),
        baseline: Some((
            "GET version, then GET value (2 round trips)",
            op(|mut c, t, _| async move {
                let v: Option<String> =
                    redis::cmd("GET").arg("base:{bench}:version").query_async(&mut c).await.unwrap();
                let key = format!("base:{{bench}}:{}:k{}", v.unwrap_or_default(), t % 64);
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap();
            }),
        )),
    });

    let producer =
        Arc::new(Producer::new(Stream::new("bench-produce").unwrap(), Retention::MaxLen(100_000)).unwrap());
    cases.push(Case {
        name: "stream produce",
        ours: op({
            let producer = producer.clone();
            move |mut c, t, i| {
                let producer = producer.clone();
                async move {
                    producer.add(&mut c, [("task", t.to_string()), ("n", i.to_string())]).await.unwrap();
                }
            }
        }),
        raw: op(|mut c, t, i| async move {
            let _: String = redis::cmd("XADD")
                .arg("stream:{bench-produce}")
                .arg("MAXLEN")
                .arg("~")
                .arg(100_000)
                .arg("*")
                .arg("task")
                .arg(t.to_string())
                .arg("n")
                .arg(i.to_string())
                .query_async(&mut c)
                .await
                .unwrap();
        }),
        baseline: None,
    });

    cases
}

/// Messages consumed and acked per second: our worker (handler concurrency 1 and 64) against a
/// raw loop of XREADGROUP COUNT min(concurrency, 64) + XACK, over `n` messages produced
/// beforehand.
pub async fn stream_consume(
    client: &redis::Client,
    con: &mut MultiplexedConnection,
    n: usize,
) -> Vec<(usize, f64, f64)> {
    let mut out = Vec::new();
    for concurrency in [1usize, 64] {
        // Ours.
        let stream = Stream::new(format!("bench-consume-{concurrency}-{}", now_ms())).unwrap();
        let producer = Producer::new(stream.clone(), Retention::MaxLen(1_000_000)).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            producer.add_many(con, chunk.iter().map(|i| [("n", i.to_string())])).await.unwrap();
        }
        let opts =
            WorkerOptions::default().block(Duration::from_millis(200)).concurrency(concurrency).batch(64);
        let worker = Worker::new(client.clone(), stream.clone(), "g", "w", opts).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = Shutdown::new();
        let (d, stop) = (done.clone(), shutdown.clone());
        let start = Instant::now();
        let run = tokio::spawn(async move {
            worker
                .run(
                    move |_m: Delivery| {
                        d.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async { Ok::<(), String>(()) }
                    },
                    stop.wait(),
                )
                .await
        });
        while stream.pending(con, "g").await.map(|p| p.total).unwrap_or(1) > 0
            || done.load(std::sync::atomic::Ordering::Relaxed) < n
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ours = n as f64 / start.elapsed().as_secs_f64();
        shutdown.trigger();
        run.await.unwrap().unwrap();

        // Raw: read a batch, ack it, until the stream is drained.
        let key = format!("stream:{{bench-raw-{concurrency}-{}}}", now_ms());
        let mut p = redis::pipe();
        for i in 0..n {
            p.cmd("XADD").arg(&key).arg("*").arg("n").arg(i.to_string()).ignore();
        }
        let _: () = p.query_async(con).await.unwrap();
        let _: () =
            redis::cmd("XGROUP").arg("CREATE").arg(&key).arg("g").arg("0").query_async(con).await.unwrap();
        let start = Instant::now();
        let mut consumed = 0;
        while consumed < n {
            // Like the worker, read no more than can be handled at once.
            let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("raw")
                .arg("COUNT")
                .arg(concurrency.min(64))
                .arg("STREAMS")
                .arg(&key)
                .arg(">")
                .query_async(con)
                .await
                .unwrap();
            let ids: Vec<String> =
                reply.keys.iter().flat_map(|k| k.ids.iter().map(|e| e.id.clone())).collect();
            consumed += ids.len();
            let _: i64 = redis::cmd("XACK").arg(&key).arg("g").arg(&ids).query_async(con).await.unwrap();
        }
        let raw = n as f64 / start.elapsed().as_secs_f64();
        let _: i64 = redis::cmd("DEL").arg(&key).arg(stream.key()).query_async(con).await.unwrap_or(0);
        out.push((concurrency, ours, raw));
    }
    out
}

/// One connection per task for the lock baseline's WATCH.
static OWN_CONNS: std::sync::OnceLock<Vec<tokio::sync::Mutex<MultiplexedConnection>>> =
    std::sync::OnceLock::new();

/// Opens the baseline's connections and fills the cache entries the hit benchmarks read.
pub async fn prepare(client: &redis::Client, con: &mut MultiplexedConnection) {
    let mut own = Vec::new();
    for _ in 0..64 {
        own.push(tokio::sync::Mutex::new(client.get_multiplexed_async_connection().await.unwrap()));
    }
    let _ = OWN_CONNS.set(own);
    let cache = Cache::new("bench").unwrap();
    for k in 0..64 {
        let key = format!("k{k}");
        let read = cache.get(con, &key).await.unwrap();
        cache
            .set(con, &key, b"a cached value of some size", Duration::from_secs(3600), read.version)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("base:{{bench}}::{key}"))
            .arg("a cached value of some size")
            .query_async(con)
            .await
            .unwrap();
    }
}

/// 100 rate-limit decisions in one pipeline, against 100 single calls; decisions per second.
pub async fn batch_vs_single(con: &mut MultiplexedConnection, rounds: usize) -> (f64, f64) {
    let limiter =
        RateLimiter::new("bench-batch", Gcra::new(1_000_000_000, Duration::from_secs(3600)).unwrap())
            .unwrap();
    let start = Instant::now();
    for _ in 0..rounds {
        let batch: Batch<_> =
            (0..100).map(|i| limiter.check_call(&format!("b{}", i % 10), 1).unwrap()).collect();
        for r in batch.query_async(con).await.unwrap() {
            r.unwrap();
        }
    }
    let batched = (rounds * 100) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..rounds {
        for i in 0..100 {
            limiter.check_call(&format!("b{}", i % 10), 1).unwrap().query_async(con).await.unwrap();
        }
    }
    let single = (rounds * 100) as f64 / start.elapsed().as_secs_f64();
    (batched, single)
}

/// Server-side cost of one operation of `case` (INFO commandstats usec of EVALSHA, EVALSHA_RO
/// and XADD), measured over `n` sequential calls.
pub async fn server_usec_per_call(con: &mut MultiplexedConnection, case: &Case, n: usize) -> f64 {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(con).await.unwrap();
    for i in 0..n {
        (case.ours)(con.clone(), 0, i).await;
    }
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(con).await.unwrap();
    let mut usec = 0f64;
    for line in info.lines() {
        // The commands the client sends; those a script runs inside are part of its EVALSHA time.
        if ["cmdstat_evalsha:", "cmdstat_evalsha_ro:", "cmdstat_xadd:"].iter().any(|p| line.starts_with(p)) {
            let fields = line.split(':').nth(1).unwrap_or("");
            usec += fields.split(',').find_map(|p| p.strip_prefix("usec=")?.parse().ok()).unwrap_or(0.0);
        }
    }
    if n == 0 { 0.0 } else { usec / n as f64 }
}

/// MEMORY USAGE of the state one subject (or one lock) keeps.
pub async fn memory(con: &mut MultiplexedConnection) -> Vec<(&'static str, i64)> {
    let sw = RateLimiter::new("mem", SlidingWindow::new(100, Duration::from_secs(3600)).unwrap()).unwrap();
    let g = RateLimiter::new("mem", Gcra::new(100, Duration::from_secs(3600)).unwrap()).unwrap();
    for _ in 0..100 {
        sw.check(con, "sw", 1).await.unwrap();
        g.check(con, "g", 1).await.unwrap();
    }
    let lock = Lock::new("mem", Duration::from_secs(60)).unwrap();
    let guard = lock.try_acquire(con).await.unwrap();
    let mut out = Vec::new();
    for (what, key) in [
        ("sliding window, limit 100, full", sw.key("sw").unwrap()),
        ("GCRA, limit 100, full", g.key("g").unwrap()),
        ("lock key", lock.keys().lock().to_owned()),
        ("lock fencing counter", lock.keys().fence().to_owned()),
    ] {
        let bytes: i64 =
            redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query_async(con).await.unwrap();
        out.push((what, bytes));
    }
    if let Acquire::Acquired(g) = guard {
        g.release().await.unwrap();
    }
    out
}

/// How much to run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Repetitions of every measurement (figures are the median, with min and max).
    pub runs: usize,
    /// Operations per measurement at concurrency 1.
    pub ops_c1: usize,
    /// Operations per measurement at concurrency 64.
    pub ops_c64: usize,
}

/// The three variants of one case at one concurrency, over all runs.
pub struct Row {
    pub case: &'static str,
    pub concurrency: usize,
    pub ours: Vec<Sample>,
    pub raw: Vec<Sample>,
    pub baseline: Option<(&'static str, Vec<Sample>)>,
    /// Ours / raw from the paired measurement, per run.
    pub paired: Vec<f64>,
}

pub struct Report {
    pub redis_version: String,
    pub cores: usize,
    pub config: Config,
    pub rows: Vec<Row>,
    /// (batched decisions/s, single-call decisions/s), per run.
    pub batch: Vec<(f64, f64)>,
    pub server_cost: Vec<(&'static str, f64)>,
    pub memory: Vec<(&'static str, i64)>,
    /// Per run: (handler concurrency, ours msgs/s, raw msgs/s).
    pub consume: Vec<Vec<(usize, f64, f64)>>,
    /// Every script's server cost as a multiple of the floor (see `cost.rs`), and the
    /// (rounds, calls, limit) it was measured with.
    pub script_costs: (Vec<cost::CostRow>, usize, usize, u64),
    /// Sections of optional features (the tower layer), as markdown.
    pub sections: Vec<String>,
}

/// Runs every case against the server at `client`.
pub async fn run(client: &redis::Client, config: Config) -> Report {
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let mut con = conns[0].clone();
    script::preload_async(&mut con).await.unwrap();
    prepare(client, &mut con).await;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut con).await.unwrap();
    let redis_version =
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_owned();

    let cases = cases();
    let mut rows: Vec<Row> = Vec::new();
    for case in &cases {
        for concurrency in [1, 64] {
            rows.push(Row {
                case: case.name,
                concurrency,
                ours: Vec::new(),
                raw: Vec::new(),
                baseline: case.baseline.as_ref().map(|(name, _)| (*name, Vec::new())),
                paired: Vec::new(),
            });
        }
    }
    let mut batch = Vec::new();
    let mut consume = Vec::new();
    for run in 0..config.runs {
        let mut row = rows.iter_mut();
        for case in &cases {
            for concurrency in [1, 64] {
                let r = row.next().expect("one row per case and concurrency");
                let ops = if concurrency == 1 { config.ops_c1 } else { config.ops_c64 };
                // Interleaved in every run, and in alternating order from run to run, so drift on
                // a shared machine and warm-up hit both variants alike.
                if run % 2 == 0 {
                    r.ours.push(measure(&conns, concurrency, ops, &case.ours).await);
                    r.raw.push(measure(&conns, concurrency, ops, &case.raw).await);
                } else {
                    r.raw.push(measure(&conns, concurrency, ops, &case.raw).await);
                    r.ours.push(measure(&conns, concurrency, ops, &case.ours).await);
                }
                if let (Some((_, samples)), Some((_, op))) = (&mut r.baseline, &case.baseline) {
                    samples.push(measure(&conns, concurrency, ops, op).await);
                }
                r.paired.push(paired(&conns, concurrency, ops, &case.ours, &case.raw).await);
            }
        }
        batch.push(batch_vs_single(&mut con, (config.ops_c1 / 100).max(1)).await);
        consume.push(stream_consume(client, &mut con, config.ops_c64).await);
    }
    let mut server_cost = Vec::new();
    for case in &cases {
        server_cost.push((case.name, server_usec_per_call(&mut con, case, config.ops_c1.min(2000)).await));
    }
    let memory = memory(&mut con).await;
    #[allow(unused_mut)]
    let mut sections = Vec::new();
    #[cfg(feature = "tower")]
    sections.push(tower::markdown(&tower::measure(&conns, config).await));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // Full runs: 7 rounds of 2,000 calls at limit 1000; smoke runs: a few calls at limit 10.
    let (rounds, n, limit) = if config.ops_c1 >= 1000 { (7, 2000, 1000) } else { (1, 20, 10) };
    let c = client.clone();
    let costs = tokio::task::spawn_blocking(move || cost::run(&c, rounds, n, limit, None)).await.unwrap();
    let script_costs = (costs, rounds, n, limit);
    Report { redis_version, cores, config, rows, batch, server_cost, memory, consume, script_costs, sections }
}

/// (median, min, max).
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn fmt_spread(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = spread(v);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

impl Report {
    /// The ratio ours / raw EVALSHA of each run's throughput, per row.
    pub fn ratios(&self) -> Vec<(&'static str, usize, f64, f64, f64)> {
        self.rows
            .iter()
            .map(|r| {
                let v: Vec<f64> =
                    r.ours.iter().zip(&r.raw).map(|(o, w)| o.ops_per_sec / w.ops_per_sec).collect();
                let (m, lo, hi) = spread(&v);
                (r.case, r.concurrency, m, lo, hi)
            })
            .collect()
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        md.push_str("# Benchmarks\n\n");
        md.push_str(&format!(
            "Generated by `cargo bench --bench primitives`. Machine: {} cores (shared); Redis {} started by \
             the benchmark on loopback, no persistence. Every figure is the median of {} runs, with min–max in \
             parentheses; the variants of one row ran interleaved in the same process against the same \
             server. Operations per measurement: {} at concurrency 1, {} at concurrency 64 (64 tasks over 8 \
             multiplexed connections).\n\n",
            self.cores, self.redis_version, self.config.runs, self.config.ops_c1, self.config.ops_c64
        ));
        md.push_str("## Throughput and latency\n\n");
        md.push_str(
            "ops/s and latencies come from separate measurements of each variant. The **ours / raw** \
             column comes from a paired measurement: every task alternates our call and the raw \
             EVALSHA (swapping the order each time), and the ratio is raw's mean latency over ours, so \
             both face the same load at the same moment; on this shared 2-core machine it is far \
             steadier than dividing two separate throughputs.\n\n",
        );
        md.push_str("| primitive | conc. | ours ops/s | raw EVALSHA ops/s | ours / raw | ours p50 µs | ours p99 µs | raw p50 µs | raw p99 µs | baseline | baseline ops/s | ours / baseline |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (r, (_, _, ratio, lo, hi)) in self.rows.iter().zip(self.ratios()) {
            let ops = |v: &[Sample]| v.iter().map(|s| s.ops_per_sec).collect::<Vec<_>>();
            let p50 = |v: &[Sample]| v.iter().map(|s| s.p50_us).collect::<Vec<_>>();
            let p99 = |v: &[Sample]| v.iter().map(|s| s.p99_us).collect::<Vec<_>>();
            let (bname, bops, bratio) = match &r.baseline {
                Some((name, b)) => {
                    let v: Vec<f64> =
                        r.ours.iter().zip(b).map(|(o, w)| o.ops_per_sec / w.ops_per_sec).collect();
                    (name.to_string(), fmt_spread(&ops(b), 0), fmt_spread(&v, 2))
                }
                None => ("—".into(), "—".into(), "—".into()),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {ratio:.3} ({lo:.3}–{hi:.3}) | {} | {} | {} | {} | {bname} | {bops} | {bratio} |\n",
                r.case,
                r.concurrency,
                fmt_spread(&ops(&r.ours), 0),
                fmt_spread(&ops(&r.raw), 0),
                fmt_spread(&p50(&r.ours), 0),
                fmt_spread(&p99(&r.ours), 0),
                fmt_spread(&p50(&r.raw), 0),
                fmt_spread(&p99(&r.raw), 0),
            ));
        }
        let batched: Vec<f64> = self.batch.iter().map(|b| b.0).collect();
        let single: Vec<f64> = self.batch.iter().map(|b| b.1).collect();
        let ratio: Vec<f64> = self.batch.iter().map(|b| b.0 / b.1).collect();
        md.push_str(&format!(
            "\n## Batch mode\n\n100 GCRA decisions in one pipeline (`script::Batch`) against 100 single calls, one \
             connection: {} decisions/s batched, {} decisions/s single, ratio {}.\n",
            fmt_spread(&batched, 0),
            fmt_spread(&single, 0),
            fmt_spread(&ratio, 1)
        ));
        md.push_str(&format!(
            "\n## Stream consume + ack\n\n{} messages produced beforehand, then drained: our `Worker` (a no-op handler; \
             it reads only as many entries as it has free handler slots, up to 64, and acks successes in \
             batches) against a raw loop of `XREADGROUP COUNT min(concurrency, 64)` + `XACK` on one \
             connection.\n\n| worker concurrency | ours msgs/s | raw loop msgs/s | ours / raw |\n|---|---|---|---|\n",
            self.config.ops_c64
        ));
        for (i, (conc, _, _)) in self.consume.first().map(|c| c.as_slice()).unwrap_or(&[]).iter().enumerate()
        {
            let ours: Vec<f64> = self.consume.iter().map(|r| r[i].1).collect();
            let raw: Vec<f64> = self.consume.iter().map(|r| r[i].2).collect();
            let ratio: Vec<f64> = self.consume.iter().map(|r| r[i].1 / r[i].2).collect();
            md.push_str(&format!(
                "| {conc} | {} | {} | {} |\n",
                fmt_spread(&ours, 0),
                fmt_spread(&raw, 0),
                fmt_spread(&ratio, 2)
            ));
        }
        md.push_str("\n## Server-side cost\n\n`INFO commandstats` usec of EVALSHA, EVALSHA_RO (and XADD) per operation of our API (a lock or semaphore operation is two script calls):\n\n| primitive | µs per operation |\n|---|---|\n");
        for (name, usec) in &self.server_cost {
            md.push_str(&format!("| {name} | {usec:.2} |\n"));
        }
        let (costs, rounds, n, limit) = &self.script_costs;
        md.push_str(&cost::markdown(costs, *rounds, *n, *limit));
        md.push_str("\n## Memory\n\n`MEMORY USAGE key SAMPLES 0`:\n\n| state | bytes |\n|---|---|\n");
        for (what, bytes) in &self.memory {
            md.push_str(&format!("| {what} | {bytes} |\n"));
        }
        for section in &self.sections {
            md.push_str(section);
        }
        md
    }
}
