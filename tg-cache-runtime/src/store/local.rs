//! The local in-memory store (moka): bounded, per-entry expiry, no serialization.

use crate::key::glob_match;
use crate::timeout::Ttl;
use moka::ops::compute::Op;
use std::any::Any;
use std::sync::Arc;
// A TSC-based clock: the expiry check on the hit path costs a few
// nanoseconds instead of a clock_gettime call.
use quanta::Instant;
use std::time::Duration;

/// A value as the local store keeps it: shared, immutable, type-erased.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// An entry and its deadline. Expiry is checked on read (moka's own
/// per-entry expiry costs about twice as much on the hit path); expired
/// entries are dropped by the size bound or overwritten.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: AnyValue,
    pub(crate) expires_at: Option<Instant>,
}

/// Outcome of an atomic increment.
pub(crate) enum Incr {
    Done(i64),
    Missing,
    NotAnInteger,
}

pub(crate) struct LocalStore {
    cache: moka::sync::Cache<String, Entry>,
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|d| Instant::now().checked_add(d).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

impl LocalStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build(),
        }
    }

    /// The live value at `key`.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<AnyValue> {
        let e = self.cache.get(key)?;
        match e.expires_at {
            Some(t) if t <= Instant::now() => None,
            _ => Some(e.value),
        }
    }

    pub(crate) fn insert(&self, key: String, value: AnyValue, ttl: Option<Duration>) {
        self.cache.insert(
            key,
            Entry {
                value,
                expires_at: deadline(ttl),
            },
        );
    }

    /// Inserts only if no live entry exists; returns whether it inserted.
    pub(crate) fn add(&self, key: String, value: AnyValue, ttl: Option<Duration>) -> bool {
        let mut inserted = false;
        self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(e) if e.value().expires_at.is_none_or(|t| t > Instant::now()) => Op::Nop,
            _ => {
                inserted = true;
                Op::Put(Entry {
                    value,
                    expires_at: deadline(ttl),
                })
            }
        });
        inserted
    }

    pub(crate) fn remove(&self, key: &str) -> bool {
        match self.cache.remove(key) {
            Some(e) => e.expires_at.is_none_or(|t| t > Instant::now()),
            None => false,
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a new expiry on a live entry; returns whether it existed.
    pub(crate) fn touch(&self, key: &str, ttl: Option<Duration>) -> bool {
        let mut found = false;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().expires_at.is_none_or(|t| t > Instant::now()) => {
                    found = true;
                    Op::Put(Entry {
                        value: e.into_value().value,
                        expires_at: deadline(ttl),
                    })
                }
                _ => Op::Nop,
            });
        found
    }

    /// Atomically adds `delta` to an integer entry, keeping its expiry.
    pub(crate) fn incr(&self, key: &str, delta: i64) -> Incr {
        let mut out = Incr::Missing;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().expires_at.is_none_or(|t| t > Instant::now()) => {
                    let e = e.into_value();
                    match e
                        .value
                        .downcast_ref::<i64>()
                        .and_then(|v| v.checked_add(delta))
                    {
                        Some(n) => {
                            out = Incr::Done(n);
                            Op::Put(Entry {
                                value: Arc::new(n),
                                expires_at: e.expires_at,
                            })
                        }
                        None => {
                            out = Incr::NotAnInteger;
                            Op::Nop
                        }
                    }
                }
                _ => Op::Nop,
            });
        out
    }

    pub(crate) fn ttl(&self, key: &str) -> Option<Ttl> {
        let e = self.cache.get(key)?;
        match e.expires_at {
            None => Some(Ttl::Forever),
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(Ttl::Remaining(left))
            }
        }
    }

    pub(crate) fn delete_pattern(&self, pattern: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| glob_match(pattern, k))
            .map(|(k, _)| k)
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Entries currently held (approximate while maintenance is pending).
    pub(crate) fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
