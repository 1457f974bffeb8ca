//! TTL jitter against an expiry stampede, on one real redis-server, with
//! and without jitter in the same run:
//!
//! 10,000 keys are written in one burst (`set_many`) with a 60 s timeout,
//! then read uniformly at random at 2,000 reads/s through `get_or_set`
//! (a miss runs the body and stores the key again, with the same timeout)
//! from 50 s to 70 s after the burst. Prints the histogram of the keys'
//! Redis TTLs right after the burst (`PTTL`: its span) and the misses per
//! second while they expire (its peak).
//!
//! `cargo bench --bench jitter` (about 2.5 minutes). Under `cargo test
//! --benches` it runs a short version (timeout 2 s, reads from 1 s to 4 s).
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Timeout};

const KEYS: u64 = 10_000;
const READS_PER_SEC: u64 = 2_000;

struct Run {
    ttl_span: Duration,
    ttl_bins: Vec<u64>,
    misses_per_sec: Vec<u64>,
}

async fn run(
    timeout: Duration,
    jitter: Option<f64>,
    read_from: Duration,
    read_to: Duration,
) -> Run {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url()).build().unwrap();
    let t = match jitter {
        Some(j) => Timeout::from(timeout).jitter(j),
        None => Timeout::from(timeout),
    };
    let items: Vec<(String, u64)> = (0..KEYS).map(|i| (format!("burst:{i}"), i)).collect();
    let written = Instant::now();
    cache.set_many(&items, t).await.unwrap();
    let mut con = server.connection();
    let mut pipe = redis::pipe();
    for (k, _) in &items {
        pipe.cmd("PTTL").arg(k);
    }
    let lives: Vec<i64> = pipe.query(&mut con).unwrap();
    let (lo, hi) = (*lives.iter().min().unwrap(), *lives.iter().max().unwrap());
    let bin = (timeout.as_millis() as i64 / 20).max(1);
    let mut ttl_bins = vec![0u64; 21];
    for l in &lives {
        ttl_bins[((timeout.as_millis() as i64 - l) / bin).clamp(0, 20) as usize] += 1;
    }
    tokio::time::sleep_until((written + read_from).into()).await;
    let seconds = (read_to - read_from).as_secs().max(1) as usize;
    let misses: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds + 1).map(|_| AtomicU64::new(0)).collect());
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let per_tick = READS_PER_SEC / 1000;
    let mut tasks = Vec::new();
    while start.elapsed() < read_to - read_from {
        tick.tick().await;
        for _ in 0..per_tick {
            let (cache, misses) = (cache.clone(), misses.clone());
            let key = format!("burst:{}", rand::random_range(0..KEYS));
            tasks.push(tokio::spawn(async move {
                let at = start.elapsed().as_secs() as usize;
                let _: u64 = cache
                    .get_or_set(&key, t, || async move {
                        misses[at.min(misses.len() - 1)].fetch_add(1, Relaxed);
                        1
                    })
                    .await;
            }));
        }
        tasks.retain(|t| !t.is_finished());
    }
    for t in tasks {
        t.await.unwrap();
    }
    Run {
        ttl_span: Duration::from_millis((hi - lo).max(0) as u64),
        ttl_bins,
        misses_per_sec: misses
            .iter()
            .map(|m| m.load(Relaxed))
            .take(seconds)
            .collect(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (timeout, from, to) = if quick {
        (
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::from_secs(4),
        )
    } else {
        (
            Duration::from_secs(60),
            Duration::from_secs(50),
            Duration::from_secs(70),
        )
    };
    println!(
        "{KEYS} keys, timeout {timeout:?}, read at {READS_PER_SEC}/s from {from:?} to {to:?} after the burst\n"
    );
    println!("| jitter | TTL span | peak misses/s | misses/s, second by second |");
    println!("|---|---:|---:|---|");
    for jitter in [None, Some(0.1)] {
        let r = run(timeout, jitter, from, to).await;
        let peak = r.misses_per_sec.iter().max().copied().unwrap_or(0);
        println!(
            "| {} | {:.2} s | {peak} | {:?} |",
            jitter.map_or("none".to_owned(), |j| j.to_string()),
            r.ttl_span.as_secs_f64(),
            r.misses_per_sec
        );
        eprintln!(
            "TTL histogram (20 bins from the timeout down): {:?}",
            r.ttl_bins
        );
    }
}
