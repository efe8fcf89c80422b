//! The consumer-group worker: XREADGROUP BLOCK on a dedicated connection, a bounded pool of
//! handler tasks, batched XACKs, XAUTOCLAIM recovery and atomic dead-lettering.
//!
//! Inside one [`Worker::run`] four tasks cooperate:
//! - the reader waits for a free handler slot, then reads at most as many new entries (`>`) as
//!   slots are free with `XREADGROUP … BLOCK`, on a connection of its own (a blocked read stalls every other command
//!   on its connection, and its response timeout must exceed the block time);
//! - the reclaimer periodically runs `XAUTOCLAIM` with the min-idle time: entries of crashed or
//!   stuck consumers (and this worker's own failures) come back, with their delivery counts from
//!   `XPENDING`; entries whose data was trimmed are cleared; entries delivered more than
//!   `max_deliveries` times (their consumers kept dying) are dead-lettered;
//! - the dispatcher runs the handler for each entry (panics are caught and count as failures);
//! - the acker XACKs successes in batches and dead-letters entries that failed their last
//!   allowed delivery (the `stream.dead_letter` script: copy and ack in one step).
//!
//! All of them live inside the `run` future: dropping it (a crash, as far as Redis can tell)
//! aborts everything at once, and what was not acked stays pending for another consumer.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, RetryMethod, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::dead::{DeadLetterCall, DeadLettered, MAX_REASON};
use super::wire::{self, RawEntry};
use super::{Fields, Retirement, StartFrom, Stream, StreamMessage, check_name};
use crate::script::ScriptCall;
use crate::{Error, Result};

/// Where a worker gets its connections. The worker opens its own: one for the blocking read
/// (response timeout = block time + command timeout) and one for acks, claims and scripts.
///
/// For a cluster, build the [`ClusterClient`] without `response_timeout` (the worker sets it
/// per connection); if you set one, also set `overall_response_timeout(None)` or a value above
/// the block time, since redis-rs keeps the builder's overall timeout.
#[derive(Clone)]
pub struct Connector(Source);

#[derive(Clone)]
enum Source {
    // Boxed: both clients are large (more so with TLS), and a Connector is moved around.
    Standalone(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Standalone(c) => f.debug_tuple("Connector::Standalone").field(c).finish(),
            Source::Cluster(_) => f.write_str("Connector::Cluster(..)"),
        }
    }
}

impl From<redis::Client> for Connector {
    fn from(c: redis::Client) -> Self {
        Connector(Source::Standalone(Box::new(c)))
    }
}

impl From<ClusterClient> for Connector {
    fn from(c: ClusterClient) -> Self {
        Connector(Source::Cluster(Box::new(c)))
    }
}

impl Connector {
    /// A standalone server (or a proxy).
    pub fn standalone(client: redis::Client) -> Self {
        client.into()
    }

    /// A Redis Cluster.
    pub fn cluster(client: ClusterClient) -> Self {
        client.into()
    }

    async fn connect(&self, response_timeout: Duration) -> Result<Conn> {
        let connect_timeout = Duration::from_secs(2);
        Ok(match &self.0 {
            Source::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_timeout))
                    .set_max_delay(Duration::from_secs(2));
                Conn::Single(client.get_connection_manager_with_config(config).await?)
            }
            Source::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_response_timeout(response_timeout)
                    .set_connection_timeout(connect_timeout);
                Conn::Cluster(client.get_async_connection_with_config(config).await?)
            }
        })
    }
}

/// A worker's connection: a reconnecting standalone connection, or a cluster connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A worker's settings. Start from [`Default`] and change what you need.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::stream::WorkerOptions;
///
/// let o = WorkerOptions::default()
///     .block(Duration::from_secs(2))
///     .concurrency(64)
///     .min_idle(Duration::from_secs(60))
///     .max_deliveries(3);
/// assert!(o.validate().is_ok());
/// assert!(WorkerOptions::default().concurrency(0).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    block: Duration,
    batch: usize,
    concurrency: usize,
    min_idle: Duration,
    claim_interval: Duration,
    max_deliveries: u64,
    dead_maxlen: Option<u64>,
    start: StartFrom,
    command_timeout: Duration,
    retire_on_shutdown: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            block: Duration::from_secs(5),
            batch: 32,
            concurrency: 32,
            min_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 5,
            dead_maxlen: Some(100_000),
            start: StartFrom::Beginning,
            command_timeout: Duration::from_secs(2),
            retire_on_shutdown: false,
        }
    }
}

impl WorkerOptions {
    /// How long one `XREADGROUP` waits for new entries (default 5 s; 1 ms to 1 hour). Also the
    /// longest a cluster worker's shutdown waits for its read (a standalone worker unblocks it
    /// with `CLIENT UNBLOCK`).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// At most this many entries per read (default 32), never more than the free handler slots.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// At most this many handlers run at once (default 32).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// An entry pending this long without an ack is taken over by the reclaim step (default
    /// 30 s). Keep it well above the handler's longest run: an entry whose handler is still
    /// running elsewhere would otherwise be delivered twice.
    pub fn min_idle(mut self, min_idle: Duration) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How often the reclaim step scans the pending entries (default 5 s).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// An entry whose handler failed on its `n`-th delivery moves to the dead-letter stream
    /// (default 5). An entry claimed with more deliveries than this (its consumers died while
    /// handling it) is dead-lettered without running the handler again.
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Approximate length kept on the dead-letter stream (default 100,000; `None`: unbounded).
    pub fn dead_maxlen(mut self, maxlen: Option<u64>) -> Self {
        self.dead_maxlen = maxlen;
        self
    }

    /// Where the group starts when the worker creates it (default: the oldest entry).
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Response timeout for acks, claims and scripts (default 2 s); also the margin added to
    /// the block time for the reading connection.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// On a graceful shutdown, delete this worker's consumer from the group if it owns no
    /// pending entries any more (default: keep it, so a restart under the same name resumes).
    /// Its failures still pending keep it alive: retiring never drops entries. Safe because the
    /// worker has stopped reading by then; do not run two workers under one consumer name.
    pub fn retire_on_shutdown(mut self, retire: bool) -> Self {
        self.retire_on_shutdown = retire;
        self
    }

    /// Checks the settings without the server.
    pub fn validate(&self) -> Result<()> {
        let ms = |d: Duration| d.as_millis();
        if ms(self.block) == 0 || self.block > Duration::from_secs(3600) {
            return Err(Error::invalid("block", "must be 1 ms ..= 1 hour"));
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(Error::invalid("batch", "must be 1..=10000"));
        }
        if self.concurrency == 0 || self.concurrency > 100_000 {
            return Err(Error::invalid("concurrency", "must be 1..=100000"));
        }
        if ms(self.min_idle) == 0 {
            return Err(Error::invalid("min_idle", "must be at least 1 ms"));
        }
        if ms(self.claim_interval) == 0 {
            return Err(Error::invalid("claim_interval", "must be at least 1 ms"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::invalid("max_deliveries", "must be at least 1"));
        }
        if matches!(self.dead_maxlen, Some(0)) || self.dead_maxlen.is_some_and(|n| n >= 1_000_000_000_000_000)
        {
            return Err(Error::invalid("dead_maxlen", "must be 1..10^15 (None: unbounded)"));
        }
        if ms(self.command_timeout) == 0 {
            return Err(Error::invalid("command_timeout", "must be at least 1 ms"));
        }
        if let StartFrom::Id(id) = &self.start
            && !wire::is_stream_id(id, true)
        {
            return Err(Error::invalid("start", format!("`{id}` is not a stream ID")));
        }
        Ok(())
    }
}

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

/// What a worker did, returned by [`Worker::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Handler runs started.
    pub delivered: u64,
    /// Handler runs that succeeded.
    pub processed: u64,
    /// Handler runs that failed (an error or a panic); those entries stayed pending, or were
    /// dead-lettered on their last allowed delivery.
    pub failed: u64,
    /// Entries acknowledged (as counted by Redis' XACK replies).
    pub acked: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries taken over by the reclaim step (from crashed consumers, or this worker's
    /// earlier failures).
    pub reclaimed: u64,
    /// Pending entries whose data had been trimmed or deleted, cleared from the pending list.
    pub gone: u64,
    /// Transient errors (lost connection, timeouts, failover) that were retried.
    pub errors: u64,
    /// Whether the consumer was deleted from the group at shutdown
    /// ([`WorkerOptions::retire_on_shutdown`], and it owned no pending entries).
    pub retired: bool,
}

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    acked: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    gone: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    fn report(&self) -> Report {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            delivered: get(&self.delivered),
            processed: get(&self.processed),
            failed: get(&self.failed),
            acked: get(&self.acked),
            dead_lettered: get(&self.dead_lettered),
            reclaimed: get(&self.reclaimed),
            gone: get(&self.gone),
            errors: get(&self.errors),
            retired: false,
        }
    }
}

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
    /// A worker reading `stream` as `consumer` of `group`. Give a stable consumer name (or one
    /// from [`consumer_name`], made once).
    pub fn new(
        connector: impl Into<Connector>,
        stream: Stream,
        group: impl Into<String>,
        consumer: impl Into<String>,
        options: WorkerOptions,
    ) -> Result<Self> {
        let (group, consumer) = (group.into(), consumer.into());
        check_name("group", &group)?;
        check_name("consumer", &consumer)?;
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

    /// Runs until `shutdown` completes: creates the group if needed (an existing group is
    /// fine), then reads, handles, acks and reclaims. On shutdown it stops reading (a blocked
    /// read is unblocked on a standalone server; on a cluster it ends within the block time),
    /// lets every running handler finish, acks what succeeded, retires the consumer if asked
    /// ([`WorkerOptions::retire_on_shutdown`]) and returns the [`Report`].
    ///
    /// Transient errors (lost connection, failover, a server restart that lost the group) are
    /// retried with backoff and counted in [`Report::errors`]. Any other error (wrong key
    /// type, no permission) stops the worker the same graceful way and is returned.
    ///
    /// Dropping the future instead is a crash as far as Redis is concerned: every task stops at
    /// once and whatever was not acked stays pending, to be reclaimed after the min-idle time.
    pub async fn run<H: Handler>(
        &self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Report> {
        let opts = &self.options;
        let mut control = self.connector.connect(opts.command_timeout).await?;
        let reading = self.connector.connect(opts.block + opts.command_timeout).await?;
        self.stream.create_group(&mut control, &self.group, &opts.start).await?;

        let shared = Arc::new(Shared {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            opts: opts.clone(),
            in_flight: Mutex::new(HashSet::new()),
            stats: Stats::default(),
            stop: watch::channel(false).0,
            fatal: Mutex::new(None),
            slots: Arc::new(Semaphore::new(opts.concurrency)),
        });
        let mut admin = control.clone();
        let (job_tx, job_rx) = mpsc::unbounded_channel::<Job>();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outcome>();
        // Dropping the JoinSet aborts every task: dropping `run` is a crash, never a leak.
        let mut tasks = JoinSet::new();
        tasks.spawn(reader(shared.clone(), reading, control.clone(), job_tx.clone(), out_tx.clone()));
        tasks.spawn(reclaimer(shared.clone(), control.clone(), job_tx));
        tasks.spawn(dispatcher(Arc::new(handler), job_rx, out_tx));
        tasks.spawn(acker(shared.clone(), control, out_rx));

        let mut stopped = shared.stop.subscribe();
        tokio::select! {
            _ = shutdown => {}
            _ = wait_stop(&mut stopped) => {}
        }
        shared.stop.send_replace(true);
        let mut panicked = false;
        while let Some(done) = tasks.join_next().await {
            panicked |= done.is_err();
        }
        if let Some(e) = lock(&shared.fatal).take() {
            return Err(e);
        }
        if panicked {
            return Err(Error::unexpected("stream worker", "an internal task panicked"));
        }
        let mut report = shared.stats.report();
        if opts.retire_on_shutdown {
            match self.stream.retire_consumer(&mut admin, &self.group, &self.consumer).await {
                Ok(retirement) => report.retired = retirement == Retirement::Retired,
                Err(_) => report.errors += 1,
            }
        }
        Ok(report)
    }
}

struct Shared {
    stream: Stream,
    group: String,
    consumer: String,
    opts: WorkerOptions,
    /// Entries being handled or awaiting their ack here: the reclaim step skips them.
    in_flight: Mutex<HashSet<String>>,
    stats: Stats,
    stop: watch::Sender<bool>,
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

    /// Records the first fatal error and stops the worker (gracefully).
    fn fail(&self, e: Error) {
        lock(&self.fatal).get_or_insert(e);
        self.stop.send_replace(true);
    }

    fn release(&self, ids: &[String]) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            set.remove(id);
        }
    }
}

async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held: drop it here.
    let _ = rx.wait_for(|s| *s).await;
}

struct Job {
    delivery: Delivery,
    slot: OwnedSemaphorePermit,
}

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

/// What to do about an error.
#[derive(Debug, PartialEq)]
enum Fault {
    /// Lost connection, timeout, failover, loading: wait and retry.
    Transient,
    /// The group (or the stream) is gone, e.g. after a restart without persistence: recreate.
    NoGroup,
    /// Anything else: stop.
    Fatal,
}

fn fault_of_redis(e: &RedisError) -> Fault {
    match e.code() {
        Some("NOGROUP" | "UNBLOCKED") => Fault::NoGroup,
        Some(
            "BUSY" | "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "MOVED" | "ASK",
        ) => Fault::Transient,
        Some(_) => Fault::Fatal,
        // Client-side: I/O, timeouts, dropped or missing connections are worth a retry.
        None if matches!(e.retry_method(), RetryMethod::NoRetry) => Fault::Fatal,
        None => Fault::Transient,
    }
}

fn fault_of(e: &Error) -> Fault {
    match e {
        Error::Connection(_) => Fault::Transient,
        Error::Redis(r) => fault_of_redis(r),
        _ => Fault::Fatal,
    }
}

/// Exponential backoff with jitter: 50 ms doubling to 2 s.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 50u64 << self.0.min(5);
        self.0 += 1;
        let ms = base.min(2000);
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Sleeps, unless the worker stops first; false when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = wait_stop(stop) => false,
    }
}

/// Waits for one free handler slot; returns it with how many entries to ask for (this slot plus
/// the others free now, at most `max`). Only one slot is held during a read, so a long blocked
/// read does not starve the reclaim step; the other entries of a reply wait for slots.
async fn take_slot(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    max: usize,
) -> Option<(OwnedSemaphorePermit, usize)> {
    let slot = tokio::select! {
        p = shared.slots.clone().acquire_owned() => p.ok()?,
        _ = wait_stop(stop) => return None,
    };
    let count = (1 + shared.slots.available_permits()).min(max);
    Some((slot, count))
}

/// The held slot for the first entry of a reply, then a freshly awaited one for each other.
async fn next_slot(shared: &Shared, held: &mut Option<OwnedSemaphorePermit>) -> Option<OwnedSemaphorePermit> {
    match held.take() {
        Some(s) => Some(s),
        None => shared.slots.clone().acquire_owned().await.ok(),
    }
}

/// This connection's client ID, for `CLIENT UNBLOCK` at shutdown. Standalone only: a cluster
/// connection may move to another node (failover, resharding), where the ID would name a
/// stranger.
async fn client_id(conn: &mut Conn) -> Option<i64> {
    match conn {
        Conn::Single(_) => redis::cmd("CLIENT").arg("ID").query_async(conn).await.ok(),
        Conn::Cluster(_) => None,
    }
}

fn dispatch(
    shared: &Shared,
    jobs: &mpsc::UnboundedSender<Job>,
    delivery: Delivery,
    slot: OwnedSemaphorePermit,
) -> bool {
    lock(&shared.in_flight).insert(delivery.id.clone());
    bump(&shared.stats.delivered, 1);
    jobs.send(Job { delivery, slot }).is_ok()
}

async fn reader(
    shared: Arc<Shared>,
    mut conn: Conn,
    mut control: Conn,
    jobs: mpsc::UnboundedSender<Job>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let mut stop = shared.stop.subscribe();
    let mut unblock_id = client_id(&mut conn).await;
    let mut backoff = Backoff(0);
    let block_ms = u64::try_from(shared.opts.block.as_millis()).unwrap_or(u64::MAX);
    while !shared.stopping() {
        let Some((slot, count)) = take_slot(&shared, &mut stop, shared.opts.batch).await else { break };
        let mut held = Some(slot);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(shared.stream.key())
            .arg(">");
        let result = {
            let read = cmd.query_async::<Value>(&mut conn);
            tokio::pin!(read);
            tokio::select! {
                r = &mut read => r,
                _ = wait_stop(&mut stop) => loop {
                    // Stop reading, but never abandon a read in flight: entries it delivers
                    // would sit in this consumer's pending list unseen. Unblock it instead
                    // (repeatedly: the read may reach the server after the first UNBLOCK).
                    if let Some(id) = unblock_id {
                        let _: redis::RedisResult<Value> =
                            redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut control).await;
                    }
                    tokio::select! {
                        r = &mut read => break r,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                },
            }
        };
        match result.map_err(Error::from).and_then(|v| wire::read_reply(&v)) {
            Ok(entries) => {
                backoff.reset();
                for RawEntry { id, fields } in entries {
                    let Some(fields) = fields else {
                        let _ = out.send(Outcome::Gone(id));
                        continue;
                    };
                    let Some(slot) = next_slot(&shared, &mut held).await else { return };
                    if !dispatch(&shared, &jobs, Delivery { id, fields, deliveries: 1 }, slot) {
                        return;
                    }
                }
            }
            Err(e) => {
                drop(held);
                match fault_of(&e) {
                    Fault::Fatal => {
                        shared.fail(e);
                        break;
                    }
                    Fault::NoGroup => {
                        bump(&shared.stats.errors, 1);
                        let _ =
                            shared.stream.create_group(&mut control, &shared.group, &shared.opts.start).await;
                    }
                    Fault::Transient => bump(&shared.stats.errors, 1),
                }
                if !pause(&mut stop, backoff.next()).await {
                    break;
                }
                // A reconnect gives the connection a new client ID.
                unblock_id = client_id(&mut conn).await;
            }
        }
    }
}

async fn reclaimer(shared: Arc<Shared>, mut conn: Conn, jobs: mpsc::UnboundedSender<Job>) {
    let mut stop = shared.stop.subscribe();
    let mut cursor = String::from("0-0");
    let mut first = true;
    let mut backoff = Backoff(0);
    loop {
        // A scan that has more to see goes on at once; a finished one waits for the interval.
        if !first && cursor == "0-0" && !pause(&mut stop, shared.opts.claim_interval).await {
            break;
        }
        first = false;
        if shared.stopping() {
            break;
        }
        let Some((slot, count)) = take_slot(&shared, &mut stop, shared.opts.batch).await else { break };
        match reclaim_once(&shared, &mut conn, &cursor, slot, count, &jobs).await {
            Ok(next) => {
                backoff.reset();
                cursor = next;
            }
            Err(e) => {
                cursor = "0-0".into();
                match fault_of(&e) {
                    Fault::Fatal => {
                        shared.fail(e);
                        break;
                    }
                    // The reader recreates a lost group.
                    Fault::NoGroup | Fault::Transient => bump(&shared.stats.errors, 1),
                }
                if !pause(&mut stop, backoff.next()).await {
                    break;
                }
            }
        }
    }
}

/// One XAUTOCLAIM page of up to `count` entries; returns the next cursor.
async fn reclaim_once(
    shared: &Shared,
    conn: &mut Conn,
    cursor: &str,
    slot: OwnedSemaphorePermit,
    count: usize,
    jobs: &mpsc::UnboundedSender<Job>,
) -> Result<String> {
    let mut held = Some(slot);
    let key = shared.stream.key();
    let min_idle = u64::try_from(shared.opts.min_idle.as_millis()).unwrap_or(u64::MAX);
    let v: Value = redis::cmd("XAUTOCLAIM")
        .arg(key)
        .arg(&shared.group)
        .arg(&shared.consumer)
        .arg(min_idle)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let mut claimed = wire::autoclaim(&v)?;
    if claimed.unreadable > 0 {
        // Redis 6.2 answers nil, without the ID, for a claimed entry whose data is gone, and
        // keeps it pending (now ours). Find those IDs in the page just scanned.
        claimed.deleted.extend(unreadable_ids(shared, conn, cursor, &claimed, count).await?);
    }
    if !claimed.deleted.is_empty() {
        // Redis 7 already dropped these from the pending list; the ack is for 6.2 and costs
        // nothing when there is nothing left to ack.
        bump(&shared.stats.gone, claimed.deleted.len() as u64);
        let _: i64 =
            redis::cmd("XACK").arg(key).arg(&shared.group).arg(&claimed.deleted).query_async(conn).await?;
    }
    let candidates: Vec<(String, Fields)> = {
        let in_flight = lock(&shared.in_flight);
        claimed
            .claimed
            .into_iter()
            .filter(|e| !in_flight.contains(&e.id))
            .filter_map(|e| Some((e.id, e.fields?)))
            .collect()
    };
    if candidates.is_empty() {
        return Ok(claimed.next);
    }
    // XAUTOCLAIM does not say how often an entry was delivered: ask XPENDING, one entry each.
    let mut pipe = redis::pipe();
    for (id, _) in &candidates {
        pipe.cmd("XPENDING").arg(key).arg(&shared.group).arg(id).arg(id).arg(1);
    }
    let rows: Vec<Value> = pipe.query_async(conn).await?;
    if rows.len() != candidates.len() {
        let detail = format!("{} replies for {} entries", rows.len(), candidates.len());
        return Err(Error::unexpected("XPENDING", detail));
    }
    for ((id, fields), row) in candidates.into_iter().zip(rows) {
        let deliveries = match wire::pending_rows(&row)?.first() {
            Some(p) if p.id == id && p.consumer == shared.consumer => p.deliveries,
            // Acked meanwhile (by its old consumer), or claimed by another worker.
            _ => continue,
        };
        if deliveries > shared.opts.max_deliveries {
            let reason = format!(
                "not acknowledged after {} deliveries (its consumers stopped or timed out)",
                deliveries - 1
            );
            dead_letter(shared, conn, &id, &reason).await?;
            continue;
        }
        let Some(slot) = next_slot(shared, &mut held).await else { break };
        bump(&shared.stats.reclaimed, 1);
        if !dispatch(shared, jobs, Delivery { id, fields, deliveries }, slot) {
            break;
        }
    }
    Ok(claimed.next)
}

/// The IDs of entries this consumer owns in the XAUTOCLAIM page `[cursor, next)` whose data is
/// gone: pending here, not being handled, not claimed with data, and absent from the stream.
async fn unreadable_ids(
    shared: &Shared,
    conn: &mut Conn,
    cursor: &str,
    claimed: &wire::AutoClaim,
    count: usize,
) -> Result<Vec<String>> {
    let key = shared.stream.key();
    let end = if claimed.next == "0-0" { "+".to_owned() } else { format!("({}", claimed.next) };
    let in_flight_len = lock(&shared.in_flight).len();
    let v: Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(&shared.group)
        .arg(cursor)
        .arg(end)
        .arg(count + in_flight_len)
        .arg(&shared.consumer)
        .query_async(conn)
        .await?;
    let with_data: HashSet<&str> = claimed.claimed.iter().map(|e| e.id.as_str()).collect();
    let suspects: Vec<String> = {
        let in_flight = lock(&shared.in_flight);
        wire::pending_rows(&v)?
            .into_iter()
            .map(|row| row.id)
            .filter(|id| !with_data.contains(id.as_str()) && !in_flight.contains(id))
            .collect()
    };
    if suspects.is_empty() {
        return Ok(suspects);
    }
    let mut pipe = redis::pipe();
    for id in &suspects {
        pipe.cmd("XRANGE").arg(key).arg(id).arg(id);
    }
    let ranges: Vec<Value> = pipe.query_async(conn).await?;
    let mut gone = Vec::new();
    for (id, range) in suspects.into_iter().zip(ranges) {
        if wire::entries("XRANGE", &range)?.is_empty() {
            gone.push(id);
        }
    }
    Ok(gone)
}

/// Runs the dead-letter script for an entry this consumer owns, counting the result.
async fn dead_letter(shared: &Shared, conn: &mut Conn, id: &str, reason: &str) -> Result<()> {
    let call = DeadLetterCall::new(
        &shared.stream,
        &shared.group,
        &shared.consumer,
        id,
        reason,
        shared.opts.dead_maxlen,
    )?;
    match call.query_async(conn).await? {
        DeadLettered::Moved { .. } => bump(&shared.stats.dead_lettered, 1),
        DeadLettered::Gone { .. } => bump(&shared.stats.gone, 1),
        DeadLettered::NotPending => {}
    }
    Ok(())
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

async fn dispatcher<H: Handler>(
    handler: Arc<H>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => {
                    running.spawn(handle_one(handler.clone(), job));
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                // A join error is a cancellation, which only happens when `run` is dropped.
                if let Ok(outcome) = done {
                    let _ = out.send(outcome);
                }
            }
            else => break,
        }
    }
}

async fn acker(shared: Arc<Shared>, mut conn: Conn, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
    let mut done: Vec<String> = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        while let Some(outcome) = next.take() {
            match outcome {
                Outcome::Done(id) => {
                    bump(&shared.stats.processed, 1);
                    done.push(id);
                }
                Outcome::Gone(id) => {
                    bump(&shared.stats.gone, 1);
                    gone.push(id);
                }
                Outcome::Failed { id, deliveries, reason } => {
                    bump(&shared.stats.failed, 1);
                    if deliveries >= shared.opts.max_deliveries {
                        // If this fails the entry stays pending; the reclaim step dead-letters it
                        // later (its delivery count is then past the limit).
                        let mut backoff = Backoff(0);
                        for _ in 0..5 {
                            match dead_letter(&shared, &mut conn, &id, &reason).await {
                                Ok(()) => break,
                                Err(e) if fault_of(&e) == Fault::Transient => {
                                    bump(&shared.stats.errors, 1);
                                    tokio::time::sleep(backoff.next()).await;
                                }
                                Err(e) if fault_of(&e) == Fault::NoGroup => break,
                                Err(e) => {
                                    shared.fail(e);
                                    break;
                                }
                            }
                        }
                    }
                    shared.release(&[id]);
                }
            }
            if done.len() < 4096 {
                next = outcomes.try_recv().ok();
            }
        }
        ack(&shared, &mut conn, &mut done, true).await;
        ack(&shared, &mut conn, &mut gone, false).await;
    }
}

/// XACKs `ids` in one command, retrying transient errors a few times; an entry whose ack never
/// lands stays pending and is delivered again (at least once, never lost).
async fn ack(shared: &Shared, conn: &mut Conn, ids: &mut Vec<String>, count: bool) {
    if ids.is_empty() {
        return;
    }
    let mut backoff = Backoff(0);
    for _ in 0..6 {
        let r: redis::RedisResult<u64> = redis::cmd("XACK")
            .arg(shared.stream.key())
            .arg(&shared.group)
            .arg(&ids[..])
            .query_async(conn)
            .await;
        match r {
            Ok(n) => {
                if count {
                    bump(&shared.stats.acked, n);
                }
                break;
            }
            Err(e) => {
                bump(&shared.stats.errors, 1);
                match fault_of_redis(&e) {
                    Fault::Transient => tokio::time::sleep(backoff.next()).await,
                    // The group is gone, and with it the pending entries.
                    Fault::NoGroup => break,
                    Fault::Fatal => {
                        shared.fail(e.into());
                        break;
                    }
                }
            }
        }
    }
    shared.release(ids);
    ids.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }

    #[test]
    fn options_are_checked() {
        assert!(WorkerOptions::default().validate().is_ok());
        assert!(WorkerOptions::default().block(Duration::ZERO).validate().is_err());
        assert!(WorkerOptions::default().max_deliveries(0).validate().is_err());
        assert!(WorkerOptions::default().dead_maxlen(Some(0)).validate().is_err());
        assert!(WorkerOptions::default().start(StartFrom::Id("x".into())).validate().is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff(0);
        assert!(b.next() <= Duration::from_millis(50));
        for _ in 0..10 {
            assert!(b.next() <= Duration::from_secs(2));
        }
    }
}
