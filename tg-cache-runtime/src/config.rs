//! Configuration: a builder per cache, and the `TG_CACHE_*` environment variables.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TG_CACHE_BACKEND` | `local`, `redis`, `redis-cluster` or `dummy` | `local` |
//! | `REDIS_URL` (or `TG_CACHE_REDIS_URL`, which wins) | `redis://[:password@]host[:port][/db]`, `rediss://` for TLS | `redis://127.0.0.1:6379` |
//! | `TG_CACHE_REDIS_NODES` | a Redis Cluster's seed nodes, comma-separated (`redis://h1:7000,redis://h2:7001`); needed by `redis-cluster` | none |
//! | `TG_CACHE_MAX_ENTRIES` | local store bound | `1000` |
//! | `TG_CACHE_DEFAULT_TIMEOUT` | seconds, or `none` (never expire) | `300` |
//! | `TG_CACHE_JITTER` | spread of stored lifetimes, a fraction below 1 ([`CacheConfig::jitter`]); `0` or `off` | `off` |
//! | `TG_CACHE_KEY_PREFIX` | Django's `KEY_PREFIX` | none |
//! | `TG_CACHE_VERSION` | Django's `VERSION` | none |
//! | `TG_CACHE_KEY_FUNCTION` | `django` for Django's `make_key` and values Django reads (a cache shared with Django, [`crate::key::KeyFunction`]), or `tg` | `tg` |
//! | `TG_CACHE_MAX_CONNECTIONS` | Redis in-flight command limit | `50` |
//! | `TG_CACHE_CONNECT_TIMEOUT_MS` | Redis connect timeout | `1000` |
//! | `TG_CACHE_RESPONSE_TIMEOUT_MS` | Redis response timeout | `500` |
//! | `TG_CACHE_POOL_SIZE` | multiplexed Redis connections | `1` |
//! | `TG_CACHE_MAX_VALUE_BYTES` | largest value read (stored or inflated) | `67108864` (64 MiB) |
//! | `TG_CACHE_LEASE_TIMEOUT_MS` | how long a dead filler's Redis lease blocks other processes | `3000` |
//! | `TG_CACHE_MAX_WAIT_MS` | how long a caller waits for another process's computation before it computes too | `30000` |
//! | `TG_CACHE_COMPRESS_MIN_BYTES` | zlib-compress values at least this long; `off` | `off` |
//! | `TG_CACHE_NEAR_CACHE` | entries of the Redis store's near cache ([`CacheConfig::near_cache`]); `0` or `off` disables it | `off` |
//!
//! With no variables set the default cache is a local store: zero configuration.

use crate::error::ConfigError;
use crate::timeout::Timeout;
use std::fmt;
use std::time::Duration;

/// Which store a cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process moka store (Django's `LocMemCache`).
    Local,
    /// Redis (django-redis).
    Redis,
    /// A Redis Cluster ([`CacheConfig::redis_cluster`]).
    RedisCluster,
    /// Caches nothing (Django's `DummyCache`).
    Dummy,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis-cluster",
            Backend::Dummy => "dummy",
        })
    }
}

/// A Redis URL whose `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks and wraps `url`. Accepts `redis://`, `rediss://`, `redis+unix://` and `unix://`.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::new("REDIS_URL", redact(url), reason);
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                "not a URL; expected redis://[:password@]host[:port][/db]",
            ));
        };
        if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(bad("unknown scheme; expected redis:// or rediss://"));
        }
        if scheme == "rediss" && !cfg!(feature = "tls") {
            return Err(bad(
                "rediss:// needs TLS support: enable the `tls` feature of tg-cache (on by default)",
            ));
        }
        if scheme == "rediss" && url.ends_with("#insecure") && !cfg!(feature = "tls-insecure") {
            return Err(bad(
                "#insecure (no certificate verification) needs the explicit `tls-insecure` feature of tg-cache; certificates are verified otherwise",
            ));
        }
        if rest.is_empty() && !scheme.ends_with("unix") {
            return Err(bad("no host; expected redis://host[:port][/db]"));
        }
        let parts = Parts::split(scheme, rest);
        if !parts.well_formed() && parts.stray_at() {
            return Err(bad(
                "the password (or user name) holds a raw `/`, `?` or `#`; percent-encode it (`%2F`, `%3F`, `%23`)",
            ));
        }
        if !scheme.ends_with("unix") {
            if let Some(port) = parts.port()
                && port.parse::<u16>().is_err()
            {
                return Err(bad(&format!(
                    "the port `{port}` is not a number from 1 to 65535"
                )));
            }
            let db = parts
                .tail
                .strip_prefix('/')
                .map(|p| p.split(['?', '#']).next().unwrap_or(""));
            if let Some(db) = db.filter(|d| !d.is_empty())
                && db.parse::<u32>().is_err()
            {
                return Err(bad(&format!(
                    "the database `{db}` is not a number (redis://host:port/<db>, 0 by default)"
                )));
            }
        }
        if let Err(e) = redis::Client::open(url) {
            return Err(bad(&format!("malformed Redis URL ({})", e.kind_name())));
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL with its password, for connecting. Never log this.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `host:port` (or the socket path), for messages: never a password.
    pub fn address(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return redact(&self.0);
        };
        let parts = Parts::split(scheme, rest);
        if scheme.ends_with("unix") {
            return parts.host.to_owned();
        }
        if parts.port().is_some() {
            parts.host.to_owned()
        } else {
            format!("{}:6379", parts.host)
        }
    }
}

/// A URL after its `scheme://`, split where a well-formed URL splits: the
/// user information ends at the last `@` of the authority, the authority
/// at the first `/`, `?` or `#` (a socket path at the first `?` or `#`).
struct Parts<'a> {
    unix: bool,
    userinfo: Option<&'a str>,
    /// `host[:port]`, or a socket path.
    host: &'a str,
    /// `[/db][?query][#fragment]`; empty for a socket.
    tail: &'a str,
}

impl<'a> Parts<'a> {
    fn split(scheme: &str, rest: &'a str) -> Self {
        let unix = scheme.ends_with("unix");
        let end = if unix {
            rest.find(['?', '#'])
        } else {
            rest.find(['/', '?', '#'])
        }
        .unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // A socket path may hold an `@`; its user information cannot
        // hold a `/`.
        let userinfo_end = if unix {
            authority.split('/').next().and_then(|seg| seg.rfind('@'))
        } else {
            authority.rfind('@')
        };
        let (userinfo, host) = match userinfo_end {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        Self {
            unix,
            userinfo,
            host,
            tail,
        }
    }

    /// The port as written, if there is one.
    fn port(&self) -> Option<&'a str> {
        if self.unix {
            return None;
        }
        match self.host.rsplit_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => self.host.rsplit_once(':').map(|(_, p)| p),
        }
    }

    /// Whether the split is the one a URL parser makes: a host (with a
    /// numeric port, if any) and no `@` past the user information but in
    /// a query value.
    fn well_formed(&self) -> bool {
        let path = self.tail.split('?').next().unwrap_or("");
        let query_ok = self.tail.split_once('?').is_none_or(|(_, q)| {
            q.split('#')
                .next()
                .unwrap_or("")
                .split('&')
                .all(|pair| !pair.split_once('=').map_or(pair, |(k, _)| k).contains('@'))
        });
        let host_ok = self.unix
            || (!self.host.is_empty() && self.port().is_none_or(|p| p.parse::<u16>().is_ok()));
        host_ok && !path.contains('@') && query_ok
    }

    /// Whether an `@` follows the user information: a password that holds
    /// a raw `/`, `?` or `#` splits there.
    fn stray_at(&self) -> bool {
        self.host.contains('@') || self.tail.contains('@')
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}
impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        // The detail of a parse error can echo the URL; keep only the category.
        format!("{:?}", self.kind())
    }
}

/// Replaces every secret of a Redis URL by `***`: the password (the user
/// information but for a user name before a `:`; where a raw `/`, `?` or
/// `#` in the password makes the URL ambiguous, everything between `://`
/// and the last `@`, so such a password is hidden whole), and the value of
/// every query parameter but `db` and `protocol` (redis-rs reads a unix
/// socket's password from `?pass=`).
///
/// ```
/// use tg_cache_runtime::config::redact;
/// assert_eq!(redact("redis://user:s3cret@h:6380/2"), "redis://user:***@h:6380/2");
/// assert_eq!(redact("redis://:p@ss/w#rd@h/0"), "redis://:***@h/0");
/// assert_eq!(
///     redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
///     "redis+unix:///run/redis.sock?db=1&pass=***"
/// );
/// assert_eq!(redact("redis://h/0?password=s3cret"), "redis://h/0?password=***");
/// assert_eq!(redact("redis://h/0?password=a@b"), "redis://h/0?password=***");
/// assert_eq!(redact("unix://u:s3cret@/run/redis.sock"), "unix://u:***@/run/redis.sock");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    let parts = Parts::split(scheme, rest);
    let (userinfo, after) = if parts.well_formed() || !parts.stray_at() {
        let after = &rest[rest.len() - parts.host.len() - parts.tail.len()..];
        (parts.userinfo, after)
    } else {
        // Not a URL a parser would split this way: everything up to the
        // last `@` may be a password.
        match rest.rsplit_once('@') {
            Some((userinfo, after)) => (Some(userinfo), after),
            None => (None, rest),
        }
    };
    let shown = match userinfo {
        Some(userinfo) => {
            let user = match userinfo.split_once(':') {
                Some((user, _pw)) if !user.contains(['/', '?', '#']) => format!("{user}:***"),
                _ => "***".to_owned(),
            };
            format!("{user}@{after}")
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{}", redact_query(&shown))
}

/// Every query value but `db`'s and `protocol`'s replaced by `***`.
fn redact_query(s: &str) -> String {
    let Some((before, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if matches!(k, "db" | "protocol") => format!("{k}={v}"),
            Some((k, _)) => format!("{k}=***"),
            None => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{before}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", redact(&self.0))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// The configuration of one cache. Build one with [`CacheConfig::local`],
/// [`CacheConfig::redis`], [`CacheConfig::dummy`] or [`CacheConfig::from_env`],
/// then tune it with the setters.
///
/// ```
/// use tg_cache_runtime::{CacheConfig, timeout::LONG};
/// let cfg = CacheConfig::local().max_entries(10_000).default_timeout(LONG);
/// let cache = cfg.build().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub(crate) backend: Backend,
    pub(crate) max_entries: u64,
    pub(crate) default_timeout: Timeout,
    pub(crate) jitter: crate::timeout::Jitter,
    pub(crate) key_prefix: String,
    pub(crate) version: Option<u64>,
    pub(crate) key_function: crate::key::KeyFunction,
    pub(crate) redis_url: Option<RedisUrl>,
    /// A Redis Cluster's seed nodes.
    pub(crate) redis_nodes: Vec<RedisUrl>,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) compress_min_bytes: Option<usize>,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) lease_timeout: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) pool_size: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) near_cache: Option<u64>,
    /// Test support: the near cache ignores invalidation pushes.
    pub(crate) near_ignores_pushes: bool,
    pub(crate) error: Option<ConfigError>,
}

/// The seed's development bound.
pub const DEFAULT_MAX_ENTRIES: u64 = 1000;
/// The seed's production connection limit: commands in flight at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50;
/// Multiplexed Redis connections per store (measured in `BENCHMARKS.md`).
pub const DEFAULT_POOL_SIZE: usize = 1;
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl Default for CacheConfig {
    fn default() -> Self {
        Self::local()
    }
}

impl CacheConfig {
    fn base(backend: Backend) -> Self {
        Self {
            backend,
            max_entries: DEFAULT_MAX_ENTRIES,
            default_timeout: Timeout::After(crate::timeout::MEDIUM),
            jitter: crate::timeout::Jitter::NONE,
            key_prefix: String::new(),
            version: None,
            key_function: crate::key::KeyFunction::Tg,
            redis_url: None,
            redis_nodes: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: Duration::from_millis(1000),
            response_timeout: Duration::from_millis(500),
            compress_min_bytes: None,
            breaker_cooldown: Duration::from_millis(50),
            lease_timeout: Duration::from_secs(3),
            max_wait: Duration::from_secs(30),
            pool_size: DEFAULT_POOL_SIZE,
            max_value_bytes: 64 << 20,
            near_cache: None,
            near_ignores_pushes: false,
            error: None,
        }
    }

    /// A local in-memory store bounded to 1000 entries.
    pub fn local() -> Self {
        Self::base(Backend::Local)
    }

    /// A Redis store at `url`. A malformed URL is reported by [`CacheConfig::build`].
    pub fn redis(url: &str) -> Self {
        let mut c = Self::base(Backend::Redis);
        match RedisUrl::parse(url) {
            Ok(u) => c.redis_url = Some(u),
            Err(e) => c.error = Some(e),
        }
        c
    }

    /// A Redis Cluster store, found through any of its `nodes` (seed nodes;
    /// the rest of the cluster is discovered). Keys are spread over the
    /// primaries by their hash slots as given; tg-cache's own keys (family
    /// epochs, refresh leases) are put in the slot of the key they belong
    /// to, so every script runs on one node. A malformed URL, or no node
    /// at all, is reported by [`CacheConfig::build`].
    ///
    /// ```
    /// use tg_cache_runtime::CacheConfig;
    /// let cfg = CacheConfig::redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
    /// assert_eq!(cfg.backend().to_string(), "redis-cluster");
    /// ```
    pub fn redis_cluster<S: AsRef<str>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let mut c = Self::base(Backend::RedisCluster);
        for node in nodes {
            match RedisUrl::parse(node.as_ref().trim()) {
                Ok(u) => c.redis_nodes.push(u),
                Err(e) => {
                    c.error.get_or_insert(ConfigError {
                        setting: "redis_cluster".into(),
                        ..e
                    });
                }
            }
        }
        c.redis_url = c.redis_nodes.first().cloned();
        c
    }

    /// A store that caches nothing.
    pub fn dummy() -> Self {
        Self::base(Backend::Dummy)
    }

    /// The backend this configuration selects.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Bound of the local store (entries). Ignored by other stores.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Timeout used when a call passes [`Timeout::Default`].
    pub fn default_timeout(mut self, t: impl Into<Timeout>) -> Self {
        self.default_timeout = match t.into() {
            Timeout::Default => Timeout::After(crate::timeout::MEDIUM),
            Timeout::Jittered(None, j) => Timeout::Jittered(Some(crate::timeout::MEDIUM), j),
            t => t,
        };
        self
    }

    /// Spreads the lifetimes of the entries this cache writes: each gets a
    /// lifetime drawn uniformly from `[timeout·(1 − fraction), timeout]`,
    /// so entries written together do not expire together (`0.1`: from 90%
    /// to 100% of the timeout). Applies to every write with a timeout that
    /// sets no jitter of its own ([`Timeout::jitter`]; `jitter(0.0)` there
    /// turns it off). Off by default; `TG_CACHE_JITTER`. A fraction outside
    /// `[0, 1)` is reported by [`CacheConfig::build`].
    ///
    /// ```
    /// use tg_cache_runtime::CacheConfig;
    /// assert!(CacheConfig::local().jitter(0.1).build().is_ok());
    /// assert!(CacheConfig::local().jitter(1.5).build().is_err());
    /// ```
    pub fn jitter(mut self, fraction: f64) -> Self {
        match crate::timeout::Jitter::new(fraction) {
            Ok(j) => self.jitter = j,
            Err(reason) => {
                self.error
                    .get_or_insert(ConfigError::new("jitter", fraction.to_string(), reason));
            }
        }
        self
    }

    /// Prefix put before every key, as Django's `KEY_PREFIX`: the key `k` is
    /// stored as `<prefix>:<version>:k`, the version being 1 unless
    /// [`CacheConfig::version`] sets it (as in Django). Empty by default, so
    /// keys are stored as given. Must not contain `:`. See
    /// [`crate::parity`] (namespaces).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Version put before every key, as Django's `VERSION`: `<prefix>:<version>:k`
    /// (`:<version>:k` without a prefix). A cache with a prefix and no
    /// version uses version 1.
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// How keys are stored and values framed: [`KeyFunction::Django`] for
    /// a cache shared with a Django application (Django's `make_key`,
    /// version 1 by default, and values exactly as django-redis'
    /// `JSONSerializer` reads them). See [`KeyFunction`] for what each
    /// gives and why `Tg` is the default.
    ///
    /// ```
    /// use tg_cache_runtime::{CacheConfig, key::KeyFunction};
    /// let cfg = CacheConfig::local().key_function(KeyFunction::Django);
    /// assert_eq!(cfg.key_function_kind(), KeyFunction::Django);
    /// ```
    ///
    /// [`KeyFunction`]: crate::key::KeyFunction
    /// [`KeyFunction::Django`]: crate::key::KeyFunction::Django
    pub fn key_function(mut self, function: crate::key::KeyFunction) -> Self {
        self.key_function = function;
        self
    }

    /// The key function this configuration selects
    /// ([`CacheConfig::key_function`]).
    pub fn key_function_kind(&self) -> crate::key::KeyFunction {
        self.key_function
    }

    /// Limit on concurrent in-flight Redis commands (the seed's
    /// `max_connections`). The store multiplexes them on one auto-reconnecting
    /// connection, which is what that limit protects in redis-py's pool.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Time allowed to establish a Redis connection.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Time allowed for Redis to answer a command.
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// zlib-compress Redis values whose JSON is at least `bytes` long
    /// (`None`: never). Values are read correctly either way.
    pub fn compress_min_bytes(mut self, bytes: Option<usize>) -> Self {
        self.compress_min_bytes = bytes;
        self
    }

    /// After Redis is found unreachable, how long calls fail fast before
    /// one call probes it again (the circuit breaker; exactly one probe at a
    /// time). Default 50 ms, so caching resumes within about that long of
    /// Redis answering again.
    pub fn breaker_cooldown(mut self, t: Duration) -> Self {
        self.breaker_cooldown = t;
        self
    }

    /// How many multiplexed connections the Redis store opens (default
    /// [`DEFAULT_POOL_SIZE`]); commands are spread over them in turn.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// The largest value tg-cache reads, in bytes, stored or inflated from
    /// zlib (default 64 MiB). A bigger value is never read: it is treated
    /// as a corrupt one (a miss, logged and counted, then replaced).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// How long a fill's lease in Redis outlives a holder that stopped
    /// renewing it (a crashed or killed process): the longest that callers
    /// in other processes wait before one of them takes the computation
    /// over. A live holder renews it every third of this while it computes,
    /// so slow computations are not affected. Default three seconds.
    pub fn lease_timeout(mut self, t: Duration) -> Self {
        self.lease_timeout = t;
        self
    }

    /// How long a caller waits for another process's computation of the
    /// same key (a lease holder that is alive and renewing) before it
    /// computes too, as a co-holder: the first of them to store wins.
    /// This is what lets callers get past a hung computation; a holder that
    /// finishes without storing, or dies, releases its waiters sooner (at
    /// once, or within [`CacheConfig::lease_timeout`]). Default 30 seconds.
    pub fn max_wait(mut self, t: Duration) -> Self {
        self.max_wait = t;
        self
    }

    /// Puts a near cache of at most `max_entries` decoded values in front
    /// of the Redis store (`0`: none, the default; ignored by other
    /// stores). A hit is then an in-process lookup, as fast as the local
    /// store's. It is kept coherent by Redis client-side tracking: any
    /// change of a key by any client (another process, Django,
    /// `redis-cli`), an expiry, a family invalidation, a `FLUSHDB` or the
    /// loss of the connection drops what it affects, in every process;
    /// this process's own writes drop it at once. On a Redis Cluster it
    /// reads through tracked connections to each primary, and a change of
    /// the topology drops it. Figures in `BENCHMARKS.md`.
    pub fn near_cache(mut self, max_entries: u64) -> Self {
        self.near_cache = (max_entries > 0).then_some(max_entries);
        self
    }

    /// Test support: the near cache ignores the server's invalidation
    /// pushes (not the loss of tracking), so that a test sees what this
    /// process's own writes do by themselves.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn testing_near_ignores_pushes(mut self) -> Self {
        self.near_ignores_pushes = true;
        self
    }

    /// The near cache's bound, if it has one ([`CacheConfig::near_cache`]).
    pub fn near_cache_entries(&self) -> Option<u64> {
        self.near_cache
    }

    /// The Redis URL, with its password redacted when displayed.
    pub fn redis_url(&self) -> Option<&RedisUrl> {
        self.redis_url.as_ref()
    }

    /// Reads the `TG_CACHE_*` variables (see the [module docs](self)).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`CacheConfig::from_env`], reading variables through `lookup`
    /// (useful in tests and for other configuration sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let backend = match get("TG_CACHE_BACKEND").as_deref().map(str::trim) {
            None | Some("local") => Backend::Local,
            Some("redis") => Backend::Redis,
            Some("redis-cluster") => Backend::RedisCluster,
            Some("dummy") => Backend::Dummy,
            Some(other) => {
                return Err(ConfigError::new(
                    "TG_CACHE_BACKEND",
                    other,
                    "unknown backend; expected one of local, redis, redis-cluster, dummy",
                ));
            }
        };
        let mut c = Self::base(backend);
        if let Some(v) = get("TG_CACHE_MAX_ENTRIES") {
            c.max_entries = parse_positive("TG_CACHE_MAX_ENTRIES", &v)?;
        }
        if let Some(v) = get("TG_CACHE_DEFAULT_TIMEOUT") {
            c.default_timeout = if v.trim().eq_ignore_ascii_case("none") {
                Timeout::Never
            } else {
                let secs: u64 =
                    parse_num("TG_CACHE_DEFAULT_TIMEOUT", &v, "whole seconds or `none`")?;
                Timeout::from(secs)
            };
        }
        if let Some(v) = get("TG_CACHE_JITTER") {
            let v = v.trim();
            if !v.eq_ignore_ascii_case("off") {
                let fraction: f64 = v.parse().map_err(|_| {
                    ConfigError::new(
                        "TG_CACHE_JITTER",
                        v,
                        "a fraction of the timeout below 1 (0.1), or `off`",
                    )
                })?;
                c.jitter = crate::timeout::Jitter::new(fraction)
                    .map_err(|reason| ConfigError::new("TG_CACHE_JITTER", v, reason))?;
            }
        }
        if let Some(v) = get("TG_CACHE_KEY_PREFIX") {
            check_key_prefix(&v)
                .map_err(|reason| ConfigError::new("TG_CACHE_KEY_PREFIX", v.clone(), reason))?;
            c.key_prefix = v;
        }
        if let Some(v) = get("TG_CACHE_VERSION") {
            c.version = Some(parse_num("TG_CACHE_VERSION", &v, "a non-negative integer")?);
        }
        if let Some(v) = get("TG_CACHE_KEY_FUNCTION") {
            c.key_function = crate::key::KeyFunction::parse(&v).ok_or_else(|| {
                ConfigError::new(
                    "TG_CACHE_KEY_FUNCTION",
                    v.clone(),
                    "unknown key function; expected `django` (Django's make_key, for a cache shared with Django) or `tg`",
                )
            })?;
        }
        if let Some(v) = get("TG_CACHE_MAX_CONNECTIONS") {
            c.max_connections = parse_positive("TG_CACHE_MAX_CONNECTIONS", &v)? as usize;
        }
        if let Some(v) = get("TG_CACHE_CONNECT_TIMEOUT_MS") {
            c.connect_timeout =
                Duration::from_millis(parse_positive("TG_CACHE_CONNECT_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("TG_CACHE_RESPONSE_TIMEOUT_MS") {
            c.response_timeout =
                Duration::from_millis(parse_positive("TG_CACHE_RESPONSE_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("TG_CACHE_POOL_SIZE") {
            c.pool_size = parse_positive("TG_CACHE_POOL_SIZE", &v)? as usize;
        }
        if let Some(v) = get("TG_CACHE_MAX_VALUE_BYTES") {
            c.max_value_bytes = parse_positive("TG_CACHE_MAX_VALUE_BYTES", &v)? as usize;
        }
        if let Some(v) = get("TG_CACHE_LEASE_TIMEOUT_MS") {
            c.lease_timeout =
                Duration::from_millis(parse_positive("TG_CACHE_LEASE_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("TG_CACHE_MAX_WAIT_MS") {
            c.max_wait = Duration::from_millis(parse_positive("TG_CACHE_MAX_WAIT_MS", &v)?);
        }
        if let Some(v) = get("TG_CACHE_COMPRESS_MIN_BYTES") {
            c.compress_min_bytes = if v.trim().eq_ignore_ascii_case("off") {
                None
            } else {
                Some(parse_num(
                    "TG_CACHE_COMPRESS_MIN_BYTES",
                    &v,
                    "a byte count or `off`",
                )?)
            };
        }
        if let Some(v) = get("TG_CACHE_NEAR_CACHE") {
            c.near_cache = if v.trim().eq_ignore_ascii_case("off") {
                None
            } else {
                let n: u64 = parse_num(
                    "TG_CACHE_NEAR_CACHE",
                    &v,
                    "a number of entries, or `0`/`off`",
                )?;
                (n > 0).then_some(n)
            };
        }
        if backend == Backend::RedisCluster {
            let nodes = get("TG_CACHE_REDIS_NODES").ok_or_else(|| {
                ConfigError::new(
                    "TG_CACHE_REDIS_NODES",
                    "",
                    "the redis-cluster backend needs its seed nodes: redis://h1:7000,redis://h2:7001,...",
                )
            })?;
            for node in split_nodes(&nodes) {
                c.redis_nodes.push(RedisUrl::parse(node).map_err(|mut e| {
                    e.setting = "TG_CACHE_REDIS_NODES".to_owned();
                    e
                })?);
            }
            c.redis_url = c.redis_nodes.first().cloned();
        }
        if backend == Backend::Redis {
            let (var, url) = match get("TG_CACHE_REDIS_URL") {
                Some(u) => ("TG_CACHE_REDIS_URL", u),
                None => (
                    "REDIS_URL",
                    get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
                ),
            };
            c.redis_url = Some(RedisUrl::parse(url.trim()).map_err(|mut e| {
                e.setting = var.to_owned();
                e
            })?);
        }
        Ok(c)
    }

    /// Checks the configuration without connecting to anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let zero = |setting: &str| Err(ConfigError::new(setting, "0", "must be greater than zero"));
        if self.max_value_bytes == 0 {
            return zero("max_value_bytes");
        }
        if self.backend == Backend::Local && self.max_entries == 0 {
            return zero("max_entries");
        }
        if self.backend == Backend::RedisCluster && self.redis_nodes.is_empty() {
            return Err(ConfigError::new(
                "TG_CACHE_REDIS_NODES",
                "",
                "the redis-cluster backend needs at least one seed node",
            ));
        }
        if matches!(self.backend, Backend::Redis | Backend::RedisCluster) {
            if self.max_connections == 0 {
                return zero("max_connections");
            }
            if self.pool_size == 0 {
                return zero("pool_size");
            }
            if self.connect_timeout.is_zero() {
                return zero("connect_timeout");
            }
            if self.response_timeout.is_zero() {
                return zero("response_timeout");
            }
            if self.lease_timeout < Duration::from_millis(30) {
                return Err(ConfigError::new(
                    "lease_timeout",
                    format!("{:?}", self.lease_timeout),
                    "must be at least 30 ms (it is renewed every third of it)",
                ));
            }
            if self.redis_url.is_none() {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "",
                    "the redis backend needs a URL",
                ));
            }
        }
        check_key_prefix(&self.key_prefix)
            .map_err(|reason| ConfigError::new("key_prefix", self.key_prefix.clone(), reason))
    }
}

/// The seed nodes of `TG_CACHE_REDIS_NODES`: URLs separated by commas. A
/// comma starts a new URL only before a scheme (`redis://`, `rediss://`,
/// `redis+unix://`, `unix://`), so a password may hold commas and is never
/// cut (and shown) in two.
fn split_nodes(nodes: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| {
                rest.len() >= scheme.len() && rest[..scheme.len()].eq_ignore_ascii_case(scheme)
            })
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in nodes.match_indices(',') {
        if starts_url(&nodes[i + 1..]) {
            out.push(&nodes[start..i]);
            start = i + 1;
        }
    }
    out.push(&nodes[start..]);
    // A separator before an empty entry (`a,,b`) stays on the URL before.
    out.into_iter()
        .map(|n| n.trim().trim_end_matches(',').trim_end())
        .filter(|n| !n.is_empty())
        .collect()
}

/// What is wrong with a key prefix, if anything.
fn check_key_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("must not contain whitespace or control characters");
    }
    if prefix.contains(':') {
        return Err(
            "must not contain `:` (keys are stored as `<prefix>:<version>:<key>`; a `:` would make two configurations share keys)",
        );
    }
    if prefix.starts_with('#') {
        return Err("must not start with `#` (reserved for tg-cache's own keys)");
    }
    Ok(())
}

fn parse_num<T: std::str::FromStr>(var: &str, v: &str, expected: &str) -> Result<T, ConfigError> {
    let t = v.trim();
    if t.starts_with('-') {
        return Err(ConfigError::new(
            var,
            v,
            format!("must not be negative; expected {expected}"),
        ));
    }
    t.parse()
        .map_err(|_| ConfigError::new(var, v, format!("not a number; expected {expected}")))
}

fn parse_positive(var: &str, v: &str) -> Result<u64, ConfigError> {
    let n: u64 = parse_num(var, v, "a positive integer")?;
    if n == 0 {
        return Err(ConfigError::new(var, v, "must be greater than zero"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        CacheConfig::from_lookup(move |n| {
            pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn zero_config_is_local() {
        let c = env(&[]).unwrap();
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.max_entries, 1000);
    }

    #[test]
    fn cluster_nodes_split_only_before_a_url() {
        assert_eq!(
            split_nodes("redis://:pa,ss@h1:7000, redis://h2:7001,,rediss://h3"),
            vec!["redis://:pa,ss@h1:7000", "redis://h2:7001", "rediss://h3"]
        );
        // A password with a comma is neither cut nor shown.
        let e = env(&[
            ("TG_CACHE_BACKEND", "redis-cluster"),
            (
                "TG_CACHE_REDIS_NODES",
                "redis://:s3c,r3t@h1:70x0,redis://h2:7001",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_REDIS_NODES");
        assert!(
            !e.to_string().contains("s3c") && !e.to_string().contains("r3t"),
            "{e}"
        );
        let c = env(&[
            ("TG_CACHE_BACKEND", "redis-cluster"),
            (
                "TG_CACHE_REDIS_NODES",
                "redis://:pa,ss@h1:7000,redis://h2:7001",
            ),
        ])
        .unwrap();
        assert_eq!(c.redis_nodes.len(), 2);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = env(&[("TG_CACHE_BACKEND", "memcached")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_BACKEND");
        assert!(
            e.to_string().contains("local, redis, redis-cluster, dummy"),
            "{e}"
        );
        let e = env(&[("TG_CACHE_MAX_ENTRIES", "-5")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_MAX_ENTRIES");
        assert!(e.reason.contains("negative"), "{e}");
        let e = env(&[("TG_CACHE_MAX_ENTRIES", "lots")]).unwrap_err();
        assert!(e.reason.contains("not a number"), "{e}");
        let e = env(&[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", "http://:hunter2@x"),
        ])
        .unwrap_err();
        assert_eq!(e.setting, "REDIS_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = env(&[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", "redis://:hunter2@host:notaport"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn redis_url_is_redacted() {
        let u = RedisUrl::parse("redis://user:s3cret@cache.internal:6380/2").unwrap();
        assert_eq!(u.to_string(), "redis://user:***@cache.internal:6380/2");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(redact("rediss://:pw@h/0"), "rediss://:***@h/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        let c = CacheConfig::redis("redis://:pw@h:1/3");
        assert!(!format!("{c:?}").contains(":pw@"));
    }

    #[test]
    fn insecure_tls_needs_the_explicit_feature() {
        let r = RedisUrl::parse("rediss://127.0.0.1:6380/0#insecure");
        if cfg!(feature = "tls-insecure") {
            assert!(r.is_ok());
        } else if cfg!(feature = "tls") {
            let e = r.unwrap_err();
            assert!(e.reason.contains("tls-insecure"), "{e}");
        }
        if cfg!(feature = "tls") {
            assert!(RedisUrl::parse("rediss://127.0.0.1:6380/0").is_ok());
        }
    }

    #[test]
    fn key_prefix_cannot_contain_a_colon() {
        let e = CacheConfig::local()
            .key_prefix("a:1")
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "key_prefix");
        assert!(CacheConfig::local().key_prefix("a").validate().is_ok());
    }

    #[test]
    fn env_tuning() {
        let c = env(&[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", "redis://127.0.0.1:1/3"),
            ("TG_CACHE_DEFAULT_TIMEOUT", "none"),
            ("TG_CACHE_COMPRESS_MIN_BYTES", "100"),
            ("TG_CACHE_KEY_PREFIX", "app"),
            ("TG_CACHE_VERSION", "2"),
        ])
        .unwrap();
        assert_eq!(c.default_timeout, Timeout::Never);
        assert_eq!(c.compress_min_bytes, Some(100));
        assert_eq!(c.key_prefix, "app");
        assert_eq!(c.version, Some(2));
        assert_eq!(c.key_function, crate::key::KeyFunction::Tg);
    }

    #[test]
    fn jitter_from_env() {
        let c = env(&[("TG_CACHE_JITTER", "0.1")]).unwrap();
        assert_eq!(c.jitter, crate::timeout::Jitter::new(0.1).unwrap());
        let c = env(&[("TG_CACHE_JITTER", "off")]).unwrap();
        assert_eq!(c.jitter, crate::timeout::Jitter::NONE);
        for bad in ["1", "-0.2", "lots", "NaN"] {
            let e = env(&[("TG_CACHE_JITTER", bad)]).unwrap_err();
            assert_eq!(e.setting, "TG_CACHE_JITTER", "{bad}");
        }
        let e = CacheConfig::local().jitter(2.0).validate().unwrap_err();
        assert_eq!(e.setting, "jitter");
    }

    #[test]
    fn key_function_from_env() {
        let c = env(&[("TG_CACHE_KEY_FUNCTION", "django")]).unwrap();
        assert_eq!(c.key_function, crate::key::KeyFunction::Django);
        let c = env(&[("TG_CACHE_KEY_FUNCTION", " Tg ")]).unwrap();
        assert_eq!(c.key_function, crate::key::KeyFunction::Tg);
        let e = env(&[("TG_CACHE_KEY_FUNCTION", "pickle")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_KEY_FUNCTION");
        assert!(e.to_string().contains("django"), "{e}");
    }

    #[test]
    fn reserved_and_zero_settings_are_refused() {
        for bad in ["#epoch", "app:#x"] {
            let e = CacheConfig::local().key_prefix(bad).validate().unwrap_err();
            assert_eq!(e.setting, "key_prefix");
        }
        let e = env(&[("TG_CACHE_POOL_SIZE", "0")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_POOL_SIZE");
        let e = env(&[("TG_CACHE_MAX_VALUE_BYTES", "lots")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_MAX_VALUE_BYTES");
        let e = env(&[("TG_CACHE_LEASE_TIMEOUT_MS", "-1")]).unwrap_err();
        assert_eq!(e.setting, "TG_CACHE_LEASE_TIMEOUT_MS");
        let c = env(&[
            ("TG_CACHE_POOL_SIZE", "4"),
            ("TG_CACHE_LEASE_TIMEOUT_MS", "500"),
        ])
        .unwrap();
        assert_eq!(
            (c.pool_size, c.lease_timeout),
            (4, Duration::from_millis(500))
        );
        let e = CacheConfig::redis("redis://127.0.0.1")
            .lease_timeout(Duration::from_millis(5))
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "lease_timeout");
    }
}
