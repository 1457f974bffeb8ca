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
//!
//! # Jitter
//!
//! Entries written together with one timeout expire together, and their
//! next readers all miss at once. [`Timeout::jitter`] (or a cache's
//! default, [`crate::CacheConfig::jitter`], `TG_CACHE_JITTER`) spreads them:
//! each entry written gets a lifetime drawn uniformly from
//! `[timeout·(1 − j), timeout]`.
//!
//! ```
//! use tg_cache_runtime::timeout::{Timeout, MEDIUM};
//! let t = Timeout::from(MEDIUM).jitter(0.1); // each entry lives 270-300 s
//! assert_eq!(t.jitter_fraction(), Some(0.1));
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
    /// [`Timeout::jitter`]: each entry written lives a time drawn from
    /// `[d·(1 − j), d]`, `d` being the duration given (`None`: the cache's
    /// default timeout). It replaces the cache's default jitter.
    Jittered(Option<Duration>, Jitter),
}

/// A fraction by which stored lifetimes are spread ([`Timeout::jitter`]),
/// in `[0, 1)`; kept in millionths, so that a [`Timeout`] stays `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Jitter(u32);

impl Jitter {
    /// No spread.
    pub const NONE: Jitter = Jitter(0);

    /// A jitter of `fraction` (`0.1`: lifetimes from 90% to 100% of the
    /// timeout); an error unless `0 <= fraction < 1`.
    pub fn new(fraction: f64) -> Result<Jitter, &'static str> {
        if fraction.is_finite() && (0.0..1.0).contains(&fraction) {
            Ok(Jitter((fraction * 1e6).round().min(999_999.0) as u32))
        } else {
            Err(
                "a jitter is a fraction of the timeout, at least 0 and below 1 (0.1: lifetimes from 90% to 100% of it)",
            )
        }
    }

    /// The fraction.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1e6
    }

    /// A lifetime drawn uniformly from `[d·(1 − j), d]` (at least 1 ms).
    pub(crate) fn spread(self, d: Duration) -> Duration {
        if self.0 == 0 {
            return d;
        }
        let cut = d.mul_f64(self.fraction() * unit_random());
        d.saturating_sub(cut).max(Duration::from_millis(1))
    }
}

/// A uniform draw from `[0, 1)`: a thread's own SplitMix64, seeded from
/// the OS once per thread (not for secrets; for spreading lifetimes).
fn unit_random() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            if getrandom::fill(&mut seed).is_err() {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                seed = (nanos ^ u64::from(std::process::id())).to_le_bytes();
            }
            u64::from_le_bytes(seed)
        });
    }
    let x = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    });
    (x >> 11) as f64 / (1u64 << 53) as f64
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
    /// This timeout, with each entry's lifetime drawn from
    /// `[timeout·(1 − fraction), timeout]` ([Jitter](self#jitter));
    /// `fraction` 0 turns a cache's default jitter off. [`Timeout::Never`]
    /// and [`Timeout::NoCache`] are returned as they are.
    ///
    /// # Panics
    ///
    /// Unless `0 <= fraction < 1` ([`Jitter::new`]).
    pub fn jitter(self, fraction: f64) -> Timeout {
        let j =
            Jitter::new(fraction).unwrap_or_else(|e| panic!("Timeout::jitter({fraction}): {e}"));
        match self {
            Timeout::Default => Timeout::Jittered(None, j),
            Timeout::After(d) if !d.is_zero() => Timeout::Jittered(Some(d), j),
            Timeout::Jittered(d, _) => Timeout::Jittered(d, j),
            t => t,
        }
    }

    /// The jitter this timeout sets, if it sets one.
    pub fn jitter_fraction(self) -> Option<f64> {
        match self {
            Timeout::Jittered(_, j) => Some(j.fraction()),
            _ => None,
        }
    }

    /// Resolves [`Timeout::Default`] against the cache's default. The result
    /// is `None` for "do not cache", `Some(None)` for "never expire" and
    /// `Some(Some(d))` for an expiry (the timeout itself, before any
    /// jitter: see [`Timeout::lifetime`]).
    pub(crate) fn resolve(self, default: Timeout) -> Option<Option<Duration>> {
        let t = match self {
            Timeout::Default | Timeout::Jittered(None, _) => default,
            Timeout::Jittered(Some(d), _) => Timeout::After(d),
            t => t,
        };
        match t {
            Timeout::Default | Timeout::Never => Some(None),
            Timeout::NoCache => None,
            Timeout::After(d) | Timeout::Jittered(Some(d), _) if d.is_zero() => None,
            Timeout::After(d) | Timeout::Jittered(Some(d), _) => Some(Some(d)),
            Timeout::Jittered(None, _) => Some(None),
        }
    }

    /// The lifetime of one entry written now: [`Timeout::resolve`], spread
    /// by this timeout's jitter, else the default timeout's, else
    /// `jitter` (the cache's).
    pub(crate) fn lifetime(self, default: Timeout, jitter: Jitter) -> Option<Option<Duration>> {
        let j = match (self, default) {
            (Timeout::Jittered(_, j), _) => j,
            (Timeout::Default, Timeout::Jittered(_, j)) => j,
            _ => jitter,
        };
        self.resolve(default).map(|t| t.map(|d| j.spread(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_within_its_bounds() {
        let t = Timeout::from(Duration::from_secs(60)).jitter(0.1);
        let lives: Vec<Duration> = (0..10_000)
            .map(|_| t.lifetime(Timeout::Never, Jitter::NONE).unwrap().unwrap())
            .collect();
        let (lo, hi) = (lives.iter().min().unwrap(), lives.iter().max().unwrap());
        assert!(
            *lo >= Duration::from_secs(54) && *hi <= Duration::from_secs(60),
            "{lo:?} {hi:?}"
        );
        assert!(
            *hi - *lo > Duration::from_secs(5),
            "spread over the range: {lo:?} {hi:?}"
        );
        // Roughly uniform: each tenth of the range gets about a tenth.
        let mut bins = [0u32; 10];
        for l in &lives {
            let at = (l.as_secs_f64() - 54.0) / 0.6;
            bins[(at as usize).min(9)] += 1;
        }
        assert!(bins.iter().all(|&b| (700..1300).contains(&b)), "{bins:?}");
    }

    #[test]
    fn jitter_defaults_and_overrides() {
        let cache = Jitter::new(0.5).unwrap();
        let d = Duration::from_secs(100);
        // A plain timeout takes the cache's jitter...
        let plain = Timeout::from(d)
            .lifetime(Timeout::Never, cache)
            .unwrap()
            .unwrap();
        assert!(plain >= Duration::from_secs(50) && plain <= d);
        // ...an explicit 0 turns it off...
        let none = Timeout::from(d).jitter(0.0).lifetime(Timeout::Never, cache);
        assert_eq!(none, Some(Some(d)));
        // ...and the default timeout's own jitter wins for Default.
        let def = Timeout::from(d).jitter(0.0);
        assert_eq!(Timeout::Default.lifetime(def, cache), Some(Some(d)));
        assert_eq!(
            Timeout::Default
                .jitter(0.0)
                .lifetime(Timeout::from(d), cache),
            Some(Some(d))
        );
        // Nothing to spread.
        assert_eq!(Timeout::Never.jitter(0.3), Timeout::Never);
        assert_eq!(
            Timeout::NoCache.jitter(0.3).lifetime(Timeout::Never, cache),
            None
        );
        assert_eq!(Timeout::Never.lifetime(Timeout::Never, cache), Some(None));
        assert!(
            Jitter::new(1.0).is_err()
                && Jitter::new(-0.1).is_err()
                && Jitter::new(f64::NAN).is_err()
        );
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
