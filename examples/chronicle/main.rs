//! `chronicle`: a small World of Darkness chronicle manager that uses every
//! caching strategy of the seed on a real SQLite database.
//!
//! ```sh
//! cargo run --example chronicle                     # local store, no configuration
//! TG_CACHE_BACKEND=redis TG_CACHE_REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example chronicle
//! # several processes on one Redis, each with a near cache of 10,000 entries:
//! TG_CACHE_BACKEND=redis TG_CACHE_NEAR_CACHE=10000 CHRONICLE_ADDR=127.0.0.1:8001 cargo run --example chronicle
//! ```
//!
//! `CHRONICLE_DB` (default `chronicle.db`) and `CHRONICLE_ADDR` (default
//! `127.0.0.1:8000`) choose the database file and the address.

mod app;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("chronicle: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), app::BoxError> {
    tg_cache::init_from_env()?;
    let db = std::env::var("CHRONICLE_DB").unwrap_or_else(|_| "chronicle.db".into());
    let addr = std::env::var("CHRONICLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let router = app::build(&db).await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let cache = tg_cache::cache();
    // The URL the cache uses (TG_CACHE_REDIS_URL or REDIS_URL), redacted.
    let backend = match cache.redis_url() {
        Some(url) => format!("{} ({url})", cache.backend()),
        None => cache.backend().to_string(),
    };
    println!(
        "chronicle serving on http://{} (cache backend: {backend}, database: {db})",
        listener.local_addr()?
    );
    println!("  /                  characters (page cached, dropped when a character changes)");
    println!("  /meritflaws        merit/flaw reference list (cache_page, 15 min)");
    println!("  /characters/1      scenes via #[cache_function], details via a cached fragment");
    println!("  /characters/1/edit edit a character: #[derive(Invalidate)] drops what it affects");
    println!("  /login?user=alice  per-user page (/me), never cached");
    println!("  /welcome           cached once per session cookie (vary_on_cookie)");
    println!("  /cache             hits, misses and errors per key family, and health");
    axum::serve(listener, router).await?;
    Ok(())
}
