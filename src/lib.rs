//! Coordination primitives on Redis: rate limits, fenced locks and semaphores, a versioned cache
//! and stream workers. Each scripted primitive is one atomic Lua script from `scripts/`, embedded
//! at build time and called with EVALSHA; a NOSCRIPT (restart, failover, SCRIPT FLUSH) is
//! recovered transparently.
//!
//! Modules:
//! - [`ratelimit`]: exact sliding window, GCRA, several limits in one all-or-nothing call.
//! - [`lock`]: locks with fencing tokens and fenced writes, leased semaphores, a watchdog.
//! - [`cache`]: versioned cache with one-round-trip reads, O(1) segment invalidation and
//!   single-flight fills.
//! - [`stream`]: producers and consumer-group workers with acks, reclaim and dead-lettering.
//! - [`script`]: the embedded bundle, contracts, manifest, preloading and invocation.
//! - [`doctor`], [`acl`]: operational checks and the least-privilege ACL.
//! - [`telemetry`]: spans (`tracing` feature) and metrics (`metrics` feature); the metric names.
//! - `tower` (feature `tower`): `RateLimitLayer`, HTTP rate limiting as tower middleware.
//! - [`Error`]: the one error type.
//!
//! ```no_run
//! # async fn demo() -> redis_primitives::Result<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
//! let mut con = client.get_connection_manager().await?;
//! redis_primitives::script::preload_async(&mut con).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod acl;
pub mod cache;
pub mod cluster;
pub mod doctor;
mod error;
pub(crate) mod flow;
pub mod lock;
pub mod ratelimit;
pub mod rules;
pub mod script;
pub mod stream;
pub mod telemetry;
#[cfg(feature = "tower")]
pub mod tower;

pub use error::{Error, Result};
/// The `redis` crate this one is built on, so a service uses the same version and features
/// without matching them by hand: `redis_primitives::redis::Client`.
pub use redis;

/// The README's examples compile as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
