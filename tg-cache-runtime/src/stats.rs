//! Hit, miss and error counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            sets: self.sets.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
        }
    }
}

/// A snapshot of one cache's counters since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found a value.
    pub hits: u64,
    /// Lookups that found nothing (including undecodable values).
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Keys removed by `delete`, `delete_many`, `delete_pattern`.
    pub deletes: u64,
    /// Store failures (Redis unreachable, timeouts, refused commands).
    pub errors: u64,
    /// Cached values that could not be decoded (corrupt, foreign or of
    /// another type) and were treated as misses.
    pub decode_errors: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}
