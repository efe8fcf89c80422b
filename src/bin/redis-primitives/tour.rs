//! `redis-primitives tour`: runs each primitive visibly against `REDIS_URL`, or against a
//! throwaway redis-server when nothing answers there. Every key it writes carries a per-run tag
//! and is deleted at the end.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis_primitives::cache::{Cache, Entry};
use redis_primitives::lock::{Acquire, FencedWrite, Lock};
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::stream::{
    Connector, Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions,
};
use redis_primitives::{Error, script};

type TourResult = Result<(), Box<dyn std::error::Error>>;

/// A redis-server started for the tour, stopped when dropped (also on an error or panic).
struct Throwaway {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn answers(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

fn start_throwaway() -> Result<(Throwaway, String), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("redis-primitives-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start redis-server ({e}); install it or set REDIS_URL"))?;
    let server = Throwaway { child, dir };
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers(&url) {
        if Instant::now() > deadline {
            return Err("the throwaway redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, url))
}

pub fn run(url: &str) -> TourResult {
    let mut _server = None;
    let url = if answers(url) {
        println!(
            "redis-primitives tour against {url}; its keys carry a per-run tag and are removed at the end."
        );
        url.to_owned()
    } else {
        let (server, throwaway) = start_throwaway()
            .map_err(|e| format!("no Redis answers at {url}, and no throwaway server could start: {e}"))?;
        println!(
            "No Redis answers at {url}: started a throwaway redis-server at {throwaway} (stopped at exit)."
        );
        _server = Some(server);
        throwaway
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(tour(&url))
}

async fn tour(url: &str) -> TourResult {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut con).await?;
    if redis_primitives::cluster::is_cluster(&info) {
        return Err("the tour runs on a standalone server; point REDIS_URL at one (the library itself runs on clusters)".into());
    }
    let server = redis_primitives::doctor::describe_server(&info);
    let loaded = script::preload_async(&mut con).await?;
    println!("{server}; preloaded {loaded} scripts with SCRIPT LOAD.\n");
    let tag = format!("tour-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let mut keys: Vec<String> = Vec::new();

    let result = async {
        rate_limit(&mut con, &tag, &mut keys).await?;
        lock(&mut con, &tag, &mut keys).await?;
        cache(&client, &tag, &mut keys).await?;
        stream(&client, &mut con, &tag, &mut keys).await
    }
    .await;

    let mut removed = 0;
    for k in &keys {
        removed += redis::cmd("DEL").arg(k).query_async::<i64>(&mut con).await.unwrap_or(0);
    }
    println!("\nRemoved the tour's {removed} keys.");
    result
}

async fn rate_limit(
    con: &mut redis::aio::MultiplexedConnection,
    tag: &str,
    keys: &mut Vec<String>,
) -> TourResult {
    println!("1. Rate limit: exact sliding window, 3 requests per 2 s, one atomic script call each");
    let limiter = RateLimiter::new("api", SlidingWindow::new(3, Duration::from_secs(2))?)?;
    let subject = format!("{tag}-user-42");
    keys.push(limiter.key(&subject)?);
    for i in 1..=4 {
        let d = limiter.check(con, &subject, 1).await?;
        if d.allowed {
            println!("   request {i}: allowed, {} left", d.remaining);
        } else {
            println!("   request {i}: refused, retry after {} ms", d.retry_after.as_millis());
        }
    }
    match limiter.check(con, &subject, 5).await {
        Err(Error::InsufficientCapacity { cost, capacity }) => {
            println!(
                "   a request of cost {cost}: never fits a limit of {capacity} (an error, not an endless retry)"
            )
        }
        other => println!("   a request of cost 5: {other:?}"),
    }
    Ok(())
}

async fn lock(con: &mut redis::aio::MultiplexedConnection, tag: &str, keys: &mut Vec<String>) -> TourResult {
    println!("\n2. Lock with fencing tokens: resource \"invoice-7\", TTL 300 ms");
    let lock = Lock::new(format!("{tag}-invoice-7"), Duration::from_millis(300))?;
    let k = lock.keys();
    keys.extend([k.lock(), k.fence(), k.data(), k.seen()].map(str::to_owned));
    let Acquire::Acquired(a) = lock.try_acquire(con).await? else { return Err("the lock was taken".into()) };
    let written = a.fenced_write(b"total=100", None).await?;
    println!("   worker A acquires: fencing token {}; writes total=100: {written:?}", a.fencing_token());
    let token_a = a.fencing_token();
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("   worker A pauses 400 ms (a GC pause), past its TTL: valid_for() is now {:?}", a.valid_for());
    let Acquire::Acquired(b) = lock.try_acquire(con).await? else {
        return Err("the lock did not expire".into());
    };
    let written = b.fenced_write(b"total=120", None).await?;
    println!("   worker B acquires: fencing token {}; writes total=120: {written:?}", b.fencing_token());
    match lock.fenced_write(con, token_a, b"total=90", None).await? {
        FencedWrite::Stale { highest_seen } => {
            println!(
                "   worker A wakes, writes total=90 with token {token_a}: refused, token {highest_seen} already wrote"
            )
        }
        FencedWrite::Written => println!("   worker A's stale write went through (unexpected)"),
    }
    let value: String = redis::cmd("GET").arg(lock.keys().data()).query_async(con).await?;
    println!("   the resource holds {value}");
    b.release().await?;
    drop(a); // its lease is long gone; dropping spawns a release that reports NotHeld
    Ok(())
}

async fn cache(client: &redis::Client, tag: &str, keys: &mut Vec<String>) -> TourResult {
    println!("\n3. Versioned cache: segment \"users\"");
    let users = Cache::new(format!("{tag}-users"))?;
    keys.extend([users.version_key(), users.entry_key("1"), users.lease_key("1")]);
    let computed = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut con = client.get_multiplexed_async_connection().await?;
        let (users, computed) = (users.clone(), computed.clone());
        tasks.push(tokio::spawn(async move {
            users
                .get_or_compute(&mut con, "1", Duration::from_secs(60), || async {
                    computed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Some(b"Ada".to_vec()))
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "   10 concurrent get_or_compute(\"1\") on a cold key: computed {} time(s)",
        computed.load(Ordering::SeqCst)
    );
    let mut con = client.get_multiplexed_async_connection().await?;
    let read = users.get(&mut con, "1").await?;
    println!("   get(\"1\"): {} (version and entry read in one round trip)", show(&read.entry));
    let v = users.invalidate(&mut con).await?;
    println!("   invalidate(): segment version is now {v} (O(1), no SCAN)");
    println!("   get(\"1\"): {}", show(&users.get(&mut con, "1").await?.entry));
    let late = users.set(&mut con, "1", b"stale", Duration::from_secs(60), read.version).await?;
    println!("   a filler that read before the bump writes back: {late:?}");
    Ok(())
}

fn show(e: &Entry) -> String {
    match e {
        Entry::Hit(v) => format!("hit {:?}", String::from_utf8_lossy(v)),
        Entry::NotFound => "cached not-found".into(),
        Entry::Miss => "miss".into(),
    }
}

async fn stream(
    client: &redis::Client,
    con: &mut redis::aio::MultiplexedConnection,
    tag: &str,
    keys: &mut Vec<String>,
) -> TourResult {
    println!("\n4. Stream with a consumer group: \"orders\", one poison message, 3 deliveries at most");
    let orders = Stream::new(format!("{tag}-orders"))?;
    keys.extend([orders.key().to_owned(), orders.dead_key().to_owned()]);
    let producer = Producer::new(orders.clone(), Retention::MaxLen(10_000))?;
    for i in 1..=5 {
        producer.add(con, [("order", format!("order-{i}"))]).await?;
    }
    println!("   produced 5 messages (XADD MAXLEN ~ 10000)");
    let opts = WorkerOptions::default()
        .block(Duration::from_millis(500))
        .max_deliveries(3)
        .min_idle(Duration::from_millis(100))
        .claim_interval(Duration::from_millis(100));
    let worker =
        Worker::new(Connector::standalone(client.clone()), orders.clone(), "billing", "billing-1", opts)?;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let run = tokio::spawn(async move {
        worker
            .run(
                move |d: Delivery| {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        match d.fields.get_str("order") {
                            Some("order-3") => Err(format!("payment declined (delivery {})", d.deliveries)),
                            _ => Ok(()),
                        }
                    }
                },
                stop.wait(),
            )
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while orders.dead_len(con).await? < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let report = run.await??;
    println!(
        "   worker: {} deliveries handled, {} acked, {} dead-lettered",
        handled.load(Ordering::SeqCst),
        report.acked,
        report.dead_lettered
    );
    for dead in orders.dead_letters(con, None, 10).await? {
        println!(
            "   dead letter: {} (was {}) after {} deliveries: {}",
            dead.fields.get_str("order").unwrap_or("?"),
            dead.origin_id,
            dead.deliveries,
            dead.reason
        );
    }
    Ok(())
}
