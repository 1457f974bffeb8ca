//! # tg-cache
//!
//! Django-style caching for Rust services, checked by the compiler.
//!
//! * [`cache()`] / [`caches()`]: the configured caches, with Django's API
//!   (`get`, `set`, `add`, `get_or_set`, `delete`, `incr`, `delete_pattern`, ...).
//! * Local (moka), Redis and dummy stores, chosen by configuration
//!   ([`CacheConfig`], or the `TG_CACHE_*` environment variables).
//! * [`CacheKeyGenerator`] and [`KeyBuilder`]: escaped, collision-free keys.
//! * [`timeout`]: `SHORT`, `MEDIUM`, `LONG`, `VERY_LONG`, `DAY`.
//!
//! ```
//! # #[tokio::main] async fn main() -> tg_cache::Result<()> {
//! use tg_cache::timeout::MEDIUM;
//! let cache = tg_cache::cache(); // local store with zero configuration
//! cache.set("my_key", &"data".to_string(), MEDIUM).await?;
//! assert_eq!(cache.get::<String>("my_key").await?.as_deref(), Some("data"));
//! let n = cache.get_or_set("expensive_calculation", MEDIUM, || async { 6 * 7 }).await;
//! assert_eq!(n, 42);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub use tg_cache_runtime::*;

pub use tg_cache_macros::cache_function;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
