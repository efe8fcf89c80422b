//! What every guard and permit shares: the token, the key, the time the holder may rely on,
//! and the release and renewal calls.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::call::{LockExtend, LockRelease, SemaphoreExtend, SemaphoreRelease};
use super::{Extended, LockKeys, LostReason, Released, later, watchdog};
use crate::Result;
use crate::script::ScriptCall;

/// What the holder must subtract from a lease: the server's and our clocks may run at slightly
/// different rates (1%), and the expiry is checked at millisecond granularity (2 ms).
pub(super) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The last instant a lease of `ttl`, requested at `sent_at`, can be relied on. Counting from
/// before the request makes any delay on the way out or back shorten the lease, never extend it.
pub(super) fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    let usable = ttl.saturating_sub(drift(ttl));
    later(sent_at, usable)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct State {
    pub(super) valid_until: Instant,
    pub(super) lost: Option<LostReason>,
    /// The watchdog stopped renewing at its cap: running out is [`LostReason::MaxHold`].
    pub(super) capped: bool,
}

/// Which scripts renew and release the lease.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Lock(Arc<LockKeys>),
    Semaphore(Arc<str>),
}

/// One held lease. Cheap to clone: the watchdog task holds a clone.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) target: Target,
    pub(super) token: Arc<str>,
    pub(super) ttl: Duration,
    /// A watch channel: the guard, its watchdog and every `lost()` future see one state, and a
    /// change wakes the futures at once.
    state: Arc<watch::Sender<State>>,
}

impl Lease {
    pub(super) fn new(target: Target, token: String, ttl: Duration, sent_at: Instant) -> Lease {
        let state = State { valid_until: valid_until(sent_at, ttl), lost: None, capped: false };
        Lease { target, token: token.into(), ttl, state: Arc::new(watch::Sender::new(state)) }
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

    /// Records a loss; the first reason wins.
    pub(super) fn mark_lost(&self, reason: LostReason) {
        self.state.send_if_modified(|s| {
            let fresh = s.lost.is_none();
            s.lost.get_or_insert(reason);
            fresh
        });
    }

    pub(super) fn mark_capped(&self) {
        self.state.send_modify(|s| s.capped = true);
    }

    /// Records the outcome of a renewal for `ttl` sent at `sent_at`.
    pub(super) fn renewed(&self, outcome: &Result<Extended>, sent_at: Instant, ttl: Duration) {
        match outcome {
            // Set, not max: the server's expiry is now `now + ttl`, even if that is sooner.
            Ok(Extended::Yes) => self.state.send_modify(|s| s.valid_until = valid_until(sent_at, ttl)),
            Ok(Extended::NotHeld) => self.mark_lost(LostReason::NotHeld),
            Err(_) => {}
        }
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

    pub(super) async fn release<C>(&self, con: &mut C) -> Result<Released>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let first = self.release_call().query_async(con).await;
        match first {
            // Compare-and-delete is idempotent, so one resend is safe; it helps a connection that
            // reconnects (ConnectionManager, cluster) after a dropped socket. If the first try did
            // run, the resend answers NotHeld.
            Err(e) if e.is_connection() => self.release_call().query_async(con).await,
            other => other,
        }
    }

    pub(super) fn release_blocking(&self, con: &mut dyn redis::ConnectionLike) -> Result<Released> {
        match self.release_call().query(con) {
            Err(e) if e.is_connection() => self.release_call().query(con),
            other => other,
        }
    }

    pub(super) async fn extend<C>(&self, con: &mut C, ttl: Duration) -> Result<Extended>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let sent_at = Instant::now();
        let outcome = self.extend_call(ttl).query_async(con).await;
        self.renewed(&outcome, sent_at, ttl);
        outcome
    }

    pub(super) fn extend_blocking(
        &self,
        con: &mut dyn redis::ConnectionLike,
        ttl: Duration,
    ) -> Result<Extended> {
        let sent_at = Instant::now();
        let outcome = self.extend_call(ttl).query(con);
        self.renewed(&outcome, sent_at, ttl);
        outcome
    }

    /// Fire-and-forget release for `Drop`: never blocks; without a runtime the TTL ends the lease.
    pub(super) fn release_in_background<C>(&self, mut con: C)
    where
        C: redis::aio::ConnectionLike + Send + 'static,
    {
        self.mark_lost(LostReason::Released);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let lease = self.clone();
        runtime.spawn(async move {
            let _ = lease.release(&mut con).await;
        });
    }

    fn release_call(&self) -> ReleaseCall<'_> {
        match &self.target {
            Target::Lock(keys) => ReleaseCall::Lock(LockRelease { keys, token: &self.token }),
            Target::Semaphore(key) => ReleaseCall::Semaphore(SemaphoreRelease { key, token: &self.token }),
        }
    }

    fn extend_call(&self, ttl: Duration) -> ExtendCall<'_> {
        match &self.target {
            Target::Lock(keys) => ExtendCall::Lock(LockExtend { keys, token: &self.token, ttl }),
            Target::Semaphore(key) => ExtendCall::Semaphore(SemaphoreExtend { key, token: &self.token, ttl }),
        }
    }
}

/// Lets one lease type drive either primitive's scripts.
enum ReleaseCall<'a> {
    Lock(LockRelease<'a>),
    Semaphore(SemaphoreRelease<'a>),
}

impl ScriptCall for ReleaseCall<'_> {
    type Output = Released;
    fn invocation(&self) -> Result<crate::script::Invocation<'static>> {
        match self {
            ReleaseCall::Lock(c) => c.invocation(),
            ReleaseCall::Semaphore(c) => c.invocation(),
        }
    }
    fn parse(&self, reply: crate::script::Reply) -> Result<Released> {
        match self {
            ReleaseCall::Lock(c) => c.parse(reply),
            ReleaseCall::Semaphore(c) => c.parse(reply),
        }
    }
}

enum ExtendCall<'a> {
    Lock(LockExtend<'a>),
    Semaphore(SemaphoreExtend<'a>),
}

impl ScriptCall for ExtendCall<'_> {
    type Output = Extended;
    fn invocation(&self) -> Result<crate::script::Invocation<'static>> {
        match self {
            ExtendCall::Lock(c) => c.invocation(),
            ExtendCall::Semaphore(c) => c.invocation(),
        }
    }
    fn parse(&self, reply: crate::script::Reply) -> Result<Extended> {
        match self {
            ExtendCall::Lock(c) => c.parse(reply),
            ExtendCall::Semaphore(c) => c.parse(reply),
        }
    }
}

/// The async side every [`Guard`](super::Guard) and [`Permit`](super::Permit) shares: a
/// connection handle, the optional watchdog, and the release that `Drop` finishes.
pub(super) struct AsyncLease<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    pub(super) lease: Lease,
    con: C,
    watchdog: Option<JoinHandle<()>>,
    done: bool,
}

impl<C> AsyncLease<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    /// Starts the watchdog when `max_hold` is set; the hold is counted from `sent_at`.
    pub(super) fn new(lease: Lease, con: C, max_hold: Option<Duration>, sent_at: Instant) -> Result<Self> {
        let watchdog = match max_hold {
            Some(max_hold) => Some(watchdog::spawn(lease.clone(), con.clone(), later(sent_at, max_hold))?),
            None => None,
        };
        Ok(AsyncLease { lease, con, watchdog, done: false })
    }

    pub(super) fn has_watchdog(&self) -> bool {
        self.watchdog.is_some()
    }

    /// A handle for one call. Cloning is cheap for redis-rs's async handles (an `Arc`), and
    /// lets the guard's methods take `&self`.
    pub(super) fn con(&self) -> C {
        self.con.clone()
    }

    /// Owns a lease clone and a handle rather than borrowing `self`: the future is Send without
    /// requiring `C: Sync`, and does not tie up the guard.
    pub(super) fn extend(&self, ttl: Duration) -> impl Future<Output = Result<Extended>> + Send + 'static {
        let (lease, mut con) = (self.lease.clone(), self.con());
        async move { lease.extend(&mut con, ttl).await }
    }

    pub(super) async fn release(&mut self) -> Result<Released> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let outcome = self.lease.release(&mut self.con()).await;
        // Only now: a release cancelled before this point is finished by Drop.
        self.done = true;
        self.lease.mark_lost(LostReason::Released);
        outcome
    }
}

impl<C> Drop for AsyncLease<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if !self.done {
            self.lease.release_in_background(self.con.clone());
        }
    }
}
