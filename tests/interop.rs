//! Reuse beyond Rust: a Python process (redis-py, `tests/interop/primitives.py`) and a Node
//! process (ioredis, `tests/interop/primitives.js`, which runs the Node snippet of
//! `scripts/README.md` as is) load the scripts from `scripts/manifest.json`, check their SHA1s,
//! and agree with the Rust side on one Redis: one rate limit, one lock, one cache.
//!
//! redis-py and ioredis (and Node itself, where the machine has none) are provisioned by the
//! harness into `target/test-deps/` on first use; see `harness/src/provision.rs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Server, provision, unique};
use redis_primitives::cache::{Cache, Entry};
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::script;
use serde_json::Value as Json;

/// A service in another language, driven through its script's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Python,
    Node,
}

const OTHERS: [Lang; 2] = [Lang::Python, Lang::Node];

impl Lang {
    fn command(self, server: &Server, args: &[&str]) -> Command {
        let (mut cmd, file) = match self {
            Lang::Python => (provision::python_with_redis(), "primitives.py"),
            Lang::Node => (provision::node_with_ioredis(), "primitives.js"),
        };
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/").to_owned() + file)
            .arg(server.url())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(self, server: &Server, args: &[&str]) -> Json {
        let out = self.command(server, args).output().unwrap_or_else(|e| panic!("run {self:?}: {e}"));
        assert!(out.status.success(), "{self:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{self:?} {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Starts a command that says "ready" and then waits for a line on stdin.
    fn spawn_ready(self, server: &Server, args: &[&str]) -> Child {
        let mut child = self.command(server, args).stdin(Stdio::piped()).spawn().unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "{self:?} did not get ready");
        child
    }
}

#[test]
fn python_and_node_load_the_manifest_and_get_the_same_sha1s() {
    let server = Server::start();
    for lang in OTHERS {
        let v = lang.run(&server, &["manifest"]);
        assert_eq!(v["loaded"], script::bundle().len(), "{lang:?}: {v}");
        assert_eq!(v["sha_match"], true, "{lang:?}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_python_and_node_sharing_a_rate_limit_never_admit_more_than_the_limit() {
    const LIMIT: u64 = 90;
    const ATTEMPTS: u64 = 150;
    let server = Server::start();
    let limiter =
        RateLimiter::new("shared", SlidingWindow::new(LIMIT, Duration::from_secs(3600)).unwrap()).unwrap();
    let subject = unique("subject");
    let key = limiter.key(&subject).unwrap();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    // All three hammer the same key at the same time, 150 attempts each, paced by 1 ms so that
    // they interleave: Python and Node say they are ready (connected), all start on Rust's go.
    let args = ["ratelimit", &key, &LIMIT.to_string(), "3600000", &ATTEMPTS.to_string()];
    let mut children: Vec<(Lang, Child)> =
        OTHERS.iter().map(|&lang| (lang, lang.spawn_ready(&server, &args))).collect();
    for (_, child) in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut rust_admitted = 0;
    for _ in 0..ATTEMPTS {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if limiter.check(&mut con, &subject, 1).await.unwrap().allowed {
            rust_admitted += 1;
        }
    }
    let mut admitted = vec![("Rust".to_owned(), rust_admitted)];
    for (lang, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{lang:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Json = serde_json::from_slice(&out.stdout).unwrap();
        admitted.push((format!("{lang:?}"), v["admitted"].as_u64().unwrap()));
    }
    eprintln!("shared limit {LIMIT}: admitted {admitted:?}");
    assert_eq!(admitted.iter().map(|(_, n)| n).sum::<u64>(), LIMIT, "{admitted:?}");
    assert!(admitted.iter().all(|(_, n)| *n > 0), "every side was admitted from the one limit: {admitted:?}");
}

/// Acquire / release of `lock:{resource}` from Rust through the bundle (the layout of the
/// scripts' contract, as the other languages use it).
fn rust_acquire(con: &mut redis::Connection, resource: &str, token: &str) -> (bool, i64) {
    let v: Vec<i64> = redis::from_redis_value(
        script::get("lock.acquire")
            .unwrap()
            .invoke()
            .key(format!("lock:{{{resource}}}"))
            .key(format!("lock:{{{resource}}}:fence"))
            .arg(token)
            .arg(30_000)
            .query(con)
            .unwrap(),
    )
    .unwrap();
    (v[0] == 1, v[1])
}

fn rust_release(con: &mut redis::Connection, resource: &str, token: &str) -> bool {
    let v = script::get("lock.release").unwrap().invoke().key(format!("lock:{{{resource}}}")).arg(token);
    v.query(con).unwrap() == redis::Value::Int(1)
}

#[test]
fn a_lock_held_by_one_language_refuses_the_others_and_fences_continue_across_languages() {
    let server = Server::start();
    let mut con = server.conn();
    let resource = unique("res");
    let acquire = |who: &str, con: &mut redis::Connection| -> (bool, i64) {
        let token = format!("{who}-token");
        match who {
            "Rust" => rust_acquire(con, &resource, &token),
            _ => {
                let lang = if who == "Python" { Lang::Python } else { Lang::Node };
                let v = lang.run(&server, &["lock-acquire", &resource, &token, "30000"]);
                (v["acquired"].as_bool().unwrap(), v["fence_or_pttl"].as_i64().unwrap())
            }
        }
    };
    let release = |who: &str, con: &mut redis::Connection| -> bool {
        let token = format!("{who}-token");
        match who {
            "Rust" => rust_release(con, &resource, &token),
            _ => {
                let lang = if who == "Python" { Lang::Python } else { Lang::Node };
                lang.run(&server, &["lock-release", &resource, &token])["released"].as_bool().unwrap()
            }
        }
    };

    // Each language in turn holds the lock; the other two are refused (and see the time left)
    // and cannot release it; each new holder's fencing token is above the previous one's.
    let mut fences = Vec::new();
    for holder in ["Rust", "Python", "Node"] {
        let (acquired, fence) = acquire(holder, &mut con);
        assert!(acquired, "{holder} takes the free lock");
        for other in ["Rust", "Python", "Node"].into_iter().filter(|o| *o != holder) {
            let (acquired, pttl) = acquire(other, &mut con);
            assert!(!acquired, "{other} is refused while {holder} holds the lock");
            assert!(pttl > 0 && pttl <= 30_000, "{other} sees the holder's time left: {pttl}");
            assert!(!release(other, &mut con), "{other} cannot release {holder}'s lock");
        }
        assert!(release(holder, &mut con), "{holder} releases its lock");
        fences.push((holder, fence));
    }
    eprintln!("fencing tokens across languages: {fences:?}");
    assert!(fences.windows(2).all(|w| w[1].1 > w[0].1), "fences rise across languages: {fences:?}");
}

#[test]
fn a_cache_entry_written_by_one_language_is_read_by_all_and_a_bump_from_any_invalidates_for_all() {
    let server = Server::start();
    let mut con = server.conn();
    let langs = ["Rust", "Python", "Node"];
    // Each language writes once, and the next one bumps: every writer and every bumper is seen
    // by all three.
    for (i, writer) in langs.into_iter().enumerate() {
        let bumper = langs[(i + 1) % 3];
        let cache = Cache::new(unique("seg")).unwrap();
        let data = format!("from {writer}");
        match writer {
            "Rust" => {
                let read = cache.get_blocking(&mut con, "k").unwrap();
                cache
                    .set_blocking(&mut con, "k", data.as_bytes(), Duration::from_secs(60), read.version)
                    .unwrap();
            }
            _ => {
                let lang = if writer == "Python" { Lang::Python } else { Lang::Node };
                let v = lang.run(&server, &["cache-put", cache.segment(), "k", &data]);
                assert_eq!(v["stored"], true, "{writer}: {v}");
            }
        }
        let reads = |con: &mut redis::Connection| -> Vec<Option<String>> {
            let rust = match cache.get_blocking(con, "k").unwrap().entry {
                Entry::Hit(bytes) => Some(String::from_utf8(bytes).unwrap()),
                _ => None,
            };
            let mut all = vec![rust];
            for lang in OTHERS {
                let v = lang.run(&server, &["cache-get", cache.segment(), "k"]);
                all.push((v["status"] == 1).then(|| v["data"].as_str().unwrap().to_owned()));
            }
            all
        };
        assert_eq!(reads(&mut con), vec![Some(data.clone()); 3], "everyone reads what {writer} wrote");
        match bumper {
            "Rust" => {
                cache.invalidate_blocking(&mut con).unwrap();
            }
            _ => {
                let lang = if bumper == "Python" { Lang::Python } else { Lang::Node };
                assert!(lang.run(&server, &["cache-bump", cache.segment()])["version"].as_u64().unwrap() > 0);
            }
        }
        assert_eq!(reads(&mut con), vec![None; 3], "{bumper}'s bump invalidates for everyone");
    }
}

#[test]
fn python_and_node_get_the_scripts_own_error_replies() {
    let server = Server::start();
    for lang in OTHERS {
        let v = lang.run(&server, &["bad-arg"]);
        assert!(v["error"].as_str().unwrap().starts_with("BADARG rate[1]"), "{lang:?}: {v}");
    }
}

#[test]
fn python_and_node_recover_from_an_empty_script_cache() {
    let server = Server::start();
    for lang in OTHERS {
        let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
        let loads = server.calls("script|load");
        let resource = unique("flushed");
        let v = lang.run(&server, &["lock-acquire", &resource, "t", "30000"]);
        assert_eq!(v["acquired"], true, "{lang:?}: {v}");
        assert_eq!(server.calls("script|load"), loads + 1, "{lang:?} loaded the script once, on NOSCRIPT");
    }
}
