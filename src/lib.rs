//! Coordination primitives on Redis: rate limits, fenced locks and semaphores, a versioned cache
//! and stream workers. Each scripted primitive is one atomic Lua script from `scripts/`, embedded
//! at build time and called with EVALSHA; a NOSCRIPT (restart, failover, SCRIPT FLUSH) is
//! recovered transparently.
//!
//! Modules:
//! - [`script`]: the embedded bundle, contracts, manifest, preloading and invocation.
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
pub mod doctor;
mod error;
pub mod lock;
pub mod ratelimit;
pub mod script;

pub use error::{Error, Result};
