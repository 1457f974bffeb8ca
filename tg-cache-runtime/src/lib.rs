//! Runtime of [tg-cache](https://docs.rs/tg-cache): the stores, the cache API,
//! keys, timeouts and configuration. Most users depend on the `tg-cache`
//! facade, which re-exports everything here together with the macros.
//!
//! * [`cache()`] / [`caches()`]: the configured caches (Django's `cache` / `caches[..]`).
//! * [`Cache`]: `get`, `set`, `add`, `get_or_set`, `get_many`, `set_many`,
//!   `delete`, `delete_many`, `has_key`, `touch`, `incr`, `decr`, `ttl`,
//!   `delete_pattern`, `clear`; [`Cache::blocking`] for synchronous code.
//! * [`key`]: escaping, [`CacheKeyGenerator`], [`KeyBuilder`], [`KeyPattern`].
//! * [`timeout`]: `SHORT`, `MEDIUM`, `LONG`, `VERY_LONG`, `DAY` and [`Timeout`].
//! * [`config`]: [`CacheConfig`] and the `TG_CACHE_*` environment variables.
#![forbid(unsafe_code)]

mod cache;
mod codec;
pub mod config;
mod error;
mod exec;
mod flight;
pub mod key;
mod registry;
mod stats;
mod store;
pub mod timeout;

#[cfg(feature = "test-support")]
pub mod testing;

pub use cache::{Always, BlockingCache, Cache, CachePolicy, CacheValue, OkOnly, SomeOnly};
pub use config::{Backend, CacheConfig, RedisUrl};
pub use error::{ConfigError, Error, Result};
pub use key::{CacheKeyGenerator, KeyBuilder, KeyPart, KeyPattern};
pub use registry::{Caches, DEFAULT_ALIAS, all_caches, cache, caches, configure, init_from_env};
pub use stats::CacheStats;
pub use timeout::{Timeout, Ttl};
