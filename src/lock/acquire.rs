//! Taking a lock or permit, as a sans-IO flow (see [`crate::flow`]): one attempt
//! (`try_acquire`), or attempts with backoff until a timeout (`acquire`), then, when the last
//! attempt's outcome is unknown, the release of the token it may have taken. The async and the
//! blocking methods run this same flow, so they make the same decisions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::lease::{Lease, Target};
use super::{Acquire, CLEANUP_MARGIN, DEFAULT_DEADLINE, watchdog};
use crate::flow::{Event, Flow, Side, Step, timeout};
use crate::script::Reply;
use crate::telemetry::{self, AcquireOutcome};
use crate::{Error, Result, rules};

/// How a lock or a semaphore takes and holds its leases (the same settings for both).
#[derive(Debug, Clone)]
pub(super) struct Policy {
    pub(super) ttl: Duration,
    pub(super) backoff: Backoff,
    pub(super) max_hold: Option<Duration>,
    pub(super) deadline: Duration,
}

impl Policy {
    /// Leases of `ttl`: whole milliseconds, 1 ms..=10^12 ms (a sub-millisecond part is refused,
    /// not truncated).
    pub(super) fn new(ttl: Duration) -> Result<Policy> {
        rules::millis("ttl", ttl)?;
        Ok(Policy { ttl, backoff: Backoff::default(), max_hold: None, deadline: DEFAULT_DEADLINE })
    }
}

/// What a holding is besides its lease ([`Fenced`](super::Fenced), [`Counted`](super::Counted)):
/// which scripts act on it, and what the acquire's grant adds to it.
pub(super) trait Grant: Clone + Send + Sync + 'static {
    fn target(&self) -> Target;
    /// This holding with the acquire's grant: the fencing token, or the holder count.
    fn granted(self, grant: u64) -> Self;
}

/// What an acquire took: the lease and the holding.
pub(super) struct Taken<K> {
    pub(super) lease: Lease,
    pub(super) kind: K,
    pub(super) max_hold: Option<Duration>,
    pub(super) sent_at: Instant,
}

/// Where the flow is.
enum Phase {
    /// Sending attempts (or sleeping between them).
    Trying,
    /// The acquire failed with this error after an attempt whose outcome is unknown: releasing.
    CleaningUp(Option<Error>),
}

pub(super) struct AcquireFlow<K> {
    kind: K,
    target: Target,
    token: Arc<str>,
    policy: Policy,
    /// `acquire` retries until the deadline; `try_acquire` sends one attempt.
    retry: bool,
    deadline: Instant,
    cleanup_deadline: Instant,
    started: Instant,
    sent_at: Instant,
    attempt: u32,
    refusals: u32,
    /// The script last sent, for the reply's error messages.
    script: &'static str,
    /// The last refusal or transient error, answered if the deadline passes while sleeping.
    last: Option<Result<Acquire<(Duration, u64)>>>,
    /// Some attempt's outcome is unknown (no answer, a lost connection) and no later answer
    /// said this token holds nothing: it may hold the lock now.
    uncertain: bool,
    phase: Phase,
}

impl<K: Grant> AcquireFlow<K> {
    /// `timeout`: `None` for one attempt within the policy's deadline. Refuses, before anything
    /// is sent, a watchdog that could not run (a blocking acquire, or no tokio runtime).
    pub(super) fn new(kind: K, policy: &Policy, side: Side, timeout: Option<Duration>) -> Result<Self> {
        if policy.max_hold.is_some() {
            match side {
                Side::Async => watchdog::check_runtime()?,
                Side::Blocking => {
                    return Err(Error::invalid(
                        "watchdog",
                        "blocking guards are never renewed in the background",
                    ));
                }
            }
        }
        let now = Instant::now();
        let deadline = rules::later(now, timeout.unwrap_or(policy.deadline));
        Ok(AcquireFlow {
            target: kind.target(),
            kind,
            token: rules::token().into(),
            policy: policy.clone(),
            retry: timeout.is_some(),
            deadline,
            cleanup_deadline: deadline,
            started: now,
            sent_at: now,
            attempt: 0,
            refusals: 0,
            script: "",
            last: None,
            uncertain: false,
            phase: Phase::Trying,
        })
    }

    fn attempt(&mut self) -> Step<Acquire<Taken<K>>> {
        let now = Instant::now();
        if now >= self.deadline {
            // Nothing is sent past the deadline (a zero timeout sends nothing at all).
            let last = self.last.take().unwrap_or_else(|| Err(timeout("acquire")));
            return self.finish(last);
        }
        match self.target.acquire(&self.token, self.policy.ttl) {
            Ok(inv) => {
                self.script = inv.script().name();
                self.sent_at = now;
                self.uncertain = true;
                Step::Call(inv)
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_attempt(&mut self, reply: Result<redis::Value>) -> Step<Acquire<Taken<K>>> {
        let outcome = reply.and_then(|v| {
            let reply = Reply::new(self.script, v);
            self.target.granted(&self.token, self.policy.ttl, reply)
        });
        let (bound, last) = match outcome {
            Ok(Acquire::Acquired((ttl, grant))) => {
                self.uncertain = false;
                return self.finish(Ok(Acquire::Acquired((ttl, grant))));
            }
            Ok(Acquire::Held { retry_after }) => {
                // The script ran and this token does not hold it: whatever an earlier attempt
                // did, nothing of ours is held now.
                self.uncertain = false;
                self.refusals = self.refusals.saturating_add(1);
                (Some(retry_after), Ok(Acquire::Held { retry_after }))
            }
            // Resending is safe: the same token again is a refresh, never a second holder.
            Err(e) if e.is_transient() => (None, Err(e)),
            Err(e) => return self.finish(Err(e)),
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if !self.retry || remaining.is_zero() {
            return self.finish(last);
        }
        let wait = self.policy.backoff.delay(self.attempt, rand::random::<f64>(), bound, remaining);
        self.attempt = self.attempt.saturating_add(1);
        self.last = Some(last);
        Step::Sleep(wait)
    }

    /// Ends with `outcome`, first releasing the token if an attempt may have taken it.
    fn finish(&mut self, outcome: Result<Acquire<(Duration, u64)>>) -> Step<Acquire<Taken<K>>> {
        match outcome {
            Err(e) if self.uncertain => {
                self.phase = Phase::CleaningUp(Some(e));
                self.cleanup_deadline = rules::deadline(CLEANUP_MARGIN);
                self.release()
            }
            outcome => {
                self.report(match &outcome {
                    Ok(Acquire::Acquired(_)) => AcquireOutcome::Acquired,
                    Ok(Acquire::Held { .. }) => AcquireOutcome::Held,
                    Err(e) if e.is_timeout() => AcquireOutcome::TimedOut,
                    Err(_) => AcquireOutcome::Error,
                });
                Step::Done(outcome.map(|a| a.map(|(ttl, grant)| self.taken(ttl, grant))))
            }
        }
    }

    fn taken(&self, granted: Duration, grant: u64) -> Taken<K> {
        // min(): a surprising reply never lengthens the time the holder relies on.
        let ttl = granted.min(self.policy.ttl);
        let lease =
            Lease::new(self.target.clone(), self.token.clone(), ttl, self.policy.deadline, self.sent_at);
        let kind = self.kind.clone().granted(grant);
        Taken { lease, kind, max_hold: self.policy.max_hold, sent_at: self.sent_at }
    }

    fn release(&mut self) -> Step<Acquire<Taken<K>>> {
        match self.target.release(&self.token) {
            Ok(inv) => {
                self.script = inv.script().name();
                Step::Call(inv)
            }
            Err(e) => self.cleaned(Err(e)),
        }
    }

    /// The clean-up release answered (or failed): report it, then end with the acquire's error.
    fn cleaned(&mut self, reply: Result<redis::Value>) -> Step<Acquire<Taken<K>>> {
        let released = reply.and_then(|v| super::call::one_or_zero(&Reply::new(self.script, v))).ok();
        telemetry::orphan_release(self.target.kind(), self.target.name(), released.is_some());
        let cause = match &mut self.phase {
            Phase::CleaningUp(cause) => cause.take(),
            Phase::Trying => None,
        };
        let Some(error) = cause else {
            // A cancelled acquire's clean-up: nobody reads this.
            return Step::Done(Err(Error::Timeout("acquire cancelled".into())));
        };
        let error = Error::Abandoned { error: Box::new(error), released };
        self.report(if error.is_timeout() { AcquireOutcome::TimedOut } else { AcquireOutcome::Error });
        Step::Done(Err(error))
    }

    fn report(&self, outcome: AcquireOutcome) {
        let waited = self.started.elapsed();
        telemetry::acquire(self.target.kind(), self.target.name(), outcome, waited, self.refusals);
    }
}

impl<K: Grant> Flow for AcquireFlow<K> {
    type Out = Acquire<Taken<K>>;

    fn start(&mut self) -> Step<Acquire<Taken<K>>> {
        self.attempt()
    }

    fn on(&mut self, event: Event) -> Step<Acquire<Taken<K>>> {
        match (&self.phase, event) {
            (Phase::Trying, Event::Woke) => self.attempt(),
            (Phase::Trying, Event::Reply(reply)) => self.on_attempt(reply),
            (Phase::CleaningUp(_), Event::Reply(reply)) => self.cleaned(reply),
            (Phase::CleaningUp(_), Event::Woke) => self.release(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(match self.phase {
            Phase::Trying => self.deadline,
            Phase::CleaningUp(_) => self.cleanup_deadline,
        })
    }

    /// Dropped while an attempt may have taken the lock (one in flight, or an earlier one with
    /// no answer): release the token from a spawned task, within the lease's deadline.
    fn cancelled(&mut self) -> Option<Step<Acquire<Taken<K>>>> {
        if !self.uncertain {
            return None;
        }
        self.phase = Phase::CleaningUp(None);
        self.cleanup_deadline = rules::deadline(self.policy.deadline);
        Some(self.release())
    }
}

/// The settings a lock and a semaphore share, written once: the backoff, the watchdog, the
/// deadline, and their getters.
macro_rules! settings {
    ($ty:ident, $example:literal) => {
        impl $ty {
            /// Sets the backoff of `acquire` between refused attempts (see
            /// [`Backoff`](super::Backoff)).
            ///
            /// ```
            /// # use std::time::Duration;
            #[doc = concat!("use redis_primitives::lock::{Backoff, ", stringify!($ty), "};")]
            #[doc = concat!("let x = ", $example, ".backoff(Backoff::default());")]
            /// # Ok::<(), redis_primitives::Error>(())
            /// ```
            pub fn backoff(mut self, backoff: super::Backoff) -> Self {
                self.policy.backoff = backoff;
                self
            }

            /// Turns on the watchdog for async holdings: a tokio task renews the lease every
            /// `ttl / 3` until it is released or dropped, and stops once it has been held
            /// `max_hold` in total (its last renewal is shortened so the lease ends then). When
            /// a renewal finds the lease gone, [`Held::lost`](super::Held::lost) resolves at once
            /// and [`Held::is_lost`](super::Held::is_lost) turns true; when renewals fail (the
            /// server unreachable), the holding is lost as its time runs out. Blocking acquires
            /// refuse a lock or semaphore with a watchdog, since nothing would renew.
            ///
            /// ```
            /// # use std::time::Duration;
            #[doc = concat!("use redis_primitives::lock::", stringify!($ty), ";")]
            #[doc = concat!("let x = ", $example, ".watchdog(Duration::from_secs(600));")]
            /// # Ok::<(), redis_primitives::Error>(())
            /// ```
            pub fn watchdog(mut self, max_hold: std::time::Duration) -> Self {
                self.policy.max_hold = Some(max_hold);
                self
            }

            /// How long a call without a timeout of its own (`try_acquire`, and a holding's
            /// `release`, `extend`, `fenced_write`) may take before it fails with
            /// [`Error::Timeout`](crate::Error::Timeout) (default
            /// [`DEFAULT_DEADLINE`](super::DEFAULT_DEADLINE)).
            ///
            /// ```
            /// # use std::time::Duration;
            #[doc = concat!("use redis_primitives::lock::", stringify!($ty), ";")]
            #[doc = concat!("let x = ", $example, ".with_deadline(Duration::from_millis(200));")]
            #[doc = "assert_eq!(x.deadline(), Duration::from_millis(200));"]
            /// # Ok::<(), redis_primitives::Error>(())
            /// ```
            pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
                self.policy.deadline = deadline;
                self
            }

            /// The lease length.
            pub fn ttl(&self) -> std::time::Duration {
                self.policy.ttl
            }

            /// The deadline of a call without a timeout of its own.
            pub fn deadline(&self) -> std::time::Duration {
                self.policy.deadline
            }
        }
    };
}

pub(super) use settings;
