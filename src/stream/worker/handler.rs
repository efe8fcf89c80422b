//! Running the user's handler: deliveries, the handler trait, panics caught as failures, and
//! the set of running handlers, which stops every one of them when it is dropped.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};

use super::super::call::MAX_REASON;
use super::super::{Fields, StreamMessage};
use super::{Job, Outcome, lock};

/// One entry handed to the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The entry's ID.
    pub id: String,
    /// Its fields.
    pub fields: Fields,
    /// How often the group has delivered it, this time included (1 on the first delivery).
    pub deliveries: u64,
}

impl Delivery {
    /// Reads the fields as a typed message.
    pub fn decode<M: StreamMessage>(&self) -> std::result::Result<M, M::Error> {
        M::from_fields(&self.fields)
    }
}

/// What a worker runs for each entry. `Ok` acks the entry; `Err` leaves it pending (it comes
/// back after the min-idle time) and, on its last allowed delivery, moves it to the dead-letter
/// stream with the error's text as the reason. A panic counts as an error.
///
/// Each run is a tokio task of its own (handlers run in parallel on a multi-threaded runtime);
/// [`Worker::run`](super::Worker::run) owns them all, and dropping it stops them.
///
/// Any `Fn(Delivery) -> impl Future<Output = Result<(), E>>` with `E: Display` is a handler:
///
/// ```
/// use redis_primitives::stream::{Delivery, Handler};
/// fn is_handler<H: Handler>(_: H) {}
/// is_handler(|d: Delivery| async move {
///     if d.fields.get("order").is_none() {
///         return Err(format!("{}: no order", d.id));
///     }
///     Ok(())
/// });
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The failure; its `Display` text is the dead-letter reason.
    type Error: fmt::Display + Send + 'static;

    /// Handles one delivery.
    fn handle(&self, delivery: Delivery)
    -> impl Future<Output = std::result::Result<(), Self::Error>> + Send;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: fmt::Display + Send + 'static,
{
    type Error = E;

    fn handle(&self, delivery: Delivery) -> impl Future<Output = std::result::Result<(), E>> + Send {
        self(delivery)
    }
}

/// Catches a panic of the future it wraps (so a panicking handler is a failed delivery).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

async fn handle_one<H: Handler>(handler: Arc<H>, job: Job) -> Outcome {
    let Job { delivery, slot } = job;
    let (id, deliveries) = (delivery.id.clone(), delivery.deliveries);
    let result = CatchUnwind(Box::pin(handler.handle(delivery))).await;
    // The slot frees when the handler is done; the ack follows on its own.
    drop(slot);
    let reason = match result {
        Ok(Ok(())) => return Outcome::Done(id),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("handler panicked: {msg}")
        }
    };
    Outcome::Failed { id, deliveries, reason: truncate(reason, MAX_REASON.min(4096)) }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A spawned future's cell: the task polls the future through it, and the owner can take it
/// out (dropping it) at any time.
type Cell<T> = Arc<Mutex<Option<Boxed<T>>>>;

/// What the task runs: the future in the cell, or nothing once the owner took it.
struct Owned<T>(Cell<T>);

impl<T> Future for Owned<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut cell = lock(&self.0);
        let Some(fut) = cell.as_mut() else { return Poll::Ready(None) };
        match fut.as_mut().poll(cx) {
            Poll::Ready(out) => {
                *cell = None;
                Poll::Ready(Some(out))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Futures running as tasks of their own (in parallel), yet owned here: dropping this stops
/// every one of them before the drop returns. A `JoinSet` alone only asks the runtime to cancel
/// its tasks, which it does later (handlers kept running after `run` was dropped).
struct Running<T> {
    tasks: JoinSet<Option<T>>,
    cells: HashMap<Id, Cell<T>>,
}

impl<T: Send + 'static> Running<T> {
    fn new() -> Self {
        Running { tasks: JoinSet::new(), cells: HashMap::new() }
    }

    fn spawn(&mut self, fut: impl Future<Output = T> + Send + 'static) {
        let cell: Cell<T> = Arc::new(Mutex::new(Some(Box::pin(fut))));
        let task = self.tasks.spawn(Owned(cell.clone()));
        self.cells.insert(task.id(), cell);
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next finished future's output (`None` for one that did not finish: only when the
    /// task was cancelled, which this never does while alive).
    async fn join_next(&mut self) -> Option<Option<T>> {
        let (id, out) = match self.tasks.join_next_with_id().await? {
            Ok((id, out)) => (id, out),
            Err(e) => (e.id(), None),
        };
        self.cells.remove(&id);
        Some(out)
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        for cell in self.cells.values() {
            // Waits for a future being polled on another thread to reach its next await, then
            // drops it here (outside the lock: its destructor may take time).
            let fut = lock(cell).take();
            drop(fut);
        }
        // The JoinSet, dropped next, aborts the tasks, which have nothing left to run.
    }
}

/// Runs a handler task per job, and sends each outcome to the acker. Returns once the job
/// channel is closed (the reader and the reclaim step stopped) and every handler finished.
pub(super) async fn dispatcher<H: Handler>(
    handler: H,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let handler = Arc::new(handler);
    let mut running = Running::new();
    let mut open = true;
    loop {
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => running.spawn(handle_one(handler.clone(), job)),
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Some(outcome) = done {
                    let _ = out.send(outcome);
                }
            }
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }

    /// Counts the futures alive.
    struct Alive(Arc<AtomicU64>);

    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_set_stops_every_future_before_returning() {
        let alive = Arc::new(AtomicU64::new(0));
        let mut running = Running::new();
        for _ in 0..64 {
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = Alive(alive.clone());
            running.spawn(async move {
                let _guard = guard;
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(running);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn outputs_come_back() {
        let mut running = Running::new();
        running.spawn(async { 7 });
        assert_eq!(running.join_next().await, Some(Some(7)));
        assert_eq!(running.join_next().await, None);
        assert!(running.cells.is_empty());
    }
}
