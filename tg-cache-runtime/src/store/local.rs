//! The local in-memory store (moka): bounded, per-entry expiry, per-family
//! epochs, no serialization. Its leases live in one small map whose lock
//! orders every fill against every invalidation.

use super::{
    AnyValue, Family, Filled, Incr, Lease, LeaseOutcome, Slot, Store, StoreFuture, Stored, Value,
    ready,
};
use crate::generation::{Epoch, LocalEpochs};
use crate::key::pattern_covers;
use crate::timeout::Ttl;
use moka::ops::compute::Op;
// A TSC-based clock: the expiry check on the hit path costs a few
// nanoseconds instead of a clock_gettime call.
use quanta::Instant;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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

pub(crate) struct LocalStore {
    cache: moka::sync::Cache<String, Entry>,
    epochs: LocalEpochs,
    /// Fills in progress: key -> lease token. Every write and invalidation
    /// takes this lock, so a fill's check-and-store is atomic against them.
    leases: Mutex<HashMap<String, String>>,
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|d| Instant::now().checked_add(d).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

fn family_name(slot: &Slot) -> Option<&str> {
    slot.family.as_ref().map(|f| f.name.as_str())
}

impl LocalStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        start_clock();
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build(),
            epochs: LocalEpochs::default(),
            leases: Mutex::new(HashMap::new()),
        }
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, String>> {
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

    fn insert(&self, key: String, value: AnyValue, ttl: Option<Duration>, epoch: u64) {
        self.cache.insert(
            key,
            Entry {
                value,
                expires_at: deadline(ttl),
                generation: epoch,
            },
        );
    }

    /// Removes `key`; returns whether a live entry (of any epoch) was there.
    fn remove(&self, key: &str) -> bool {
        match self.cache.remove(key) {
            Some(e) => e.expires_at.is_none_or(|t| t > Instant::now()),
            None => false,
        }
    }

    fn set_now(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>) {
        let mut leases = self.leases();
        leases.remove(&slot.key);
        self.insert(slot.key.clone(), value.to_any(), ttl, self.epoch(slot));
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

    /// Atomically adds `delta` to an integer entry, keeping its expiry.
    fn incr_now(&self, slot: &Slot, delta: i64) -> Incr {
        let epoch = self.epoch(slot);
        let mut out = Incr::Missing;
        self.cache
            .entry(slot.key.clone())
            .and_compute_with(|cur| match cur {
                Some(e) if e.value().live(epoch) => {
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

    fn ttl_now(&self, slot: &Slot) -> Option<Ttl> {
        let e = self.cache.get(&slot.key)?;
        if !e.live(self.epoch(slot)) {
            return None;
        }
        Some(match e.expires_at {
            None => Ttl::Forever,
            Some(t) => Ttl::Remaining(t.saturating_duration_since(Instant::now())),
        })
    }

    fn delete_pattern_now(&self, pattern: &str) -> usize {
        let mut leases = self.leases();
        leases.retain(|k, _| !pattern_covers(pattern, k));
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| pattern_covers(pattern, k))
            .map(|(k, _)| k)
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
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
        self.cache.run_pending_tasks();
        Some(self.cache.entry_count())
    }

    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        ready(Ok(self
            .live(&slot.key, self.epoch(slot))
            .map(Stored::Typed)))
    }

    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        ready(Ok(slots
            .iter()
            .map(|s| self.live(&s.key, self.epoch(s)).map(Stored::Typed))
            .collect()))
    }

    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.set_now(slot, value, ttl);
        ready(Ok(()))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(Slot, &'a dyn Value)],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        for (slot, value) in items {
            self.set_now(slot, *value, ttl);
        }
        ready(Ok(()))
    }

    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        let mut leases = self.leases();
        if self.live(&slot.key, self.epoch(slot)).is_some() {
            return ready(Ok(false));
        }
        leases.remove(&slot.key);
        self.insert(slot.key.clone(), value.to_any(), ttl, self.epoch(slot));
        ready(Ok(true))
    }

    fn lease<'a>(
        &'a self,
        slot: &'a Slot,
        token: &'a str,
        replace: bool,
    ) -> StoreFuture<'a, LeaseOutcome> {
        let mut leases = self.leases();
        let epoch = self.epoch(slot);
        if !replace && let Some(v) = self.live(&slot.key, epoch) {
            return ready(Ok(LeaseOutcome::Found(Stored::Typed(v))));
        }
        if leases.contains_key(&slot.key) {
            return ready(Ok(LeaseOutcome::Busy));
        }
        leases.insert(slot.key.clone(), token.to_owned());
        ready(Ok(LeaseOutcome::Granted(Lease {
            token: token.to_owned(),
            epoch: Epoch::Local(epoch),
        })))
    }

    fn renew<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        ready(Ok(self.leases().get(&slot.key) == Some(&lease.token)))
    }

    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
        lease: &'a Lease,
        replace: bool,
    ) -> StoreFuture<'a, Filled> {
        let mut leases = self.leases();
        if leases.get(&slot.key) != Some(&lease.token) {
            return ready(Ok(Filled::Lost));
        }
        leases.remove(&slot.key);
        let epoch = self.epoch(slot);
        if lease.epoch != Epoch::Local(epoch) {
            return ready(Ok(Filled::Lost));
        }
        if !replace && self.live(&slot.key, epoch).is_some() {
            return ready(Ok(Filled::Kept));
        }
        self.insert(slot.key.clone(), value.to_any(), ttl, epoch);
        ready(Ok(Filled::Stored))
    }

    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let mut leases = self.leases();
        let held = leases.get(&slot.key) == Some(&lease.token);
        if held {
            leases.remove(&slot.key);
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

    fn clear<'a>(&'a self, _pattern: &'a str) -> StoreFuture<'a, ()> {
        // A local store belongs to one cache: everything in it is covered.
        let mut leases = self.leases();
        leases.clear();
        self.cache.invalidate_all();
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
        ready(Ok(()))
    }

    fn incr<'a>(&'a self, slot: &'a Slot, delta: i64) -> StoreFuture<'a, Incr> {
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
