//! The fill behind [`get_or_compute`](super::Cache::get_or_compute), as two sans-IO flows (see
//! [`crate::flow`]) with the caller's compute between them, so the async method and its blocking
//! twin make the same decisions and differ only in how they call the compute:
//!
//! 1. [`Acquire`]: leased reads until the value is served, this caller holds the fill lease, or
//!    the max wait for another caller's fill passes. While waiting it retries exactly
//!    [`Error::is_transient`] errors (a leased read with the same token is idempotent: a lease
//!    already ours is reported as ours). When it ends in an error after a read whose answer it
//!    never saw (that read may have taken the lease), or is served a value after such a read, it
//!    gives the lease back first.
//! 2. [`WriteBack`]: stores the computed value (`cache.set` frees the lease in the same step),
//!    or gives the lease back (`cache.release_lease`) when there is nothing to store or the
//!    compute failed; when the store fails, it still tries to give the lease back.
//!
//! [`Guard`] covers the time in between for the async method: dropped while armed (the future
//! was cancelled, or the compute panicked), it spawns the release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::call::{FillLease, Get, GetReply, ReleaseLease, Set, xfetch_draw};
use super::{Cache, Entry, Stored, Version};
use crate::flow::{self, Event, Flow, Once, Step};
use crate::script::{Reply, ScriptCall};
use crate::telemetry::{self, CacheOutcome, FillOutcome, LeaseKind};
use crate::{Error, Result, rules};

/// How often a waiter reads again while another caller fills: the filler usually finishes well
/// before its lease ends, so waiting the whole lease would serve the value late.
const POLL: Duration = Duration::from_millis(20);

/// The pause before resending a read that met a transient error while waiting.
const RETRY: Duration = Duration::from_millis(50);

/// One caller's fill of one key: the checked arguments and the lease token.
pub(crate) struct Fill<'c> {
    cache: &'c Cache,
    keys: [String; 3],
    ttl: Duration,
    token: String,
    get: Get,
}

/// How the first flow ended.
pub(crate) enum Start {
    /// Served without computing (a hit, a cached "not found", or another caller's fill).
    Served(Option<Vec<u8>>),
    /// This caller holds the fill lease: compute, then write back.
    Lease(Lease),
}

impl Start {
    /// The answer of a fill that ended without a lease.
    pub(crate) fn answer(start: Result<Start>) -> Result<Option<Vec<u8>>> {
        match start? {
            Start::Served(v) => Ok(v),
            Start::Lease(_) => Err(Error::unexpected("cache.get", "a fill lease where none was expected")),
        }
    }
}

/// The fill lease this caller holds.
pub(crate) struct Lease {
    version: Version,
    /// The value still served during an early refresh: the answer if the refresh fails.
    current: Option<Vec<u8>>,
    granted: Instant,
}

impl<'c> Fill<'c> {
    /// Checks `key` and `ttl` before anything is sent (nothing is computed for a write that
    /// would be refused), and draws the lease token and the XFetch term.
    pub(crate) fn new(cache: &'c Cache, key: &str, ttl: Duration) -> Result<Fill<'c>> {
        let keys = cache.keys(key)?;
        rules::millis("ttl", ttl)?;
        let token = rules::token();
        let get = Get::leased(keys.clone(), token.clone(), cache.lease_ms, xfetch_draw(cache.beta));
        Ok(Fill { cache, keys, ttl, token, get })
    }

    /// The first flow.
    pub(crate) fn acquire(&self) -> Acquire<'_> {
        let now = Instant::now();
        Acquire {
            fill: self,
            wait_end: rules::later(now, self.cache.max_wait()),
            call_deadline: now,
            first: true,
            waited: false,
            unknown: false,
            lost: false,
            ending: None,
        }
    }

    /// The second flow, given what the compute answered.
    pub(crate) fn write_back<E>(
        &self,
        lease: Lease,
        computed: std::result::Result<Option<Vec<u8>>, E>,
    ) -> WriteBack<'_>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let took = lease.granted.elapsed();
        let set = |data, ttl| {
            Set::new(self.keys.clone(), data, ttl, lease.version).map(|s| s.by_filler(&self.token, took))
        };
        let (store, answer, outcome) = match computed {
            Ok(Some(v)) => (Some(set(Some(v.clone()), self.ttl)), Ok(Some(v)), FillOutcome::Computed),
            Ok(None) => (self.cache.negative_ttl.map(|ttl| set(None, ttl)), Ok(None), FillOutcome::Computed),
            // A failed early refresh still serves the value everyone else is served.
            Err(_) if lease.current.is_some() => (None, Ok(lease.current), FillOutcome::Failed),
            Err(e) => (None, Err(Error::Compute(e.into())), FillOutcome::Failed),
        };
        WriteBack {
            fill: self,
            store,
            answer: Some(answer),
            outcome,
            took,
            deadline: rules::deadline(self.cache.deadline),
            store_error: None,
        }
    }

    /// The guard that gives the lease back if the async fill is dropped before it ends.
    pub(crate) fn guard<'a, C>(&self, con: &'a mut C) -> Guard<'a, C>
    where
        C: redis::aio::ConnectionLike + Clone + Send + 'static,
    {
        let release = self.release();
        Guard { con, armed: Some((release, self.cache.deadline, self.cache.segment.clone())) }
    }

    fn release(&self) -> ReleaseLease {
        ReleaseLease { key: self.keys[2].clone(), token: self.token.clone() }
    }

    fn segment(&self) -> &str {
        &self.cache.segment
    }
}

fn send<K: ScriptCall, T>(call: &K) -> Step<T> {
    Step::send(call.invocation(), &mut "")
}

/// Leased reads until served, leased, or out of time (see the module docs).
pub(crate) struct Acquire<'f> {
    fill: &'f Fill<'f>,
    /// When waiting for another caller's fill gives up.
    wait_end: Instant,
    /// By when the call in flight must be answered.
    call_deadline: Instant,
    first: bool,
    /// Another caller's fill was seen: from then on transient errors are retried.
    waited: bool,
    /// The last read was sent and its answer never seen: it may have taken the lease.
    unknown: bool,
    /// A read's answer was lost and the read sent again: the lost one may have taken the lease
    /// even if a later read finds a value (written meanwhile by a filler whose lease expired).
    lost: bool,
    /// Set while the clean-up release is in flight: the answer to give after it.
    ending: Option<Result<Start>>,
}

impl Acquire<'_> {
    fn read(&mut self) -> Step<Start> {
        // The first read has the cache's deadline whatever the max wait; later ones end by the
        // end of the wait.
        let per_call = rules::deadline(self.fill.cache.deadline);
        self.call_deadline = if self.waited { per_call.min(self.wait_end) } else { per_call };
        self.unknown = true;
        send(&self.fill.get)
    }

    fn on_read(&mut self, r: GetReply) -> Step<Start> {
        self.unknown = false;
        if std::mem::take(&mut self.first) {
            let outcome = match (&r.lookup.entry, r.lease) {
                (Entry::Hit(_), FillLease::Yours) => CacheOutcome::Refresh,
                (Entry::Hit(_), _) => CacheOutcome::Hit,
                (Entry::NotFound, _) => CacheOutcome::NotFound,
                (Entry::Miss, _) => CacheOutcome::Miss,
            };
            telemetry::cache_lookup(self.fill.segment(), outcome);
        }
        let (version, granted) = (r.lookup.version, Instant::now());
        match (r.lookup.entry, r.lease) {
            (Entry::Hit(current), FillLease::Yours) => {
                Step::Done(Ok(Start::Lease(Lease { version, current: Some(current), granted })))
            }
            (_, FillLease::Yours) => Step::Done(Ok(Start::Lease(Lease { version, current: None, granted }))),
            (_, FillLease::HeldByAnother { left }) => {
                self.waited = true;
                let now = Instant::now();
                if now >= self.wait_end {
                    return self.fail(self.timed_out());
                }
                Step::Sleep(left.clamp(Duration::from_millis(1), POLL).min(self.wait_end - now))
            }
            (entry, _) => {
                if self.waited {
                    telemetry::cache_fill(self.fill.segment(), FillOutcome::Waited, Duration::ZERO);
                }
                let value = match entry {
                    Entry::Hit(v) => Some(v),
                    Entry::NotFound | Entry::Miss => None,
                };
                self.end(Ok(Start::Served(value)), self.lost)
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "cache.get: waited {:?} for another caller's fill (Cache::with_max_wait)",
            self.fill.cache.max_wait()
        ))
    }

    /// Ends with `e`, first giving the lease back if the last read may have taken it.
    fn fail(&mut self, e: Error) -> Step<Start> {
        if matches!(e, Error::Timeout(_)) {
            telemetry::cache_fill(self.fill.segment(), FillOutcome::TimedOut, Duration::ZERO);
        }
        self.end(Err(e), self.unknown)
    }

    /// Ends with `answer`, after giving the lease back when `release`.
    fn end(&mut self, answer: Result<Start>, release: bool) -> Step<Start> {
        if !release {
            return Step::Done(answer);
        }
        self.ending = Some(answer);
        // The clean-up gets its own deadline past the caller's: see the documented bound.
        self.call_deadline = rules::deadline(self.fill.cache.deadline);
        send(&self.fill.release())
    }
}

impl Flow for Acquire<'_> {
    type Out = Start;

    fn start(&mut self) -> Step<Start> {
        self.read()
    }

    fn on(&mut self, event: Event) -> Step<Start> {
        if let Some(answer) = self.ending.take() {
            let released = matches!(event, Event::Reply(Ok(ref v)) if v == &redis::Value::Int(1));
            telemetry::orphan_release(LeaseKind::CacheFill, self.fill.segment(), released);
            return Step::Done(answer);
        }
        let now = Instant::now();
        match event {
            Event::Woke if self.waited && now >= self.wait_end => self.fail(self.timed_out()),
            Event::Woke => self.read(),
            Event::Reply(Ok(v)) => match self.fill.get.parse(Reply::new("cache.get", v)) {
                Ok(r) => self.on_read(r),
                Err(e) => self.fail(e),
            },
            // While waiting, a transient error is retried: the same leased read is idempotent.
            Event::Reply(Err(e)) if self.waited && e.is_transient() && now < self.wait_end => {
                self.lost = true;
                Step::Sleep(RETRY.min(self.wait_end - now))
            }
            Event::Reply(Err(e)) => self.fail(e),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.call_deadline)
    }
}

/// Stores the computed value or gives the lease back, within the cache's deadline.
pub(crate) struct WriteBack<'f> {
    fill: &'f Fill<'f>,
    /// The write, checked; `None`: nothing to store, only the release.
    store: Option<Result<Set>>,
    answer: Option<Result<Option<Vec<u8>>>>,
    outcome: FillOutcome,
    took: Duration,
    deadline: Instant,
    /// The store failed: its error is the answer once the release is done.
    store_error: Option<Error>,
}

impl WriteBack<'_> {
    /// Ends with `error`, or else with the answer decided from the compute.
    fn done(&mut self, outcome: FillOutcome, error: Option<Error>) -> Step<Option<Vec<u8>>> {
        telemetry::cache_fill(self.fill.segment(), outcome, self.took);
        let answer = match error {
            Some(e) => Some(Err(e)),
            None => self.answer.take(),
        };
        Step::Done(answer.unwrap_or_else(|| Err(Error::unexpected("cache fill", "answered twice"))))
    }

    fn release(&mut self) -> Step<Option<Vec<u8>>> {
        if Instant::now() >= self.deadline {
            let e = self.store_error.take().unwrap_or_else(|| flow::timeout("cache.release_lease"));
            return self.done(FillOutcome::Failed, Some(e));
        }
        send(&self.fill.release())
    }
}

impl Flow for WriteBack<'_> {
    type Out = Option<Vec<u8>>;

    fn start(&mut self) -> Step<Option<Vec<u8>>> {
        match self.store.take() {
            Some(Ok(set)) => {
                let step = send(&set);
                self.store = Some(Ok(set));
                step
            }
            Some(Err(e)) => {
                self.store_error = Some(e);
                self.release()
            }
            None => self.release(),
        }
    }

    fn on(&mut self, event: Event) -> Step<Option<Vec<u8>>> {
        let Event::Reply(reply) = event else {
            return Step::Done(Err(Error::unexpected("cache fill", "woke without a sleep")));
        };
        match self.store.take() {
            // The store's reply; on success it also freed the lease.
            Some(Ok(set)) => match reply.and_then(|v| set.parse(Reply::new("cache.set", v))) {
                Ok(Stored::Stored) => self.done(self.outcome, None),
                Ok(Stored::Stale) => self.done(FillOutcome::Refused, None),
                Err(e) => {
                    self.store_error = Some(e);
                    self.release()
                }
            },
            // The release's reply: a clean-up, whose failure is not the caller's answer (the
            // lease then ends by its expiry); a failed store is.
            _ => {
                let released = matches!(reply, Ok(redis::Value::Int(1)));
                if self.outcome == FillOutcome::Failed || self.store_error.is_some() {
                    telemetry::orphan_release(LeaseKind::CacheFill, self.fill.segment(), released);
                }
                match self.store_error.take() {
                    Some(e) => self.done(FillOutcome::Failed, Some(e)),
                    None => self.done(self.outcome, None),
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }
}

/// Gives the fill lease back if the async fill is dropped while it may hold it (cancelled, or
/// its compute panicked): when a tokio runtime is current, a release is spawned on it, on a
/// clone of the connection, within the cache's deadline; otherwise (or if that release fails)
/// the lease ends by its expiry ([`Cache::with_lease`]).
pub(crate) struct Guard<'a, C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    con: &'a mut C,
    armed: Option<(ReleaseLease, Duration, Arc<str>)>,
}

impl<C> Guard<'_, C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// The connection, for the flows.
    pub(crate) fn con(&mut self) -> &mut C {
        self.con
    }

    /// The fill ended (its flows gave the lease back where needed): nothing to do on drop.
    pub(crate) fn disarm<T>(&mut self, out: T) -> T {
        self.armed = None;
        out
    }
}

impl<C> Drop for Guard<'_, C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    fn drop(&mut self) {
        let Some((call, deadline, segment)) = self.armed.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            telemetry::orphan_release(LeaseKind::CacheFill, &segment, false);
            return;
        };
        let mut con = self.con.clone();
        runtime.spawn(async move {
            let released = flow::run_async(Once::new(call, deadline), &mut con).await;
            telemetry::orphan_release(LeaseKind::CacheFill, &segment, matches!(released, Ok(true)));
        });
    }
}

#[cfg(test)]
mod tests;
