//! Load benchmark: many concurrent tasks on one real redis-server, tg-cache
//! (with 1 and 4 pooled connections) against plain redis-rs on the same
//! server in the same run. Prints a Markdown table: errors, throughput and
//! p50/p99/max latency per configuration.
//!
//! `cargo bench --bench load` (set `LOAD_SECS` to change the 3 s per row).
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig, timeout::MEDIUM};

const KEYS: u64 = 1000;

#[derive(Default)]
struct Row {
    calls: u64,
    errors: u64,
    over_100ms: u64,
    lat: Vec<Duration>,
    secs: f64,
}

impl Row {
    fn print(&mut self, name: &str, tasks: usize) {
        self.lat.sort();
        let q = |p: f64| {
            let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
            self.lat.get(i).copied().unwrap_or_default()
        };
        println!(
            "| {name} | {tasks} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            self.calls,
            self.errors,
            self.calls as f64 / self.secs,
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            self.lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            self.over_100ms,
        );
    }
}

/// One operation of the mix: 90% reads of a random key, 10% writes.
enum Op {
    Get(String),
    Set(String, u64),
}

fn op(i: u64) -> Op {
    let k = format!("load:k{}", i.wrapping_mul(2_654_435_761) % KEYS);
    if i.is_multiple_of(10) {
        Op::Set(k, i)
    } else {
        Op::Get(k)
    }
}

async fn run<F, Fut>(tasks: usize, secs: f64, f: F) -> Row
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (f, stop, seq) = (f.clone(), stop.clone(), seq.clone());
        handles.push(tokio::spawn(async move {
            let mut row = Row::default();
            while !stop.load(Relaxed) {
                let i = seq.fetch_add(1, Relaxed);
                let t = Instant::now();
                let ok = f(i).await;
                let d = t.elapsed();
                row.calls += 1;
                row.errors += u64::from(!ok);
                row.over_100ms += u64::from(d > Duration::from_millis(100));
                row.lat.push(d);
            }
            row
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Relaxed);
    let mut all = Row {
        secs,
        ..Row::default()
    };
    for h in handles {
        let r = h.await.unwrap();
        all.calls += r.calls;
        all.errors += r.errors;
        all.over_100ms += r.over_100ms;
        all.lat.extend(r.lat);
    }
    all
}

async fn tg(cache: Cache, i: u64) -> bool {
    match op(i) {
        Op::Get(k) => cache.get::<u64>(&k).await.is_ok(),
        Op::Set(k, v) => cache.set(&k, &v, MEDIUM).await.is_ok(),
    }
}

async fn raw(mut c: redis::aio::MultiplexedConnection, i: u64) -> bool {
    let r: redis::RedisResult<()> = match op(i) {
        Op::Get(k) => redis::cmd("GET")
            .arg(k)
            .query_async::<Option<Vec<u8>>>(&mut c)
            .await
            .map(drop),
        Op::Set(k, v) => {
            redis::cmd("SET")
                .arg(k)
                .arg(v)
                .arg("EX")
                .arg(300)
                .query_async(&mut c)
                .await
        }
    };
    r.is_ok()
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent:
    // keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let pooled = |n: usize| CacheConfig::redis(&server.url()).pool_size(n).build().unwrap();
        let (one, four) = (pooled(1), pooled(4));
        for i in 0..KEYS {
            one.set(&format!("load:k{i}"), &i, MEDIUM).await.unwrap();
        }
        println!("| client | tasks | calls | errors | calls/s | p50 ms | p99 ms | max ms | calls > 100 ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for tasks in [1, 16, 64, 256] {
            let c = conn.clone();
            run(tasks, secs, move |i| raw(c.clone(), i)).await.print("redis-rs (1 connection)", tasks);
            let c = one.clone();
            run(tasks, secs, move |i| tg(c.clone(), i)).await.print("tg-cache, pool_size 1", tasks);
            let c = four.clone();
            run(tasks, secs, move |i| tg(c.clone(), i)).await.print("tg-cache, pool_size 4", tasks);
        }
    });
}
