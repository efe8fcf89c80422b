//! Produce a few orders, handle them with a consumer-group worker, shut down gracefully.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example stream
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis_primitives::stream::{
    Delivery, Fields, Producer, Retention, Shutdown, Stream, StreamMessage, Worker, WorkerOptions,
};

struct Order {
    id: u64,
    cents: u64,
}

impl StreamMessage for Order {
    type Error = String;
    fn to_fields(&self) -> Fields {
        Fields::new().with("id", self.id.to_string()).with("cents", self.cents.to_string())
    }
    fn from_fields(f: &Fields) -> Result<Self, String> {
        let num = |k: &str| f.get_str(k).and_then(|v| v.parse().ok()).ok_or(format!("bad or missing {k}"));
        Ok(Order { id: num("id")?, cents: num("cents")? })
    }
}

#[tokio::main]
async fn main() -> redis_primitives::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url).map_err(redis_primitives::Error::from)?;
    let stream = Stream::new("example-orders")?;

    let mut con = client.get_multiplexed_async_connection().await?;
    // Every producer and admin call returns within its deadline, whatever the server does.
    let producer =
        Producer::new(stream.clone(), Retention::MaxLen(10_000))?.with_deadline(Duration::from_secs(1));
    let orders: Vec<Order> = (1..=100).map(|id| Order { id, cents: id * 100 }).collect();
    let ids = producer.add_messages(&mut con, &orders).await?;
    println!("produced {} orders into {}", ids.len(), stream.key());

    let options = WorkerOptions::default().block(Duration::from_secs(2)).max_deliveries(3);
    let worker = Worker::new(client, stream.clone(), "billing", "billing-example", options)?;
    let shutdown = Shutdown::new();
    let handled = Arc::new(AtomicU64::new(0));
    let (h, s) = (handled.clone(), shutdown.clone());
    let report = worker
        .run(
            move |d: Delivery| {
                let (handled, shutdown) = (h.clone(), s.clone());
                async move {
                    let order = d.decode::<Order>()?;
                    if order.id == 13 {
                        // Stays pending; dead-lettered on its 3rd delivery.
                        return Err(format!("order {} is unlucky", order.id));
                    }
                    if handled.fetch_add(1, Ordering::SeqCst) + 1 >= 99 {
                        shutdown.trigger();
                    }
                    Ok(())
                }
            },
            shutdown.wait(),
        )
        .await?;
    println!("{report:?}");
    for dead in stream.dead_letters(&mut con, None, 10).await? {
        println!("dead letter {} after {} deliveries: {}", dead.origin_id, dead.deliveries, dead.reason);
    }
    Ok(())
}
