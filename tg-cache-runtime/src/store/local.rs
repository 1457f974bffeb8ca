//! The local in-memory store (moka): bounded by `max_entries` with
//! least-recently-used eviction (as Django's `LocMemCache`), per-entry
//! expiry, per-family epochs, no serialization. Its leases live in one
//! small map whose lock orders every fill against every invalidation; they
//! follow the rules of `lease.rs` (modes, co-holders), so the protocol
//! behaves the same on every store.

use super::Write;
use super::{
    AnyValue, Encoder, Family, Filled, Incr, Lease, LeaseMode, LeaseOutcome, Slot, Store,
    StoreFuture, Stored, Value, encode_any, ready,
};
use crate::error::{Error, Result};
use crate::generation::{Epoch, LocalEpochs};
use crate::key::glob_match;
use crate::lease::{Holders, MAX_HOLDERS};
use crate::timeout::Ttl;
use moka::ops::compute::Op;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// An entry, its deadline (milliseconds of [`clock`]) and the generation of
/// its key family when it was written. Expiry and generation are checked on
/// read against a coarse clock (an atomic load; moka's own per-entry expiry
/// costs about 27 ns more per hit). Expired and outdated entries are swept
/// out in moka's background maintenance (see [`LocalStore::sweep`]), so
/// they do not count against the size bound.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: AnyValue,
    /// The value's JSON encoder (reads as another type, `incr`).
    pub(crate) json: Encoder,
    pub(crate) expires_at: Option<u64>,
    pub(crate) generation: u64,
}

impl Entry {
    #[inline]
    fn live(&self, generation: u64) -> bool {
        self.generation == generation && self.expires_at.is_none_or(|t| t > clock::recent())
    }
}

/// tg-cache's own coarse clock: milliseconds since the first local store
/// was made, refreshed by a tg-cache thread every [`clock::TICK`]. The hit
/// path reads it with one atomic load. It belongs to tg-cache alone: no
/// other crate can stop or freeze it (a global clock shared with other
/// crates, such as quanta's `Instant::recent`, froze when another crate's
/// upkeep thread was dropped).
pub(crate) mod clock {
    use super::*;

    /// How often the coarse clock is refreshed: an entry may be served up
    /// to this long after its deadline.
    pub(crate) const TICK: Duration = Duration::from_millis(10);

    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    static RECENT: AtomicU64 = AtomicU64::new(0);

    /// The precise time, in milliseconds since the clock started.
    pub(crate) fn now() -> u64 {
        let now = u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX);
        RECENT.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The coarse time: at most [`TICK`] behind [`now`].
    #[inline]
    pub(crate) fn recent() -> u64 {
        RECENT.load(Ordering::Relaxed)
    }

    /// Starts the refreshing thread (once per process).
    pub(crate) fn start() {
        static STARTED: Once = Once::new();
        STARTED.call_once(|| {
            now();
            let spawned = std::thread::Builder::new()
                .name("tg-cache-clock".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(TICK);
                        now();
                    }
                });
            if let Err(e) = spawned {
                // Writes still advance the clock; expiry is coarser.
                tracing::error!(error = %e, "tg-cache could not start its clock thread; local expiry is only checked as of the last write");
            }
        });
    }
}

/// A fill in progress: its holders and the family epoch it was taken in.
struct LocalLease {
    tokens: Vec<String>,
    epoch: u64,
}

pub(crate) struct LocalStore {
    cache: moka::sync::Cache<String, Entry>,
    epochs: LocalEpochs,
    /// Fills in progress. Every write and invalidation takes this lock, so
    /// a fill's check-and-store is atomic against them.
    leases: Mutex<HashMap<String, LocalLease>>,
    /// The size bound.
    max_entries: u64,
    /// The largest value, as JSON bytes.
    max_value_bytes: usize,
    /// When a sweep was last scheduled by a write or a bump ([`clock`] ms + 1).
    last_sweep: AtomicU64,
}

/// Writes and bumps schedule a sweep at most this often.
const SWEEP_EVERY_MS: u64 = 1000;

/// Whether the entry at `key` is dead: expired, or of an older generation
/// than its family's (`epochs`: the bumped families): never read again,
/// only taking room. A family's entries are `<family>` and `<family>:...`.
fn dead(epochs: &HashMap<String, u64>, key: &str, e: &Entry) -> bool {
    if e.expires_at.is_some_and(|t| t <= clock::recent()) {
        return true;
    }
    !epochs.is_empty()
        && key
            .match_indices(':')
            .map(|(i, _)| &key[..i])
            .chain(std::iter::once(key))
            // `<`, not `!=`: an entry written after the snapshot may
            // already have a newer epoch than it.
            .any(|family| epochs.get(family).is_some_and(|g| e.generation < *g))
}

fn deadline(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        clock::now().saturating_add(ms)
    })
}

/// Refuses, as a byte store would, a value JSON cannot carry
/// ([`crate::parity`]) or whose JSON is over `max` bytes: one serialization
/// into a counting sink, on writes only.
pub(crate) fn check(slot: &Slot, value: &dyn Value, max: usize) -> Result<()> {
    let bytes = value.check().map_err(|source| Error::Encode {
        key: slot.key.clone(),
        source,
    })?;
    if bytes > max {
        return Err(Error::ValueTooLarge {
            key: slot.key.clone(),
            bytes,
            max,
        });
    }
    Ok(())
}

/// The integer a value holds, as a byte store reads it: its JSON text.
fn as_i64(v: &(dyn Any + Send + Sync), json: Encoder) -> Option<i64> {
    macro_rules! ints {
        ($($t:ty),*) => {$(
            if let Some(n) = v.downcast_ref::<$t>() {
                return i64::try_from(*n).ok();
            }
        )*};
    }
    ints!(
        i64, i32, u32, u64, usize, isize, i16, u16, i8, u8, i128, u128
    );
    let text = json(v).ok()?;
    let text = std::str::from_utf8(&text).ok()?;
    // JSON integers only: no `+`, no fraction, no exponent.
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

fn family_name(slot: &Slot) -> Option<&str> {
    slot.family.as_ref().map(|f| f.name.as_str())
}

impl LocalStore {
    pub(crate) fn new(max_entries: u64, max_value_bytes: usize) -> Self {
        clock::start();
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                // Least-recently-used eviction admits every new entry: a
                // value just set is readable (moka's default policy may
                // refuse a new key when the cache is full).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                // For sweeps (an atomic load per read when none is pending).
                .support_invalidation_closures()
                .build(),
            epochs: LocalEpochs::default(),
            leases: Mutex::new(HashMap::new()),
            max_entries,
            max_value_bytes,
            last_sweep: AtomicU64::new(0),
        }
    }

    fn check(&self, slot: &Slot, value: &dyn Value) -> Result<()> {
        check(slot, value, self.max_value_bytes)
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, LocalLease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn epoch(&self, slot: &Slot) -> u64 {
        self.epochs.current(family_name(slot))
    }

    /// The live value at `key` of epoch `epoch`.
    #[inline]
    fn live(&self, key: &str, epoch: u64) -> Option<AnyValue> {
        let e = self.cache.get(key)?;
        e.live(epoch).then_some(e.value)
    }

    fn insert(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>, epoch: u64) {
        // A full store: have dead entries make room before live ones are
        // evicted (the sweep runs before the size bound in moka's
        // maintenance).
        if self.cache.entry_count() >= self.max_entries {
            self.sweep(false);
        }
        self.cache.insert(
            slot.key.clone(),
            Entry {
                value: value.to_any(),
                json: value.encoder(),
                expires_at: deadline(ttl),
                generation: epoch,
            },
        );
        self.enforce_bound();
    }

    /// Runs moka's maintenance now, which applies the recorded reads and
    /// writes and then the bound, evicting the least recently used entries:
    /// so no write returns with the store over its bound, and the order is
    /// recency (a read recorded before moka applied its entry's insert
    /// would be dropped). It costs about 0.2 µs per insert; hits are
    /// untouched.
    fn enforce_bound(&self) {
        self.cache.run_pending_tasks();
    }

    /// Has moka drop, in its background maintenance, every entry that is
    /// [dead] (expired, or outdated by a bump), so that such
    /// entries do not count against the bound. One sweep covers every entry
    /// written before it. Writes to a full store and bumps schedule one at
    /// most every [`SWEEP_EVERY_MS`] (`force`: now).
    fn sweep(&self, force: bool) {
        if !force {
            let now = clock::recent() + 1;
            let last = self.last_sweep.load(Ordering::Relaxed);
            if last != 0 && now < last + SWEEP_EVERY_MS {
                return;
            }
            if self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
        }
        // Epochs only grow: an entry outdated now stays outdated.
        let epochs = self.epochs.snapshot();
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |k, e| dead(&epochs, k, e))
        {
            tracing::debug!(error = %e, "could not schedule a sweep of dead entries");
        }
    }

    /// The live value at `key` of epoch `epoch`, with its encoder.
    fn stored(&self, key: &str, epoch: u64) -> Option<Stored> {
        let e = self.cache.get(key)?;
        e.live(epoch).then(|| Stored::Typed(e.value, e.json))
    }

    /// Removes `key`; returns whether a live entry (of any epoch) was there.
    fn remove(&self, key: &str) -> bool {
        match self.cache.remove(key) {
            Some(e) => e.expires_at.is_none_or(|t| t > clock::now()),
            None => false,
        }
    }

    fn set_now(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>) -> Result<()> {
        self.check(slot, value)?;
        let mut leases = self.leases();
        leases.remove(&slot.key);
        self.insert(slot, value, ttl, self.epoch(slot));
        Ok(())
    }

    /// Sets a new expiry on a live entry; returns whether it existed.
    fn touch_now(&self, slot: &Slot, ttl: Option<Duration>) -> bool {
        let epoch = self.epoch(slot);
        let mut found = false;
        self.cache
            .entry(slot.key.clone())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().live(epoch) => {
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

    /// Atomically adds `delta` to an integer entry, keeping its expiry. Any
    /// value whose JSON is an integer counts; the result is an `i64`.
    fn incr_now(&self, slot: &Slot, delta: i128) -> Incr {
        let epoch = self.epoch(slot);
        let mut out = Incr::Missing;
        self.cache
            .entry(slot.key.clone())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().live(epoch) => {
                    let e = e.into_value();
                    match as_i64(&*e.value, e.json)
                        .and_then(|v| i64::try_from(i128::from(v) + delta).ok())
                    {
                        Some(n) => {
                            out = Incr::Done(n);
                            Op::Put(Entry {
                                value: Arc::new(n),
                                json: encode_any::<i64>,
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

    fn ttl_now(&self, slot: &Slot) -> Option<Ttl> {
        let e = self.cache.get(&slot.key)?;
        if !e.live(self.epoch(slot)) {
            return None;
        }
        Some(match e.expires_at {
            None => Ttl::Forever,
            Some(t) => Ttl::Remaining(Duration::from_millis(t.saturating_sub(clock::now()))),
        })
    }

    fn delete_pattern_now(&self, pattern: &str) -> usize {
        let mut leases = self.leases();
        leases.retain(|k, _| !glob_match(pattern, k));
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| glob_match(pattern, k))
            .map(|(k, _)| k)
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
    }

    /// Whether the lease of `key` is held by `lease`'s holder, in an epoch
    /// that is still current.
    fn holds(&self, leases: &HashMap<String, LocalLease>, slot: &Slot, lease: &Lease) -> bool {
        leases.get(&slot.key).is_some_and(|l| {
            l.tokens.contains(&lease.token)
                && Epoch::Local(l.epoch) == lease.epoch
                && l.epoch == self.epoch(slot)
        })
    }
}

impl Store for LocalStore {
    #[inline]
    fn peek(&self, key: &str, epoch: u64) -> Option<AnyValue> {
        self.live(key, epoch)
    }

    fn epoch_handle(&self, family: &str) -> Option<Arc<AtomicU64>> {
        Some(self.epochs.handle(family))
    }

    fn len(&self) -> Option<u64> {
        self.sweep(true);
        self.cache.run_pending_tasks();
        Some(self.cache.entry_count())
    }

    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        ready(Ok(self.stored(&slot.key, self.epoch(slot))))
    }

    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        ready(Ok(slots
            .iter()
            .map(|s| self.stored(&s.key, self.epoch(s)))
            .collect()))
    }

    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        ready(self.set_now(slot, value, ttl))
    }

    fn set_many<'a>(&'a self, items: &'a [Write<'a>]) -> StoreFuture<'a, ()> {
        // All or nothing, as on Redis, whose pipeline encodes every value first.
        for w in items {
            if let Err(e) = self.check(&w.slot, w.value) {
                return ready(Err(e));
            }
        }
        for w in items {
            let mut leases = self.leases();
            leases.remove(&w.slot.key);
            self.insert(&w.slot, w.value, w.ttl, self.epoch(&w.slot));
        }
        ready(Ok(()))
    }

    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        if let Err(e) = self.check(slot, value) {
            return ready(Err(e));
        }
        let mut leases = self.leases();
        if self.live(&slot.key, self.epoch(slot)).is_some() {
            return ready(Ok(false));
        }
        leases.remove(&slot.key);
        self.insert(slot, value, ttl, self.epoch(slot));
        ready(Ok(true))
    }

    fn lease<'a>(
        &'a self,
        slot: &'a Slot,
        token: &'a str,
        mode: LeaseMode,
        _ttl: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome> {
        let mut leases = self.leases();
        let epoch = self.epoch(slot);
        if matches!(mode, LeaseMode::Fresh | LeaseMode::Join)
            && let Some(v) = self.stored(&slot.key, epoch)
        {
            return ready(Ok(LeaseOutcome::Found(v)));
        }
        let granted = Lease {
            token: token.to_owned(),
            epoch: Epoch::Local(epoch),
            refresh: mode == LeaseMode::Refresh,
        };
        if mode != LeaseMode::Refresh
            && let Some(held) = leases.get_mut(&slot.key)
            // A lease of an outdated epoch is dead: its fill is refused.
            && held.epoch == epoch
        {
            if mode == LeaseMode::Join && held.tokens.len() < MAX_HOLDERS {
                if !held.tokens.iter().any(|t| t == token) {
                    held.tokens.push(token.to_owned());
                }
                return ready(Ok(LeaseOutcome::Granted(granted)));
            }
            return ready(Ok(LeaseOutcome::Busy(Holders::new(held.tokens.clone()))));
        }
        leases.insert(
            slot.key.clone(),
            LocalLease {
                tokens: vec![token.to_owned()],
                epoch,
            },
        );
        ready(Ok(LeaseOutcome::Granted(granted)))
    }

    fn renew<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let leases = self.leases();
        ready(Ok(self.holds(&leases, slot, lease)))
    }

    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
        lease: &'a Lease,
    ) -> StoreFuture<'a, Filled> {
        // Not stored (the caller releases the lease and reports the error).
        if let Err(e) = self.check(slot, value) {
            return ready(Err(e));
        }
        let mut leases = self.leases();
        if !self.holds(&leases, slot, lease) {
            let epoch = self.epoch(slot);
            if leases
                .get(&slot.key)
                .is_some_and(|l| l.tokens.contains(&lease.token) && l.epoch != epoch)
            {
                leases.remove(&slot.key);
            }
            let kept = Epoch::Local(epoch) == lease.epoch && self.live(&slot.key, epoch).is_some();
            return ready(Ok(if kept { Filled::Kept } else { Filled::Lost }));
        }
        leases.remove(&slot.key);
        self.insert(slot, value, ttl, self.epoch(slot));
        ready(Ok(Filled::Stored))
    }

    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let mut leases = self.leases();
        let held = self.holds(&leases, slot, lease);
        if let Some(l) = leases.get_mut(&slot.key)
            && l.tokens.contains(&lease.token)
        {
            l.tokens.retain(|t| t != &lease.token);
            if l.tokens.is_empty() {
                leases.remove(&slot.key);
            }
        }
        ready(Ok(held))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, usize> {
        let mut leases = self.leases();
        for k in keys {
            leases.remove(k);
        }
        ready(Ok(keys.iter().filter(|k| self.remove(k)).count()))
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, usize> {
        ready(Ok(self.delete_pattern_now(pattern)))
    }

    fn scan<'a>(
        &'a self,
        pattern: &'a str,
        _: super::ScanAt,
    ) -> StoreFuture<'a, (Vec<String>, Option<super::ScanAt>)> {
        // Live entries only, as Redis' SCAN skips expired keys.
        let now = clock::now();
        let keys = self
            .cache
            .iter()
            .filter(|(k, e)| glob_match(pattern, k) && e.expires_at.is_none_or(|t| t > now))
            .map(|(k, _)| (*k).clone())
            .collect();
        ready(Ok((keys, None)))
    }

    fn clear<'a>(&'a self, _pattern: &'a str) -> StoreFuture<'a, ()> {
        // A local store belongs to one cache: everything in it is under
        // the cache's namespace.
        let mut leases = self.leases();
        leases.clear();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        ready(Ok(()))
    }

    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        self.clear("*")
    }

    fn bump<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()> {
        let mut leases = self.leases();
        let prefix = format!("{}:", family.name);
        leases.retain(|k, _| k != &family.name && !k.starts_with(&prefix));
        self.epochs.bump(&family.name);
        drop(leases);
        self.sweep(false);
        ready(Ok(()))
    }

    fn incr<'a>(&'a self, slot: &'a Slot, delta: i128) -> StoreFuture<'a, Incr> {
        ready(Ok(self.incr_now(slot, delta)))
    }

    fn touch<'a>(&'a self, slot: &'a Slot, ttl: Option<Duration>) -> StoreFuture<'a, bool> {
        ready(Ok(self.touch_now(slot, ttl)))
    }

    fn ttl<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Ttl>> {
        ready(Ok(self.ttl_now(slot)))
    }

    fn ping<'a>(&'a self) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
}
