//! TTL jitter: entries written together get lifetimes spread over
//! `[timeout·(1 − j), timeout]`, read back as real `PTTL`s from Redis.

use std::time::Duration;
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig, Timeout, Ttl, cache_function};

const MINUTE: Duration = Duration::from_secs(60);

/// The remaining lifetimes, in ms, of `keys` as Redis reports them.
fn pttls(server: &RedisServer, keys: &[String]) -> Vec<i64> {
    let mut con = server.connection();
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("PTTL").arg(k);
    }
    pipe.query(&mut con).unwrap()
}

/// Asserts that `lives` (ms) lie in `[lo, hi]` and span at least `span`.
fn assert_spread(lives: &[i64], lo: i64, hi: i64, span: i64) {
    let (min, max) = (*lives.iter().min().unwrap(), *lives.iter().max().unwrap());
    assert!(
        min >= lo && max <= hi,
        "lifetimes {min}..{max} ms outside {lo}..{hi}"
    );
    assert!(
        max - min >= span,
        "lifetimes span {} ms, under {span}",
        max - min
    );
}

#[tokio::test]
async fn a_burst_of_10000_keys_is_spread_over_the_jitter() {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url()).build().unwrap();
    let items: Vec<(String, u64)> = (0..10_000).map(|i| (format!("burst:{i}"), i)).collect();
    cache
        .set_many(&items, Timeout::from(MINUTE).jitter(0.1))
        .await
        .unwrap();
    let keys: Vec<String> = items.into_iter().map(|(k, _)| k).collect();
    let lives = pttls(&server, &keys);
    // 54-60 s, spanning at least 5 s; and spread, not two clusters.
    assert_spread(&lives, 53_000, 60_000, 5_000);
    let mut bins = [0u32; 6];
    for l in &lives {
        bins[(((l - 54_000).max(0)) / 1000).min(5) as usize] += 1;
    }
    assert!(
        bins.iter().all(|&b| b > 1000),
        "per second of the range: {bins:?}"
    );
    // Without jitter they all expire together.
    let plain: Vec<(String, u64)> = (0..1000).map(|i| (format!("plain:{i}"), i)).collect();
    cache.set_many(&plain, MINUTE).await.unwrap();
    let keys: Vec<String> = plain.into_iter().map(|(k, _)| k).collect();
    let lives = pttls(&server, &keys);
    assert!(*lives.iter().min().unwrap() > 58_000, "every key stored");
    assert!(lives.iter().max().unwrap() - lives.iter().min().unwrap() < 1000);
}

#[cache_function(key_prefix = "jittered", timeout = 60, jitter = 0.2)]
async fn jittered(id: u64) -> u64 {
    id
}

/// No timeout: the cache's default (300 s), spread by half.
#[cache_function(key_prefix = "jittered_default", jitter = 0.5)]
async fn jittered_default(id: u64) -> u64 {
    id
}

#[tokio::test]
async fn a_cached_functions_jitter_spreads_its_entries() {
    let server = RedisServer::start();
    tg_cache::configure(tg_cache::Caches::new(CacheConfig::redis(&server.url()))).unwrap();
    for id in 0..500 {
        assert_eq!(jittered(id).await, id);
    }
    let keys: Vec<String> = (0..500)
        .map(|id| format!("tg:fn:jittered:id={id}"))
        .collect();
    let lives = pttls(&server, &keys);
    assert!(
        lives.iter().all(|&l| l > 0),
        "every entry stored: {lives:?}"
    );
    assert_spread(&lives, 47_000, 60_000, 9_000);
    for id in 0..200 {
        assert_eq!(jittered_default(id).await, id);
    }
    let keys: Vec<String> = (0..200)
        .map(|id| format!("tg:fn:jittered_default:id={id}"))
        .collect();
    assert_spread(&pttls(&server, &keys), 149_000, 300_000, 100_000);
}

async fn spread_of_set(cache: &Cache, timeout: Timeout, n: u64) -> (Duration, Duration) {
    let mut lives = Vec::new();
    for i in 0..n {
        let key = format!("default:{i}");
        cache.set(&key, &i, timeout).await.unwrap();
        match cache.ttl(&key).await.unwrap() {
            Some(Ttl::Remaining(r)) => lives.push(r),
            other => panic!("{other:?}"),
        }
    }
    (*lives.iter().min().unwrap(), *lives.iter().max().unwrap())
}

#[tokio::test]
async fn a_caches_default_jitter_applies_unless_a_timeout_sets_its_own() {
    let server = RedisServer::start();
    for cfg in [
        CacheConfig::local().jitter(0.5),
        CacheConfig::redis(&server.url()).jitter(0.5),
    ] {
        let cache = cfg.build().unwrap();
        let (lo, hi) = spread_of_set(&cache, MINUTE.into(), 300).await;
        assert!(
            lo >= Duration::from_secs(29) && hi <= MINUTE,
            "{lo:?} {hi:?}"
        );
        assert!(hi - lo > Duration::from_secs(20), "{lo:?} {hi:?}");
        // `jitter(0.0)` on a timeout turns the cache's off.
        let (lo, hi) = spread_of_set(&cache, Timeout::from(MINUTE).jitter(0.0), 100).await;
        assert!(hi - lo < Duration::from_secs(1), "{lo:?} {hi:?}");
        // A timeout that never expires has nothing to spread.
        cache.set("forever", &1, Timeout::Never).await.unwrap();
        assert_eq!(cache.ttl("forever").await.unwrap(), Some(Ttl::Forever));
    }
}
