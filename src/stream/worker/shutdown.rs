//! Stopping: the public trigger, and the waits every worker loop makes interruptible by it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A shutdown trigger that can be cloned and fired from anywhere (built on `tokio::sync::watch`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use redis_primitives::stream::Shutdown;
/// let s = Shutdown::new();
/// let wait = s.wait();
/// s.clone().trigger();
/// wait.await; // returns at once
/// assert!(s.is_triggered());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// Not triggered yet.
    pub fn new() -> Self {
        Shutdown { tx: Arc::new(watch::channel(false).0) }
    }

    /// Fires it: every [`wait`](Self::wait) future completes.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it has fired.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// A future that completes once this fires (at once if it already has).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            if rx.wait_for(|fired| *fired).await.is_err() {
                // Every handle is gone: nobody can fire it any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Completes once the worker is stopping.
pub(super) async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held: drop it here.
    let _ = rx.wait_for(|s| *s).await;
}

/// Sleeps, unless the worker stops first; false when stopping.
pub(super) async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = wait_stop(stop) => false,
    }
}
