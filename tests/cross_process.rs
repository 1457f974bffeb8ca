//! Cross-process guarantees of tg-cache on one real Redis.
//!
//! Every guarantee is checked with at least two independently built
//! [`Cache`]s (separate in-process flights: only the Redis-side guard
//! coordinates them), and where connections matter with two OS processes:
//! this test binary re-run as a child (`#[ignore]` helper tests selected by
//! `TG_XPROC_CHILD`, which return at once in a normal run). Each race is
//! tested deterministically (the body pauses until the other side acted) and
//! randomised (many short random interleavings, bounded time). Outcomes are
//! counted: body runs, stale reads, what the Redis key really holds.
//!
//! A stale read is a read that started after an invalidation completed and
//! returned a value computed before it; a `get_or_set` that joins an
//! in-process fill begun before the invalidation counts (see the
//! `late_joiner_*` tests). Every test has a 30 s watchdog that aborts the
//! binary, so a hung fill protocol fails the run instead of hanging it.
//!
//! Run: `cargo test --all-features --test cross_process`.

#[path = "cross_process/helpers.rs"]
#[macro_use]
mod helpers;

use helpers::{
    Backend, Raw, TTL, Where, build, child_url, finish, jitter, reported, spawn_child, two_caches,
    watchdog,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig, Caches, Error, cache_function};
use tokio::sync::{Barrier, Notify, oneshot};

on_all!(
    single_flight_across_two_caches,
    single_flight_across_two_caches_randomised,
    single_flight_across_two_processes,
    single_flight_across_two_processes_randomised,
    late_joiner_after_delete_gets_no_stale_value,
    late_joiner_after_invalidate_family_gets_no_stale_value,
    no_set_after_delete_across_processes,
    no_set_after_invalidate_family_across_processes,
    no_set_after_set_across_processes,
    no_set_after_clear_across_processes,
    guarded_store_keeps_a_value_set_by_another_cache,
    guarded_store_keeps_a_value_set_by_a_foreign_writer,
    guarded_store_never_overwrites_randomised,
    killed_holder_waiter_takes_over_within_the_lease_bound,
    killed_holder_waiter_takes_over_randomised,
    cancelled_holder_waiter_takes_over_at_once,
    panicking_holder_waiter_takes_over_at_once,
    cancelled_or_panicking_holder_randomised,
);

// ---------------------------------------------------------------------------
// 1. Single flight across caches and processes
// ---------------------------------------------------------------------------

async fn single_flight_across_two_caches(place: Where) {
    let _w = watchdog("single_flight_across_two_caches");
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (runs, barrier) = (runs.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache
                .get_or_set("xp:sf", TTL, || async move {
                    let n = runs.fetch_add(1, SeqCst) as u64 + 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    1000 + n
                })
                .await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    let runs = runs.load(SeqCst);
    let distinct: std::collections::BTreeSet<_> = values.iter().collect();
    assert_eq!(runs, 1, "body ran {runs} times for 32 callers on 2 caches");
    assert_eq!(
        distinct.len(),
        1,
        "callers got different values: {distinct:?}"
    );
}

async fn single_flight_across_two_caches_randomised(place: Where) {
    let _w = watchdog("single_flight_across_two_caches_randomised");
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    const KEYS: usize = 40;
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for i in 0..8 {
            let cache = if (i + k) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(jitter(30)).await;
                let v = cache
                    .get_or_set(&format!("xp:sfr:{k}"), TTL, || async move {
                        let n = runs[k].fetch_add(1, SeqCst) as u64;
                        tokio::time::sleep(Duration::from_millis(5) + jitter(25)).await;
                        (k as u64) * 1000 + n
                    })
                    .await;
                (k, v)
            }));
        }
    }
    let mut values: Vec<std::collections::BTreeSet<u64>> = vec![Default::default(); KEYS];
    for t in tasks {
        let (k, v) = t.await.unwrap();
        values[k].insert(v);
    }
    let extra_runs: usize = runs.iter().map(|r| r.load(SeqCst).saturating_sub(1)).sum();
    let split = values.iter().filter(|s| s.len() > 1).count();
    assert_eq!(
        (extra_runs, split),
        (0, 0),
        "{extra_runs} extra body runs over {KEYS} keys; {split} keys gave callers different values"
    );
}

/// Keys of the randomised two-process single flight.
const PROCESS_KEYS: u64 = 20;

/// Runs two child processes in `mode` ("fixed": 16 tasks on one key, body
/// 200 ms; "random": 4 tasks on each of PROCESS_KEYS keys, random starts and
/// body times) released together; returns, per key, the body runs (a Redis
/// INCR counter) and the distinct values the callers got, and their count.
async fn two_processes(place: Where, mode: &str) -> (Vec<(String, u64, BTreeSet<String>)>, usize) {
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let children: Vec<_> = (0..2)
        .map(|_| spawn_child("helper_single_flight", &server.url(), &[("XP_MODE", mode)]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while raw.get_u64("xp:ready").unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "children did not get ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: () = raw.cmd(&["SET", "xp:go", "1"]);
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut count = 0;
    for c in children {
        let (ok, out, err) =
            tokio::task::spawn_blocking(move || finish(c, Duration::from_secs(20)))
                .await
                .unwrap();
        assert!(ok, "child failed:\n{out}\n{err}");
        let v = reported(&out, "values").expect("child reported its values");
        for kv in v.split(',') {
            let (k, v) = kv.split_once('/').unwrap();
            values.entry(k.to_owned()).or_default().insert(v.to_owned());
            count += 1;
        }
    }
    let per_key = values
        .into_iter()
        .map(|(k, vs)| {
            let runs = raw.get_u64(&format!("xp:runs:{k}")).unwrap_or(0);
            (k, runs, vs)
        })
        .collect();
    (per_key, count)
}

async fn single_flight_across_two_processes(place: Where) {
    let _w = watchdog("single_flight_across_two_processes");
    let (per_key, count) = two_processes(place, "fixed").await;
    assert_eq!(count, 32);
    let (_, runs, values) = &per_key[0];
    assert_eq!(*runs, 1, "body ran {runs} times for 2 processes x 16 tasks");
    assert_eq!(values.len(), 1, "callers got different values: {values:?}");
}

async fn single_flight_across_two_processes_randomised(place: Where) {
    let _w = watchdog("single_flight_across_two_processes_randomised");
    let (per_key, count) = two_processes(place, "random").await;
    assert_eq!(
        (per_key.len(), count),
        (PROCESS_KEYS as usize, 8 * PROCESS_KEYS as usize)
    );
    let extra: u64 = per_key.iter().map(|(_, r, _)| r.saturating_sub(1)).sum();
    let split = per_key.iter().filter(|(_, _, v)| v.len() > 1).count();
    assert_eq!(
        (extra, split),
        (0, 0),
        "{extra} extra body runs over {PROCESS_KEYS} keys; {split} keys gave callers different values"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of single_flight_across_two_processes*"]
async fn helper_single_flight() {
    let Some(url) = child_url() else { return };
    let random = std::env::var("XP_MODE").as_deref() == Ok("random");
    let cache = build(&url);
    let raw = Raw::new(url);
    // Warm the pool up before the start signal.
    let _ = cache.get::<u64>("xp:warm").await;
    raw.incr("xp:ready");
    raw.wait_for("xp:go", Duration::from_secs(20)).await;
    let mut tasks = Vec::new();
    let calls: Vec<u64> = if random {
        (0..PROCESS_KEYS).flat_map(|k| [k; 4]).collect()
    } else {
        vec![0; 16]
    };
    for k in calls {
        let (cache, raw) = (cache.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            if random {
                tokio::time::sleep(jitter(30)).await;
            }
            let v = cache
                .get_or_set(&format!("xp:sf:{k}"), TTL, || async move {
                    let n = raw.incr(&format!("xp:runs:{k}"));
                    let pause = if random {
                        Duration::from_millis(5) + jitter(25)
                    } else {
                        Duration::from_millis(200)
                    };
                    tokio::time::sleep(pause).await;
                    format!("{}-{n}", std::process::id())
                })
                .await;
            format!("{k}/{v}")
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    println!("XP values={}", values.join(","));
}

// ---------------------------------------------------------------------------
// 2. No set-after-invalidate, for every invalidation kind
// ---------------------------------------------------------------------------

/// How cache B invalidates the key A is filling.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Delete,
    DeleteMany,
    /// `delete_pattern` with a `*`.
    PatternGlob,
    /// `delete_pattern` of the exact key (no glob character).
    PatternExact,
    Set,
    InvalidateFamily,
    Clear,
}

const PLAIN: &str = "xp:stale:k1";
const FAMILY: &str = "tg:fn:xp_stale:id=1";

/// The family of a `tg:` key: its first three `:` segments.
fn family(key: &str) -> String {
    key.split(':').take(3).collect::<Vec<_>>().join(":")
}

/// Invalidates `key` through `cache` (`Set` stores `new_value`).
async fn invalidate(cache: &Cache, kind: Kind, key: &str, new_value: u64) {
    match kind {
        Kind::Delete => {
            cache.delete(key).await.unwrap();
        }
        Kind::DeleteMany => {
            cache.delete_many(&[key, "xp:unrelated"]).await.unwrap();
        }
        Kind::PatternGlob => {
            cache
                .delete_pattern(&format!("{}*", &key[..key.len() - 1]))
                .await
                .unwrap();
        }
        Kind::PatternExact => {
            cache.delete_pattern(key).await.unwrap();
        }
        Kind::Set => cache.set(key, &new_value, TTL).await.unwrap(),
        Kind::InvalidateFamily => cache.invalidate_family(&family(key)).await.unwrap(),
        Kind::Clear => cache.clear().await.unwrap(),
    }
}

/// Deterministic: A's body reads db=1 and pauses; B writes db=2 and
/// invalidates; A resumes and returns 1. Returns the stale reads (1) among
/// reads through B, A and a fresh cache that started after the invalidation.
async fn stale_reads_after_paused_fill(place: Where, kind: Kind, key: &'static str) -> Vec<String> {
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let db = Arc::new(AtomicU64::new(1));
    let (read_tx, read_rx) = oneshot::channel();
    let resume = Arc::new(Notify::new());
    let fill = {
        let (a, db, resume) = (a.clone(), db.clone(), resume.clone());
        tokio::spawn(async move {
            a.get_or_set(key, TTL, || async move {
                let v = db.load(SeqCst);
                read_tx.send(()).unwrap();
                resume.notified().await;
                v
            })
            .await
        })
    };
    read_rx.await.unwrap();
    db.store(2, SeqCst);
    invalidate(&b, kind, key, 2).await;
    resume.notify_one();
    assert_eq!(
        fill.await.unwrap(),
        1,
        "the paused fill returns its own value"
    );
    let mut stale = Vec::new();
    let c = build(&server.url());
    for (name, cache) in [("B", &b), ("A", &a), ("fresh", &c)] {
        if cache.get::<u64>(key).await.unwrap() == Some(1) {
            stale.push(format!("{name}.get"));
        }
        let db = db.clone();
        if cache
            .get_or_set(key, TTL, || async move { db.load(SeqCst) })
            .await
            == 1
        {
            stale.push(format!("{name}.get_or_set"));
        }
    }
    stale
}

/// Randomised: for 600 ms, a writer bumps the db version and invalidates
/// (through A or B at random) while four readers on A and B `get_or_set` and
/// `get` with short random pauses in the body. A read is stale when it
/// returns a version older than the last invalidation completed before it
/// started (a `get_or_set` that joined an in-process fill begun before the
/// invalidation counts too). Returns (stale `get`s, stale `get_or_set`s,
/// reads, invalidations).
async fn stale_reads_randomised(
    place: Where,
    kind: Kind,
    key: &'static str,
) -> (usize, usize, usize, u64) {
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let db = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stale_get = Arc::new(AtomicUsize::new(0));
    let stale_gos = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_millis(600);
    let writer = {
        let (a, b, db, done) = (a.clone(), b.clone(), db.clone(), done.clone());
        tokio::spawn(async move {
            while Instant::now() < stop {
                tokio::time::sleep(jitter(3)).await;
                let v = db.fetch_add(1, SeqCst) + 1;
                let via = if rand::random::<bool>() { &a } else { &b };
                invalidate(via, kind, key, v).await;
                done.fetch_max(v, SeqCst);
            }
        })
    };
    let mut readers = Vec::new();
    for cache in [a.clone(), a.clone(), b.clone(), b.clone()] {
        let (db, done, reads) = (db.clone(), done.clone(), reads.clone());
        let (stale_get, stale_gos) = (stale_get.clone(), stale_gos.clone());
        readers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let floor = done.load(SeqCst);
                let by_get = rand::random_range(0..4) == 0;
                let got = if by_get {
                    cache.get::<u64>(key).await.unwrap()
                } else {
                    let db = db.clone();
                    Some(
                        cache
                            .get_or_set(key, TTL, || async move {
                                let v = db.load(SeqCst);
                                tokio::time::sleep(jitter(3)).await;
                                v
                            })
                            .await,
                    )
                };
                reads.fetch_add(1, SeqCst);
                if got.is_some_and(|v| v < floor) {
                    if by_get { &stale_get } else { &stale_gos }.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    // Zero stale reads of a cache that never hit would prove nothing.
    let hits = a.stats().hits + b.stats().hits;
    assert!(
        hits > 0,
        "no read hit in {} reads: nothing was cached",
        reads.load(SeqCst)
    );
    (
        stale_get.load(SeqCst),
        stale_gos.load(SeqCst),
        reads.load(SeqCst),
        db.load(SeqCst),
    )
}

macro_rules! stale_tests {
    ($($det:ident, $rnd:ident: $kind:expr, $key:expr;)*) => {$(
        async fn $det(place: Where) {
            let _w = watchdog(stringify!($det));
            let stale = stale_reads_after_paused_fill(place, $kind, $key).await;
            assert!(stale.is_empty(), "{:?} on {}: stale reads after the invalidation: {stale:?}", $kind, $key);
        }

        async fn $rnd(place: Where) {
            let _w = watchdog(stringify!($rnd));
            let (by_get, by_get_or_set, reads, invalidations) = stale_reads_randomised(place, $kind, $key).await;
            assert_eq!(
                (by_get, by_get_or_set), (0, 0),
                "{:?} on {}: stale reads of {reads}: {by_get} by get, {by_get_or_set} by get_or_set ({invalidations} invalidations)",
                $kind, $key
            );
        }

        on_all!($det, $rnd);
    )*};
}

stale_tests! {
    no_set_after_delete, no_set_after_delete_randomised: Kind::Delete, PLAIN;
    no_set_after_delete_family_key, no_set_after_delete_family_key_randomised: Kind::Delete, FAMILY;
    no_set_after_delete_many, no_set_after_delete_many_randomised: Kind::DeleteMany, PLAIN;
    no_set_after_delete_pattern_glob, no_set_after_delete_pattern_glob_randomised: Kind::PatternGlob, PLAIN;
    no_set_after_delete_pattern_glob_family_key, no_set_after_delete_pattern_glob_family_key_randomised: Kind::PatternGlob, FAMILY;
    no_set_after_delete_pattern_exact, no_set_after_delete_pattern_exact_randomised: Kind::PatternExact, PLAIN;
    no_set_after_set, no_set_after_set_randomised: Kind::Set, PLAIN;
    no_set_after_set_family_key, no_set_after_set_family_key_randomised: Kind::Set, FAMILY;
    no_set_after_invalidate_family, no_set_after_invalidate_family_randomised: Kind::InvalidateFamily, FAMILY;
    no_set_after_clear, no_set_after_clear_randomised: Kind::Clear, FAMILY;
}

/// The in-process join case: A's fill (body read db=1) is paused; B
/// invalidates; then a second caller on A starts `get_or_set` (after the
/// invalidation completed) while A's first fill still runs. It must not get
/// the first fill's value 1 (a value computed before the invalidation).
/// Returns (what the first and the late caller got, late caller's body runs).
async fn late_joiner_after_invalidation(
    place: Where,
    kind: Kind,
    key: &'static str,
) -> (u64, u64, usize) {
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let db = Arc::new(AtomicU64::new(1));
    let (read_tx, read_rx) = oneshot::channel();
    let resume = Arc::new(Notify::new());
    let first = {
        let (a, db, resume) = (a.clone(), db.clone(), resume.clone());
        tokio::spawn(async move {
            a.get_or_set(key, TTL, || async move {
                let v = db.load(SeqCst);
                read_tx.send(()).unwrap();
                resume.notified().await;
                v
            })
            .await
        })
    };
    read_rx.await.unwrap();
    db.store(2, SeqCst);
    invalidate(&b, kind, key, 2).await;
    let late_runs = Arc::new(AtomicUsize::new(0));
    let late = {
        let (a, db, late_runs) = (a.clone(), db.clone(), late_runs.clone());
        tokio::spawn(async move {
            a.get_or_set(key, TTL, || async move {
                late_runs.fetch_add(1, SeqCst);
                db.load(SeqCst)
            })
            .await
        })
    };
    // Let the late caller reach (and join) the running fill.
    tokio::time::sleep(Duration::from_millis(100)).await;
    resume.notify_one();
    let first = first.await.unwrap();
    let late = tokio::time::timeout(Duration::from_secs(10), late)
        .await
        .expect("the late caller hung")
        .unwrap();
    (first, late, late_runs.load(SeqCst))
}

async fn late_joiner_after_delete_gets_no_stale_value(place: Where) {
    let _w = watchdog("late_joiner_after_delete_gets_no_stale_value");
    let (first, late, runs) = late_joiner_after_invalidation(place, Kind::Delete, PLAIN).await;
    assert_eq!(first, 1);
    assert_eq!(
        late, 2,
        "a get_or_set started after delete() got the old value (its body ran {runs} times)"
    );
}

async fn late_joiner_after_invalidate_family_gets_no_stale_value(place: Where) {
    let _w = watchdog("late_joiner_after_invalidate_family_gets_no_stale_value");
    let (first, late, runs) =
        late_joiner_after_invalidation(place, Kind::InvalidateFamily, FAMILY).await;
    assert_eq!(first, 1);
    assert_eq!(
        late, 2,
        "a get_or_set started after invalidate_family() got the old value (its body ran {runs} times)"
    );
}

/// The same race with the filler in another OS process: the child's body
/// reads `xp:db`, sets `xp:read`, and waits for `xp:resume`.
async fn stale_reads_after_fill_in_other_process(
    place: Where,
    kind: Kind,
    key: &'static str,
) -> Vec<String> {
    let server = Backend::start(place);
    let raw = Raw::data(&server.url());
    let _: () = raw.cmd(&["SET", "xp:db", "1"]);
    let child = spawn_child("helper_paused_fill", &server.url(), &[("XP_KEY", key)]);
    raw.wait_for("xp:read", Duration::from_secs(20)).await;
    let _: () = raw.cmd(&["SET", "xp:db", "2"]);
    let b = build(&server.url());
    invalidate(&b, kind, key, 2).await;
    let _: () = raw.cmd(&["SET", "xp:resume", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    assert_eq!(reported(&out, "value").as_deref(), Some("1"), "{out}");
    let mut stale = Vec::new();
    let c = build(&server.url());
    for (name, cache) in [("B", &b), ("fresh", &c)] {
        if cache.get::<u64>(key).await.unwrap() == Some(1) {
            stale.push(format!("{name}.get"));
        }
        let raw = raw.clone();
        if cache
            .get_or_set(key, TTL, || async move { raw.get_u64("xp:db").unwrap() })
            .await
            == 1
        {
            stale.push(format!("{name}.get_or_set"));
        }
    }
    stale
}

async fn no_set_after_delete_across_processes(place: Where) {
    let _w = watchdog("no_set_after_delete_across_processes");
    let stale = stale_reads_after_fill_in_other_process(place, Kind::Delete, PLAIN).await;
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

async fn no_set_after_invalidate_family_across_processes(place: Where) {
    let _w = watchdog("no_set_after_invalidate_family_across_processes");
    let stale =
        stale_reads_after_fill_in_other_process(place, Kind::InvalidateFamily, FAMILY).await;
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process"]
async fn helper_paused_fill() {
    let Some(url) = child_url() else { return };
    let key = std::env::var("XP_KEY").unwrap();
    let cache = build(&url);
    let raw = Raw::data(&url);
    let v = cache
        .get_or_set(&key, TTL, || async move {
            let v = raw.get_u64("xp:db").unwrap();
            let _: () = raw.cmd(&["SET", "xp:read", "1"]);
            raw.wait_for("xp:resume", Duration::from_secs(20)).await;
            v
        })
        .await;
    println!("XP value={v}");
}

async fn no_set_after_set_across_processes(place: Where) {
    let _w = watchdog("no_set_after_set_across_processes");
    let stale = stale_reads_after_fill_in_other_process(place, Kind::Set, PLAIN).await;
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

async fn no_set_after_clear_across_processes(place: Where) {
    let _w = watchdog("no_set_after_clear_across_processes");
    let stale = stale_reads_after_fill_in_other_process(place, Kind::Clear, FAMILY).await;
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

/// Randomised across processes: for 800 ms the parent bumps `xp:db`,
/// invalidates and publishes the completed version in `xp:done`, while a
/// child process and the parent's own readers `get_or_set` (body: read
/// `xp:db`, random pause). Returns (stale in child, stale in parent, reads,
/// invalidations).
async fn stale_reads_across_processes_randomised(
    place: Where,
    kind: Kind,
    key: &'static str,
) -> (u64, usize, u64, u64) {
    let server = Backend::start(place);
    let raw = Raw::data(&server.url());
    let _: () = raw.cmd(&["SET", "xp:db", "0"]);
    let _: () = raw.cmd(&["SET", "xp:done", "0"]);
    let child = spawn_child("helper_stale_reader", &server.url(), &[("XP_KEY", key)]);
    raw.wait_for("xp:reading", Duration::from_secs(20)).await;
    let (a, b) = two_caches(&server.url());
    let stop = Instant::now() + Duration::from_millis(800);
    let stale = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for cache in [a.clone(), b.clone()] {
        let (raw, stale, reads) = (raw.clone(), stale.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let floor = raw.get_u64("xp:done").unwrap();
                let raw = raw.clone();
                let v = cache
                    .get_or_set(key, TTL, || async move {
                        let v = raw.get_u64("xp:db").unwrap();
                        tokio::time::sleep(jitter(3)).await;
                        v
                    })
                    .await;
                reads.fetch_add(1, SeqCst);
                if v < floor {
                    stale.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    let mut invalidations = 0;
    while Instant::now() < stop {
        tokio::time::sleep(jitter(3)).await;
        let v = raw.incr("xp:db");
        invalidate(if v.is_multiple_of(2) { &a } else { &b }, kind, key, v).await;
        let _: () = raw.cmd(&["SET", "xp:done", &v.to_string()]);
        invalidations = v;
    }
    for r in readers {
        r.await.unwrap();
    }
    let hits = a.stats().hits + b.stats().hits;
    assert!(
        hits > 0,
        "no read hit in {} reads: nothing was cached",
        reads.load(SeqCst)
    );
    let _: () = raw.cmd(&["SET", "xp:stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let child_stale: u64 = reported(&out, "stale").unwrap().parse().unwrap();
    let child_reads: u64 = reported(&out, "reads").unwrap().parse().unwrap();
    (
        child_stale,
        stale.load(SeqCst),
        child_reads + reads.load(SeqCst) as u64,
        invalidations,
    )
}

macro_rules! stale_process_tests {
    ($($name:ident: $kind:expr, $key:expr;)*) => {$(
        async fn $name(place: Where) {
            let _w = watchdog(stringify!($name));
            let (child, parent, reads, invalidations) = stale_reads_across_processes_randomised(place, $kind, $key).await;
            assert_eq!(
                (child, parent), (0, 0),
                "{:?} on {}: stale reads of {reads}: {child} in the child process, {parent} in the parent ({invalidations} invalidations)",
                $kind, $key
            );
        }

        on_all!($name);
    )*};
}

stale_process_tests! {
    no_set_after_delete_across_processes_randomised: Kind::Delete, PLAIN;
    no_set_after_set_across_processes_randomised: Kind::Set, PLAIN;
    no_set_after_invalidate_family_across_processes_randomised: Kind::InvalidateFamily, FAMILY;
    no_set_after_clear_across_processes_randomised: Kind::Clear, FAMILY;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process"]
async fn helper_stale_reader() {
    let Some(url) = child_url() else { return };
    let key = std::env::var("XP_KEY").unwrap();
    let cache = build(&url);
    let raw = Raw::data(&url);
    let _ = cache.get::<u64>("xp:warm").await;
    let _: () = raw.cmd(&["SET", "xp:reading", "1"]);
    let (mut stale, mut reads) = (0, 0);
    while !raw.exists("xp:stop") {
        let floor = raw.get_u64("xp:done").unwrap();
        let r = raw.clone();
        let v = cache
            .get_or_set(&key, TTL, || async move {
                let v = r.get_u64("xp:db").unwrap();
                tokio::time::sleep(jitter(3)).await;
                v
            })
            .await;
        reads += 1;
        if v < floor {
            stale += 1;
        }
    }
    println!("XP stale={stale}");
    println!("XP reads={reads}");
}

// ---------------------------------------------------------------------------
// 3. A guarded store never overwrites a value stored after the miss
// ---------------------------------------------------------------------------

const GUARD: &str = "xp:guard";

/// A misses and computes "old" (paused); B `set`s "X" (or a foreign writer
/// does a raw `SET`); A finishes. Returns the raw bytes and what A and B read.
async fn guarded_store(
    place: Where,
    foreign: bool,
) -> (Option<Vec<u8>>, Option<String>, Option<String>) {
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let (a, b) = two_caches(&server.url());
    let (started_tx, started_rx) = oneshot::channel();
    let resume = Arc::new(Notify::new());
    let fill = {
        let (a, resume) = (a.clone(), resume.clone());
        tokio::spawn(async move {
            a.get_or_set(GUARD, TTL, || async move {
                started_tx.send(()).unwrap();
                resume.notified().await;
                "old".to_string()
            })
            .await
        })
    };
    started_rx.await.unwrap();
    if foreign {
        raw.set_bytes(&server.stored(GUARD), br#""X""#);
    } else {
        b.set(GUARD, &"X".to_string(), TTL).await.unwrap();
    }
    resume.notify_one();
    assert_eq!(fill.await.unwrap(), "old");
    (
        raw.get_bytes(&server.stored(GUARD)),
        a.get::<String>(GUARD).await.unwrap(),
        b.get::<String>(GUARD).await.unwrap(),
    )
}

async fn guarded_store_keeps_a_value_set_by_another_cache(place: Where) {
    let _w = watchdog("guarded_store_keeps_a_value_set_by_another_cache");
    let (raw, a, b) = guarded_store(place, false).await;
    let raw = raw.map(|r| String::from_utf8_lossy(&r).into_owned());
    assert_eq!(
        (raw.as_deref(), a.as_deref(), b.as_deref()),
        (Some(r#""X""#), Some("X"), Some("X"))
    );
}

async fn guarded_store_keeps_a_value_set_by_a_foreign_writer(place: Where) {
    let _w = watchdog("guarded_store_keeps_a_value_set_by_a_foreign_writer");
    let (raw, a, b) = guarded_store(place, true).await;
    let raw = raw.map(|r| String::from_utf8_lossy(&r).into_owned());
    assert_eq!(
        (raw.as_deref(), a.as_deref(), b.as_deref()),
        (Some(r#""X""#), Some("X"), Some("X"))
    );
}

async fn guarded_store_never_overwrites_randomised(place: Where) {
    let _w = watchdog("guarded_store_never_overwrites_randomised");
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let (a, b) = two_caches(&server.url());
    let mut tasks = Vec::new();
    const N: usize = 60;
    for i in 0..N {
        let (a, b, raw) = (a.clone(), b.clone(), raw.clone());
        let stored = server.stored(&format!("xp:guard:{i}"));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(jitter(100)).await;
            let key = format!("xp:guard:{i}");
            let started = Arc::new(Notify::new());
            let fill = {
                let (a, key, started) = (a.clone(), key.clone(), started.clone());
                tokio::spawn(async move {
                    a.get_or_set(&key, TTL, || async move {
                        started.notify_one();
                        tokio::time::sleep(jitter(4)).await;
                        "old".to_string()
                    })
                    .await
                })
            };
            started.notified().await;
            tokio::time::sleep(jitter(6)).await;
            if i % 2 == 0 {
                raw.set_bytes(&stored, br#""X""#);
            } else {
                b.set(&key, &"X".to_string(), TTL).await.unwrap();
            }
            fill.await.unwrap();
            raw.get_bytes(&stored).as_deref() != Some(&br#""X""#[..])
        }));
    }
    let mut overwritten = 0;
    for t in tasks {
        overwritten += usize::from(t.await.unwrap());
    }
    assert_eq!(
        overwritten, 0,
        "{overwritten} of {N} values stored after the miss were overwritten by the fill"
    );
}

// ---------------------------------------------------------------------------
// 4. The lease holder dies (SIGKILL)
// ---------------------------------------------------------------------------

/// Upper bound for a waiter to take over from a killed holder.
const LEASE_BOUND: Duration = Duration::from_secs(10);

/// Holds the fill of each key in `XP_KEYS` (comma-separated) with a body
/// that never finishes, after counting it in `xp:child_runs` and setting
/// `xp:holding:<key>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process"]
async fn helper_hold_forever() {
    let Some(url) = child_url() else { return };
    let cache = build(&url);
    let raw = Raw::new(url);
    let mut tasks = Vec::new();
    for key in std::env::var("XP_KEYS").unwrap().split(',') {
        let (cache, raw, key) = (cache.clone(), raw.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_set(&key, TTL, || async {
                    raw.incr("xp:child_runs");
                    let _: () = raw.cmd(&["SET", &format!("xp:holding:{key}"), "1"]);
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    0u64
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

struct Waiter {
    task: tokio::task::JoinHandle<u64>,
    runs: Arc<AtomicUsize>,
    body_started: Arc<Mutex<Option<Instant>>>,
}

fn start_waiter(cache: &Cache, key: &str, value: u64) -> Waiter {
    let runs = Arc::new(AtomicUsize::new(0));
    let body_started = Arc::new(Mutex::new(None));
    let task = {
        let (cache, key, runs, started) = (
            cache.clone(),
            key.to_owned(),
            runs.clone(),
            body_started.clone(),
        );
        tokio::spawn(async move {
            cache
                .get_or_set(&key, TTL, || async move {
                    *started.lock().unwrap() = Some(Instant::now());
                    runs.fetch_add(1, SeqCst);
                    value
                })
                .await
        })
    };
    Waiter {
        task,
        runs,
        body_started,
    }
}

async fn killed_holder_waiter_takes_over_within_the_lease_bound(place: Where) {
    let _w = watchdog("killed_holder_waiter_takes_over_within_the_lease_bound");
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let key = "xp:hold";
    let mut child = spawn_child("helper_hold_forever", &server.url(), &[("XP_KEYS", key)]);
    raw.wait_for("xp:holding:xp:hold", Duration::from_secs(20))
        .await;
    let leases = raw.scan("*#lease*");
    let a = build(&server.url());
    let waiter = start_waiter(&a, key, 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let v = tokio::time::timeout(LEASE_BOUND + Duration::from_secs(5), waiter.task)
        .await
        .expect("the waiter never got a value")
        .unwrap();
    let took = killed_at.elapsed();
    let body_started = waiter
        .body_started
        .lock()
        .unwrap()
        .expect("the parent body ran");
    eprintln!(
        "killed holder: waiter got its value {took:?} after the kill; body started {}; leases while held: {leases:?}",
        if body_started >= killed_at {
            "after the kill"
        } else {
            "BEFORE the kill"
        }
    );
    assert_eq!(v, 7);
    assert_eq!(
        waiter.runs.load(SeqCst),
        1,
        "the body ran once in the parent"
    );
    assert_eq!(raw.get_u64("xp:child_runs"), Some(1));
    assert!(took < LEASE_BOUND, "waiter took {took:?} after the kill");
    assert!(
        body_started >= killed_at,
        "the parent computed while the child still held the fill (single flight broken)"
    );
    assert_eq!(
        raw.get_bytes(&server.stored(key)).as_deref(),
        Some(&b"7"[..]),
        "the key holds the parent's value"
    );
    assert_eq!(
        raw.scan("*#lease*"),
        Vec::<String>::new(),
        "no lease left behind"
    );
}

async fn killed_holder_waiter_takes_over_randomised(place: Where) {
    let _w = watchdog("killed_holder_waiter_takes_over_randomised");
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    const N: usize = 6;
    let keys: Vec<String> = (0..N).map(|i| format!("xp:holdr:{i}")).collect();
    let mut child = spawn_child(
        "helper_hold_forever",
        &server.url(),
        &[("XP_KEYS", &keys.join(","))],
    );
    for k in &keys {
        raw.wait_for(&format!("xp:holding:{k}"), Duration::from_secs(20))
            .await;
    }
    let (a, b) = two_caches(&server.url());
    // Waiters start at random times before and after the kill.
    let kill_after = Duration::from_millis(50) + jitter(100);
    let start = Instant::now();
    let mut waiters = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let delay = jitter(250);
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        waiters.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let w = start_waiter(&cache, &k, i as u64 + 100);
            let v = w.task.await.unwrap();
            (
                v,
                w.runs.load(SeqCst),
                w.body_started.lock().unwrap().unwrap(),
                Instant::now(),
            )
        }));
    }
    tokio::time::sleep_until((start + kill_after).into()).await;
    let killed_at = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut worst = Duration::ZERO;
    let mut early = 0;
    for (i, w) in waiters.into_iter().enumerate() {
        let (v, runs, body_started, done) =
            tokio::time::timeout(LEASE_BOUND + Duration::from_secs(5), w)
                .await
                .expect("a waiter never got a value")
                .unwrap();
        assert_eq!((v, runs), (i as u64 + 100, 1));
        early += usize::from(body_started < killed_at);
        worst = worst.max(done.saturating_duration_since(killed_at));
    }
    eprintln!(
        "killed holder (randomised, {N} keys): slowest takeover {worst:?} after the kill; {early} bodies ran before the kill"
    );
    assert!(worst < LEASE_BOUND, "slowest waiter took {worst:?}");
    assert_eq!(
        early, 0,
        "{early} of {N} waiters computed while the child held the fill"
    );
    assert_eq!(raw.get_u64("xp:child_runs"), Some(N as u64));
}

// ---------------------------------------------------------------------------
// 5. Cancelled or panicking holder: a waiter takes over at once
// ---------------------------------------------------------------------------

/// What happens to A's fill once B waits on it.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The future is dropped by `tokio::time::timeout`.
    Cancel,
    /// The body panics (in a spawned task).
    Panic,
}

/// A's body starts (and holds the fill) for `hold`, then is cancelled or
/// panics; B starts waiting at `hold / 3`. Returns B's takeover time after
/// the end of A's fill (for a cancel: its deadline, the drop comes at or
/// after it; for a panic: the instant before `panic!`), B's body runs, and
/// whether B's body started before that end (single flight broken).
async fn takeover(
    a: &Cache,
    b: &Cache,
    key: &str,
    ending: Ending,
    hold: Duration,
) -> (Duration, usize, bool) {
    let (started_tx, started_rx) = oneshot::channel();
    let end = Arc::new(Mutex::new(None));
    let holder = {
        let (a, key, end) = (a.clone(), key.to_owned(), end.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + hold;
            let panic_end = end.clone();
            let fill = a.get_or_set(&key, TTL, || async move {
                started_tx.send(()).unwrap();
                match ending {
                    Ending::Cancel => tokio::time::sleep(Duration::from_secs(120)).await,
                    Ending::Panic => {
                        tokio::time::sleep_until(deadline.into()).await;
                        *panic_end.lock().unwrap() = Some(Instant::now());
                        panic!("the holder's body panics (expected)")
                    }
                }
                1u64
            });
            if let Ending::Cancel = ending {
                *end.lock().unwrap() = Some(deadline);
                let _ = tokio::time::timeout_at(deadline.into(), fill).await;
            } else {
                fill.await;
            }
        })
    };
    started_rx.await.unwrap();
    tokio::time::sleep(hold / 3).await;
    let waiter = start_waiter(b, key, 2);
    if let Err(e) = holder.await {
        assert!(e.is_panic());
    }
    let v = tokio::time::timeout(Duration::from_secs(15), waiter.task)
        .await
        .expect("the waiter never got a value")
        .unwrap();
    let done = Instant::now();
    assert_eq!(v, 2);
    let end = end.lock().unwrap().expect("the holder ended");
    let body_started = waiter.body_started.lock().unwrap().unwrap();
    (
        done.saturating_duration_since(end),
        waiter.runs.load(SeqCst),
        body_started < end,
    )
}

async fn takeover_test(place: Where, ending: Ending) {
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let (took, runs, early) =
        takeover(&a, &b, "xp:takeover", ending, Duration::from_millis(400)).await;
    eprintln!(
        "{ending:?} holder: waiter took over {took:?} after the end; computed early: {early}"
    );
    assert_eq!(runs, 1);
    assert!(
        took < Duration::from_secs(1),
        "{ending:?}: waiter took {took:?} after the holder ended"
    );
    assert!(
        !early,
        "{ending:?}: the waiter computed while the holder was alive (single flight broken)"
    );
}

async fn cancelled_holder_waiter_takes_over_at_once(place: Where) {
    let _w = watchdog("cancelled_holder_waiter_takes_over_at_once");
    takeover_test(place, Ending::Cancel).await;
}

async fn panicking_holder_waiter_takes_over_at_once(place: Where) {
    let _w = watchdog("panicking_holder_waiter_takes_over_at_once");
    takeover_test(place, Ending::Panic).await;
}

async fn cancelled_or_panicking_holder_randomised(place: Where) {
    let _w = watchdog("cancelled_or_panicking_holder_randomised");
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    let start = Instant::now();
    let (mut slow, mut early, mut worst) = (0, 0, Duration::ZERO);
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) && i < 30 && slow < 3 {
        let ending = if rand::random::<bool>() {
            Ending::Cancel
        } else {
            Ending::Panic
        };
        let (x, y) = if rand::random::<bool>() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let hold = Duration::from_millis(30) + jitter(60);
        let (took, runs, e) = takeover(x, y, &format!("xp:takeover:{i}"), ending, hold).await;
        assert_eq!(runs, 1);
        slow += usize::from(took >= Duration::from_secs(1));
        early += usize::from(e);
        worst = worst.max(took);
        i += 1;
    }
    eprintln!(
        "takeover randomised: {i} rounds, {slow} slow (>= 1 s), {early} early, worst {worst:?}"
    );
    assert_eq!(
        (slow, early),
        (0, 0),
        "{slow} slow takeovers, {early} early computations in {i} rounds (worst {worst:?})"
    );
}

// ---------------------------------------------------------------------------
// 6. Unstored results (Err, None) go to the waiters
// ---------------------------------------------------------------------------

static REGISTRY_SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(Caches::new(CacheConfig::redis(&server.url()))).unwrap();
    server
});

static FAIL_RUNS: AtomicUsize = AtomicUsize::new(0);
static NONE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "xp_fail")]
async fn xp_fail(id: u32) -> Result<u32, String> {
    FAIL_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Err(format!("failed {id}"))
}

#[cache_function(key_prefix = "xp_none")]
async fn xp_none(id: u32) -> Option<u32> {
    NONE_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    None
}

/// 64 callers at once (plus `jitter_ms` each); returns (runs, wrong results, time).
async fn unstored_round<F, Fut, R>(
    call: F,
    expected: R,
    runs: &AtomicUsize,
    jitter_ms: u64,
) -> (usize, usize, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
    R: PartialEq + Send + 'static,
{
    LazyLock::force(&REGISTRY_SERVER);
    let before = runs.load(SeqCst);
    let barrier = Arc::new(Barrier::new(64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (call, barrier) = (call.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            if jitter_ms > 0 {
                tokio::time::sleep(jitter(jitter_ms)).await;
            }
            call().await
        }));
    }
    let mut wrong = 0;
    for t in tasks {
        wrong += usize::from(t.await.unwrap() != expected);
    }
    (runs.load(SeqCst) - before, wrong, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unstored_err_goes_to_all_waiters() {
    let _w = watchdog("unstored_err_goes_to_all_waiters");
    let (runs, wrong, took) =
        unstored_round(|| xp_fail(1), Err("failed 1".to_string()), &FAIL_RUNS, 0).await;
    assert_eq!(
        (runs, wrong),
        (1, 0),
        "64 callers: body ran {runs} times; {wrong} wrong results; {took:?}"
    );
    assert!(took < Duration::from_secs(1), "64 callers took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unstored_none_goes_to_all_waiters() {
    let _w = watchdog("unstored_none_goes_to_all_waiters");
    let (runs, wrong, took) = unstored_round(|| xp_none(1), None, &NONE_RUNS, 0).await;
    assert_eq!(
        (runs, wrong),
        (1, 0),
        "64 callers: body ran {runs} times; {wrong} wrong results; {took:?}"
    );
    assert!(took < Duration::from_secs(1), "64 callers took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unstored_results_go_to_waiters_randomised() {
    let _w = watchdog("unstored_results_go_to_waiters_randomised");
    // Callers start within 20 ms of each other: all arrive during the 50 ms body.
    let (mut extra, mut wrong_total, mut worst) = (0, 0, Duration::ZERO);
    for round in 0..6u32 {
        let id = 100 + round;
        let (runs, wrong, took) = if round % 2 == 0 {
            unstored_round(
                move || xp_fail(id),
                Err(format!("failed {id}")),
                &FAIL_RUNS,
                20,
            )
            .await
        } else {
            unstored_round(move || xp_none(id), None, &NONE_RUNS, 20).await
        };
        extra += runs - 1;
        wrong_total += wrong;
        worst = worst.max(took);
        if worst > Duration::from_secs(2) {
            break;
        }
    }
    assert_eq!(
        (extra, wrong_total),
        (0, 0),
        "{extra} extra body runs, {wrong_total} wrong results; slowest round {worst:?}"
    );
    assert!(worst < Duration::from_secs(1), "slowest round {worst:?}");
}

// ---------------------------------------------------------------------------
// 7. Generations never go backwards
// ---------------------------------------------------------------------------

on_both!(
    deleted_epoch_never_resurrects_old_values,
    clear_never_resurrects_old_values,
    clear_then_restored_old_bytes_stay_dead,
    junk_epoch_never_resurrects_nor_disables_caching,
    large_junk_epoch_never_resurrects_nor_disables_caching,
    reserved_keys_are_refused,
    old_generation_key_no_longer_affects_the_family,
    a_live_holder_keeps_its_lease_past_the_lease_timeout,
    guarded_store_keeps_a_foreign_write_to_a_family_key,
);

const GEN_FAMILY: &str = "tg:fn:xp_gen";
const GEN_KEY: &str = "tg:fn:xp_gen:id=1";

/// The keys holding a family's epoch/generation: the new design's
/// `#epoch:` keys and the `tg:gen:` keys of tg-cache before issue 8.
fn epoch_keys(raw: &Raw) -> Vec<String> {
    let mut keys = raw.scan("*#epoch*");
    keys.extend(raw.scan("tg:gen:*"));
    keys
}

/// Stores v1 at GEN_KEY, hides it with `invalidate_family`, then runs
/// `tamper`; returns which reads (through A, B and a fresh cache) gave v1.
async fn v1_reads_after(
    place: Where,
    tamper: impl AsyncFnOnce(&Raw, &Cache),
) -> (Vec<String>, Backend) {
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let (a, b) = two_caches(&server.url());
    let v1 = a.get_or_set(GEN_KEY, TTL, || async { 1u64 }).await;
    assert_eq!(v1, 1);
    assert_eq!(b.get::<u64>(GEN_KEY).await.unwrap(), Some(1));
    b.invalidate_family(GEN_FAMILY).await.unwrap();
    assert_eq!(
        a.get::<u64>(GEN_KEY).await.unwrap(),
        None,
        "invalidate_family hides v1"
    );
    tamper(&raw, &b).await;
    let c = build(&server.url());
    let mut seen = Vec::new();
    for (name, cache) in [("A", &a), ("B", &b), ("fresh", &c)] {
        if cache.get::<u64>(GEN_KEY).await.unwrap() == Some(1) {
            seen.push(format!("{name}.get"));
        }
        if cache.get_or_set(GEN_KEY, TTL, || async { 2u64 }).await == 1 {
            seen.push(format!("{name}.get_or_set"));
        }
    }
    (seen, server)
}

async fn deleted_epoch_never_resurrects_old_values(place: Where) {
    let _w = watchdog("deleted_epoch_never_resurrects_old_values");
    let (seen, _server) = v1_reads_after(place, async |raw: &Raw, _: &Cache| {
        // One on a server, one per slot on a cluster.
        let deleted = epoch_keys(raw);
        assert!(
            !deleted.is_empty(),
            "no epoch key to delete: the test would prove nothing"
        );
        for k in &deleted {
            let _: i64 = raw.cmd(&["DEL", k]);
        }
        eprintln!(
            "deleted {} epoch keys: {:?}...",
            deleted.len(),
            deleted.first()
        );
    })
    .await;
    assert!(
        seen.is_empty(),
        "v1 read again after the epoch key was deleted: {seen:?}"
    );
}

async fn clear_never_resurrects_old_values(place: Where) {
    let _w = watchdog("clear_never_resurrects_old_values");
    let (seen, _server) =
        v1_reads_after(place, async |_: &Raw, b: &Cache| b.clear().await.unwrap()).await;
    assert!(seen.is_empty(), "v1 read again after clear(): {seen:?}");
}

async fn clear_then_restored_old_bytes_stay_dead(place: Where) {
    let _w = watchdog("clear_then_restored_old_bytes_stay_dead");
    // v1's bytes are put back after clear() (as a fill racing the clear, or
    // a key the clear did not reach, would leave them): they must stay dead.
    let (seen, _server) = v1_reads_after(place, async |raw: &Raw, b: &Cache| {
        let dump: Option<Vec<u8>> = raw.cmd(&["DUMP", GEN_KEY]);
        b.clear().await.unwrap();
        let dump = dump.expect("v1 is still in Redis after invalidate_family");
        let () = raw
            .with(|con| {
                redis::cmd("RESTORE")
                    .arg(GEN_KEY)
                    .arg(0)
                    .arg(dump)
                    .arg("REPLACE")
                    .query(con)
            })
            .unwrap();
    })
    .await;
    assert!(
        seen.is_empty(),
        "v1 read again after clear() (its bytes restored): {seen:?}"
    );
}

async fn junk_epoch(place: Where, junk: Vec<u8>) {
    let junk2 = junk.clone();
    let (seen, server) = v1_reads_after(place, async move |raw: &Raw, _: &Cache| {
        let keys = epoch_keys(raw);
        assert!(!keys.is_empty(), "invalidate_family left no epoch key");
        for k in keys {
            raw.set_bytes(&k, &junk2);
        }
    })
    .await;
    assert!(
        seen.is_empty(),
        "v1 read again after the epoch key became junk: {seen:?}"
    );
    // Caching still works in the family.
    let (a, b) = two_caches(&server.url());
    let runs = AtomicUsize::new(0);
    for cache in [&a, &b, &a] {
        let v = cache
            .get_or_set("tg:fn:xp_gen:id=2", TTL, || async {
                runs.fetch_add(1, SeqCst);
                5u64
            })
            .await;
        assert_eq!(v, 5);
    }
    let runs = runs.load(SeqCst);
    assert_eq!(
        runs,
        1,
        "with a junk epoch ({} bytes) the body ran {runs} times for 3 calls: caching disabled",
        junk.len()
    );
}

async fn junk_epoch_never_resurrects_nor_disables_caching(place: Where) {
    let _w = watchdog("junk_epoch_never_resurrects_nor_disables_caching");
    junk_epoch(place, b"junk".to_vec()).await;
}

async fn large_junk_epoch_never_resurrects_nor_disables_caching(place: Where) {
    let _w = watchdog("large_junk_epoch_never_resurrects_nor_disables_caching");
    junk_epoch(place, vec![b'z'; 10 * 1024]).await;
}

// ---------------------------------------------------------------------------
// 8. Reserved keys
// ---------------------------------------------------------------------------

async fn reserved_keys_are_refused(place: Where) {
    let _w = watchdog("reserved_keys_are_refused");
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let cache = build(&server.url());
    let set = cache.set("a:#lease", &1u64, TTL).await;
    let get = cache.get::<u64>("#epoch:tg:fn:x").await;
    let del = cache.delete("tg:fn:x:1:#lease").await;
    let mut accepted = Vec::new();
    if !matches!(set, Err(Error::InvalidKey { .. })) {
        accepted.push(format!("set(a:#lease) = {set:?}"));
    }
    if !matches!(get, Err(Error::InvalidKey { .. })) {
        accepted.push(format!("get(#epoch:tg:fn:x) = {get:?}"));
    }
    if !matches!(del, Err(Error::InvalidKey { .. })) {
        accepted.push(format!("delete(tg:fn:x:1:#lease) = {del:?}"));
    }
    assert!(accepted.is_empty(), "reserved keys accepted: {accepted:?}");
    assert!(!raw.exists("a:#lease"), "set wrote a reserved key");
}

async fn old_generation_key_no_longer_affects_the_family(place: Where) {
    let _w = watchdog("old_generation_key_no_longer_affects_the_family");
    let server = Backend::start(place);
    let (a, b) = two_caches(&server.url());
    assert_eq!(
        a.get_or_set("tg:fn:x:id=1", TTL, || async { 1u64 }).await,
        1
    );
    // A manual write to the old (pre-issue-8) generation key must not hide the value...
    b.set("tg:gen:fn:x", &7u64, TTL).await.unwrap();
    let after_set = a.get::<u64>("tg:fn:x:id=1").await.unwrap();
    // ...nor, after a real invalidation, bring it back.
    b.invalidate_family("tg:fn:x").await.unwrap();
    b.set("tg:gen:fn:x", &0u64, TTL).await.unwrap();
    let after_reset = a.get::<u64>("tg:fn:x:id=1").await.unwrap();
    assert_eq!(
        (after_set, after_reset),
        (Some(1), None),
        "set(tg:gen:fn:x, 7) then get = {after_set:?} (want Some(1)); invalidate + set(tg:gen:fn:x, 0) then get = {after_reset:?} (want None)"
    );
}

// ---------------------------------------------------------------------------
// 9. Lease renewal, and foreign writes to family keys
// ---------------------------------------------------------------------------

/// A holder whose body runs five lease timeouts long keeps its lease by
/// renewing it: a waiter on another cache never takes over, the body runs
/// once, and both get its value.
async fn a_live_holder_keeps_its_lease_past_the_lease_timeout(place: Where) {
    let _w = watchdog("a_live_holder_keeps_its_lease_past_the_lease_timeout");
    let server = Backend::start(place);
    let short = |_| {
        helpers::config(&server.url())
            .lease_timeout(Duration::from_millis(300))
            .build()
            .unwrap()
    };
    let (a, b) = (short(0), short(1));
    let runs = Arc::new(AtomicUsize::new(0));
    let body = |runs: Arc<AtomicUsize>| async move {
        let n = runs.fetch_add(1, SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        100 + n
    };
    let holder = {
        let (a, runs) = (a.clone(), runs.clone());
        tokio::spawn(async move { a.get_or_set("xp:renew", TTL, || body(runs)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = b.get_or_set("xp:renew", TTL, || body(runs.clone())).await;
    assert_eq!((holder.await.unwrap(), waiter), (100, 100));
    assert_eq!(
        runs.load(SeqCst),
        1,
        "the waiter took over a live holder's lease"
    );
}

/// A foreign writer (Django, `redis-cli`) sets a *family* key while a fill
/// of it runs: the fill does not overwrite it, even though tg-cache itself
/// never reads a value without its family's epoch header.
async fn guarded_store_keeps_a_foreign_write_to_a_family_key(place: Where) {
    let _w = watchdog("guarded_store_keeps_a_foreign_write_to_a_family_key");
    let server = Backend::start(place);
    let raw = Raw::new(server.url());
    let (a, _b) = two_caches(&server.url());
    let key = "tg:fn:xp_guard:id=1";
    let (started_tx, started_rx) = oneshot::channel();
    let resume = Arc::new(Notify::new());
    let fill = {
        let (a, resume) = (a.clone(), resume.clone());
        tokio::spawn(async move {
            a.get_or_set(key, TTL, || async move {
                started_tx.send(()).unwrap();
                resume.notified().await;
                "old".to_string()
            })
            .await
        })
    };
    started_rx.await.unwrap();
    raw.set_bytes(key, br#""django""#);
    resume.notify_one();
    assert_eq!(fill.await.unwrap(), "old");
    assert_eq!(raw.get_bytes(key).as_deref(), Some(&br#""django""#[..]));
}

// ---------------------------------------------------------------------------
// A family hit never serves a value its family's invalidation killed
// ---------------------------------------------------------------------------

/// The family whose epoch readers learn and keep per connection.
const EPOCH_FAMILY: &str = "tg:fn:xp_epoch";
const EPOCH_KEYS: u64 = 8;

fn epoch_key(i: u64) -> String {
    format!("{EPOCH_FAMILY}:id={i}")
}

/// 8 tasks `get` the family's keys as fast as they can. Before each read a
/// task reads the floor `xp:dead` (raw, set after an `invalidate_family`
/// returned): a hit at or below it is a value that invalidation killed,
/// served by a read that started after it. Returns (stale, reads, hits).
///
/// The floor read is a blocking call on a worker thread that also drives
/// the cache's connection, so it delays the handling of pushes: that
/// widens the window in which a read's known epoch is invalidated while
/// the read is in flight (the test asserts that this race was hit).
/// Reads the family's keys from 8 tasks until `until`; returns (stale
/// reads, reads, hits). Every 100 hits are added to the Redis counter
/// `hits_key`, so that the writer can run until every reader has raced.
async fn read_family(
    cache: &Cache,
    raw: &Raw,
    hits_key: &'static str,
    until: impl Fn() -> bool + Clone + Send + 'static,
) -> (u64, u64, u64) {
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (cache, raw, counts, until) =
            (cache.clone(), raw.clone(), counts.clone(), until.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !until() {
                i = (i + 1) % EPOCH_KEYS;
                let floor = raw.get_u64("xp:dead").unwrap_or(0);
                let v = cache.get::<u64>(&epoch_key(i)).await.unwrap();
                counts[1].fetch_add(1, SeqCst);
                if let Some(v) = v {
                    if (counts[2].fetch_add(1, SeqCst) + 1).is_multiple_of(100) {
                        let _: () = raw.cmd(&["INCRBY", hits_key, "100"]);
                    }
                    if v <= floor {
                        counts[0].fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        counts[0].load(SeqCst),
        counts[1].load(SeqCst),
        counts[2].load(SeqCst),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs only as a child process"]
async fn helper_family_reader() {
    let Some(url) = child_url() else { return };
    let cache = build(&url);
    let raw = Raw::data(&url);
    let _: () = raw.cmd(&["SET", "xp:reading", "1"]);
    let stop = raw.clone();
    let (stale, reads, hits) = read_family(&cache, &raw, "xp:hits:child", move || {
        stop.exists("xp:stop")
    })
    .await;
    println!("XP stale={stale}");
    println!("XP reads={reads}");
    println!("XP hits={hits}");
    println!("XP raced={}", tg_cache::testing::epochs_raced());
}

/// Hits each side of the family race must have had for the race to count.
const MIN_RACING_HITS: u64 = 1000;

/// Randomised across processes, with many hits: the parent writes round `r`
/// of the family's values, lets them be read, invalidates the family
/// (through one of two caches) and publishes `xp:dead = r`, while a child
/// process and a third cache in the parent read. A read checks the value
/// against the family epoch its connection knows (`store/epochs.rs`) instead
/// of reading the epoch key each time: no read may serve a dead value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_family_hit_never_serves_a_value_killed_before_it_started() {
    let _w = watchdog("a_family_hit_never_serves_a_value_killed_before_it_started");
    let server = RedisServer::start();
    let url = server.url();
    let raw = Raw::data(&url);
    let child = spawn_child("helper_family_reader", &url, &[]);
    raw.wait_for("xp:reading", Duration::from_secs(20)).await;
    let (a, b) = two_caches(&server.url());
    let reader = build(&url);
    let () = server.cmd(&["CONFIG", "RESETSTAT"]);
    // At least 3 s, and on until every reader has had enough hits to race
    // (a slow machine needs longer), within 30 s.
    let (min_stop, max_stop) = (
        Instant::now() + Duration::from_secs(3),
        Instant::now() + Duration::from_secs(30),
    );
    let enough = |raw: &Raw| {
        ["xp:hits:child", "xp:hits:parent"]
            .iter()
            .all(|k| raw.get_u64(k).unwrap_or(0) >= 2 * MIN_RACING_HITS)
    };
    let stopped = Arc::new(AtomicBool::new(false));
    // A reader of its own, and the writer `a` (whose connections receive
    // the pushes of their own invalidations).
    let parents: Vec<_> = [reader, a.clone()]
        .into_iter()
        .map(|cache| {
            let (raw, stopped) = (raw.clone(), stopped.clone());
            tokio::spawn(async move {
                read_family(&cache, &raw, "xp:hits:parent", move || stopped.load(SeqCst)).await
            })
        })
        .collect();
    let mut rounds = 0u64;
    while Instant::now() < min_stop || (Instant::now() < max_stop && !enough(&raw)) {
        rounds += 1;
        let items: Vec<(String, u64)> = (0..EPOCH_KEYS).map(|i| (epoch_key(i), rounds)).collect();
        a.set_many(&items, TTL).await.unwrap();
        tokio::time::sleep(jitter(2)).await;
        let by = if rounds.is_multiple_of(2) { &a } else { &b };
        by.invalidate_family(EPOCH_FAMILY).await.unwrap();
        let _: () = raw.cmd(&["SET", "xp:dead", &rounds.to_string()]);
        tokio::time::sleep(jitter(1)).await;
    }
    stopped.store(true, SeqCst);
    let (mut p_stale, mut p_reads, mut p_hits) = (0, 0, 0);
    for p in parents {
        let (s, r, h) = p.await.unwrap();
        (p_stale, p_reads, p_hits) = (p_stale + s, p_reads + r, p_hits + h);
    }
    let getranges = server.command_calls().get("getrange").copied().unwrap_or(0);
    let _: () = raw.cmd(&["SET", "xp:stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let get = |name| reported(&out, name).unwrap().parse::<u64>().unwrap();
    let (c_stale, c_reads, c_hits) = (get("stale"), get("reads"), get("hits"));
    let raced = get("raced") + tg_cache::testing::epochs_raced();
    eprintln!(
        "family race: {rounds} invalidations; child: {c_stale} stale of {c_reads} reads ({c_hits} hits); parent: {p_stale} stale of {p_reads} reads ({p_hits} hits); {raced} reads raced an invalidation of their known epoch; {getranges} GETRANGEs"
    );
    assert!(
        c_hits > MIN_RACING_HITS && p_hits > MIN_RACING_HITS,
        "too few hits to race in 30 s: {c_hits}, {p_hits}"
    );
    assert!(rounds > 100, "only {rounds} invalidations");
    assert!(
        raced > 0,
        "no read raced an invalidation: the race was not exercised"
    );
    // Known epochs are used: far fewer than the two reads per `get` of
    // reading the epoch every time.
    let reads = c_reads + p_reads;
    assert!(
        (getranges as f64) < 1.5 * reads as f64,
        "{getranges} GETRANGEs for {reads} reads: epochs are read every time"
    );
    assert_eq!((c_stale, p_stale), (0, 0), "dead values served");
}
