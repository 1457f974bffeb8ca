//! The Redis store: a lazily connected, auto-reconnecting multiplexed
//! connection with bounded timeouts and a circuit breaker.

use crate::config::RedisUrl;
use crate::error::{Error, Result};
use crate::exec::{in_io, io_runtime};
use crate::timeout::Ttl;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Settings of a Redis store, taken from [`crate::CacheConfig`].
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) url: RedisUrl,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) breaker_cooldown: Duration,
}

/// Stops paying the timeout on every call while Redis is away: after an
/// unreachable-type failure, calls fail fast for `cooldown`, then one is let
/// through to probe again.
struct Breaker {
    /// Nanoseconds since `EPOCH` until which calls fail fast; 0 = closed.
    open_until: AtomicU64,
    cooldown: Duration,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    fn check(&self) -> Result<()> {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return Ok(());
        }
        let now = now_nanos();
        if now < until {
            return Err(Error::Unavailable {
                retry_in: Duration::from_nanos(until - now),
            });
        }
        Ok(())
    }
    fn trip(&self) {
        let until = now_nanos().saturating_add(self.cooldown.as_nanos() as u64);
        self.open_until.store(until.max(1), Relaxed);
    }
    fn reset(&self) {
        if self.open_until.load(Relaxed) != 0 {
            self.open_until.store(0, Relaxed);
        }
    }
}

pub(crate) struct RedisStore {
    conn: ConnectionManager,
    op_timeout: Duration,
    breaker: Breaker,
    url: RedisUrl,
}

/// Shared by the scripts: whether `k`'s value is live in generation `g`
/// (values of a generation > 0 start with `g<gen>:`).
const PRELUDE: &str = r"
local function gen_of(v)
  return string.match(v, '^g(%d+):') or '0'
end
local function current_gen(gk)
  if gk then return redis.call('GET', gk) or '0' end
  return '0'
end
local function with_gen(v, g)
  if g == '0' then return v end
  return 'g' .. g .. ':' .. v
end
local function put(k, v, px)
  if px == '0' then
    redis.call('SET', k, v)
  else
    redis.call('SET', k, v, 'PX', px)
  end
end
";

/// KEYS: key, fill marker, [generation key]. ARGV: value, px.
/// Writes in the current generation and cancels any fill in progress.
const SET_SCRIPT: &str = r"
local g = current_gen(KEYS[3])
put(KEYS[1], with_gen(ARGV[1], g), ARGV[2])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: key, fill marker, [generation key]. ARGV: value, px, token, generation seen.
/// Stores a computed value only if no invalidation happened since the fill
/// began: its marker is still there and the generation is unchanged.
const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[2])
local g = current_gen(KEYS[3])
if g ~= ARGV[4] then return 0 end
put(KEYS[1], with_gen(ARGV[1], g), ARGV[2])
return 1
";

/// KEYS: key, fill marker, [generation key]. ARGV: value, px.
const ADD_SCRIPT: &str = r"
local g = current_gen(KEYS[3])
local cur = redis.call('GET', KEYS[1])
if cur and gen_of(cur) == g then return 0 end
put(KEYS[1], with_gen(ARGV[1], g), ARGV[2])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: key, [generation key]. ARGV: delta. Nil when missing.
const INCR_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local g = current_gen(KEYS[2])
local hg = gen_of(cur)
if hg ~= g then return false end
if g == '0' then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
local n = tonumber(string.sub(cur, #g + 3))
local limit = 9007199254740991
if not n or n ~= math.floor(n) or math.abs(n) > limit then
  return redis.error_reply('ERR value is not an integer or out of range')
end
n = n + tonumber(ARGV[1])
if math.abs(n) > limit then return redis.error_reply('ERR increment would overflow') end
redis.call('SET', KEYS[1], with_gen(string.format('%d', n), g), 'KEEPTTL')
return n
";

/// KEYS: key, [generation key]. ARGV: px ('0': persist), or '' to only read the TTL.
/// Returns -2 when the key is missing or outdated, else PTTL after touching.
const TTL_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or gen_of(cur) ~= current_gen(KEYS[2]) then return -2 end
if ARGV[1] == '0' then
  redis.call('PERSIST', KEYS[1])
elseif ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return redis.call('PTTL', KEYS[1])
";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

static SET: LazyLock<redis::Script> = LazyLock::new(|| script(SET_SCRIPT));
static FILL: LazyLock<redis::Script> = LazyLock::new(|| script(FILL_SCRIPT));
static ADD: LazyLock<redis::Script> = LazyLock::new(|| script(ADD_SCRIPT));
static INCR: LazyLock<redis::Script> = LazyLock::new(|| script(INCR_SCRIPT));
static TTL: LazyLock<redis::Script> = LazyLock::new(|| script(TTL_SCRIPT));

/// How long a fill marker lives: a computation slower than this is not stored.
const FILL_LEASE: Duration = Duration::from_secs(60);

/// The marker a fill leaves while it computes; any invalidation deletes it.
pub(crate) fn marker_key(key: &str) -> String {
    format!("{key}:#fill")
}

/// Splits the generation header off a stored value.
pub(crate) fn split_generation(bytes: &[u8]) -> (u64, &[u8]) {
    if bytes.first() == Some(&b'g')
        && let Some(colon) = bytes.iter().position(|&b| b == b':')
        && let Ok(digits) = std::str::from_utf8(&bytes[1..colon])
        && let Ok(g) = digits.parse::<u64>()
    {
        return (g, &bytes[colon + 1..]);
    }
    (0, bytes)
}

fn parse_gen(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .unwrap_or(0)
}

/// A fill in progress: the token of its marker and the generation it saw.
#[derive(Debug, Clone)]
pub(crate) struct FillTicket {
    token: String,
    generation: u64,
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    pub(crate) fn new(s: &RedisSettings) -> Result<Self> {
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; keep the
            // application's if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(s.url.expose())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_concurrency_limit(s.max_connections);
        // Created inside the tg-cache runtime so that its reconnect tasks live
        // there, not in whichever runtime happens to make the first call.
        let _guard = io_runtime().enter();
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(Self {
            conn,
            op_timeout: s.connect_timeout + s.response_timeout,
            breaker: Breaker {
                open_until: AtomicU64::new(0),
                cooldown: s.breaker_cooldown,
            },
            url: s.url.clone(),
        })
    }

    pub(crate) fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Runs one Redis operation with the timeout and circuit breaker.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.breaker.check()?;
        let limit = self.op_timeout;
        let op = op(self.conn.clone());
        // The timer is created when the future first runs, so inside whichever
        // runtime executes it.
        let fut = async move { tokio::time::timeout(limit, op).await };
        let res = in_io(fut).await;
        let err = match res {
            Ok(Ok(v)) => {
                self.breaker.reset();
                return Ok(v);
            }
            Ok(Err(e)) => Error::Redis(e),
            Err(_) => Error::Timeout(limit),
        };
        if err.is_unreachable() {
            self.breaker.trip();
        }
        Err(err)
    }

    /// The payload at `key` if live, and the current generation of its family.
    pub(crate) async fn get(
        &self,
        key: &str,
        gen_key: Option<&str>,
    ) -> Result<(Option<Vec<u8>>, u64)> {
        let keys: Vec<String> = std::iter::once(key.to_owned())
            .chain(gen_key.map(str::to_owned))
            .collect();
        let mut values: Vec<Option<Vec<u8>>> = self
            .run(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await?;
        let current = if values.len() > 1 {
            parse_gen(values.pop().flatten())
        } else {
            0
        };
        let payload = values.pop().flatten().and_then(|v| {
            let (g, body) = split_generation(&v);
            (g == current).then(|| body.to_vec())
        });
        Ok((payload, current))
    }

    /// Payloads of `keys` (live ones), each with its optional generation key.
    pub(crate) async fn get_many(
        &self,
        keys: Vec<(String, Option<String>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut gen_keys: Vec<String> = keys.iter().filter_map(|(_, g)| g.clone()).collect();
        gen_keys.sort();
        gen_keys.dedup();
        let args: Vec<String> = keys
            .iter()
            .map(|(k, _)| k.clone())
            .chain(gen_keys.iter().cloned())
            .collect();
        let mut values: Vec<Option<Vec<u8>>> = self
            .run(|mut c| async move { redis::cmd("MGET").arg(args).query_async(&mut c).await })
            .await?;
        let gens: Vec<Option<Vec<u8>>> = values.split_off(keys.len());
        let current = |gk: &Option<String>| match gk {
            None => 0,
            Some(gk) => {
                let i = gen_keys.binary_search(gk).unwrap_or(usize::MAX);
                parse_gen(gens.get(i).cloned().flatten())
            }
        };
        Ok(values
            .into_iter()
            .zip(&keys)
            .map(|(v, (_, gk))| {
                let v = v?;
                let (g, body) = split_generation(&v);
                (g == current(gk)).then(|| body.to_vec())
            })
            .collect())
    }

    fn invocation(
        script: &'static redis::Script,
        key: &str,
        gen_key: Option<&str>,
        marker: bool,
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        inv.key(key);
        if marker {
            inv.key(marker_key(key));
        }
        if let Some(g) = gen_key {
            inv.key(g);
        }
        inv
    }

    fn ttl_arg(ttl: Option<Duration>) -> String {
        ttl.map_or_else(|| "0".to_owned(), |t| px(t).to_string())
    }

    /// Writes `value` in the current generation, cancelling fills in progress.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        gen_key: Option<&str>,
    ) -> Result<()> {
        let mut inv = Self::invocation(&SET, key, gen_key, true);
        inv.arg(value).arg(Self::ttl_arg(ttl));
        self.run(|mut c| async move { inv.invoke_async::<i64>(&mut c).await.map(drop) })
            .await
    }

    /// Writes several values (one round trip), each as [`RedisStore::set`].
    pub(crate) async fn set_many(
        &self,
        items: Vec<(String, Vec<u8>, Option<String>)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let ttl = Self::ttl_arg(ttl);
        let mut pipe = redis::pipe();
        for (k, v, gk) in &items {
            let mut keys = vec![k.clone(), marker_key(k)];
            keys.extend(gk.clone());
            pipe.cmd("EVALSHA")
                .arg(SET.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(v)
                .arg(&ttl)
                .ignore();
        }
        self.run(|mut c| async move {
            // Make sure the script is loaded before the EVALSHA pipeline.
            SET.prepare_invoke().load_async(&mut c).await?;
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Stores only if `key` has no live value; returns whether it stored.
    pub(crate) async fn add(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        gen_key: Option<&str>,
    ) -> Result<bool> {
        let mut inv = Self::invocation(&ADD, key, gen_key, true);
        inv.arg(value).arg(Self::ttl_arg(ttl));
        self.run(|mut c| async move { inv.invoke_async::<i64>(&mut c).await.map(|n| n == 1) })
            .await
    }

    /// Leaves a fill marker before computing `key` (see [`RedisStore::fill`]).
    pub(crate) async fn begin_fill(&self, key: &str, generation: u64) -> Result<FillTicket> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "{}-{}-{}",
            std::process::id(),
            now_nanos(),
            COUNTER.fetch_add(1, Relaxed)
        );
        let cmd = {
            let mut c = redis::cmd("SET");
            c.arg(marker_key(key))
                .arg(&token)
                .arg("PX")
                .arg(px(FILL_LEASE));
            c
        };
        self.run(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await?;
        Ok(FillTicket { token, generation })
    }

    /// Stores a computed value unless `key` was invalidated (deleted, set,
    /// or its family bumped) since [`RedisStore::begin_fill`]; atomic in Lua.
    pub(crate) async fn fill(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        gen_key: Option<&str>,
        ticket: FillTicket,
    ) -> Result<bool> {
        let mut inv = Self::invocation(&FILL, key, gen_key, true);
        inv.arg(value)
            .arg(Self::ttl_arg(ttl))
            .arg(ticket.token)
            .arg(ticket.generation.to_string());
        self.run(|mut c| async move { inv.invoke_async::<i64>(&mut c).await.map(|n| n == 1) })
            .await
    }

    /// Deletes `keys` and their fill markers; returns how many keys existed.
    pub(crate) async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let markers: Vec<String> = keys.iter().map(|k| marker_key(k)).collect();
        self.run(|mut c| async move {
            let (n, _): (usize, usize) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys)
                .cmd("DEL")
                .arg(markers)
                .query_async(&mut c)
                .await?;
            Ok(n)
        })
        .await
    }

    /// Makes every value of the family with generation key `gen_key` invisible.
    pub(crate) async fn bump(&self, gen_key: &str) -> Result<u64> {
        let gk = gen_key.to_owned();
        self.run(|mut c| async move { redis::cmd("INCR").arg(gk).query_async(&mut c).await })
            .await
    }

    pub(crate) async fn exists(&self, key: &str, gen_key: Option<&str>) -> Result<bool> {
        Ok(self.get(key, gen_key).await?.0.is_some())
    }

    async fn ttl_script(&self, key: &str, gen_key: Option<&str>, arg: String) -> Result<i64> {
        let mut inv = Self::invocation(&TTL, key, gen_key, false);
        inv.arg(arg);
        self.run(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
    }

    pub(crate) async fn touch(
        &self,
        key: &str,
        ttl: Option<Duration>,
        gen_key: Option<&str>,
    ) -> Result<bool> {
        Ok(self.ttl_script(key, gen_key, Self::ttl_arg(ttl)).await? != -2)
    }

    /// `Ok(None)` when the key is missing.
    pub(crate) async fn incr(
        &self,
        key: &str,
        delta: i64,
        gen_key: Option<&str>,
    ) -> Result<Option<i64>> {
        let mut inv = Self::invocation(&INCR, key, gen_key, false);
        inv.arg(delta);
        self.run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    pub(crate) async fn ttl(&self, key: &str, gen_key: Option<&str>) -> Result<Option<Ttl>> {
        let ms = self.ttl_script(key, gen_key, String::new()).await?;
        Ok(match ms {
            -2 => None,
            -1 => Some(Ttl::Forever),
            ms => Some(Ttl::Remaining(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    /// Deletes every key matching `pattern` (and their fill markers), with
    /// `SCAN` in batches (never `KEYS`); returns how many keys it deleted.
    pub(crate) async fn delete_pattern(&self, pattern: &str) -> Result<usize> {
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let pat = pattern.to_owned();
            let (next, deleted_now): (u64, usize) = self
                .run(move |mut c| async move {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pat)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    let (values, markers): (Vec<String>, Vec<String>) =
                        keys.into_iter().partition(|k| !k.ends_with(":#fill"));
                    let markers: Vec<String> = markers
                        .into_iter()
                        .chain(values.iter().map(|k| marker_key(k)))
                        .collect();
                    if values.is_empty() && markers.is_empty() {
                        return Ok((next, 0));
                    }
                    let mut pipe = redis::pipe();
                    if !values.is_empty() {
                        pipe.cmd("UNLINK").arg(&values);
                    } else {
                        pipe.cmd("ECHO").arg(0);
                    }
                    pipe.cmd("UNLINK").arg(markers).ignore();
                    let (n,): (usize,) = pipe.query_async(&mut c).await?;
                    Ok((next, n))
                })
                .await?;
            deleted += deleted_now;
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    pub(crate) async fn flush_db(&self) -> Result<()> {
        self.run(|mut c| async move { redis::cmd("FLUSHDB").query_async(&mut c).await })
            .await
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }
}
