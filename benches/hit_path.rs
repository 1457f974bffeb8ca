#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The hit path of `#[cache_function]` against raw lookups of the same key
//! in the same run: moka for the local store, a plain `GET` for Redis.
//!
//! `cargo bench --bench hit_path`; results are summarised in BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::sync::{Arc, LazyLock};
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Caches, cache_function};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scene {
    id: i64,
    title: String,
    chronicle: String,
}

fn scenes(character_id: i64) -> Vec<Scene> {
    (0..10)
        .map(|i| Scene {
            id: character_id * 100 + i,
            title: format!("Scene {i} of character {character_id}"),
            chronicle: "Chicago by Night".into(),
        })
        .collect()
}

#[cache_function(key_prefix = "char_scenes")]
fn local_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    Arc::new(scenes(character_id))
}

#[cache_function(key_prefix = "char_scenes_near", cache = "near")]
fn near_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    Arc::new(scenes(character_id))
}

#[cache_function(key_prefix = "char_scenes_redis", cache = "redis")]
async fn redis_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    Arc::new(scenes(character_id))
}

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(
        Caches::new(CacheConfig::local())
            .with("redis", CacheConfig::redis(&server.url()))
            .with("near", CacheConfig::redis(&server.url()).near_cache(1000)),
    )
    .unwrap();
    server
});

fn local(c: &mut Criterion) {
    LazyLock::force(&SERVER);
    let mut g = c.benchmark_group("local_hit");
    let key = local_scenes_cache_key(&5);
    let raw: moka::sync::Cache<String, Arc<Vec<Scene>>> = moka::sync::Cache::new(1000);
    raw.insert(key.clone(), Arc::new(scenes(5)));
    local_scenes(5); // warm the entry

    g.bench_function(BenchmarkId::new("raw_moka_get", "prebuilt_key"), |b| {
        b.iter(|| raw.get(black_box(key.as_str())).unwrap())
    });
    // The same lookup in a moka cache with per-entry expiry, as the local
    // store needs for per-call timeouts.
    struct PerEntry;
    impl moka::Expiry<String, (Arc<Vec<Scene>>, std::time::Duration)> for PerEntry {
        fn expire_after_create(
            &self,
            _: &String,
            v: &(Arc<Vec<Scene>>, std::time::Duration),
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(v.1)
        }
    }
    let raw_expiring: moka::sync::Cache<String, (Arc<Vec<Scene>>, std::time::Duration)> =
        moka::sync::Cache::builder()
            .max_capacity(1000)
            .expire_after(PerEntry)
            .build();
    raw_expiring.insert(
        key.clone(),
        (Arc::new(scenes(5)), tg_cache::timeout::MEDIUM),
    );
    g.bench_function(
        BenchmarkId::new("raw_moka_get", "prebuilt_key_per_entry_expiry"),
        |b| b.iter(|| raw_expiring.get(black_box(key.as_str())).unwrap().0),
    );
    g.bench_function(BenchmarkId::new("raw_moka_get", "formatted_key"), |b| {
        b.iter(|| {
            let k = format!("tg:fn:char_scenes:character_id={}", black_box(5));
            raw.get(k.as_str()).unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("cache_function", "arc_value"), |b| {
        b.iter(|| local_scenes(black_box(5)))
    });
    // The same function on a Redis cache with a near cache: a near hit.
    near_scenes(5);
    near_scenes(5);
    g.bench_function(BenchmarkId::new("near_cache_function", "arc_value"), |b| {
        b.iter(|| near_scenes(black_box(5)))
    });
    let cache = tg_cache::cache();
    g.bench_function(BenchmarkId::new("cache_api_get", "clone_vec"), |b| {
        cache
            .blocking()
            .set(&key, &scenes(5), tg_cache::timeout::MEDIUM)
            .unwrap();
        b.iter(|| {
            cache
                .blocking()
                .get::<Vec<Scene>>(black_box(&key))
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
}

/// A plain `GET` on a redis-rs connection: the Redis baseline.
async fn raw_get(mut conn: redis::aio::MultiplexedConnection, key: String) -> Vec<u8> {
    redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn redis(c: &mut Criterion) {
    let server = &*SERVER;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = redis_scenes_cache_key(&5);
    let mut conn = rt.block_on(async {
        redis_scenes(5).await; // warm the entry
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let mut g = c.benchmark_group("redis_hit");
    g.bench_function(BenchmarkId::new("raw_get", "bytes"), |b| {
        b.to_async(&rt).iter(|| raw_get(conn.clone(), key.clone()))
    });
    g.bench_function(BenchmarkId::new("raw_get", "bytes_and_json_decode"), |b| {
        b.to_async(&rt).iter(|| async {
            let v = raw_get(conn.clone(), key.clone()).await;
            // Skip the `#<epoch>:` header of a family value.
            let json = &v[v.iter().position(|&b| b == b':').unwrap() + 1..];
            serde_json::from_slice::<Vec<Scene>>(json).unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("cache_function", "arc_value"), |b| {
        b.to_async(&rt).iter(|| redis_scenes(black_box(5)))
    });
    g.finish();
    let _: () = rt.block_on(async { redis::cmd("PING").query_async(&mut conn).await.unwrap() });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = local, redis
}
criterion_main!(benches);
