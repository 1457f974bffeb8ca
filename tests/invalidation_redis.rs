//! `#[derive(Invalidate)]` on a real Redis.

mod models;

use std::sync::LazyLock;
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Caches, Invalidate};

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(Caches::new(CacheConfig::redis(&server.url()))).unwrap();
    server
});

fn setup() {
    LazyLock::force(&SERVER);
}

model_tests!(setup);

/// A model of its own, so that invalidating it cannot disturb the tests above.
#[derive(Clone, Invalidate)]
#[invalidate(model_key(id))]
struct Ghoul {
    id: i64,
}

#[tokio::test]
async fn readable_keys_and_o1_invalidate_all() {
    setup();
    let cache = tg_cache::cache();
    for id in 0..2000 {
        cache
            .set(
                &format!("tg:queryset:Ghoul:id={id}"),
                &id,
                tg_cache::timeout::MEDIUM,
            )
            .await
            .unwrap();
    }
    let mut con = SERVER.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tg:queryset:Ghoul:*")
        .query(&mut con)
        .unwrap();
    assert!(keys.len() == 2000 && keys.contains(&"tg:queryset:Ghoul:id=5".to_string()));
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    let size_before: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    Ghoul::invalidate_all().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    assert!(
        !stats.contains("cmdstat_scan"),
        "invalidate_all scanned: {stats}"
    );
    assert!(
        !stats.contains("cmdstat_del:"),
        "invalidate_all deleted keys one by one: {stats}"
    );
    let size_after: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert!(
        size_after <= size_before + 2,
        "{size_before} -> {size_after}"
    );
    assert_eq!(
        cache.get::<i64>("tg:queryset:Ghoul:id=5").await.unwrap(),
        None
    );
}
