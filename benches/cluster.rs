//! The Redis Cluster store against one Redis server, measured in one run
//! (issue 14):
//!
//! 1. hit throughput at 1 and 64 tasks on the same 1,000 keys of one key
//!    family: one server, and a cluster of three primaries (and three
//!    replicas), all on this machine;
//! 2. the latency of a family's invalidation (`invalidate_family`): one
//!    `SET` on one server; one per slot on a cluster (16,384, one Lua call
//!    per primary, `scripts.rs` `SWEEP_EPOCHS`).
//!
//! `cargo bench --bench cluster` (`CLUSTER_SECS` changes the 3 s per
//! throughput row). Under `cargo test --benches` it runs a short version.
//! The hit rows also run each store with a near cache of 10,000 entries
//! (after one pass that fills it): a hit is then local on both.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tg_cache::testing::{RedisCluster, RedisServer};
use tg_cache::{Cache, CacheConfig};

const KEYS: u64 = 1000;
const FAMILY: &str = "tg:fn:cluster_bench";

fn key(i: u64) -> String {
    format!("{FAMILY}:id={i}")
}

fn value(i: u64) -> Vec<String> {
    (0..10)
        .map(|s| format!("Scene {s} of character {i}"))
        .collect()
}

/// Hits from `tasks` tasks for `secs`; returns hits per second.
async fn hits(cache: &Cache, tasks: u64, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (cache, stop, calls) = (cache.clone(), stop.clone(), calls.clone());
        handles.push(tokio::spawn(async move {
            let (mut i, mut n) = (t * 13, 0);
            while !stop.load(Relaxed) {
                i = (i + 1) % KEYS;
                let v = cache.get::<Vec<String>>(&key(i)).await.unwrap();
                assert!(v.is_some(), "a miss on key {i}");
                n += 1;
            }
            calls.fetch_add(n, Relaxed);
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    calls.load(Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn fill(cache: &Cache) {
    let items: Vec<(String, Vec<String>)> = (0..KEYS).map(|i| (key(i), value(i))).collect();
    cache.set_many(&items, None).await.unwrap();
}

/// p50, p99 and max of `trials` invalidations of the family, in ms.
async fn invalidations(cache: &Cache, trials: usize) -> (f64, f64, f64) {
    let mut ms = Vec::with_capacity(trials);
    for _ in 0..trials {
        fill(cache).await;
        let start = Instant::now();
        cache.invalidate_family(FAMILY).await.unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), ms[ms.len() - 1])
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("CLUSTER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.3 } else { 3.0 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    rt.block_on(async {
        let single = CacheConfig::redis(&server.url()).build().unwrap();
        let clustered = CacheConfig::redis_cluster(cluster.urls()).build().unwrap();
        let near_single = CacheConfig::redis(&server.url())
            .near_cache(10_000)
            .build()
            .unwrap();
        let near_clustered = CacheConfig::redis_cluster(cluster.urls())
            .near_cache(10_000)
            .build()
            .unwrap();
        println!("### Hits (1,000 keys of one family, `Cache::get`)\n");
        println!(
            "| tasks | one server | cluster (3 primaries) | cluster / one server | one server, near | cluster, near | cluster near / one server near |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for tasks in [1, 64] {
            fill(&single).await;
            fill(&clustered).await;
            let one = hits(&single, tasks, secs).await;
            let many = hits(&clustered, tasks, secs).await;
            // One short pass fills each near cache.
            hits(&near_single, 1, secs.min(0.5)).await;
            hits(&near_clustered, 1, secs.min(0.5)).await;
            let near_one = hits(&near_single, tasks, secs).await;
            let near_many = hits(&near_clustered, tasks, secs).await;
            println!(
                "| {tasks} | {one:.0}/s | {many:.0}/s | {:.2}x | {near_one:.0}/s | {near_many:.0}/s | {:.2}x |",
                many / one,
                near_many / near_one
            );
        }
        let trials = if quick { 5 } else { 200 };
        println!("\n### `invalidate_family` latency ({trials} trials)\n");
        println!("| store | p50 | p99 | max |");
        println!("|---|---:|---:|---:|");
        for (name, cache) in [("one server", &single), ("cluster", &clustered)] {
            let (p50, p99, max) = invalidations(cache, trials).await;
            println!("| {name} | {p50:.3} ms | {p99:.3} ms | {max:.3} ms |");
        }
        for c in [&single, &clustered, &near_single, &near_clustered] {
            assert_eq!(c.stats().errors, 0);
        }
        for c in [&near_single, &near_clustered] {
            let near_hits: u64 = c.near_stats().unwrap().iter().map(|(_, s)| s.hits).sum();
            assert!(near_hits > 0, "the near rows measured no near hit");
        }
    });
}
