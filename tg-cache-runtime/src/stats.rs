//! Hit, miss and error counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Threads that own a slot of every [`HotCounter`].
const OWNED_SLOTS: usize = 64;

/// One cache line per slot, so threads never write the same line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// A counter for the hit path: each of the first 64 live threads owns a slot
/// and bumps it with a plain load and store (no locked instruction, no cache
/// line shared with other cores); further threads share one atomic slot.
/// Exact: a slot has one writer, or is only written with `fetch_add`.
#[derive(Debug)]
pub(crate) struct HotCounter {
    slots: Box<[Slot]>,
}

impl Default for HotCounter {
    fn default() -> Self {
        Self {
            slots: (0..=OWNED_SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);
static FREE_THREAD_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// This thread's slot; returned to the free list when the thread exits.
struct ThreadSlot(usize);

impl ThreadSlot {
    fn new() -> Self {
        let free = FREE_THREAD_SLOTS.lock().ok().and_then(|mut f| f.pop());
        Self(free.unwrap_or_else(|| NEXT_THREAD_SLOT.fetch_add(1, Relaxed)))
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        if self.0 < OWNED_SLOTS
            && let Ok(mut f) = FREE_THREAD_SLOTS.lock()
        {
            f.push(self.0);
        }
    }
}

thread_local! {
    static THREAD_SLOT: ThreadSlot = ThreadSlot::new();
}

impl HotCounter {
    #[inline]
    pub(crate) fn bump(&self) {
        match THREAD_SLOT.try_with(|s| s.0) {
            Ok(i) if i < OWNED_SLOTS => {
                let slot = &self.slots[i].0;
                slot.store(slot.load(Relaxed) + 1, Relaxed);
            }
            _ => {
                self.slots[OWNED_SLOTS].0.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// A cache's counters. Hits and misses are kept per key family only (see
/// [`Families`]) and summed on read, so a hit bumps one counter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) fills_refused: AtomicU64,
    pub(crate) pickled: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, families: &Families) -> CacheStats {
        let (hits, misses) = families.totals();
        CacheStats {
            hits,
            misses,
            sets: self.sets.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            fills_refused: self.fills_refused.load(Relaxed),
            pickled: self.pickled.load(Relaxed),
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
    /// Values not written because their JSON is over `max_value_bytes`.
    pub too_large: u64,
    /// Computed values the fill guard refused to store, because an
    /// invalidation or another writer came first (they were still returned
    /// to their callers).
    pub fills_refused: u64,
    /// Values written by Python pickle (Django's default serializer) that
    /// were read as misses, never unpickled; also counted in
    /// `decode_errors`. Set django-redis' `SERIALIZER` to its
    /// `JSONSerializer` to share them.
    pub pickled: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// The near cache's counters of one key family
/// ([`crate::Cache::near_stats`]). Near hits are also counted as hits in
/// [`CacheStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NearStats {
    /// Lookups answered by the near cache (no Redis round trip).
    pub hits: u64,
    /// Lookups that read Redis.
    pub misses: u64,
    /// Entries dropped because their key changed (a push from Redis or a
    /// write of this process), and family-wide invalidations.
    pub invalidations: u64,
    /// Times the whole near cache was dropped (a `FLUSHDB`, a lost
    /// connection): the same for every family.
    pub flushes: u64,
}

/// Counters of one key family (see [`crate::key::family_of`]).
#[derive(Debug, Default)]
pub(crate) struct FamilyStats {
    pub(crate) hits: HotCounter,
    pub(crate) misses: HotCounter,
    pub(crate) errors: AtomicU64,
}

impl FamilyStats {
    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            errors: self.errors.load(Relaxed),
            ..CacheStats::default()
        }
    }
}

/// The families tracked separately; keys of further families count as `other`.
const MAX_FAMILIES: usize = 1000;

/// Per-family counters of one cache.
#[derive(Debug, Default)]
pub(crate) struct Families {
    map: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<FamilyStats>>>,
}

impl Families {
    /// The counters of `key`'s family (`other` for keys outside any family).
    pub(crate) fn of(&self, key: &str) -> std::sync::Arc<FamilyStats> {
        let family = crate::key::family_of(key).unwrap_or("other");
        if let Some(s) = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(family)
        {
            return s.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let family = if map.len() >= MAX_FAMILIES && !map.contains_key(family) {
            "other"
        } else {
            family
        };
        map.entry(family.to_owned()).or_default().clone()
    }

    /// Hits and misses over every family.
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .fold((0, 0), |(h, m), s| (h + s.hits.get(), m + s.misses.get()))
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, CacheStats)> {
        let mut v: Vec<(String, CacheStats)> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, s)| (k.clone(), s.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

type SharedMap<T> = std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<T>>>;

/// The shared entry of `name` in `map`, created on first use: a read lock
/// on the common path, the write lock only to insert. `insert_as` may pick
/// another name to insert under (given the map, under the write lock).
pub(crate) fn shared_entry<'n, T: Default>(
    map: &SharedMap<T>,
    name: &'n str,
    insert_as: impl FnOnce(&std::collections::HashMap<String, std::sync::Arc<T>>) -> &'n str,
) -> std::sync::Arc<T> {
    if let Some(v) = map.read().unwrap_or_else(|p| p.into_inner()).get(name) {
        return v.clone();
    }
    let mut map = map.write().unwrap_or_else(|p| p.into_inner());
    let name = insert_as(&map);
    map.entry(name.to_owned()).or_default().clone()
}
