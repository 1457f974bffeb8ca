//! The foundation under real workloads (issue 12): a keyspace large enough
//! that a `SCAN` takes hundreds of batches, bodies that fail or outlast the
//! old 60 s hold, a hung holder, lost replies, values over the cap,
//! compressed reads under load. Every cross-process claim runs with two OS
//! processes (this binary re-run as a child) or two independently built
//! caches, on real `redis-server`s; outcomes are counted (stale fills, body
//! runs, waiting times) and printed as `WORKLOAD` lines.
//!
//! Run: `cargo test --all-features --test workloads -- --nocapture`.

#[path = "cross_process/helpers.rs"]
#[macro_use]
mod helpers;

use helpers::{Backend, Raw, Where, build, child_url, finish, reported, spawn_child};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig};

const TTL: Duration = Duration::from_secs(300);

/// Aborts the binary if the test still runs after `secs` (a hung protocol
/// fails the run instead of hanging it).
fn watchdog(test: &'static str, secs: u64) -> tg_cache::testing::Watchdog {
    tg_cache::testing::watchdog(test, Duration::from_secs(secs))
}

fn report(name: &str, value: impl std::fmt::Display) {
    println!("WORKLOAD {name}={value}");
}

// ---------------------------------------------------------------------------
// 1. A fill that lands during a pattern delete or a clear() over a large
//    database never survives it
// ---------------------------------------------------------------------------

/// Keys in the database besides the raced ones: one `SCAN` of them takes
/// hundreds of batches (`COUNT 1000`), about a third of a second.
const FILLER_KEYS: u64 = 300_000;
const TRIALS: u64 = 24;
/// Trials on the cluster, whose sweeps take longer (every primary is
/// scanned, and each batch is unlinked by a script).
const CLUSTER_TRIALS: u64 = 8;
/// The trials a child runs.
const TRIALS_VAR: &str = "XP_TRIALS";

fn trials(place: Where) -> u64 {
    match place {
        Where::Node | Where::Django => TRIALS,
        Where::Cluster => CLUSTER_TRIALS,
    }
}
/// Fills in flight in each trial, released together.
const FILLS: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    Pattern,
    Clear,
    /// `invalidate_family("tg:fn:race")`: O(1) on one server, every slot
    /// on a cluster, a `SCAN` of the database when shared with Django.
    Family,
}

/// The child's sweep kind (its keys are a family's for [`Sweep::Family`]).
const SWEEP_VAR: &str = "XP_SWEEP";

/// The key of trial `i`'s fill `j`.
fn race_key(kind: Sweep, i: u64, j: u64) -> String {
    match kind {
        Sweep::Family => format!("tg:fn:race:k{i}_{j}"),
        _ => format!("race:k{i}_{j}"),
    }
}

/// Adds [`FILLER_KEYS`] keys: `DEBUG POPULATE` on a server; on a cluster,
/// a script on each primary that writes keys in the slots it serves
/// (`DEBUG POPULATE` would write keys of any slot).
fn populate(backend: &Backend) {
    if !backend.is_cluster() {
        let () = backend.server.cmd(&[
            "DEBUG",
            "POPULATE",
            &FILLER_KEYS.to_string(),
            "filler",
            "16",
        ]);
        return;
    }
    const POPULATE: &str = r"#!lua flags=allow-cross-slot-keys
local per = tonumber(ARGV[1])
for i = 2, #ARGV do
  for j = 1, per do
    redis.call('SET', '{' .. ARGV[i] .. '}filler:' .. j, 'xxxxxxxxxxxxxxxx')
  end
end
return 0";
    let per = FILLER_KEYS.div_ceil(u64::from(tg_cache::testing::SLOTS));
    for p in helpers::CLUSTER.primaries() {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(POPULATE).arg(0).arg(per);
        for &(a, b) in &p.slots {
            for slot in a..=b {
                cmd.arg(tg_cache::testing::tag_of_slot(slot));
            }
        }
        let mut con = helpers::CLUSTER.server(p.port).connection();
        let () = cmd.query(&mut con).unwrap();
    }
}

async fn sweep(cache: &Cache, kind: Sweep) {
    match kind {
        Sweep::Pattern => {
            cache.delete_pattern("race:*").await.unwrap();
        }
        Sweep::Clear => cache.clear().await.unwrap(),
        Sweep::Family => cache.invalidate_family("tg:fn:race").await.unwrap(),
    }
}

/// Process A (a child) holds the leases of [`FILLS`] cold keys
/// `race:k<i>_<j>` and computes them from the old data; this process
/// changes the data, then sweeps the whole database
/// (`delete_pattern("race:*")` or `clear()`) while A's fills are released
/// at a random moment of the sweep. Returns the fills that survived (a
/// fresh cache still reads the old value), of [`trials`] × [`FILLS`].
async fn fills_surviving_a_sweep(place: Where, kind: Sweep) -> u64 {
    let server = Backend::start(place);
    let trials = trials(place);
    let data = Raw::data(&server.url());
    for i in 0..trials {
        let () = data.cmd(&["SET", &format!("race:{i}:db"), "old"]);
    }
    populate(&server);
    // How long one sweep takes here: the release falls anywhere in it.
    let cache = build(&server.url());
    let t = Instant::now();
    sweep(&cache, kind).await;
    let sweep_time = t.elapsed();
    report(&format!("{kind:?}_sweep_ms"), sweep_time.as_millis());
    let child = spawn_child(
        "helper_race_filler",
        &server.url(),
        &[
            (TRIALS_VAR, &trials.to_string()),
            (SWEEP_VAR, &format!("{kind:?}")),
        ],
    );
    let mut stale = 0;
    for i in 0..trials {
        if kind == Sweep::Clear || i == 0 {
            populate(&server);
        }
        wait_count(&data, &format!("race:{i}:read"), FILLS).await;
        let () = data.cmd(&["SET", &format!("race:{i}:db"), "new"]);
        let release = sweep_time.mul_f64(rand::random::<f64>());
        let sweeping = {
            let cache = cache.clone();
            tokio::spawn(async move { sweep(&cache, kind).await })
        };
        tokio::time::sleep(release).await;
        let () = data.cmd(&["SET", &format!("race:{i}:release"), "1"]);
        sweeping.await.unwrap();
        wait_count(&data, &format!("race:{i}:filled"), FILLS).await;
        let fresh = build(&server.url());
        for j in 0..FILLS {
            if fresh
                .get::<String>(&race_key(kind, i, j))
                .await
                .unwrap()
                .as_deref()
                == Some("old")
            {
                stale += 1;
            }
        }
    }
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    report(
        &format!("{kind:?}_stale_fills"),
        format!("{stale}/{}", trials * FILLS),
    );
    stale
}

/// Waits until the counter at `key` reaches `n` (20 s at most).
async fn wait_count(data: &Raw, key: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while data.get_u64(key).unwrap_or(0) < n {
        assert!(Instant::now() < deadline, "{key} did not reach {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process"]
async fn helper_race_filler() {
    let Some(url) = child_url() else { return };
    let cache = build(&url);
    let data = Raw::data(&url);
    let trials: u64 = std::env::var(TRIALS_VAR).unwrap().parse().unwrap();
    let kind = match std::env::var(SWEEP_VAR).as_deref() {
        Ok("Family") => Sweep::Family,
        _ => Sweep::Pattern,
    };
    for i in 0..trials {
        let fills: Vec<_> = (0..FILLS)
            .map(|j| {
                let (cache, d, done) = (cache.clone(), data.clone(), data.clone());
                tokio::spawn(async move {
                    let v = cache
                        .get_or_set(&race_key(kind, i, j), TTL, || async move {
                            let v: String = d.cmd(&["GET", &format!("race:{i}:db")]);
                            let _: u64 = d.incr(&format!("race:{i}:read"));
                            d.wait_for(&format!("race:{i}:release"), Duration::from_secs(20))
                                .await;
                            v
                        })
                        .await;
                    assert_eq!(v, "old");
                    let _: u64 = done.incr(&format!("race:{i}:filled"));
                })
            })
            .collect();
        for f in fills {
            f.await.unwrap();
        }
    }
}

on_all!(
    a_fill_never_survives_a_pattern_delete_over_300k_keys,
    a_fill_never_survives_a_clear_over_300k_keys,
    a_fill_never_survives_a_family_invalidation_over_300k_keys
);

async fn a_fill_never_survives_a_family_invalidation_over_300k_keys(place: Where) {
    let _w = watchdog(
        "a_fill_never_survives_a_family_invalidation_over_300k_keys",
        300,
    );
    let stale = fills_surviving_a_sweep(place, Sweep::Family).await;
    assert_eq!(
        stale,
        0,
        "{stale} of {} fills released during an invalidate_family among {FILLER_KEYS} keys survived it",
        trials(place) * FILLS
    );
}

async fn a_fill_never_survives_a_pattern_delete_over_300k_keys(place: Where) {
    let _w = watchdog("a_fill_never_survives_a_pattern_delete_over_300k_keys", 300);
    let stale = fills_surviving_a_sweep(place, Sweep::Pattern).await;
    assert_eq!(
        stale,
        0,
        "{stale} of {} fills released during a delete_pattern over {FILLER_KEYS} keys survived it",
        trials(place) * FILLS
    );
}

async fn a_fill_never_survives_a_clear_over_300k_keys(place: Where) {
    let _w = watchdog("a_fill_never_survives_a_clear_over_300k_keys", 300);
    let stale = fills_surviving_a_sweep(place, Sweep::Clear).await;
    assert_eq!(
        stale,
        0,
        "{stale} of {} fills released during a clear() over {FILLER_KEYS} keys survived it",
        trials(place) * FILLS
    );
}

// ---------------------------------------------------------------------------
// 2. No caller waits on another process's lease longer than that holder's
//    computation plus a few round trips
// ---------------------------------------------------------------------------

const FAILING_BODY: Duration = Duration::from_millis(200);

async fn failing(cache: &Cache, key: &str) -> Result<u64, String> {
    cache
        .try_get_or_set(key, TTL, || async {
            tokio::time::sleep(FAILING_BODY).await;
            Err::<u64, _>("the database is down".to_owned())
        })
        .await
}

/// 16 tasks of a child process call a key whose 200 ms body fails (so its
/// holder releases without storing, and the next caller of the child takes
/// the lease again at once); this process calls the same key 10 times.
/// Each of its calls may wait for one holder (200 ms) and then computes
/// its own (200 ms). Before issue 12 one such call took 7.2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_is_never_starved_by_another_process_retaking_the_lease() {
    let _w = watchdog(
        "a_waiter_is_never_starved_by_another_process_retaking_the_lease",
        90,
    );
    let server = RedisServer::start();
    let data = Raw::data(&server.url());
    let child = spawn_child("helper_failing_hammer", &server.url(), &[]);
    data.wait_for("starve:hammering", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cache = CacheConfig::redis(&server.url())
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let bound = FAILING_BODY * 2 + Duration::from_millis(250);
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        assert!(failing(&cache, "starve:k").await.is_err());
        let took = t.elapsed();
        assert!(
            took <= bound,
            "a call from another process took {took:?} (bound: one holder's {FAILING_BODY:?}, its own {FAILING_BODY:?}, and {:?} of round trips)",
            bound - FAILING_BODY * 2
        );
        times.push(took);
    }
    let () = data.cmd(&["SET", "starve:stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    times.sort();
    report("starved_call_median_ms", times[5].as_millis());
    report("starved_call_max_ms", times[9].as_millis());
    report("hammer_calls", reported(&out, "calls").unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process"]
async fn helper_failing_hammer() {
    let Some(url) = child_url() else { return };
    let cache = build(&url);
    let data = Raw::data(&url);
    let calls = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (cache, data, calls) = (cache.clone(), data.clone(), calls.clone());
            tokio::spawn(async move {
                while !data.exists("starve:stop") {
                    assert!(failing(&cache, "starve:k").await.is_err());
                    calls.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    let () = data.cmd(&["SET", "starve:hammering", "1"]);
    for t in tasks {
        t.await.unwrap();
    }
    println!("XP calls={}", calls.load(SeqCst));
}

/// After `invalidate_family`, a waiter does not wait for a holder whose
/// fill is already doomed: it computes in the new epoch at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_family_releases_the_waiters_of_a_doomed_fill() {
    let _w = watchdog(
        "invalidate_family_releases_the_waiters_of_a_doomed_fill",
        60,
    );
    let server = RedisServer::start();
    let (a, b) = (build(&server.url()), build(&server.url()));
    let key = "tg:fn:doomed:id=1";
    let holder = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_set(key, TTL, || async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "old".to_owned()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v = b
                .get_or_set(key, TTL, || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    "new".to_owned()
                })
                .await;
            (v, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.invalidate_family("tg:fn:doomed").await.unwrap();
    let (v, took) = waiter.await.unwrap();
    report("doomed_waiter_ms", took.as_millis());
    assert_eq!(v, "new");
    assert!(
        took < Duration::from_millis(1000),
        "the waiter took {took:?}: it waited for a fill invalidated 200 ms into its wait"
    );
    assert_eq!(holder.await.unwrap(), "old");
    let fresh = build(&server.url());
    assert_eq!(
        fresh.get::<String>(key).await.unwrap().as_deref(),
        Some("new")
    );
}

// ---------------------------------------------------------------------------
// 3. A computation of any length is stored; a hung one is taken over
// ---------------------------------------------------------------------------

/// Longer than the 60 s a holder renewed its lease for before issue 12.
const LONG_BODY: Duration = Duration::from_secs(65);

/// Cache A computes for 65 s; cache B asks for the same key a second in
/// and waits for it (its `max_wait` is longer); the value is stored, B
/// gets it, and the body ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_computation_longer_than_a_minute_is_stored() {
    let _w = watchdog("a_computation_longer_than_a_minute_is_stored", 150);
    let server = RedisServer::start();
    let a = build(&server.url());
    let b = CacheConfig::redis(&server.url())
        .max_wait(Duration::from_secs(120))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let body = |runs: Arc<AtomicUsize>, d: Duration, v: &'static str| async move {
        runs.fetch_add(1, SeqCst);
        tokio::time::sleep(d).await;
        v.to_owned()
    };
    let t = Instant::now();
    let holder = {
        let (a, runs) = (a.clone(), runs.clone());
        tokio::spawn(async move {
            a.get_or_set("long:report", TTL, || body(runs, LONG_BODY, "report"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waited = b
        .get_or_set("long:report", TTL, || {
            body(runs.clone(), Duration::ZERO, "b")
        })
        .await;
    assert_eq!(holder.await.unwrap(), "report");
    report("long_body_s", t.elapsed().as_secs());
    assert_eq!(waited, "report", "the waiter computed instead of waiting");
    assert_eq!(runs.load(SeqCst), 1, "the body ran more than once");
    let fresh = build(&server.url());
    assert_eq!(
        fresh.get::<String>("long:report").await.unwrap().as_deref(),
        Some("report"),
        "a computation of {LONG_BODY:?} was not stored"
    );
}

/// A holder whose body never finishes keeps its lease alive (it renews
/// while it computes), but a waiter computes after `max_wait`, as a
/// co-holder, and its value is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_holder_is_taken_over_after_max_wait() {
    let _w = watchdog("a_hung_holder_is_taken_over_after_max_wait", 60);
    let server = RedisServer::start();
    let a = build(&server.url());
    let b = CacheConfig::redis(&server.url())
        .max_wait(Duration::from_secs(1))
        .lease_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_set("hung:k", TTL, std::future::pending::<String>)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let v = b
        .get_or_set("hung:k", TTL, || async { "b".to_owned() })
        .await;
    let took = t.elapsed();
    report("hung_takeover_ms", took.as_millis());
    assert_eq!(v, "b");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "the waiter took over after {took:?} (max_wait 1 s)"
    );
    let fresh = build(&server.url());
    assert_eq!(
        fresh.get::<String>("hung:k").await.unwrap().as_deref(),
        Some("b")
    );
    hung.abort();
}

/// The same, in one process: a follower of a hung in-process leader waits
/// `max_wait`, then computes as a co-holder of the leader's lease, and its
/// value is stored (on every store).
async fn hung_in_process_leader(cache: Cache, reader: Cache) {
    let hung = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_set("hung:p", TTL, std::future::pending::<String>)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let v = cache
        .get_or_set("hung:p", TTL, || async { "follower".to_owned() })
        .await;
    let took = t.elapsed();
    assert_eq!(v, "follower");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "the follower computed after {took:?} (max_wait 1 s)"
    );
    assert_eq!(
        reader.get::<String>("hung:p").await.unwrap().as_deref(),
        Some("follower")
    );
    hung.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_in_process_leader_is_taken_over_on_redis() {
    let _w = watchdog("a_hung_in_process_leader_is_taken_over_on_redis", 60);
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url())
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    hung_in_process_leader(cache, build(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_in_process_leader_is_taken_over_on_the_local_store() {
    let _w = watchdog(
        "a_hung_in_process_leader_is_taken_over_on_the_local_store",
        60,
    );
    let cache = CacheConfig::local()
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    hung_in_process_leader(cache.clone(), cache).await;
}

// ---------------------------------------------------------------------------
// 4. Values over the cap are refused at write time, on every store
// ---------------------------------------------------------------------------

async fn over_the_cap(cache: &Cache, server: Option<&RedisServer>) {
    let big = "x".repeat(20_000);
    let before = cache.stats();
    cache.set("cap:k", &"small".to_owned(), TTL).await.unwrap();
    let e = cache.set("cap:k", &big, TTL).await.unwrap_err();
    assert!(
        matches!(
            e,
            tg_cache::Error::ValueTooLarge {
                bytes: 20_002,
                max: 4096,
                ..
            }
        ),
        "{e}"
    );
    // Never written, and the value it replaced is gone.
    assert_eq!(cache.get::<String>("cap:k").await.unwrap(), None);
    if let Some(server) = server {
        let exists: i64 = server.cmd(&["EXISTS", "cap:k"]);
        assert_eq!(exists, 0, "Redis holds the refused value");
    }
    // Computed once per flight, served uncached.
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |runs: Arc<AtomicUsize>, big: String| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_set("cap:f", TTL, || async move {
                    runs.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    big
                })
                .await
        }
    };
    let flight: Vec<_> = (0..8)
        .map(|_| tokio::spawn(call(runs.clone(), big.clone())))
        .collect();
    for f in flight {
        assert_eq!(f.await.unwrap().len(), 20_000);
    }
    assert_eq!(runs.load(SeqCst), 1, "one flight, one computation");
    assert_eq!(cache.get::<String>("cap:f").await.unwrap(), None);
    assert_eq!(call(runs.clone(), big.clone()).await.len(), 20_000);
    assert_eq!(runs.load(SeqCst), 2, "nothing was stored");
    let after = cache.stats();
    assert_eq!(after.too_large - before.too_large, 3, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_over_the_cap_are_refused_on_redis() {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url())
        .max_value_bytes(4096)
        .build()
        .unwrap();
    over_the_cap(&cache, Some(&server)).await;
    // JSON over the cap is refused even when it would compress under it.
    let packed = CacheConfig::redis(&server.url())
        .max_value_bytes(4096)
        .compress_min_bytes(Some(16))
        .build()
        .unwrap();
    let e = packed
        .set("cap:z", &"y".repeat(20_000), TTL)
        .await
        .unwrap_err();
    assert!(matches!(e, tg_cache::Error::ValueTooLarge { .. }), "{e}");
    let exists: i64 = server.cmd(&["EXISTS", "cap:z"]);
    assert_eq!(exists, 0);
}

/// Bytes Redis has sent to its clients so far.
fn sent_bytes(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_net_output_bytes in INFO stats")
}

/// A 16 MiB value of a family whose epoch moved on is a miss read from its
/// first megabyte: the rest never crosses the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_big_value_is_never_fetched_whole() {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url())
        .max_value_bytes(32 << 20)
        .build()
        .unwrap();
    let key = "tg:queryset:Scene:id=1";
    let big = "x".repeat(16 << 20);
    cache.set(key, &big, TTL).await.unwrap();
    let before = sent_bytes(&server);
    assert_eq!(
        cache.get::<String>(key).await.unwrap().map(|v| v.len()),
        Some(16 << 20)
    );
    let live = sent_bytes(&server) - before;
    assert!(live > 16 << 20, "a live read sent {live} bytes");
    // The family's epoch moves on (as an invalidation does before its
    // SCAN reaches the key): the value is dead where it stands.
    let _: () = server.cmd(&["SET", "#epoch:tg:queryset:Scene", "movedon"]);
    let before = sent_bytes(&server);
    assert_eq!(cache.get::<String>(key).await.unwrap(), None);
    let dead = sent_bytes(&server) - before;
    assert!(dead < 2 << 20, "a dead read sent {dead} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_over_the_cap_are_refused_on_the_local_store() {
    let cache = CacheConfig::local().max_value_bytes(4096).build().unwrap();
    over_the_cap(&cache, None).await;
}

// ---------------------------------------------------------------------------
// 5. A lost fill reply never hands the value to the flight's followers
// ---------------------------------------------------------------------------

/// The leader's fill is refused (a delete came first) and its reply is
/// lost on the way back (the proxy cuts the connection): a follower that
/// joined the flight after the delete must not get the leader's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_fill_reply_sends_the_followers_to_look_again() {
    let _w = watchdog("a_lost_fill_reply_sends_the_followers_to_look_again", 60);
    let server = RedisServer::start();
    let proxy = helpers::Proxy::start(server.port(), b"old-value-LOST-REPLY").await;
    let a = CacheConfig::redis(&proxy.url()).build().unwrap();
    let b = build(&server.url());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_set("lost:k", TTL, || async move {
                started_tx.send(()).unwrap();
                resume_rx.await.unwrap();
                "old-value-LOST-REPLY".to_owned()
            })
            .await
        })
    };
    started_rx.await.unwrap();
    // The data changes and the key is invalidated while the leader computes.
    b.delete("lost:k").await.unwrap();
    let follower = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_set("lost:k", TTL, || async { "fresh".to_owned() })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    resume_tx.send(()).unwrap();
    assert_eq!(leader.await.unwrap(), "old-value-LOST-REPLY");
    assert_eq!(proxy.cuts(), 1, "the fill's reply was not cut");
    let got = follower.await.unwrap();
    assert_eq!(
        got, "fresh",
        "a follower that joined after the delete got the leader's refused value"
    );
    // The follower's own fill may have met the reconnect (fail-open); the
    // refused value is never in Redis.
    let stored = b.get::<String>("lost:k").await.unwrap();
    assert_ne!(stored.as_deref(), Some("old-value-LOST-REPLY"));
}

// ---------------------------------------------------------------------------
// 6. Compressed reads do not serialise a process
// ---------------------------------------------------------------------------

/// While one task reads a big compressed value (tens of MiB inflated),
/// other compressed hits of the process go on: before issue 12 every
/// compressed hit waited on one process-wide lock held while inflating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_inflation_does_not_hold_up_other_compressed_hits() {
    let _w = watchdog("a_big_inflation_does_not_hold_up_other_compressed_hits", 60);
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url())
        .compress_min_bytes(Some(64))
        .response_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let big = "x".repeat(48 << 20);
    cache.set("zip:big", &big, TTL).await.unwrap();
    drop(big);
    let small: String = (0..2000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for i in 0..20 {
        cache
            .set(&format!("zip:small:{i}"), &small, TTL)
            .await
            .unwrap();
    }
    // The big read alone.
    let t = Instant::now();
    assert_eq!(
        cache.get::<String>("zip:big").await.unwrap().unwrap().len(),
        48 << 20
    );
    let big_read = t.elapsed();
    // The big read again, with small hits alongside.
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                assert!(cache.get::<String>("zip:big").await.unwrap().is_some());
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut slowest = Duration::ZERO;
    for round in 0..100 {
        let t = Instant::now();
        let v = cache
            .get::<String>(&format!("zip:small:{}", round % 20))
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(v.as_deref(), Some(small.as_str()));
    }
    reader.await.unwrap();
    report("big_compressed_read_ms", big_read.as_millis());
    report("slowest_small_compressed_hit_ms", slowest.as_millis());
    assert!(
        slowest < big_read / 2,
        "a small compressed hit took {slowest:?} while a big value ({big_read:?} to read) was inflated"
    );
}

// ---------------------------------------------------------------------------
// 7. A computation that outlives its family's values is stored; a refresh
//    keeps the value readable, and loses to any write that comes first
// ---------------------------------------------------------------------------

/// A key of a family that has no epoch yet, with a 1 s timeout, computed
/// for 2.5 s (lease timeout 300 ms): the epoch the lease made would expire
/// with the value's timeout, but the lease keeps it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_family_computation_longer_than_its_timeout_is_stored() {
    let _w = watchdog("a_family_computation_longer_than_its_timeout_is_stored", 60);
    let server = RedisServer::start();
    let a = CacheConfig::redis(&server.url())
        .lease_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let key = "tg:fn:slow_report:id=1";
    let v = a
        .get_or_set(key, Duration::from_secs(1), || async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            "report".to_owned()
        })
        .await;
    assert_eq!(v, "report");
    let fresh = build(&server.url());
    assert_eq!(
        fresh.get::<String>(key).await.unwrap().as_deref(),
        Some("report"),
        "a 2.5 s computation of a key with a 1 s timeout was refused"
    );
}

static REFRESH_DB: AtomicU64 = AtomicU64::new(0);
static REFRESH_FAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tg_cache::cache_function(key_prefix = "wl_refresh", cache = "refreshing")]
async fn refreshed(id: u64) -> Result<u64, String> {
    let v = REFRESH_DB.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    if REFRESH_FAIL.load(SeqCst) {
        return Err("the database is down".into());
    }
    Ok(id * 1000 + v)
}

/// While `refresh_async` recomputes a key, other caches keep reading the
/// current value; a failing refresh leaves it in place; a delete or a set
/// during a refresh wins over the refresh's (older) result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_keeps_the_value_readable_and_loses_to_writes() {
    let _w = watchdog("a_refresh_keeps_the_value_readable_and_loses_to_writes", 60);
    let server = RedisServer::start();
    tg_cache::configure(
        tg_cache::Caches::new(CacheConfig::local())
            .with("refreshing", CacheConfig::redis(&server.url())),
    )
    .unwrap();
    let other = build(&server.url());
    let key = refreshed_cache_key(&1);
    REFRESH_DB.store(1, SeqCst);
    assert_eq!(refreshed(1).await, Ok(1001));
    // Readable during a refresh, replaced after it.
    REFRESH_DB.store(2, SeqCst);
    let r = tokio::spawn(tg_cache::refresh_async(refreshed(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_eq!(other.get::<u64>(&key).await.unwrap(), Some(1001));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "the read waited for the refresh"
    );
    assert_eq!(r.await.unwrap(), Ok(1002));
    assert_eq!(other.get::<u64>(&key).await.unwrap(), Some(1002));
    // A failing refresh leaves the value.
    REFRESH_FAIL.store(true, SeqCst);
    assert!(tg_cache::refresh_async(refreshed(1)).await.is_err());
    assert_eq!(other.get::<u64>(&key).await.unwrap(), Some(1002));
    REFRESH_FAIL.store(false, SeqCst);
    // A set, and a delete, during a refresh win.
    for write in ["set", "delete", "pattern"] {
        REFRESH_DB.store(3, SeqCst);
        let r = tokio::spawn(tg_cache::refresh_async(refreshed(1)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        match write {
            "set" => other.set(&key, &7777u64, TTL).await.unwrap(),
            "delete" => assert!(other.delete(&key).await.unwrap()),
            _ => {
                other.delete_pattern("tg:fn:wl_refresh:*").await.unwrap();
            }
        }
        assert_eq!(r.await.unwrap(), Ok(1003));
        let now = other.get::<u64>(&key).await.unwrap();
        let want = if write == "set" { Some(7777) } else { None };
        assert_eq!(
            now, want,
            "a refresh overwrote a {write} that came during it"
        );
        other.set(&key, &1002u64, TTL).await.unwrap();
    }
    let left: Vec<String> = server.cmd(&["KEYS", "*#refresh*"]);
    assert!(left.is_empty(), "refresh leases left behind: {left:?}");
}
