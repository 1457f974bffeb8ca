#![allow(missing_docs)] // criterion_group! generates undocumented items
//! `Model::invalidate_all()` against the number of cached entries of the
//! model: flat (a generation bump), compared with `delete_pattern` (SCAN +
//! UNLINK), which grows with the keyspace. `cargo bench --bench invalidate_all`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Caches, Invalidate};

#[derive(Invalidate)]
#[invalidate(model = "Ghoul", model_key(id))]
struct LocalGhoul {
    id: i64,
}

#[derive(Invalidate)]
#[invalidate(model = "Ghoul", model_key(id), cache = "redis")]
struct RedisGhoul {
    id: i64,
}

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(
        Caches::new(CacheConfig::local().max_entries(2_000_000))
            .with("redis", CacheConfig::redis(&server.url())),
    )
    .unwrap();
    server
});

fn fill_redis(n: usize) {
    let mut con = SERVER.connection();
    let () = redis::cmd("FLUSHDB").query(&mut con).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("tg:queryset:Ghoul:id={i}"))
                .arg("{\"name\":\"ghoul\"}");
        }
        let () = cmd.query(&mut con).unwrap();
    }
}

fn fill_local(n: usize) {
    let cache = tg_cache::cache();
    cache.blocking().clear().unwrap();
    let items: Vec<(String, u32)> = (0..n)
        .map(|i| (format!("tg:queryset:Ghoul:id={i}"), 1))
        .collect();
    cache
        .blocking()
        .set_many(&items, tg_cache::timeout::DAY)
        .unwrap();
}

fn bench(c: &mut Criterion) {
    LazyLock::force(&SERVER);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("invalidate_all");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    // `cargo test --all-targets` runs benches once as a smoke test: keep it small.
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if benching {
        &[1_000, 10_000, 100_000, 1_000_000]
    } else {
        &[1_000]
    };
    for &n in sizes {
        fill_redis(n);
        g.bench_with_input(BenchmarkId::new("redis", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { RedisGhoul::invalidate_all().await.unwrap() })
        });
        fill_local(n);
        g.bench_with_input(BenchmarkId::new("local", n), &n, |b, _| {
            b.iter(|| LocalGhoul::invalidate_all_blocking().unwrap())
        });
    }
    g.finish();

    // For contrast: deleting the same entries by pattern scans the keyspace.
    let mut g = c.benchmark_group("delete_pattern");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let redis_cache = tg_cache::caches("redis").unwrap();
    let sizes: &[usize] = if benching {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000]
    };
    for &n in sizes {
        g.bench_with_input(BenchmarkId::new("redis", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fill_redis(n);
                    let start = Instant::now();
                    let deleted = redis_cache
                        .blocking()
                        .delete_pattern("tg:queryset:Ghoul:*")
                        .unwrap();
                    total += start.elapsed();
                    assert_eq!(deleted, n);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
