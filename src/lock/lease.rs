//! What every guard and permit shares: which scripts act on it ([`Target`]), the token, the time
//! the holder may rely on, and the two flows on a held lease: release (resent while that is
//! safe) and renewal.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::call::{
    LockAcquire, LockExtend, LockRelease, SemaphoreAcquire, SemaphoreExtend, SemaphoreRelease, one_or_zero,
};
use super::{Acquire, Extended, LockKeys, LostReason, Released};
use crate::flow::{self, Event, Flow, Once, Step};
use crate::script::{Invocation, Reply, ScriptCall};
use crate::telemetry::{self, LeaseKind};
use crate::{Result, rules};

/// What the holder must subtract from a lease: the server's and our clocks may run at slightly
/// different rates (1%), and the expiry is checked at millisecond granularity (2 ms).
pub(super) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The last instant a lease of `ttl`, requested at `sent_at`, can be relied on. Counting from
/// before the request makes any delay on the way out or back shorten the lease, never extend it.
pub(super) fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    rules::later(sent_at, ttl.saturating_sub(drift(ttl)))
}

/// Which scripts take, renew and give back a lease.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Lock(Arc<LockKeys>),
    Semaphore { key: Arc<str>, permits: u64 },
}

impl Target {
    pub(super) fn kind(&self) -> LeaseKind {
        match self {
            Target::Lock(_) => LeaseKind::Lock,
            Target::Semaphore { .. } => LeaseKind::Semaphore,
        }
    }

    /// The name telemetry reports: the resource, or the semaphore's key.
    pub(super) fn name(&self) -> &str {
        match self {
            Target::Lock(keys) => keys.resource(),
            Target::Semaphore { key, .. } => key,
        }
    }

    pub(super) fn acquire(&self, token: &str, ttl: Duration) -> Result<Invocation<'static>> {
        match self {
            Target::Lock(keys) => LockAcquire { keys, token, ttl }.invocation(),
            Target::Semaphore { key, permits } => {
                SemaphoreAcquire { key, token, permits: *permits, ttl }.invocation()
            }
        }
    }

    /// An acquire's reply: the granted TTL and the fencing token (lock) or the holders (semaphore).
    pub(super) fn granted(
        &self,
        token: &str,
        ttl: Duration,
        reply: Reply,
    ) -> Result<Acquire<(Duration, u64)>> {
        Ok(match self {
            Target::Lock(keys) => LockAcquire { keys, token, ttl }.parse(reply)?.map(|g| (g.ttl, g.fence)),
            Target::Semaphore { key, permits } => SemaphoreAcquire { key, token, permits: *permits, ttl }
                .parse(reply)?
                .map(|g| (g.ttl, g.holders)),
        })
    }

    pub(super) fn release(&self, token: &str) -> Result<Invocation<'static>> {
        match self {
            Target::Lock(keys) => LockRelease { keys, token }.invocation(),
            Target::Semaphore { key, .. } => SemaphoreRelease { key, token }.invocation(),
        }
    }

    fn extend(&self, token: &str, ttl: Duration) -> Result<Invocation<'static>> {
        match self {
            Target::Lock(keys) => LockExtend { keys, token, ttl }.invocation(),
            Target::Semaphore { key, .. } => SemaphoreExtend { key, token, ttl }.invocation(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct State {
    pub(super) valid_until: Instant,
    pub(super) lost: Option<LostReason>,
    /// The watchdog stopped renewing at its cap: running out is [`LostReason::MaxHold`].
    pub(super) capped: bool,
}

/// One held lease. Cheap to clone: the watchdog task and background releases hold clones.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) target: Target,
    pub(super) token: Arc<str>,
    pub(super) ttl: Duration,
    /// The deadline of a call on this lease (release, renewal, fenced write).
    pub(super) deadline: Duration,
    /// A watch channel: the guard, its watchdog and every `lost()` future see one state, and a
    /// change wakes the futures at once.
    state: Arc<watch::Sender<State>>,
}

impl Lease {
    pub(super) fn new(
        target: Target,
        token: Arc<str>,
        ttl: Duration,
        deadline: Duration,
        sent_at: Instant,
    ) -> Lease {
        let state = State { valid_until: valid_until(sent_at, ttl), lost: None, capped: false };
        Lease { target, token, ttl, deadline, state: Arc::new(watch::Sender::new(state)) }
    }

    pub(super) fn state(&self) -> State {
        *self.state.borrow()
    }

    pub(super) fn valid_for(&self) -> Duration {
        let s = self.state();
        if s.lost.is_some() {
            Duration::ZERO
        } else {
            s.valid_until.saturating_duration_since(Instant::now())
        }
    }

    pub(super) fn is_lost(&self) -> bool {
        self.valid_for().is_zero()
    }

    /// Records a loss; the first reason wins, and is reported (unless it is the holder's own
    /// release).
    pub(super) fn mark_lost(&self, reason: LostReason) {
        let fresh = self.state.send_if_modified(|s| {
            let fresh = s.lost.is_none();
            s.lost.get_or_insert(reason);
            fresh
        });
        if fresh && reason != LostReason::Released {
            telemetry::lease_lost(self.target.kind(), self.target.name(), reason.label());
        }
    }

    pub(super) fn mark_capped(&self) {
        self.state.send_modify(|s| s.capped = true);
    }

    /// Resolves when the holder may no longer rely on the lease: at once when a renewal finds
    /// it gone, otherwise when the time it may rely on runs out. Owns what it needs, so it can
    /// be spawned or kept across `&mut` uses of the guard.
    pub(super) fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut rx = self.state.subscribe();
        async move {
            loop {
                let s = *rx.borrow_and_update();
                if let Some(reason) = s.lost {
                    return reason;
                }
                let expired = if s.capped { LostReason::MaxHold } else { LostReason::Expired };
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return LostReason::Released;
                        }
                    }
                    () = tokio::time::sleep_until(s.valid_until.into()) => return expired,
                }
            }
        }
    }

    /// Renewal for `ttl` from the server's now, within `within`: one call, whose answer moves
    /// the holder's clock ([`Extended::NotHeld`] marks the lease lost).
    pub(super) fn extend(
        &self,
        ttl: Duration,
        within: Duration,
    ) -> impl Flow<Out = Extended> + Send + 'static {
        let lease = self.clone();
        // Before the call is sent: a delay on the way shortens the renewed lease, never extends it.
        let sent_at = Instant::now();
        let call = RenewCall { lease: self.clone(), ttl };
        flow::map(Once::new(call, within), move |extended| {
            match extended {
                Extended::Yes => lease.state.send_modify(|s| s.valid_until = valid_until(sent_at, ttl)),
                Extended::NotHeld => lease.mark_lost(LostReason::NotHeld),
            }
            Ok(extended)
        })
    }

    /// The release, within this lease's deadline.
    pub(super) fn release(&self) -> ReleaseFlow {
        ReleaseFlow {
            lease: self.clone(),
            deadline: rules::deadline(self.deadline),
            script: "",
            attempts: 0,
            maybe_ran: false,
            first_valid: false,
        }
    }
}

/// A renewal as a typed call the [`Once`] flow can own.
struct RenewCall {
    lease: Lease,
    ttl: Duration,
}

impl ScriptCall for RenewCall {
    type Output = Extended;

    fn invocation(&self) -> Result<Invocation<'static>> {
        self.lease.target.extend(&self.lease.token, self.ttl)
    }

    fn parse(&self, reply: Reply) -> Result<Extended> {
        Ok(if one_or_zero(&reply)? { Extended::Yes } else { Extended::NotHeld })
    }
}

/// Gives a lease back: a compare-and-delete of this token, so resending it is safe. Resent on
/// a [transient](crate::Error::is_transient) error until the deadline; tells a resend that found
/// nothing after an attempt that may have run ([`Released::Earlier`]) from a lease that was gone.
pub(super) struct ReleaseFlow {
    lease: Lease,
    deadline: Instant,
    /// The script sent, for the reply's error messages.
    script: &'static str,
    attempts: u32,
    /// An attempt failed in a way that leaves its outcome unknown (a lost connection).
    maybe_ran: bool,
    /// The lease was still valid by the holder's clock when the first attempt was sent.
    first_valid: bool,
}

impl ReleaseFlow {
    fn send(&mut self) -> Step<Released> {
        if self.attempts == 0 {
            self.first_valid = !self.lease.is_lost();
        }
        self.attempts = self.attempts.saturating_add(1);
        Step::send(self.lease.target.release(&self.lease.token), &mut self.script)
    }
}

impl Flow for ReleaseFlow {
    type Out = Released;

    fn start(&mut self) -> Step<Released> {
        self.send()
    }

    fn on(&mut self, event: Event) -> Step<Released> {
        match event {
            Event::Woke => self.send(),
            Event::Reply(Ok(value)) => {
                Step::Done(one_or_zero(&Reply::new(self.script, value)).map(|yes| match yes {
                    true => Released::Yes,
                    false if self.maybe_ran && self.first_valid => Released::Earlier,
                    false => Released::NotHeld,
                }))
            }
            Event::Reply(Err(e)) => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                if !e.is_transient() || left.is_zero() {
                    return Step::Done(Err(e));
                }
                self.maybe_ran |= e.is_connection();
                // A short pause lets a reconnecting handle (ConnectionManager, cluster) settle.
                let pause = Duration::from_millis(5).saturating_mul(1 << self.attempts.min(6));
                Step::Sleep(pause.min(left))
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }
}
