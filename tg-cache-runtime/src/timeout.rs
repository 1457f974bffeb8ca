//! Timeout constants and the [`Timeout`] type.
//!
//! The constants are the seed's `CACHE_TIMEOUT_*` values. Every API that takes
//! a timeout takes `impl Into<Timeout>`, so a constant, any [`Duration`], a
//! number of seconds, or one of Django's two special cases all work:
//!
//! ```
//! use tg_cache_runtime::timeout::{Timeout, MEDIUM};
//! use std::time::Duration;
//! let t: Timeout = MEDIUM.into();
//! assert_eq!(t, Timeout::After(Duration::from_secs(300)));
//! assert_eq!(Timeout::from(None::<Duration>), Timeout::Never); // Django's timeout=None
//! assert_eq!(Timeout::from(0u64), Timeout::NoCache);            // Django's timeout=0
//! ```

use std::time::Duration;

/// One minute: news, fast-moving lists.
pub const SHORT: Duration = Duration::from_secs(60);
/// Five minutes: semi-static data (Django's default timeout).
pub const MEDIUM: Duration = Duration::from_secs(300);
/// Fifteen minutes: reference data.
pub const LONG: Duration = Duration::from_secs(900);
/// One hour.
pub const VERY_LONG: Duration = Duration::from_secs(3600);
/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// How long an entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Timeout {
    /// The cache's configured default timeout (Django's `DEFAULT_TIMEOUT`).
    #[default]
    Default,
    /// Never expire (Django's `timeout=None`); the entry may still be evicted by size.
    Never,
    /// Do not cache: a `set` stores nothing and removes any existing entry
    /// (Django's `timeout=0`).
    NoCache,
    /// Expire after this long. A zero duration means [`Timeout::NoCache`].
    After(Duration),
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Self {
        if d.is_zero() {
            Timeout::NoCache
        } else {
            Timeout::After(d)
        }
    }
}

impl From<Option<Duration>> for Timeout {
    /// `None` means never expire, as Django's `timeout=None`.
    fn from(d: Option<Duration>) -> Self {
        d.map_or(Timeout::Never, Timeout::from)
    }
}

impl From<u64> for Timeout {
    /// Whole seconds; `0` means do not cache.
    fn from(secs: u64) -> Self {
        Duration::from_secs(secs).into()
    }
}

impl Timeout {
    /// Resolves [`Timeout::Default`] against the cache's default. The result
    /// is `None` for "do not cache", `Some(None)` for "never expire" and
    /// `Some(Some(d))` for an expiry.
    pub(crate) fn resolve(self, default: Timeout) -> Option<Option<Duration>> {
        let t = if self == Timeout::Default {
            default
        } else {
            self
        };
        match t {
            Timeout::Default | Timeout::Never => Some(None),
            Timeout::NoCache => None,
            Timeout::After(d) if d.is_zero() => None,
            Timeout::After(d) => Some(Some(d)),
        }
    }
}

/// The remaining lifetime of an entry, as returned by `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The entry never expires.
    Forever,
    /// The entry expires after this long.
    Remaining(Duration),
}
