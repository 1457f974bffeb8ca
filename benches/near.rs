//! The near cache and the Redis read path, on one real redis-server, each
//! figure against its baseline in the same run. Prints Markdown tables:
//!
//! 1. hit throughput at 1 and 64 tasks on the same keys: a raw redis-rs
//!    `GET` + JSON decode, a raw pipeline of the two `GETRANGE`s a family
//!    hit sent before connections kept family epochs + decode, an async
//!    `#[cache_function]` hit on Redis, the same function on a near cache,
//!    and a raw moka get of the same values with the near cache's policy
//!    and bound (its ceiling); with the scripts Redis ran during the hits
//!    (`INFO commandstats`);
//! 2. staleness across two OS processes: the time from "A's write
//!    returned" to "B no longer serves the old value" (p50/p99/max);
//! 3. a lease waiter in another process, woken by push: the time from the
//!    holder's store returning to the waiter having the value;
//! 4. memory: entries held and RSS while 1,000,000 distinct keys are read
//!    through a near cache bounded to 100,000 entries.
//!
//! `cargo bench --bench near` (`NEAR_SECS` changes the 3 s per throughput
//! row). Under `cargo test --benches` it runs a short version. For a
//! profiler, `NEAR_PROFILE=1` runs Redis hits only, `NEAR_PROFILE=raw` the
//! raw `GET` baseline only, `NEAR_PROFILE=near` near hits only, each with
//! `NEAR_TASKS` tasks (default 1), and prints how many commands Redis got
//! per socket read and write: how well the client batched its commands.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig, Caches, cache_function, timeout::LONG};

const KEYS: i64 = 100;
const CHILD_VAR: &str = "NEAR_BENCH_CHILD";
const URL_VAR: &str = "NEAR_BENCH_URL";

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

#[cache_function(key_prefix = "near_bench_redis", cache = "redis")]
async fn redis_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    Arc::new(scenes(character_id))
}

#[cache_function(key_prefix = "near_bench_near", cache = "near")]
async fn near_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    Arc::new(scenes(character_id))
}

/// Wall-clock microseconds: comparable between two processes of one
/// machine.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap())
}

/// Calls `f` from `tasks` tasks for `secs`; returns calls per second.
async fn throughput<F, Fut>(tasks: usize, secs: f64, f: F) -> f64
where
    F: Fn(i64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (f, stop, calls) = (f.clone(), stop.clone(), calls.clone());
        handles.push(tokio::spawn(async move {
            let mut i = t as i64;
            let mut n = 0;
            while !stop.load(Relaxed) {
                i = (i + 1) % KEYS;
                f(i).await;
                n += 1;
                if n % 64 == 0 {
                    // Near hits never yield on their own.
                    tokio::task::yield_now().await;
                }
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

/// The baseline call: a raw redis-rs `GET` of key `i` + JSON decode.
async fn raw_get(mut c: redis::aio::MultiplexedConnection, k: Arc<Vec<String>>, i: i64) {
    let v: Vec<u8> = redis::cmd("GET")
        .arg(&k[i as usize])
        .query_async(&mut c)
        .await
        .unwrap();
    // Skip the `#<epoch>:` header of a family value.
    let json = &v[v.iter().position(|&b| b == b':').unwrap() + 1..];
    std::hint::black_box(serde_json::from_slice::<Vec<Scene>>(json).unwrap());
}

/// Redis' counts of commands, socket reads and socket writes so far.
fn io_stats(server: &RedisServer) -> [u64; 3] {
    let info: String = server.cmd(&["INFO", "stats"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    [
        field("total_commands_processed"),
        field("total_reads_processed"),
        field("total_writes_processed"),
    ]
}

/// How many commands Redis got per socket read and answered per socket
/// write since `before`: how well the client batched.
fn io_batching(server: &RedisServer, before: [u64; 3]) -> String {
    let now = io_stats(server);
    let [c, r, w] = [0, 1, 2].map(|i| (now[i] - before[i]).max(1) as f64);
    format!("{:.2} commands per read, {:.2} per write", c / r, c / w)
}

/// Script calls so far (`EVAL`, `EVALSHA`, `FCALL` and their `_RO` forms).
fn script_calls(server: &RedisServer) -> u64 {
    server
        .command_calls()
        .iter()
        .filter(|(name, _)| name.starts_with("eval") || name.starts_with("fcall"))
        .map(|(_, n)| n)
        .sum()
}

async fn hits(server: &RedisServer, secs: f64) {
    let conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0..KEYS {
        redis_scenes(i).await;
        near_scenes(i).await;
    }
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| redis_scenes_cache_key(&i)).collect());
    println!(
        "| tasks | raw GET + decode | raw 2-GETRANGE pipeline + decode | Redis hit | ratio to raw GET | near hit | near / Redis | raw moka get (LRU) | raw moka get (LRU, 8 segments) | near / segmented moka | scripts run by the hits |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // The near hit's ceiling: a raw moka get of the same values, with the
    // near cache's policy and bound.
    let moka: moka::sync::Cache<String, Arc<Vec<Scene>>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build();
    // And segmented as the near cache's map is for 10,000 entries
    // (`store/near.rs` `segments`: 8 segments of 1,250).
    let moka_seg: moka::sync::SegmentedCache<String, Arc<Vec<Scene>>> =
        moka::sync::SegmentedCache::builder(8)
            .max_capacity(10_000)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
    for (i, k) in keys.iter().enumerate() {
        moka.insert(k.clone(), Arc::new(scenes(i as i64)));
        moka_seg.insert(k.clone(), Arc::new(scenes(i as i64)));
    }
    for tasks in [1, 64] {
        let (c, k) = (conn.clone(), keys.clone());
        let raw = throughput(tasks, secs, move |i| raw_get(c.clone(), k.clone(), i)).await;
        // What a family hit sent before its connection kept the epoch
        // (`store/epochs.rs`), raw: the value's and the epoch's GETRANGEs
        // in one pipeline.
        let (c, k) = (conn.clone(), keys.clone());
        let epoch_key = Arc::new("#epoch:tg:fn:near_bench_redis".to_owned());
        let raw2 = throughput(tasks, secs, move |i| {
            let (mut c, k, e) = (c.clone(), k.clone(), epoch_key.clone());
            async move {
                let (v, _e): (Vec<u8>, Vec<u8>) = redis::pipe()
                    .cmd("GETRANGE")
                    .arg(&k[i as usize])
                    .arg(0)
                    .arg((1 << 20) - 1)
                    .cmd("GETRANGE")
                    .arg(e.as_str())
                    .arg(0)
                    .arg(64)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let json = &v[v.iter().position(|&b| b == b':').unwrap() + 1..];
                std::hint::black_box(serde_json::from_slice::<Vec<Scene>>(json).unwrap());
            }
        })
        .await;
        let scripts = script_calls(server);
        let before = server.command_calls();
        let start = Instant::now();
        let redis = throughput(tasks, secs, |i| async move {
            std::hint::black_box(redis_scenes(i).await);
        })
        .await;
        let calls = redis * start.elapsed().as_secs_f64();
        let per_hit: Vec<String> = server
            .command_calls()
            .into_iter()
            .filter_map(|(name, n)| {
                let d = n - before.get(&name).copied().unwrap_or(0);
                (d > 0).then(|| format!("{name} {:.2}", d as f64 / calls))
            })
            .collect();
        eprintln!(
            "commands per Redis hit at {tasks} tasks: {}",
            per_hit.join(", ")
        );
        let near = throughput(tasks, secs, |i| async move {
            std::hint::black_box(near_scenes(i).await);
        })
        .await;
        let scripts = script_calls(server) - scripts;
        let (m, k) = (moka.clone(), keys.clone());
        let raw_moka = throughput(tasks, secs, move |i| {
            let v = m.get(&k[i as usize]);
            async move {
                std::hint::black_box(v);
            }
        })
        .await;
        let (m, k) = (moka_seg.clone(), keys.clone());
        let seg_moka = throughput(tasks, secs, move |i| {
            let v = m.get(&k[i as usize]);
            async move {
                std::hint::black_box(v);
            }
        })
        .await;
        println!(
            "| {tasks} | {raw:.0}/s | {raw2:.0}/s ({:.2}x) | {redis:.0}/s | {:.2}x | {near:.0}/s | {:.0}x | {raw_moka:.0}/s | {seg_moka:.0}/s | {:.2}x | {scripts} |",
            raw2 / raw,
            redis / raw,
            near / redis,
            near / seg_moka
        );
    }
}

/// Spawns this binary as a child in `role`, with its stdout piped.
fn child(role: &str, url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_VAR, role)
        .env(URL_VAR, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn near_cache(url: &str) -> Cache {
    CacheConfig::redis(url).near_cache(10_000).build().unwrap()
}

/// Child: serves `stale:k` from its near cache, polling, and prints
/// `<value> <wall µs>` the first time it serves each value, until its
/// stdin closes.
fn child_stale_reader(url: &str) {
    let cache = near_cache(url);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        d.store(true, Relaxed);
    });
    let mut last = None;
    let mut out = Vec::new();
    println!("ready");
    while !done.load(Relaxed) {
        let v = cache.blocking().get::<u64>("stale:k").ok().flatten();
        if v != last {
            if let Some(v) = v {
                out.push((v, now_us()));
            }
            last = v;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    let mut stdout = std::io::stdout().lock();
    for (v, t) in out {
        writeln!(stdout, "{v} {t}").unwrap();
    }
}

async fn staleness(server: &RedisServer, trials: u64) {
    let a = near_cache(&server.url());
    a.set("stale:k", &0u64, LONG).await.unwrap();
    let mut c = child("stale", &server.url());
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut returned = Vec::new();
    for n in 1..=trials {
        a.set("stale:k", &n, LONG).await.unwrap();
        returned.push(now_us());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    drop(c.stdin.take());
    let mut seen = std::collections::HashMap::new();
    for l in lines {
        let l = l.unwrap();
        let (v, t) = l.split_once(' ').unwrap();
        seen.insert(v.parse::<u64>().unwrap(), t.parse::<u64>().unwrap());
    }
    c.wait().unwrap();
    let lat: Vec<f64> = (1..=trials)
        .filter_map(|n| {
            let t = *seen.get(&n)?;
            Some(t.saturating_sub(returned[n as usize - 1]) as f64 / 1000.0)
        })
        .collect();
    let (p50, p99, max) = quantiles(lat.clone());
    println!(
        "| staleness (A's set returned → B serves the new value) | {trials} | {} | {p50:.3} ms | {p99:.3} ms | {max:.3} ms |",
        lat.len()
    );
}

/// Child: for each line `<n>` on stdin, calls `get_or_set("wait:<n>")`
/// (held by the parent) and prints `<n> <wall µs> <value>` when it returns.
fn child_waiter(url: &str) {
    let cache = CacheConfig::redis(url).build().unwrap();
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let n: u64 = line.unwrap().trim().parse().unwrap();
        let v = cache
            .blocking()
            .get_or_set(&format!("wait:{n}"), LONG, || u64::MAX);
        println!("{n} {} {v}", now_us());
    }
}

async fn waiters(server: &RedisServer, trials: u64) {
    let a = CacheConfig::redis(&server.url()).build().unwrap();
    let mut c = child("waiter", &server.url());
    let mut stdin = c.stdin.take().unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut lat = Vec::new();
    let mut computed = 0;
    for n in 0..trials {
        let key = format!("wait:{n}");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let holder = {
            let a = a.clone();
            tokio::spawn(async move {
                let v = a
                    .get_or_set(&key, LONG, || async move {
                        let _ = tx.send(());
                        // Long enough for the child to become a waiter.
                        tokio::time::sleep(Duration::from_millis(15)).await;
                        n
                    })
                    .await;
                (v, now_us())
            })
        };
        rx.await.unwrap();
        writeln!(stdin, "{n}").unwrap();
        stdin.flush().unwrap();
        let (v, stored) = holder.await.unwrap();
        assert_eq!(v, n);
        let line = tokio::task::block_in_place(|| lines.next().unwrap().unwrap());
        let mut f = line.split(' ');
        let (_, got, value) = (f.next(), f.next().unwrap(), f.next().unwrap());
        if value.parse::<u64>().unwrap() != n {
            computed += 1;
            continue;
        }
        lat.push(got.parse::<u64>().unwrap().saturating_sub(stored) as f64 / 1000.0);
    }
    drop(stdin);
    c.wait().unwrap();
    let (p50, p99, max) = quantiles(lat.clone());
    println!(
        "| waiter in another process (holder's store returned → waiter has the value) | {trials} | {} | {p50:.3} ms | {p99:.3} ms | {max:.3} ms |",
        lat.len()
    );
    if computed > 0 {
        println!("\n({computed} trials: the waiter computed instead of waiting)\n");
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn memory(server: &RedisServer, keys: u64) {
    let bound = 100_000;
    let cache = CacheConfig::redis(&server.url())
        .near_cache(bound)
        .build()
        .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("mem:{i}")).arg(i).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    println!("| keys read | entries held (bound {bound}) | RSS |");
    println!("|---:|---:|---:|");
    println!(
        "| 0 | {} | {:.0} MiB |",
        cache.local_len().unwrap(),
        rss_mib()
    );
    let batch = 100;
    let mut read = 0;
    let mut next_report = keys / 4;
    while read < keys {
        let names: Vec<String> = (read..(read + batch).min(keys))
            .map(|i| format!("mem:{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let values = cache.get_many::<u64, _>(&refs).await.unwrap();
        assert_eq!(values.len(), refs.len());
        read += refs.len() as u64;
        if read >= next_report {
            println!(
                "| {read} | {} | {:.0} MiB |",
                cache.local_len().unwrap(),
                rss_mib()
            );
            next_report += keys / 4;
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_VAR) {
        let url = std::env::var(URL_VAR).unwrap();
        match role.as_str() {
            "stale" => child_stale_reader(&url),
            "waiter" => child_waiter(&url),
            other => panic!("unknown child role {other}"),
        }
        return;
    }
    // `cargo test --benches` runs bench binaries without `--bench`.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("NEAR_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });
    let server = RedisServer::start();
    tg_cache::configure(
        Caches::new(CacheConfig::local())
            .with("redis", CacheConfig::redis(&server.url()))
            .with("near", CacheConfig::redis(&server.url()).near_cache(10_000)),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("NEAR_PROFILE").is_some() {
        // For a profiler: Redis hits only, `NEAR_TASKS` tasks (default 1);
        // `NEAR_PROFILE=raw`: the raw GET baseline only; `NEAR_PROFILE=near`:
        // near hits only.
        rt.block_on(async {
            for i in 0..KEYS {
                redis_scenes(i).await;
            }
            let tasks = std::env::var("NEAR_TASKS")
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(1);
            if std::env::var("NEAR_PROFILE").as_deref() == Ok("raw") {
                // The baseline instead: a raw GET + decode.
                let conn = redis::Client::open(server.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let keys: Arc<Vec<String>> =
                    Arc::new((0..KEYS).map(|i| redis_scenes_cache_key(&i)).collect());
                let before = io_stats(&server);
                let n =
                    throughput(tasks, secs, move |i| raw_get(conn.clone(), keys.clone(), i)).await;
                println!("{n:.0} raw GETs/s; {}", io_batching(&server, before));
                return;
            }
            if std::env::var("NEAR_PROFILE").as_deref() == Ok("near") {
                // Near hits instead.
                for i in 0..KEYS {
                    near_scenes(i).await;
                }
                let n = throughput(tasks, secs, |i| async move {
                    std::hint::black_box(near_scenes(i).await);
                })
                .await;
                println!("{n:.0} near hits/s");
                return;
            }
            let before = io_stats(&server);
            let n = throughput(tasks, secs, |i| async move {
                std::hint::black_box(redis_scenes(i).await);
            })
            .await;
            println!("{n:.0} Redis hits/s; {}", io_batching(&server, before));
        });
        return;
    }
    rt.block_on(async {
        println!("### Hit throughput (same 100 keys)\n");
        hits(&server, secs).await;
        println!("\n### Across processes\n");
        println!("| measure | trials | observed | p50 | p99 | max |");
        println!("|---|---:|---:|---:|---:|---:|");
        staleness(&server, if quick { 50 } else { 1000 }).await;
        waiters(&server, if quick { 20 } else { 500 }).await;
        println!("\n### Memory\n");
        memory(&server, if quick { 20_000 } else { 1_000_000 }).await;
    });
}
