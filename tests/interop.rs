//! Reuse beyond Rust: a Python process (redis-py, `tests/interop/primitives.py`) loads the scripts
//! from `scripts/manifest.json` and agrees with the Rust side on the same Redis.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, unique};
use redis_primitives::cache::{Cache, Entry};
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::script;

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/primitives.py");

fn python() -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import redis"]).status().is_ok_and(|s| s.success());
    assert!(ok, "the interop tests need {python} with redis-py: `pip install redis` (or set PYTHON)");
    python
}

fn py_command(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(PY).arg(server.url()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn py(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = py_command(server, args).output().expect("run python");
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn python_loads_the_manifest_and_gets_the_same_sha1s() {
    let server = Server::start();
    let v = py(&server, &["manifest"]);
    assert_eq!(v["loaded"], script::bundle().len());
    assert_eq!(v["sha_match"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_sharing_a_rate_limit_never_admit_more_than_the_limit() {
    let server = Server::start();
    let limiter =
        RateLimiter::new("shared", SlidingWindow::new(50, Duration::from_secs(3600)).unwrap()).unwrap();
    let subject = unique("subject");
    let key = limiter.key(&subject).unwrap();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    // Both sides hammer the same key at the same time, 150 attempts each, paced by 1 ms so that
    // they interleave: Python says it is ready, both start on Rust's go.
    let mut child = py_command(&server, &["ratelimit", &key, "50", "3600000", "150"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let mut rust_admitted = 0;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if limiter.check(&mut con, &subject, 1).await.unwrap().allowed {
            rust_admitted += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py_admitted =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["admitted"].as_u64().unwrap();
    eprintln!("shared limit 50: Rust admitted {rust_admitted}, Python admitted {py_admitted}");
    assert_eq!(rust_admitted + py_admitted, 50);
    assert!(rust_admitted > 0 && py_admitted > 0, "both sides were admitted from the one shared limit");
}

#[test]
fn a_lock_held_from_rust_refuses_python_and_fences_continue_across_languages() {
    let server = Server::start();
    let mut con = server.conn();
    let resource = unique("res");
    let acquire = script::get("lock.acquire").unwrap();
    let held: Vec<i64> = redis::from_redis_value(
        acquire
            .invoke()
            .key(format!("lock:{{{resource}}}"))
            .key(format!("lock:{{{resource}}}:fence"))
            .arg("rust-token")
            .arg(30_000)
            .query(&mut con)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(held[0], 1);
    let rust_fence = held[1];

    let v = py(&server, &["lock-acquire", &resource, "py-token", "30000"]);
    assert_eq!(v["acquired"], false, "{v}");
    assert!(v["fence_or_pttl"].as_i64().unwrap() > 0, "python sees the remaining pttl: {v}");
    assert_eq!(py(&server, &["lock-release", &resource, "py-token"])["released"], false);

    let released = script::get("lock.release")
        .unwrap()
        .invoke()
        .key(format!("lock:{{{resource}}}"))
        .arg("rust-token")
        .query(&mut con)
        .unwrap();
    assert_eq!(released, redis::Value::Int(1));
    let v = py(&server, &["lock-acquire", &resource, "py-token", "30000"]);
    assert_eq!(v["acquired"].as_bool(), Some(true), "{v}");
    assert!(v["fence_or_pttl"].as_i64().unwrap() > rust_fence, "fences rise across languages: {v}");
}

#[test]
fn python_reads_what_rust_cached_and_its_bump_invalidates_for_rust() {
    let server = Server::start();
    let mut con = server.conn();
    let cache = Cache::new(unique("seg")).unwrap();
    let read = cache.get_blocking(&mut con, "k").unwrap();
    cache.set_blocking(&mut con, "k", b"from rust", Duration::from_secs(60), read.version).unwrap();

    let v = py(&server, &["cache-get", cache.segment(), "k"]);
    assert_eq!((v["status"].as_i64(), v["data"].as_str()), (Some(1), Some("from rust")), "{v}");
    py(&server, &["cache-bump", cache.segment()]);
    assert_eq!(cache.get_blocking(&mut con, "k").unwrap().entry, Entry::Miss);
}

#[test]
fn python_gets_the_scripts_own_error_replies() {
    let server = Server::start();
    let v = py(&server, &["bad-arg"]);
    assert!(v["error"].as_str().unwrap().starts_with("BADARG rate[1]"), "{v}");
}
