//! What a worker counts, reported to telemetry as it happens and returned by `run`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::{self, WorkerEvent};

/// What a worker did, returned by [`Worker::run`](super::Worker::run).
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
    /// earlier failures and abandoned reads).
    pub reclaimed: u64,
    /// Pending entries whose data had been trimmed or deleted, cleared from the pending list.
    pub gone: u64,
    /// Transient errors (lost connection, timeouts, failover) that were retried, abandoned
    /// reads included.
    pub errors: u64,
    /// Reads abandoned with no answer past the block time plus the command timeout (a failover,
    /// a dead or paused node); their connection was replaced. Entries such a read may have
    /// delivered stay pending and are reclaimed after the min-idle time.
    pub reads_abandoned: u64,
    /// Whether the consumer was deleted from the group at shutdown
    /// ([`WorkerOptions::retire_on_shutdown`](super::WorkerOptions::retire_on_shutdown), and it
    /// owned no pending entries).
    pub retired: bool,
}

/// The counters behind a [`Report`]; each event also goes to telemetry.
pub(super) struct Stats {
    stream: String,
    group: String,
    delivered: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    acked: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    gone: AtomicU64,
    errors: AtomicU64,
    abandoned: AtomicU64,
}

impl Stats {
    pub(super) fn new(stream: &str, group: &str) -> Self {
        let zero = || AtomicU64::new(0);
        Stats {
            stream: stream.to_owned(),
            group: group.to_owned(),
            delivered: zero(),
            processed: zero(),
            failed: zero(),
            acked: zero(),
            dead_lettered: zero(),
            reclaimed: zero(),
            gone: zero(),
            errors: zero(),
            abandoned: zero(),
        }
    }

    /// `n` events of one kind: counted, and reported to telemetry.
    pub(super) fn event(&self, event: WorkerEvent, n: u64) {
        if n == 0 {
            return;
        }
        let counter = match event {
            WorkerEvent::Handled => &self.processed,
            WorkerEvent::Failed => &self.failed,
            WorkerEvent::DeadLettered => &self.dead_lettered,
            WorkerEvent::Reclaimed => &self.reclaimed,
            WorkerEvent::Gone => &self.gone,
            WorkerEvent::Retried => &self.errors,
            WorkerEvent::ReadAbandoned => {
                self.errors.fetch_add(n, Ordering::Relaxed);
                &self.abandoned
            }
        };
        counter.fetch_add(n, Ordering::Relaxed);
        telemetry::worker(&self.stream, &self.group, event, n);
    }

    /// A handler run started.
    pub(super) fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries XACK said it acknowledged.
    pub(super) fn acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn report(&self) -> Report {
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
            reads_abandoned: get(&self.abandoned),
            retired: false,
        }
    }
}
