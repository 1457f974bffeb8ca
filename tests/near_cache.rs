//! The near cache (`CacheConfig::near_cache`) on a real redis-server, with
//! two OS processes where connections and push messages matter: this test
//! binary re-run as a child (`#[ignore]` helpers selected by
//! `TG_XPROC_CHILD`, which return at once in a normal run).
//!
//! Outcomes are counted: near hits and misses (`Cache::near_stats`), what
//! the other process serves after each kind of change, stale reads beyond
//! the bound in a randomised race (and with the pending-ticket guard broken
//! on purpose, to show that the race test catches it).
//!
//! The tests that need no restart of the server run twice, on a server of
//! their own (`<name>::on_redis`) and on the shared Redis Cluster
//! (`<name>::on_cluster`, tracking on every primary).
//!
//! Run: `cargo test --all-features --test near_cache`.

#[path = "cross_process/helpers.rs"]
#[macro_use]
mod helpers;

use helpers::{Backend, Raw, TTL, Where, child_url, finish, reported, spawn_child, watchdog};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tg_cache::testing::{BREAK_NEAR_GUARD_VAR, RedisServer};
use tg_cache::{Cache, CacheConfig};

/// How long after a write returned another process may still serve the
/// old value, in these tests (the measured p99 is far lower, see
/// `BENCHMARKS.md`; this bound leaves room for a loaded 2-core CI machine).
const BOUND: Duration = Duration::from_millis(100);

fn near(url: &str) -> Cache {
    helpers::config(url).near_cache(10_000).build().unwrap()
}

on_both!(
    hits_are_served_locally_without_a_redis_command,
    writes_of_other_keys_keep_the_familys_near_entries,
    own_writes_and_invalidations_are_seen_at_once,
    the_near_cache_keeps_its_bound,
    an_expired_value_is_not_served,
    no_stale_read_beyond_the_bound_in_a_randomised_race,
    without_the_pending_ticket_the_race_serves_stale_values,
);

fn near_totals(cache: &Cache) -> (u64, u64) {
    cache
        .near_stats()
        .expect("a near cache")
        .iter()
        .fold((0, 0), |(h, m), (_, s)| (h + s.hits, m + s.misses))
}

/// Waits until `cache` serves near hits. On a cluster a new cache reads
/// through the cluster connection, which tracks nothing, until it has read
/// the topology and opened a tracked connection to each primary (at once
/// in the background; on a loaded machine that can take a while).
async fn near_ready(cache: &Cache) {
    cache.set("n:ready", &1u64, TTL).await.unwrap();
    let start = Instant::now();
    let hits = near_totals(cache).0;
    loop {
        assert_eq!(cache.get::<u64>("n:ready").await.unwrap(), Some(1));
        if near_totals(cache).0 > hits {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no near hit within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds, at most `limit`; returns how long it took.
async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------
// In one process: hits are local, own writes are immediate
// ---------------------------------------------------------------------------

async fn hits_are_served_locally_without_a_redis_command(place: Where) {
    let _w = watchdog("hits_are_served_locally_without_a_redis_command");
    let server = Backend::start(place);
    let cache = near(&server.url());
    near_ready(&cache).await;
    let (hits0, misses0) = near_totals(&cache);
    let lookups0 = cache.stats().hits;
    cache.set("n:hit", &"v1".to_owned(), TTL).await.unwrap();
    let before = server.command_calls();
    assert_eq!(
        cache.get::<String>("n:hit").await.unwrap().as_deref(),
        Some("v1")
    );
    for _ in 0..1000 {
        assert_eq!(
            cache.get::<String>("n:hit").await.unwrap().as_deref(),
            Some("v1")
        );
    }
    let after = server.command_calls();
    let calls = |stats: &std::collections::BTreeMap<String, u64>, cmd: &str| -> u64 {
        stats.get(cmd).copied().unwrap_or(0)
    };
    assert_eq!(
        calls(&after, "getrange") - calls(&before, "getrange"),
        1,
        "1001 reads, of which 1000 near hits, sent more than one GETRANGE"
    );
    let (hits, misses) = near_totals(&cache);
    assert!(hits - hits0 >= 1000, "near hits {}", hits - hits0);
    assert_eq!(misses - misses0, 1, "one read fetched the value");
    assert_eq!(
        cache.stats().hits - lookups0,
        1001,
        "near hits are hits too"
    );
    // The read that reached Redis ran no script (INFO commandstats).
    let scripts = |stats| calls(stats, "evalsha") + calls(stats, "eval");
    assert_eq!(scripts(&after), scripts(&before), "a read ran a script");
}

/// Writes of other keys of a family (by another cache) leave the family's
/// near entries alone: they extend the family's epoch lifetime at most
/// once per lifetime, so its tracked epoch key does not change at each
/// write (each change would drop the whole family from every near cache).
async fn writes_of_other_keys_keep_the_familys_near_entries(place: Where) {
    let _w = watchdog("writes_of_other_keys_keep_the_familys_near_entries");
    let server = Backend::start(place);
    let cache = near(&server.url());
    near_ready(&cache).await;
    let writer = helpers::build(&server.url());
    writer.set("tg:fn:nf:id=1", &1u64, TTL).await.unwrap();
    assert_eq!(cache.get::<u64>("tg:fn:nf:id=1").await.unwrap(), Some(1));
    let hits = near_totals(&cache).0;
    for i in 2..50u64 {
        writer
            .set(&format!("tg:fn:nf:id={i}"), &i, TTL)
            .await
            .unwrap();
    }
    // Pushes (if any) arrive within the bound.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = server.command_calls().get("getrange").copied().unwrap_or(0);
    for _ in 0..100 {
        assert_eq!(cache.get::<u64>("tg:fn:nf:id=1").await.unwrap(), Some(1));
    }
    let after = server.command_calls().get("getrange").copied().unwrap_or(0);
    assert_eq!(after - before, 0, "the family's near entry was dropped");
    assert_eq!(near_totals(&cache).0 - hits, 100);
}

async fn own_writes_and_invalidations_are_seen_at_once(place: Where) {
    let _w = watchdog("own_writes_and_invalidations_are_seen_at_once");
    let server = Backend::start(place);
    // Pushes ignored: the server's invalidation of this process's own write
    // must not be what drops the old value.
    let cache = helpers::config(&server.url())
        .near_cache(10_000)
        .testing_near_ignores_pushes()
        .build()
        .unwrap();
    near_ready(&cache).await;
    let get = |k: &'static str| {
        let cache = cache.clone();
        async move { cache.get::<u64>(k).await.unwrap() }
    };
    let warm = |k: &'static str, v: u64| {
        let cache = cache.clone();
        async move {
            cache.set(k, &v, TTL).await.unwrap();
            assert_eq!(cache.get::<u64>(k).await.unwrap(), Some(v));
            assert_eq!(cache.get::<u64>(k).await.unwrap(), Some(v));
        }
    };
    warm("n:own", 1).await;
    cache.set("n:own", &2u64, TTL).await.unwrap();
    assert_eq!(get("n:own").await, Some(2), "set");
    cache.delete("n:own").await.unwrap();
    assert_eq!(get("n:own").await, None, "delete");
    warm("n:own", 3).await;
    cache.incr("n:own", 1).await.unwrap();
    assert_eq!(get("n:own").await, Some(4), "incr");
    warm("n:own", 5).await;
    cache.set_many(&[("n:own", 6u64)], TTL).await.unwrap();
    assert_eq!(get("n:own").await, Some(6), "set_many");
    // `add` over a live value stores nothing; over a deleted one it stores.
    assert!(!cache.add("n:own", &7u64, TTL).await.unwrap());
    assert_eq!(get("n:own").await, Some(6), "add over a live value");
    let (near_hits, _) = near_totals(&cache);
    assert!(
        near_hits >= 3,
        "the warm reads were not near hits: {near_hits}"
    );
    warm("n:pat:1", 5).await;
    cache.delete_pattern("n:pat:*").await.unwrap();
    assert_eq!(get("n:pat:1").await, None, "delete_pattern");
    warm("tg:fn:nearown:1", 6).await;
    cache.invalidate_family("tg:fn:nearown").await.unwrap();
    assert_eq!(get("tg:fn:nearown:1").await, None, "invalidate_family");
    warm("n:clear", 7).await;
    cache.clear().await.unwrap();
    assert_eq!(get("n:clear").await, None, "clear");
    warm("n:gos", 8).await;
    let v = cache.get_or_set("n:gos", TTL, || async { 9u64 }).await;
    assert_eq!(v, 8, "get_or_set hits the near cache");
}

async fn the_near_cache_keeps_its_bound(place: Where) {
    let _w = watchdog("the_near_cache_keeps_its_bound");
    let server = Backend::start(place);
    let cache = helpers::config(&server.url())
        .near_cache(100)
        .build()
        .unwrap();
    for i in 0..2000u64 {
        let k = format!("n:bound:{i}");
        cache.set(&k, &i, TTL).await.unwrap();
        assert_eq!(cache.get::<u64>(&k).await.unwrap(), Some(i));
    }
    let held = cache.local_len().unwrap();
    assert!(
        held <= 100,
        "the near cache holds {held} entries, bound 100"
    );
    assert!(held > 0, "the near cache holds nothing");
}

async fn an_expired_value_is_not_served(place: Where) {
    let _w = watchdog("an_expired_value_is_not_served");
    let server = Backend::start(place);
    // No active expiry: the server would push the key's invalidation when
    // it expires, hiding a near cache that ignored the value's lifetime.
    server.on_every_node(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    let cache = near(&server.url());
    near_ready(&cache).await;
    cache
        .set("n:ttl", &1u64, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>("n:ttl").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u64>("n:ttl").await.unwrap(), Some(1));
    assert!(near_totals(&cache).0 >= 1, "not a near hit");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cache.get::<u64>("n:ttl").await.unwrap(), None);
}

#[test]
fn the_environment_variable_configures_it() {
    let lookup = |v: &'static str| {
        move |name: &str| match name {
            "TG_CACHE_BACKEND" => Some("redis".to_owned()),
            "TG_CACHE_NEAR_CACHE" => Some(v.to_owned()),
            _ => None,
        }
    };
    let entries = |v| {
        CacheConfig::from_lookup(lookup(v))
            .unwrap()
            .near_cache_entries()
    };
    assert_eq!(entries("10000"), Some(10_000));
    assert_eq!(entries("0"), None);
    assert_eq!(entries("off"), None);
    assert_eq!(entries("OFF"), None);
    let err = CacheConfig::from_lookup(lookup("lots"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("TG_CACHE_NEAR_CACHE"), "{err}");
    assert_eq!(
        CacheConfig::redis("redis://127.0.0.1").near_cache_entries(),
        None
    );
    assert_eq!(
        CacheConfig::redis("redis://127.0.0.1")
            .near_cache(0)
            .near_cache_entries(),
        None
    );
}

// ---------------------------------------------------------------------------
// Two processes: every kind of change reaches the other process
// ---------------------------------------------------------------------------

const FOLLOWED: &str = "n:followed";
const FOLLOWED_FAMILY_KEY: &str = "tg:fn:nearfam:1";

/// Child: reads `FOLLOWED` and `FOLLOWED_FAMILY_KEY` through a near cache
/// every 200 µs and publishes each value it serves when it changes
/// (`seen`, `seen_fam` in the data database), until `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of every_change_reaches_the_other_process"]
async fn helper_near_follower() {
    let Some(url) = child_url() else { return };
    let cache = near(&url);
    let data = Raw::data(&url);
    let mut last: [Option<Option<String>>; 2] = [None, None];
    let mut reads = 0u64;
    let stopped = |data: &Raw| {
        data.try_cmd::<i64>(&["EXISTS", "stop"])
            .is_ok_and(|n| n == 1)
    };
    while !stopped(&data) {
        for (i, (key, seen)) in [(FOLLOWED, "seen"), (FOLLOWED_FAMILY_KEY, "seen_fam")]
            .into_iter()
            .enumerate()
        {
            // A failed read (Redis down) is not a value served.
            let Ok(v) = cache.get::<String>(key).await else {
                continue;
            };
            reads += 1;
            if last[i].as_ref() != Some(&v) {
                let shown = v.clone().unwrap_or_else(|| "<none>".to_owned());
                // Redis may be down; try again on the next change.
                if data.try_cmd::<()>(&["SET", seen, &shown]).is_ok() {
                    last[i] = Some(v);
                }
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (hits, misses) = near_totals(&cache);
    println!("XP reads={reads}");
    println!("XP hits={hits}");
    println!("XP misses={misses}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_other_process() {
    let _w = tg_cache::testing::watchdog(
        "every_change_reaches_the_other_process",
        Duration::from_secs(60),
    );
    let mut server = RedisServer::start();
    let url = server.url();
    let raw = Raw::of(&server);
    let data = Raw::data(&url);
    let a = near(&url);
    let set = |k: &'static str, v: &'static str| {
        let a = a.clone();
        async move { a.set(k, &v.to_owned(), TTL).await.unwrap() }
    };
    set(FOLLOWED, "v1").await;
    set(FOLLOWED_FAMILY_KEY, "f1").await;
    let child = spawn_child("helper_near_follower", &url, &[]);
    let seen = |key: &'static str, want: &'static str| {
        let data = data.clone();
        move || {
            data.try_cmd::<Option<String>>(&["GET", key])
                .ok()
                .flatten()
                .as_deref()
                == Some(want)
        }
    };
    within(
        Duration::from_secs(20),
        "the child starts",
        seen("seen", "v1"),
    )
    .await;
    within(Duration::from_secs(5), "family key", seen("seen_fam", "f1")).await;
    // Let it serve near hits for a while.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut took = Vec::new();

    set(FOLLOWED, "v2").await;
    took.push((
        "tg-cache set",
        within(BOUND, "a set by another process", seen("seen", "v2")).await,
    ));

    raw.set_bytes(FOLLOWED, b"\"v3\"");
    took.push((
        "raw SET",
        within(BOUND, "a raw SET", seen("seen", "v3")).await,
    ));

    let _: i64 = raw.cmd(&["DEL", FOLLOWED]);
    took.push((
        "raw DEL",
        within(BOUND, "a raw DEL", seen("seen", "<none>")).await,
    ));

    set(FOLLOWED, "v4").await;
    within(BOUND, "a set after a delete", seen("seen", "v4")).await;
    a.invalidate_family("tg:fn:nearfam").await.unwrap();
    took.push((
        "invalidate_family",
        within(BOUND, "a family invalidation", seen("seen_fam", "<none>")).await,
    ));
    set(FOLLOWED_FAMILY_KEY, "f2").await;
    within(
        BOUND,
        "a family value after its invalidation",
        seen("seen_fam", "f2"),
    )
    .await;

    let _: () = raw.cmd(&["FLUSHDB"]);
    took.push((
        "FLUSHDB",
        within(BOUND, "a FLUSHDB", seen("seen", "<none>")).await,
    ));
    set(FOLLOWED, "v5").await;
    within(BOUND, "a set after FLUSHDB", seen("seen", "v5")).await;

    // Tracking connections lost: every tg-cache connection has tracking
    // on (flag `t`); the raw client's has not. A write right after the kill
    // reaches no one by push.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let clients: String = raw.cmd(&["CLIENT", "LIST"]);
    let mut killed = 0;
    for line in clients.lines() {
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
                .to_owned()
        };
        if field("flags").contains('t') {
            let _: i64 = raw.cmd(&["CLIENT", "KILL", "ID", &field("id")]);
            killed += 1;
        }
    }
    assert!(killed >= 2, "killed {killed} tracking connections");
    raw.set_bytes(FOLLOWED, b"\"v6\"");
    took.push((
        "CLIENT KILL, then raw SET",
        within(BOUND, "a write after CLIENT KILL", seen("seen", "v6")).await,
    ));

    // A server restart: the near cache in the child must not serve v6.
    server.kill9();
    server.restart();
    let raw = Raw::of(&server);
    raw.set_bytes(FOLLOWED, b"\"v7\"");
    // The server takes tens of ms to come back; a near cache that missed the
    // loss would serve v6 until its pinger noticed (up to 2 s).
    took.push((
        "restart, then raw SET",
        within(
            Duration::from_millis(1000),
            "a write after a restart",
            seen("seen", "v7"),
        )
        .await,
    ));

    let _: () = data.cmd(&["SET", "stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let hits: u64 = reported(&out, "hits").unwrap().parse().unwrap();
    let misses: u64 = reported(&out, "misses").unwrap().parse().unwrap();
    let reads: u64 = reported(&out, "reads").unwrap().parse().unwrap();
    eprintln!("convergence: {took:?}; child reads {reads}, near hits {hits}, misses {misses}");
    assert!(
        hits * 2 > reads,
        "the child's reads were mostly not near hits: {hits} of {reads}"
    );
}

// ---------------------------------------------------------------------------
// Two processes: the read/invalidate race
// ---------------------------------------------------------------------------

const RACE_KEYS: u64 = 4;

/// Child: 8 tasks read the race keys through a near cache as fast as they
/// can. Before each read a task reads the key's floor (`w:<i>`, set by the
/// parent after each write returned); a value below it is a stale read,
/// and one still served `BOUND` later is a stale read beyond the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the read/invalidate race tests"]
async fn helper_near_racer() {
    let Some(url) = child_url() else { return };
    let cache = near(&url);
    let data = Raw::data(&url);
    let stale = Arc::new(AtomicU64::new(0));
    let beyond = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let _: () = data.cmd(&["SET", "racing", "1"]);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (cache, data) = (cache.clone(), data.clone());
        let (stale, beyond, reads) = (stale.clone(), beyond.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !data.exists("stop") {
                i = (i + 1) % RACE_KEYS;
                let key = format!("n:race:{i}");
                let floor = data.get_u64(&format!("w:{i}")).unwrap_or(0);
                let v = cache.get::<u64>(&key).await.unwrap().unwrap_or(u64::MAX);
                reads.fetch_add(1, SeqCst);
                if v < floor {
                    stale.fetch_add(1, SeqCst);
                    tokio::time::sleep(BOUND).await;
                    let again = cache.get::<u64>(&key).await.unwrap().unwrap_or(u64::MAX);
                    if again < floor {
                        beyond.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (hits, misses) = near_totals(&cache);
    println!("XP stale={}", stale.load(SeqCst));
    println!("XP beyond={}", beyond.load(SeqCst));
    println!("XP reads={}", reads.load(SeqCst));
    println!("XP hits={hits}");
    println!("XP misses={misses}");
}

/// The parent writes the race keys for `secs` (tg-cache `set`s and raw
/// `SET`s, at random), publishing each key's floor after its write
/// returned. Returns (stale beyond the bound, stale, reads, near hits).
async fn read_invalidate_race(place: Where, break_guard: bool, secs: u64) -> (u64, u64, u64, u64) {
    let server = Backend::start(place);
    let url = server.url();
    let data = Raw::data(&url);
    let raw = Raw::new(url.clone());
    let a = near(&url);
    for i in 0..RACE_KEYS {
        a.set(&format!("n:race:{i}"), &0u64, TTL).await.unwrap();
    }
    let env: Vec<(&str, &str)> = if break_guard {
        vec![(BREAK_NEAR_GUARD_VAR, "1")]
    } else {
        vec![]
    };
    let child = spawn_child("helper_near_racer", &url, &env);
    data.wait_for("racing", Duration::from_secs(20)).await;
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let i = rand::random_range(0..RACE_KEYS);
        let key = format!("n:race:{i}");
        if rand::random_bool(0.5) {
            a.set(&key, &n, TTL).await.unwrap();
        } else {
            raw.set_bytes(&key, n.to_string().as_bytes());
        }
        let _: () = data.cmd(&["SET", &format!("w:{i}"), &n.to_string()]);
        tokio::time::sleep(helpers::jitter(2)).await;
    }
    let _: () = data.cmd(&["SET", "stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let get = |name| reported(&out, name).unwrap().parse::<u64>().unwrap();
    let r = (get("beyond"), get("stale"), get("reads"), get("hits"));
    eprintln!(
        "race (guard {}): {n} writes; stale beyond {BOUND:?}: {}, stale: {}, reads: {}, near hits: {}",
        if break_guard { "broken" } else { "on" },
        r.0,
        r.1,
        r.2,
        r.3
    );
    r
}

async fn no_stale_read_beyond_the_bound_in_a_randomised_race(place: Where) {
    let _w = watchdog("no_stale_read_beyond_the_bound_in_a_randomised_race");
    let (beyond, _stale, reads, hits) = read_invalidate_race(place, false, 4).await;
    assert!(reads > 1000, "only {reads} reads");
    assert!(
        hits > 0,
        "no near hit: the race did not exercise the near cache"
    );
    assert_eq!(beyond, 0, "stale reads beyond {BOUND:?}");
}

async fn without_the_pending_ticket_the_race_serves_stale_values(place: Where) {
    let _w = watchdog("without_the_pending_ticket_the_race_serves_stale_values");
    let (beyond, _stale, _reads, _hits) = read_invalidate_race(place, true, 4).await;
    assert!(
        beyond > 0,
        "the race test found no stale read with the guard broken: it cannot catch a broken guard"
    );
}
