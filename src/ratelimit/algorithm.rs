//! The algorithms and their parameters, checked before anything is sent. Adding an algorithm:
//! its script, a struct here, a variant of [`Limit`] and its two arms below (see ARCHITECTURE.md);
//! the call, its reply and every API taking a `Limit` need nothing more.

use std::time::Duration;

use crate::rules::{self, MAX};
use crate::script::Id;
use crate::{Error, Result};

/// An exact sliding-window log: at most `limit` total cost within any `window`.
///
/// Exact (no approximation across window boundaries); memory grows with the number of admitted
/// requests inside the window (at most `limit` entries per subject). Prefer [`Gcra`] for large
/// limits: it keeps one small key per subject.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::SlidingWindow;
///
/// let w = SlidingWindow::new(100, Duration::from_secs(60)).unwrap();
/// assert_eq!(w.limit(), 100);
/// assert!(SlidingWindow::new(0, Duration::from_secs(1)).is_err());
/// assert!(SlidingWindow::new(1, Duration::from_micros(1500)).is_err()); // whole milliseconds
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: u64,
    window_ms: u64,
}

impl SlidingWindow {
    /// `limit` requests (total cost) per `window`: 1..=10^12 each, the window in whole
    /// milliseconds.
    pub fn new(limit: u64, window: Duration) -> Result<Self> {
        Ok(SlidingWindow {
            limit: rules::count("limit", limit)?,
            window_ms: rules::millis("window", window)?,
        })
    }
    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// GCRA (generic cell rate algorithm): `rate` requests per `period`, with up to `burst` at once.
/// One small key per subject, whatever the rate.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::Gcra;
///
/// // 10 per second on average, bursts of up to 20.
/// let g = Gcra::new(10, Duration::from_secs(1)).unwrap().with_burst(20).unwrap();
/// assert_eq!(g.burst(), 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    rate: u64,
    period_ms: u64,
    burst: u64,
}

impl Gcra {
    /// `rate` per `period`, with a burst equal to `rate` (a full period's worth at once).
    pub fn new(rate: u64, period: Duration) -> Result<Self> {
        let rate = rules::count("rate", rate)?;
        Gcra { rate, period_ms: rules::millis("period", period)?, burst: rate }.check_span()
    }
    /// Sets the burst: how many requests may pass at once after a quiet period.
    pub fn with_burst(self, burst: u64) -> Result<Self> {
        Gcra { burst: rules::count("burst", burst)?, ..self }.check_span()
    }
    /// The rate per period.
    pub fn rate(&self) -> u64 {
        self.rate
    }
    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
    /// The burst (capacity).
    pub fn burst(&self) -> u64 {
        self.burst
    }
    /// The script refuses a full burst that spans more than 10^12 ms.
    fn check_span(self) -> Result<Self> {
        if u128::from(self.burst) * u128::from(self.period_ms) > u128::from(MAX) * u128::from(self.rate) {
            return Err(Error::invalid("burst", "burst * period / rate must be at most 10^12 ms"));
        }
        Ok(self)
    }
}

/// One limit of any algorithm: what a [`RateLimiter`](super::RateLimiter) applies. Built from
/// [`SlidingWindow`] or [`Gcra`] with `into()`.
///
/// ```
/// use std::time::Duration;
/// use redis_primitives::ratelimit::{Gcra, Limit};
/// let l: Limit = Gcra::new(5, Duration::from_secs(1)).unwrap().into();
/// assert_eq!(l.capacity(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// An exact sliding-window log.
    SlidingWindow(SlidingWindow),
    /// GCRA.
    Gcra(Gcra),
}

impl Limit {
    /// The most cost one request can ever be admitted with (the limit, or the burst).
    pub fn capacity(&self) -> u64 {
        match self {
            Limit::SlidingWindow(w) => w.limit,
            Limit::Gcra(g) => g.burst,
        }
    }

    /// The limit as a GCRA equivalent, `(rate, period, burst)`: what an in-process stand-in
    /// applies (a sliding window of `limit` per `window` is `limit` per `window`, burst `limit`).
    #[cfg(feature = "tower")]
    pub(crate) fn as_rate(&self) -> (u64, Duration, u64) {
        match self {
            Limit::SlidingWindow(w) => (w.limit, w.window(), w.limit),
            Limit::Gcra(g) => (g.rate, g.period(), g.burst),
        }
    }

    /// The quota a client is told and the window it refers to: a sliding window's own; for GCRA
    /// the time to refill a whole burst (`burst * period / rate`).
    #[cfg(feature = "tower")]
    pub(crate) fn quota_window(&self) -> (u64, Duration) {
        match self {
            Limit::SlidingWindow(w) => (w.limit, w.window()),
            Limit::Gcra(g) => {
                let nanos = g.period().as_nanos() * u128::from(g.burst) / u128::from(g.rate.max(1));
                (g.burst, Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64))
            }
        }
    }

    /// The algorithm's script and this limit's ARGV group, in the script's order. Every
    /// algorithm's script takes `cost, flags` then one group per key and answers the same reply.
    pub(crate) fn wire(&self) -> (Id, Vec<u64>) {
        match self {
            Limit::SlidingWindow(w) => (Id::RatelimitSlidingWindow, vec![w.limit, w.window_ms]),
            Limit::Gcra(g) => (Id::RatelimitGcra, vec![g.rate, g.period_ms, g.burst]),
        }
    }
}

impl From<SlidingWindow> for Limit {
    fn from(w: SlidingWindow) -> Self {
        Limit::SlidingWindow(w)
    }
}

impl From<Gcra> for Limit {
    fn from(g: Gcra) -> Self {
        Limit::Gcra(g)
    }
}
