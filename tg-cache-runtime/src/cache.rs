//! The cache API: [`Cache`] and its blocking face [`BlockingCache`].

use crate::codec;
use crate::config::{Backend, CacheConfig};
use crate::error::{Error, Result};
use crate::exec::block_on;
use crate::flight::Flights;
use crate::key::{check_key, glob_escape_into, glob_match, shorten};
use crate::stats::{CacheStats, Counters};
use crate::store::Store;
use crate::store::local::{AnyValue, Incr, LocalStore};
use crate::store::redis::{RedisSettings, RedisStore};
use crate::timeout::{Timeout, Ttl};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
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
        self.inner.counters.snapshot()
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

    fn count_lookup<T>(&self, v: &Option<T>) {
        let c = &self.inner.counters;
        if v.is_some() {
            c.hits.bump()
        } else {
            c.misses.bump()
        }
    }

    /// Looks up a stored key (already namespaced).
    async fn lookup<T: CacheValue>(&self, key: &str) -> Result<Option<T>> {
        match &self.inner.store {
            Store::Local(l) => Ok(l.get(key).and_then(|v| self.typed(key, &v))),
            Store::Redis(r) => Ok(r.get(key).await?.and_then(|bytes| self.decode(key, &bytes))),
            Store::Dummy => Ok(None),
            Store::Broken(e) => Err(Self::broken_err(e)),
        }
    }

    /// Looks up `key` on the local store only: the synchronous hit path of
    /// `#[cache_function]`. `None` when this is not a local store.
    #[doc(hidden)]
    #[inline]
    pub fn __local_hit<P: CachePolicy<R>, R>(&self, key: &str) -> Option<R> {
        if !self.inner.namespace.is_empty() {
            return None;
        }
        if let Store::Local(l) = &self.inner.store {
            let v = l.get(key)?;
            let s = v.downcast_ref::<P::Stored>()?;
            self.inner.counters.hits.bump();
            return Some(P::load(s.clone()));
        }
        None
    }

    async fn get_in<T: CacheValue>(&self, key: &str) -> Result<Option<T>> {
        let key = self.make_key(key)?;
        let r = self.lookup(&key).await;
        if let Ok(v) = &r {
            self.count_lookup(v);
        }
        self.track("get", &key, r)
    }

    async fn write<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        match &self.inner.store {
            Store::Local(l) => {
                l.insert(key.to_owned(), Arc::new(value.clone()), ttl);
                Ok(())
            }
            Store::Redis(r) => r.set(key, self.encode(key, value)?, ttl).await,
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        }
    }

    async fn set_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<()> {
        let key = self.make_key(key)?;
        self.inner.flights.invalidate_key(&key);
        let r = match timeout.resolve(self.inner.default_timeout) {
            None => self.delete_keys(vec![key.to_string()]).await.map(drop),
            Some(ttl) => {
                Counters::bump(&self.inner.counters.sets);
                self.write(&key, value, ttl).await
            }
        };
        self.track("set", &key, r)
    }

    async fn add_in<T: CacheValue>(&self, key: &str, value: &T, timeout: Timeout) -> Result<bool> {
        let key = self.make_key(key)?;
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            return Ok(false);
        };
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.add(key.to_string(), Arc::new(value.clone()), ttl)),
            Store::Redis(r) => match self.encode(&key, value) {
                Ok(bytes) => r.add(&key, bytes, ttl).await,
                Err(e) => Err(e),
            },
            Store::Dummy => Ok(true),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if matches!(r, Ok(true)) {
            Counters::bump(&self.inner.counters.sets);
        }
        self.track("add", &key, r)
    }

    /// The shared get-or-compute path: lookup, then single-flight compute and
    /// store. Store failures are logged and counted; `f`'s result is always
    /// returned (fail-open).
    async fn get_or_compute<P, R, F, Fut>(&self, key: &str, timeout: Timeout, f: F) -> R
    where
        P: CachePolicy<R>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            return f().await;
        };
        let key = match self.make_key(key) {
            Ok(k) => k,
            Err(e) => {
                self.report("get_or_set", key, &e);
                return f().await;
            }
        };
        match self.lookup::<P::Stored>(&key).await {
            Ok(Some(v)) => {
                self.inner.counters.hits.bump();
                return P::load(v);
            }
            Ok(None) => self.inner.counters.misses.bump(),
            Err(e) => {
                self.inner.counters.misses.bump();
                self.report("get", &key, &e);
            }
        }
        let mut f = Some(f);
        loop {
            let leader = match self.inner.flights.join(&key) {
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
            if let Ok(Some(v)) = self.lookup::<P::Stored>(&key).await {
                leader.finish(Some(Arc::new(v.clone())));
                return P::load(v);
            }
            let f = f.take().expect("the leader computes once");
            let result = f().await;
            let shared = match P::store(&result) {
                Some(stored) => {
                    if let Err(e) = self.fill(&key, &stored, ttl, &leader).await {
                        self.report("set", &key, &e);
                    }
                    Some(Arc::new(stored) as AnyValue)
                }
                None => None,
            };
            leader.finish(shared);
            return result;
        }
    }

    /// Stores a computed value unless its key was invalidated meanwhile.
    async fn fill<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        leader: &crate::flight::Leader<'_>,
    ) -> Result<()> {
        match &self.inner.store {
            Store::Local(l) => {
                if leader
                    .store_if_current(|| l.insert(key.to_owned(), Arc::new(value.clone()), ttl))
                {
                    Counters::bump(&self.inner.counters.sets);
                }
                Ok(())
            }
            Store::Redis(r) => {
                let bytes = self.encode(key, value)?;
                if leader.invalidated() {
                    return Ok(());
                }
                Counters::bump(&self.inner.counters.sets);
                r.set(key, bytes, ttl).await
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        }
    }

    async fn get_many_in<T: CacheValue, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<HashMap<String, T>> {
        let mut full = Vec::with_capacity(keys.len());
        for k in keys {
            full.push(self.make_key(k.as_ref())?.into_owned());
        }
        let mut out = HashMap::with_capacity(keys.len());
        let r = match &self.inner.store {
            Store::Local(l) => {
                for (k, f) in keys.iter().zip(&full) {
                    let v = l.get(f).and_then(|v| self.typed::<T>(f, &v));
                    self.count_lookup(&v);
                    if let Some(v) = v {
                        out.insert(k.as_ref().to_owned(), v);
                    }
                }
                Ok(())
            }
            Store::Redis(r) => match r.get_many(full.clone()).await {
                Ok(values) => {
                    for ((k, f), v) in keys.iter().zip(&full).zip(values) {
                        let v = v.and_then(|b| self.decode::<T>(f, &b));
                        self.count_lookup(&v);
                        if let Some(v) = v {
                            out.insert(k.as_ref().to_owned(), v);
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
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
        let mut full = Vec::with_capacity(items.len());
        for (k, _) in items {
            let k = self.make_key(k.as_ref())?.into_owned();
            self.inner.flights.invalidate_key(&k);
            full.push(k);
        }
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            return self.delete_keys(full).await.map(drop);
        };
        let r = match &self.inner.store {
            Store::Local(l) => {
                for (k, (_, v)) in full.into_iter().zip(items) {
                    l.insert(k, Arc::new(v.clone()), ttl);
                }
                Ok(())
            }
            Store::Redis(r) => {
                let mut encoded = Vec::with_capacity(items.len());
                for (k, (_, v)) in full.into_iter().zip(items) {
                    let bytes = self.encode(&k, v)?;
                    encoded.push((k, bytes));
                }
                r.set_many(encoded, ttl).await
            }
            Store::Dummy => Ok(()),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        if r.is_ok() {
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
        let key = self.make_key(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.contains(&key)),
            Store::Redis(r) => r.exists(&key).await,
            Store::Dummy => Ok(false),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("has_key", &key, r)
    }

    async fn touch_in(&self, key: &str, timeout: Timeout) -> Result<bool> {
        let key = self.make_key(key)?;
        let Some(ttl) = timeout.resolve(self.inner.default_timeout) else {
            let r = self.delete_keys(vec![key.to_string()]).await;
            return self.track("touch", &key, r.map(|n| n > 0));
        };
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.touch(&key, ttl)),
            Store::Redis(r) => r.touch(&key, ttl).await,
            Store::Dummy => Ok(false),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("touch", &key, r)
    }

    async fn incr_in(&self, key: &str, delta: i64) -> Result<i64> {
        let full = self.make_key(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => match l.incr(&full, delta) {
                Incr::Done(n) => Ok(n),
                Incr::Missing => Err(Error::MissingKey(key.to_owned())),
                Incr::NotAnInteger => Err(Error::NotAnInteger(key.to_owned())),
            },
            Store::Redis(r) => match r.incr(&full, delta).await {
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
            self.inner.flights.invalidate_key(&full);
        }
        match r {
            Err(e @ (Error::MissingKey(_) | Error::NotAnInteger(_))) => Err(e),
            r => self.track("incr", &full, r),
        }
    }

    async fn ttl_in(&self, key: &str) -> Result<Option<Ttl>> {
        let key = self.make_key(key)?;
        let r = match &self.inner.store {
            Store::Local(l) => Ok(l.ttl(&key)),
            Store::Redis(r) => r.ttl(&key).await,
            Store::Dummy => Ok(None),
            Store::Broken(e) => Err(Self::broken_err(e)),
        };
        self.track("ttl", &key, r)
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
