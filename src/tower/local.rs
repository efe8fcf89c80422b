//! The in-process fallback limiter of [`OnFailure::Local`](super::OnFailure::Local): what one
//! replica applies on its own while Redis cannot decide.
//!
//! Budget: each replica gets `1 / replicas` of every limit, rounded up (at least 1), applied as
//! GCRA per subject on this process' monotonic clock (the server's clock is what is missing):
//! - a [`Gcra`](crate::ratelimit::Gcra) limit of `rate` per `period` with `burst`:
//!   `ceil(rate / replicas)` per `period`, burst `ceil(burst / replicas)`;
//! - a [`SlidingWindow`](crate::ratelimit::SlidingWindow) of `limit` per `window`:
//!   `ceil(limit / replicas)` per `window`, with the same burst. Over time a replica admits its
//!   share per window; within one window it can admit up to twice its share (a full burst, then
//!   the steady rate), the price of O(1) state per subject.
//!
//! All limits of a request are decided together (all-or-nothing), like the Redis call. State is
//! one timestamp per (limit, subject), under one mutex; entries that are back to full are pruned
//! as the map grows, and at `max_keys` live subjects a new subject is refused rather than grow
//! the map without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ratelimit::{Decision, Limit, MultiDecision, MultiLimit};

/// One limit's share on this replica, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Emission interval: one unit of cost per `interval` ns.
    interval: u64,
    /// The burst: most cost at once.
    burst: u64,
}

impl Share {
    fn of(limit: &Limit, replicas: u64) -> Share {
        let (rate, period, burst) = limit.as_rate();
        let rate = rate.div_ceil(replicas).max(1);
        let burst = burst.div_ceil(replicas).max(1);
        let interval = (period.as_nanos() / u128::from(rate)).clamp(1, u128::from(u64::MAX)) as u64;
        Share { interval, burst }
    }

    /// The tolerance: how far ahead of now the theoretical arrival time may run.
    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(self.burst)
    }
}

/// The fallback limiter of one layer.
#[derive(Debug)]
pub(crate) struct Local {
    shares: Vec<Share>,
    base: Instant,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Theoretical arrival time (ns since `base`) per Redis key (limit name and subject).
    tats: HashMap<String, u64>,
    /// Prune when the map reaches this size.
    prune_at: usize,
}

/// A map this size is pruned (entries back to full removed) before it grows further.
const FIRST_PRUNE: usize = 1024;

impl Local {
    pub(crate) fn new(limits: &MultiLimit, replicas: u32, max_keys: usize) -> Local {
        let replicas = u64::from(replicas.max(1));
        Local {
            shares: limits.limiters().iter().map(|l| Share::of(l.limit(), replicas)).collect(),
            base: Instant::now(),
            max_keys: max_keys.max(1),
            state: Mutex::new(State { tats: HashMap::new(), prune_at: FIRST_PRUNE }),
        }
    }

    /// The replica's budget for each limit: (burst, interval).
    #[cfg(test)]
    fn budget(&self, i: usize) -> (u64, Duration) {
        (self.shares[i].burst, Duration::from_nanos(self.shares[i].interval))
    }

    /// Decides and, if every limit admits, consumes: `keys` are the request's Redis keys, one
    /// per limit, in order.
    pub(crate) fn check(&self, keys: &[String], cost: u64) -> MultiDecision {
        let now = self.base.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.tats.len() >= state.prune_at {
            state.tats.retain(|_, tat| *tat > now);
            state.prune_at = (state.tats.len() * 2).max(FIRST_PRUNE);
        }
        let full = state.tats.len() >= self.max_keys;
        // Per limit: (allowed alone, retry after, current TAT, TAT if consumed).
        let mut each = Vec::with_capacity(keys.len());
        for (key, share) in keys.iter().zip(&self.shares) {
            let known = state.tats.get(key).copied();
            let tat = known.unwrap_or(0).max(now);
            let new_tat = tat.saturating_add(cost.saturating_mul(share.interval));
            let fits = new_tat - now <= share.tolerance();
            // A subject not seen yet while the map is full: refused, the map does not grow.
            let room = !(full && known.is_none());
            let retry_after = match (fits, room) {
                (true, true) => Duration::ZERO,
                (true, false) => Duration::from_secs(1),
                (false, _) => Duration::from_nanos(new_tat - now - share.tolerance()),
            };
            each.push((fits && room, retry_after, tat, new_tat));
        }
        let refused_by = each.iter().position(|e| !e.0);
        let allowed = refused_by.is_none();
        let limits: Vec<Decision> = each
            .iter()
            .zip(&self.shares)
            .map(|(&(alone, retry_after, tat, new_tat), share)| {
                // What is left: after this request when it was admitted, as it stands otherwise.
                let ahead = if allowed { new_tat - now } else { tat - now };
                Decision {
                    allowed: alone,
                    limit: share.burst,
                    remaining: share.tolerance().saturating_sub(ahead) / share.interval,
                    retry_after,
                    reset_after: Duration::from_nanos(ahead),
                }
            })
            .collect();
        if allowed {
            for (key, e) in keys.iter().zip(&each) {
                match state.tats.get_mut(key) {
                    Some(t) => *t = e.3,
                    None => {
                        state.tats.insert(key.clone(), e.3);
                    }
                }
            }
        }
        let retry_after = limits.iter().map(|d| d.retry_after).max().unwrap_or_default();
        MultiDecision { allowed, refused_by, retry_after, limits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Gcra, RateLimiter, SlidingWindow};

    fn limits() -> MultiLimit {
        MultiLimit::new()
            .with(RateLimiter::new("a", SlidingWindow::new(10, Duration::from_secs(60)).unwrap()).unwrap())
            .with(RateLimiter::new("b", SlidingWindow::new(7, Duration::from_secs(60)).unwrap()).unwrap())
    }

    #[test]
    fn each_replica_gets_its_share_rounded_up() {
        let local = Local::new(&limits(), 3, 100);
        assert_eq!(local.budget(0), (4, Duration::from_secs(15)));
        assert_eq!(local.budget(1), (3, Duration::from_secs(20)));
        let g = MultiLimit::new().with(
            RateLimiter::new("g", Gcra::new(100, Duration::from_secs(1)).unwrap().with_burst(20).unwrap())
                .unwrap(),
        );
        assert_eq!(Local::new(&g, 4, 100).budget(0), (5, Duration::from_millis(40)));
        assert_eq!(Local::new(&g, 1000, 100).budget(0), (1, Duration::from_secs(1)));
    }

    #[test]
    fn all_or_nothing_within_the_share() {
        let local = Local::new(&limits(), 2, 100);
        let keys = ["rl:{u}:a".to_owned(), "rl:{u}:b".to_owned()];
        // Shares: a = 5, b = 4; b binds.
        let admitted = (0..10).filter(|_| local.check(&keys, 1).allowed).count();
        assert_eq!(admitted, 4);
        let d = local.check(&keys, 1);
        assert_eq!(d.refused_by, Some(1));
        assert!(d.retry_after > Duration::from_secs(14) && d.retry_after <= Duration::from_secs(15));
        // The refusals consumed nothing of `a`: one left there for another key set.
        assert_eq!(d.limits[0].remaining, 1);
        // Another subject has its own budget.
        assert!(local.check(&["rl:{v}:a".to_owned(), "rl:{v}:b".to_owned()], 1).allowed);
    }

    #[test]
    fn a_full_map_refuses_new_subjects_only() {
        let one = MultiLimit::new()
            .with(RateLimiter::new("a", SlidingWindow::new(10, Duration::from_secs(60)).unwrap()).unwrap());
        let local = Local::new(&one, 1, 2);
        assert!(local.check(&["k1".to_owned()], 1).allowed);
        assert!(local.check(&["k2".to_owned()], 1).allowed);
        let d = local.check(&["k3".to_owned()], 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert!(local.check(&["k1".to_owned()], 1).allowed);
    }
}
