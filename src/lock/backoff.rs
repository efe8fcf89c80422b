//! Waiting for a lock or permit: jittered exponential backoff, bounded by what the server said
//! about the current holding, and by the caller's deadline. The decisions live in [`Retry`];
//! the async and the blocking loop only sleep.

use std::time::{Duration, Instant};

use super::{Acquire, later};
use crate::Result;
use crate::script::ScriptCall;

/// The backoff of [`Lock::acquire`](super::Lock::acquire) and
/// [`Semaphore::acquire`](super::Semaphore::acquire) between refused attempts: the n-th wait is
/// drawn from `[d/2, d]` with `d = min(max, initial * 2^n)`, and never lasts past the expiry the
/// server reported for the current holding, nor past the caller's deadline.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::lock::{Backoff, Lock};
///
/// let backoff = Backoff { initial: Duration::from_millis(2), max: Duration::from_millis(50) };
/// let lock = Lock::new("orders", Duration::from_secs(5))?.backoff(backoff);
/// # Ok::<(), redis_primitives::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait (before jitter). A zero is taken as 1 ms.
    pub initial: Duration,
    /// The longest wait (before jitter); below `initial`, `initial` is used.
    pub max: Duration,
}

impl Default for Backoff {
    /// 5 ms doubling up to 100 ms.
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(100) }
    }
}

impl Backoff {
    /// The wait after `attempt` refusals (0-based), for a jitter draw in `[0, 1)`, bounded by
    /// `bound` (the reported end of the current holding) and by `remaining` (to the deadline).
    fn delay(&self, attempt: u32, jitter: f64, bound: Option<Duration>, remaining: Duration) -> Duration {
        let initial = self.initial.max(Duration::from_millis(1));
        let cap = self.max.max(initial);
        let exp = initial.saturating_mul(1u32 << attempt.min(20)).min(cap);
        // Integer nanoseconds: Duration's float helpers panic on overflow, these saturate.
        let half = exp.as_nanos() / 2;
        let extra = (half as f64 * jitter.clamp(0.0, 1.0)) as u128;
        let wait = Duration::from_nanos(u64::try_from(half + extra).unwrap_or(u64::MAX));
        wait.min(bound.unwrap_or(Duration::MAX)).min(remaining)
    }
}

/// What the loop does after an attempt.
pub(super) enum Step<T> {
    Done(Result<T>),
    Sleep(Duration),
}

/// The state of one timed acquire.
pub(super) struct Retry {
    backoff: Backoff,
    deadline: Instant,
    attempt: u32,
}

impl Retry {
    pub(super) fn new(backoff: Backoff, timeout: Duration) -> Self {
        let now = Instant::now();
        Retry { backoff, deadline: later(now, timeout), attempt: 0 }
    }

    /// Decides after one attempt sent at `sent_at`. A refusal waits and retries; so does a
    /// connection error, because the caller retries with the same token and the scripts treat a
    /// repeat by the current holder as a refresh: a reply lost after the lock was taken is
    /// recovered, never doubled. Other errors end the loop.
    pub(super) fn after<G>(
        &mut self,
        outcome: Result<Acquire<G>>,
        sent_at: Instant,
    ) -> Step<(Acquire<G>, Instant)> {
        let now = Instant::now();
        let remaining = self.deadline.saturating_duration_since(now);
        let (bound, done) = match outcome {
            Ok(Acquire::Acquired(g)) => return Step::Done(Ok((Acquire::Acquired(g), sent_at))),
            Ok(Acquire::Held { retry_after }) => {
                (Some(retry_after), Ok((Acquire::Held { retry_after }, sent_at)))
            }
            Err(e) if e.is_connection() => (None, Err(e)),
            Err(e) => return Step::Done(Err(e)),
        };
        if remaining.is_zero() {
            return Step::Done(done);
        }
        let wait = self.backoff.delay(self.attempt, rand::random::<f64>(), bound, remaining);
        self.attempt = self.attempt.saturating_add(1);
        Step::Sleep(wait)
    }
}

/// Runs `call` once (`timeout` `None`), or until it acquires or `timeout` passes. Returns the
/// outcome and the instant the deciding attempt was sent (where the holder's lease starts).
pub(super) async fn acquire_async<K, G, C>(
    call: &K,
    con: &mut C,
    backoff: Backoff,
    timeout: Option<Duration>,
) -> Result<(Acquire<G>, Instant)>
where
    K: ScriptCall<Output = Acquire<G>> + Sync,
    C: redis::aio::ConnectionLike + Send,
{
    let Some(timeout) = timeout else {
        let sent_at = Instant::now();
        return Ok((call.query_async(con).await?, sent_at));
    };
    let mut retry = Retry::new(backoff, timeout);
    loop {
        let sent_at = Instant::now();
        let outcome = call.query_async(con).await;
        match retry.after(outcome, sent_at) {
            Step::Done(r) => return r,
            Step::Sleep(d) => tokio::time::sleep(d).await,
        }
    }
}

/// The blocking twin of [`acquire_async`].
pub(super) fn acquire_blocking<K, G>(
    call: &K,
    con: &mut dyn redis::ConnectionLike,
    backoff: Backoff,
    timeout: Option<Duration>,
) -> Result<(Acquire<G>, Instant)>
where
    K: ScriptCall<Output = Acquire<G>>,
{
    let Some(timeout) = timeout else {
        let sent_at = Instant::now();
        return Ok((call.query(con)?, sent_at));
    };
    let mut retry = Retry::new(backoff, timeout);
    loop {
        let sent_at = Instant::now();
        let outcome = call.query(con);
        // A closed blocking connection never comes back by itself: waiting would only delay
        // the error.
        if outcome.as_ref().is_err_and(|e| e.is_connection()) && !con.is_open() {
            return outcome.map(|a| (a, sent_at));
        }
        match retry.after(outcome, sent_at) {
            Step::Done(r) => return r,
            Step::Sleep(d) => std::thread::sleep(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_with_jitter_and_caps() {
        let b = Backoff { initial: 4 * MS, max: 40 * MS };
        let far = Duration::from_secs(60);
        assert_eq!(b.delay(0, 0.0, None, far), 2 * MS);
        assert_eq!(b.delay(0, 1.0, None, far), 4 * MS);
        assert_eq!(b.delay(2, 0.0, None, far), 8 * MS);
        assert_eq!(b.delay(30, 1.0, None, far), 40 * MS);
        assert!(b.delay(30, 0.5, None, far) >= 20 * MS);
    }

    #[test]
    fn never_sleeps_past_the_reported_expiry_or_the_deadline() {
        let b = Backoff { initial: 100 * MS, max: 1000 * MS };
        assert_eq!(b.delay(5, 1.0, Some(3 * MS), Duration::from_secs(9)), 3 * MS);
        assert_eq!(b.delay(5, 1.0, Some(Duration::MAX), 7 * MS), 7 * MS);
        assert_eq!(b.delay(5, 1.0, Some(Duration::ZERO), 7 * MS), Duration::ZERO);
    }

    #[test]
    fn extreme_settings_do_not_panic() {
        let b = Backoff { initial: Duration::MAX, max: Duration::ZERO };
        assert!(b.delay(u32::MAX, 0.999, None, Duration::MAX) > Duration::ZERO);
        let z = Backoff { initial: Duration::ZERO, max: Duration::ZERO };
        assert_eq!(z.delay(0, 1.0, None, Duration::MAX), MS);
        let _ = Retry::new(Backoff::default(), Duration::MAX);
    }
}
