//! Rate limits against real Redis (standalone and a local cluster): exactness under concurrency,
//! retry storms with and without penalty, same-instant requests, weights, peek, reset, several
//! limits at once, bad input and wrong key types.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, shared_cluster, standalone_and_cluster, unique};
use redis::Value;
use redis_primitives::Error;
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, Request, SlidingWindow, Subject};
use redis_primitives::script::{self, Batch};

const HOUR: Duration = Duration::from_secs(3600);

fn window(limit: u64, w: Duration) -> RateLimiter {
    RateLimiter::new(unique("sw"), SlidingWindow::new(limit, w).unwrap()).unwrap()
}

fn gcra(rate: u64, period: Duration) -> RateLimiter {
    RateLimiter::new(unique("gcra"), Gcra::new(rate, period).unwrap()).unwrap()
}

/// 64 tasks over `conns` distinct connections send 2,000 requests for one subject; returns how
/// many were admitted.
async fn storm<C>(limiter: &RateLimiter, conns: Vec<C>, subject: &str) -> u64
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let admitted = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let mut con = conns[t % conns.len()].clone();
        let limiter = limiter.clone();
        let subject = subject.to_owned();
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (t..2000).step_by(64) {
                if limiter.check(&mut con, &subject, 1).await.unwrap().allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_admitted_under_concurrency() {
    let server = Server::start();
    let client = server.client();
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let sw = storm(&window(100, HOUR), conns.clone(), "hot").await;
    // GCRA with the equivalent burst: 100 at once, refilling one per 36 s.
    let g = storm(&gcra(100, HOUR), conns.clone(), "hot").await;
    eprintln!("standalone: sliding window admitted {sw} of 2000, GCRA admitted {g} of 2000 (limit 100)");
    assert_eq!((sw, g), (100, 100));
    assert!(server.info_field("clients", "connected_clients").unwrap().parse::<u32>().unwrap() >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_admitted_under_concurrency_on_a_cluster() {
    let cluster = shared_cluster();
    let client = cluster.client();
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(client.get_async_connection().await.unwrap());
    }
    let subject = unique("hot");
    let sw = storm(&window(100, HOUR), conns.clone(), &subject).await;
    let g = storm(&gcra(100, HOUR), conns, &subject).await;
    eprintln!("cluster: sliding window admitted {sw} of 2000, GCRA admitted {g} of 2000 (limit 100)");
    assert_eq!((sw, g), (100, 100));
}

/// Hammers every 10 ms for `for_`; returns the number admitted, and how many times the loop
/// stalled longer than `stall` between two calls (a loaded machine can stall it, and a stall that
/// long frees room even in penalty mode: it is not the hammering the test is about).
async fn hammer(
    limiter: &RateLimiter,
    con: &mut redis::aio::MultiplexedConnection,
    subject: &str,
    request: Request,
    for_: Duration,
    stall: Duration,
) -> (u32, u32) {
    let start = Instant::now();
    let (mut admitted, mut stalls) = (0, 0);
    let mut last: Option<Instant> = None;
    while start.elapsed() < for_ {
        if last.is_some_and(|t| t.elapsed() >= stall) {
            stalls += 1;
        }
        last = Some(Instant::now());
        if limiter.check(con, subject, request).await.unwrap().allowed {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (admitted, stalls)
}

#[tokio::test]
async fn a_retry_storm_does_not_extend_the_lockout_unless_in_penalty_mode() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let w = Duration::from_millis(300);
    let sw = window(5, w);
    let g = RateLimiter::new(unique("g"), Gcra::new(5, w).unwrap()).unwrap();

    // Refused attempts are not recorded: the window slides and admits again while hammering.
    let second = Duration::from_millis(1000);
    let (plain_sw, _) = hammer(&sw, &mut con, "plain", Request::cost(1), second, w).await;
    let (plain_g, _) = hammer(&g, &mut con, "plain", Request::cost(1), second, w).await;
    assert!(plain_sw >= 10, "sliding window must admit again after the window passed: {plain_sw}");
    assert!(plain_g >= 10, "GCRA must admit again after refilling: {plain_g}");

    // Penalty: every refused attempt counts, so a client that never pauses stays out; once it
    // pauses for the retry-after it was given, it is admitted again.
    // With penalty entries every 10 ms, room comes back only after a stall of about 260 ms.
    let (pen_sw, sw_stalls) =
        hammer(&sw, &mut con, "pen", Request::cost(1).penalty(), second, Duration::from_millis(200)).await;
    // Back-to-back penalty attempts: the newest 5 entries are then a few ms old whatever the
    // machine's load did to the hammer's pace, so the lockout has nearly a full window to run.
    for _ in 0..4 {
        sw.check(&mut con, "pen", Request::cost(1).penalty()).await.unwrap();
    }
    let d = sw.check(&mut con, "pen", Request::cost(1).penalty()).await.unwrap();
    assert!(!d.allowed && d.retry_after > Duration::from_millis(200), "still locked out: {d:?}");
    tokio::time::sleep(d.retry_after).await;
    assert!(sw.check(&mut con, "pen", 1).await.unwrap().allowed, "admitted after retry_after");

    // GCRA caps a penalised backlog at burst + cost cells (6 x 60 ms): a cell comes back after a
    // stall of about 120 ms.
    let (pen_g, g_stalls) =
        hammer(&g, &mut con, "pen", Request::cost(1).penalty(), second, Duration::from_millis(100)).await;
    let d = g.check(&mut con, "pen", Request::cost(1).penalty()).await.unwrap();
    assert!(!d.allowed, "still locked out: {d:?}");
    tokio::time::sleep(d.retry_after).await;
    assert!(g.check(&mut con, "pen", 1).await.unwrap().allowed, "admitted after retry_after");

    eprintln!(
        "1 s of hammering at 5/300ms: admitted sliding {plain_sw} (penalty {pen_sw}, {sw_stalls} stalls), \
         gcra {plain_g} (penalty {pen_g}, {g_stalls} stalls)"
    );
    // Exactly the first burst while hammering; a stall of the loop itself frees at most one burst.
    assert!(
        pen_sw == 5 || (sw_stalls > 0 && pen_sw <= 5 * (1 + sw_stalls)),
        "penalty: only the first burst while hammering: {pen_sw} ({sw_stalls} stalls)"
    );
    assert!(pen_g <= 7 + 5 * g_stalls, "penalty: GCRA refills only within the first burst: {pen_g}");
}

#[test]
fn requests_in_one_pipeline_are_all_counted() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = window(100, HOUR);
    // 50 calls in one pipeline reach the server back to back, many within one microsecond.
    let batch: Batch<_> = (0..50).map(|_| sw.check_call("burst", 1).unwrap()).collect();
    let out = batch.query(&mut con).unwrap();
    let remaining: Vec<u64> = out.iter().map(|d| d.as_ref().unwrap().limits[0].remaining).collect();
    assert_eq!(remaining, (50..100).rev().collect::<Vec<_>>(), "each call saw all earlier ones");
    let card: i64 = server.cmd(&["LLEN", &sw.key("burst").unwrap()]);
    assert_eq!(card, 50, "one log entry per request: none collapsed");
    assert_eq!(sw.check_blocking(&mut con, "burst", 1).unwrap().remaining, 49);
}

#[tokio::test]
async fn weighted_costs() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let sw = window(10, HOUR);
    let g = gcra(10, HOUR);
    for (name, results) in [
        (
            "sliding",
            [
                sw.check(&mut con, "w", 4).await,
                sw.check(&mut con, "w", 4).await,
                sw.check(&mut con, "w", 3).await,
                sw.check(&mut con, "w", 2).await,
            ],
        ),
        (
            "gcra",
            [
                g.check(&mut con, "w", 4).await,
                g.check(&mut con, "w", 4).await,
                g.check(&mut con, "w", 3).await,
                g.check(&mut con, "w", 2).await,
            ],
        ),
    ] {
        let r: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            r.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(),
            [(true, 6), (true, 2), (false, 2), (true, 0)],
            "{name}"
        );
        assert!(
            r[2].retry_after > Duration::ZERO && r[2].retry_after <= HOUR,
            "{name}: {:?}",
            r[2].retry_after
        );
        assert_eq!(r[0].limit, 10);
    }
}

#[test]
fn a_cost_that_can_never_fit_is_its_own_answer() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = window(10, HOUR);
    let before = server.calls("evalsha");
    let err = sw.check_blocking(&mut con, "big", 11).unwrap_err();
    assert!(matches!(err, Error::InsufficientCapacity { cost: 11, capacity: 10 }), "{err:?}");
    let err = gcra(10, HOUR).check_blocking(&mut con, "big", 11).unwrap_err();
    assert!(matches!(err, Error::InsufficientCapacity { cost: 11, capacity: 10 }), "{err:?}");
    assert_eq!(server.calls("evalsha"), before, "refused before sending");

    // Sent raw (as another language would), the script answers retry_after -1 and writes nothing.
    let s = script::get("ratelimit.sliding_window").unwrap();
    let v = s.invoke().key("rl:{raw}:x").arg(11).arg(2).arg(10).arg(60_000).query(&mut con).unwrap();
    assert_eq!(v, Value::Array([0, 1, -1, 10, 10, -1, 0].map(Value::Int).to_vec()));
    let exists: i64 = server.cmd(&["EXISTS", "rl:{raw}:x"]);
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn peek_does_not_consume_and_reset_clears() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let sw = window(3, HOUR);
    let g = gcra(3, HOUR);
    for _ in 0..5 {
        let p = sw.peek(&mut con, "p", 1).await.unwrap();
        assert!(p.allowed && p.remaining == 2, "a peek reports the state after a would-be call: {p:?}");
        assert!(g.peek(&mut con, "p", 1).await.unwrap().allowed);
    }
    let exists: i64 = server.cmd(&["EXISTS", &sw.key("p").unwrap(), &g.key("p").unwrap()]);
    assert_eq!(exists, 0, "a peek writes nothing");
    // Read-only calls go out as EVALSHA_RO where the server has it (not Redis 6.2).
    assert!(server.calls(common::read_only_eval()) >= 10, "peeks run read-only");

    for _ in 0..3 {
        assert!(sw.check(&mut con, "p", 1).await.unwrap().allowed);
        assert!(g.check(&mut con, "p", 1).await.unwrap().allowed);
    }
    assert!(!sw.peek(&mut con, "p", 1).await.unwrap().allowed);
    assert!(!g.check(&mut con, "p", 1).await.unwrap().allowed);
    sw.reset(&mut con, "p").await.unwrap();
    g.reset_blocking(&mut server.conn(), "p").unwrap();
    assert_eq!(sw.check(&mut con, "p", 1).await.unwrap().remaining, 2);
    assert_eq!(g.check(&mut con, "p", 1).await.unwrap().remaining, 2);
}

async fn multi_limit_consumes_nothing_when_one_refuses<C>(mut con: C)
where
    C: redis::aio::ConnectionLike + Send,
{
    let per_user = window(10, HOUR);
    let per_tenant = window(3, HOUR);
    let scope = unique("tenant");
    let subjects = [Subject::new("u1").in_scope(&scope), Subject::new(&scope)];
    let m = MultiLimit::new().with(per_user.clone()).with(per_tenant);
    for i in 0..3 {
        let d = m.check(&mut con, subjects, 1).await.unwrap();
        assert!(d.allowed && d.refused_by.is_none(), "call {i}: {d:?}");
    }
    let d = m.check(&mut con, subjects, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.refused_by, Some(1), "the tenant limit refused");
    assert!(d.retry_after > Duration::ZERO);
    assert_eq!(d.limits[0].remaining, 7, "the user limit was not consumed by the refused call");
    assert!(d.limits[0].allowed && !d.limits[1].allowed);
    // A peek of the user limit alone (the same key) confirms it still has 7.
    assert_eq!(per_user.peek(&mut con, subjects[0], 1).await.unwrap().remaining, 6);

    let g1 = gcra(10, HOUR);
    let g2 = gcra(2, HOUR);
    let mg = MultiLimit::new().with(g1).with(g2);
    assert!(mg.check(&mut con, subjects, 2).await.unwrap().allowed);
    let d = mg.check(&mut con, subjects, 1).await.unwrap();
    assert_eq!((d.allowed, d.refused_by, d.limits[0].remaining), (false, Some(1), 8));
    mg.reset(&mut con, subjects).await.unwrap();
    assert!(mg.check(&mut con, subjects, 2).await.unwrap().allowed);
}

/// A budget is one budget: checking a limiter alone or inside a MultiLimit spends the same key.
async fn one_budget_whichever_api_checks_it<C>(mut con: C)
where
    C: redis::aio::ConnectionLike + Send,
{
    let per_user = window(5, HOUR);
    let per_tenant = window(100, HOUR);
    let tenant = unique("t");
    let ann = Subject::new("ann").in_scope(&tenant);
    let both = MultiLimit::new().with(per_user.clone()).with(per_tenant.clone());
    assert_eq!(both.keys([ann, Subject::new(&tenant)]).unwrap()[0], per_user.key(ann).unwrap());
    for _ in 0..3 {
        assert!(per_user.check(&mut con, ann, 1).await.unwrap().allowed);
    }
    let d = both.check(&mut con, [ann, Subject::new(&tenant)], 2).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.limits[0].remaining, 0, "the 3 single checks and this call share one budget of 5");
    assert!(!per_user.check(&mut con, ann, 1).await.unwrap().allowed);
    // Unscoped subjects are their own tag: a single-subject MultiLimit is the limiter alone.
    let alone = MultiLimit::new().with(per_tenant.clone());
    alone.check(&mut con, [tenant.as_str()], 7).await.unwrap();
    // A peek reports what would remain after its own cost of 1.
    assert_eq!(per_tenant.peek(&mut con, &tenant, 1).await.unwrap().remaining, 100 - 2 - 7 - 1);
}

standalone_and_cluster!(one_budget_whichever_api, |con| {
    one_budget_whichever_api_checks_it(con).await;
});

#[test]
fn key_layouts_cannot_collide() {
    let sw = |name: &str| RateLimiter::new(name, SlidingWindow::new(1, HOUR).unwrap());
    // The collision of the old layout: limiter `b:c` for subject `a`, and limiter `b` for
    // subject `c` in scope `a`, both spelled rl:{a}:b:c. A `:` in a name is refused now.
    assert!(sw("b:c").is_err());
    assert_eq!(sw("b").unwrap().key(Subject::new("c").in_scope("a")).unwrap(), "rl:{a}:b:c");
    // A `}` would end the hash tag early and let the tag's tail pass for a name.
    assert!(sw("b").unwrap().key("a}:x").is_err());
    assert!(sw("b").unwrap().key(Subject::new("c").in_scope("a}")).is_err());
    // Generated (scope, name, subject) triples: distinct triples give distinct keys.
    let parts = ["a", "b", "a:b", "x{y", "", "c"];
    let mut seen = std::collections::HashMap::new();
    for name in ["a", "b", "c", "ab"] {
        let limiter = sw(name).unwrap();
        for id in parts {
            for scope in [None, Some("a"), Some("b"), Some("a:b")] {
                let subject = match scope {
                    None => Subject::new(id),
                    Some(s) => Subject::new(id).in_scope(s),
                };
                if let Ok(key) = limiter.key(subject)
                    && let Some(other) = seen.insert(key.clone(), (name, id, scope))
                {
                    panic!("{key} is both {other:?} and {:?}", (name, id, scope));
                }
            }
        }
    }
    assert!(seen.len() > 40);
}

#[tokio::test]
async fn a_multi_limit_needs_one_hash_tag() {
    let both = MultiLimit::new().with(window(5, HOUR)).with(window(5, HOUR));
    let err = both.check_call(["ann", "bob"], 1).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { name: "subjects", .. }), "{err}");
    assert!(both.check_call(["ann"], 1).is_err(), "one subject per limiter");
}

standalone_and_cluster!(several_limits_are_all_or_nothing, |con| {
    multi_limit_consumes_nothing_when_one_refuses(con).await;
});

#[test]
fn bad_input_sent_raw_gets_an_error_naming_the_argument() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = script::get("ratelimit.sliding_window").unwrap();
    let g = script::get("ratelimit.gcra").unwrap();
    let cases: Vec<(&script::Script, Vec<&str>, &str)> = vec![
        (sw, vec!["1", "0", "0", "1000"], "limit[1]"),
        (sw, vec!["1", "0", "10", "-5"], "window_ms[1]"),
        (sw, vec!["abc", "0", "10", "1000"], "cost"),
        (sw, vec!["inf", "0", "10", "1000"], "cost"),
        (sw, vec!["1", "0", "10"], "argc"),
        (sw, vec!["1", "9", "10", "1000"], "flags"),
        (g, vec!["1", "0", "0", "1000", "5"], "rate[1]"),
        (g, vec!["1", "0", "5", "1e3", "5"], "period_ms[1]"),
        (g, vec!["1", "0", "5", "1000"], "argc"),
    ];
    for (s, args, names) in cases {
        let mut inv = s.invoke().key("rl:{bad}:x");
        for a in &args {
            inv = inv.arg(*a);
        }
        match inv.query(&mut con) {
            Err(Error::Script { code, message, .. }) => {
                assert_eq!(code, "BADARG");
                assert!(message.starts_with(names), "{} {args:?}: {message}", s.name());
            }
            other => panic!("{} {args:?}: expected BADARG, got {other:?}", s.name()),
        }
    }
}

/// A key given twice would be counted twice: refused, whether the keys are few (compared
/// pairwise) or many (a table).
#[test]
fn a_key_repeated_in_one_raw_call_is_refused() {
    let server = Server::start();
    let mut con = server.conn();
    for (s, per_key) in [
        (script::get("ratelimit.sliding_window").unwrap(), vec!["10", "1000"]),
        (script::get("ratelimit.gcra").unwrap(), vec!["10", "1000", "10"]),
    ] {
        for n in [2usize, 3, 10] {
            let mut inv = s.invoke();
            for k in 0..n - 1 {
                inv = inv.key(format!("rl:{{dup}}:k{k}"));
            }
            inv = inv.key(format!("rl:{{dup}}:k{}", n / 3)).arg("1").arg("0");
            for _ in 0..n {
                for a in &per_key {
                    inv = inv.arg(*a);
                }
            }
            match inv.query(&mut con) {
                Err(Error::Script { code, message, .. }) => {
                    assert_eq!(code, "BADARG");
                    assert!(
                        message.starts_with(&format!("keys: key {n} repeats")),
                        "{} {n}: {message}",
                        s.name()
                    );
                }
                other => panic!("{} {n}: expected BADARG, got {other:?}", s.name()),
            }
        }
    }
}

#[test]
fn a_key_of_another_type_is_a_typed_error() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = window(10, HOUR);
    let g = gcra(10, HOUR);
    let _: () = server.cmd(&["SET", &sw.key("t").unwrap(), "x"]);
    let _: i64 = server.cmd(&["LPUSH", &g.key("t").unwrap(), "x"]);
    assert!(matches!(sw.check_blocking(&mut con, "t", 1), Err(Error::WrongType { .. })));
    assert!(matches!(g.check_blocking(&mut con, "t", 1), Err(Error::WrongType { .. })));
    assert!(matches!(sw.peek_blocking(&mut con, "t", 1), Err(Error::WrongType { .. })));
}

/// Keys written by an earlier version (README, "Upgrading"): a sliding-window log of text entries
/// reads as empty and is replaced by packed entries on the next write; a text GCRA TAT still
/// counts, and the next write packs it (with its expiry).
#[test]
fn keys_in_an_older_layout_are_read_safely() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = window(10, HOUR);
    let g = gcra(10, HOUR);
    let (sk, gk) = (sw.key("t").unwrap(), g.key("t").unwrap());
    let t: Vec<String> = server.cmd(&["TIME"]);
    let now: i64 = t[0].parse::<i64>().unwrap() * 1_000_000 + t[1].parse::<i64>().unwrap();
    let old = format!("{now}:10:10:{now}:0");
    let _: i64 = server.cmd(&["LPUSH", &sk, &old]);
    // The TAT a full burst leaves: 10 cells of 6 minutes ahead.
    let _: () = server.cmd(&["SET", &gk, &format!("{}.000000", now + 3_600_000_000)]);
    let d = sw.peek_blocking(&mut con, "t", 1).unwrap();
    assert!(d.allowed && d.remaining == 9, "{d:?}");
    let d = sw.check_blocking(&mut con, "t", 1).unwrap();
    assert!(d.allowed && d.remaining == 9, "{d:?}");
    let entries: Vec<Vec<u8>> = server.cmd(&["LRANGE", &sk, "0", "-1"]);
    assert!(entries.len() == 1 && entries[0].len() == 41 && entries[0][0] == 2, "{entries:?}");
    assert!(!g.check_blocking(&mut con, "t", 1).unwrap().allowed, "the old TAT still counts");
    let _: () = server.cmd(&["SET", &gk, &format!("{}.500000", now - 1)]);
    assert!(g.check_blocking(&mut con, "t", 1).unwrap().allowed);
    let tat: Vec<u8> = server.cmd(&["GET", &gk]);
    assert!(tat.len() == 25 && tat[0] == 2, "{tat:?}");
    let ttl: i64 = server.cmd(&["PTTL", &gk]);
    assert!(ttl > 0, "the packed TAT has an expiry: {ttl}");
}

#[test]
fn bad_parameters_are_refused_before_sending() {
    assert!(matches!(SlidingWindow::new(0, HOUR), Err(Error::InvalidArgument { name: "limit", .. })));
    assert!(matches!(
        SlidingWindow::new(5, Duration::from_micros(1500)),
        Err(Error::InvalidArgument { name: "window", .. })
    ));
    assert!(matches!(Gcra::new(5, Duration::ZERO), Err(Error::InvalidArgument { name: "period", .. })));
    assert!(matches!(
        Gcra::new(5, HOUR).unwrap().with_burst(0),
        Err(Error::InvalidArgument { name: "burst", .. })
    ));
    let sw = window(5, HOUR);
    assert!(matches!(sw.check_call("", 1), Err(Error::InvalidArgument { name: "subject", .. })));
    assert!(matches!(sw.check_call("}x", 1), Err(Error::InvalidArgument { name: "subject", .. })));
    assert!(matches!(sw.check_call("a", 0), Err(Error::InvalidArgument { name: "cost", .. })));
    assert!(matches!(
        RateLimiter::new("", SlidingWindow::new(1, HOUR).unwrap()),
        Err(Error::InvalidArgument { name: "name", .. })
    ));
    assert!(matches!(
        MultiLimit::new().with(sw.clone()).check_call([Subject::new("u").in_scope("")], 1),
        Err(Error::InvalidArgument { name: "scope", .. })
    ));
}

#[tokio::test]
async fn wait_sleeps_until_admitted_or_gives_up_at_the_deadline() {
    let server = Server::start();
    let mut con = server.client().get_multiplexed_async_connection().await.unwrap();
    let sw = window(2, Duration::from_millis(300));
    for _ in 0..2 {
        assert!(sw.check(&mut con, "w", 1).await.unwrap().allowed);
    }
    let start = Instant::now();
    let d = sw.wait(&mut con, "w", 1, Duration::from_millis(50)).await.unwrap();
    assert!(
        !d.allowed && start.elapsed() < Duration::from_millis(100),
        "gives up at once: {:?}",
        start.elapsed()
    );
    let d = sw.wait(&mut con, "w", 1, Duration::from_secs(2)).await.unwrap();
    let waited = start.elapsed();
    assert!(d.allowed, "{d:?}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(1000), "{waited:?}");

    let g = gcra(1, Duration::from_millis(200));
    let mut blocking = server.conn();
    assert!(g.check_blocking(&mut blocking, "w", 1).unwrap().allowed);
    let start = Instant::now();
    assert!(g.wait_blocking(&mut blocking, "w", 1, Duration::from_secs(2)).unwrap().allowed);
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
}

#[test]
fn memory_per_subject_at_limit_100() {
    let server = Server::start();
    let mut con = server.conn();
    let sw = window(100, HOUR);
    let g = gcra(100, HOUR);
    for _ in 0..100 {
        assert!(sw.check_blocking(&mut con, "m", 1).unwrap().allowed);
        assert!(g.check_blocking(&mut con, "m", 1).unwrap().allowed);
    }
    let sw_bytes: i64 = server.cmd(&["MEMORY", "USAGE", &sw.key("m").unwrap(), "SAMPLES", "0"]);
    let g_bytes: i64 = server.cmd(&["MEMORY", "USAGE", &g.key("m").unwrap(), "SAMPLES", "0"]);
    eprintln!("MEMORY USAGE per subject at limit 100: sliding window {sw_bytes} bytes, GCRA {g_bytes} bytes");
    assert!(g_bytes < 200, "GCRA keeps one small key: {g_bytes}");
    assert!(sw_bytes < 100 * 200, "the log holds at most 100 entries: {sw_bytes}");
}

/// Weights, peek, reset and penalty on any connection (used for the cluster; the standalone
/// tests above cover the same ground with server-side inspection).
async fn weights_peek_reset_and_penalty<C>(mut con: C)
where
    C: redis::aio::ConnectionLike + Send,
{
    let sw = window(10, HOUR);
    let g = gcra(10, HOUR);
    let subject = unique("w");
    for (name, limiter_sw) in [("sliding", true), ("gcra", false)] {
        let check = |cost: u64| {
            let (sw, g, subject) = (sw.clone(), g.clone(), subject.clone());
            async move { if limiter_sw { sw.check_call(&subject, cost) } else { g.check_call(&subject, cost) } }
        };
        let peek = check(4).await.unwrap().peek();
        let p = redis_primitives::script::ScriptCall::query_async(&peek, &mut con).await.unwrap();
        assert!(p.allowed && p.limits[0].remaining == 6, "{name}: {p:?}");
        let mut seen = Vec::new();
        for cost in [4, 4, 3, 2] {
            let d = redis_primitives::script::ScriptCall::query_async(&check(cost).await.unwrap(), &mut con)
                .await
                .unwrap();
            seen.push((d.allowed, d.limits[0].remaining));
        }
        assert_eq!(seen, [(true, 6), (true, 2), (false, 2), (true, 0)], "{name}: the peek consumed nothing");
    }
    sw.reset(&mut con, &subject).await.unwrap();
    g.reset(&mut con, &subject).await.unwrap();
    assert_eq!(sw.check(&mut con, &subject, 1).await.unwrap().remaining, 9);
    assert_eq!(g.check(&mut con, &subject, 1).await.unwrap().remaining, 9);

    // Penalty: refused attempts count. Two admitted at t=0, refused retries at t=200 ms: at
    // t=310 ms the admitted ones have left the 300 ms window, the recorded retries have not.
    let short = window(2, Duration::from_millis(300));
    let plain = unique("plain");
    for who in [&subject, &plain] {
        for _ in 0..2 {
            assert!(short.check(&mut con, who, 1).await.unwrap().allowed);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert!(!short.check(&mut con, &subject, Request::cost(1).penalty()).await.unwrap().allowed);
        assert!(!short.check(&mut con, &plain, 1).await.unwrap().allowed);
    }
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert!(short.check(&mut con, &plain, 1).await.unwrap().allowed, "plain retries are not recorded");
    assert!(!short.check(&mut con, &subject, 1).await.unwrap().allowed, "penalty retries extend the lockout");
}

standalone_and_cluster!(weights_peek_reset_and_penalty_anywhere, |con| {
    weights_peek_reset_and_penalty(con).await;
});
