//! Waiting for a lock or permit: jittered exponential backoff, bounded by what the server said
//! about the current holding, and by the caller's deadline. The acquire flow
//! ([`super::acquire`]) asks [`Backoff::delay`] how long to sleep.

use std::time::Duration;

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
    pub(super) fn delay(
        &self,
        attempt: u32,
        jitter: f64,
        bound: Option<Duration>,
        remaining: Duration,
    ) -> Duration {
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
    }
}
