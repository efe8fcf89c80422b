//! The printed least-privilege ACL is enough to run every primitive, and a user without it gets
//! a clear permission error.

mod common;

use std::time::Duration;

use common::Server;
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::script;

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
    // Redis 6.2 has no EVALSHA_RO and refuses a rule naming it: drop it there, as the README
    // tells 6.2 users to (the library then sends read-only calls as EVALSHA).
    args.extend(rule.split_whitespace().filter(|r| common::has_evalsha_ro() || *r != "+evalsha_ro"));
    let _: () = server.cmd(&args);
    format!("redis://{name}:pw@127.0.0.1:{}/", server.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_works_as_a_user_restricted_to_the_printed_rule() {
    let server = Server::start();
    let url = create_user(&server, "svc", &printed_rule());
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    script::preload_async(&mut con).await.unwrap();
    // NOSCRIPT recovery (SCRIPT LOAD inside a call) must be allowed too.
    let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
    common::smoke::every_primitive(&client).await;
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
