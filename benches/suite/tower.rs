//! The tower layer's cost (feature `tower`): a request through `RateLimitLayer` around a service
//! that answers at once, against calling the same limiter directly, on the same connections.
//! What the layer adds is the extractor, the request split, the boxed future, the response and
//! its headers; the Redis call is the same one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ::tower::{Service, ServiceExt};
use http::{Request, Response};
use redis::aio::MultiplexedConnection;
use redis_primitives::ratelimit::{Gcra, RateLimiter};
use redis_primitives::tower::{HeaderStyle, RateLimitLayer, header_key};

use super::{Config, Op, op, paired, spread};

type Svc = ::tower::util::BoxCloneSyncService<Request<()>, Response<()>, Infallible>;

/// One layered service per connection, so the layer and the direct call share connections alike.
fn services(
    conns: &[MultiplexedConnection],
    limiter: &RateLimiter,
    style: HeaderStyle,
    on_allowed: bool,
) -> Arc<Vec<Svc>> {
    let svcs = conns
        .iter()
        .map(|c| {
            let layer = RateLimitLayer::builder(c.clone(), limiter.clone())
                .key(header_key("x-client"))
                .headers(style)
                .headers_on_allowed(on_allowed)
                .build()
                .expect("layer");
            let inner =
                ::tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
            Svc::new(::tower::Layer::layer(&layer, inner))
        })
        .collect();
    Arc::new(svcs)
}

fn through_layer(svcs: Arc<Vec<Svc>>, conns: usize) -> Op {
    op(move |_c, t, _| {
        let mut svc = svcs[t % conns].clone();
        async move {
            let req = Request::get("/").header("x-client", format!("s{t}")).body(()).unwrap();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    })
}

/// The rows of the section: (variant, concurrency, layer / direct per run).
pub async fn measure(
    conns: &[MultiplexedConnection],
    config: Config,
) -> Vec<(&'static str, usize, Vec<f64>)> {
    let limiter =
        RateLimiter::new("bench-layer", Gcra::new(1_000_000_000, Duration::from_secs(3600)).unwrap())
            .unwrap();
    let direct = op({
        let limiter = limiter.clone();
        move |mut c, t, _| {
            let limiter = limiter.clone();
            async move {
                assert!(limiter.check(&mut c, &format!("s{t}"), 1).await.unwrap().allowed);
            }
        }
    });
    let variants = [
        (
            "headers on refusals only (default)",
            through_layer(services(conns, &limiter, HeaderStyle::Ietf, false), conns.len()),
        ),
        (
            "IETF + X-RateLimit headers on every response",
            through_layer(services(conns, &limiter, HeaderStyle::Both, true), conns.len()),
        ),
    ];
    let mut rows: Vec<(&'static str, usize, Vec<f64>)> = Vec::new();
    for (name, _) in &variants {
        for c in [1, 64] {
            rows.push((name, c, Vec::new()));
        }
    }
    for _ in 0..config.runs {
        let mut row = rows.iter_mut();
        for (_, layered) in &variants {
            for c in [1, 64] {
                let ops = if c == 1 { config.ops_c1 } else { config.ops_c64 };
                let r = row.next().expect("a row per variant and concurrency");
                r.2.push(paired(conns, c, ops, layered, &direct).await);
            }
        }
    }
    rows
}

/// The section of BENCHMARKS.md.
pub fn markdown(rows: &[(&'static str, usize, Vec<f64>)]) -> String {
    let mut md = String::from(
        "\n## Tower layer\n\nA request through `RateLimitLayer` (GCRA, never refusing; the key from a header) around a \
         service that answers at once, against `RateLimiter::check` called directly, paired as above (every task \
         alternates the two on the same connection). **layer / direct** is the throughput ratio (direct's mean \
         latency over the layer's); **added** is the layer's extra latency per request.\n\n\
         | variant | conc. | layer / direct | added latency |\n|---|---|---|---|\n",
    );
    for (name, c, ratios) in rows {
        let (m, lo, hi) = spread(ratios);
        let added = |r: f64| (1.0 / r - 1.0) * 100.0;
        md.push_str(&format!(
            "| {name} | {c} | {m:.3} ({lo:.3}–{hi:.3}) | {:+.1}% ({:+.1}%–{:+.1}%) |\n",
            added(m),
            added(hi),
            added(lo)
        ));
    }
    md
}
