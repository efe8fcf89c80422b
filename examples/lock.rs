//! A fenced lock, a watchdog and a semaphore against the Redis at `REDIS_URL`, then the number
//! of acquire+release pairs per second on one connection.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6380/ cargo run --example lock
//! ```

use std::time::{Duration, Instant};

use redis_primitives::lock::{Acquire, FencedWrite, Lock, Semaphore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, e.g. redis://127.0.0.1:6379/")?;
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_manager().await?;
    let run = std::process::id();

    // A lock whose holder writes the protected value with its fencing token. Calls without a
    // timeout of their own (try_acquire, release, extend, fenced_write) give up after 500 ms.
    let lock = Lock::new(format!("example-{run}"), Duration::from_secs(5))?
        .with_deadline(Duration::from_millis(500));
    match lock.acquire(&mut con, Duration::from_secs(2)).await? {
        Acquire::Acquired(guard) => {
            println!(
                "acquired with fencing token {}, valid for {:?}",
                guard.fencing_token(),
                guard.valid_for()
            );
            match guard.fenced_write(b"hello", Some(Duration::from_secs(60))).await? {
                FencedWrite::Written => println!("wrote {}", lock.keys().data()),
                FencedWrite::Stale { highest_seen } => println!("refused: token {highest_seen} wrote later"),
            }
            // Yes; Earlier when the first attempt's reply was lost and the resend found it done;
            // NotHeld when the lease had ended.
            println!("release: {:?}", guard.release().await?);
        }
        Acquire::Held { retry_after } => println!("held by someone else for up to {retry_after:?}"),
    }

    // A watchdog keeps a short lease alive while the work runs, and says so if it cannot.
    let watched = Lock::new(format!("example-watchdog-{run}"), Duration::from_millis(300))?
        .watchdog(Duration::from_secs(60));
    if let Acquire::Acquired(guard) = watched.try_acquire(&mut con).await? {
        tokio::select! {
            reason = guard.lost() => println!("lost the lock: {reason:?}"),
            () = tokio::time::sleep(Duration::from_secs(1)) => println!("worked 1 s on a 300 ms lease"),
        }
        guard.release().await?;
    }

    // At most two at once; a crashed holder's permit comes back after its lease.
    let sem = Semaphore::new(format!("example-sem-{run}"), 2, Duration::from_secs(10))?;
    let a = sem.try_acquire(&mut con).await?.acquired().ok_or("first permit")?;
    let b = sem.try_acquire(&mut con).await?.acquired().ok_or("second permit")?;
    println!("third permit while two are held: {:?}", sem.try_acquire(&mut con).await?.map(|_| ()));
    a.release().await?;
    b.release().await?;

    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        if let Acquire::Acquired(guard) = lock.try_acquire(&mut con).await? {
            guard.release().await?;
        }
    }
    println!("{:.0} acquire+release pairs/s on one connection", n as f64 / t.elapsed().as_secs_f64());
    Ok(())
}
