//! The loader on a standalone server: preload, invoke on every connection type, NOSCRIPT
//! recovery (SCRIPT FLUSH, restart), batches, EVALSHA_RO, and typed errors.

mod common;

use common::{Server, unique};
use redis::Value;
use redis_primitives::Error;
use redis_primitives::script::{self, Batch, Invocation, Reply, ScriptCall};

/// A lock acquire through the typed-call trait: (acquired, fence or pttl).
struct Acquire {
    resource: String,
    token: String,
}

impl ScriptCall for Acquire {
    type Output = (bool, i64);
    fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
        Ok(script::get("lock.acquire")?
            .invoke()
            .key(format!("lock:{{{}}}", self.resource))
            .key(format!("lock:{{{}}}:fence", self.resource))
            .arg(&self.token)
            .arg(30_000))
    }
    fn parse(&self, reply: Reply) -> redis_primitives::Result<(bool, i64)> {
        let v = reply.ints(3)?;
        Ok((v[0] == 1, v[1]))
    }
}

/// A fresh lock's first fencing token is the server's time in microseconds (lock.acquire's floor).
fn fresh(taken: (bool, i64)) -> bool {
    taken.0 && taken.1 > 1_600_000_000_000_000
}

fn acquire(resource: &str, token: &str) -> Acquire {
    Acquire { resource: resource.into(), token: token.into() }
}

fn script_exists(server: &Server, name: &str) -> bool {
    let sha = script::get(name).unwrap().sha1().to_owned();
    let v: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", &sha]);
    v == [1]
}

#[test]
fn preload_loads_every_script_blocking() {
    let server = Server::start();
    let n = script::preload(&mut server.conn()).unwrap();
    let bundle = script::bundle();
    assert_eq!(n, bundle.len());
    assert!(bundle.iter().all(|s| script_exists(&server, s.name())));
}

#[tokio::test]
async fn preload_and_invoke_on_every_async_connection_type() {
    let server = Server::start();
    let client = server.client();
    let mut multiplexed = client.get_multiplexed_async_connection().await.unwrap();
    let mut manager = client.get_connection_manager().await.unwrap();
    assert!(script::preload_async(&mut multiplexed).await.unwrap() > 0);

    let r = unique("conn-types");
    let first = acquire(&r, "a").query_async(&mut multiplexed).await.unwrap();
    assert!(fresh(first), "{first:?}");
    // Same token again: the idempotent retry path hands back the same fence.
    assert_eq!(acquire(&r, "a").query_async(&mut manager).await.unwrap(), first);
    let (taken, pttl) = acquire(&r, "b").query(&mut server.conn()).unwrap();
    assert!(!taken && pttl > 0 && pttl <= 30_000, "held lock must report its pttl, got {pttl}");
}

#[tokio::test]
async fn noscript_after_script_flush_is_recovered_and_runs_once() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    script::preload_async(&mut con).await.unwrap();
    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    assert!(!script_exists(&server, "lock.acquire"));

    let loads_before = server.calls("script|load");
    let r = unique("flush");
    // Different tokens: if the recovery re-ran the first call, the second would see the lock
    // held by "a". A run on a free lock makes exactly two SETs (lock, fence): counted below.
    let sets_before = server.calls("set");
    let taken = acquire(&r, "a").query_async(&mut con).await.unwrap();
    assert!(fresh(taken), "{taken:?}");
    assert!(script_exists(&server, "lock.acquire"), "recovery must load the script");
    assert_eq!(server.calls("script|load"), loads_before + 1);
    let fence: i64 = server.cmd(&["GET", &format!("lock:{{{r}}}:fence")]);
    assert_eq!(fence, taken.1);
    assert_eq!(server.calls("set") - sets_before, 2, "the script ran exactly once");

    // Blocking path too.
    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    let r2 = unique("flush-blocking");
    assert!(fresh(acquire(&r2, "a").query(&mut server.conn()).unwrap()));
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_and_reloaded() {
    let mut server = Server::start();
    let mut con = server.client().get_connection_manager().await.unwrap();
    script::preload_async(&mut con).await.unwrap();
    assert!(fresh(acquire(&unique("before"), "a").query_async(&mut con).await.unwrap()));

    server.restart(); // empty script cache, no data
    let r = unique("after-restart");
    let mut last = None;
    for _ in 0..100 {
        match acquire(&r, "a").query_async(&mut con).await {
            Ok(v) => {
                last = Some(v);
                break;
            }
            // The manager reconnects in the background; the first calls may see the dead socket.
            Err(e) if e.is_connection() => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => panic!("only connection errors are expected while reconnecting, got {e}"),
        }
    }
    assert!(last.is_some_and(fresh), "call after restart must succeed through NOSCRIPT recovery: {last:?}");
    assert!(script_exists(&server, "lock.acquire"));
}

#[test]
fn batch_resends_only_the_entries_that_met_noscript() {
    let server = Server::start();
    let mut con = server.conn();
    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    // Load lock.acquire only: its entries run in the first pipeline and must not run again;
    // lock.release entries meet NOSCRIPT and are re-sent after a load.
    let src = std::str::from_utf8(script::get("lock.acquire").unwrap().source()).unwrap().to_owned();
    let _: String = server.cmd(&["SCRIPT", "LOAD", &src]);

    let tag = unique("batch");
    let calls: Vec<Raw> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                Raw::acquire(&format!("{tag}-{i}"), "t")
            } else {
                Raw::release(&format!("{tag}-{i}"), "t")
            }
        })
        .chain([Raw::acquire("", "t")]) // refused before sending: empty key
        .collect();
    let evalsha_before = server.calls("evalsha");
    let sets_before = server.calls("set");
    let out: Batch<Raw> = calls.into_iter().collect();
    let results = out.query(&mut con).unwrap();
    assert_eq!(results.len(), 11);
    for (i, r) in results.iter().take(10).enumerate() {
        let v = r.as_ref().unwrap_or_else(|e| panic!("entry {i}: {e}"));
        if i % 2 == 0 {
            let Value::Array(a) = v else { panic!("entry {i}: {v:?}") };
            assert!(matches!(a[..], [Value::Int(1), Value::Int(f), Value::Int(30_000)] if fresh((true, f))));
        } else {
            assert_eq!(*v, Value::Int(0), "release of a lock never taken");
        }
    }
    assert!(matches!(results[10], Err(Error::InvalidArgument { name: "key", .. })));
    // 10 in the first pipeline, 5 re-sent. Two SETs per acquire run: no acquire ran twice.
    assert_eq!(server.calls("evalsha") - evalsha_before, 15);
    assert_eq!(server.calls("set") - sets_before, 10);
}

#[tokio::test]
async fn batch_recovers_on_async_connections_too() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
    let tag = unique("batch-async");
    let batch: Batch<Raw> = (0..50).map(|i| Raw::acquire(&format!("{tag}-{i}"), "t")).collect();
    let results = batch.query_async(&mut con).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Value::Array(v)) if v[0] == Value::Int(1))));
    assert!(script_exists(&server, "lock.acquire"));
}

#[tokio::test]
async fn read_only_calls_use_evalsha_ro_and_cannot_write() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let release = script::get("lock.release").unwrap();
    // A release of a lock we do not hold only reads, so it may run read-only.
    let v = release.invoke().key("lock:{ro}").arg("t").read_only(true).query_async(&mut con).await.unwrap();
    assert_eq!(v, Value::Int(0));
    assert_eq!(server.calls("evalsha_ro"), 2, "NOSCRIPT, then the recovered call");

    // A path that writes is refused by Redis itself when sent read-only.
    let acquire = script::get("lock.acquire").unwrap();
    let err = acquire
        .invoke()
        .key("lock:{ro}")
        .key("lock:{ro}:fence")
        .arg("t")
        .arg(1000)
        .read_only(true)
        .query_async(&mut con)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    let exists: i64 = server.cmd(&["EXISTS", "lock:{ro}"]);
    assert_eq!(exists, 0);
}

#[test]
fn errors_are_typed() {
    let server = Server::start();
    let mut con = server.conn();
    let acquire = script::get("lock.acquire").unwrap();

    // The script's own refusal, sent raw (as a caller in another language would).
    let err =
        acquire.invoke().key("lock:{e}").key("lock:{e}:fence").arg("t").arg(0).query(&mut con).unwrap_err();
    match err {
        Error::Script { script, code, message } => {
            assert_eq!((script.as_str(), code.as_str()), ("lock.acquire", "BADARG"));
            assert!(message.starts_with("ttl_ms:"), "{message}");
        }
        other => panic!("expected a script error, got {other:?}"),
    }

    // A key of another type.
    let _: i64 = server.cmd(&["HSET", "lock:{wt}", "f", "v"]);
    let err = acquire
        .invoke()
        .key("lock:{wt}")
        .key("lock:{wt}:fence")
        .arg("t")
        .arg(10)
        .query(&mut con)
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { ref script, .. } if script == "lock.acquire"), "{err:?}");

    // Checked before sending: wrong number of keys.
    let evalsha_before = server.calls("evalsha");
    let err = acquire.invoke().key("lock:{k}").arg("t").arg(10).query(&mut con).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { name: "keys", .. }), "{err:?}");
    assert_eq!(server.calls("evalsha"), evalsha_before, "nothing was sent");

    // A reply of the wrong shape for the typed call.
    let reply = Reply::new("lock.acquire", Value::Int(1));
    let err = acquire_parse(reply).unwrap_err();
    assert!(matches!(err, Error::UnexpectedReply { .. }), "{err:?}");
}

fn acquire_parse(reply: Reply) -> redis_primitives::Result<(bool, i64)> {
    acquire("x", "t").parse(reply)
}

#[test]
fn connection_errors_are_told_apart() {
    let mut server = Server::start();
    let mut con = server.conn();
    server.kill();
    let err =
        script::get("lock.release").unwrap().invoke().key("lock:{x}").arg("t").query(&mut con).unwrap_err();
    assert!(err.is_connection(), "{err:?}");
}

#[tokio::test]
async fn a_misbehaving_server_is_a_connection_or_reply_error_never_a_bundle_error() {
    use common::FakeServer;
    for (what, fake) in [
        ("garbage", FakeServer::garbage()),
        ("wrong shape", FakeServer::wrong_shape()),
        ("wrong hashes", FakeServer::replying(b"$40\r\n0000000000000000000000000000000000000000\r\n")),
        ("closing", FakeServer::closing()),
    ] {
        let mut con = fake.client().get_multiplexed_async_connection().await.unwrap();
        let err = script::preload_async(&mut con).await.unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedReply { .. } | Error::Connection(_)),
            "{what}: preload gave {err:?}"
        );
        // A raw invocation hands back whatever valid reply came (`42` is one); what fails, fails
        // as a connection or reply error.
        let raw = script::get("lock.release")
            .unwrap()
            .invoke()
            .key("lock:{x}")
            .arg("t")
            .query_async(&mut con)
            .await;
        if let Err(err) = raw {
            assert!(
                matches!(err, Error::UnexpectedReply { .. } | Error::Connection(_)),
                "{what}: a call gave {err:?}"
            );
        }
    }
}

/// A raw call of any script, for batches that mix scripts.
struct Raw(Invocation<'static>);

impl Raw {
    fn acquire(resource: &str, token: &str) -> Raw {
        let key = if resource.is_empty() { String::new() } else { format!("lock:{{{resource}}}") };
        Raw(script::get("lock.acquire")
            .unwrap()
            .invoke()
            .key(&key)
            .key(format!("lock:{{{resource}}}:fence"))
            .arg(token)
            .arg(30_000))
    }
    fn release(resource: &str, token: &str) -> Raw {
        Raw(script::get("lock.release").unwrap().invoke().key(format!("lock:{{{resource}}}")).arg(token))
    }
}

impl ScriptCall for Raw {
    type Output = Value;
    fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
        Ok(self.0.clone())
    }
    fn parse(&self, reply: Reply) -> redis_primitives::Result<Value> {
        Ok(reply.into_value())
    }
}
