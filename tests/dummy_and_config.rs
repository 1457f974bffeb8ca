//! The dummy store and configuration errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use tg_cache::timeout::MEDIUM;
use tg_cache::{CacheConfig, Error};

#[tokio::test]
async fn dummy_caches_nothing() {
    let cache = CacheConfig::dummy().build().unwrap();
    cache.set("k", &1, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    assert!(!cache.has_key("k").await.unwrap());
    assert!(!cache.delete("k").await.unwrap());
    assert!(matches!(
        cache.incr("k", 1).await,
        Err(Error::MissingKey(_))
    ));
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        cache
            .get_or_set("k", MEDIUM, || async {
                runs.fetch_add(1, Ordering::SeqCst)
            })
            .await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // every other method answers as an empty cache would
    assert!(
        cache.add("k", &1, MEDIUM).await.unwrap(),
        "add succeeds, like Django's DummyCache"
    );
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    cache.set_many(&[("a", 1), ("b", 2)], MEDIUM).await.unwrap();
    assert!(
        cache
            .get_many::<i32, _>(&["a", "b"])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(cache.delete_many(&["a", "b"]).await.unwrap(), 0);
    assert!(!cache.touch("a", MEDIUM).await.unwrap());
    assert_eq!(cache.ttl("a").await.unwrap(), None);
    assert!(matches!(
        cache.decr("k", 1).await,
        Err(Error::MissingKey(_))
    ));
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 0);
    cache
        .invalidate_family("tg:queryset:Character")
        .await
        .unwrap();
    cache.clear().await.unwrap();
    cache.flush_database().await.unwrap();
    assert!(cache.health().await.is_ok());
    assert_eq!(cache.blocking().get_or_set("k", MEDIUM, || 5), 5);
    assert_eq!(cache.stats().sets, 0, "nothing was stored");
}

#[test]
fn bad_builder_values_are_clear_errors() {
    let e = CacheConfig::redis("not a url").build().unwrap_err();
    assert!(e.to_string().starts_with("REDIS_URL="), "{e}");
    let e = CacheConfig::redis("http://host").build().unwrap_err();
    assert!(e.to_string().contains("scheme"), "{e}");
    let e = CacheConfig::local().max_entries(0).build().unwrap_err();
    assert!(e.to_string().contains("max_entries"), "{e}");
    let e = CacheConfig::redis("redis://127.0.0.1:1")
        .max_connections(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("max_connections"), "{e}");
    let e = CacheConfig::local()
        .key_prefix("has space")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("key_prefix"), "{e}");
}

#[test]
fn local_store_is_bounded() {
    let cache = CacheConfig::local().max_entries(50).build().unwrap();
    for i in 0..500 {
        cache.blocking().set(&format!("k{i}"), &i, MEDIUM).unwrap();
    }
    let n = cache.local_len().unwrap();
    assert!(n <= 50, "{n} entries held with max_entries 50");
}

/// An `@` in a query value is not the end of a password: such a URL is
/// accepted, addressed by its host, and shown with the value hidden.
#[test]
fn an_at_sign_in_a_query_value_is_part_of_the_value() {
    let u = tg_cache::config::RedisUrl::parse("redis://127.0.0.1:6380/0?password=p@ss").unwrap();
    assert_eq!(u.address(), "127.0.0.1:6380");
    assert_eq!(u.to_string(), "redis://127.0.0.1:6380/0?password=***");
    let u = tg_cache::config::RedisUrl::parse("redis://u:pw@h/1?password=p@ss").unwrap();
    assert_eq!(u.address(), "h:6379");
    assert_eq!(u.to_string(), "redis://u:***@h/1?password=***");
}

/// No password, in any URL form redis-rs accepts (or a user may write),
/// appears in the `Debug` of a configuration or a cache, in a URL's
/// display, or in a configuration error.
#[test]
fn no_password_appears_in_any_output() {
    let secret = "s3cr3t";
    let urls = [
        format!("redis://:{secret}@127.0.0.1:6379/0"),
        format!("redis://user:{secret}@127.0.0.1:6379/0"),
        format!("rediss://:{secret}@127.0.0.1:6379/0"),
        format!("redis+unix:///run/redis.sock?db=1&pass={secret}"),
        format!("unix:///run/redis.sock?pass={secret}&db=2"),
        format!("redis://127.0.0.1/0?password={secret}"),
        format!("redis://:{secret}#x@127.0.0.1/0"),
        format!("redis://:{secret}/x@127.0.0.1/0"),
        format!("redis://:{secret}?x@127.0.0.1/0"),
        format!("redis://:{secret}@127.0.0.1:63z9/0"),
        format!("redis://:{secret}@127.0.0.1/db"),
        format!("http://:{secret}@127.0.0.1/0"),
        format!("redis://127.0.0.1/0?password=a@{secret}"),
        format!("redis://127.0.0.1:6380/0?user=u&password={secret}@x#y"),
        format!("unix://u:{secret}@/run/redis.sock"),
        format!("redis+unix://:{secret}@/run/a@b.sock?db=1"),
    ];
    for url in &urls {
        let cfg = tg_cache::CacheConfig::redis(url);
        let mut outputs = vec![format!("{cfg:?}")];
        if let Some(u) = cfg.redis_url() {
            outputs.push(format!("{u}"));
            outputs.push(format!("{u:?}"));
            outputs.push(u.address());
        }
        match cfg.build() {
            Ok(cache) => outputs.push(format!("{cache:?}")),
            Err(e) => {
                outputs.push(format!("{e}"));
                outputs.push(format!("{e:?}"));
            }
        }
        for out in outputs {
            assert!(!out.contains(secret), "{url}: the password shows in {out}");
        }
    }
}
