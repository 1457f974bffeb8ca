//! `#[cache_function]` on a real Redis: the same shapes as on the local
//! store, plus the raw keys and fail-open behaviour.

mod shapes;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Caches, cache_function};

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    // A second server that is stopped right away: the "down" cache.
    let mut dead = RedisServer::start();
    let dead_url = dead.url();
    dead.stop();
    tg_cache::configure(
        Caches::new(CacheConfig::redis(&server.url())).with(
            "down",
            CacheConfig::redis(&dead_url)
                .connect_timeout(Duration::from_millis(200))
                .response_timeout(Duration::from_millis(200)),
        ),
    )
    .unwrap();
    server
});

fn setup() {
    LazyLock::force(&SERVER);
}

shape_tests!(setup);

/// The JSON of a stored family value: values of a key family carry their
/// family's epoch as a `#<token>:` header (32 hex digits).
fn payload(raw: &str) -> &str {
    let (epoch, json) = raw
        .strip_prefix('#')
        .and_then(|r| r.split_once(':'))
        .unwrap_or_else(|| panic!("no epoch header in {raw:?}"));
    assert_eq!(epoch.len(), 32, "{raw:?}");
    json
}

#[tokio::test]
async fn the_redis_key_is_the_documented_key() {
    setup();
    let scenes = shapes::get_character_scenes(77).await.unwrap();
    let raw: String = SERVER.cmd(&["GET", "tg:fn:char_scenes:character_id=77"]);
    assert_eq!(payload(&raw), serde_json::to_string(&scenes).unwrap());
    let keys: Vec<String> = SERVER.cmd(&["KEYS", "tg:fn:char_scenes:*"]);
    assert!(
        keys.contains(&"tg:fn:char_scenes:character_id=77".to_string()),
        "{keys:?}"
    );
}

static DOWN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "down_async", cache = "down")]
async fn down_async(id: i64) -> Result<i64, String> {
    DOWN_RUNS.fetch_add(1, SeqCst);
    Ok(id * 2)
}

#[cache_function(key_prefix = "down_sync", cache = "down")]
fn down_sync(id: i64) -> i64 {
    id * 3
}

#[tokio::test]
async fn an_unreachable_redis_never_fails_the_function() {
    setup();
    let down = tg_cache::caches("down").unwrap();
    let start = std::time::Instant::now();
    for i in 0..20 {
        assert_eq!(down_async(i).await, Ok(i * 2));
        assert_eq!(down_sync(i), i * 3);
    }
    assert_eq!(DOWN_RUNS.load(SeqCst), 20);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(down.stats().errors >= 20, "{:?}", down.stats());
    // invalidation reports the failure to the caller
    assert!(down_async_invalidate(&1).await.is_err());
}

static CUBE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "cube")]
fn cube(x: i64) -> i64 {
    CUBE_RUNS.fetch_add(1, SeqCst);
    x * x * x
}

#[tokio::test]
async fn corrupt_entries_are_recomputed() {
    setup();
    // A corrupt value in the family's current epoch (a value without the
    // epoch header is simply not live).
    assert_eq!(cube(3), 27);
    let epoch: String = SERVER.cmd(&["GET", "#epoch:tg:fn:cube"]);
    let () = SERVER.cmd(&["SET", "tg:fn:cube:x=2", &format!("#{epoch}:{{corrupt")]);
    assert_eq!(cube(2), 8);
    assert_eq!(cube(2), 8);
    assert_eq!(CUBE_RUNS.load(SeqCst), 2);
    let raw: String = SERVER.cmd(&["GET", "tg:fn:cube:x=2"]);
    assert_eq!(payload(&raw), "8");
    assert!(tg_cache::cache().stats().decode_errors >= 1);
}
