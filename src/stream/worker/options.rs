//! A worker's settings and their bounds.

use std::time::Duration;

use super::super::StartFrom;
use super::super::call;
use crate::{Error, Result, rules};

/// The longest block time and command timeout: one hour each, so their sum (the reading
/// connection's deadline) is always in range.
const MAX_WAIT_MS: u64 = 3_600_000;

/// A worker's settings. Start from [`Default`] and change what you need; [`validate`](Self::validate)
/// (run by [`Worker::new`](super::Worker::new)) refuses every value the worker could not run
/// with, so a worker that was built never fails on its settings.
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
/// assert!(WorkerOptions::default().command_timeout(Duration::MAX).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub(super) block: Duration,
    pub(super) batch: usize,
    pub(super) concurrency: usize,
    pub(super) min_idle: Duration,
    pub(super) claim_interval: Duration,
    pub(super) max_deliveries: u64,
    pub(super) dead_maxlen: Option<u64>,
    pub(super) start: StartFrom,
    pub(super) command_timeout: Duration,
    pub(super) retire_on_shutdown: bool,
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

/// The builder-style setters: `name: type;` sets the field of that name.
macro_rules! setters {
    ($($(#[doc = $doc:expr])* $name:ident: $ty:ty;)*) => {$(
        $(#[doc = $doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = $name;
            self
        }
    )*};
}

impl WorkerOptions {
    setters! {
        /// How long one `XREADGROUP` waits for new entries (default 5 s; whole milliseconds, 1 ms
        /// to 1 hour). A read with no answer by the block time plus the
        /// [`command_timeout`](Self::command_timeout) is abandoned and its connection replaced.
        /// Also the longest a cluster worker's shutdown waits for its read (a standalone worker
        /// unblocks it with `CLIENT UNBLOCK`).
        block: Duration;

        /// At most this many entries per read (default 32; 1..=10,000), never more than the free
        /// handler slots.
        batch: usize;

        /// At most this many handlers run at once (default 32; 1..=100,000).
        concurrency: usize;

        /// An entry pending this long without an ack is taken over by the reclaim step (default
        /// 30 s; whole milliseconds, 1 ms..=10^12 ms). Keep it well above the handler's longest run:
        /// an entry whose handler is still running elsewhere would otherwise be delivered twice.
        min_idle: Duration;

        /// How often the reclaim step scans the pending entries (default 5 s; whole milliseconds,
        /// 1 ms..=10^12 ms).
        claim_interval: Duration;

        /// An entry whose handler failed on its `n`-th delivery moves to the dead-letter stream
        /// (default 5; 1..=10^12). An entry claimed with more deliveries than this (its consumers
        /// died while handling it) is dead-lettered without running the handler again.
        max_deliveries: u64;

        /// Approximate length kept on the dead-letter stream (default 100,000; 1..=10^12; `None`:
        /// unbounded).
        dead_maxlen: Option<u64>;

        /// Where the group starts when the worker creates it (default: the oldest entry).
        start: StartFrom;

        /// How long any other command of the worker (acks, claims, scripts, connecting) may take
        /// (default 2 s; whole milliseconds, 1 ms to 1 hour); also the margin past the block time
        /// after which a read is abandoned. A command cut there counts as a lost connection: it is
        /// retried when a resend is safe, and the connection is replaced.
        command_timeout: Duration;

        /// On a graceful shutdown, delete this worker's consumer from the group if it owns no
        /// pending entries any more (default: keep it, so a restart under the same name resumes).
        /// Its failures still pending keep it alive: retiring never drops entries. Safe because the
        /// worker has stopped reading by then; do not run two workers under one consumer name.
        retire_on_shutdown: bool;
    }

    /// Checks the settings without the server: every bound stated on the setters.
    pub fn validate(&self) -> Result<()> {
        let within_an_hour = |what: &'static str, d: Duration| match rules::millis(what, d)? {
            ms if ms <= MAX_WAIT_MS => Ok(()),
            _ => Err(Error::invalid(what, format!("must be at most 1 hour (got {d:?})"))),
        };
        let range = |what: &'static str, n: usize, max: usize| match n {
            1.. if n <= max => Ok(()),
            _ => Err(Error::invalid(what, format!("must be 1..={max} (got {n})"))),
        };
        within_an_hour("block", self.block)?;
        within_an_hour("command_timeout", self.command_timeout)?;
        range("batch", self.batch, 10_000)?;
        range("concurrency", self.concurrency, 100_000)?;
        rules::millis("min_idle", self.min_idle)?;
        rules::millis("claim_interval", self.claim_interval)?;
        rules::count("max_deliveries", self.max_deliveries)?;
        call::dead_maxlen(self.dead_maxlen)?;
        self.start.arg()?;
        Ok(())
    }

    /// How long a read may go unanswered before it is abandoned: the block time plus the
    /// command timeout (at most two hours, by the bounds above).
    pub(super) fn read_deadline(&self) -> Duration {
        self.block.saturating_add(self.command_timeout)
    }

    /// The block time in milliseconds, as XREADGROUP takes it.
    pub(super) fn block_ms(&self) -> u64 {
        u64::try_from(self.block.as_millis()).unwrap_or(MAX_WAIT_MS)
    }

    /// The min-idle time in milliseconds, as XAUTOCLAIM takes it.
    pub(super) fn min_idle_ms(&self) -> u64 {
        u64::try_from(self.min_idle.as_millis()).unwrap_or(rules::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_checked() {
        let d = WorkerOptions::default;
        assert!(d().validate().is_ok());
        // The two the issue met (passed validation, then failed in `run`); every other bound
        // is checked in tests/stream.rs.
        for bad in [
            d().command_timeout(Duration::MAX),
            d().min_idle(Duration::MAX),
            d().block(Duration::from_micros(1500)),
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
        let edge = d()
            .block(Duration::from_secs(3600))
            .command_timeout(Duration::from_secs(3600))
            .min_idle(Duration::from_millis(rules::MAX))
            .max_deliveries(rules::MAX)
            .dead_maxlen(None);
        assert!(edge.validate().is_ok());
        assert_eq!(edge.read_deadline(), Duration::from_secs(7200));
    }
}
