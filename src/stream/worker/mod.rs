//! The consumer-group worker: XREADGROUP BLOCK on a dedicated connection, a bounded pool of
//! handler tasks, batched XACKs, XAUTOCLAIM recovery and atomic dead-lettering.
//!
//! Inside one [`Worker::run`] four loops cooperate, all inside the `run` future:
//! - the reader ([`reading`]) waits for a free handler slot, then reads at most as many new
//!   entries (`>`) as slots are free with `XREADGROUP … BLOCK`, on a connection of its own (a
//!   blocked read stalls every other command on its connection). A read with no answer by the
//!   block time plus the command timeout is abandoned and the connection replaced;
//! - the reclaimer ([`reclaim`]) periodically runs `XAUTOCLAIM` with the min-idle time: entries
//!   of crashed or stuck consumers (and this worker's own failures and abandoned reads) come
//!   back, with their delivery counts from `XPENDING`; entries whose data was trimmed are
//!   cleared; entries delivered more than `max_deliveries` times are dead-lettered;
//! - the dispatcher ([`handler`]) runs the handler for each entry as a task of its own (panics
//!   are caught and count as failures);
//! - the acker ([`acking`]) XACKs successes in batches and dead-letters entries that failed
//!   their last allowed delivery (the `stream.dead_letter` script: copy and ack in one step).
//!
//! Every command has a deadline (the command timeout; the block time plus it for reads), and
//! every retry follows one policy ([`connection::fault`]: `Error::is_transient`, plus recreating
//! a lost group).

mod acking;
mod connection;
mod handler;
mod options;
mod reading;
mod reclaim;
mod report;
mod shutdown;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

pub use connection::Connector;
pub use handler::{Delivery, Handler};
pub use options::WorkerOptions;
pub use report::Report;
pub use shutdown::Shutdown;

use super::admin::created;
use super::call::{RetireCall, Retirement};
use super::{StartFrom, Stream};
use crate::flow::{self, Once};
use crate::{Error, Result, rules};
use connection::Link;
use report::Stats;
use shutdown::wait_stop;

/// A consumer name made once (`<HOSTNAME or "worker">-<pid>-<random>`). Use one per worker and
/// keep it for the worker's life; better, give a stable name (e.g. the pod name), so that a
/// restarted worker is the same consumer. Names made per poll leak consumers without bound.
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A consumer-group worker over one stream. See the [module docs](super) for what it does.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_primitives::stream::{Delivery, Shutdown, Stream, Worker, WorkerOptions};
///
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"]).unwrap();
/// let options = WorkerOptions::default().block(Duration::from_secs(10)).max_deliveries(3);
/// let worker = Worker::new(client, Stream::new("orders")?, "billing", "billing-pod-1", options)?;
/// let shutdown = Shutdown::new();
/// let s = shutdown.clone(); // e.g. fired from a signal handler
/// tokio::spawn(async move {
///     tokio::time::sleep(Duration::from_secs(3600)).await;
///     s.trigger();
/// });
/// let report = worker.run(|d: Delivery| async move { Ok::<_, String>(()) }, shutdown.wait()).await?;
/// println!("acked {} entries", report.acked);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    connector: Connector,
    stream: Stream,
    group: String,
    consumer: String,
    options: WorkerOptions,
}

impl Worker {
    /// A worker reading `stream` as `consumer` of `group` (each 1..=1024 bytes). Give a stable
    /// consumer name (or one from [`consumer_name`], made once). Refuses every setting the
    /// worker could not run with ([`WorkerOptions::validate`]).
    pub fn new(
        connector: impl Into<Connector>,
        stream: Stream,
        group: impl Into<String>,
        consumer: impl Into<String>,
        options: WorkerOptions,
    ) -> Result<Self> {
        let (group, consumer) = (group.into(), consumer.into());
        rules::name("group", &group)?;
        rules::name("consumer", &consumer)?;
        options.validate()?;
        Ok(Worker { connector: connector.into(), stream, group, consumer, options })
    }

    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The settings.
    pub fn options(&self) -> &WorkerOptions {
        &self.options
    }

    /// Runs until `shutdown` completes: connects, creates the group if needed (an existing
    /// group is fine), then reads, handles, acks and reclaims. Starting (two connections and
    /// the group) fails within three command timeouts when the server is unreachable.
    ///
    /// Transient errors ([`Error::is_transient`]: a lost connection, a command with no answer
    /// within the command timeout, a failover) are retried with backoff, on a fresh connection,
    /// and counted in [`Report::errors`]; a read with no answer past the block time plus the
    /// command timeout is abandoned and its connection replaced ([`Report::reads_abandoned`]).
    /// A lost group (a restart without persistence) is created again. Any other error (wrong
    /// key type, no permission, a reply that is not Redis') stops the worker the same graceful
    /// way and is returned.
    ///
    /// # Shutdown
    ///
    /// When `shutdown` completes, the worker stops reading (a blocked read is unblocked on a
    /// standalone server; on a cluster it ends within the block time plus the command timeout),
    /// lets every running handler finish, acks what succeeded, retires the consumer if asked
    /// ([`WorkerOptions::retire_on_shutdown`]) and returns the [`Report`]. It returns at most
    /// the block time plus the command timeout after `shutdown`, or one command timeout after
    /// the last running handler finished if that is later, plus one command timeout to retire.
    /// Acks that could not land by then stay pending (delivered again: at least once).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is a crash as far as Redis is concerned, and stops everything it
    /// started before the drop returns: every loop, and every handler (a handler being polled
    /// on another thread at that instant is waited for until its next `.await`, then dropped).
    /// No handler code runs after the drop returns; whatever was not acked stays pending, to be
    /// reclaimed after the min-idle time.
    pub async fn run<H: Handler>(
        &self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Report> {
        let opts = &self.options;
        let timeout = opts.command_timeout;
        // The connections' own response timeouts sit above ours, so our deadlines decide.
        let mut control = Link::open(&self.connector, timeout.saturating_mul(2), timeout).await?;
        let reading =
            Link::open(&self.connector, opts.read_deadline().saturating_add(timeout), timeout).await?;
        control.run(create_group(&self.stream, &self.group, &opts.start, &control)?).await?;

        let shared = Shared {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            opts: opts.clone(),
            standalone: !self.connector.is_cluster(),
            in_flight: Mutex::new(HashSet::new()),
            stats: Stats::new(self.stream.name(), &self.group),
            stop: watch::channel(false).0,
            stopped_at: Mutex::new(None),
            fatal: Mutex::new(None),
            slots: Arc::new(Semaphore::new(opts.concurrency)),
        };
        let (job_tx, job_rx) = mpsc::unbounded_channel::<Job>();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outcome>();
        // No loop is spawned: they all live in this future, so dropping it drops them at once.
        let work = async {
            tokio::join!(
                reading::reader(&shared, reading, control.clone(), job_tx.clone(), out_tx.clone()),
                reclaim::reclaimer(&shared, control.clone(), job_tx),
                handler::dispatcher(handler, job_rx, out_tx),
                acking::acker(&shared, control.clone(), out_rx),
            )
        };
        let trigger = async {
            let mut stopped = shared.stop.subscribe();
            tokio::select! {
                _ = shutdown => {}
                _ = wait_stop(&mut stopped) => {}
            }
            shared.stop();
        };
        tokio::join!(work, trigger);

        if let Some(e) = lock(&shared.fatal).take() {
            return Err(e);
        }
        let mut report = shared.stats.report();
        if opts.retire_on_shutdown {
            let call = RetireCall::new(&self.stream, &self.group, &self.consumer)?;
            match control.run(Once::new(call, timeout)).await {
                Ok(retirement) => report.retired = retirement == Retirement::Retired,
                Err(_) => report.errors += 1,
            }
        }
        Ok(report)
    }
}

/// `XGROUP CREATE … MKSTREAM` within the link's command timeout; `BUSYGROUP` is fine.
fn create_group(
    stream: &Stream,
    group: &str,
    start: &StartFrom,
    link: &Link,
) -> Result<impl flow::Flow<Out = bool> + use<>> {
    Ok(flow::then(link.command("XGROUP", stream.create_group_cmd(group, start)?), created))
}

/// What the loops share.
struct Shared {
    stream: Stream,
    group: String,
    consumer: String,
    opts: WorkerOptions,
    /// A standalone server: its reads can be ended with `CLIENT UNBLOCK`.
    standalone: bool,
    /// Entries being handled or awaiting their ack here: the reclaim step skips them.
    in_flight: Mutex<HashSet<String>>,
    stats: Stats,
    stop: watch::Sender<bool>,
    /// When the stop came (the drain deadline counts from it).
    stopped_at: Mutex<Option<Instant>>,
    fatal: Mutex<Option<Error>>,
    /// Free handler slots.
    slots: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops the worker (gracefully): reading and reclaiming end, the work in flight finishes.
    fn stop(&self) {
        lock(&self.stopped_at).get_or_insert_with(Instant::now);
        self.stop.send_replace(true);
    }

    /// Records the first fatal error and stops the worker.
    fn fail(&self, e: Error) {
        lock(&self.fatal).get_or_insert(e);
        self.stop();
    }

    /// Whether a retry taking `d` from now may still run: always while the worker runs; once it
    /// is stopping, only if it ends by the drain deadline, the block time plus the command
    /// timeout after the stop (when a cluster read in flight at the stop has ended too).
    fn may_retry_within(&self, d: Duration) -> bool {
        let drain = self.opts.read_deadline();
        lock(&self.stopped_at).is_none_or(|at| rules::later(Instant::now(), d) <= rules::later(at, drain))
    }

    fn release(&self, ids: &[String]) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            set.remove(id);
        }
    }

    /// Waits for one free handler slot; returns it with how many entries to ask for (this slot
    /// plus the others free now, at most `max`). Only one slot is held during a read, so a long
    /// blocked read does not starve the reclaim step; the other entries of a reply wait for
    /// slots.
    async fn take_slot(
        &self,
        stop: &mut watch::Receiver<bool>,
        max: usize,
    ) -> Option<(OwnedSemaphorePermit, usize)> {
        let slot = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok()?,
            _ = wait_stop(stop) => return None,
        };
        let count = (1 + self.slots.available_permits()).min(max);
        Some((slot, count))
    }

    /// The held slot for the first entry of a reply, then a freshly awaited one for each other.
    async fn next_slot(&self, held: &mut Option<OwnedSemaphorePermit>) -> Option<OwnedSemaphorePermit> {
        match held.take() {
            Some(s) => Some(s),
            None => self.slots.clone().acquire_owned().await.ok(),
        }
    }

    /// Hands an entry to the dispatcher; false when it is gone (the worker is ending).
    fn dispatch(
        &self,
        jobs: &mpsc::UnboundedSender<Job>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
    ) -> bool {
        lock(&self.in_flight).insert(delivery.id.clone());
        self.stats.delivered();
        jobs.send(Job { delivery, slot }).is_ok()
    }
}

/// A delivery with the handler slot it holds.
struct Job {
    delivery: Delivery,
    slot: OwnedSemaphorePermit,
}

/// What became of a delivery.
enum Outcome {
    Done(String),
    Failed {
        id: String,
        deliveries: u64,
        reason: String,
    },
    /// Delivered without data (trimmed or deleted): ack it away.
    Gone(String),
}
