//! Rate limits against the Redis at `REDIS_URL`: a sliding window refusing with retry-after, a
//! GCRA limiter waiting until allowed, and two limits checked together.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example ratelimit
//! ```

use std::time::Duration;

use redis_primitives::ratelimit::{Gcra, MultiLimit, RateLimiter, Request, SlidingWindow, Subject};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, e.g. redis://127.0.0.1:6379/")?;
    let mut con = redis::Client::open(url)?.get_connection_manager().await?;
    let subject = format!("example-{}", std::process::id());

    // 3 requests per second, exact.
    let api = RateLimiter::new("api", SlidingWindow::new(3, Duration::from_secs(1))?)?;
    for i in 1..=4 {
        let d = api.check(&mut con, &subject, 1).await?;
        println!(
            "request {i}: allowed {} remaining {} retry after {:?}",
            d.allowed, d.remaining, d.retry_after
        );
    }

    // 2 per second with bursts of 2: wait() sleeps by the server's retry-after.
    let login = RateLimiter::new("login", Gcra::new(2, Duration::from_secs(1))?)?;
    for i in 1..=4 {
        let d = login.wait(&mut con, &subject, Request::cost(1), Duration::from_secs(2)).await?;
        println!("login {i}: allowed {} (remaining {})", d.allowed, d.remaining);
    }

    // Per user and per tenant at once: nothing is consumed unless both allow.
    let per_user = RateLimiter::new("user", SlidingWindow::new(5, Duration::from_secs(1))?)?;
    let per_tenant = RateLimiter::new("tenant", SlidingWindow::new(2, Duration::from_secs(60))?)?;
    // Built once; per call, the subjects: alice inside the tenant, and the tenant itself (one
    // hash tag for both keys, so the call also works on a cluster).
    let both = MultiLimit::new().with(per_user).with(per_tenant);
    let subjects = [Subject::new("alice").in_scope(&subject), Subject::new(&subject)];
    for i in 1..=3 {
        let d = both.check(&mut con, subjects, 1).await?;
        println!(
            "multi {i}: allowed {} refused by {:?} retry after {:?}",
            d.allowed, d.refused_by, d.retry_after
        );
    }

    api.reset(&mut con, &subject).await?;
    login.reset(&mut con, &subject).await?;
    both.reset(&mut con, subjects).await?;
    Ok(())
}
