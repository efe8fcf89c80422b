//! The versioned cache against the Redis at `REDIS_URL`: a fill computed once for concurrent
//! callers, a hit, an O(1) invalidation of the segment, a write refused after a bump, and reads
//! batched in one round trip.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example cache
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis_primitives::cache::{Cache, Stored};
use redis_primitives::script::Batch;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, e.g. redis://127.0.0.1:6379/")?;
    let client = redis::Client::open(url)?;
    let users = Cache::new(format!("example-users-{}", std::process::id()))?;
    let computed = Arc::new(AtomicU32::new(0));

    // Ten concurrent callers on a cold key: one computes, the others wait for its value.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut con = client.get_multiplexed_async_connection().await?;
        let (users, computed) = (users.clone(), computed.clone());
        tasks.push(tokio::spawn(async move {
            users
                .get_or_compute(&mut con, "42", Duration::from_secs(60), || async {
                    computed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await; // a slow database
                    Ok::<_, std::io::Error>(Some(b"Ada Lovelace".to_vec()))
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("10 callers, {} computation(s)", computed.load(Ordering::SeqCst));

    let mut con = client.get_multiplexed_async_connection().await?;
    let read = users.get(&mut con, "42").await?;
    println!("get: {:?} (version {})", read.entry, read.version.segment());

    let v = users.invalidate(&mut con).await?;
    println!("invalidated: version {v}; get now: {:?}", users.get(&mut con, "42").await?.entry);
    let late = users.set(&mut con, "42", b"stale", Duration::from_secs(60), read.version).await?;
    assert_eq!(late, Stored::Stale);
    println!("a filler that read before the bump is refused: {late:?}");
    // Many reads in one round trip: each operation is also a typed call for a Batch.
    let reads: Batch<_> = ["42", "43"].iter().map(|k| users.get_call(k)).collect::<Result<_, _>>()?;
    for read in reads.query_async(&mut con).await? {
        println!("batched get: {:?}", read?.lookup.entry);
    }
    users.delete(&mut con, "42").await?;
    Ok(())
}
