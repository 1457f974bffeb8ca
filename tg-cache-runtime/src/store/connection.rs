//! Connections to one Redis server: multiplexed RESP3 connections with
//! client-side tracking, a fair queue in front of them, one deadline per
//! call, and a circuit breaker. The same machinery serves a Redis Cluster
//! ([`Conn::Cluster`]): each connection is then a redis-rs cluster
//! connection (`cluster-async`), which routes every command by its key's
//! slot, follows `MOVED`/`ASK` and refreshes the topology itself; it
//! tracks nothing, so its family epochs are always read
//! ([`KnownEpochs::never`]). A cluster store reads through
//! tracked connections to each primary instead ([`Connections::to_primary`],
//! `primaries.rs`). On a cluster the breaker is kept per range of
//! [`SLOTS_PER_BREAKER`] slots: a failed shard fails fast alone while the
//! others serve, and a node's errors never replace the cluster connection
//! (redis-rs reconnects its nodes itself); only one whose `PING`s (one a
//! second, each to a random node) go unanswered three times in a row is
//! replaced.
//!
//! * **Driven where the caller runs.** A caller on a multi-thread tokio
//!   runtime uses its thread's own connection, driven by that runtime
//!   (`exec::caller_runtime`): a command then costs no hop to another
//!   thread and back. Such a connection ends with its runtime (a
//!   `#[tokio::test]`'s) or its thread, and is then replaced; its end
//!   flushes the listeners, as any lost connection's does. Once its store
//!   is dropped, its pinger closes it within a second. Other callers
//!   (blocking calls, plain threads, current-thread runtimes, runtimes
//!   without I/O or timers) use the pool of `pool_size` connections driven
//!   by tg-cache's own runtime.
//!
//! * **Tracking in the handshake.** tg-cache owns each connection's
//!   lifecycle (no `ConnectionManager`, whose reconnects would silently drop
//!   a tracking mode set by a plain command): a connection is made in
//!   RESP3, `CLIENT TRACKING ON` is sent, and only then is it used, under a
//!   new tracking generation (`tracking.rs`). Its push messages (key
//!   invalidations, in wire order with the replies) go to [`Tracking`],
//!   and to the family epochs the connection itself knows (`epochs.rs`).
//! * **A lost connection is never reused.** A connection that drops (an I/O
//!   error, a `CLIENT KILL`, a server restart; or the `Disconnection` push
//!   redis-rs sends) is marked dead, every listener is flushed (its
//!   invalidations may be lost), and the next call makes a new one. An idle
//!   connection is `PING`ed every second, so a dead one is noticed.
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
//!   unreachable (I/O error, refused connection, a connection not made
//!   within the deadline, timeout), calls fail fast
//!   with [`Error::Unavailable`] for the cooldown (default 50 ms). A single
//!   timed-out command (a big value, a slow script) is checked first: the
//!   breaker opens only if a `PING` times out too. Then
//!   exactly one call goes through as a probe while the others keep failing
//!   fast; its success closes the breaker, its failure opens it again. A
//!   probe that is cancelled hands the probe to the next caller.

use super::epochs::KnownEpochs;
use super::tracking::Tracking;
use crate::config::RedisUrl;
use crate::error::{Error, Result};
use crate::exec::{in_io, io_runtime};
use redis::cluster_async::ClusterConnection;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How to reach Redis, taken from [`crate::CacheConfig`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    /// The server, or for a cluster its first seed node.
    pub(crate) url: RedisUrl,
    /// A Redis Cluster's seed nodes (`url` among them); `None` for one
    /// server.
    pub(crate) cluster: Option<Vec<RedisUrl>>,
    pub(crate) pool_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) breaker_cooldown: Duration,
}

/// How often an idle connection is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Slots per breaker on a Redis Cluster: a failed shard opens the breakers
/// of its slots' ranges only (a range that two shards share opens for
/// both). 64 ranges: a cluster's shards own whole ranges but at their
/// edges.
pub(crate) const SLOTS_PER_BREAKER: u16 = 256;

const SLOTS: u16 = super::slots::SLOTS;

/// Unanswered `PING`s in a row (each to a random node, one a second) after
/// which a cluster connection is replaced.
const CLUSTER_PINGS_LOST: u32 = 3;

/// One connection: to one server, or to a whole Redis Cluster. Both are
/// multiplexed and cheap to clone; every store command runs on one. The
/// type the application gets from `Cache::redis_connection` (`raw.rs`).
pub(crate) use crate::RedisConnection as Conn;

/// What connections are opened with.
#[expect(
    clippy::large_enum_variant,
    reason = "one per store, made once and never moved on a hot path"
)]
enum Dialer {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

pub(crate) struct Connections {
    /// `host:port` of the server (a cluster's first seed node), for errors
    /// (never a password).
    addr: String,
    client: Dialer,
    connect_timeout: Duration,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    /// In-flight commands; FIFO for the waiters.
    permits: Arc<Semaphore>,
    timeout: Duration,
    /// One breaker; on a cluster one per [`SLOTS_PER_BREAKER`] slots, and a
    /// last one for calls that span slots.
    breakers: Arc<[Breaker]>,
    tracking: Arc<Tracking>,
    /// Alive as long as these connections: the key of their thread slots.
    alive: Arc<()>,
}

/// One connection of the pool, made when first needed and again after it
/// is lost.
#[derive(Default)]
struct Slot {
    /// Shared as one `Arc`: a hit clones one reference count, not each
    /// of the connection's.
    link: Mutex<Option<Arc<Link>>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

/// A live tracking connection.
struct Link {
    conn: Conn,
    /// The family epochs it read and still tracks (`epochs.rs`).
    epochs: Arc<KnownEpochs>,
    /// Set once the connection is lost; it is then never used again.
    dead: Arc<Death>,
    /// For a connection driven by a caller's runtime: set once that runtime
    /// ended (its task holding the connection was dropped unfinished).
    /// `None`: driven by tg-cache's own runtime.
    owner: Option<Arc<AtomicBool>>,
}

/// A connection's end: once set, never unset.
#[derive(Default)]
struct Death {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Death {
    fn is_set(&self) -> bool {
        self.flag.load(Relaxed)
    }

    /// Sets it; true the first time.
    fn set(&self) -> bool {
        let first = !self.flag.swap(true, Relaxed);
        if first {
            self.notify.notify_one();
        }
        first
    }
}

impl Link {
    /// Whether the runtime that drives it is gone.
    fn orphaned(&self) -> bool {
        self.owner.as_ref().is_some_and(|o| o.load(Relaxed))
    }
}

impl Slot {
    fn live(&self) -> Option<Arc<Link>> {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        link.as_ref().filter(|l| !l.dead.is_set()).cloned()
    }
}

/// Ends a connection driven by a caller's runtime when dropped (the runtime
/// shut down, or the connection ended): every listener is flushed if it was
/// still live, since its invalidations stop.
struct Ended(Arc<Death>, Arc<Tracking>);

impl Drop for Ended {
    fn drop(&mut self) {
        if self.0.set() {
            self.1.flushed();
        }
    }
}

/// Set when dropped while still holding its flag: the task that holds it
/// was dropped with its runtime, before its connection ended.
struct RuntimeEnd(Option<Arc<AtomicBool>>);

impl Drop for RuntimeEnd {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            f.store(true, Relaxed);
        }
    }
}

/// A failed command, and whether the runtime that drove its connection
/// ended under it.
struct Failed {
    source: redis::RedisError,
    orphaned: bool,
}

/// Whether a connection is driven by tg-cache's runtime or by a caller's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    Own,
    Caller,
}

thread_local! {
    /// The connection slots of this thread, one per store, for callers on a
    /// multi-thread tokio runtime: connections driven by that runtime
    /// (`exec::caller_runtime`). Each entry lives while its store does.
    static THREAD_SLOTS: std::cell::RefCell<Vec<(Weak<()>, Arc<Slot>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Connections {
    pub(crate) fn new(s: &ConnectionSettings) -> Result<Self> {
        Self::with_tracking(s, None, Arc::default())
    }

    /// Tracked connections to one primary of the Redis Cluster `s` names,
    /// at `host:port`, with the seed URL's credentials and TLS settings,
    /// whose pushes go to `tracking` (shared with the cluster's store:
    /// `primaries.rs`). They are one server's connections in all: RESP3,
    /// `CLIENT TRACKING ON`, the known epochs, one breaker.
    pub(crate) fn to_primary(
        s: &ConnectionSettings,
        host: &str,
        port: u16,
        tracking: Arc<Tracking>,
    ) -> Result<Self> {
        Self::with_tracking(s, Some((host, port)), tracking)
    }

    fn with_tracking(
        s: &ConnectionSettings,
        primary: Option<(&str, u16)>,
        tracking: Arc<Tracking>,
    ) -> Result<Self> {
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; keep the
            // application's if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let addr = match primary {
            Some((host, port)) => format!("{host}:{port}"),
            None => s.url.address(),
        };
        let failed = |source| Error::Redis {
            addr: addr.clone(),
            source,
        };
        use redis::IntoConnectionInfo;
        let resp3 = |url: &RedisUrl| -> redis::RedisResult<redis::ConnectionInfo> {
            let info = url.expose().into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(settings))
        };
        let cluster = s.cluster.is_some() && primary.is_none();
        let client = match (&s.cluster, primary) {
            (None, _) => {
                Dialer::Node(redis::Client::open(resp3(&s.url).map_err(failed)?).map_err(failed)?)
            }
            (Some(_), Some((host, port))) => {
                let info = resp3(&s.url).map_err(failed)?;
                let at = match info.addr().clone() {
                    redis::ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => redis::ConnectionAddr::TcpTls {
                        host: host.to_owned(),
                        port,
                        insecure,
                        tls_params,
                    },
                    _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
                };
                Dialer::Node(redis::Client::open(info.set_addr(at)).map_err(failed)?)
            }
            (Some(nodes), None) => {
                let infos = nodes
                    .iter()
                    .map(|u| u.expose().into_connection_info())
                    .collect::<redis::RedisResult<Vec<_>>>()
                    .map_err(failed)?;
                Dialer::Cluster(
                    redis::cluster::ClusterClient::builder(infos)
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(s.connect_timeout)
                        // Each call has its own deadline (`run_on`). (Set
                        // to that deadline, redis-rs kept a slot's calls
                        // failing long after a migration of it ended: 303
                        // of 308 writes in the migration test.)
                        .response_timeout(Duration::from_secs(3600))
                        .build()
                        .map_err(failed)?,
                )
            }
        };
        Ok(Self {
            addr,
            client,
            connect_timeout: s.connect_timeout,
            slots: (0..s.pool_size.max(1)).map(|_| Arc::default()).collect(),
            next: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(s.max_connections.max(1))),
            timeout: s.response_timeout,
            breakers: (0..if cluster {
                SLOTS / SLOTS_PER_BREAKER + 1
            } else {
                1
            })
                .map(|_| Breaker {
                    open_until: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                    checking: AtomicBool::new(false),
                    cooldown: s.breaker_cooldown,
                })
                .collect(),
            tracking,
            alive: Arc::new(()),
        })
    }

    /// Whether these are connections to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.client, Dialer::Cluster(_))
    }

    /// The family epochs a new connection will know: none ever, on a
    /// cluster, whose connections track nothing.
    fn new_epochs(&self) -> Arc<KnownEpochs> {
        Arc::new(match self.client {
            Dialer::Node(_) => KnownEpochs::default(),
            Dialer::Cluster(_) => KnownEpochs::never(),
        })
    }

    /// The invalidations of this store's connections.
    pub(crate) fn tracking(&self) -> &Arc<Tracking> {
        &self.tracking
    }

    /// The slot the next command goes through: this thread's own, driven
    /// by the caller's runtime, when there is one; else one of the pool,
    /// driven by tg-cache's runtime.
    fn slot(&self, driver: Driver) -> Arc<Slot> {
        if driver == Driver::Caller {
            let mine = THREAD_SLOTS.try_with(|t| {
                let mut t = t.borrow_mut();
                t.retain(|(store, _)| store.strong_count() > 0);
                let me = Arc::as_ptr(&self.alive);
                if let Some((_, s)) = t.iter().find(|(store, _)| std::ptr::eq(store.as_ptr(), me)) {
                    return s.clone();
                }
                let s = Arc::new(Slot::default());
                t.push((Arc::downgrade(&self.alive), s.clone()));
                s
            });
            if let Ok(s) = mine {
                return s;
            }
        }
        let i = self.next.fetch_add(1, Relaxed) % self.slots.len();
        self.slots[i].clone()
    }

    /// The slot's live connection, made (tracking on) if there is none.
    async fn link(
        &self,
        slot: &Arc<Slot>,
        caller: Option<&tokio::runtime::Handle>,
    ) -> redis::RedisResult<Arc<Link>> {
        if let Some(l) = slot.live() {
            if !l.orphaned() {
                return Ok(l);
            }
            // Its runtime shut down (a `#[tokio::test]` ended): replaced.
            self.lost(&l);
        }
        let _one = slot.connecting.lock().await;
        if let Some(l) = slot.live() {
            return Ok(l);
        }
        // Boxed: connecting (TLS included) is a big future that every
        // command's future would otherwise carry, and copy, for nothing.
        let link = Arc::new(Box::pin(self.connect(caller)).await?);
        spawn_pinger(
            Arc::downgrade(slot),
            link.clone(),
            self.tracking.clone(),
            Arc::downgrade(&self.alive),
        );
        *slot.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        Ok(link)
    }

    /// What opens one connection: RESP3, its pushes to [`Tracking`],
    /// tracking on. A cluster connection tracks nothing: its known epochs
    /// are [`KnownEpochs::never`].
    fn opener(
        &self,
        dead: Arc<Death>,
        epochs: Arc<KnownEpochs>,
    ) -> impl Future<Output = redis::RedisResult<Conn>> + Send + 'static {
        let tracking = self.tracking.clone();
        let client = match &self.client {
            Dialer::Node(c) => Ok(c.clone()),
            Dialer::Cluster(c) => Err(c.clone()),
        };
        // A closure as the push sender (portable to redis-rs 2.0): it runs
        // in the connection's reader task, in wire order, before any later
        // reply reaches its caller. The known epochs (`epochs.rs`) depend
        // on that: a channel in between would break their exactness.
        let pushes = move |info: redis::PushInfo| -> std::result::Result<(), ()> {
            let first_end = info.kind == redis::PushKind::Disconnection && dead.set();
            let live = first_end || !dead.is_set();
            tracking.push(info, live, &epochs);
            Ok(())
        };
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(pushes);
        async move {
            let client = match client {
                Ok(c) => c,
                Err(cluster) => return Ok(Conn::Cluster(cluster.get_async_connection().await?)),
            };
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async::<()>(&mut conn)
                .await?;
            Ok(Conn::Node(conn))
        }
    }

    /// A new connection (see [`Connections::opener`]), driven by `caller`'s
    /// runtime if given (falling back to tg-cache's own if that runtime
    /// cannot drive one). [`Connections::link`] starts its pinger.
    async fn connect(&self, caller: Option<&tokio::runtime::Handle>) -> redis::RedisResult<Link> {
        let mut dead = Arc::new(Death::default());
        let mut epochs = self.new_epochs();
        let mut owner = None;
        let mut conn = None;
        if let Some(h) = caller {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ended = Arc::new(AtomicBool::new(false));
            let open = self.opener(dead.clone(), epochs.clone());
            // Dropped when the connection ends, or with the runtime, which
            // takes the connection with it: then its invalidations stop.
            let end = Ended(dead.clone(), self.tracking.clone());
            let runtime_end = RuntimeEnd(Some(ended.clone()));
            let task = h.spawn(async move {
                let mut runtime_end = runtime_end;
                let r = open.await;
                let ok = r.is_ok();
                if tx.send(r).is_ok() && ok {
                    end.0.notify.notified().await;
                }
                // The connection ended; its runtime did not.
                runtime_end.0 = None;
                drop(end);
            });
            match rx.await {
                Ok(r) => {
                    conn = Some(r?);
                    owner = Some(ended);
                    crate::exec::caller_runtime_usable(true);
                }
                Err(_) => {
                    if task.await.is_err_and(|e| e.is_panic()) {
                        // A runtime without I/O or timers.
                        crate::exec::caller_runtime_usable(false);
                        tracing::warn!(
                            "tg-cache: this tokio runtime cannot drive a Redis connection (built without enable_io or enable_time?); using tg-cache's own I/O thread for this thread's calls"
                        );
                    }
                    // (Else the runtime is shutting down.) A fresh state for
                    // the connection made instead: the failed one's is over.
                    dead = Arc::new(Death::default());
                    epochs = self.new_epochs();
                }
            }
        }
        let conn = match conn {
            Some(c) => c,
            None => in_io(self.opener(dead.clone(), epochs.clone())).await?,
        };
        // A new connection loses nothing: a connection it replaces was
        // marked lost (and the listeners flushed) when it was found dead.
        Ok(Link {
            conn,
            epochs,
            dead,
            owner,
        })
    }

    /// Marks `link` lost: never used again, and every listener flushed.
    fn lost(&self, link: &Link) {
        if link.dead.set() {
            self.tracking.flushed();
        }
    }

    /// Runs one Redis operation within the call's deadline, behind the fair
    /// queue and the breaker.
    /// `slot`: the hash slot of every key the operation touches, if it
    /// has one (on a cluster, it chooses the breaker).
    pub(crate) async fn run<T, F, Fut>(&self, slot: Option<u16>, op: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(slot, |conn, _| op(conn)).await
    }

    /// A connection of the application's own (`raw.rs`), opened now,
    /// outside the pool, the queue and the breakers.
    pub(crate) async fn raw(&self) -> Result<crate::RedisConnection> {
        let failed = |source| Error::Redis {
            addr: self.addr.clone(),
            source,
        };
        let connecting = async {
            match &self.client {
                Dialer::Node(c) => c
                    .get_multiplexed_async_connection()
                    .await
                    .map(crate::RedisConnection::Node),
                Dialer::Cluster(c) => c
                    .get_async_connection()
                    .await
                    .map(crate::RedisConnection::Cluster),
            }
        };
        match crate::exec::timeout(self.connect_timeout, connecting).await {
            Ok(r) => r.map_err(failed),
            Err(_) => Err(Error::Timeout {
                addr: self.addr.clone(),
                after: self.connect_timeout,
            }),
        }
    }

    /// Whether the server that holds keys of `slot` answers a `PING`: the
    /// server, or on a cluster the primary of `slot` (behind its breaker).
    pub(crate) async fn ping(&self, slot: Option<u16>) -> Result<()> {
        self.run(slot, move |c| async move {
            match c {
                Conn::Cluster(mut c) => ping_owner(&mut c, slot).await,
                mut c => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .map(drop),
            }
        })
        .await
    }

    /// The breaker of calls in `slot` (`None`: calls that span slots).
    fn breaker_of(&self, slot: Option<u16>) -> usize {
        match slot {
            Some(s) if self.breakers.len() > 1 => usize::from(s % SLOTS / SLOTS_PER_BREAKER),
            _ => self.breakers.len() - 1,
        }
    }

    /// [`Connections::run`], with the family epochs the connection knows
    /// (`epochs.rs`), for the reads that check values against them.
    pub(crate) async fn run_on<T, F, Fut>(&self, key_slot: Option<u16>, op: F) -> Result<T>
    where
        F: FnOnce(Conn, Arc<KnownEpochs>) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let b = self.breaker_of(key_slot);
        let breaker = &self.breakers[b];
        let probe = breaker.admit().map_err(|retry_in| Error::Unavailable {
            addr: self.addr.clone(),
            retry_in,
        })?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit = crate::exec::timeout_at(deadline, self.permits.acquire()).await;
        let _permit = match permit {
            Ok(Ok(p)) => p,
            // Queued for the whole deadline: load, not a Redis failure.
            _ => {
                return Err(Error::Saturated {
                    waited: self.timeout,
                });
            }
        };
        let slice = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Chosen before `in_io_until`, which makes tg-cache's runtime current.
        let caller = crate::exec::caller_runtime();
        let slot = self.slot(if caller.is_some() {
            Driver::Caller
        } else {
            Driver::Own
        });
        let used = slot.clone();
        // Whether a connection was had within the deadline.
        let linked = AtomicBool::new(false);
        let linked_ref = &linked;
        // Pinned here and polled in place: the hot path's future is never
        // nested in wrappers that copy it (`exec::in_io_until`).
        let op = std::pin::pin!(async move {
            let link = self
                .link(&slot, caller.as_ref())
                .await
                .map_err(|source| Failed {
                    source,
                    orphaned: false,
                })?;
            linked_ref.store(true, Relaxed);
            let r = op(link.conn.clone(), link.epochs.clone()).await;
            let mut orphaned = false;
            // A cluster connection outlives its nodes' errors: redis-rs
            // reconnects them (its pinger replaces a dead one).
            if let Err(e) = &r
                && matches!(link.conn, Conn::Node(_))
                && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
            {
                self.lost(&link);
                // Its runtime ended under it: no sign that Redis is down.
                orphaned = link.orphaned();
            }
            r.map_err(|source| Failed { source, orphaned })
        });
        let res = crate::exec::in_io_until(deadline, op).await;
        let err = match res {
            Some(Ok(v)) => {
                breaker.success(probe);
                return Ok(v);
            }
            Some(Err(Failed {
                source,
                orphaned: true,
            })) => {
                drop(probe);
                return Err(Error::Redis {
                    addr: self.addr.clone(),
                    source,
                });
            }
            Some(Err(Failed { source, .. })) => Error::Redis {
                addr: self.addr.clone(),
                source,
            },
            // Most of the deadline went to the queue: load, not a failure.
            None if slice < self.timeout / 2 => {
                drop(probe);
                return Err(Error::Saturated {
                    waited: self.timeout,
                });
            }
            // No connection within the deadline (a handshake that hangs:
            // a proxy in front of a dead server, a frozen server): Redis
            // is unreachable, whatever any PING could say.
            None if !linked.load(Relaxed) => self.timed_out(),
            // One slow command (a big value, a slow script) is not an outage:
            // a PING in the background decides, and opens the breaker only
            // if Redis does not answer it either. The probe decides at once.
            None if probe.0.is_none() => {
                self.check_in_background(&used, b, key_slot);
                return Err(self.timed_out());
            }
            None => self.timed_out(),
        };
        if err.is_unreachable() {
            breaker.failure(probe);
        } else {
            // Redis answered (with an error about this command).
            breaker.success(probe);
        }
        Err(err)
    }
}

/// `PING`s `link` every [`PING_EVERY`] while it is its slot's live
/// connection; a `PING` that fails or goes unanswered for a second marks
/// it lost (and flushes the listeners). Once the store is dropped, it closes
/// the connection.
fn spawn_pinger(slot: Weak<Slot>, link: Arc<Link>, tracking: Arc<Tracking>, store: Weak<()>) {
    io_runtime().spawn(async move {
        let mut unanswered = 0;
        loop {
            crate::exec::sleep(PING_EVERY).await;
            if store.strong_count() == 0 {
                // Its store was dropped: a thread's slot may outlive it
                // until that thread's next call, so the connection is
                // closed here (its last handle goes with this task).
                if let Some(slot) = slot.upgrade() {
                    let mut l = slot.link.lock().unwrap_or_else(|p| p.into_inner());
                    if l.as_ref().is_some_and(|l| Arc::ptr_eq(&l.dead, &link.dead)) {
                        *l = None;
                    }
                }
                if link.dead.set() {
                    tracking.flushed();
                }
                return;
            }
            let Some(slot) = slot.upgrade() else {
                // Its slot is gone (the thread that owned it exited): so is
                // the connection, and what it tracked.
                if link.dead.set() {
                    tracking.flushed();
                }
                return;
            };
            if link.dead.is_set() {
                return;
            }
            let current = slot
                .link
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(&l.dead, &link.dead));
            if !current {
                return;
            }
            drop(slot);
            let answered = match link.conn.clone() {
                // Any node's answer shows the cluster connection works; a
                // failed node alone (one in six here) is not its end.
                Conn::Cluster(mut c) => {
                    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                    let ping = c.route_command(
                        redis::cmd("PING"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    );
                    let ok = matches!(crate::exec::timeout(PING_EVERY, ping).await, Ok(Ok(_)));
                    unanswered = if ok { 0 } else { unanswered + 1 };
                    unanswered < CLUSTER_PINGS_LOST
                }
                mut c => {
                    let cmd = redis::cmd("PING");
                    let ping = cmd.query_async::<String>(&mut c);
                    matches!(crate::exec::timeout(PING_EVERY, ping).await, Ok(Ok(_)))
                }
            };
            if !answered {
                if link.dead.set() {
                    tracking.flushed();
                }
                return;
            }
        }
    });
}

impl Connections {
    fn timed_out(&self) -> Error {
        Error::Timeout {
            addr: self.addr.clone(),
            after: self.timeout,
        }
    }

    /// After a command timed out: checks with a `PING` (within the response
    /// timeout) whether Redis answers at all, and opens breaker `b` if not.
    /// On a cluster the `PING` goes to the primary of `key_slot`.
    fn check_in_background(&self, used: &Slot, b: usize, key_slot: Option<u16>) {
        if self.breakers[b].checking.swap(true, Relaxed) {
            return;
        }
        let live = used
            .live()
            .or_else(|| self.slots.iter().find_map(|s| s.live()));
        let Some(link) = live else {
            self.breakers[b].checking.store(false, Relaxed);
            return;
        };
        let (conn, breakers) = (link.conn.clone(), self.breakers.clone());
        let timeout = self.timeout;
        io_runtime().spawn(async move {
            let ping = async move {
                match conn {
                    Conn::Cluster(mut c) => ping_owner(&mut c, key_slot).await,
                    mut c => redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .map(drop),
                }
            };
            let r = crate::exec::timeout(timeout, ping).await;
            if !matches!(r, Ok(Ok(()))) {
                breakers[b].failure(Probe(None));
            }
            breakers[b].checking.store(false, Relaxed);
        });
    }
}

/// `PING`s the primary that serves `slot` on a cluster (any primary for
/// `None`), by its address: redis-rs answers a `PING` routed by slot from
/// another node when the owner cannot be reached, which would hide a
/// failed shard.
async fn ping_owner(c: &mut ClusterConnection, slot: Option<u16>) -> redis::RedisResult<()> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let mut route = SingleNodeRoutingInfo::RandomPrimary;
    if let Some(s) = slot {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        // No topology, no verdict: a node that cannot tell where the slot
        // is says nothing about its owner.
        let Ok(slots) = c.route_command(cmd, any).await else {
            return Ok(());
        };
        if let Some(p) = super::slots::Primary::all_in(&slots)
            .into_iter()
            .find(|p| p.serves(s))
        {
            route = SingleNodeRoutingInfo::ByAddress {
                host: p.host,
                port: p.port,
            };
        }
    }
    c.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(route))
        .await
        .map(drop)
}

/// Stops paying the timeout on every call while Redis is away.
struct Breaker {
    /// Nanoseconds since `START` until which calls fail fast; 0 = closed.
    open_until: AtomicU64,
    /// Whether a probe is out.
    probing: AtomicBool,
    /// Whether a background check of a timeout is running.
    checking: AtomicBool,
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
            checking: AtomicBool::new(false),
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
