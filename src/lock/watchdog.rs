//! The opt-in renewal task. The two failures users of other libraries report most are renewal
//! that stops silently and renewal that never stops (Redisson 5697, 7272), so this one always
//! ends in a state the holder sees through `lost()`: released, lost, expired, or capped.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::lease::Lease;
use super::{Extended, LostReason};
use crate::telemetry;
use crate::{Error, flow};

/// Renews `lease` every `ttl / 3` until the holding stops it (release or drop, which abort the
/// task), a renewal finds the lease gone, errors outlast the time the holder may rely on, or
/// the total hold reaches `cap_at`: the last renewal is shortened so the lease ends there.
/// `None` without a tokio runtime (checked before the acquire, so not met in practice).
pub(super) fn spawn<C>(lease: Lease, con: C, cap_at: Instant) -> Option<JoinHandle<()>>
where
    C: redis::aio::ConnectionLike + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(runtime.spawn(run(lease, con, cap_at)))
}

/// Checked before acquiring, so a missing runtime never leaves a lock taken and not renewed.
pub(super) fn check_runtime() -> Result<(), Error> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| Error::invalid("watchdog", "renews from a tokio task: call from within a tokio runtime"))
}

async fn run<C>(lease: Lease, mut con: C, cap_at: Instant)
where
    C: redis::aio::ConnectionLike + Send,
{
    let period = (lease.ttl / 3).max(Duration::from_millis(1));
    // After an error, try again soon: the lease is still running down.
    let retry = (period / 4).max(Duration::from_millis(5));
    let mut next = crate::rules::later(Instant::now(), period);
    loop {
        tokio::time::sleep_until(next.into()).await;
        let state = lease.state();
        if state.lost.is_some() {
            return;
        }
        let now = Instant::now();
        if now >= state.valid_until {
            lease.mark_lost(LostReason::Expired);
            return;
        }
        let left = cap_at.saturating_duration_since(now);
        // Whole milliseconds, as the script takes them (shortening is safe; this is not a
        // caller's value).
        let ttl = Duration::from_millis(u64::try_from(lease.ttl.min(left).as_millis()).unwrap_or(u64::MAX));
        if ttl.is_zero() {
            return capped(&lease).await;
        }
        // No later than the holder's own view of the lease: past it a renewal is too late.
        let within = lease.deadline.min(state.valid_until - now);
        match flow::run_async(lease.extend(ttl, within), &mut con).await {
            Ok(Extended::Yes) if ttl < lease.ttl => return capped(&lease).await,
            Ok(Extended::Yes) => {
                telemetry::lease_renewed(lease.target.kind(), lease.target.name());
                next = crate::rules::later(now, period);
            }
            Ok(Extended::NotHeld) => return, // `extend` recorded the loss
            Err(_) => next = crate::rules::later(Instant::now(), retry),
        }
    }
}

/// The cap is reached: no more renewals; the lease is lost ([`LostReason::MaxHold`]) when it
/// runs out.
async fn capped(lease: &Lease) {
    lease.mark_capped();
    tokio::time::sleep_until(lease.state().valid_until.into()).await;
    lease.mark_lost(LostReason::MaxHold);
}
