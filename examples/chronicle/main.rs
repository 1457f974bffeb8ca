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
//!
//! # Beside the team's Django application
//!
//! Run against the Redis the Django application uses, with Django's key
//! function (the README's "Sharing a Redis with Django"):
//!
//! ```sh
//! TG_CACHE_BACKEND=redis REDIS_URL=redis://127.0.0.1:6379/0 \
//!   TG_CACHE_KEY_FUNCTION=django TG_CACHE_COMPRESS_MIN_BYTES=16 cargo run --example chronicle
//! ```
//!
//! and, in the Django project (`pip install ./contrib/django`):
//!
//! ```python
//! CACHES = {
//!     "default": {
//!         "BACKEND": "django_redis.cache.RedisCache",
//!         "LOCATION": os.environ["REDIS_URL"],
//!         "OPTIONS": {
//!             "CLIENT_CLASS": "tg_cache_django.TgCacheClient",
//!             "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
//!             "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
//!         },
//!     }
//! }
//! # The seed's receiver, which also drops chronicle's cached scenes:
//! tg_cache_django.invalidate_on(
//!     Character,
//!     keys=lambda c: [
//!         f"tg:queryset:Character:id={c.id}",
//!         f"tg:queryset:Character:chronicle={c.chronicle_id}",
//!     ],
//!     families=["tg:fn:char_scenes"],
//! )
//! ```
//!
//! The two then share keys (`:1:tg:queryset:Character:id=5`), values
//! (JSON, zlib over 15 bytes) and invalidation: a character saved in Django
//! drops chronicle's cached scenes, and an edit in chronicle
//! (`Character::saved()`) deletes the Django side's cached queryset of
//! that character (`tg:queryset:Character:id=<id>`).

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
