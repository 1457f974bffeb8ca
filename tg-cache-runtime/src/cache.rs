//! The cache API: [`Cache`] and its blocking face [`BlockingCache`].

use crate::codec;
use crate::config::{Backend, CacheConfig, RedisUrl};
use crate::error::{Error, Result};
use crate::exec::block_on;
use crate::flight::Flights;
use crate::generation::epoch_key;
use crate::key::{KeyFunction, check_key, family_of, glob_escape_into};
use crate::notice::Notices;
use crate::protocol::{self, Mode};
use crate::stats::{CacheStats, Counters, Families, FamilyStats};
use crate::store::connection::ConnectionSettings;
use crate::store::dummy::DummyStore;
use crate::store::framing::Framing;
use crate::store::local::LocalStore;
use crate::store::near::NearStore;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{Family, Incr, Slot, Store, Stored};
use crate::timeout::{Jitter, Timeout, Ttl};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a cache can hold: serde-serializable (for Redis), `Clone` (values are
/// copied in and out, so later mutation by the caller never reaches the
/// cache), and shareable between threads.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a cache",
    label = "a cached value must be Serialize + Deserialize + Clone + Send + Sync + 'static",
    note = "derive `Clone`, `serde::Serialize` and `serde::Deserialize` for it, or return a type that has them (wrap shared data in `Arc`)"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Decides what part of a computed result is cached, and how a cached value
/// becomes a result again. Used by [`Cache::get_or_set_with`] and by
/// `#[cache_function]`.
#[diagnostic::on_unimplemented(
    message = "the caching policy `{Self}` does not apply to the return type `{R}`",
    label = "`{Self}` cannot cache a `{R}`",
    note = "`OkOnly` (`result = true`) needs a `Result<T, E>` and `SomeOnly` (`option = true`) an `Option<T>`, after aliases are resolved; `always = true` caches any storable value"
)]
pub trait CachePolicy<R> {
    /// What is stored.
    type Stored: CacheValue;
    /// The value to store for `result`, or `None` to not cache it.
    fn store(result: &R) -> Option<Self::Stored>;
    /// Turns a cached value back into a result.
    fn load(stored: Self::Stored) -> R;
    /// A lifetime for `result`'s entry shorter than the call's timeout (a
    /// page whose response says `max-age=60`), if any.
    fn lifetime(_result: &R) -> Option<Duration> {
        None
    }
}

/// Cache every result.
pub enum Always {}
impl<T: CacheValue> CachePolicy<T> for Always {
    type Stored = T;
    fn store(r: &T) -> Option<T> {
        Some(r.clone())
    }
    fn load(s: T) -> T {
        s
    }
}

/// Cache only `Ok` values of a `Result`.
pub enum OkOnly {}
impl<T: CacheValue, E> CachePolicy<Result<T, E>> for OkOnly {
    type Stored = T;
    fn store(r: &Result<T, E>) -> Option<T> {
        r.as_ref().ok().cloned()
    }
    fn load(s: T) -> Result<T, E> {
        Ok(s)
    }
}

/// Cache only `Some` values of an `Option` (a `None` is recomputed next time).
pub enum SomeOnly {}
impl<T: CacheValue> CachePolicy<Option<T>> for SomeOnly {
    type Stored = T;
    fn store(r: &Option<T>) -> Option<T> {
        r.clone()
    }
    fn load(s: T) -> Option<T> {
        Some(s)
    }
}

/// A cache: a store plus key namespace, default timeout and counters.
///
/// Cheap to clone (an `Arc`). Get the configured ones with [`crate::cache`]
/// and [`crate::caches`], or build a standalone one with
/// [`CacheConfig::build`]. Every method is `async`; [`Cache::blocking`] gives
/// the same methods for synchronous code, usable with or without a tokio
/// runtime.
///
/// # Across processes
///
/// Many processes (and many `Cache`s) may share one Redis. The miss path
/// (`get_or_set`, `#[cache_function]`, `cache_page`, fragments) keeps its
/// guarantees there: one computation per cold key across all processes (a
/// lease in Redis, renewed while the holder computes, expiring within
/// [`CacheConfig::lease_timeout`] if the holder dies), no value stored
/// after an invalidation that raced it, and family invalidation that can
/// never go backwards. `protocol.rs` documents the protocol and its bounds.
///
/// ```
/// # async fn demo() -> tg_cache_runtime::Result<()> {
/// use tg_cache_runtime::{CacheConfig, timeout::MEDIUM};
/// let cache = CacheConfig::local().build()?;
/// cache.set("my_key", &vec![1, 2, 3], MEDIUM).await?;
/// assert_eq!(cache.get::<Vec<i32>>("my_key").await?, Some(vec![1, 2, 3]));
/// assert!(cache.delete("my_key").await?);
/// # Ok(()) }
/// ```
///
/// # Parity rules
///
/// Every store behaves the same: JSON semantics everywhere (a value reads
/// as another type exactly when its JSON does, `incr` works on any integer,
/// values JSON cannot carry are refused at `set` on every store), a value
/// just set is readable, and namespaces never share keys. The rules are in
/// [`crate::parity`].
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Core>,
}

/// Why stored bytes gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// Corrupt, foreign, of another type, or oversized (counted, logged).
    Corrupt,
    /// Not decoded now (the inflation budget is in use): not the value's fault.
    Busy,
    /// Another application's value that tg-cache neither reads nor
    /// replaces (Python pickle): computed without storing.
    Foreign,
}

/// What a [`Cache`] is made of; the miss protocol works on it.
pub(crate) struct Core {
    alias: String,
    backend: Backend,
    pub(crate) store: Arc<dyn Store>,
    url: Option<RedisUrl>,
    /// `<prefix>:<version>` (version 1 unless set, prefix possibly empty),
    /// or empty when neither is configured: put before every key.
    namespace: String,
    /// Django's key rules, and values as Django reads them.
    key_function: KeyFunction,
    /// Warnings logged once per family and minute.
    notices: Notices,
    pub(crate) default_timeout: Timeout,
    /// The spread of stored lifetimes of timeouts that set none
    /// ([`CacheConfig::jitter`]).
    pub(crate) jitter: Jitter,
    /// How long a leader waits for another process's computation of a key
    /// before it computes too ([`CacheConfig::max_wait`]).
    pub(crate) max_wait: Duration,
    max_value_bytes: usize,
    counters: Counters,
    families: Families,
    pub(crate) flights: Flights,
    created: Instant,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("alias", &self.inner.alias)
            .field("backend", &self.inner.backend);
        if let Some(url) = &self.inner.url {
            d.field("url", url);
        }
        d.field("namespace", &self.inner.namespace).finish()
    }
}

impl CacheConfig {
    /// Builds a standalone cache (not registered under any alias). Nothing
    /// connects yet: Redis connects on first use.
    pub fn build(&self) -> Result<Cache> {
        self.validate()?;
        Cache::from_config("standalone", self)
    }
}

/// What is put before every key: Django's `<prefix>:<version>` (version 1
/// unless set; `:<version>` without a prefix), or nothing when neither is
/// configured. See [`crate::parity`] (namespaces): no two configurations
/// share a key.
///
/// With [`KeyFunction::Django`] the namespace is always there, as in
/// Django's `make_key`: `:1` by default.
fn namespace(cfg: &CacheConfig) -> String {
    match (cfg.key_prefix.is_empty(), cfg.version) {
        (true, None) if cfg.key_function == KeyFunction::Tg => String::new(),
        (_, v) => format!("{}:{}", cfg.key_prefix, v.unwrap_or(1)),
    }
}

impl Cache {
    pub(crate) fn from_config(alias: &str, cfg: &CacheConfig) -> Result<Cache> {
        let store: Arc<dyn Store> = match cfg.backend {
            Backend::Local => Arc::new(LocalStore::new(cfg.max_entries, cfg.max_value_bytes)),
            Backend::Dummy => Arc::new(DummyStore),
            Backend::Redis | Backend::RedisCluster => {
                let url = cfg.redis_url.clone().ok_or_else(|| {
                    crate::ConfigError::new("REDIS_URL", "", "the redis backend needs a URL")
                })?;
                let redis = RedisStore::shared(&RedisSettings {
                    connection: ConnectionSettings {
                        url,
                        cluster: (cfg.backend == Backend::RedisCluster)
                            .then(|| cfg.redis_nodes.clone()),
                        pool_size: cfg.pool_size,
                        max_connections: cfg.max_connections,
                        connect_timeout: cfg.connect_timeout,
                        response_timeout: cfg.response_timeout,
                        breaker_cooldown: cfg.breaker_cooldown,
                    },
                    lease_timeout: cfg.lease_timeout,
                    compress_min: cfg.compress_min_bytes,
                    max_value_bytes: cfg.max_value_bytes,
                    framing: Framing::of(cfg.key_function),
                })?;
                match cfg.near_cache {
                    Some(n) => Arc::new(NearStore::new(redis, n, cfg.near_ignores_pushes)),
                    None => redis,
                }
            }
        };
        Ok(Self::with_store(alias, cfg, store))
    }

    fn with_store(alias: &str, cfg: &CacheConfig, store: Arc<dyn Store>) -> Cache {
        Cache {
            inner: Arc::new(Core {
                alias: alias.to_owned(),
                backend: cfg.backend,
                store,
                url: cfg
                    .redis_url
                    .clone()
                    .filter(|_| matches!(cfg.backend, Backend::Redis | Backend::RedisCluster)),
                namespace: namespace(cfg),
                key_function: cfg.key_function,
                notices: Notices::default(),
                default_timeout: cfg.default_timeout,
                jitter: cfg.jitter,
                max_wait: cfg.max_wait,
                max_value_bytes: cfg.max_value_bytes,
                counters: Counters::default(),
                families: Families::default(),
                flights: Flights::default(),
                created: Instant::now(),
            }),
        }
    }

    /// The alias this cache is registered under (`default` for [`crate::cache`]).
    pub fn alias(&self) -> &str {
        &self.inner.alias
    }

    /// The store kind.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The Redis URL this cache uses (`None` for other stores); its
    /// `Display` and `Debug` hide the password.
    pub fn redis_url(&self) -> Option<&RedisUrl> {
        self.inner.url.as_ref()
    }

    /// The counters since this cache was created.
    pub fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot(&self.inner.families)
    }

    /// The counters of each key family (`tg:queryset:Character`,
    /// `tg:fn:char_scenes`, ...; `other` for keys outside `tg:`), sorted by
    /// family. Only `hits`, `misses` and `errors` are kept per family.
    pub fn family_stats(&self) -> Vec<(String, CacheStats)> {
        self.inner.families.snapshot()
    }

    /// The counters of one key's family, for hit paths that keep a handle.
    pub(crate) fn family_counters(&self, key: &str) -> Arc<FamilyStats> {
        self.inner.families.of(key)
    }

    /// How long ago this cache was created.
    pub fn uptime(&self) -> Duration {
        self.inner.created.elapsed()
    }

    /// Entries held by a local store or by the near cache of a Redis store
    /// (`None` for other stores).
    pub fn local_len(&self) -> Option<u64> {
        self.inner.store.len()
    }

    /// A redis-rs connection of the application's own on this cache's
    /// Redis (a cluster connection on a Redis Cluster), for commands
    /// tg-cache does not wrap: django-redis' `get_redis_connection`. It
    /// **bypasses tg-cache's guards** ([`crate::RedisConnection`]). An
    /// error for a cache without Redis.
    ///
    /// ```no_run
    /// # async fn demo(cache: &tg_cache_runtime::Cache) -> tg_cache_runtime::Result<()> {
    /// let mut con = cache.redis_connection().await?;
    /// let size: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    /// # let _ = size; Ok(()) }
    /// ```
    pub async fn redis_connection(&self) -> Result<crate::RedisConnection> {
        let r = match self.inner.store.raw_connection().await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(Error::Config(crate::ConfigError::new(
                "backend",
                self.inner.backend.to_string(),
                "this cache has no Redis: redis_connection() needs the redis or redis-cluster backend",
            ))),
            Err(e) => Err(e),
        };
        self.inner.track("redis_connection", "", r)
    }

    /// The keys of this cache that `pattern` matches (a [`KeyPattern`] or a
    /// glob, under the cache's namespace and key function, as
    /// `delete_pattern` takes it), as given to the cache: without the
    /// namespace. A stream over `SCAN` in batches of about 1,000 (every
    /// primary of a cluster), never `KEYS`. tg-cache's own keys (family
    /// epochs, refresh sidecars) are left out
    /// ([`Cache::iter_keys_including_internal`] lists them). A key being
    /// filled is listed (its placeholder is at the key), and so are the
    /// keys of an invalidated family until they expire (`get` misses
    /// them).
    ///
    /// ```
    /// # async fn demo() -> tg_cache_runtime::Result<()> {
    /// use futures_util::TryStreamExt;
    /// use tg_cache_runtime::{CacheConfig, KeyPattern, timeout::MEDIUM};
    /// let cache = CacheConfig::local().build()?;
    /// cache.set("tg:queryset:Character:id=5", &1, MEDIUM).await?;
    /// let keys: Vec<String> = cache
    ///     .iter_keys(KeyPattern::prefix("tg:queryset:Character").any())
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(keys, ["tg:queryset:Character:id=5"]);
    /// # Ok(()) }
    /// ```
    ///
    /// [`KeyPattern`]: crate::KeyPattern
    pub fn iter_keys(
        &self,
        pattern: impl Into<crate::KeyPattern>,
    ) -> impl futures_util::Stream<Item = Result<String>> + Send + '_ {
        self.listing(pattern.into(), false)
    }

    /// [`Cache::iter_keys`] with tg-cache's own keys too, every key as
    /// stored (with the namespace, and on a cluster internal keys with
    /// their hash tag). On a cluster tg-cache's keys open with that tag
    /// (`#{<tag>}:<name>`), so only a pattern that opens with `*` matches
    /// them there.
    ///
    /// A listing on a cluster whose primaries change meanwhile (a
    /// failover, a migration) ends with an error rather than skip or
    /// repeat keys; list again.
    pub fn iter_keys_including_internal(
        &self,
        pattern: impl Into<crate::KeyPattern>,
    ) -> impl futures_util::Stream<Item = Result<String>> + Send + '_ {
        self.listing(pattern.into(), true)
    }

    /// How many keys [`Cache::iter_keys`] lists for `pattern`.
    pub async fn count_keys(&self, pattern: impl Into<crate::KeyPattern>) -> Result<u64> {
        use futures_util::TryStreamExt;
        self.iter_keys(pattern)
            .try_fold(0u64, |n, _| std::future::ready(Ok(n + 1)))
            .await
    }

    fn listing(
        &self,
        pattern: crate::KeyPattern,
        internal: bool,
    ) -> impl futures_util::Stream<Item = Result<String>> + Send + '_ {
        let core = &*self.inner;
        let stored = core.make_pattern(pattern.as_str());
        let state = (
            Some(crate::store::ScanAt::default()),
            std::collections::VecDeque::new(),
        );
        futures_util::stream::unfold(state, move |(mut at, mut ready)| {
            let stored = stored.clone();
            async move {
                loop {
                    if let Some(k) = ready.pop_front() {
                        return Some((Ok(k), (at, ready)));
                    }
                    let from = at?;
                    match core.store.scan(&stored, from).await {
                        Ok((keys, next)) => {
                            at = next;
                            ready.extend(keys.into_iter().filter_map(|k| core.listed(k, internal)));
                        }
                        Err(e) => {
                            core.report("iter_keys", &stored, &e);
                            return Some((Err(e), (None, ready)));
                        }
                    }
                }
            }
        })
    }

    /// The near cache's counters by key family (`tg:fn:char_scenes`, ...;
    /// `other` for keys outside any family), sorted by family; `None`
    /// without a near cache ([`CacheConfig::near_cache`]).
    pub fn near_stats(&self) -> Option<Vec<(String, crate::NearStats)>> {
        self.inner.store.near_stats()
    }

    /// The core the miss protocol, adapters and test support work on.
    #[cfg_attr(not(any(feature = "test-support", feature = "axum")), allow(dead_code))]
    pub(crate) fn core(&self) -> &Core {
        &self.inner
    }

    /// The blocking face of this cache, for synchronous code.
    pub fn blocking(&self) -> BlockingCache<'_> {
        BlockingCache(self)
    }

    /// The key as stored: namespace applied, checked.
    /// With the default configuration this is `key` itself.
    pub fn make_key<'k>(&self, key: &'k str) -> Result<Cow<'k, str>> {
        self.inner.make_key(key)
    }

    /// The epoch handle of `family` on a local store without namespace (for
    /// the hit path of `#[cache_function]`); `None` otherwise.
    #[doc(hidden)]
    pub fn __family_generation(&self, family: &str) -> Option<Arc<AtomicU64>> {
        if self.inner.namespace.is_empty() {
            self.inner.store.epoch_handle(family)
        } else {
            None
        }
    }

    /// Looks up `key` on the local store only: the synchronous hit path of
    /// `#[cache_function]`. `None` on a miss or another store. The caller
    /// counts the hit (in its family's counters).
    #[doc(hidden)]
    #[inline]
    pub fn __local_hit<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        generation: &AtomicU64,
    ) -> Option<R> {
        let v = self
            .inner
            .store
            .peek(key, generation.load(Ordering::Acquire))?;
        let s = v.downcast_ref::<P::Stored>()?;
        Some(P::load(s.clone()))
    }
}

impl Core {
    fn make_key<'k>(&self, key: &'k str) -> Result<Cow<'k, str>> {
        let key = check_key(key, self.key_function)?;
        if self.namespace.is_empty() {
            if key.starts_with(':') {
                return Err(Error::InvalidKey {
                    key: key.into_owned(),
                    reason: "a key starting with `:` is a versioned cache's stored form (`:<version>:<key>`); it is refused by caches without key prefix or version",
                });
            }
            Ok(key)
        } else {
            let made = format!("{}:{}", self.namespace, key);
            // Django validates the key it made, namespace included.
            if self.key_function == KeyFunction::Django
                && let Some(why) = crate::key::django_key_warning(&made)
            {
                let family = family_of(&key).unwrap_or("other");
                if self.notices.due("django-key", family) {
                    tracing::warn!(cache = %self.alias, family, key_bytes = made.len(), "cache key {why} (logged once per key family and minute)");
                }
            }
            Ok(Cow::Owned(made))
        }
    }

    fn make_pattern(&self, pattern: &str) -> String {
        if self.namespace.is_empty() {
            pattern.to_owned()
        } else {
            let mut p = String::with_capacity(self.namespace.len() + pattern.len() + 1);
            glob_escape_into(&self.namespace, &mut p);
            p.push(':');
            p.push_str(pattern);
            p
        }
    }

    /// The lifetime of one entry written now with `timeout`: `None` to
    /// store nothing, `Some(None)` forever; spread by its jitter.
    pub(crate) fn lifetime(&self, timeout: Timeout) -> Option<Option<Duration>> {
        timeout.lifetime(self.default_timeout, self.jitter)
    }

    /// Whether entries written with `timeout` are stored at all (no draw).
    pub(crate) fn caches(&self, timeout: Timeout) -> bool {
        timeout.resolve(self.default_timeout).is_some()
    }

    /// A stored key as a listing shows it: without the namespace, and
    /// `None` for tg-cache's own keys unless `internal` (then as stored).
    fn listed(&self, stored: String, internal: bool) -> Option<String> {
        let own = crate::generation::is_epoch_key(&stored)
            || crate::lease::is_sidecar(&stored)
            || stored.starts_with("#{");
        if own {
            return internal.then_some(stored);
        }
        if internal || self.namespace.is_empty() {
            return Some(stored);
        }
        stored
            .strip_prefix(self.namespace.as_str())
            .and_then(|k| k.strip_prefix(':'))
            .map(str::to_owned)
    }

    /// A family as the stores see it.
    fn family(&self, family: &str) -> Family {
        Family {
            name: if self.namespace.is_empty() {
                family.to_owned()
            } else {
                format!("{}:{family}", self.namespace)
            },
            epoch_key: epoch_key(&self.namespace, family),
        }
    }

    /// Where `key` lives in the store.
    pub(crate) fn slot(&self, key: &str) -> Result<Slot> {
        Ok(Slot {
            key: self.make_key(key)?.into_owned(),
            family: family_of(key).map(|f| self.family(f)),
        })
    }

    /// Counts and logs a store failure.
    pub(crate) fn report(&self, op: &'static str, key: &str, err: &Error) {
        Counters::bump(&self.counters.errors);
        Counters::bump(&self.families.of(key).errors);
        match err {
            Error::Unavailable { .. } | Error::Config(_) => {
                tracing::debug!(cache = %self.alias, op, key, error = %err, "cache call failed")
            }
            _ => {
                tracing::warn!(cache = %self.alias, op, key, error = %err, "cache call failed")
            }
        }
    }

    fn track<T>(&self, op: &'static str, key: &str, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.report(op, key, e);
        }
        r
    }

    fn decode_failed(&self, key: &str, why: &dyn std::fmt::Display) {
        Counters::bump(&self.counters.decode_errors);
        tracing::warn!(cache = %self.alias, key, error = %why, "cached value could not be decoded; treated as a miss");
    }

    /// A stored value as a `T`; a value of another type or undecodable
    /// bytes are a miss (logged and counted).
    pub(crate) async fn decode<T: CacheValue>(
        &self,
        key: &str,
        stored: Stored,
    ) -> std::result::Result<T, Undecodable> {
        match stored {
            Stored::Typed(v, json) => match v.downcast_ref::<T>() {
                Some(t) => Ok(t.clone()),
                // Another type: read its JSON, as a byte store would
                // (crate::parity); never on the hit path.
                None => match json(&*v).and_then(|b| serde_json::from_slice::<T>(&b)) {
                    Ok(t) => Ok(t),
                    Err(e) => {
                        self.decode_failed(
                            key,
                            &format_args!(
                                "the entry holds another type than {}, whose JSON does not read as one: {e}",
                                std::any::type_name::<T>()
                            ),
                        );
                        Err(Undecodable::Corrupt)
                    }
                },
            },
            Stored::Oversized => {
                self.decode_failed(
                    key,
                    &format_args!(
                        "the value is over max_value_bytes ({} bytes); it is not read",
                        self.max_value_bytes
                    ),
                );
                Err(Undecodable::Corrupt)
            }
            Stored::Bytes(b) => self.decode_bytes(key, b).await,
            Stored::Tracked(b, ticket) => {
                let v = self.decode_bytes::<T>(key, b).await?;
                ticket.keep(&v);
                Ok(v)
            }
        }
    }

    async fn decode_bytes<T: CacheValue>(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> std::result::Result<T, Undecodable> {
        match codec::decode(bytes, self.max_value_bytes).await {
            Ok(v) => Ok(v),
            Err(codec::DecodeError::Busy) => {
                tracing::debug!(cache = %self.alias, key, "compressed value not inflated (the process's inflation budget stayed in use); computed without storing");
                Err(Undecodable::Busy)
            }
            Err(codec::DecodeError::Pickle) => {
                self.pickled(key);
                Err(Undecodable::Foreign)
            }
            Err(e) => {
                self.decode_failed(key, &e);
                Err(Undecodable::Corrupt)
            }
        }
    }

    /// A value written by Python pickle: a miss, counted, and logged once
    /// per key family and minute (it repeats on every read until Django's
    /// serializer is changed).
    fn pickled(&self, key: &str) {
        Counters::bump(&self.counters.decode_errors);
        Counters::bump(&self.counters.pickled);
        let family = family_of(key).unwrap_or("other");
        if self.notices.due("pickle", family) {
            tracing::warn!(cache = %self.alias, family, error = %codec::DecodeError::Pickle, "cached value not read (logged once per key family and minute)");
        }
    }

    /// Removes a value over `max_value_bytes` that a plain read found (a
    /// fill replaces one that `get_or_set` finds): it could never be read.
    async fn remove_oversized(&self, key: &str, slot: &Slot) {
        match self.store.drop_oversized(slot).await {
            Ok(true) => self.count_deletes(1),
            Ok(false) => {}
            Err(e) => self.report("delete", key, &e),
        }
    }

    /// Two values read in one round trip, uncounted (`cache_page` reads a
    /// page's learned `Vary` list and the page together). A store failure
    /// or an undecodable value is `None` (the failure logged and counted).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn get_pair<A: CacheValue, B: CacheValue>(
        &self,
        a: &str,
        b: &str,
    ) -> (Option<A>, Option<B>) {
        let slots = match (self.slot(a), self.slot(b)) {
            (Ok(x), Ok(y)) => [x, y],
            _ => return (None, None),
        };
        let values = self.store.get_many(&slots).await;
        let Ok(Ok([va, vb])) = self.track("get_many", b, values).map(<[_; 2]>::try_from) else {
            return (None, None);
        };
        let va = match va {
            Some(s) => self.decode::<A>(&slots[0].key, s).await.ok(),
            None => None,
        };
        let vb = match vb {
            Some(s) => self.decode::<B>(&slots[1].key, s).await.ok(),
            None => None,
        };
        (va, vb)
    }

    pub(crate) fn count_lookup(&self, key: &str, hit: bool) {
        let f = self.families.of(key);
        if hit {
            f.hits.bump();
        } else {
            f.misses.bump();
        }
    }

    pub(crate) fn count_set(&self) {
        Counters::bump(&self.counters.sets);
    }

    /// A fill refused by the guard: an invalidation (or another writer)
    /// came first.
    pub(crate) fn count_refused_fill(&self) {
        Counters::bump(&self.counters.fills_refused);
    }

    /// A value refused for being over `max_value_bytes`: counted and
    /// logged, never written.
    pub(crate) fn report_too_large(&self, key: &str, err: &Error) {
        Counters::bump(&self.counters.too_large);
        tracing::warn!(cache = %self.alias, key, error = %err, "value not cached");
    }

    fn count_deletes(&self, n: usize) {
        self.counters.deletes.fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn get_in<T: CacheValue>(&self, key: &str) -> Result<Option<T>> {
        let slot = self.slot(key)?;
        let r = self.store.get(&slot).await;
        if let Ok(Some(Stored::Oversized)) = r {
            self.remove_oversized(key, &slot).await;
        }
        let r = match r {
            Ok(Some(s)) => Ok(self.decode::<T>(&slot.key, s).await.ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        if let Ok(v) = &r {
            self.count_lookup(key, v.is_some());
        }
        self.track("get", key, r)
    }

    async fn set_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<()> {
        let slot = self.slot(key)?;
        let Some(ttl) = self.lifetime(timeout) else {
            let r = self.delete_keys(&[slot.key]).await.map(drop);
            return self.track("set", key, r);
        };
        let r = self.store.set(&slot, value, ttl).await;
        if r.is_ok() && self.store.keeps_values() {
            self.count_set();
        }
        if let Err(e @ Error::ValueTooLarge { .. }) = &r {
            // The write is refused, and the value it replaces is outdated.
            self.report_too_large(key, e);
            let _ = self.delete_keys(&[slot.key]).await;
            return r;
        }
        self.track("set", key, r)
    }

    async fn add_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<bool> {
        let slot = self.slot(key)?;
        let Some(ttl) = self.lifetime(timeout) else {
            return Ok(false);
        };
        let r = self.store.add(&slot, value, ttl).await;
        if matches!(r, Ok(true)) && self.store.keeps_values() {
            self.count_set();
        }
        if let Err(e @ Error::ValueTooLarge { .. }) = &r {
            self.report_too_large(key, e);
            return r;
        }
        self.track("add", key, r)
    }

    async fn get_many_in<T: CacheValue, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<HashMap<String, T>> {
        let slots = keys
            .iter()
            .map(|k| self.slot(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let r = match self.store.get_many(&slots).await {
            Ok(values) => {
                let mut out = HashMap::with_capacity(keys.len());
                for ((k, slot), v) in keys.iter().zip(&slots).zip(values) {
                    let v = match v {
                        Some(s) => self.decode::<T>(&slot.key, s).await.ok(),
                        None => None,
                    };
                    self.count_lookup(k.as_ref(), v.is_some());
                    if let Some(v) = v {
                        out.insert(k.as_ref().to_owned(), v);
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        };
        self.track("get_many", "", r)
    }

    async fn set_many_in<T: CacheValue, K: AsRef<str>>(
        &self,
        items: &[(K, T)],
        timeout: Timeout,
    ) -> Result<()> {
        let slots = items
            .iter()
            .map(|(k, _)| self.slot(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if !self.caches(timeout) {
            let keys: Vec<String> = slots.into_iter().map(|s| s.key).collect();
            return self.delete_keys(&keys).await.map(drop);
        }
        // Each entry its own lifetime: written together, they do not all
        // expire together when a jitter is set.
        let writes: Vec<crate::store::Write<'_>> = slots
            .into_iter()
            .zip(items)
            .map(|(s, (_, v))| crate::store::Write {
                slot: s,
                value: v as &dyn crate::store::Value,
                ttl: self.lifetime(timeout).flatten(),
            })
            .collect();
        let r = self.store.set_many(&writes).await;
        if r.is_ok() && self.store.keeps_values() {
            self.counters
                .sets
                .fetch_add(items.len() as u64, Ordering::Relaxed);
        }
        if let Err(e @ Error::ValueTooLarge { .. }) = &r {
            // Nothing was written, and the values these replace are outdated.
            self.report_too_large("", e);
            let keys: Vec<String> = writes.into_iter().map(|w| w.slot.key).collect();
            let _ = self.delete_keys(&keys).await;
            return r;
        }
        self.track("set_many", "", r)
    }

    /// Deletes stored keys (already namespaced); returns how many existed.
    async fn delete_keys(&self, keys: &[String]) -> Result<usize> {
        let r = self.store.delete(keys).await;
        if let Ok(n) = r {
            self.count_deletes(n);
        }
        r
    }

    async fn delete_many_in<K: AsRef<str>>(&self, keys: &[K]) -> Result<usize> {
        let full = keys
            .iter()
            .map(|k| self.make_key(k.as_ref()).map(Cow::into_owned))
            .collect::<Result<Vec<_>>>()?;
        let r = self.delete_keys(&full).await;
        self.track("delete_many", "", r)
    }

    async fn delete_in(&self, key: &str) -> Result<bool> {
        let full = self.make_key(key)?.into_owned();
        let r = self.delete_keys(&[full]).await.map(|n| n > 0);
        self.track("delete", key, r)
    }

    async fn has_key_in(&self, key: &str) -> Result<bool> {
        let slot = self.slot(key)?;
        let r = self.store.get(&slot).await.map(|v| v.is_some());
        self.track("has_key", key, r)
    }

    async fn touch_in(&self, key: &str, timeout: Timeout) -> Result<bool> {
        let slot = self.slot(key)?;
        let Some(ttl) = self.lifetime(timeout) else {
            let r = self.delete_keys(&[slot.key]).await;
            return self.track("touch", key, r.map(|n| n > 0));
        };
        let r = self.store.touch(&slot, ttl).await;
        self.track("touch", key, r)
    }

    async fn incr_in(&self, key: &str, delta: i128) -> Result<i64> {
        let slot = self.slot(key)?;
        match self.store.incr(&slot, delta).await {
            Ok(Incr::Done(n)) => Ok(n),
            Ok(Incr::Missing) => Err(Error::MissingKey(key.to_owned())),
            Ok(Incr::NotAnInteger) => Err(Error::NotAnInteger(key.to_owned())),
            Err(e) => self.track("incr", key, Err(e)),
        }
    }

    async fn ttl_in(&self, key: &str) -> Result<Option<Ttl>> {
        let slot = self.slot(key)?;
        let r = self.store.ttl(&slot).await;
        self.track("ttl", key, r)
    }

    async fn invalidate_family_in(&self, family: &str) -> Result<()> {
        if family_of(family) != Some(family) {
            return Err(Error::InvalidKey {
                key: family.to_owned(),
                reason: "a key family is the first three segments of a tg: key, e.g. `tg:queryset:Character` or `tg:fn:char_scenes`",
            });
        }
        check_key(family, KeyFunction::Tg)?;
        if family
            .bytes()
            .any(|b| matches!(b, b'*' | b'?' | b'[' | b']' | b'\\'))
            || family.split(':').any(str::is_empty)
        {
            return Err(Error::InvalidKey {
                key: family.to_owned(),
                reason: "a key family names one family: no glob characters and no empty segment",
            });
        }
        let r = self.store.bump(&self.family(family)).await;
        self.track("invalidate_family", family, r)
    }

    async fn delete_pattern_in(&self, pattern: &str) -> Result<usize> {
        let pattern = self.make_pattern(pattern);
        let r = self.store.delete_pattern(&pattern).await;
        if let Ok(n) = r {
            self.count_deletes(n);
        }
        self.track("delete_pattern", &pattern, r)
    }

    async fn clear_in(&self) -> Result<()> {
        // Everything the cache can have written: its namespace, or, for a
        // cache without one, its whole database.
        let pattern = if self.namespace.is_empty() {
            "*".to_owned()
        } else {
            self.make_pattern("*")
        };
        let r = self.store.clear(&pattern).await;
        self.track("clear", "", r)
    }

    async fn flush_database_in(&self) -> Result<()> {
        let r = self.store.flush().await;
        self.track("flush_database", "", r)
    }

    async fn health_in(&self) -> Result<Duration> {
        let start = Instant::now();
        let r = self.store.ping().await;
        self.track("health", "", r).map(|()| start.elapsed())
    }
}

/// Generates the public async methods and their blocking twins from one list,
/// so the two faces cannot drift apart.
macro_rules! api {
    ($(
        $(#[$doc:meta])*
        fn $name:ident $(<$($g:ident $(: $b:path)?),*>)? ($($arg:ident : $ty:ty),*) -> $ret:ty => $imp:ident ($($pass:expr),*);
    )*) => {
        impl Cache {$(
            $(#[$doc])*
            pub async fn $name $(<$($g $(: $b)?),*>)? (&self, $($arg: $ty),*) -> $ret {
                self.inner.$imp($($pass),*).await
            }
        )*}

        impl BlockingCache<'_> {$(
            $(#[$doc])*
            ///
            /// Blocking twin of the async method of the same name.
            pub fn $name $(<$($g $(: $b)?),*>)? (&self, $($arg: $ty),*) -> $ret {
                block_on(self.0.inner.$imp($($pass),*))
            }
        )*}
    };
}

api! {
    /// The value at `key`, or `None` on a miss. A cached `None` (of an
    /// `Option<T>`) comes back as `Some(None)`, so it is distinguishable from
    /// a miss. An undecodable value is a miss (logged and counted).
    fn get<T: CacheValue>(key: &str) -> Result<Option<T>> => get_in(key);
    /// Stores `value` at `key` for `timeout` ([`Timeout::NoCache`] removes the key).
    fn set<T: CacheValue>(key: &str, value: &T, timeout: impl Into<Timeout>) -> Result<()> => set_in(key, value, timeout.into());
    /// Stores `value` only if `key` is absent; returns whether it was stored.
    fn add<T: CacheValue>(key: &str, value: &T, timeout: impl Into<Timeout>) -> Result<bool> => add_in(key, value, timeout.into());
    /// The values of those `keys` that are cached, keyed by the given keys.
    fn get_many<T: CacheValue, K: AsRef<str>>(keys: &[K]) -> Result<HashMap<String, T>> => get_many_in(keys);
    /// Stores every `(key, value)` pair with one timeout (one round trip on Redis).
    fn set_many<T: CacheValue, K: AsRef<str>>(items: &[(K, T)], timeout: impl Into<Timeout>) -> Result<()> => set_many_in(items, timeout.into());
    /// Removes `key`; returns whether it was there.
    fn delete(key: &str) -> Result<bool> => delete_in(key);
    /// Removes `keys`; returns how many were there.
    fn delete_many<K: AsRef<str>>(keys: &[K]) -> Result<usize> => delete_many_in(keys);
    /// Whether `key` is cached.
    fn has_key(key: &str) -> Result<bool> => has_key_in(key);
    /// Gives `key` a new timeout; returns whether the key existed.
    fn touch(key: &str, timeout: impl Into<Timeout>) -> Result<bool> => touch_in(key, timeout.into());
    /// Atomically adds `delta` to the integer at `key` and returns the new
    /// value. As in Django, a missing key is an error ([`Error::MissingKey`]).
    ///
    /// Any value whose JSON is an integer that fits an `i64` can be
    /// incremented, on every store; the arithmetic is exact, and a result
    /// outside the `i64` range is [`Error::NotAnInteger`] (nothing changes).
    /// See [`crate::parity`].
    fn incr(key: &str, delta: i64) -> Result<i64> => incr_in(key, i128::from(delta));
    /// Atomically subtracts `delta` (exactly, `i64::MIN` included); see [`Cache::incr`].
    fn decr(key: &str, delta: i64) -> Result<i64> => incr_in(key, -i128::from(delta));
    /// The remaining lifetime of `key`, or `None` if it is not cached.
    fn ttl(key: &str) -> Result<Option<Ttl>> => ttl_in(key);
    /// Deletes every key matching the glob `pattern` (Redis syntax: `*`, `?`,
    /// `[..]`, `\`) and returns how many. Runs `SCAN` in batches on Redis,
    /// never `KEYS`. Build patterns from user data with
    /// [`crate::key::KeyPattern`], which escapes it.
    fn delete_pattern(pattern: &str) -> Result<usize> => delete_pattern_in(pattern);
    /// Invalidates every entry of a key family (`tg:queryset:Character`,
    /// `tg:fn:char_scenes`, `tg:view:home`) in O(1), whatever the number of
    /// entries: their generation is bumped, so they read as misses and are
    /// overwritten or evicted later. Fills in progress are not stored. (On
    /// a Redis Cluster the family has an epoch per hash slot, and all of
    /// them are replaced: O(16,384 slots), one Lua call per primary.)
    fn invalidate_family(family: &str) -> Result<()> => invalidate_family_in(family);
    /// Empties this cache, on every store alike: every key under its key
    /// prefix/version (`<prefix>:<version>:*`) when one is configured; for a
    /// cache configured with neither, every key of its Redis database (it
    /// owns the database: give caches that share one a `key_prefix`).
    /// Family epochs go too, and every computation in progress is refused
    /// when it stores. Runs `SCAN` + `UNLINK` in batches, never `FLUSHDB`
    /// nor `KEYS` (see [`Cache::flush_database`]).
    fn clear() -> Result<()> => clear_in();
    /// Removes **every key of the Redis database**, this application's or not
    /// (`FLUSHDB`). On a local store, the same as [`Cache::clear`].
    fn flush_database() -> Result<()> => flush_database_in();
    /// Checks that the store answers (the seed's "Check Cache Status");
    /// returns the round-trip time. On a Redis Cluster every primary must
    /// answer: while one shard is down (before its replica is promoted)
    /// this is an error, even though cached functions keep working.
    fn health() -> Result<Duration> => health_in();
}

impl Cache {
    /// The value at `key`, or `f()`'s result, which is then stored for
    /// `timeout`. Concurrent callers of one cold key compute once, in this
    /// process and across every process sharing the Redis (see the
    /// [type docs](Cache#across-processes)); the others wait for that
    /// result. Store failures never fail the call: they are logged and
    /// counted, and `f()`'s value is returned.
    pub async fn get_or_set<T, F, Fut>(&self, key: &str, timeout: impl Into<Timeout>, f: F) -> T
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.__get_or_set_shared::<Always, T, F, Fut>(key, timeout.into(), share_clone, f)
            .await
    }

    /// Like [`Cache::get_or_set`] for a fallible computation: only `Ok`
    /// values are cached. An `Err` is handed to the callers waiting on the
    /// same computation (errors are `Clone` here for that reason).
    pub async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> std::result::Result<T, E>
    where
        T: CacheValue,
        E: Clone + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.__get_or_set_shared::<OkOnly, _, F, Fut>(key, timeout.into(), share_clone, f)
            .await
    }

    /// The general form of [`Cache::get_or_set`]: `P` decides what is
    /// cached. A result `P` does not store is not shared with waiting
    /// callers (they compute it themselves, concurrently).
    pub async fn get_or_set_with<P, R, F, Fut>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> R
    where
        P: CachePolicy<R>,
        R: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        self.__get_or_set_shared::<P, R, F, Fut>(key, timeout.into(), share_none, f)
            .await
    }

    /// [`Cache::get_or_set_with`], with `share` copying a result that is not
    /// stored for the callers waiting on it (used by `#[cache_function]`).
    #[doc(hidden)]
    pub async fn __get_or_set_shared<P, R, F, Fut>(
        &self,
        key: &str,
        timeout: Timeout,
        share: fn(&R) -> Option<R>,
        f: F,
    ) -> R
    where
        P: CachePolicy<R>,
        R: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        protocol::get_or_compute::<P, R, F, Fut>(&self.inner, key, timeout, Mode::Normal, share, f)
            .await
    }

    /// Runs `f` and stores its result as `P` says, replacing what is cached,
    /// through the guarded store (refresh scopes of `#[cache_function]`).
    #[doc(hidden)]
    pub async fn __refresh<P, R, F, Fut>(&self, key: &str, timeout: Timeout, f: F) -> R
    where
        P: CachePolicy<R>,
        R: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        protocol::get_or_compute::<P, R, F, Fut>(
            &self.inner,
            key,
            timeout,
            Mode::Refresh,
            share_none,
            f,
        )
        .await
    }
}

fn share_clone<R: Clone>(r: &R) -> Option<R> {
    Some(r.clone())
}

fn share_none<R>(_: &R) -> Option<R> {
    None
}

/// The blocking face of a [`Cache`] ([`Cache::blocking`]): the same methods,
/// for synchronous code. Needs no async runtime, never panics when called
/// inside one, and never deadlocks there:
///
/// * on a worker of a multi-thread tokio runtime it waits through
///   `tokio::task::block_in_place`, so the runtime's other tasks move to
///   another thread and no worker is parked, even while Redis is slow;
/// * on the thread of a current-thread runtime it blocks that thread (there
///   is no other), and a call that would wait for another call of the
///   process computing the same key computes without waiting instead
///   (logged once), since that other call could never run.
#[derive(Clone, Copy)]
pub struct BlockingCache<'a>(&'a Cache);

impl BlockingCache<'_> {
    /// Blocking [`Cache::get_or_set`].
    pub fn get_or_set<T: CacheValue>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: impl FnOnce() -> T,
    ) -> T {
        self.__get_or_set_shared::<Always, T>(key, timeout.into(), share_clone, f)
    }

    /// Blocking [`Cache::try_get_or_set`].
    pub fn try_get_or_set<T: CacheValue, E: Clone + Send + 'static>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.__get_or_set_shared::<OkOnly, _>(key, timeout.into(), share_clone, f)
    }

    /// Blocking [`Cache::get_or_set_with`].
    pub fn get_or_set_with<P: CachePolicy<R>, R: Send + 'static>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: impl FnOnce() -> R,
    ) -> R {
        self.__get_or_set_shared::<P, R>(key, timeout.into(), share_none, f)
    }

    /// Blocking [`Cache::__get_or_set_shared`].
    #[doc(hidden)]
    pub fn __get_or_set_shared<P: CachePolicy<R>, R: Send + 'static>(
        &self,
        key: &str,
        timeout: Timeout,
        share: fn(&R) -> Option<R>,
        f: impl FnOnce() -> R,
    ) -> R {
        block_on(
            self.0
                .__get_or_set_shared::<P, R, _, _>(key, timeout, share, move || {
                    std::future::ready(f())
                }),
        )
    }

    /// Blocking [`Cache::__refresh`].
    #[doc(hidden)]
    pub fn __refresh<P: CachePolicy<R>, R: Send + 'static>(
        &self,
        key: &str,
        timeout: Timeout,
        f: impl FnOnce() -> R,
    ) -> R {
        block_on(
            self.0
                .__refresh::<P, R, _, _>(key, timeout, move || std::future::ready(f())),
        )
    }
}
