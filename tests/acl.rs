//! The printed least-privilege ACL is enough to run every primitive, and a user without it gets
//! a clear permission error.

mod common;

use std::time::Duration;

use common::{Server, unique};
use redis_primitives::cache::{Cache, Entry};
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, SlidingWindow};
use redis_primitives::script;
use redis_primitives::stream::{Delivery, Producer, Retention, Shutdown, Stream, Worker, WorkerOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The rule exactly as `redis-primitives acl --rule-only` prints it.
fn printed_rule() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redis-primitives"))
        .args(["acl", "--rule-only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn create_user(server: &Server, name: &str, rule: &str) -> String {
    let mut args = vec!["ACL", "SETUSER", name, "on", ">pw"];
    args.extend(rule.split_whitespace());
    let _: () = server.cmd(&args);
    format!("redis://{name}:pw@127.0.0.1:{}/", server.port())
}

#[tokio::test]
async fn every_primitive_works_as_a_user_restricted_to_the_printed_rule() {
    let server = Server::start();
    let url = create_user(&server, "svc", &printed_rule());
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut blocking = client.get_connection().unwrap();

    script::preload_async(&mut con).await.unwrap();
    let _: () = server.cmd(&["SCRIPT", "FLUSH"]); // recovery (SCRIPT LOAD) must be allowed too

    let sw = RateLimiter::new("api", SlidingWindow::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    assert!(sw.check(&mut con, "u", 1).await.unwrap().allowed);
    assert!(sw.peek(&mut con, "u", 1).await.unwrap().allowed);
    sw.reset(&mut con, "u").await.unwrap();
    let g = RateLimiter::new("g", Gcra::new(5, Duration::from_secs(1)).unwrap()).unwrap();
    assert!(g.check_blocking(&mut blocking, "u", 1).unwrap().allowed);
    let sw2 = RateLimiter::new("api2", SlidingWindow::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    let m = MultiLimit::new().with(sw.clone()).with(sw2);
    assert!(m.check(&mut con, ["u", "u"], 1).await.unwrap().allowed);

    let r = unique("res");
    for name in ["lock.acquire", "lock.extend", "lock.release"] {
        let s = script::get(name).unwrap();
        let inv = match name {
            "lock.acquire" => {
                s.invoke().key(format!("lock:{{{r}}}")).key(format!("lock:{{{r}}}:fence")).arg("t").arg(5000)
            }
            "lock.extend" => s.invoke().key(format!("lock:{{{r}}}")).arg("t").arg(5000),
            _ => s.invoke().key(format!("lock:{{{r}}}")).arg("t"),
        };
        inv.query_async(&mut con).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let fenced = script::get("lock.fenced_write").unwrap();
    let written = fenced
        .invoke()
        .key(format!("lock:{{{r}}}:data"))
        .key(format!("lock:{{{r}}}:seen"))
        .arg(1)
        .arg("v")
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(written, redis::Value::Array(vec![redis::Value::Int(1), redis::Value::Int(1)]));
    let sem = script::get("lock.semaphore_acquire").unwrap();
    sem.invoke().key(format!("sem:{{{r}}}")).arg("t").arg(2).arg(5000).query_async(&mut con).await.unwrap();

    let cache = Cache::new(unique("seg")).unwrap();
    let v = cache
        .get_or_compute(&mut con, "k", Duration::from_secs(60), || async {
            Ok::<_, std::io::Error>(Some(b"v".to_vec()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    assert_eq!(cache.get(&mut con, "k").await.unwrap().entry, Entry::Hit(b"v".to_vec()));
    cache.invalidate(&mut con).await.unwrap();
    cache.delete(&mut con, "k").await.unwrap();

    // Streams: produce, consume with a worker (one poison message dead-lettered), retire.
    let stream = Stream::new(unique("s")).unwrap();
    let producer = Producer::new(stream.clone(), Retention::MaxLen(1000)).unwrap();
    for i in 0..10 {
        producer.add(&mut con, [("n", i.to_string())]).await.unwrap();
    }
    let opts =
        WorkerOptions::default().block(Duration::from_millis(300)).max_deliveries(1).retire_on_shutdown(true);
    let worker = Worker::new(client.clone(), stream.clone(), "g", "w1", opts).unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let done = Arc::new(AtomicU64::new(0));
    let seen = done.clone();
    let run = tokio::spawn(async move {
        worker
            .run(
                move |d: Delivery| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        if d.fields.get_str("n") == Some("3") { Err("poison".to_owned()) } else { Ok(()) }
                    }
                },
                stop.wait(),
            )
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream.dead_len(&mut con).await.unwrap() < 1 || done.load(Ordering::SeqCst) < 10 {
        assert!(std::time::Instant::now() < deadline, "the worker did not finish as the restricted user");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.acked, report.dead_lettered, report.errors), (9, 1, 0), "{report:?}");
    assert!(report.retired, "{report:?}");
}

#[tokio::test]
async fn a_user_without_the_rule_gets_a_clear_permission_error() {
    let server = Server::start();
    let url = create_user(&server, "nobody", "resetkeys ~* -@all +ping +hello");
    let mut con = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let sw = RateLimiter::new("api", SlidingWindow::new(2, Duration::from_secs(60)).unwrap()).unwrap();
    let err = sw.check(&mut con, "u", 1).await.unwrap_err();
    assert!(err.is_permission_denied(), "{err:?}");
    assert!(err.to_string().contains("evalsha"), "names the command: {err}");

    // Allowed to call scripts but not the commands inside them: Redis refuses inside the script.
    let url =
        create_user(&server, "half", "resetkeys ~* -@all +ping +hello +evalsha +evalsha_ro +script|load");
    let mut con = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let err = sw.check(&mut con, "u", 1).await.unwrap_err();
    assert!(err.is_permission_denied(), "{err:?}");
}
