//! The local in-memory store (moka): bounded, per-entry expiry, per-family
//! generations, no serialization.

use crate::key::glob_match;
use crate::timeout::Ttl;
use moka::ops::compute::Op;
// A TSC-based clock: the expiry check on the hit path costs a few
// nanoseconds instead of a clock_gettime call.
use quanta::Instant;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A value as the local store keeps it: shared, immutable, type-erased.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// An entry, its deadline and the generation of its key family when it was
/// written. Expiry is checked on read (moka's own per-entry expiry costs
/// about twice as much on the hit path); an entry of an older generation is
/// invisible. Expired and outdated entries are dropped by the size bound or
/// overwritten.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: AnyValue,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) generation: u64,
}

impl Entry {
    #[inline]
    fn live(&self, generation: u64) -> bool {
        self.generation == generation && self.expires_at.is_none_or(|t| t > recent())
    }
}

/// How often the clock read by the hit path is refreshed: an entry may be
/// served up to this long after its deadline.
const CLOCK_TICK: Duration = Duration::from_millis(10);

/// The time, read from a value a background thread refreshes every
/// [`CLOCK_TICK`] (an atomic load instead of a clock read on every hit).
#[inline]
fn recent() -> Instant {
    Instant::recent()
}

fn start_clock() {
    static UPKEEP: std::sync::OnceLock<Option<quanta::Handle>> = std::sync::OnceLock::new();
    // An error means another component already runs one: its clock is
    // just as good.
    UPKEEP.get_or_init(|| quanta::Upkeep::new(CLOCK_TICK).start().ok());
}

/// Outcome of an atomic increment.
pub(crate) enum Incr {
    Done(i64),
    Missing,
    NotAnInteger,
}

pub(crate) struct LocalStore {
    cache: moka::sync::Cache<String, Entry>,
    /// Current generation of each key family that was ever invalidated as a whole.
    generations: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|d| Instant::now().checked_add(d).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

impl LocalStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        start_clock();
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build(),
            generations: RwLock::new(HashMap::new()),
        }
    }

    /// The current generation of `family` (0 until it is first bumped).
    pub(crate) fn generation(&self, family: Option<&str>) -> u64 {
        let Some(family) = family else { return 0 };
        let map = self.generations.read().unwrap_or_else(|p| p.into_inner());
        map.get(family).map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// A handle on `family`'s generation, for hit paths that read it often.
    pub(crate) fn generation_handle(&self, family: &str) -> Arc<AtomicU64> {
        crate::stats::shared_entry(&self.generations, family, |_| family)
    }

    /// Makes every entry of `family` invisible, in O(1).
    pub(crate) fn bump(&self, family: &str) {
        self.generation_handle(family)
            .fetch_add(1, Ordering::AcqRel);
    }

    /// The live value at `key` of generation `generation`.
    #[inline]
    pub(crate) fn get(&self, key: &str, generation: u64) -> Option<AnyValue> {
        let e = self.cache.get(key)?;
        e.live(generation).then_some(e.value)
    }

    pub(crate) fn insert(
        &self,
        key: String,
        value: AnyValue,
        ttl: Option<Duration>,
        generation: u64,
    ) {
        self.cache.insert(
            key,
            Entry {
                value,
                expires_at: deadline(ttl),
                generation,
            },
        );
    }

    /// Inserts only if no live entry exists; returns whether it inserted.
    pub(crate) fn add(
        &self,
        key: String,
        value: AnyValue,
        ttl: Option<Duration>,
        generation: u64,
    ) -> bool {
        let mut inserted = false;
        self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(e) if e.value().live(generation) => Op::Nop,
            _ => {
                inserted = true;
                Op::Put(Entry {
                    value,
                    expires_at: deadline(ttl),
                    generation,
                })
            }
        });
        inserted
    }

    /// Removes `key`; returns whether a live entry (of any generation) was there.
    pub(crate) fn remove(&self, key: &str) -> bool {
        match self.cache.remove(key) {
            Some(e) => e.expires_at.is_none_or(|t| t > Instant::now()),
            None => false,
        }
    }

    pub(crate) fn contains(&self, key: &str, generation: u64) -> bool {
        self.get(key, generation).is_some()
    }

    /// Sets a new expiry on a live entry; returns whether it existed.
    pub(crate) fn touch(&self, key: &str, ttl: Option<Duration>, generation: u64) -> bool {
        let mut found = false;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().live(generation) => {
                    found = true;
                    let e = e.into_value();
                    Op::Put(Entry {
                        expires_at: deadline(ttl),
                        ..e
                    })
                }
                _ => Op::Nop,
            });
        found
    }

    /// Atomically adds `delta` to an integer entry, keeping its expiry.
    pub(crate) fn incr(&self, key: &str, delta: i64, generation: u64) -> Incr {
        let mut out = Incr::Missing;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().live(generation) => {
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
                                ..e
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

    pub(crate) fn ttl(&self, key: &str, generation: u64) -> Option<Ttl> {
        let e = self.cache.get(key)?;
        if !e.live(generation) {
            return None;
        }
        Some(match e.expires_at {
            None => Ttl::Forever,
            Some(t) => Ttl::Remaining(t.saturating_duration_since(Instant::now())),
        })
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
