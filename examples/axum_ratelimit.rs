//! An axum service rate limited through Redis with `RateLimitLayer`: 5 requests per 10 s per
//! client (the `x-api-key` header, else the client's IP), IETF `RateLimit` headers and
//! `X-RateLimit-*` on every response, and an in-process fallback if Redis goes away.
//!
//! ```sh
//! cargo run --example axum_ratelimit --features tower
//! curl -i http://127.0.0.1:3000/        # 5 times: 200, then 429 with Retry-After
//! curl -i http://127.0.0.1:3000/health  # never limited
//! ```
//!
//! It uses `REDIS_URL` when a Redis answers there (default `redis://127.0.0.1:6379`), else it
//! starts a throwaway `redis-server` from `PATH` on a free port (stopped at exit), like
//! `cargo run -- tour`. `PORT` changes the HTTP port (default 3000). Every replica started
//! against the same Redis shares the same budget.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::tower::{HeaderStyle, Key, OnFailure, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let (url, _throwaway) = redis_or_throwaway(&url)?;
    let con = redis::Client::open(url.as_str())?.get_connection_manager().await?;

    let per_client = RateLimiter::new("per-client", SlidingWindow::new(5, Duration::from_secs(10))?)?;
    let layer = RateLimitLayer::builder(con, per_client)
        // The API key when there is one, else the peer address (axum's ConnectInfo).
        .key(|req| {
            if let Some(k) = req.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
                return Some(Key::new(format!("key:{k}")));
            }
            let ConnectInfo(peer) = req.extensions.get::<ConnectInfo<SocketAddr>>()?;
            Some(Key::new(format!("ip:{}", peer.ip())))
        })
        .bypass(|req| req.uri.path() == "/health")
        .headers(HeaderStyle::Both)
        .headers_on_allowed(true)
        .deadline(Duration::from_millis(100))
        // If Redis fails: each of (say) 2 replicas admits half the limit on its own.
        .on_failure(OnFailure::Local { replicas: 2 })
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .layer(layer);
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/ (5 requests per 10 s per client; Ctrl-C stops)",
        listener.local_addr()?
    );
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// A redis-server started for the example, stopped when dropped.
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

/// `url` if a Redis answers there, else a throwaway `redis-server` on a free port.
fn redis_or_throwaway(url: &str) -> Result<(String, Option<Throwaway>), Box<dyn std::error::Error>> {
    if answers(url) {
        println!("using the Redis at {url}");
        return Ok((url.to_owned(), None));
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("redis-primitives-axum-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("no Redis at {url} and no redis-server on PATH ({e}): install one or set REDIS_URL")
        })?;
    let server = Throwaway { child, dir };
    let throwaway = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers(&throwaway) {
        if Instant::now() > deadline {
            return Err("the throwaway redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("no Redis answers at {url}: started a throwaway redis-server at {throwaway} (stopped at exit)");
    Ok((throwaway, Some(server)))
}
