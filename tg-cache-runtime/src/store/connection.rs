//! Connections to one Redis server: a small pool of multiplexed,
//! auto-reconnecting connections, a fair queue in front of them, one
//! deadline per call, and a circuit breaker.
//!
//! * **Fair waiting that is not failure.** At most `max_connections`
//!   commands are in flight; callers beyond that wait in a FIFO queue
//!   (a fair `tokio` semaphore). A call that is still queued at its deadline
//!   fails with [`Error::Saturated`], which never counts against Redis:
//!   it does not open the breaker.
//! * **One deadline per command.** Queueing, (re)connecting and the command
//!   itself all fit in the response timeout, so no Redis command takes
//!   longer than it, healthy Redis or not. A command that times out after
//!   spending most of its deadline in the queue is [`Error::Saturated`]
//!   too: the queue, not Redis, used its time.
//! * **Breaker with one probe.** After a failure that says Redis is
//!   unreachable (I/O error, refused connection, timeout), calls fail fast
//!   with [`Error::Unavailable`] for the cooldown (default 50 ms). A single
//!   timed-out command (a big value, a slow script) is checked first: the
//!   breaker opens only if a `PING` times out too. Then
//!   exactly one call goes through as a probe while the others keep failing
//!   fast; its success closes the breaker, its failure opens it again. A
//!   probe that is cancelled hands the probe to the next caller.

use crate::config::RedisUrl;
use crate::error::{Error, Result};
use crate::exec::{in_io, io_runtime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How to reach Redis, taken from [`crate::CacheConfig`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    pub(crate) url: RedisUrl,
    pub(crate) pool_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) breaker_cooldown: Duration,
}

pub(crate) struct Connections {
    /// `host:port` of the server, for errors (never a password).
    addr: String,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// In-flight commands; FIFO for the waiters.
    permits: Arc<Semaphore>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    /// Whether a background check of a timeout is running.
    checking: Arc<AtomicBool>,
}

impl Connections {
    pub(crate) fn new(s: &ConnectionSettings) -> Result<Self> {
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; keep the
            // application's if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let addr = s.url.address();
        let failed = |source| Error::Redis {
            addr: addr.clone(),
            source,
        };
        let client = redis::Client::open(s.url.expose()).map_err(failed)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(50));
        // Created inside the tg-cache runtime so that their reconnect tasks
        // live there, not in whichever runtime happens to make the first call.
        let _guard = io_runtime().enter();
        let pool = (0..s.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), cfg.clone()))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(failed)?;
        Ok(Self {
            addr,
            pool,
            next: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(s.max_connections.max(1))),
            timeout: s.response_timeout,
            breaker: Arc::new(Breaker {
                open_until: AtomicU64::new(0),
                probing: AtomicBool::new(false),
                cooldown: s.breaker_cooldown,
            }),
            checking: Arc::new(AtomicBool::new(false)),
        })
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// Runs one Redis operation within the call's deadline, behind the fair
    /// queue and the breaker.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let probe = self
            .breaker
            .admit()
            .map_err(|retry_in| Error::Unavailable {
                addr: self.addr.clone(),
                retry_in,
            })?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permits = self.permits.clone();
        // Timers are created inside `in_io`, on tg-cache's runtime.
        let permit =
            in_io(async move { tokio::time::timeout_at(deadline, permits.acquire_owned()).await })
                .await;
        let _permit = match permit {
            Ok(Ok(p)) => p,
            // Queued for the whole deadline: load, not a Redis failure.
            _ => {
                return Err(Error::Saturated {
                    waited: self.timeout,
                });
            }
        };
        let op = op(self.connection());
        let slice = deadline.saturating_duration_since(tokio::time::Instant::now());
        let res = in_io(async move { tokio::time::timeout_at(deadline, op).await }).await;
        let err = match res {
            Ok(Ok(v)) => {
                self.breaker.success(probe);
                return Ok(v);
            }
            Ok(Err(source)) => Error::Redis {
                addr: self.addr.clone(),
                source,
            },
            // Most of the deadline went to the queue: load, not a failure.
            Err(_) if slice < self.timeout / 2 => {
                drop(probe);
                return Err(Error::Saturated {
                    waited: self.timeout,
                });
            }
            // One slow command (a big value, a slow script) is not an outage:
            // a PING in the background decides, and opens the breaker only
            // if Redis does not answer it either. The probe decides at once.
            Err(_) if probe.0.is_none() => {
                self.check_in_background();
                return Err(self.timed_out());
            }
            Err(_) => self.timed_out(),
        };
        if err.is_unreachable() {
            self.breaker.failure(probe);
        } else {
            // Redis answered (with an error about this command).
            self.breaker.success(probe);
        }
        Err(err)
    }
}

impl Connections {
    fn timed_out(&self) -> Error {
        Error::Timeout {
            addr: self.addr.clone(),
            after: self.timeout,
        }
    }

    /// After a command timed out: checks with a `PING` (within the response
    /// timeout) whether Redis answers at all, and opens the breaker if not.
    fn check_in_background(&self) {
        if self.checking.swap(true, Relaxed) {
            return;
        }
        let (mut conn, breaker, checking) = (
            self.connection(),
            self.breaker.clone(),
            self.checking.clone(),
        );
        let timeout = self.timeout;
        io_runtime().spawn(async move {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            if !matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_))) {
                breaker.failure(Probe(None));
            }
            checking.store(false, Relaxed);
        });
    }
}

/// Stops paying the timeout on every call while Redis is away.
struct Breaker {
    /// Nanoseconds since `START` until which calls fail fast; 0 = closed.
    open_until: AtomicU64,
    /// Whether a probe is out.
    probing: AtomicBool,
    cooldown: Duration,
}

/// The one call let through a half-open breaker; dropping it unanswered
/// (a cancelled caller) lets the next caller probe.
pub(crate) struct Probe<'b>(Option<&'b Breaker>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.probing.store(false, Relaxed);
        }
    }
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    u64::try_from(START.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// Lets a call through (closed, or as the one probe), or fails it fast
    /// (with the time until the next probe).
    fn admit(&self) -> std::result::Result<Probe<'_>, Duration> {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return Ok(Probe(None));
        }
        let now = now_nanos();
        if now >= until
            && self
                .probing
                .compare_exchange(false, true, Relaxed, Relaxed)
                .is_ok()
        {
            return Ok(Probe(Some(self)));
        }
        Err(Duration::from_nanos(until.saturating_sub(now)).max(self.cooldown / 4))
    }

    fn success(&self, probe: Probe<'_>) {
        if self.open_until.load(Relaxed) != 0 {
            self.open_until.store(0, Relaxed);
        }
        drop(probe);
    }

    fn failure(&self, probe: Probe<'_>) {
        let until = now_nanos().saturating_add(self.cooldown.as_nanos() as u64);
        self.open_until.store(until.max(1), Relaxed);
        drop(probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker {
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            cooldown: Duration::from_millis(cooldown_ms),
        }
    }

    #[test]
    fn a_half_open_breaker_lets_exactly_one_probe_through() {
        let b = breaker(20);
        let p = b.admit().unwrap();
        b.failure(p);
        assert!(b.admit().is_err(), "open: fail fast");
        std::thread::sleep(Duration::from_millis(25));
        let probe = b.admit().unwrap();
        for _ in 0..10 {
            assert!(b.admit().is_err(), "only one probe at a time");
        }
        b.success(probe);
        assert!(b.admit().is_ok() && b.admit().is_ok(), "closed again");
    }

    #[test]
    fn a_cancelled_probe_hands_over() {
        let b = breaker(1);
        let p = b.admit().unwrap();
        b.failure(p);
        std::thread::sleep(Duration::from_millis(2));
        drop(b.admit().unwrap());
        let again = b.admit().unwrap();
        b.failure(again);
        assert!(b.admit().is_err());
    }
}
