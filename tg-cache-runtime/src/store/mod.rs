//! The stores behind a [`crate::Cache`]: one interface, one file per
//! implementation.
//!
//! The interface speaks in store terms only: read, write, a guarded fill
//! under a lease, delete, pattern delete, epoch bump. Policies, counters and
//! single-flight live above it ([`crate::protocol`], [`crate::cache`]).
//!
//! **The fill guarantee every implementation keeps** (see `protocol.rs` and
//! `lease.rs`): a [`Store::lease`] is granted to the fillers of a cold key
//! (one, plus the co-holders that joined it); every invalidation that
//! covers the key (`set`, `add` that stores, `delete`, `delete_pattern`,
//! `bump` of its family, `clear`) ends the lease; and [`Store::fill`] stores
//! only if the lease is still held in the family epoch it was taken in.
//! Values are refused at write time when their JSON is over the store's
//! value cap ([`crate::Error::ValueTooLarge`]).

pub(crate) mod connection;
pub(crate) mod dummy;
pub(crate) mod epochs;
pub(crate) mod framing;
pub(crate) mod local;
pub(crate) mod names;
pub(crate) mod near;
pub(crate) mod primaries;
pub(crate) mod redis;
pub(crate) mod scripts;
pub(crate) mod slots;
pub(crate) mod tracking;

use crate::error::Result;
use crate::generation::Epoch;
use crate::lease::Holders;
use crate::timeout::Ttl;
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A value as the local store keeps it: shared, immutable, type-erased.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// What a store operation returns.
pub(crate) type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A key as a store sees it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// The stored key: namespaced, checked, shortened.
    pub(crate) key: String,
    /// Its key family, if it has one.
    pub(crate) family: Option<Family>,
}

/// Where a key listing ([`Store::scan`]) goes on: the index of the
/// primary (0 on one server) and its `SCAN` cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScanAt {
    pub(crate) node: usize,
    pub(crate) cursor: u64,
    /// On a cluster, a digest of the primaries the listing began with (0
    /// before the first batch): a listing across a topology change fails
    /// rather than skip or repeat a primary.
    pub(crate) topology: u64,
}

/// One write of [`Store::set_many`].
pub(crate) struct Write<'a> {
    pub(crate) slot: Slot,
    pub(crate) value: &'a dyn Value,
    /// Its lifetime (`None`: forever).
    pub(crate) ttl: Option<Duration>,
}

/// A key family, as the stores need it.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    /// `tg:fn:char_scenes`, after the cache's namespace if it has one
    /// (`:1:tg:fn:char_scenes`): the local epoch's name, and what the
    /// family's stored keys start with.
    pub(crate) name: String,
    /// Where the Redis epoch lives (namespaced).
    pub(crate) epoch_key: String,
}

/// The JSON text of a type-erased value of one known type (made by
/// [`Value::encoder`]): how a local value is read as another type, or
/// incremented, with the semantics of a byte store (see [`crate::parity`]).
pub(crate) type Encoder = fn(&(dyn Any + Send + Sync)) -> serde_json::Result<Vec<u8>>;

/// A value handed to a store for writing: each store takes the form it keeps.
pub(crate) trait Value: Send + Sync {
    /// The value itself, for stores that keep values (no serialization).
    fn to_any(&self) -> AnyValue;
    /// The value's JSON text, for stores that keep bytes; an error for a
    /// value JSON would not carry faithfully ([`crate::parity`]).
    fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    /// Whether [`Value::to_json`] would succeed, and how many bytes it
    /// would give, without keeping them: stores that keep values refuse
    /// what byte stores refuse.
    fn check(&self) -> serde_json::Result<usize>;
    /// The JSON encoder of values of this type.
    fn encoder(&self) -> Encoder;
}

impl<T: crate::CacheValue> Value for T {
    fn to_any(&self) -> AnyValue {
        Arc::new(self.clone())
    }
    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        crate::parity::check_lossless(self)?;
        serde_json::to_vec(self)
    }
    fn check(&self) -> serde_json::Result<usize> {
        crate::parity::check(self)
    }
    fn encoder(&self) -> Encoder {
        encode_any::<T>
    }
}

/// The [`Encoder`] of `T`.
pub(crate) fn encode_any<T: crate::CacheValue>(
    v: &(dyn Any + Send + Sync),
) -> serde_json::Result<Vec<u8>> {
    match v.downcast_ref::<T>() {
        Some(t) => serde_json::to_vec(t),
        None => Err(<serde_json::Error as serde::ser::Error>::custom(
            "tg-cache: value of an unexpected type",
        )),
    }
}

/// A value as read from a store.
pub(crate) enum Stored {
    /// Kept as a value (local store), with its JSON encoder.
    Typed(AnyValue, Encoder),
    /// Kept as bytes (Redis): the payload, epoch header removed.
    Bytes(Vec<u8>),
    /// Bytes read for the near cache: decoded, the value is given to the
    /// ticket ([`near::Ticket::keep`]).
    Tracked(Vec<u8>, near::Ticket),
    /// A value over the cap (`CacheConfig::max_value_bytes`), never read:
    /// treated as a corrupt value.
    Oversized,
}

/// The right to fill one key, granted by [`Store::lease`].
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// Identifies this holder's lease.
    pub(crate) token: String,
    /// The family epoch when the lease was granted.
    pub(crate) epoch: Epoch,
    /// A refresh's lease, held beside the value (`lease::sidecar`), which
    /// stays readable meanwhile.
    pub(crate) refresh: bool,
}

/// What a caller saw of bytes it could not decode, so that a repair
/// replaces those bytes only, never a value stored since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A value over the cap (never read).
    Big,
    /// A payload: its length and first bytes (after any family header).
    Bytes { len: usize, head: [u8; 64], n: u8 },
}

impl Stored {
    /// What a caller saw of these bytes ([`Seen`]).
    pub(crate) fn seen(&self) -> Seen {
        match self {
            Stored::Bytes(b) | Stored::Tracked(b, _) => {
                let n = b.len().min(64);
                let mut head = [0u8; 64];
                head[..n].copy_from_slice(&b[..n]);
                Seen::Bytes {
                    len: b.len(),
                    head,
                    n: n as u8,
                }
            }
            _ => Seen::Big,
        }
    }
}

/// How [`Store::lease`] treats what the key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseMode {
    /// A miss: a live value is returned, a held lease is waited for.
    Fresh,
    /// Over bytes that could not be decoded, if the key still holds them
    /// (else as `Fresh`).
    Repair(Seen),
    /// A refresh: the lease is held beside the value, which stays readable
    /// while the refresh computes; the fill replaces it only if it is
    /// unchanged. An earlier refresh's lease is superseded.
    Refresh,
    /// As a co-holder: a live value is returned, a held lease is shared
    /// (the first holder to store wins).
    Join,
}

/// What [`Store::lease`] found.
pub(crate) enum LeaseOutcome {
    /// The caller holds the lease: compute, then [`Store::fill`].
    Granted(Lease),
    /// A live value is there (modes `Fresh` and `Join`).
    Found(Stored),
    /// Other fillers hold the lease: wait and ask again.
    Busy(Holders),
}

/// What [`Store::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// The value was stored.
    Stored,
    /// Another writer stored a value after the miss; it was kept.
    Kept,
    /// The lease was lost (an invalidation, or it expired): not stored.
    Lost,
    /// The store keeps nothing (the dummy store): nothing was stored, but
    /// the value is as current as a stored one.
    Dropped,
}

/// Outcome of an atomic increment.
pub(crate) enum Incr {
    Done(i64),
    Missing,
    NotAnInteger,
}

/// A store: local memory, Redis, or one that keeps nothing.
pub(crate) trait Store: Send + Sync + 'static {
    /// The synchronous hit path of the local store: the value at `key` if
    /// it is live in `epoch`. Other stores have none.
    fn peek(&self, _key: &str, _epoch: u64) -> Option<AnyValue> {
        None
    }

    /// A handle on a family's local epoch, for [`Store::peek`] callers.
    fn epoch_handle(&self, _family: &str) -> Option<Arc<AtomicU64>> {
        None
    }

    /// How often a lease holder must renew its lease while it computes
    /// (`None`: leases do not expire).
    fn renew_every(&self) -> Option<Duration> {
        None
    }

    /// Whether the store keeps what it is given (false for the dummy store,
    /// whose writes are not counted as sets).
    fn keeps_values(&self) -> bool {
        true
    }

    /// Entries held (local stores and near caches only).
    fn len(&self) -> Option<u64> {
        None
    }

    /// The near cache's counters by key family (near caches only).
    fn near_stats(&self) -> Option<Vec<(String, crate::stats::NearStats)>> {
        None
    }

    /// The live value at `slot`.
    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>>;

    /// The live values at `slots`, in order (one round trip on Redis).
    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>>;

    /// Writes `value`; cancels any fill in progress of the key.
    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;

    /// [`Store::set`] for several keys, each with its own lifetime (one
    /// round trip on Redis).
    fn set_many<'a>(&'a self, items: &'a [Write<'a>]) -> StoreFuture<'a, ()>;

    /// Writes `value` only if no live value is there; returns whether it
    /// wrote (and then cancels any fill in progress).
    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool>;

    /// Asks for the right to fill `slot` (see [`LeaseMode`]); `token`
    /// identifies the caller's lease, and `ttl` is the lifetime of the
    /// value it will store.
    fn lease<'a>(
        &'a self,
        slot: &'a Slot,
        token: &'a str,
        mode: LeaseMode,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome>;

    /// Keeps a lease alive while its holder computes; false if it was lost.
    fn renew<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool>;

    /// Stores a computed value under the fill guarantee (module docs).
    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
        lease: &'a Lease,
    ) -> StoreFuture<'a, Filled>;

    /// Gives a lease up without storing; returns whether it was still held
    /// (false: an invalidation removed it meanwhile).
    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool>;

    /// Deletes stored keys and cancels their fills; returns how many existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, usize>;

    /// Deletes every key that the glob `pattern` matches, and so cancels
    /// every fill of such a key that began before the call, on a database
    /// of any size; returns how many values it deleted. Family epochs are
    /// kept.
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, usize>;

    /// Removes every key under `pattern` (`*`: every key of the database),
    /// family epochs included, and so cancels every fill that began before.
    fn clear<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, ()>;

    /// Removes everything in the database (`FLUSHDB`).
    fn flush<'a>(&'a self) -> StoreFuture<'a, ()>;

    /// One batch of the stored keys that the glob `pattern` matches, from
    /// `at` (start with [`ScanAt::default`]), internal keys included; and
    /// where the next batch starts (`None`: done). On Redis a `SCAN` of
    /// about 1,000 keys, on a cluster of one primary after another.
    fn scan<'a>(
        &'a self,
        pattern: &'a str,
        at: ScanAt,
    ) -> StoreFuture<'a, (Vec<String>, Option<ScanAt>)>;

    /// A connection of the application's own on the store's Redis (a
    /// cluster connection on a cluster), outside tg-cache's guards; `None`
    /// for stores without Redis.
    fn raw_connection<'a>(&'a self) -> StoreFuture<'a, Option<crate::RedisConnection>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Gives `family` a new epoch: every entry of it reads as a miss, and
    /// every fill of it in progress is refused.
    fn bump<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()>;

    /// Atomically adds `delta` to an integer value (`delta` is wider than
    /// an `i64` so that `decr(k, i64::MIN)` is exact); the result must fit
    /// an `i64`.
    fn incr<'a>(&'a self, slot: &'a Slot, delta: i128) -> StoreFuture<'a, Incr>;

    /// Gives a live value a new timeout; returns whether it existed.
    fn touch<'a>(&'a self, slot: &'a Slot, ttl: Option<Duration>) -> StoreFuture<'a, bool>;

    /// The remaining lifetime of a live value.
    fn ttl<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Ttl>>;

    /// Checks that the store answers.
    fn ping<'a>(&'a self) -> StoreFuture<'a, ()>;

    /// Checks that the part of the store that holds `slot` answers (on a
    /// Redis Cluster, the primary of its hash slot).
    fn ping_for<'a>(&'a self, _slot: &'a Slot) -> StoreFuture<'a, ()> {
        self.ping()
    }

    /// Interest in changes of `slot`'s key, registered before a lease
    /// request reads it: [`tracking::Watch::changed`] then wakes when any
    /// client changes the key (a fill, a release, an invalidation, an
    /// expiry). `None` for stores without tracking (waiters poll).
    fn watch(&self, _slot: &Slot) -> Option<tracking::Watch> {
        None
    }

    /// Deletes the value at `slot` if it is (still) over the value cap;
    /// returns whether it did. Only stores with a cap have such values.
    fn drop_oversized<'a>(&'a self, _slot: &'a Slot) -> StoreFuture<'a, bool> {
        ready(Ok(false))
    }
}

/// A future that is already complete.
pub(crate) fn ready<'a, T: Send + 'a>(r: Result<T>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(r))
}
