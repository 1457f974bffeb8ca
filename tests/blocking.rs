//! Blocking calls never deadlock and never starve an executor.
//!
//! * **The matrix.** A leader (body 200 ms, started first) and followers on
//!   the same key while it computes, for every combination of caller kind
//!   (blocking: `cache.blocking().get_or_set` or a sync `#[cache_function]`;
//!   async: `cache.get_or_set` or an async `#[cache_function]`), runtime
//!   (current-thread; multi-thread with 2 workers, where 2 followers occupy
//!   both workers while the leader needs one to finish) and store (local,
//!   real Redis, real Redis Cluster). Every caller gets the right value; the body runs once,
//!   except that a blocking follower on the thread of a current-thread
//!   runtime never waits on an in-process flight (the leader may be an async
//!   call of that very thread) and computes itself: two runs, documented.
//!   A sync and an async `#[cache_function]` cannot share a key (distinct
//!   `key_prefix`), so the mixed-kind pairs use the method API and the
//!   function variant pairs a function with itself.
//!
//!   On a current-thread runtime a blocking leader runs in `spawn_blocking`:
//!   on the runtime's own thread nothing else could run while it computes,
//!   so no follower could call meanwhile.
//! * **Starvation.** With Redis frozen (`SIGSTOP`), concurrent blocking calls
//!   from async tasks on a 2-worker runtime each return within the response
//!   timeout (+10% + slack), while a 5 ms ticker keeps ticking: no worker is
//!   parked.
//! * **Other threads.** Blocking calls in `spawn_blocking` and on a plain
//!   `std::thread` (no runtime) work and wait on flights, except that a
//!   `spawn_blocking` thread of a current-thread runtime sees that runtime's
//!   flavor, so its follower computes itself (2 runs; allowed, not required).
//!
//! Every test has a 20 s watchdog that aborts the binary: a deadlock fails
//! the run instead of hanging it.
//!
//! Run: `cargo test --all-features --test blocking`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tg_cache::testing::{RedisCluster, RedisServer};
use tg_cache::{Cache, CacheConfig, Caches, cache_function};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Long enough never to expire during a test.
const TTL: Duration = Duration::from_secs(300);
/// The body time of a slow computation.
const SLOW: Duration = Duration::from_millis(200);
/// Response timeout of the cache on the frozen Redis.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
/// Extra time allowed to a call on the frozen Redis, beyond timeout + 10%.
const SLACK: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------
// Setup: servers, caches, watchdog, body bookkeeping
// ---------------------------------------------------------------------------

/// The Redis of the matrix.
static SERVER: LazyLock<RedisServer> = LazyLock::new(RedisServer::start);
/// The Redis Cluster of the matrix.
static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(RedisCluster::start);
/// A Redis that only the starvation test freezes.
static FROZEN: LazyLock<RedisServer> = LazyLock::new(RedisServer::start);

static SETUP: LazyLock<()> = LazyLock::new(|| {
    tg_cache::configure(
        Caches::new(CacheConfig::local())
            .with("redis", CacheConfig::redis(&SERVER.url()))
            .with("cluster", CacheConfig::redis_cluster(CLUSTER.urls()))
            .with("frozen", frozen_config()),
    )
    .unwrap();
});

fn frozen_config() -> CacheConfig {
    CacheConfig::redis(&FROZEN.url()).response_timeout(RESPONSE_TIMEOUT)
}

fn setup() {
    LazyLock::force(&SETUP);
}

/// Aborts the test binary if its test runs longer than 20 s.
fn watchdog(test: &'static str) -> tg_cache::testing::Watchdog {
    tg_cache::testing::watchdog(test, Duration::from_secs(20))
}

/// A fresh id per scenario, so scenarios never share a key.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, SeqCst)
}

/// Per id: body runs started, body runs finished.
static RUNS: LazyLock<Mutex<HashMap<u64, (usize, usize)>>> = LazyLock::new(Mutex::default);

fn started(id: u64) -> usize {
    RUNS.lock().unwrap().get(&id).map_or(0, |r| r.0)
}

fn finished(id: u64) -> usize {
    RUNS.lock().unwrap().get(&id).map_or(0, |r| r.1)
}

fn value(id: u64) -> u64 {
    id * 7 + 1
}

fn sync_body(id: u64) -> u64 {
    RUNS.lock().unwrap().entry(id).or_default().0 += 1;
    std::thread::sleep(SLOW);
    RUNS.lock().unwrap().entry(id).or_default().1 += 1;
    value(id)
}

async fn async_body(id: u64) -> u64 {
    RUNS.lock().unwrap().entry(id).or_default().0 += 1;
    tokio::time::sleep(SLOW).await;
    RUNS.lock().unwrap().entry(id).or_default().1 += 1;
    value(id)
}

#[cache_function(key_prefix = "blk_sync_local")]
fn sync_local(id: u64) -> u64 {
    sync_body(id)
}

#[cache_function(key_prefix = "blk_async_local")]
async fn async_local(id: u64) -> u64 {
    async_body(id).await
}

#[cache_function(key_prefix = "blk_sync_redis", cache = "redis")]
fn sync_redis(id: u64) -> u64 {
    sync_body(id)
}

#[cache_function(key_prefix = "blk_async_redis", cache = "redis")]
async fn async_redis(id: u64) -> u64 {
    async_body(id).await
}

#[cache_function(key_prefix = "blk_sync_cluster", cache = "cluster")]
fn sync_cluster(id: u64) -> u64 {
    sync_body(id)
}

#[cache_function(key_prefix = "blk_async_cluster", cache = "cluster")]
async fn async_cluster(id: u64) -> u64 {
    async_body(id).await
}

/// A quick sync function on the frozen Redis.
#[cache_function(key_prefix = "blk_frozen", cache = "frozen")]
fn frozen_fn(id: u64) -> u64 {
    value(id)
}

// ---------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blocking,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `cache.blocking().get_or_set` / `cache.get_or_set`.
    Method,
    /// A sync / async `#[cache_function]`.
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Local,
    Redis,
    Cluster,
}

/// How a scenario reaches its key.
#[derive(Clone)]
struct Target {
    api: Api,
    store: Store,
    /// The cache of the method API (the functions use the registry).
    cache: Cache,
}

impl Target {
    fn new(api: Api, store: Store) -> Self {
        let config = match store {
            Store::Local => CacheConfig::local(),
            Store::Redis => CacheConfig::redis(&SERVER.url()),
            Store::Cluster => CacheConfig::redis_cluster(CLUSTER.urls()),
        };
        Target {
            api,
            store,
            cache: config.build().unwrap(),
        }
    }

    fn call_blocking(&self, id: u64) -> u64 {
        match (self.api, self.store) {
            (Api::Method, _) => self
                .cache
                .blocking()
                .get_or_set(&format!("blk:{id}"), TTL, || sync_body(id)),
            (Api::Function, Store::Local) => sync_local(id),
            (Api::Function, Store::Redis) => sync_redis(id),
            (Api::Function, Store::Cluster) => sync_cluster(id),
        }
    }

    async fn call_async(&self, id: u64) -> u64 {
        match (self.api, self.store) {
            (Api::Method, _) => {
                self.cache
                    .get_or_set(&format!("blk:{id}"), TTL, || async_body(id))
                    .await
            }
            (Api::Function, Store::Local) => async_local(id).await,
            (Api::Function, Store::Redis) => async_redis(id).await,
            (Api::Function, Store::Cluster) => async_cluster(id).await,
        }
    }

    /// Calls as `kind` in a task of the current runtime: a blocking call on
    /// a worker of a multi-thread runtime, in `spawn_blocking` on a
    /// current-thread one (its only thread is the test's).
    fn spawn(&self, kind: Kind, id: u64) -> tokio::task::JoinHandle<u64> {
        let t = self.clone();
        match (kind, multi_thread()) {
            (Kind::Async, _) => tokio::spawn(async move { t.call_async(id).await }),
            (Kind::Blocking, true) => tokio::spawn(async move { t.call_blocking(id) }),
            (Kind::Blocking, false) => tokio::task::spawn_blocking(move || t.call_blocking(id)),
        }
    }

    /// Calls as `kind` right here, in the test's task.
    async fn call(&self, kind: Kind, id: u64) -> u64 {
        match kind {
            Kind::Blocking => self.call_blocking(id),
            Kind::Async => self.call_async(id).await,
        }
    }
}

fn multi_thread() -> bool {
    Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
}

/// Waits (yielding to the runtime) until a body of `id` has started.
async fn until_started(id: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while started(id) == 0 {
        assert!(Instant::now() < deadline, "the leader's body never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. The leader / follower matrix
// ---------------------------------------------------------------------------

/// One leader (started first, body 200 ms) and its followers on one key:
/// one follower called from the test's own task on a current-thread
/// runtime, two follower tasks on a multi-thread runtime (2 workers).
async fn leader_and_followers(store: Store, api: Api, leader: Kind, follower: Kind) {
    setup();
    assert!(
        api == Api::Method || leader == follower,
        "a sync and an async function cannot share a key"
    );
    let multi = multi_thread();
    let id = next_id();
    let target = Target::new(api, store);
    let begin = Instant::now();
    let leader_task = target.spawn(leader, id);
    until_started(id).await;
    assert_eq!(finished(id), 0, "the leader finished before the followers");
    let mut values = Vec::new();
    if multi {
        // Two followers occupy both workers; with blocking followers an
        // async leader then needs a worker that block_in_place freed.
        let followers: Vec<_> = (0..2).map(|_| target.spawn(follower, id)).collect();
        for f in followers {
            values.push(f.await.unwrap());
        }
    } else {
        values.push(target.call(follower, id).await);
    }
    values.push(leader_task.await.unwrap());
    let elapsed = begin.elapsed();
    let runs = started(id);
    let expected_runs = if !multi && follower == Kind::Blocking {
        2 // never waits on a flight from a current-thread runtime's thread
    } else {
        1
    };
    eprintln!(
        "{store:?} {api:?} leader {leader:?} follower {follower:?} multi={multi}: \
         {runs} body runs, {elapsed:?}"
    );
    assert!(
        values.iter().all(|v| *v == value(id)),
        "callers got {values:?}, expected {}",
        value(id)
    );
    assert_eq!(runs, expected_runs, "body runs");
    assert_eq!(finished(id), runs, "a body run did not finish");
    // The leader's value was stored: a later call of the follower's kind hits.
    assert_eq!(target.call(follower, id).await, value(id));
    assert_eq!(started(id), expected_runs, "a later call did not hit");
}

macro_rules! matrix {
    ($($name:ident: [$($flavor:tt)*] $store:ident $api:ident $leader:ident $follower:ident;)*) => {$(
        #[tokio::test($($flavor)*)]
        async fn $name() {
            let _w = watchdog(stringify!($name));
            leader_and_followers(Store::$store, Api::$api, Kind::$leader, Kind::$follower).await;
        }
    )*};
}

matrix! {
    // current-thread runtime
    ct_local_method_async_leads_async: [] Local Method Async Async;
    ct_local_method_async_leads_blocking: [] Local Method Async Blocking;
    ct_local_method_blocking_leads_async: [] Local Method Blocking Async;
    ct_local_method_blocking_leads_blocking: [] Local Method Blocking Blocking;
    ct_local_fn_async_leads_async: [] Local Function Async Async;
    ct_local_fn_sync_leads_sync: [] Local Function Blocking Blocking;
    ct_redis_method_async_leads_async: [] Redis Method Async Async;
    ct_redis_method_async_leads_blocking: [] Redis Method Async Blocking;
    ct_redis_method_blocking_leads_async: [] Redis Method Blocking Async;
    ct_redis_method_blocking_leads_blocking: [] Redis Method Blocking Blocking;
    ct_redis_fn_async_leads_async: [] Redis Function Async Async;
    ct_redis_fn_sync_leads_sync: [] Redis Function Blocking Blocking;
    ct_cluster_method_async_leads_async: [] Cluster Method Async Async;
    ct_cluster_method_async_leads_blocking: [] Cluster Method Async Blocking;
    ct_cluster_method_blocking_leads_async: [] Cluster Method Blocking Async;
    ct_cluster_method_blocking_leads_blocking: [] Cluster Method Blocking Blocking;
    ct_cluster_fn_async_leads_async: [] Cluster Function Async Async;
    ct_cluster_fn_sync_leads_sync: [] Cluster Function Blocking Blocking;
    // multi-thread runtime, 2 workers, 2 followers
    mt_local_method_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Local Method Async Async;
    mt_local_method_async_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Local Method Async Blocking;
    mt_local_method_blocking_leads_async: [flavor = "multi_thread", worker_threads = 2] Local Method Blocking Async;
    mt_local_method_blocking_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Local Method Blocking Blocking;
    mt_local_fn_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Local Function Async Async;
    mt_local_fn_sync_leads_sync: [flavor = "multi_thread", worker_threads = 2] Local Function Blocking Blocking;
    mt_redis_method_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Redis Method Async Async;
    mt_redis_method_async_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Redis Method Async Blocking;
    mt_redis_method_blocking_leads_async: [flavor = "multi_thread", worker_threads = 2] Redis Method Blocking Async;
    mt_redis_method_blocking_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Redis Method Blocking Blocking;
    mt_redis_fn_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Redis Function Async Async;
    mt_redis_fn_sync_leads_sync: [flavor = "multi_thread", worker_threads = 2] Redis Function Blocking Blocking;
    mt_cluster_method_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Cluster Method Async Async;
    mt_cluster_method_async_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Cluster Method Async Blocking;
    mt_cluster_method_blocking_leads_async: [flavor = "multi_thread", worker_threads = 2] Cluster Method Blocking Async;
    mt_cluster_method_blocking_leads_blocking: [flavor = "multi_thread", worker_threads = 2] Cluster Method Blocking Blocking;
    mt_cluster_fn_async_leads_async: [flavor = "multi_thread", worker_threads = 2] Cluster Function Async Async;
    mt_cluster_fn_sync_leads_sync: [flavor = "multi_thread", worker_threads = 2] Cluster Function Blocking Blocking;
}

// ---------------------------------------------------------------------------
// 2. Executor starvation while Redis is frozen
// ---------------------------------------------------------------------------

/// Resumes the frozen server even if the test fails.
struct Thaw;

impl Drop for Thaw {
    fn drop(&mut self) {
        FROZEN.resume();
    }
}

/// A MiniJinja environment whose fragments are cached on the frozen cache.
fn fragments() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        tg_cache::template::add_to_environment(&mut env, tg_cache::caches("frozen").unwrap());
        env.add_template(
            "f",
            r#"{% call cache("frozen_fragment", 900, id) %}{{ id * 7 + 1 }}{% endcall %}"#,
        )
        .unwrap();
        env
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_never_parks_a_worker() {
    let _w = watchdog("a_frozen_redis_never_parks_a_worker");
    setup();
    let method = tg_cache::caches("frozen").unwrap();
    // Connect first: the frozen server then holds open, silent connections.
    assert_eq!(frozen_fn(0), value(0));
    assert_eq!(
        method.blocking().get_or_set("warm", TTL, || value(0)),
        value(0)
    );

    FROZEN.pause();
    let _thaw = Thaw;
    let ticks = Arc::new(AtomicU64::new(0));
    let max_gap = Arc::new(Mutex::new(Duration::ZERO));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (ticks, max_gap, stop) = (ticks.clone(), max_gap.clone(), stop.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(5));
            // Missed ticks are not made up in a burst: a starved ticker
            // shows as fewer ticks and a long gap.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            while !stop.load(SeqCst) {
                interval.tick().await;
                let now = Instant::now();
                let mut g = max_gap.lock().unwrap();
                *g = (*g).max(now - last);
                last = now;
                ticks.fetch_add(1, SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    ticks.store(0, SeqCst);
    *max_gap.lock().unwrap() = Duration::ZERO;

    let begin = Instant::now();
    let mut durations = Vec::new();
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for i in 0..6u64 {
            let id = 1000 + round * 10 + i;
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let v = match i % 3 {
                    0 => frozen_fn(id),
                    1 => tg_cache::caches("frozen").unwrap().blocking().get_or_set(
                        &format!("frozen:{id}"),
                        TTL,
                        || value(id),
                    ),
                    // A template fragment renders through the same
                    // blocking face.
                    _ => {
                        let out = fragments()
                            .get_template("f")
                            .unwrap()
                            .render(minijinja::context! { id => id })
                            .unwrap();
                        out.parse().unwrap()
                    }
                };
                (id, v, t.elapsed())
            }));
        }
        for t in tasks {
            let (id, v, d) = t.await.unwrap();
            assert_eq!(v, value(id), "wrong value while Redis is frozen");
            durations.push(d);
        }
        // Past the breaker's cooldown (50 ms): the next round probes again.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let window = begin.elapsed();
    stop.store(true, SeqCst);
    ticker.await.unwrap();

    let ticks = ticks.load(SeqCst);
    let max_gap = *max_gap.lock().unwrap();
    let expected = (window.as_millis() / 5) as u64;
    let longest = durations.iter().max().copied().unwrap();
    let slow = durations
        .iter()
        .filter(|d| **d >= RESPONSE_TIMEOUT / 2)
        .count();
    let bound = RESPONSE_TIMEOUT + RESPONSE_TIMEOUT / 10 + SLACK;
    eprintln!(
        "frozen redis: window {window:?}, {ticks} ticks of ~{expected} expected, max gap {max_gap:?}; \
         {} calls, {slow} waited on Redis, longest {longest:?} (bound {bound:?})",
        durations.len()
    );
    assert!(
        slow > 0,
        "no call waited on the frozen Redis: the test proves nothing"
    );
    assert!(
        longest <= bound,
        "a blocking call took {longest:?} (bound {bound:?})"
    );
    assert!(
        ticks * 2 >= expected,
        "the ticker starved: {ticks} ticks in {window:?} (~{expected} expected)"
    );
    assert!(
        max_gap < Duration::from_millis(150),
        "the ticker stalled for {max_gap:?}: a worker was parked"
    );
}

// ---------------------------------------------------------------------------
// 3. spawn_blocking and plain threads
// ---------------------------------------------------------------------------

/// A blocking call in `spawn_blocking` computes and stores; a follower in
/// `spawn_blocking` while an async leader computes gets its value.
async fn in_spawn_blocking(store: Store) {
    setup();
    for api in [Api::Method, Api::Function] {
        let target = Target::new(api, store);
        // Alone: computes once, then hits.
        let id = next_id();
        for _ in 0..2 {
            let t = target.clone();
            let v = tokio::task::spawn_blocking(move || t.call_blocking(id))
                .await
                .unwrap();
            assert_eq!(v, value(id));
        }
        assert_eq!(started(id), 1, "{api:?}: the second call did not hit");

        // Following an async leader (method API: same key for both kinds).
        if api == Api::Method {
            let id = next_id();
            let leader = target.spawn(Kind::Async, id);
            until_started(id).await;
            let t = target.clone();
            let follower = tokio::task::spawn_blocking(move || t.call_blocking(id));
            let values = [follower.await.unwrap(), leader.await.unwrap()];
            assert_eq!(values, [value(id); 2]);
            let runs = started(id);
            eprintln!(
                "{store:?} spawn_blocking follower of an async leader, multi={}: {runs} body runs",
                multi_thread()
            );
            assert!(runs <= 2, "{runs} body runs");
            if multi_thread() {
                assert_eq!(runs, 1, "the spawn_blocking follower did not wait");
            }
        }
    }
}

#[tokio::test]
async fn spawn_blocking_current_thread_local() {
    let _w = watchdog("spawn_blocking_current_thread_local");
    in_spawn_blocking(Store::Local).await;
}

#[tokio::test]
async fn spawn_blocking_current_thread_redis() {
    let _w = watchdog("spawn_blocking_current_thread_redis");
    in_spawn_blocking(Store::Redis).await;
}

#[tokio::test]
async fn spawn_blocking_current_thread_cluster() {
    let _w = watchdog("spawn_blocking_current_thread_cluster");
    in_spawn_blocking(Store::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_multi_thread_local() {
    let _w = watchdog("spawn_blocking_multi_thread_local");
    in_spawn_blocking(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_multi_thread_redis() {
    let _w = watchdog("spawn_blocking_multi_thread_redis");
    in_spawn_blocking(Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_multi_thread_cluster() {
    let _w = watchdog("spawn_blocking_multi_thread_cluster");
    in_spawn_blocking(Store::Cluster).await;
}

/// Outside any runtime: a blocking leader on one thread, a blocking
/// follower on another that waits for it (one body run).
fn on_plain_threads(store: Store) {
    setup();
    for api in [Api::Method, Api::Function] {
        let target = Target::new(api, store);
        let id = next_id();
        let leader = {
            let t = target.clone();
            std::thread::spawn(move || t.call_blocking(id))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while started(id) == 0 {
            assert!(Instant::now() < deadline, "the leader's body never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let follower = {
            let t = target.clone();
            std::thread::spawn(move || t.call_blocking(id))
        };
        let values = [follower.join().unwrap(), leader.join().unwrap()];
        assert_eq!(values, [value(id); 2], "{api:?}");
        assert_eq!(started(id), 1, "{api:?}: the follower did not wait");
        assert_eq!(target.call_blocking(id), value(id));
        assert_eq!(started(id), 1, "{api:?}: a later call did not hit");
    }
}

#[test]
fn plain_threads_local() {
    let _w = watchdog("plain_threads_local");
    on_plain_threads(Store::Local);
}

#[test]
fn plain_threads_redis() {
    let _w = watchdog("plain_threads_redis");
    on_plain_threads(Store::Redis);
}

#[test]
fn plain_threads_cluster() {
    let _w = watchdog("plain_threads_cluster");
    on_plain_threads(Store::Cluster);
}
