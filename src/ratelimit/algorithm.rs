//! The two algorithms and their parameters, checked before anything is sent.

use std::time::Duration;

use crate::{Error, Result};

/// The scripts take numbers up to 10^12 so that every value stays exact as a Lua double.
const MAX_WIRE: u64 = 1_000_000_000_000;

/// A rate-limit algorithm: the script it runs and the per-limit arguments it sends.
/// Implemented by [`SlidingWindow`] and [`Gcra`]; sealed.
pub trait Algorithm: sealed::Sealed + Clone + Send + Sync {
    /// The script's `@name`.
    #[doc(hidden)]
    const SCRIPT: &'static str;
    /// The most cost one request can ever be admitted with (the limit, or the burst).
    fn capacity(&self) -> u64;
    /// The per-limit ARGV group, in the script's order.
    #[doc(hidden)]
    fn wire_args(&self) -> Vec<u64>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SlidingWindow {}
    impl Sealed for super::Gcra {}
}

fn millis(name: &'static str, d: Duration) -> Result<u64> {
    let ms = d.as_millis();
    if ms == 0 || !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::invalid(name, format!("must be a whole number of milliseconds >= 1 (got {d:?})")));
    }
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms <= MAX_WIRE)
        .ok_or_else(|| Error::invalid(name, format!("must be at most {MAX_WIRE} ms")))
}

fn count(name: &'static str, n: u64) -> Result<u64> {
    if n == 0 || n > MAX_WIRE {
        return Err(Error::invalid(name, format!("must be between 1 and {MAX_WIRE} (got {n})")));
    }
    Ok(n)
}

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
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: u64,
    window_ms: u64,
}

impl SlidingWindow {
    /// `limit` requests (total cost) per `window`. The window must be whole milliseconds.
    pub fn new(limit: u64, window: Duration) -> Result<Self> {
        Ok(SlidingWindow { limit: count("limit", limit)?, window_ms: millis("window", window)? })
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

impl Algorithm for SlidingWindow {
    const SCRIPT: &'static str = "ratelimit.sliding_window";
    fn capacity(&self) -> u64 {
        self.limit
    }
    fn wire_args(&self) -> Vec<u64> {
        vec![self.limit, self.window_ms]
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
        let g = Gcra { rate: count("rate", rate)?, period_ms: millis("period", period)?, burst: rate };
        g.check_span()
    }
    /// Sets the burst: how many requests may pass at once after a quiet period.
    pub fn with_burst(self, burst: u64) -> Result<Self> {
        Gcra { burst: count("burst", burst)?, ..self }.check_span()
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
        if (self.burst as u128) * (self.period_ms as u128) > (MAX_WIRE as u128) * (self.rate as u128) {
            return Err(Error::invalid("burst", "burst * period / rate must be at most 10^12 ms"));
        }
        Ok(self)
    }
}

impl Algorithm for Gcra {
    const SCRIPT: &'static str = "ratelimit.gcra";
    fn capacity(&self) -> u64 {
        self.burst
    }
    fn wire_args(&self) -> Vec<u64> {
        vec![self.rate, self.period_ms, self.burst]
    }
}
