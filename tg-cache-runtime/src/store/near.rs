//! The near cache: a bounded in-process layer of decoded, typed values in
//! front of the Redis store, kept coherent by Redis client-side tracking
//! (`tracking.rs`). One more [`Store`]: it wraps [`RedisStore`] and
//! changes nothing above it.
//!
//! * **Hits** are the local store's: [`Store::peek`] is a moka lookup, an
//!   epoch compare and an `Arc` clone; no decoding, no await point.
//! * **What it holds comes from tracked reads only.** A miss reads Redis
//!   with plain commands (`GETRANGE` of the value, of its family's epoch key
//!   unless the connection knows it (`epochs.rs`), and `PTTL`; a value over
//!   1 MiB is then read whole by a
//!   size-checked read-only script) on a connection with `CLIENT TRACKING
//!   ON`, so the
//!   server will push an invalidation for each of those keys when any
//!   client changes it (a write, delete, expiry, eviction; a family
//!   invalidation changes the epoch key). The value is kept after the
//!   caller decoded it ([`Ticket::keep`], the one hook in `cache.rs`).
//! * **The read/invalidate race.** An invalidation can be handled (in the
//!   connection's reader task, in wire order) before the reply it follows
//!   reaches its caller. So a read first takes a *pending ticket* for its
//!   key; every invalidation of the key, every own write of it and every
//!   flush removes the key's ticket; and a reply is kept only if its ticket
//!   is still there, checked and inserted under the lock invalidations
//!   take. Redis' client-side-caching documentation calls this the
//!   placeholder technique. Tracking's generation (it changes whenever
//!   tracking may have lapsed: a connection lost, a flush) is checked too.
//! * **Own writes are immediate**: every write, delete, fill or
//!   invalidation through this store forgets the keys it touched when it
//!   returns, without waiting for the server's push.
//! * **Family invalidation is O(1)**: a push of a family's epoch key (or an
//!   own `bump`) advances the family's local epoch; entries of older epochs
//!   are never served again.
//! * **Loss of tracking empties it**: a connection lost, replaced or
//!   `CLIENT KILL`ed, a `FLUSHDB`/`FLUSHALL` (a null invalidation), and
//!   every pending ticket is void.
//! * **Expiry** is the value's own (its `PTTL`, read with it), and at most
//!   [`LAST_RESORT_MS`] (a minute) after the read.
//! * **On a Redis Cluster** its reads go to the tracked connections of each
//!   key's primary (`primaries.rs`); a change of the topology drops it.
//! * **One type per entry**: it keeps the value as its first reader decoded
//!   it. A reader of another type gets that value's JSON re-encoded (as from
//!   the local store): a type that drops fields it does not know loses them
//!   for the other type's readers until the entry goes.

use super::Write;
use super::redis::RedisStore;
use super::tracking::{Listener, Tracking, Watch};
use super::{
    AnyValue, Encoder, Family, Filled, Incr, Lease, LeaseMode, LeaseOutcome, Slot, Store,
    StoreFuture, Stored, Value,
};
use crate::error::Result;
use crate::generation::LocalEpochs;
use crate::stats::HotCounter;
use crate::timeout::Ttl;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use super::local::clock;

/// Segments of the entry map: each has its own read-recording channel and
/// maintenance, so concurrent hits on different threads rarely share one
/// (measured: 1.5M near hits/s unsegmented, 2.0M with 16 segments, 64
/// tasks on 2 cores). A power of two (moka rounds up to one), with at
/// least 1024 entries each, so a small near cache keeps one segment and
/// its exact LRU order. Eviction is per segment: a segment whose keys hash
/// unevenly evicts while the whole holds a little less than its bound.
fn segments(max_entries: u64) -> u64 {
    const MAX_SEGMENTS: u64 = 16;
    const MIN_ENTRIES_PER_SEGMENT: u64 = 1024;
    let n = (max_entries / MIN_ENTRIES_PER_SEGMENT).clamp(1, MAX_SEGMENTS);
    1 << n.ilog2()
}

/// The longest an entry is kept, whatever its value's own lifetime: a last
/// resort, should an invalidation ever be missed (a server's tracking
/// table is lost in a failover, `primaries.rs`), bounding how long it
/// could be served. An entry read again after it costs one Redis read a
/// minute.
const LAST_RESORT_MS: u64 = 60_000;

/// Counters of one key family's near-cache entries.
#[derive(Debug, Default)]
pub(crate) struct NearFamily {
    pub(crate) hits: HotCounter,
    pub(crate) misses: HotCounter,
    /// Entries dropped by invalidations (pushed or own), and family-wide
    /// invalidations.
    pub(crate) invalidations: AtomicU64,
}

/// The families counted separately; others count as `other`.
const MAX_FAMILIES: usize = 1000;

#[derive(Clone)]
struct Entry {
    value: AnyValue,
    json: Encoder,
    /// Deadline in [`clock`] milliseconds.
    expires_at: Option<u64>,
    /// The family's local epoch when the read that fetched it was sent.
    epoch: u64,
    family: Arc<NearFamily>,
}

impl Entry {
    #[inline]
    fn live(&self, epoch: u64) -> bool {
        self.epoch == epoch && self.expires_at.is_none_or(|t| t > clock::recent())
    }
}

/// The near cache's state, shared with its tickets and told of
/// invalidations by [`Tracking`].
pub(crate) struct Near {
    entries: moka::sync::SegmentedCache<String, Entry>,
    epochs: LocalEpochs,
    /// Family names by epoch key, for the families read so far.
    epoch_keys: RwLock<HashMap<String, String>>,
    families: RwLock<HashMap<String, Arc<NearFamily>>>,
    /// The pending ticket of each key being read. Invalidations remove
    /// them; inserts check them; both under this lock.
    pending: Mutex<HashMap<String, u64>>,
    next_ticket: AtomicU64,
    tracking: Arc<Tracking>,
    /// How its store names internal keys (a cluster's epochs are tagged).
    names: super::names::Names,
    /// Whole-cache drops (flushes, lost connections).
    flushes: AtomicU64,
    /// Test support (`CacheConfig::testing_near_ignores_pushes`).
    ignores_pushes: bool,
    /// Test hook: keep replies whatever happened since their read (the
    /// guard broken on purpose, to show the tests catch it).
    #[cfg(feature = "test-support")]
    pub(crate) unguarded: std::sync::atomic::AtomicBool,
}

/// The right to keep the value one read fetched, taken before the read was
/// sent (module docs).
pub(crate) struct Ticket {
    near: Arc<Near>,
    key: String,
    id: u64,
    generation: u64,
    epoch: u64,
    family: Arc<NearFamily>,
    expires_at: Option<u64>,
    /// Whether the reply came with a lifetime (else it is not kept).
    timed: bool,
}

impl Ticket {
    /// Keeps `value`, just decoded from this ticket's reply, unless the key
    /// was invalidated (or tracking lapsed) since the read was sent.
    pub(crate) fn keep<T: crate::CacheValue>(mut self, value: &T) {
        if !self.timed {
            return;
        }
        // Made before the lock that every invalidation takes; only the
        // check and the insert are under it.
        let entry = Entry {
            value: value.to_any(),
            json: value.encoder(),
            expires_at: self.expires_at,
            epoch: self.epoch,
            family: self.family.clone(),
        };
        let near = self.near.clone();
        let mut pending = near.pending();
        #[cfg(feature = "test-support")]
        let unguarded = near.unguarded.load(Relaxed);
        #[cfg(not(feature = "test-support"))]
        let unguarded = false;
        let ours = pending.get(&self.key) == Some(&self.id);
        if !unguarded && (!ours || near.tracking.generation() != self.generation) {
            return;
        }
        if ours {
            pending.remove(&self.key);
        }
        self.id = 0;
        near.entries.insert(std::mem::take(&mut self.key), entry);
    }

    fn lifetime(&mut self, ttl: Option<Ttl>) {
        self.timed = true;
        self.expires_at = match ttl {
            Some(ttl) => Some(deadline(ttl, clock::now())),
            None => {
                self.timed = false;
                None
            }
        };
    }
}

/// When an entry read at `now` (in [`clock`] milliseconds) with Redis
/// lifetime `ttl` expires: with its value, and never later than
/// [`LAST_RESORT_MS`] after its read.
fn deadline(ttl: Ttl, now: u64) -> u64 {
    let ms = match ttl {
        Ttl::Forever => u64::MAX,
        Ttl::Remaining(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    now.saturating_add(ms.min(LAST_RESORT_MS))
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        let mut pending = self.near.pending();
        if pending.get(&self.key) == Some(&self.id) {
            pending.remove(&self.key);
        }
    }
}

impl Near {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn family(&self, slot: &Slot) -> Arc<NearFamily> {
        let name = slot.family.as_ref().map_or("other", |f| f.name.as_str());
        crate::stats::shared_entry(&self.families, name, |map| {
            if map.len() >= MAX_FAMILIES && !map.contains_key(name) {
                "other"
            } else {
                name
            }
        })
    }

    fn epoch(&self, slot: &Slot) -> u64 {
        self.epochs
            .current(slot.family.as_ref().map(|f| f.name.as_str()))
    }

    /// The entry at `key` if it is live in `epoch`, its hit counted: the
    /// one lookup of both hit paths ([`Store::peek`] and reads).
    #[inline]
    fn hit(&self, key: &str, epoch: u64) -> Option<Entry> {
        let e = self.entries.get(key)?;
        if !e.live(epoch) {
            return None;
        }
        e.family.hits.bump();
        Some(e)
    }

    /// The live entry at `slot`, counted.
    fn typed(&self, slot: &Slot) -> Option<Stored> {
        let e = self.hit(&slot.key, self.epoch(slot))?;
        Some(Stored::Typed(e.value, e.json))
    }

    /// A ticket for a read of `slot` about to be sent.
    fn begin(self: &Arc<Self>, slot: &Slot) -> Ticket {
        if let Some(f) = &slot.family {
            let known = self
                .epoch_keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&f.epoch_key);
            if !known {
                self.epoch_keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(f.epoch_key.clone(), f.name.clone());
            }
        }
        let family = self.family(slot);
        family.misses.bump();
        let id = self.next_ticket.fetch_add(1, Relaxed) + 1;
        // Generation and epoch first: a lapse or a family invalidation
        // from here on voids what this read brings.
        let generation = self.tracking.generation();
        let epoch = self.epoch(slot);
        self.pending().insert(slot.key.clone(), id);
        Ticket {
            near: self.clone(),
            key: slot.key.clone(),
            id,
            generation,
            epoch,
            family,
            expires_at: None,
            timed: false,
        }
    }

    /// Drops `key`'s entry and voids its pending read.
    fn forget(&self, key: &str) {
        let mut pending = self.pending();
        pending.remove(key);
        if let Some(e) = self.entries.remove(key) {
            e.family.invalidations.fetch_add(1, Relaxed);
        }
    }

    /// Drops the entries and pending reads of every key `pattern` matches.
    fn forget_pattern(&self, pattern: &str) {
        if pattern == "*" {
            return self.forget_all();
        }
        let mut pending = self.pending();
        pending.retain(|k, _| !crate::key::glob_match(pattern, k));
        let pattern = pattern.to_owned();
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| crate::key::glob_match(&pattern, k))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            if let Some(e) = self.entries.remove(k.as_str()) {
                e.family.invalidations.fetch_add(1, Relaxed);
            }
        }
    }

    /// Drops everything: entries and pending reads.
    fn forget_all(&self) {
        let mut pending = self.pending();
        pending.clear();
        self.entries.invalidate_all();
        self.flushes.fetch_add(1, Relaxed);
    }

    /// A family invalidation: its entries are never served again.
    fn forget_family(&self, name: &str) {
        self.epochs.bump(name);
        if let Some(f) = self
            .families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            f.invalidations.fetch_add(1, Relaxed);
        }
    }
}

impl Listener for Near {
    fn invalidated(&self, key: &[u8]) {
        if self.ignores_pushes {
            return;
        }
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let family = self
            .epoch_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let family = family.or_else(|| {
            // On a cluster, a family has an epoch in each slot it has keys
            // in (`names.rs`): each is its family's epoch.
            let untagged = self.names.untagged(key)?;
            self.epoch_keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(untagged)
                .cloned()
        });
        if let Some(name) = family {
            self.forget_family(&name);
        }
        self.forget(key);
    }

    fn flushed(&self) {
        self.forget_all();
    }
}

/// The Redis store with a near cache in front (module docs).
pub(crate) struct NearStore {
    inner: Arc<RedisStore>,
    near: Arc<Near>,
}

impl NearStore {
    pub(crate) fn new(inner: Arc<RedisStore>, max_entries: u64, ignores_pushes: bool) -> Self {
        clock::start();
        let tracking = inner.tracking().clone();
        let segments = segments(max_entries);
        let near = Arc::new(Near {
            // Each segment holds `max_entries / segments`: never more than
            // `max_entries` in all.
            entries: moka::sync::SegmentedCache::builder(segments as usize)
                .max_capacity(max_entries / segments * segments)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            epochs: LocalEpochs::default(),
            epoch_keys: RwLock::default(),
            families: RwLock::default(),
            pending: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            tracking: tracking.clone(),
            names: inner.names(),
            flushes: AtomicU64::new(0),
            ignores_pushes,
            #[cfg(feature = "test-support")]
            unguarded: std::sync::atomic::AtomicBool::new(
                std::env::var_os(crate::testing::BREAK_NEAR_GUARD_VAR).is_some(),
            ),
        });
        // A weak subscription, alive as long as this store.
        let listener: std::sync::Weak<Near> = Arc::downgrade(&near);
        tracking.subscribe(listener);
        Self { inner, near }
    }

    /// Tracked reads of `slots`, each reply with its ticket.
    async fn read(&self, slots: &[Slot]) -> Result<Vec<Option<Stored>>> {
        let mut out: Vec<Option<Stored>> = Vec::with_capacity(slots.len());
        let mut misses = Vec::new();
        let mut tickets = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            match self.near.typed(slot) {
                Some(hit) => out.push(Some(hit)),
                None => {
                    out.push(None);
                    tickets.push(self.near.begin(slot));
                    misses.push(i);
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let wanted: Vec<Slot> = misses.iter().map(|&i| slots[i].clone()).collect();
        let (values, ttls) = self.inner.read_tracked(&wanted).await?;
        let mut ttls = ttls.into_iter();
        for ((i, value), mut ticket) in misses.into_iter().zip(values).zip(tickets) {
            ticket.lifetime(ttls.next().flatten());
            out[i] = value.map(|v| match v {
                Stored::Bytes(b) => Stored::Tracked(b, ticket),
                other => other,
            });
        }
        Ok(out)
    }

    /// The counters of each family's near-cache entries, sorted by family.
    pub(crate) fn stats(&self) -> Vec<(String, crate::stats::NearStats)> {
        let mut v: Vec<_> = self
            .near
            .families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, f)| {
                (
                    name.clone(),
                    crate::stats::NearStats {
                        hits: f.hits.get(),
                        misses: f.misses.get(),
                        invalidations: f.invalidations.load(Relaxed),
                        flushes: self.near.flushes.load(Relaxed),
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Runs `op`, then forgets `keys` (whatever the outcome: a failed
    /// write may have been applied).
    async fn forgetting<'a, T>(
        &'a self,
        keys: impl Iterator<Item = &'a str>,
        op: StoreFuture<'a, T>,
    ) -> Result<T> {
        let r = op.await;
        for k in keys {
            self.near.forget(k);
        }
        r
    }
}

impl Store for NearStore {
    #[inline]
    fn peek(&self, key: &str, epoch: u64) -> Option<AnyValue> {
        self.near.hit(key, epoch).map(|e| e.value)
    }

    fn epoch_handle(&self, family: &str) -> Option<Arc<AtomicU64>> {
        Some(self.near.epochs.handle(family))
    }

    fn renew_every(&self) -> Option<Duration> {
        self.inner.renew_every()
    }

    fn near_stats(&self) -> Option<Vec<(String, crate::stats::NearStats)>> {
        Some(self.stats())
    }

    fn len(&self) -> Option<u64> {
        self.near.entries.run_pending_tasks();
        Some(self.near.entries.entry_count())
    }

    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move { Ok(self.read(std::slice::from_ref(slot)).await?.pop().flatten()) })
    }

    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        Box::pin(self.read(slots))
    }

    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.set(slot, value, ttl),
        ))
    }

    fn set_many<'a>(&'a self, items: &'a [Write<'a>]) -> StoreFuture<'a, ()> {
        Box::pin(self.forgetting(
            items.iter().map(|w| w.slot.key.as_str()),
            self.inner.set_many(items),
        ))
    }

    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.add(slot, value, ttl),
        ))
    }

    fn lease<'a>(
        &'a self,
        slot: &'a Slot,
        token: &'a str,
        mode: LeaseMode,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.lease(slot, token, mode, ttl),
        ))
    }

    fn renew<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        self.inner.renew(slot, lease)
    }

    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
        lease: &'a Lease,
    ) -> StoreFuture<'a, Filled> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.fill(slot, value, ttl, lease),
        ))
    }

    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.release(slot, lease),
        ))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, usize> {
        Box::pin(self.forgetting(keys.iter().map(String::as_str), self.inner.delete(keys)))
    }

    fn scan<'a>(
        &'a self,
        pattern: &'a str,
        at: super::ScanAt,
    ) -> StoreFuture<'a, (Vec<String>, Option<super::ScanAt>)> {
        self.inner.scan(pattern, at)
    }

    fn raw_connection<'a>(&'a self) -> StoreFuture<'a, Option<crate::RedisConnection>> {
        self.inner.raw_connection()
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let r = self.inner.delete_pattern(pattern).await;
            self.near.forget_pattern(pattern);
            r
        })
    }

    fn clear<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r = self.inner.clear(pattern).await;
            // Epoch keys under the pattern are removed too.
            self.near.forget_all();
            r
        })
    }

    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r = self.inner.flush().await;
            self.near.forget_all();
            r
        })
    }

    fn bump<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r = self.inner.bump(family).await;
            self.near.forget_family(&family.name);
            r
        })
    }

    fn incr<'a>(&'a self, slot: &'a Slot, delta: i128) -> StoreFuture<'a, Incr> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.incr(slot, delta),
        ))
    }

    fn touch<'a>(&'a self, slot: &'a Slot, ttl: Option<Duration>) -> StoreFuture<'a, bool> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.touch(slot, ttl),
        ))
    }

    fn ttl<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Ttl>> {
        self.inner.ttl(slot)
    }

    fn ping<'a>(&'a self) -> StoreFuture<'a, ()> {
        self.inner.ping()
    }

    fn ping_for<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, ()> {
        self.inner.ping_for(slot)
    }

    fn watch(&self, slot: &Slot) -> Option<Watch> {
        self.inner.watch(slot)
    }

    fn drop_oversized<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, bool> {
        Box::pin(self.forgetting(
            std::iter::once(slot.key.as_str()),
            self.inner.drop_oversized(slot),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_its_value_and_never_over_a_minute() {
        let now = 1_000;
        assert_eq!(
            deadline(Ttl::Remaining(Duration::from_secs(10)), now),
            11_000
        );
        assert_eq!(deadline(Ttl::Remaining(Duration::ZERO), now), now);
        assert_eq!(
            deadline(Ttl::Remaining(Duration::from_secs(7200)), now),
            now + LAST_RESORT_MS
        );
        assert_eq!(deadline(Ttl::Forever, now), now + LAST_RESORT_MS);
        assert_eq!(deadline(Ttl::Forever, u64::MAX - 1), u64::MAX);
    }

    #[test]
    fn a_small_near_cache_keeps_one_segment() {
        assert_eq!(segments(100), 1);
        assert_eq!(segments(10_000), 8);
        assert_eq!(segments(1_000_000), 16);
    }
}
