//! The seed's "get or set" and manual access patterns, with timings.
//!
//! ```sh
//! cargo run --example quickstart                                   # local store
//! TG_CACHE_BACKEND=redis REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};
use tg_cache::timeout::MEDIUM;

/// Stands in for a slow query or aggregation.
async fn perform_expensive_calculation() -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    vec![
        "Brujah".into(),
        "Gangrel".into(),
        "Malkavian".into(),
        "Nosferatu".into(),
    ]
}

/// The seed's `get_expensive_data`, without the `if result is None` dance:
/// `get_or_set` computes once even when many requests miss together.
async fn get_expensive_data() -> Vec<String> {
    tg_cache::cache()
        .get_or_set(
            "expensive_calculation",
            MEDIUM,
            perform_expensive_calculation,
        )
        .await
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), tg_cache::Error> {
    // Report a bad TG_CACHE_* variable now rather than on first use.
    tg_cache::init_from_env()?;
    let cache = tg_cache::cache();
    println!("tg-cache quickstart on the {} store", cache.backend());
    // Start from a clean slate for this demo's keys.
    cache
        .delete_many(&["my_key", "expensive_calculation", "test"])
        .await?;

    println!("\n== Get or set ==");
    for attempt in 1..=2 {
        let before = cache.stats();
        let start = Instant::now();
        let clans = get_expensive_data().await;
        let hit = cache.stats().hits > before.hits;
        println!(
            "attempt {attempt}: {} in {:>8.2?} -> {clans:?}",
            if hit { "HIT " } else { "MISS" },
            start.elapsed()
        );
    }

    println!("\n== Manual access ==");
    cache
        .set("my_key", &vec![1, 2, 3], Duration::from_secs(300))
        .await?;
    let start = Instant::now();
    let data: Option<Vec<i32>> = cache.get("my_key").await?;
    println!("get('my_key')      = {data:?} in {:.2?}", start.elapsed());
    let data = cache.get::<Vec<i32>>("missing").await?.unwrap_or_default();
    println!("get('missing', []) = {data:?}");
    println!("delete('my_key')   = {}", cache.delete("my_key").await?);
    println!(
        "get('my_key')      = {:?}",
        cache.get::<Vec<i32>>("my_key").await?
    );

    println!("\n== Check cache status ==");
    cache.set("test", &"value".to_string(), MEDIUM).await?;
    assert_eq!(cache.get::<String>("test").await?.as_deref(), Some("value"));
    let rtt = cache.health().await?;
    println!("Cache working! (round trip {rtt:.2?})");
    let s = cache.stats();
    println!(
        "hits={} misses={} sets={} errors={} hit ratio={:.0}%",
        s.hits,
        s.misses,
        s.sets,
        s.errors,
        100.0 * s.hit_ratio().unwrap_or(0.0)
    );
    Ok(())
}
