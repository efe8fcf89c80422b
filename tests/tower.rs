//! The tower layer end to end: real axum servers on loopback ports, a real HTTP client (hyper),
//! private redis-servers (and the shared local cluster). What a service relies on: exactly the
//! limit admitted, `Retry-After` that is enough, one budget across replicas, parseable headers,
//! the stated failure policy within the deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, SlidingWindow};
use redis_primitives::tower::{
    HeaderStyle, Key, KeySubject, OnFailure, RateLimitLayer, RefusalReason, header_key,
};

use common::{Server, shared_cluster, unique};

/// One HTTP/1.1 request on a fresh connection: status, headers, body, and how long it took.
async fn send(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String, Duration) {
    let began = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the test server");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
    (parts.status, parts.headers, body, began.elapsed())
}

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    addr
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route("/health", get(|| async { "healthy" }))
}

fn retry_after(h: &HeaderMap) -> u64 {
    h.get("retry-after").expect("Retry-After on a refusal").to_str().unwrap().parse().expect("delay-seconds")
}

async fn manager(server: &Server) -> redis::aio::ConnectionManager {
    server.client().get_connection_manager().await.unwrap()
}

fn sliding(name: &str, limit: u64, window: Duration) -> RateLimiter {
    RateLimiter::new(name, SlidingWindow::new(limit, window).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_of_ten_admits_exactly_ten_of_twenty_five_and_retry_after_is_enough() {
    let server = Server::start();
    let layer = RateLimitLayer::builder(manager(&server).await, sliding("api", 10, Duration::from_secs(3)))
        .key(header_key("x-client"))
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let client = unique("client");
    let h = [("x-client", client.as_str())];
    // 5 now, 20 a moment later: the refusals' Retry-After must cover the first 5 expiring, and
    // only those (sleeping it is enough, and not trivially so: the later 5 are still counted).
    let mut statuses = Vec::new();
    let mut waits = Vec::new();
    for i in 0..25 {
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let (status, headers, _, _) = send(addr, "/", &h).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            waits.push(retry_after(&headers));
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((ok, refused), (10, 15), "{statuses:?}");
    assert!(statuses[..10].iter().all(|s| *s == StatusCode::OK), "the first 10 pass: {statuses:?}");
    println!("Retry-After values of the 15 refusals: {waits:?}");
    assert!(waits.iter().all(|w| (1..=2).contains(w)), "{waits:?}");
    tokio::time::sleep(Duration::from_secs(*waits.last().unwrap())).await;
    let (status, _, _, _) = send(addr, "/", &h).await;
    assert_eq!(status, StatusCode::OK, "after sleeping Retry-After the next request passes");
    // Only the first 5 expired: 4 more fit, then refusals again.
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(send(addr, "/", &h).await.0);
    }
    assert_eq!(after.iter().filter(|s| **s == StatusCode::OK).count(), 4, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_share_one_budget() {
    let server = Server::start();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        // Each instance has its own connection and layer, as two replicas would.
        let layer =
            RateLimitLayer::builder(manager(&server).await, sliding("shared", 10, Duration::from_secs(60)))
                .key(header_key("x-client"))
                .build()
                .unwrap();
        addrs.push(serve(app().layer(layer)).await);
    }
    let client = unique("client");
    let mut ok = [0usize; 2];
    for i in 0..25 {
        if send(addrs[i % 2], "/", &[("x-client", &client)]).await.0 == StatusCode::OK {
            ok[i % 2] += 1;
        }
    }
    assert_eq!(ok[0] + ok[1], 10, "one budget across both instances: {ok:?}");
    assert_eq!(ok, [5, 5], "alternating requests, each instance admitted half");
}

/// The value of `param` of list member `member` of a structured field.
fn sf_param(list: &sfv::List, member: usize, param: &str) -> Option<i64> {
    match &list[member] {
        sfv::ListEntry::Item(item) => item
            .params
            .iter()
            .find(|(k, _)| k.as_str() == param)
            .and_then(|(_, v)| v.as_integer())
            .map(i64::from),
        _ => None,
    }
}

fn sf_name(list: &sfv::List, member: usize) -> String {
    match &list[member] {
        sfv::ListEntry::Item(item) => item.bare_item.as_string().expect("a String item").as_str().to_owned(),
        _ => panic!("an inner list"),
    }
}

fn parse_list(h: &HeaderMap, name: &str) -> sfv::List {
    let value = h.get(name).unwrap_or_else(|| panic!("{name} missing")).to_str().unwrap();
    sfv::Parser::new(value)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {value:?} is not a structured List: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_parse_as_the_drafts_structured_fields() {
    let server = Server::start();
    let per_user = sliding("user", 3, Duration::from_secs(30));
    let per_tenant = sliding("tenant", 5, Duration::from_secs(3600));
    let layer =
        RateLimitLayer::builder(manager(&server).await, MultiLimit::new().with(per_user).with(per_tenant))
            .key(|req| {
                let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
                let user = req.headers.get("x-user")?.to_str().ok()?;
                Some(Key::per_limit([KeySubject::new(user).in_scope(tenant), KeySubject::new(tenant)]))
            })
            .headers(HeaderStyle::Both)
            .headers_on_allowed(true)
            .build()
            .unwrap();
    let addr = serve(app().layer(layer)).await;
    let tenant = unique("tenant");
    let h = [("x-tenant", tenant.as_str()), ("x-user", "ann")];

    let (status, headers, _, _) = send(addr, "/", &h).await;
    assert_eq!(status, StatusCode::OK);
    let policy = parse_list(&headers, "ratelimit-policy");
    assert_eq!(policy.len(), 2);
    assert_eq!(
        (sf_name(&policy, 0), sf_param(&policy, 0, "q"), sf_param(&policy, 0, "w")),
        ("user".into(), Some(3), Some(30))
    );
    assert_eq!(
        (sf_name(&policy, 1), sf_param(&policy, 1, "q"), sf_param(&policy, 1, "w")),
        ("tenant".into(), Some(5), Some(3600))
    );
    let state = parse_list(&headers, "ratelimit");
    assert_eq!((sf_name(&state, 0), sf_param(&state, 0, "r")), ("user".into(), Some(2)));
    assert_eq!((sf_name(&state, 1), sf_param(&state, 1, "r")), ("tenant".into(), Some(4)));
    assert!(sf_param(&state, 0, "t").is_some_and(|t| (1..=30).contains(&t)));
    // X-RateLimit-*: the binding limit (least remaining: the user's).
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "2");
    let reset: u64 = headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&reset));

    send(addr, "/", &h).await;
    send(addr, "/", &h).await;
    let (status, headers, _, _) = send(addr, "/", &h).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let state = parse_list(&headers, "ratelimit");
    assert_eq!(sf_param(&state, 0, "r"), Some(0));
    let t = sf_param(&state, 0, "t").unwrap();
    // Retry-After does not point before the end of the refusing policy's effective window.
    assert!(retry_after(&headers) as i64 >= t, "Retry-After {} < t {t}", retry_after(&headers));
    assert_eq!(headers["x-ratelimit-remaining"], "0");

    // The tenant binds for another user: 2 left there, then refused by the tenant (all-or-nothing:
    // bob's own limit keeps what the refusal did not consume).
    let hb = [("x-tenant", tenant.as_str()), ("x-user", "bob")];
    assert_eq!(send(addr, "/", &hb).await.0, StatusCode::OK);
    assert_eq!(send(addr, "/", &hb).await.0, StatusCode::OK);
    let (status, headers, _, _) = send(addr, "/", &hb).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let state = parse_list(&headers, "ratelimit");
    assert_eq!((sf_param(&state, 0, "r"), sf_param(&state, 1, "r")), (Some(1), Some(0)));
    assert_eq!(headers["x-ratelimit-limit"], "5", "X-RateLimit-* describe the limit that refused");
}

/// Builds a layer with `policy` on `con`, serves it, returns its address.
async fn policy_server(
    con: redis::aio::ConnectionManager,
    name: &str,
    policy: OnFailure,
    deadline: Duration,
) -> SocketAddr {
    let layer = RateLimitLayer::builder(con, sliding("outage", 10, Duration::from_secs(60)))
        .key(header_key("x-client"))
        .name(name)
        .deadline(deadline)
        .on_failure(policy)
        // Ask Redis on every request: each one must come back within the deadline on its own.
        .retry_redis_after(Duration::ZERO)
        .build()
        .unwrap();
    serve(app().layer(layer)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_gives_the_configured_policy_within_the_deadline() {
    #[cfg(feature = "metrics")]
    common::telemetry::global_metrics(); // installed before the layers report anything
    let mut server = Server::start();
    let deadline = Duration::from_millis(300);
    let names = [unique("open"), unique("closed"), unique("local")];
    let open = policy_server(manager(&server).await, &names[0], OnFailure::Open, deadline).await;
    let closed = policy_server(manager(&server).await, &names[1], OnFailure::Closed, deadline).await;
    let local =
        policy_server(manager(&server).await, &names[2], OnFailure::Local { replicas: 2 }, deadline).await;
    let client = unique("client");
    let h = [("x-client", client.as_str())];
    for addr in [open, closed, local] {
        assert_eq!(send(addr, "/", &h).await.0, StatusCode::OK, "Redis up: decided by Redis");
    }
    server.kill();

    let mut slowest = Duration::ZERO;
    let mut by_policy = Vec::new();
    for addr in [open, closed, local] {
        let mut statuses = Vec::new();
        for _ in 0..12 {
            let (status, headers, _, took) = send(addr, "/", &h).await;
            slowest = slowest.max(took);
            if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
                assert!(retry_after(&headers) >= 1);
            }
            statuses.push(status.as_u16());
        }
        by_policy.push(statuses);
    }
    println!("Redis down, deadline {deadline:?}: slowest answer {slowest:?}");
    assert!(by_policy[0].iter().all(|s| *s == 200), "fail open admits: {:?}", by_policy[0]);
    assert!(by_policy[1].iter().all(|s| *s == 503), "fail closed refuses with 503: {:?}", by_policy[1]);
    // Local fallback: this replica's share is ceil(10 / 2) = 5, for this client, then 429.
    let admitted = by_policy[2].iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, 5, "the local share: {:?}", by_policy[2]);
    assert!(by_policy[2][5..].iter().all(|s| *s == 429));
    // Each request within the deadline, plus a margin for a loaded 2-core machine.
    assert!(
        slowest < deadline + Duration::from_millis(700),
        "slowest {slowest:?} past the deadline {deadline:?}"
    );

    #[cfg(feature = "metrics")]
    {
        // The choice is visible in metrics, per layer.
        let m = common::telemetry::global_metrics();
        let c = |layer: &str, outcome: &str| {
            m.counter("redis_primitives_http_requests_total", &[("layer", layer), ("outcome", outcome)])
        };
        assert_eq!((c(&names[0], "allowed"), c(&names[0], "fail_open")), (1, 12));
        assert_eq!((c(&names[1], "allowed"), c(&names[1], "fail_closed")), (1, 12));
        assert_eq!(
            (c(&names[2], "allowed"), c(&names[2], "fallback_allowed"), c(&names[2], "fallback_refused")),
            (1, 5, 7)
        );
        for name in &names {
            let errors = m.counter("redis_primitives_http_limiter_errors_total", &[("layer", name)]);
            assert_eq!(errors, 12, "every request asked Redis and met an error");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_cut_at_the_deadline_and_the_breaker_skips_it() {
    let server = Server::start();
    let deadline = Duration::from_millis(200);
    let layer =
        RateLimitLayer::builder(manager(&server).await, sliding("paused", 10, Duration::from_secs(60)))
            .key(header_key("x-client"))
            .deadline(deadline)
            .on_failure(OnFailure::Closed)
            .retry_redis_after(Duration::from_secs(30))
            .build()
            .unwrap();
    let addr = serve(app().layer(layer)).await;
    let client = unique("client");
    let h = [("x-client", client.as_str())];
    assert_eq!(send(addr, "/", &h).await.0, StatusCode::OK);
    // Silent, not down: every write (EVALSHA included) waits 3 s on the server.
    let _: String = server.cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    let (status, headers, _, first) = send(addr, "/", &h).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&headers), 30, "fail closed says when Redis is asked again");
    let mut later = Duration::ZERO;
    for _ in 0..10 {
        let (status, _, _, took) = send(addr, "/", &h).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        later = later.max(took);
    }
    println!("paused Redis, deadline {deadline:?}: first answer {first:?}, slowest later answer {later:?}");
    assert!(first >= deadline, "the first request waited for Redis up to the deadline: {first:?}");
    assert!(first < deadline + Duration::from_millis(700), "{first:?}");
    assert!(later < deadline, "after a failure the breaker answers without waiting: {later:?}");
    let _: String = server.cmd(&["CLIENT", "UNPAUSE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backed_layer_decides_multi_limits_in_one_slot() {
    let cluster = shared_cluster();
    let con = cluster.client().get_async_connection().await.unwrap();
    let per_user = RateLimiter::new("user", Gcra::new(10, Duration::from_secs(3600)).unwrap()).unwrap();
    let per_tenant = RateLimiter::new("tenant", Gcra::new(15, Duration::from_secs(3600)).unwrap()).unwrap();
    let layer = RateLimitLayer::builder(con, MultiLimit::new().with(per_user).with(per_tenant))
        .key(|req| {
            let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
            let user = req.headers.get("x-user")?.to_str().ok()?;
            Some(Key::per_limit([KeySubject::new(user).in_scope(tenant), KeySubject::new(tenant)]))
        })
        .headers(HeaderStyle::XRateLimit)
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let tenant = unique("tenant");
    let mut ok = Vec::new();
    for user in ["ann", "bob"] {
        let h = [("x-tenant", tenant.as_str()), ("x-user", user)];
        let mut n = 0;
        for _ in 0..12 {
            let (status, headers, _, _) = send(addr, "/", &h).await;
            match status {
                StatusCode::OK => n += 1,
                StatusCode::TOO_MANY_REQUESTS => assert!(retry_after(&headers) >= 1),
                other => panic!("unexpected {other}"),
            }
        }
        ok.push(n);
    }
    // ann: her own 10; bob: what the tenant has left (15 - 10).
    assert_eq!(ok, vec![10, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_refusal_hook_and_unkeyed_requests() {
    let server = Server::start();
    let layer = RateLimitLayer::builder(manager(&server).await, sliding("hooks", 1, Duration::from_secs(60)))
        .key(header_key("x-client"))
        .bypass(|req| req.uri.path() == "/health")
        .on_refusal(|r| {
            assert_eq!(r.reason(), RefusalReason::Limited);
            let body = format!(
                r#"{{"error":"slow down","retry_after_ms":{}}}"#,
                r.retry_after().unwrap().as_millis()
            );
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        })
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let client = unique("client");
    let h = [("x-client", client.as_str())];
    assert_eq!(send(addr, "/", &h).await.0, StatusCode::OK);
    let (status, headers, body, _) = send(addr, "/", &h).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.starts_with(r#"{"error":"slow down""#), "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(retry_after(&headers) >= 59, "the layer added Retry-After to the custom response");
    assert!(headers.contains_key("ratelimit"), "and the rate-limit headers");
    // Health checks bypass the limit; requests without a key are not limited.
    for _ in 0..3 {
        assert_eq!(send(addr, "/health", &h).await.0, StatusCode::OK);
        assert_eq!(send(addr, "/", &[]).await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_keys_are_refused_never_let_through() {
    let server = Server::start();
    let layer =
        RateLimitLayer::builder(manager(&server).await, sliding("strict", 5, Duration::from_secs(60)))
            .key(|req| {
                let cost = req.headers.get("x-cost").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                header_key("x-client")(req).map(|k| k.cost(cost))
            })
            .on_failure(OnFailure::Open)
            .build()
            .unwrap();
    let addr = serve(app().layer(layer)).await;
    // A subject that is not a valid hash tag: 400, not a fail-open pass.
    for _ in 0..3 {
        let (status, headers, _, _) = send(addr, "/", &[("x-client", "a}b")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!headers.contains_key("retry-after"));
    }
    // A cost over the capacity never fits: 429 without a Retry-After that would never help.
    let (status, headers, _, _) = send(addr, "/", &[("x-client", "c"), ("x-cost", "6")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!headers.contains_key("retry-after"));
}

#[tokio::test]
async fn mixed_algorithms_and_bad_policies_are_refused_at_build() {
    let server = Server::start();
    let con = server.client().get_multiplexed_async_connection().await.unwrap();
    let mixed = MultiLimit::new()
        .with(sliding("a", 1, Duration::from_secs(1)))
        .with(RateLimiter::new("b", Gcra::new(1, Duration::from_secs(1)).unwrap()).unwrap());
    let err = RateLimitLayer::builder(con.clone(), mixed).key(header_key("x")).build().unwrap_err();
    assert!(err.to_string().contains("one algorithm"), "{err}");
    let err = RateLimitLayer::builder(con.clone(), sliding("a", 1, Duration::from_secs(1)))
        .key(header_key("x"))
        .on_failure(OnFailure::Local { replicas: 0 })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("replicas"), "{err}");
    let err =
        RateLimitLayer::builder(con.clone(), sliding("a", 1, Duration::from_secs(1))).build().unwrap_err();
    assert!(err.to_string().contains("key extractor"), "{err}");
    // Extreme durations are accepted and saturate (no overflow, no panic).
    RateLimitLayer::builder(con, sliding("a", 1, Duration::from_secs(1)))
        .key(header_key("x"))
        .deadline(Duration::MAX)
        .retry_redis_after(Duration::MAX)
        .on_failure(OnFailure::Local { replicas: u32::MAX })
        .fallback_max_keys(0)
        .build()
        .unwrap();
}
