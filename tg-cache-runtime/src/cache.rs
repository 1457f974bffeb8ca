//! The cache API: [`Cache`] and its blocking face [`BlockingCache`].

use crate::codec;
use crate::config::{Backend, CacheConfig};
use crate::error::{Error, Result};
use crate::exec::block_on;
use crate::flight::Flights;
use crate::key::{check_key, family_of, generation_key, glob_escape_into, glob_match, shorten};
use crate::stats::{CacheStats, Counters, Families, FamilyStats};
use crate::store::Store;
use crate::store::local::{AnyValue, Incr, LocalStore};
use crate::store::redis::{FillTicket, RedisSettings, RedisStore};
use crate::timeout::{Timeout, Ttl};
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

/// A key as the store sees it.
struct Loc<'k> {
    /// Namespaced, checked, shortened.
    full: Cow<'k, str>,
    /// Its family, for generation checks.
    family: Option<&'k str>,
    /// On Redis, where the family's generation is kept.
    gen_key: Option<String>,
}

/// A cache: a store plus key namespace, default timeout and counters.
///
/// Cheap to clone (an `Arc`). Get the configured ones with [`crate::cache`]
/// and [`crate::caches`], or build a standalone one with
/// [`CacheConfig::build`]. Every method is `async`; [`Cache::blocking`] gives
/// the same methods for synchronous code, usable with or without a tokio
/// runtime.
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
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    alias: String,
    backend: Backend,
    store: Store,
    /// `prefix`, `prefix:version`, `version` or empty: put before every key.
    namespace: String,
    default_timeout: Timeout,
    compress_min: Option<usize>,
    counters: Counters,
    families: Families,
    flights: Flights,
    created: Instant,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("alias", &self.inner.alias)
            .field("backend", &self.inner.backend);
        if let Store::Redis(r) = &self.inner.store {
            d.field("url", r.url());
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

fn namespace(cfg: &CacheConfig) -> String {
    match (cfg.key_prefix.is_empty(), cfg.version) {
        (true, None) => String::new(),
        (false, None) => cfg.key_prefix.clone(),
        (true, Some(v)) => v.to_string(),
        (false, Some(v)) => format!("{}:{v}", cfg.key_prefix),
    }
}

impl Cache {
    pub(crate) fn from_config(alias: &str, cfg: &CacheConfig) -> Result<Cache> {
        let store = match cfg.backend {
            Backend::Local => Store::Local(LocalStore::new(cfg.max_entries)),
            Backend::Dummy => Store::Dummy,
            Backend::Redis => {
                let url = cfg.redis_url.clone().ok_or_else(|| {
                    crate::ConfigError::new("REDIS_URL", "", "the redis backend needs a URL")
                })?;
                Store::Redis(RedisStore::new(&RedisSettings {
                    url,
                    max_connections: cfg.max_connections,
                    connect_timeout: cfg.connect_timeout,
                    response_timeout: cfg.response_timeout,
                    breaker_cooldown: cfg.breaker_cooldown,
                })?)
            }
        };
        Ok(Self::with_store(alias, cfg, store))
    }

    fn with_store(alias: &str, cfg: &CacheConfig, store: Store) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                alias: alias.to_owned(),
                backend: cfg.backend,
                store,
                namespace: namespace(cfg),
                default_timeout: cfg.default_timeout,
                compress_min: cfg.compress_min_bytes,
                counters: Counters::default(),
                families: Families::default(),
                flights: Flights::default(),
                created: Instant::now(),
            }),
        }
    }

    /// A cache whose every call fails with `err` (an invalid configuration
    /// found when the default cache was first used). Cached functions still
    /// run their bodies; the error is logged once here.
    pub(crate) fn broken(alias: &str, cfg: &CacheConfig, err: crate::ConfigError) -> Cache {
        tracing::error!(cache = alias, error = %err, "tg-cache configuration is invalid; caching is disabled for this cache");
        Self::with_store(alias, cfg, Store::Broken(err))
    }

    /// The alias this cache is registered under (`default` for [`crate::cache`]).
    pub fn alias(&self) -> &str {
        &self.inner.alias
    }

    /// The store kind.
    pub fn backend(&self) -> Backend {
        self.inner.backend
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

    /// Entries held by a local store (`None` for other stores).
    pub fn local_len(&self) -> Option<u64> {
        match &self.inner.store {
            Store::Local(l) => Some(l.len()),
            _ => None,
        }
    }

    /// The blocking face of this cache, for synchronous code.
    pub fn blocking(&self) -> BlockingCache<'_> {
        BlockingCache(self)
    }

    /// The key as stored: namespace applied, checked, shortened if long.
    /// With the default configuration this is `key` itself.
    pub fn make_key<'k>(&self, key: &'k str) -> Result<Cow<'k, str>> {
        let key = check_key(key)?;
        if self.inner.namespace.is_empty() {
            Ok(key)
        } else {
            Ok(Cow::Owned(shorten(format!(
                "{}:{}",
                self.inner.namespace, key
            ))))
        }
    }

    fn make_pattern(&self, pattern: &str) -> String {
        if self.inner.namespace.is_empty() {
            pattern.to_owned()
        } else {
            let mut p = String::with_capacity(self.inner.namespace.len() + pattern.len() + 1);
            glob_escape_into(&self.inner.namespace, &mut p);
            p.push(':');
            p.push_str(pattern);
            p
        }
    }

    fn broken_err(e: &crate::ConfigError) -> Error {
        Error::Config(e.clone())
    }

    /// Counts and logs a store failure.
    fn report(&self, op: &'static str, key: &str, err: &Error) {
        Counters::bump(&self.inner.counters.errors);
        Counters::bump(&self.inner.families.of(key).errors);
        match err {
            Error::Unavailable { .. } | Error::Config(_) => {
                tracing::debug!(cache = %self.inner.alias, op, key, error = %err, "cache call failed")
            }
            _ => {
                tracing::warn!(cache = %self.inner.alias, op, key, error = %err, "cache call failed")
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
        Counters::bump(&self.inner.counters.decode_errors);
        tracing::warn!(cache = %self.inner.alias, key, error = %why, "cached value could not be decoded; treated as a miss");
    }

    fn typed<T: CacheValue>(&self, key: &str, v: &AnyValue) -> Option<T> {
        match v.downcast_ref::<T>() {
            Some(t) => Some(t.clone()),
            None => {
                self.decode_failed(
                    key,
                    &format_args!(
                        "the entry holds another type than {}",
                        std::any::type_name::<T>()
                    ),
                );
                None
            }
        }
    }

    fn decode<T: CacheValue>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        match codec::decode(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.decode_failed(key, &e);
                None
            }
        }
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        codec::encode(value, self.inner.compress_min).map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })
    }

    fn count_lookup<T>(&self, key: &str, v: &Option<T>) {
        let f = self.inner.families.of(key);
        if v.is_some() {
            f.hits.bump();
        } else {
            f.misses.bump();
        }
    }

    /// Where `key` lives in the store: namespaced, with its family.
    fn locate<'k>(&self, key: &'k str) -> Result<Loc<'k>> {
        let full = self.make_key(key)?;
        let family = family_of(key);
        let gen_key = match (&self.inner.store, family) {
            (Store::Redis(_), Some(f)) => Some(self.namespaced(generation_key(f))),
            _ => None,
        };
        Ok(Loc {
            full,
            family,
            gen_key,
        })
    }

    fn namespaced(&self, key: String) -> String {
        if self.inner.namespace.is_empty() {
            key
        } else {
            format!("{}:{key}", self.inner.namespace)
        }
    }

    /// Looks up a located key; returns the value (if live) and the current
    /// generation of its family.
    async fn lookup<T: CacheValue>(&self, loc: &Loc<'_>) -> Result<(Option<T>, u64)> {
        match &self.inner.store {
            Store::Local(l) => {
                let g = l.generation(loc.family);
                Ok((
                    l.get(&loc.full, g).and_then(|v| self.typed(&loc.full, &v)),
                    g,
                ))
            }
            Store::Redis(r) => {
                let (bytes, g) = r.get(&loc.full, loc.gen_key.as_deref()).await?;
                Ok((bytes.and_then(|b| self.decode(&loc.full, &b)), g))
            }
            Store::Dummy => Ok((None, 0)),
            Store::Broken(e) => Err(Self::broken_err(e)),
        }
    }

    /// The generation handle of `family` on a local store (for the hit path
    /// of `#[cache_function]`); `None` for other stores.
    #[doc(hidden)]
    pub fn __family_generation(&self, family: &str) -> Option<Arc<AtomicU64>> {
        match &self.inner.store {
            Store::Local(l) if self.inner.namespace.is_empty() => Some(l.generation_handle(family)),
            _ => None,
        }
    }

    /// Looks up `key` on the local store only: the synchronous hit path of
    /// `#[cache_function]`. `None` when this is not a local store. The
    /// caller counts the hit (in its family's counters).
    #[doc(hidden)]
    #[inline]
    pub fn __local_hit<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        generation: &AtomicU64,
    ) -> Option<R> {
        if let Store::Local(l) = &self.inner.store {
            let v = l.get(key, generation.load(Ordering::Acquire))?;
            let s = v.downcast_ref::<P::Stored>()?;
            return Some(P::load(s.clone()));
        }
        None
    }

    async fn get_in<T: CacheValue>(&self, key: &str) -> Result<Option<T>> {
        let loc = self.locate(key)?;
        let r = self.lookup(&loc).await.map(|(v, _)| v);
        if let Ok(v) = &r {
            self.count_lookup(key, v);
        }
        self.track("get", key, r)
    }

    async fn set_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<()> {
        let loc = self.locate(key)?;
        self.inner.flights.invalidate_key(&loc.full);
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            let r = self.delete_keys(vec![loc.full.to_string()]).await.map(drop);
            return self.track("set", &loc.full, r);
        };
        let r = match &self.inner.store {
            Store::Local(l) => {
                let g = l.generation(loc.family);
                l.insert(loc.full.to_string(), Arc::new(value.clone()), ttl, g);
                Ok(())
            }
            Store::Redis(r) => match self.encode(&loc.full, value) {
                Ok(bytes) => r.set(&loc.full, bytes, ttl, loc.gen_key.as_deref()).await,
                Err(e) => Err(e),
            },
            Store::Dummy => return Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if r.is_ok() {
            Counters::bump(&self.inner.counters.sets);
        }
        self.track("set", &loc.full, r)
    }

    async fn add_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<bool> {
        let loc = self.locate(key)?;
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            return Ok(false);
        };
        let r = match &self.inner.store {
            Store::Local(l) => {
                let g = l.generation(loc.family);
                Ok(l.add(loc.full.to_string(), Arc::new(value.clone()), ttl, g))
            }
            Store::Redis(r) => match self.encode(&loc.full, value) {
                Ok(bytes) => r.add(&loc.full, bytes, ttl, loc.gen_key.as_deref()).await,
                Err(e) => Err(e),
            },
            Store::Dummy => Ok(true),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if matches!(r, Ok(true)) && !matches!(self.inner.store, Store::Dummy) {
            self.inner.flights.invalidate_key(&loc.full);
            Counters::bump(&self.inner.counters.sets);
        }
        self.track("add", &loc.full, r)
    }

    /// The shared get-or-compute path: lookup, then single-flight compute and
    /// store. Store failures are logged and counted; `f`'s result is always
    /// returned (fail-open). A value computed while its key was invalidated
    /// (deleted, overwritten, or its family invalidated) is returned but not
    /// stored.
    async fn get_or_compute<P, R, F, Fut>(&self, key: &str, timeout: Timeout, f: F) -> R
    where
        P: CachePolicy<R>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            return f().await;
        };
        let loc = match self.locate(key) {
            Ok(l) => l,
            Err(e) => {
                self.report("get_or_set", key, &e);
                return f().await;
            }
        };
        let mut generation = None;
        match self.lookup::<P::Stored>(&loc).await {
            Ok((Some(v), _)) => {
                self.count_lookup(key, &Some(()));
                return P::load(v);
            }
            Ok((None, g)) => {
                generation = Some(g);
                self.count_lookup(key, &None::<()>);
            }
            Err(e) => {
                self.count_lookup(key, &None::<()>);
                self.report("get", key, &e);
            }
        }
        let mut f = Some(f);
        loop {
            let leader = match self.inner.flights.join(&loc.full) {
                Ok(leader) => leader,
                Err(flight) => {
                    if let Some(v) = flight.wait().await
                        && let Some(s) = v.downcast_ref::<P::Stored>()
                    {
                        return P::load(s.clone());
                    }
                    continue;
                }
            };
            // Another leader may have stored the value after our lookup.
            if let Ok((found, g)) = self.lookup::<P::Stored>(&loc).await {
                if let Some(v) = found {
                    leader.finish(Some(Arc::new(v.clone())));
                    return P::load(v);
                }
                generation = Some(g);
            }
            let ticket = match (&self.inner.store, generation) {
                (Store::Redis(r), Some(g)) => match r.begin_fill(&loc.full, g).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.report("begin_fill", &loc.full, &e);
                        None
                    }
                },
                _ => None,
            };
            let f = f.take().expect("the leader computes once");
            let result = f().await;
            let shared = match (P::store(&result), generation) {
                (Some(stored), Some(g)) => {
                    if let Err(e) = self.fill(&loc, &stored, ttl, g, &leader, ticket).await {
                        self.report("set", &loc.full, &e);
                    }
                    Some(Arc::new(stored) as AnyValue)
                }
                (Some(stored), None) => Some(Arc::new(stored) as AnyValue),
                (None, _) => None,
            };
            leader.finish(shared);
            return result;
        }
    }

    /// Stores a computed value unless its key was invalidated since the
    /// computation began (atomically: the flight's lock locally, a Lua script
    /// checking the fill marker and the generation on Redis).
    async fn fill<T: CacheValue>(
        &self,
        loc: &Loc<'_>,
        value: &T,
        ttl: Option<Duration>,
        generation: u64,
        leader: &crate::flight::Leader<'_>,
        ticket: Option<FillTicket>,
    ) -> Result<()> {
        match &self.inner.store {
            Store::Local(l) => {
                let stored = leader.store_if_current(|| {
                    l.insert(
                        loc.full.to_string(),
                        Arc::new(value.clone()),
                        ttl,
                        generation,
                    )
                });
                if stored {
                    Counters::bump(&self.inner.counters.sets);
                }
                Ok(())
            }
            Store::Redis(r) => {
                let Some(ticket) = ticket else { return Ok(()) };
                let bytes = self.encode(&loc.full, value)?;
                if leader.invalidated() {
                    return Ok(());
                }
                if r.fill(&loc.full, bytes, ttl, loc.gen_key.as_deref(), ticket)
                    .await?
                {
                    Counters::bump(&self.inner.counters.sets);
                }
                Ok(())
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        }
    }

    async fn get_many_in<T: CacheValue, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<HashMap<String, T>> {
        let mut locs = Vec::with_capacity(keys.len());
        for k in keys {
            locs.push(self.locate(k.as_ref())?);
        }
        let mut out = HashMap::with_capacity(keys.len());
        let mut take = |k: &K, v: Option<T>| {
            self.count_lookup(k.as_ref(), &v);
            if let Some(v) = v {
                out.insert(k.as_ref().to_owned(), v);
            }
        };
        let r = match &self.inner.store {
            Store::Local(l) => {
                for (k, loc) in keys.iter().zip(&locs) {
                    let g = l.generation(loc.family);
                    take(
                        k,
                        l.get(&loc.full, g)
                            .and_then(|v| self.typed::<T>(&loc.full, &v)),
                    );
                }
                Ok(())
            }
            Store::Redis(r) => {
                let req = locs
                    .iter()
                    .map(|l| (l.full.to_string(), l.gen_key.clone()))
                    .collect();
                match r.get_many(req).await {
                    Ok(values) => {
                        for ((k, loc), v) in keys.iter().zip(&locs).zip(values) {
                            take(k, v.and_then(|b| self.decode::<T>(&loc.full, &b)));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("get_many", "", r).map(|()| out)
    }

    async fn set_many_in<T: CacheValue, K: AsRef<str>>(
        &self,
        items: &[(K, T)],
        timeout: Timeout,
    ) -> Result<()> {
        let mut locs = Vec::with_capacity(items.len());
        for (k, _) in items {
            let loc = self.locate(k.as_ref())?;
            self.inner.flights.invalidate_key(&loc.full);
            locs.push(loc);
        }
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            let keys = locs.iter().map(|l| l.full.to_string()).collect();
            return self.delete_keys(keys).await.map(drop);
        };
        let r = match &self.inner.store {
            Store::Local(l) => {
                for (loc, (_, v)) in locs.iter().zip(items) {
                    let g = l.generation(loc.family);
                    l.insert(loc.full.to_string(), Arc::new(v.clone()), ttl, g);
                }
                Ok(())
            }
            Store::Redis(r) => {
                let mut encoded = Vec::with_capacity(items.len());
                for (loc, (_, v)) in locs.iter().zip(items) {
                    let bytes = self.encode(&loc.full, v)?;
                    encoded.push((loc.full.to_string(), bytes, loc.gen_key.clone()));
                }
                r.set_many(encoded, ttl).await
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if r.is_ok() && !matches!(self.inner.store, Store::Dummy) {
            self.inner
                .counters
                .sets
                .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.track("set_many", "", r)
    }

    /// Deletes stored keys (already namespaced); returns how many existed.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<usize> {
        for k in &keys {
            self.inner.flights.invalidate_key(k);
        }
        let r = match &self.inner.store {
            Store::Local(l) => Ok(keys.iter().filter(|k| l.remove(k)).count()),
            Store::Redis(r) => r.delete_many(keys).await,
            Store::Dummy => Ok(0),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if let Ok(n) = r {
            self.inner
                .counters
                .deletes
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn delete_many_in<K: AsRef<str>>(&self, keys: &[K]) -> Result<usize> {
        let mut full = Vec::with_capacity(keys.len());
        for k in keys {
            full.push(self.make_key(k.as_ref())?.into_owned());
        }
        let r = self.delete_keys(full).await;
        self.track("delete_many", "", r)
    }

    async fn delete_in(&self, key: &str) -> Result<bool> {
        let full = self.make_key(key)?.into_owned();
        let r = self.delete_keys(vec![full]).await.map(|n| n > 0);
        self.track("delete", key, r)
    }

    async fn has_key_in(&self, key: &str) -> Result<bool> {
        let loc = self.locate(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.contains(&loc.full, l.generation(loc.family))),
            Store::Redis(r) => r.exists(&loc.full, loc.gen_key.as_deref()).await,
            Store::Dummy => Ok(false),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("has_key", &loc.full, r)
    }

    async fn touch_in(&self, key: &str, timeout: Timeout) -> Result<bool> {
        let loc = self.locate(key)?;
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            let r = self.delete_keys(vec![loc.full.to_string()]).await;
            return self.track("touch", &loc.full, r.map(|n| n > 0));
        };
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.touch(&loc.full, ttl, l.generation(loc.family))),
            Store::Redis(r) => r.touch(&loc.full, ttl, loc.gen_key.as_deref()).await,
            Store::Dummy => Ok(false),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("touch", &loc.full, r)
    }

    async fn incr_in(&self, key: &str, delta: i64) -> Result<i64> {
        let loc = self.locate(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => match l.incr(&loc.full, delta, l.generation(loc.family)) {
                Incr::Done(n) => Ok(n),
                Incr::Missing => Err(Error::MissingKey(key.to_owned())),
                Incr::NotAnInteger => Err(Error::NotAnInteger(key.to_owned())),
            },
            Store::Redis(r) => match r.incr(&loc.full, delta, loc.gen_key.as_deref()).await {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(Error::MissingKey(key.to_owned())),
                Err(Error::Redis(e))
                    if e.to_string().contains("not an integer")
                        || e.to_string().contains("overflow") =>
                {
                    Err(Error::NotAnInteger(key.to_owned()))
                }
                Err(e) => Err(e),
            },
            Store::Dummy => Err(Error::MissingKey(key.to_owned())),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if r.is_ok() {
            self.inner.flights.invalidate_key(&loc.full);
        }
        match r {
            Err(e @ (Error::MissingKey(_) | Error::NotAnInteger(_))) => Err(e),
            r => self.track("incr", &loc.full, r),
        }
    }

    async fn ttl_in(&self, key: &str) -> Result<Option<Ttl>> {
        let loc = self.locate(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.ttl(&loc.full, l.generation(loc.family))),
            Store::Redis(r) => r.ttl(&loc.full, loc.gen_key.as_deref()).await,
            Store::Dummy => Ok(None),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("ttl", &loc.full, r)
    }

    async fn invalidate_family_in(&self, family: &str) -> Result<()> {
        if family_of(family) != Some(family) {
            return Err(Error::InvalidKey {
                key: family.to_owned(),
                reason: "a key family is the first three segments of a tg: key, e.g. `tg:queryset:Character` or `tg:fn:char_scenes`",
            });
        }
        let prefix = format!("{family}:");
        self.inner
            .flights
            .invalidate(|k| k == family || k.starts_with(&prefix));
        let r = match &self.inner.store {
            Store::Local(l) => {
                l.bump(family);
                Ok(())
            }
            Store::Redis(r) => r
                .bump(&self.namespaced(generation_key(family)))
                .await
                .map(drop),
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("invalidate_family", family, r)
    }

    async fn delete_pattern_in(&self, pattern: &str) -> Result<usize> {
        let pattern = self.make_pattern(pattern);
        self.inner.flights.invalidate(|k| glob_match(&pattern, k));
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.delete_pattern(&pattern)),
            Store::Redis(r) => r.delete_pattern(&pattern).await,
            Store::Dummy => Ok(0),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if let Ok(n) = r {
            self.inner
                .counters
                .deletes
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.track("delete_pattern", &pattern, r)
    }

    async fn clear_in(&self) -> Result<()> {
        self.inner.flights.invalidate(|_| true);
        let r = match &self.inner.store {
            Store::Local(l) => {
                l.clear();
                Ok(())
            }
            Store::Redis(r) => {
                let pattern = if self.inner.namespace.is_empty() {
                    format!("{}:*", crate::key::CacheKeyGenerator::PREFIX)
                } else {
                    self.make_pattern("*")
                };
                r.delete_pattern(&pattern).await.map(drop)
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("clear", "", r)
    }

    async fn flush_database_in(&self) -> Result<()> {
        self.inner.flights.invalidate(|_| true);
        let r = match &self.inner.store {
            Store::Local(l) => {
                l.clear();
                Ok(())
            }
            Store::Redis(r) => r.flush_db().await,
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("flush_database", "", r)
    }

    async fn health_in(&self) -> Result<Duration> {
        let start = Instant::now();
        let r = match &self.inner.store {
            Store::Redis(r) => r.ping().await,
            Store::Broken(e) => Err(Self::broken_err(e)),
            Store::Local(_) | Store::Dummy => Ok(()),
        };
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
                self.$imp($($pass),*).await
            }
        )*}

        impl BlockingCache<'_> {$(
            $(#[$doc])*
            ///
            /// Blocking twin of the async method of the same name.
            pub fn $name $(<$($g $(: $b)?),*>)? (&self, $($arg: $ty),*) -> $ret {
                block_on(self.0.$imp($($pass),*))
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
    fn incr(key: &str, delta: i64) -> Result<i64> => incr_in(key, delta);
    /// Atomically subtracts `delta`; see [`Cache::incr`].
    fn decr(key: &str, delta: i64) -> Result<i64> => incr_in(key, delta.checked_neg().unwrap_or(i64::MAX));
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
    /// overwritten or evicted later. Fills in progress are not stored.
    fn invalidate_family(family: &str) -> Result<()> => invalidate_family_in(family);
    /// Removes this cache's keys only: every key under its key prefix/version
    /// when one is configured, else every key of the `tg:` namespace (all keys
    /// tg-cache generates). Never a `FLUSHDB`: see [`Cache::flush_database`].
    fn clear() -> Result<()> => clear_in();
    /// Removes **every key of the Redis database**, this application's or not
    /// (`FLUSHDB`). On a local store, the same as [`Cache::clear`].
    fn flush_database() -> Result<()> => flush_database_in();
    /// Checks that the store answers (the seed's "Check Cache Status");
    /// returns the round-trip time.
    fn health() -> Result<Duration> => health_in();
}

impl Cache {
    /// The value at `key`, or `f()`'s result, which is then stored for
    /// `timeout`. Concurrent callers of one cold key compute once per process;
    /// the others wait for that result. Store failures never fail the call:
    /// they are logged and counted, and `f()`'s value is returned.
    pub async fn get_or_set<T, F, Fut>(&self, key: &str, timeout: impl Into<Timeout>, f: F) -> T
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.get_or_compute::<Always, T, F, Fut>(key, timeout.into(), f)
            .await
    }

    /// Like [`Cache::get_or_set`] for a fallible computation: only `Ok` values are cached.
    pub async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> std::result::Result<T, E>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.get_or_compute::<OkOnly, _, F, Fut>(key, timeout.into(), f)
            .await
    }

    /// The general form of [`Cache::get_or_set`]: `P` decides what is cached.
    pub async fn get_or_set_with<P, R, F, Fut>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> R
    where
        P: CachePolicy<R>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        self.get_or_compute::<P, R, F, Fut>(key, timeout.into(), f)
            .await
    }
}

impl Cache {
    /// Stores `result` as policy `P` says (used by refresh scopes of
    /// `#[cache_function]`). Failures are logged and counted, not returned.
    #[doc(hidden)]
    pub async fn __store_result<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        timeout: Timeout,
        result: &R,
    ) {
        if let Some(stored) = P::store(result) {
            let _ = self.set_in(key, &stored, timeout).await;
        }
    }
}

impl BlockingCache<'_> {
    /// Blocking [`Cache::__store_result`].
    #[doc(hidden)]
    pub fn __store_result<P: CachePolicy<R>, R>(&self, key: &str, timeout: Timeout, result: &R) {
        block_on(self.0.__store_result::<P, R>(key, timeout, result))
    }
}

/// The blocking face of a [`Cache`] ([`Cache::blocking`]): the same methods,
/// for synchronous code. Needs no async runtime, and never panics when called
/// inside one (it blocks the calling thread, as any blocking call does).
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
        self.get_or_set_with::<Always, T>(key, timeout, f)
    }

    /// Blocking [`Cache::try_get_or_set`].
    pub fn try_get_or_set<T: CacheValue, E>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.get_or_set_with::<OkOnly, _>(key, timeout, f)
    }

    /// Blocking [`Cache::get_or_set_with`].
    pub fn get_or_set_with<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        f: impl FnOnce() -> R,
    ) -> R {
        block_on(
            self.0
                .get_or_compute::<P, R, _, _>(key, timeout.into(), move || std::future::ready(f())),
        )
    }
}

// TEMP shims: stand-ins for the single-flight methods the runtime rewrite
// provides; they forward to `get_or_set_with` / `__store_result` and ignore
// `share`. Drop this block when merging the rewrite.
impl Cache {
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
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let _ = share;
        self.get_or_set_with::<P, R, F, Fut>(key, timeout, f).await
    }

    #[doc(hidden)]
    pub async fn __refresh<P, R, F, Fut>(&self, key: &str, timeout: Timeout, f: F) -> R
    where
        P: CachePolicy<R>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let r = f().await;
        self.__store_result::<P, R>(key, timeout, &r).await;
        r
    }
}

impl BlockingCache<'_> {
    #[doc(hidden)]
    pub fn __get_or_set_shared<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        timeout: Timeout,
        share: fn(&R) -> Option<R>,
        f: impl FnOnce() -> R,
    ) -> R {
        let _ = share;
        self.get_or_set_with::<P, R>(key, timeout, f)
    }

    #[doc(hidden)]
    pub fn __refresh<P: CachePolicy<R>, R>(
        &self,
        key: &str,
        timeout: Timeout,
        f: impl FnOnce() -> R,
    ) -> R {
        let r = f();
        self.__store_result::<P, R>(key, timeout, &r);
        r
    }
}
