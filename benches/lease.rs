#![allow(missing_docs)] // criterion_group! generates undocumented items
//! What a lease poll and a fill cost when the key holds a big value.
//!
//! A waiter's poll asks for a key's lease while another process holds it;
//! a fill stores a 1 KiB value under a held lease. Both run with a 1 KiB
//! and a 16 MiB value at the key (written, then outdated by a family
//! invalidation, so that it is dead), against a `PING` round trip measured
//! in the same run. Also: the grant that replaces a dead value by the
//! lease placeholder, and a plain `get` of a dead value.
//! `cargo bench --bench lease`; see BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::LazyLock;
use std::time::Duration;
use tg_cache::testing::RedisServer;
use tg_cache::testing::protocol_ops::{self, Poll};
use tg_cache::{Cache, CacheConfig};

static SERVER: LazyLock<RedisServer> = LazyLock::new(RedisServer::start);

const FAMILY: &str = "tg:fn:lease_bench";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn cache() -> Cache {
    CacheConfig::redis(&SERVER.url())
        .response_timeout(Duration::from_secs(5))
        .lease_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Leaves a dead value of `size` bytes at `key`: written, then outdated.
async fn dead_value(cache: &Cache, key: &str, size: usize) {
    cache.delete(key).await.unwrap();
    cache.set(key, &"x".repeat(size), 600).await.unwrap();
    cache.invalidate_family(FAMILY).await.unwrap();
}

fn sizes() -> [(&'static str, usize); 2] {
    [("1KiB", 1024), ("16MiB", 16 << 20)]
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let cache = cache();
    let mut g = c.benchmark_group("lease");
    g.sample_size(20).measurement_time(Duration::from_secs(4));

    let conn = rt.block_on(async {
        redis::Client::open(SERVER.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    g.bench_function("ping_round_trip", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            }
        })
    });

    for (name, size) in sizes() {
        let key = format!("{FAMILY}:poll_{name}");
        rt.block_on(async {
            dead_value(&cache, &key, size).await;
            let (p, held) = protocol_ops::lease(&cache, &key, "holder").await;
            assert_eq!(p, Poll::Granted);
            std::mem::forget(held);
        });
        g.bench_function(BenchmarkId::new("poll_busy", name), |b| {
            b.to_async(&rt).iter(|| async {
                let (p, _) = protocol_ops::lease(&cache, &key, "poller").await;
                assert_eq!(p, Poll::Busy);
            })
        });
    }

    // The lease request that finds the dead value and puts its
    // placeholder there (the dead value is freed by that write).
    for (name, size) in sizes() {
        let key = format!("{FAMILY}:grant_{name}");
        g.bench_function(BenchmarkId::new("grant_over_dead", name), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (cache, key) = (&cache, &key);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        dead_value(cache, key, size).await;
                        let start = std::time::Instant::now();
                        let (p, held) = protocol_ops::lease(cache, key, "granted").await;
                        total += start.elapsed();
                        assert_eq!(p, Poll::Granted);
                        std::mem::forget(held);
                    }
                    total
                }
            })
        });
    }

    // A plain read of a key whose value is dead: a miss, decided from the
    // value's first bytes (the first read is at most 1 MiB).
    for (name, size) in sizes() {
        let key = format!("{FAMILY}:get_{name}");
        rt.block_on(dead_value(&cache, &key, size));
        g.bench_function(BenchmarkId::new("get_dead", name), |b| {
            b.to_async(&rt).iter(|| async {
                assert_eq!(cache.get::<String>(&key).await.unwrap(), None);
            })
        });
    }

    let small = "y".repeat(1024);
    for (name, size) in sizes() {
        let key = format!("{FAMILY}:fill_{name}");
        g.bench_function(BenchmarkId::new("fill_1KiB", name), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (cache, key, small) = (&cache, &key, &small);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        dead_value(cache, key, size).await;
                        let (p, held) = protocol_ops::lease(cache, key, "filler").await;
                        assert_eq!(p, Poll::Granted);
                        let held = held.unwrap();
                        let start = std::time::Instant::now();
                        assert!(protocol_ops::fill(cache, key, small, &held).await);
                        total += start.elapsed();
                    }
                    total
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
