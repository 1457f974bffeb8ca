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

const INCR_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
";

static INCR: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(INCR_SCRIPT));

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

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    pub(crate) async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await
    }

    fn set_cmd(key: &str, value: &[u8], ttl: Option<Duration>, nx: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(px(ttl));
        }
        if nx {
            cmd.arg("NX");
        }
        cmd
    }

    pub(crate) async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        let cmd = Self::set_cmd(key, &value, ttl, false);
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    pub(crate) async fn add(
        &self,

        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let cmd = Self::set_cmd(key, &value, ttl, true);
        let r: Option<String> = self
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(r.is_some())
    }

    pub(crate) async fn set_many(
        &self,

        items: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, v) in &items {
            pipe.add_command(Self::set_cmd(k, v, ttl, false)).ignore();
        }
        self.run(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    pub(crate) async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(|mut c| async move { redis::cmd("DEL").arg(keys).query_async(&mut c).await })
            .await
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.run(|mut c| async move { redis::cmd("EXISTS").arg(key).query_async(&mut c).await })
            .await
    }

    pub(crate) async fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let key = key.to_owned();
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("EXISTS").arg(&key);
            match ttl {
                Some(t) => pipe.cmd("PEXPIRE").arg(&key).arg(px(t)).ignore(),
                None => pipe.cmd("PERSIST").arg(&key).ignore(),
            };
            let (exists,): (bool,) = pipe.query_async(&mut c).await?;
            Ok(exists)
        })
        .await
    }

    /// `Ok(None)` when the key is missing.
    pub(crate) async fn incr(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        let key = key.to_owned();
        self.run(|mut c| async move { INCR.key(key).arg(delta).invoke_async(&mut c).await })
            .await
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<Option<Ttl>> {
        let key = key.to_owned();
        let ms: i64 = self
            .run(|mut c| async move { redis::cmd("PTTL").arg(key).query_async(&mut c).await })
            .await?;
        Ok(match ms {
            -2 => None,
            -1 => Some(Ttl::Forever),
            ms => Some(Ttl::Remaining(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    /// Deletes every key matching `pattern`, with `SCAN` in batches (never `KEYS`).
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
                    let n = if keys.is_empty() {
                        0
                    } else {
                        redis::cmd("UNLINK").arg(keys).query_async(&mut c).await?
                    };
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
